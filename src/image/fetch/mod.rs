//! Getting the bytes over HTTP(S), with resume and retries that end.
//!
//! (A local source is copied by [`super::local`].)
//!
//! A large, uncompressed file from a server that takes ranges is fetched over
//! `FETCH_CONNECTIONS` connections ([`parallel`], its progress journaled by [`journal`], the
//! spans decided in [`super::ranges`]); everything else is one stream ([`stream`]). The first
//! request is the same for both: its answer (size, `Accept-Ranges`, validator, the first
//! bytes' magic) decides, and becomes the first connection's first span.
//!
//! HTTP resume sends `Range: bytes=N-` with `If-Range` set to the validator (strong ETag, else
//! Last-Modified) saved when the partial file was started, so a server whose file changed
//! answers 200 with the whole new file instead of letting us splice two versions together.
//! The validator is kept beside the partial file (mode 0600, the URL in it redacted) with the
//! length the server announced; a partial file without both cannot be resumed and is removed.
//!
//! Every download ends: [`Attempts`] bounds the attempts (a cut-short response is a failed
//! attempt even when it brought bytes; progress earns a bounded number of extra ones), an
//! attempt fails when nothing arrives for `FETCH_STALL_TIMEOUT` or when the average rate over
//! `FETCH_RATE_WINDOW` stays below `FETCH_MIN_RATE` ([`Pace`]); a 4xx fails at once. Each
//! failure is logged with the attempt's number, and the last one is the final error's cause.
//!
//! Credentials (`user:password@` in the URL, or `IMG_AUTH_FILE`) travel only in the
//! Authorization header, which reqwest drops on a redirect to another host, port or scheme.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Client, Response};
use serde::{Deserialize, Serialize};

use super::ranges::{self, Ranges};
use super::sink::Finished;
use super::source::Compression;
use super::{ImageError, Temps};
use crate::config::{redact_url, FetchLimits, ImageAuth, ImageUrl};

mod answer;
mod body;
mod connection;
mod journal;
mod parallel;
mod resume;
mod stream;

use answer::{classify, content_range, Answer, Attempts};
pub(crate) use resume::{discard, tidy, Leftovers};
use resume::{keeps, resumable_partial, save_validator, Partial};
use stream::stream;

/// Chunks in flight between the network and the writing thread.
const CHANNEL: usize = 8;
/// A server that takes longer than this to accept a connection is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What makes a partial download resumable: the URL (redacted), the server's validator for
/// it, and the length it announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Validator {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    #[serde(default)]
    pub length: Option<u64>,
}

impl Validator {
    fn from_headers(url: &ImageUrl, headers: &HeaderMap, length: Option<u64>) -> Self {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            url: url.to_string(),
            etag: text(header::ETAG),
            last_modified: text(header::LAST_MODIFIED),
            length,
        }
    }

    /// The `If-Range` value: a strong ETag (weak ones are not allowed there, RFC 9110
    /// §13.1.5), else the Last-Modified date; `None` when the partial cannot be validated.
    pub(crate) fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

fn client(limits: &FetchLimits) -> Result<Client, ImageError> {
    // Only ring is compiled in; installing it twice (a second call) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No read timeout here: the stall timeout and the minimum rate below are ours.
    Client::builder()
        .user_agent(concat!("kvm-manager/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT.min(limits.stall_timeout))
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .map_err(ImageError::HttpClient)
}

/// Why one attempt failed, and whether it is worth another.
pub(super) struct Failed {
    error: ImageError,
    retry: bool,
    progressed: bool,
    /// The partial download is not worth resuming (the server's file is not the one begun).
    discard: bool,
    /// The server ignores ranges: one stream from now on.
    one_stream: bool,
}

fn fatal(error: ImageError) -> Failed {
    Failed {
        error,
        retry: false,
        progressed: false,
        discard: false,
        one_stream: false,
    }
}

fn retry(error: ImageError, progressed: bool) -> Failed {
    Failed {
        error,
        retry: true,
        progressed,
        discard: false,
        one_stream: false,
    }
}

/// What one download needs for each request.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    client: &'a Client,
    url: &'a ImageUrl,
    limits: &'a FetchLimits,
    auth: Option<&'a ImageAuth>,
}

impl Ctx<'_> {
    /// A GET of the URL, with its credential.
    fn get(&self) -> reqwest::RequestBuilder {
        // The URL's own user:password@ becomes basic authentication inside reqwest.
        let request = self.client.get(self.url.expose().clone());
        match self.auth {
            Some(ImageAuth::Bearer(token)) => request.bearer_auth(&token.0),
            Some(ImageAuth::Basic { user, password }) => {
                request.basic_auth(user, Some(&password.0))
            }
            None => request,
        }
    }
}

/// A network error, without the URL reqwest would print (it may hold a secret; ours is
/// redacted and already in the message).
fn network(url: &str, source: reqwest::Error) -> ImageError {
    ImageError::Network {
        url: url.to_owned(),
        source: source.without_url(),
    }
}

/// Downloads `url` into `temps`, resuming what is there, retrying what can be retried, until
/// it is complete or `limits` say to give up. On failure, what cannot be resumed is removed.
pub(crate) async fn http(
    url: &ImageUrl,
    temps: &Temps,
    hint: Option<Compression>,
    limits: &FetchLimits,
    auth: Option<&ImageAuth>,
) -> Result<Finished, ImageError> {
    let client = client(limits)?;
    let ctx = Ctx {
        client: &client,
        url,
        limits,
        auth,
    };
    let mut attempts = Attempts::new(limits.attempts);
    let mut one_stream = false;
    loop {
        let failed = match attempt(ctx, temps, hint, one_stream).await {
            Ok(finished) => return Ok(finished),
            Err(failed) => failed,
        };
        if failed.discard {
            discard(temps);
        }
        if failed.one_stream && !one_stream {
            tracing::info!(url = %url, "the server ignores ranges; downloading over one connection");
            one_stream = true;
        }
        if !failed.retry {
            return Err(failed.error);
        }
        // Bytes that cannot be resumed are no progress: the next attempt starts over.
        let progressed = failed.progressed && resumable_partial(url, temps).is_some();
        match attempts.failed(progressed) {
            Some(delay) => {
                tracing::warn!(
                    url = %url,
                    attempt = attempts.used(),
                    allowed = attempts.allowed(),
                    error = %crate::logging::render_chain(&failed.error),
                    retry_in = %humantime::format_duration(delay),
                    "download attempt failed; will try again"
                );
                tokio::time::sleep(delay).await;
            }
            None => {
                // What is kept is decided (and done) by [`resume::abandon`], with the same rule.
                let kept = match keeps(temps, Some(url), &failed.error) {
                    Some(bytes) => {
                        format!("the partial file ({bytes} bytes) is kept and resumed on the next start")
                    }
                    None => "nothing was kept (the download cannot be resumed)".to_owned(),
                };
                return Err(ImageError::GaveUp {
                    url: url.to_string(),
                    attempts: attempts.used(),
                    limit: limits.attempts,
                    kept,
                    last: Box::new(failed.error),
                });
            }
        }
    }
}

async fn attempt(
    ctx: Ctx<'_>,
    temps: &Temps,
    hint: Option<Compression>,
    one_stream: bool,
) -> Result<Finished, Failed> {
    let Ctx { url, limits, .. } = ctx;
    let shown = url.to_string();
    let partial = resumable_partial(url, temps);
    let (offset, validator) = match partial {
        Some(Partial {
            ranges: Some(done),
            validator,
            ..
        }) => return parallel::download(ctx, temps, &validator, done, None).await,
        Some(Partial {
            bytes, validator, ..
        }) => (bytes, Some(validator)),
        None => (0, None),
    };
    let mut request = ctx.get();
    if let (true, Some(if_range)) = (offset > 0, validator.as_ref().and_then(Validator::if_range)) {
        tracing::info!(url = %url, offset, "resuming a partial download");
        request = request
            .header(header::RANGE, format!("bytes={offset}-"))
            .header(header::IF_RANGE, if_range);
    }
    let response = match tokio::time::timeout(limits.stall_timeout, request.send()).await {
        Err(_) => {
            let stalled = ImageError::Stalled {
                url: shown,
                timeout: limits.stall_timeout,
                received: offset,
            };
            return Err(retry(stalled, false));
        }
        Ok(Err(source)) => return Err(retry(network(&shown, source), false)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let final_url = redact_url(response.url());
    let range = response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    let total = match classify(status, offset, range) {
        Answer::Resume { total } => total,
        Answer::Whole => {
            if offset > 0 {
                tracing::info!(url = %url, "the server sent the whole file (no range support, or the file changed); starting over");
            }
            return from_the_start(ctx, temps, hint, one_stream, response).await;
        }
        Answer::BadRange => {
            discard(temps);
            return Err(retry(ImageError::BadRange { url: final_url }, true));
        }
        Answer::StaleRange => {
            discard(temps);
            let error = ImageError::ServerStatus {
                url: final_url,
                status,
            };
            return Err(retry(error, true));
        }
        Answer::ServerError => {
            let error = ImageError::ServerStatus {
                url: final_url,
                status,
            };
            return Err(retry(error, false));
        }
        Answer::Refused => {
            return Err(fatal(ImageError::ClientStatus {
                url: final_url,
                status,
            }))
        }
    };
    stream(response, Vec::new(), ctx, temps, hint, true, total).await
}

/// A 200: the whole file from its first byte, over several connections when it is worth it
/// (the answer's first bytes become the first connection's), else as one stream.
async fn from_the_start(
    ctx: Ctx<'_>,
    temps: &Temps,
    hint: Option<Compression>,
    one_stream: bool,
    mut response: Response,
) -> Result<Finished, Failed> {
    let Ctx { url, limits, .. } = ctx;
    let total = response.content_length();
    let validator = Validator::from_headers(url, response.headers(), total);
    save_validator(temps, &validator).map_err(fatal)?;
    // A journal from an earlier parallel download is about another partial file.
    let _ = std::fs::remove_file(&temps.ranges);
    let accepts_ranges = response
        .headers()
        .get(header::ACCEPT_RANGES)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
    let parallel = !one_stream
        && ranges::parallel(
            limits.connections,
            limits.parallel_min_size,
            total,
            accepts_ranges,
            validator.if_range().is_some(),
            hint.is_some(),
        );
    if !parallel {
        return stream(response, Vec::new(), ctx, temps, hint, false, total).await;
    }
    let head = peek(&mut response, &url.to_string(), limits).await?;
    // Compressed without saying so in its name: the magic bytes tell.
    let magic: Vec<u8> = head.iter().flat_map(|c| c.iter().copied()).collect();
    if Compression::from_magic(&magic) != Compression::None {
        return stream(response, head, ctx, temps, hint, false, total).await;
    }
    let first = connection::First { response, head };
    parallel::download(ctx, temps, &validator, Ranges::new(), Some(first)).await
}

/// Reads the first chunks of `response`, enough to see the compression's magic bytes.
async fn peek(
    response: &mut Response,
    shown: &str,
    limits: &FetchLimits,
) -> Result<Vec<Bytes>, Failed> {
    let mut head = Vec::new();
    let mut len = 0;
    while len < Compression::MAGIC_LEN {
        match tokio::time::timeout(limits.stall_timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                len += chunk.len();
                head.push(chunk);
            }
            Ok(Ok(None)) => break,
            Ok(Err(source)) => return Err(retry(network(shown, source), false)),
            Err(_) => {
                let stalled = ImageError::Stalled {
                    url: shown.to_owned(),
                    timeout: limits.stall_timeout,
                    received: 0,
                };
                return Err(retry(stalled, false));
            }
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_range_prefers_a_strong_etag_and_never_uses_a_weak_one() {
        let v = |etag: Option<&str>, lm: Option<&str>| Validator {
            url: "http://x/y".into(),
            etag: etag.map(Into::into),
            last_modified: lm.map(Into::into),
            length: None,
        };
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(v(Some("\"abc\""), Some(date)).if_range(), Some("\"abc\""));
        assert_eq!(v(Some("W/\"abc\""), Some(date)).if_range(), Some(date));
        assert_eq!(v(Some("W/\"abc\""), None).if_range(), None);
        assert_eq!(v(None, None).if_range(), None);
    }
}
