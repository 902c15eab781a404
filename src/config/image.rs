//! `IMG_SOURCE`, `IMG_TARGET`, `IMG_SHA256`: where the base image comes from and where it goes;
//! `IMG_AUTH_FILE`: how we prove we may fetch it; `FETCH_*` and `IMAGE_DIR_RESERVE`: when a
//! download gives up.
//!
//! A URL may carry a secret (`user:pass@`, a signed query): [`ImageUrl`] keeps it out of every
//! `Display` and `Debug`, so that no log line, error or file can show it by accident.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::{
    invalid, non_empty, ConfigError, ImageConfig, ImageSource, ImageTarget, Needs, Secret,
    COMPRESSION_SUFFIXES,
};
use crate::cli::Settings;
use crate::size::ByteSize;

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

/// How the image server learns who we are (from `IMG_AUTH_FILE`).
#[derive(Clone, PartialEq, Eq)]
pub enum ImageAuth {
    Bearer(Secret),
    Basic { user: String, password: Secret },
}

impl fmt::Debug for ImageAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bearer(_) => "Bearer(***)",
            Self::Basic { .. } => "Basic(***)",
        })
    }
}

/// Free space kept on `IMAGE_DIR` for everyone else: bytes, or a share of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Bytes(u64),
    Percent(u8),
}

impl Reserve {
    /// The reserve in bytes on a filesystem of `size` bytes.
    pub fn bytes_of(self, size: u64) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Percent(percent) => {
                u64::try_from(u128::from(size) * u128::from(percent) / 100).unwrap_or(u64::MAX)
            }
        }
    }
}

impl fmt::Display for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => write!(f, "{}", ByteSize(*bytes)),
            Self::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// When one download gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Attempts of one download; each that made progress earns one more, at most this many.
    pub attempts: u32,
    /// An attempt fails when nothing arrives for this long.
    pub stall_timeout: Duration,
    /// Bytes per second, averaged over `rate_window`, below which an attempt fails; 0: never.
    pub min_rate: u64,
    pub rate_window: Duration,
    pub reserve: Reserve,
    /// Connections of a parallel download (1: one stream).
    pub connections: u32,
    /// Downloads smaller than this use one connection.
    pub parallel_min_size: u64,
}

pub(super) fn parse_image(settings: &Settings, needs: Needs) -> Result<ImageConfig, ConfigError> {
    let source = non_empty(&settings.img_source)
        .map(parse_source)
        .transpose()?;
    let target = match non_empty(&settings.img_target) {
        Some(raw) => Some(parse_target(raw, &settings.image_dir)?),
        None => match &source {
            Some(source) => Some(ImageTarget::Name(default_target(source)?)),
            None => None,
        },
    };
    let sha256 = non_empty(&settings.img_sha256)
        .map(parse_sha256)
        .transpose()?;
    let auth = settings
        .img_auth_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
        .map(read_auth_file)
        .transpose()?;
    if let (Some(_), Some(ImageSource::Url(url))) = (&auth, &source) {
        if url.has_credentials() {
            return Err(invalid(
                "IMG_AUTH_FILE",
                &settings
                    .img_auth_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "IMG_SOURCE carries credentials too (user:password@)",
                "keep the credentials in IMG_AUTH_FILE only and remove them from IMG_SOURCE",
            ));
        }
    }
    let fetch = parse_fetch_limits(settings)?;

    if needs == Needs::Image && source.is_none() {
        let existing = match &target {
            Some(ImageTarget::Existing(_)) => true,
            Some(ImageTarget::Name(name)) => settings.image_dir.join(name).is_file(),
            None => false,
        };
        if !existing {
            return Err(ConfigError::Missing {
                var: "IMG_SOURCE",
                fix: format!(
                    "set it to the http(s) URL or path of a qcow2 or raw base image, or set \
                     IMG_TARGET to an image that already exists in IMAGE_DIR ({})",
                    settings.image_dir.display()
                ),
            });
        }
    }
    Ok(ImageConfig {
        source,
        target,
        sha256,
        dir: settings.image_dir.clone(),
        auth,
        fetch,
    })
}

fn parse_source(raw: &str) -> Result<ImageSource, ConfigError> {
    const FIX: &str = "use an http://, https:// or file:// URL, or a local path";
    if !raw.contains("://") {
        return Ok(ImageSource::Path(PathBuf::from(raw)));
    }
    // The value may hold a password: errors show it redacted.
    let shown = redact_raw(raw);
    let url = Url::parse(raw)
        .map_err(|e| invalid("IMG_SOURCE", &shown, format!("not a URL ({e})"), FIX))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(ImageSource::Url(ImageUrl::new(url))),
        "http" | "https" => Err(invalid("IMG_SOURCE", &shown, "the URL has no host", FIX)),
        "file" => url
            .to_file_path()
            .map(ImageSource::Path)
            .map_err(|()| invalid("IMG_SOURCE", &shown, "not a local file URL", FIX)),
        other => Err(invalid(
            "IMG_SOURCE",
            &shown,
            format!("unsupported scheme `{other}`"),
            FIX,
        )),
    }
}

/// Largest `IMG_AUTH_FILE` read: a token or `user:password` is far smaller.
const AUTH_FILE_MAX: u64 = 64 << 10;

/// Reads `IMG_AUTH_FILE`: a bearer token, or `user:password` for basic authentication (a
/// bearer token has no `:`, RFC 6750 §2.1). Opened without blocking (a FIFO must not hang the
/// start) and only when it is a regular file (a Secret's key is a symlink to one: followed).
fn read_auth_file(path: &Path) -> Result<ImageAuth, ConfigError> {
    let shown = path.display().to_string();
    let fail = |reason: String| {
        invalid(
            "IMG_AUTH_FILE",
            &shown,
            reason,
            "mount a Secret key holding a bearer token or user:password and point \
             IMG_AUTH_FILE at it, or unset it",
        )
    };
    let opened = crate::regular_file::open(path).map_err(|e| match e {
        crate::regular_file::RegularFileError::Open(io) => fail(format!("cannot open it ({io})")),
        other => fail(other.to_string()),
    })?;
    let len = opened.len();
    let mut file = opened.into_file();
    if len > AUTH_FILE_MAX {
        return Err(fail(format!(
            "{} bytes, more than a credential ({} at most)",
            len,
            ByteSize(AUTH_FILE_MAX)
        )));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(AUTH_FILE_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read it ({e})")))?;
    // Never quote the content: it is the secret.
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".to_owned()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    if text.chars().any(char::is_control) {
        return Err(fail(
            "it holds more than one line or control characters".to_owned(),
        ));
    }
    Ok(match text.split_once(':') {
        Some((user, password)) => ImageAuth::Basic {
            user: user.to_owned(),
            password: Secret(password.to_owned()),
        },
        None => ImageAuth::Bearer(Secret(text.to_owned())),
    })
}

/// More connections than this only burden the server (aria2c caps `-x` at 16 too).
const MAX_CONNECTIONS: u32 = 16;

fn parse_fetch_limits(settings: &Settings) -> Result<FetchLimits, ConfigError> {
    let attempts = settings.fetch_attempts.trim();
    let attempts = attempts
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| {
            invalid(
                "FETCH_ATTEMPTS",
                attempts,
                "not a number from 1 to 1000",
                "use e.g. 5",
            )
        })?;
    let stall_timeout = parse_duration("FETCH_STALL_TIMEOUT", &settings.fetch_stall_timeout)?;
    let rate_window = parse_duration("FETCH_RATE_WINDOW", &settings.fetch_rate_window)?;
    let min_rate = ByteSize::parse(&settings.fetch_min_rate, Some(1))
        .map_err(|e| {
            invalid(
                "FETCH_MIN_RATE",
                &settings.fetch_min_rate,
                e.to_string(),
                "use bytes per second like 16Ki or 1M, or 0 for no minimum",
            )
        })?
        .bytes();
    let connections = settings.fetch_connections.trim();
    let connections = connections
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
        .ok_or_else(|| {
            invalid(
                "FETCH_CONNECTIONS",
                connections,
                "not a number from 1 to 16",
                "use e.g. 4, or 1 for one stream",
            )
        })?;
    let parallel_min_size = ByteSize::parse(&settings.fetch_parallel_min_size, Some(1))
        .map_err(|e| {
            invalid(
                "FETCH_PARALLEL_MIN_SIZE",
                &settings.fetch_parallel_min_size,
                e.to_string(),
                "use a size like 64Mi",
            )
        })?
        .bytes();
    Ok(FetchLimits {
        attempts,
        stall_timeout,
        min_rate,
        rate_window,
        connections,
        parallel_min_size,
        reserve: parse_reserve(&settings.image_dir_reserve)?,
    })
}

/// `30s`, `2m`, or a bare number of seconds; more than zero, at most a day.
fn parse_duration(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    const FIX: &str = "use a duration like 60s or 2m (a bare number means seconds)";
    let trimmed = raw.trim();
    let duration = match trimmed.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(trimmed)
            .map_err(|e| invalid(var, raw, format!("not a duration ({e})"), FIX))?,
    };
    if duration.is_zero() || duration > Duration::from_secs(24 * 3600) {
        return Err(invalid(var, raw, "not between 1ms and a day", FIX));
    }
    Ok(duration)
}

/// `1Gi`, `512Mi`, `0` or `5%`.
fn parse_reserve(raw: &str) -> Result<Reserve, ConfigError> {
    const FIX: &str = "use a size like 1Gi or a share of the volume like 5% (0: no reserve)";
    let trimmed = raw.trim();
    if let Some(percent) = trimmed.strip_suffix('%') {
        return percent
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p < 100)
            .map(Reserve::Percent)
            .ok_or_else(|| {
                invalid(
                    "IMAGE_DIR_RESERVE",
                    raw,
                    "not a percentage from 0 to 99",
                    FIX,
                )
            });
    }
    if trimmed == "0" {
        return Ok(Reserve::Bytes(0));
    }
    ByteSize::parse(trimmed, None)
        .map(|size| Reserve::Bytes(size.bytes()))
        .map_err(|e| invalid("IMAGE_DIR_RESERVE", raw, e.to_string(), FIX))
}

/// The last path segment of the source, minus a compression suffix.
fn default_target(source: &ImageSource) -> Result<String, ConfigError> {
    let (raw, segment) = match source {
        ImageSource::Url(url) => (url.to_string(), url.last_segment().to_owned()),
        ImageSource::Path(path) => (
            path.display().to_string(),
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let name = COMPRESSION_SUFFIXES
        .iter()
        .find_map(|suffix| segment.strip_suffix(suffix))
        .unwrap_or(&segment);
    check_file_name(name).map(str::to_owned).map_err(|reason| {
        invalid(
            "IMG_SOURCE",
            &raw,
            format!("cannot derive the image file name from it: the last path segment {reason}"),
            "set IMG_TARGET to the file name the base image should have in IMAGE_DIR",
        )
    })
}

fn check_file_name(name: &str) -> Result<&str, &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains('/') {
        Err("contains `/`")
    } else if name.contains("..") {
        Err("contains `..`")
    } else if name.starts_with('.') {
        Err("starts with `.` (names starting with `.` are kvm-manager's temporary files)")
    } else if name.len() > 200 {
        Err("is longer than 200 bytes")
    } else if name.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(name)
    }
}

fn parse_target(raw: &str, image_dir: &Path) -> Result<ImageTarget, ConfigError> {
    let path = Path::new(raw);
    if path.is_absolute() {
        return if path.is_file() {
            Ok(ImageTarget::Existing(path.to_path_buf()))
        } else {
            Err(invalid(
                "IMG_TARGET",
                raw,
                "an absolute path must name an existing image file, and none is there",
                format!(
                    "mount the image at that path, or give a plain file name to download into \
                     IMAGE_DIR ({})",
                    image_dir.display()
                ),
            ))
        };
    }
    check_file_name(raw).map(|name| ImageTarget::Name(name.to_owned())).map_err(|reason| {
        invalid(
            "IMG_TARGET",
            raw,
            format!("the file name {reason}"),
            "use a plain file name such as debian-12.qcow2, or the absolute path of an existing image",
        )
    })
}

fn parse_sha256(raw: &str) -> Result<String, ConfigError> {
    let hex = raw
        .strip_prefix("sha256:")
        .unwrap_or(raw)
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(invalid(
            "IMG_SHA256",
            raw,
            format!("expected 64 hex digits, got {} characters", hex.len()),
            "paste the output of `sha256sum` for the file as downloaded, or unset it",
        ))
    }
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

    #[test]
    fn the_auth_file_holds_a_bearer_token_or_user_and_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cred");
        std::fs::write(&path, "tok.en-1\n").expect("write");
        assert_eq!(
            read_auth_file(&path).expect("token"),
            ImageAuth::Bearer(Secret("tok.en-1".into()))
        );
        std::fs::write(&path, "bob:pa:ss").expect("write");
        assert_eq!(
            read_auth_file(&path).expect("basic"),
            ImageAuth::Basic {
                user: "bob".into(),
                password: Secret("pa:ss".into())
            }
        );
        for bad in ["", "\n", "two\nlines"] {
            std::fs::write(&path, bad).expect("write");
            let err = read_auth_file(&path).expect_err(bad).to_string();
            assert!(!err.contains("two"), "never quoted: {err}");
        }
        let err = read_auth_file(dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn reserves_and_fetch_durations_parse() {
        assert_eq!(parse_reserve("1Gi").expect("size"), Reserve::Bytes(1 << 30));
        assert_eq!(parse_reserve("5%").expect("share"), Reserve::Percent(5));
        assert_eq!(parse_reserve("0").expect("none"), Reserve::Bytes(0));
        for bad in ["100%", "x%", "12"] {
            parse_reserve(bad).expect_err(bad);
        }
        assert_eq!(
            parse_duration("FETCH_STALL_TIMEOUT", "90").expect("secs"),
            Duration::from_secs(90)
        );
        parse_duration("FETCH_STALL_TIMEOUT", "0").expect_err("zero never ends a stall");
    }
}
