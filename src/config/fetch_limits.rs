//! `FETCH_*` and `IMAGE_DIR_RESERVE`: when a download gives up.

use std::fmt;
use std::time::Duration;

use super::{duration, invalid, ConfigError};
use crate::cli::Settings;
use crate::size::ByteSize;

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

/// More connections than this only burden the server (aria2c caps `-x` at 16 too).
const MAX_CONNECTIONS: u32 = 16;

pub(super) fn parse_fetch_limits(settings: &Settings) -> Result<FetchLimits, ConfigError> {
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
    let duration = duration::parse(var, raw, FIX)?;
    if duration.is_zero() || duration > duration::DAY {
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

#[cfg(test)]
mod tests {
    use super::*;

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
