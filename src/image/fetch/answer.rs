//! The pure decisions of a download: how many attempts it gets and how long it waits between
//! them, and what a response's status and `Content-Range` mean for it.

use std::time::Duration;

use reqwest::StatusCode;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
}
