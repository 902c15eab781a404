//! Download progress as periodic log lines (a pod has no TTY): bytes, percent, MiB/s, ETA.

use std::fmt;
use std::time::{Duration, Instant};

use crate::size::MIB;

/// How often a progress line is logged.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Counts bytes and says when a line is due.
#[derive(Debug)]
pub struct Progress {
    total: Option<u64>,
    start_bytes: u64,
    started: Instant,
    last: Instant,
}

/// One progress line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub bytes: u64,
    pub total: Option<u64>,
    /// Bytes per second over this attempt (resumed bytes do not count as speed).
    pub rate: f64,
}

impl Progress {
    /// `bytes` already present (a resumed download) of `total` (when the server says).
    pub fn new(bytes: u64, total: Option<u64>, now: Instant) -> Self {
        Self {
            total,
            start_bytes: bytes,
            started: now,
            last: now,
        }
    }

    /// A report when [`INTERVAL`] has passed since the last one.
    pub fn tick(&mut self, bytes: u64, now: Instant) -> Option<Report> {
        if now.duration_since(self.last) < INTERVAL {
            return None;
        }
        self.last = now;
        Some(self.report(bytes, now))
    }

    pub fn report(&self, bytes: u64, now: Instant) -> Report {
        let secs = now.duration_since(self.started).as_secs_f64();
        let rate = if secs > 0.0 {
            bytes.saturating_sub(self.start_bytes) as f64 / secs
        } else {
            0.0
        };
        Report {
            bytes,
            total: self.total,
            rate,
        }
    }
}

impl Report {
    pub fn percent(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| self.bytes as f64 * 100.0 / t as f64)
    }

    pub fn eta(&self) -> Option<Duration> {
        let left = self.total?.saturating_sub(self.bytes);
        (self.rate > 0.0).then(|| Duration::from_secs((left as f64 / self.rate).ceil() as u64))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / MIB as f64;
        write!(f, "{:.1} MiB", mib(self.bytes))?;
        if let (Some(total), Some(percent)) = (self.total, self.percent()) {
            write!(f, " of {:.1} MiB ({percent:.0}%)", mib(total))?;
        }
        write!(f, ", {:.1} MiB/s", self.rate / MIB as f64)?;
        if let Some(eta) = self.eta() {
            write!(f, ", ETA {}", humantime::format_duration(eta))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_after_the_interval() {
        let t0 = Instant::now();
        let mut progress = Progress::new(0, Some(100 * MIB), t0);
        assert_eq!(progress.tick(MIB, t0 + Duration::from_secs(1)), None);
        let report = progress
            .tick(50 * MIB, t0 + Duration::from_secs(5))
            .expect("due");
        assert_eq!(report.percent(), Some(50.0));
        assert_eq!(report.eta(), Some(Duration::from_secs(5)));
        assert_eq!(
            report.to_string(),
            "50.0 MiB of 100.0 MiB (50%), 10.0 MiB/s, ETA 5s"
        );
        assert_eq!(progress.tick(60 * MIB, t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn resumed_bytes_do_not_count_as_speed_and_unknown_totals_have_no_eta() {
        let t0 = Instant::now();
        let progress = Progress::new(90 * MIB, None, t0);
        let report = progress.report(100 * MIB, t0 + Duration::from_secs(10));
        assert_eq!(report.rate, MIB as f64);
        assert_eq!(report.eta(), None);
        assert_eq!(report.to_string(), "100.0 MiB, 1.0 MiB/s");
    }
}
