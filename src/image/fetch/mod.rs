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
use reqwest::{Client, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::ranges::{self, Ranges};
use super::sink::Finished;
use super::source::Compression;
use super::{ImageError, Temps};
use crate::config::{redact_url, FetchLimits, ImageAuth, ImageUrl};

mod journal;
mod parallel;
mod resume;
mod stream;

pub(crate) use resume::{discard, tidy, Leftovers};
use resume::{keeps, resumable_partial, save_validator, Partial};
use stream::stream;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
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

/// Delay before retry number `failures` (1-based).
pub(crate) fn backoff(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The attempts of one download: `limit` of them, plus one for each failed attempt that made
/// progress, at most `limit` more — so never more than twice `limit` in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts {
    limit: u32,
    used: u32,
    earned: u32,
    /// Failures since the last progress (for the backoff).
    idle: u32,
}

impl Attempts {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            limit,
            used: 0,
            earned: 0,
            idle: 0,
        }
    }

    /// Counts a failed attempt; the delay before the next one, or `None` when none is left.
    pub(crate) fn failed(&mut self, progressed: bool) -> Option<Duration> {
        self.used += 1;
        if progressed {
            self.earned = (self.earned + 1).min(self.limit);
            self.idle = 1;
        } else {
            self.idle += 1;
        }
        (self.used < self.allowed()).then(|| backoff(self.idle))
    }

    pub(crate) fn used(&self) -> u32 {
        self.used
    }

    /// Attempts allowed as of now.
    pub(crate) fn allowed(&self) -> u32 {
        self.limit + self.earned
    }
}

/// The first byte and total length from a `Content-Range: bytes A-B/T` header.
pub(crate) fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// What a response's status (and `Content-Range`) means for a download that asked to resume
/// at `offset` (0: the whole file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 206 starting exactly at `offset`: append; `total` is the whole file's length if known.
    Resume { total: Option<u64> },
    /// 200: the whole file from its first byte (a fresh start, or the file changed).
    Whole,
    /// 206 for a range we did not ask for: the partial is discarded and the download retried.
    BadRange,
    /// 416: our partial no longer fits the file: discarded, and retried.
    StaleRange,
    /// 5xx: retried, the partial kept.
    ServerError,
    /// Anything else (4xx, a 206 we did not ask for, redirects reqwest did not follow): fatal.
    Refused,
}

pub(crate) fn classify(status: StatusCode, offset: u64, content_range: Option<&str>) -> Answer {
    match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            match content_range.and_then(self::content_range) {
                Some((start, total)) if start == offset => Answer::Resume { total },
                _ => Answer::BadRange,
            }
        }
        StatusCode::OK => Answer::Whole,
        StatusCode::RANGE_NOT_SATISFIABLE => Answer::StaleRange,
        s if s.is_server_error() => Answer::ServerError,
        _ => Answer::Refused,
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
    let (resume, total) = match classify(status, offset, range) {
        Answer::Resume { total } => (true, total),
        Answer::Whole => {
            if offset > 0 {
                tracing::info!(url = %url, "the server sent the whole file (no range support, or the file changed); starting over");
            }
            let total = response.content_length();
            let validator = Validator::from_headers(url, response.headers(), total);
            save_validator(temps, &validator).map_err(fatal)?;
            // A journal from an earlier parallel download is about another partial file.
            let _ = std::fs::remove_file(&temps.ranges);
            let accepts_ranges = response
                .headers()
                .get(header::ACCEPT_RANGES)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
            let candidate = !one_stream
                && ranges::parallel(
                    limits.connections,
                    limits.parallel_min_size,
                    total,
                    accepts_ranges,
                    validator.if_range().is_some(),
                    hint.is_some(),
                );
            if candidate {
                let mut response = response;
                let head = peek(&mut response, &shown, limits).await?;
                // Compressed without saying so in its name: the magic bytes tell.
                let magic: Vec<u8> = head.iter().flat_map(|c| c.iter().copied()).collect();
                if Compression::from_magic(&magic) == Compression::None {
                    let first = parallel::First { response, head };
                    return parallel::download(ctx, temps, &validator, Ranges::new(), Some(first))
                        .await;
                }
                return stream(response, head, ctx, temps, hint, false, total).await;
            }
            (false, total)
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
    stream(response, Vec::new(), ctx, temps, hint, resume, total).await
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
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn attempts_are_bounded_even_when_every_one_makes_progress() {
        let mut attempts = Attempts::new(3);
        let mut made = 1;
        while attempts.failed(true).is_some() {
            made += 1;
            assert!(made <= 6, "progress earns at most 3 more");
        }
        assert_eq!((made, attempts.used()), (6, 6));
    }

    #[test]
    fn attempts_without_progress_end_at_the_limit_with_growing_delays() {
        let mut attempts = Attempts::new(3);
        assert_eq!(attempts.failed(false), Some(FIRST_BACKOFF));
        assert_eq!(attempts.failed(false), Some(Duration::from_secs(1)));
        assert_eq!(attempts.failed(false), None);
        let mut mixed = Attempts::new(2);
        assert_eq!(
            mixed.failed(true),
            Some(FIRST_BACKOFF),
            "progress resets the delay"
        );
        assert_eq!(mixed.failed(false), Some(Duration::from_secs(1)));
        assert_eq!(mixed.failed(false), None, "2 + 1 earned");
    }

    #[test]
    fn a_206_resumes_only_at_the_offset_we_asked_for() {
        let partial = StatusCode::PARTIAL_CONTENT;
        assert_eq!(
            classify(partial, 100, Some("bytes 100-199/200")),
            Answer::Resume { total: Some(200) }
        );
        assert_eq!(
            classify(partial, 100, Some("bytes 100-199/*")),
            Answer::Resume { total: None }
        );
        assert_eq!(
            classify(partial, 100, Some("bytes 0-199/200")),
            Answer::BadRange
        );
        assert_eq!(classify(partial, 100, Some("garbage")), Answer::BadRange);
        assert_eq!(classify(partial, 100, None), Answer::BadRange);
        // A range we never asked for is not a download we can use.
        assert_eq!(classify(partial, 0, Some("bytes 0-9/10")), Answer::Refused);
    }

    #[test]
    fn other_statuses_start_over_retry_or_give_up() {
        assert_eq!(classify(StatusCode::OK, 0, None), Answer::Whole);
        assert_eq!(classify(StatusCode::OK, 100, None), Answer::Whole);
        assert_eq!(
            classify(StatusCode::RANGE_NOT_SATISFIABLE, 100, None),
            Answer::StaleRange
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, 100, None),
            Answer::ServerError
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, 0, None),
            Answer::ServerError
        );
        assert_eq!(classify(StatusCode::NOT_FOUND, 0, None), Answer::Refused);
        assert_eq!(classify(StatusCode::FORBIDDEN, 100, None), Answer::Refused);
        assert_eq!(classify(StatusCode::FOUND, 0, None), Answer::Refused);
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
            length: None,
        };
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(v(Some("\"abc\""), Some(date)).if_range(), Some("\"abc\""));
        assert_eq!(v(Some("W/\"abc\""), Some(date)).if_range(), Some(date));
        assert_eq!(v(Some("W/\"abc\""), None).if_range(), None);
        assert_eq!(v(None, None).if_range(), None);
    }
}
