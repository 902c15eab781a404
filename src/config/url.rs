//! A source URL may carry a secret (`user:pass@`, a signed query): [`ImageUrl`] keeps it out
//! of every `Display` and `Debug`, so that no log line, error or file can show it by accident.

use std::fmt;

use url::Url;

/// An http(s) source URL that shows itself only with its secrets replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageUrl {
    url: Url,
    shown: String,
}

impl ImageUrl {
    pub fn new(url: Url) -> Self {
        let shown = redact_url(&url);
        Self { url, shown }
    }

    /// The real URL, for the request itself only.
    pub fn expose(&self) -> &Url {
        &self.url
    }

    /// `user:password@` in the URL (sent as HTTP basic authentication).
    pub fn has_credentials(&self) -> bool {
        !self.url.username().is_empty() || self.url.password().is_some()
    }

    /// The last path segment (never secret: it names the file).
    pub fn last_segment(&self) -> &str {
        self.url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("")
    }
}

impl fmt::Display for ImageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for ImageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageUrl({})", self.shown)
    }
}

/// Query keys whose values are secrets: access tokens, signatures of pre-signed URLs (S3's
/// `X-Amz-Signature`, Azure's `sig`, GCS's `X-Goog-Signature`), API keys, passwords.
const SECRET_KEYS: [&str; 9] = [
    "token",
    "secret",
    "sig",
    "pass",
    "pwd",
    "key",
    "auth",
    "credential",
    "session",
];

fn secret_like(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|word| key.contains(word))
}

/// `url` with `user:password@` and secret-looking query values replaced by `***`. A query
/// word without a value is an opaque token when it is long (`?AbC123…`), so it goes too.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let _ = shown.set_password(None);
        let _ = shown.set_username("***");
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                if secret_like(&key) {
                    (key.into_owned(), "***".to_owned())
                } else if value.is_empty() && key.len() >= 16 {
                    ("***".to_owned(), String::new())
                } else {
                    (key.into_owned(), value.into_owned())
                }
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.set_fragment(None);
    shown.to_string()
}

/// [`redact_url`] for a value that may not even parse: the user info and the whole query go.
pub(super) fn redact_raw(raw: &str) -> String {
    if let Ok(url) = Url::parse(raw) {
        return redact_url(&url);
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let path = match path.find(['?', '#']) {
        Some(at) => format!("{}?***", &path[..at]),
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(raw: &str) -> Url {
        Url::parse(raw).expect("url")
    }

    #[test]
    fn user_info_and_secret_query_values_are_redacted_and_the_rest_kept() {
        let shown = redact_url(&url(
            "https://alice:pw@h.example/img/a.qcow2?X-Amz-Signature=abc&access_token=t&arch=x86#frag",
        ));
        assert_eq!(
            shown,
            "https://***@h.example/img/a.qcow2?X-Amz-Signature=***&access_token=***&arch=x86"
        );
        assert_eq!(
            redact_url(&url("http://TOKEN@h.example/a?0123456789abcdefXYZ")),
            "http://***@h.example/a?***="
        );
        let plain = "http://h.example/a.qcow2";
        assert_eq!(redact_url(&url(plain)), plain);
    }

    #[test]
    fn an_image_url_never_shows_its_secret_in_display_or_debug() {
        let source = ImageUrl::new(url("http://u:s3cret@h.example/a.raw?sig=zzz"));
        for text in [source.to_string(), format!("{source:?}")] {
            assert!(!text.contains("s3cret") && !text.contains("zzz"), "{text}");
        }
        assert!(source.has_credentials());
        assert_eq!(source.last_segment(), "a.raw");
        assert_eq!(source.expose().password(), Some("s3cret"));
    }

    #[test]
    fn a_value_that_is_not_a_url_is_redacted_by_its_shape() {
        assert_eq!(
            redact_raw("http://u:p@[bad/x?token=t"),
            "http://***@[bad/x?***"
        );
        assert_eq!(redact_raw("no scheme at all"), "no scheme at all");
    }
}
