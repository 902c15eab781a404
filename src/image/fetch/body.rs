//! Reading one response body chunk by chunk, as both download paths do: each wait on the
//! server bounded by `FETCH_STALL_TIMEOUT`, and the rate over `FETCH_RATE_WINDOW` checked
//! against `FETCH_MIN_RATE` (time spent waiting on the server only, not on our own disk).

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Response;

use super::super::progress::{Pace, TooSlow};
use super::super::ImageError;
use crate::config::FetchLimits;

/// Why a body stopped before its end.
pub(super) enum Stop {
    Network(reqwest::Error),
    Stalled,
    TooSlow(TooSlow),
}

impl Stop {
    /// The error of a body that stopped here, `received` bytes kept for resume.
    pub(super) fn error(
        self,
        url: String,
        received: u64,
        total: Option<u64>,
        limits: &FetchLimits,
    ) -> ImageError {
        match self {
            Stop::Network(source) => ImageError::BodyBroken {
                url,
                received,
                total,
                source: source.without_url(),
            },
            Stop::Stalled => ImageError::Stalled {
                url,
                timeout: limits.stall_timeout,
                received,
            },
            Stop::TooSlow(slow) => ImageError::TooSlow {
                url,
                bytes: slow.bytes,
                window: slow.window,
                min_rate: limits.min_rate,
                received,
            },
        }
    }
}

/// A body being read, with the time waited on the server and the bytes it sent.
pub(super) struct Body<'a> {
    response: &'a mut Response,
    stall_timeout: Duration,
    pace: Pace,
    waited: Duration,
    arrived: u64,
}

impl<'a> Body<'a> {
    pub(super) fn new(response: &'a mut Response, limits: &FetchLimits) -> Self {
        Self {
            response,
            stall_timeout: limits.stall_timeout,
            pace: Pace::new(limits.min_rate, limits.rate_window),
            waited: Duration::ZERO,
            arrived: 0,
        }
    }

    /// The next chunk, `None` at the end of the body.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, Stop> {
        let asked = Instant::now();
        let next = tokio::time::timeout(self.stall_timeout, self.response.chunk()).await;
        self.waited += asked.elapsed();
        match next {
            Ok(Ok(Some(chunk))) => {
                self.arrived += chunk.len() as u64;
                Ok(Some(chunk))
            }
            Ok(Ok(None)) => Ok(None),
            Ok(Err(source)) => Err(Stop::Network(source)),
            Err(_) => Err(Stop::Stalled),
        }
    }

    /// After a chunk was handed on: whether the server is still fast enough.
    pub(super) fn paced(&mut self) -> Result<(), Stop> {
        self.pace
            .record(self.waited, self.arrived)
            .map_err(Stop::TooSlow)
    }
}
