//! Getting the bytes over HTTP(S), with resume and retries.
//!
//! (A local source is copied by [`super::local`].)
//!
//! HTTP resume sends `Range: bytes=N-` with `If-Range` set to the validator (strong ETag, else
//! Last-Modified) saved when the partial file was started, so a server whose file changed
//! answers 200 with the whole new file instead of letting us splice two versions together.
//! The validator is kept beside the partial file with the URL it belongs to; a partial file
//! without one is started over. Network errors and 5xx are retried with exponential backoff
//! (the count resets whenever an attempt made progress); a 4xx fails at once.

use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use reqwest::{Client, Response, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use super::sink::{Finished, Sink};
use super::source::Compression;
use super::{space, ImageError, Temps};

/// Consecutive attempts without progress before giving up.
const MAX_FAILURES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Chunks in flight between the network and the writing thread.
const CHANNEL: usize = 8;

/// What makes a partial download resumable: the URL and the server's validator for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validator {
    fn from_headers(url: &Url, headers: &HeaderMap) -> Self {
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
        }
    }

    /// The `If-Range` value: a strong ETag (weak ones are not allowed there, RFC 9110
    /// §13.1.5), else the Last-Modified date; `None` when the partial cannot be validated.
    pub fn if_range(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .filter(|e| !e.starts_with("W/"))
            .or(self.last_modified.as_deref())
    }
}

/// Delay before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The first byte and total length from a `Content-Range: bytes A-B/T` header.
pub fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn client() -> Result<Client, ImageError> {
    // Only ring is compiled in; installing it twice (a second call) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .user_agent(concat!("kvm-manager/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(ImageError::HttpClient)
}

/// Why one attempt failed, and whether it is worth another.
struct Failed {
    error: ImageError,
    retry: bool,
    progressed: bool,
}

fn fatal(error: ImageError) -> Failed {
    Failed {
        error,
        retry: false,
        progressed: false,
    }
}

/// Downloads `url` into `temps`, resuming what is there, retrying what can be retried.
pub async fn http(
    url: &Url,
    temps: &Temps,
    hint: Option<Compression>,
) -> Result<Finished, ImageError> {
    let client = client()?;
    let mut failures = 0;
    loop {
        match attempt(&client, url, temps, hint).await {
            Ok(finished) => return Ok(finished),
            Err(failed) if failed.retry => {
                failures = if failed.progressed { 1 } else { failures + 1 };
                if failures >= MAX_FAILURES {
                    return Err(failed.error);
                }
                let delay = backoff(failures);
                tracing::warn!(
                    url = %url,
                    error = %crate::error::render_chain(&failed.error),
                    retry_in = %humantime::format_duration(delay),
                    "download failed; will resume"
                );
                tokio::time::sleep(delay).await;
            }
            Err(failed) => return Err(failed.error),
        }
    }
}

async fn attempt(
    client: &Client,
    url: &Url,
    temps: &Temps,
    hint: Option<Compression>,
) -> Result<Finished, Failed> {
    let (offset, validator) = resumable(url, temps);
    let mut request = client.get(url.clone());
    if let (true, Some(if_range)) = (offset > 0, validator.as_ref().and_then(Validator::if_range)) {
        tracing::info!(url = %url, offset, "resuming a partial download");
        request = request
            .header(header::RANGE, format!("bytes={offset}-"))
            .header(header::IF_RANGE, if_range);
    }
    let network = |source| Failed {
        error: ImageError::Network {
            url: url.to_string(),
            source,
        },
        retry: true,
        progressed: false,
    };
    let response = request.send().await.map_err(network)?;
    let status = response.status();
    let final_url = response.url().to_string();
    let (resume, total) = match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let range = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range);
            match range {
                Some((start, total)) if start == offset => (true, total),
                _ => {
                    discard(temps);
                    return Err(Failed {
                        error: ImageError::BadRange { url: final_url },
                        retry: true,
                        progressed: true,
                    });
                }
            }
        }
        StatusCode::OK => {
            if offset > 0 {
                tracing::info!(url = %url, "the server sent the whole file (no range support, or the file changed); starting over");
            }
            let validator = Validator::from_headers(url, response.headers());
            save_validator(temps, &validator).map_err(fatal)?;
            (false, response.content_length())
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            discard(temps);
            return Err(Failed {
                error: ImageError::ServerStatus {
                    url: final_url,
                    status,
                },
                retry: true,
                progressed: true,
            });
        }
        s if s.is_server_error() => {
            return Err(Failed {
                error: ImageError::ServerStatus {
                    url: final_url,
                    status,
                },
                retry: true,
                progressed: false,
            })
        }
        _ => {
            return Err(fatal(ImageError::ClientStatus {
                url: final_url,
                status,
            }))
        }
    };
    let start = if resume { offset } else { 0 };
    if let Some(total) = total {
        space::check(&temps.dir, total.saturating_sub(start)).map_err(fatal)?;
    }
    stream(response, url, temps, hint, resume, total).await
}

/// Moves the body to a writing thread, chunk by chunk.
async fn stream(
    mut response: Response,
    url: &Url,
    temps: &Temps,
    hint: Option<Compression>,
    resume: bool,
    total: Option<u64>,
) -> Result<Finished, Failed> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(CHANNEL);
    let temps_for_sink = Temps {
        total,
        ..temps.clone()
    };
    let label = url.to_string();
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = Sink::open(&temps_for_sink, hint, resume, total, &label)?;
        let started_at = sink.received();
        while let Some(chunk) = rx.blocking_recv() {
            sink.feed(&chunk)?;
        }
        Ok::<_, ImageError>((sink, started_at))
    });
    let mut network_error = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is below
                }
            }
            Ok(None) => break,
            Err(source) => {
                network_error = Some(source);
                break;
            }
        }
    }
    drop(tx);
    let (sink, started_at) = writer
        .await
        .map_err(|e| fatal(ImageError::Internal(e.to_string())))?
        .map_err(fatal)?;
    let progressed = sink.received() > started_at;
    if let Some(source) = network_error {
        let _ = sink.keep_partial();
        return Err(Failed {
            error: ImageError::Network {
                url: url.to_string(),
                source,
            },
            retry: true,
            progressed,
        });
    }
    if let Some(total) = total.filter(|t| *t != sink.received()) {
        let received = sink.keep_partial().map_err(fatal)?;
        return Err(Failed {
            error: ImageError::ShortBody {
                url: url.to_string(),
                received,
                total,
            },
            retry: true,
            progressed,
        });
    }
    sink.finish().map_err(fatal)
}

/// The offset and validator of a partial download of `url` that may be resumed.
fn resumable(url: &Url, temps: &Temps) -> (u64, Option<Validator>) {
    let len = std::fs::metadata(&temps.part).map_or(0, |m| m.len());
    let validator = std::fs::read(&temps.meta)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Validator>(&bytes).ok())
        .filter(|v| v.url == url.as_str());
    match validator {
        Some(v) if len > 0 && v.if_range().is_some() => (len, Some(v)),
        _ => (0, None),
    }
}

fn save_validator(temps: &Temps, validator: &Validator) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec(validator).map_err(|e| ImageError::Internal(e.to_string()))?;
    crate::atomic_file::write(&temps.meta, &bytes)
        .map_err(|source| temps.write_error(&temps.meta, source))
}

/// Forgets a partial download that cannot be resumed.
pub fn discard(temps: &Temps) {
    for path in [&temps.part, &temps.meta, &temps.unpacked] {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
    }

    #[test]
    fn if_range_prefers_a_strong_etag_and_never_uses_a_weak_one() {
        let v = |etag: Option<&str>, lm: Option<&str>| Validator {
            url: "http://x/y".into(),
            etag: etag.map(Into::into),
            last_modified: lm.map(Into::into),
        };
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(v(Some("\"abc\""), Some(date)).if_range(), Some("\"abc\""));
        assert_eq!(v(Some("W/\"abc\""), Some(date)).if_range(), Some(date));
        assert_eq!(v(Some("W/\"abc\""), None).if_range(), None);
        assert_eq!(v(None, None).if_range(), None);
    }
}
