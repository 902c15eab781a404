//! Download progress as periodic log lines (a pod has no TTY): bytes, percent, MiB/s, ETA;
//! and [`Pace`], which decides when a download is too slow to be worth waiting for.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::size::MIB;

/// How often a progress line is logged.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);

/// Counts bytes and says when a line is due.
#[derive(Debug)]
pub(crate) struct Progress {
    total: Option<u64>,
    start_bytes: u64,
    started: Instant,
    last: Instant,
}

/// One progress line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Report {
    pub bytes: u64,
    pub total: Option<u64>,
    /// Bytes per second over this attempt (resumed bytes do not count as speed).
    pub rate: f64,
}

impl Progress {
    /// `bytes` already present (a resumed download) of `total` (when the server says).
    pub(crate) fn new(bytes: u64, total: Option<u64>, now: Instant) -> Self {
        Self {
            total,
            start_bytes: bytes,
            started: now,
            last: now,
        }
    }

    /// A report when [`INTERVAL`] has passed since the last one.
    pub(crate) fn tick(&mut self, bytes: u64, now: Instant) -> Option<Report> {
        if now.duration_since(self.last) < INTERVAL {
            return None;
        }
        self.last = now;
        Some(self.report(bytes, now))
    }

    pub(crate) fn report(&self, bytes: u64, now: Instant) -> Report {
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
    pub(crate) fn percent(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| self.bytes as f64 * 100.0 / t as f64)
    }

    pub(crate) fn eta(&self) -> Option<Duration> {
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

/// The minimum average rate over a sliding window (curl's `--speed-limit`/`--speed-time`).
///
/// Time here is the time spent waiting on the network, given by the caller: the time our own
/// disk keeps the network reader waiting is the server's due, not its fault.
#[derive(Debug)]
pub(crate) struct Pace {
    min_rate: u64,
    window: Duration,
    /// (time, bytes so far), oldest first, at least `window / SAMPLES` apart.
    samples: VecDeque<(Duration, u64)>,
}

const SAMPLES: u32 = 32;

/// Too few bytes arrived over the last window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooSlow {
    /// Bytes that arrived during the window.
    pub bytes: u64,
    pub window: Duration,
}

impl Pace {
    /// `min_rate` in bytes per second (0: no minimum).
    pub(crate) fn new(min_rate: u64, window: Duration) -> Self {
        let mut samples = VecDeque::new();
        samples.push_back((Duration::ZERO, 0));
        Self {
            min_rate,
            window,
            samples,
        }
    }

    /// Records that `bytes` had arrived by `at`; fails once a whole window has passed with
    /// fewer than `min_rate × window` bytes in it.
    pub(crate) fn record(&mut self, at: Duration, bytes: u64) -> Result<(), TooSlow> {
        if self.min_rate == 0 {
            return Ok(());
        }
        let step = self.window / SAMPLES;
        if self
            .samples
            .back()
            .is_none_or(|(last, _)| at.saturating_sub(*last) >= step)
        {
            self.samples.push_back((at, bytes));
        }
        let Some(start) = at.checked_sub(self.window) else {
            return Ok(()); // not a whole window yet
        };
        // The newest sample at or before the window's start is its baseline.
        while self.samples.len() > 1 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        let Some(&(_, then)) = self.samples.front() else {
            return Ok(());
        };
        let arrived = bytes.saturating_sub(then);
        let wanted = self.min_rate as f64 * self.window.as_secs_f64();
        if (arrived as f64) < wanted {
            return Err(TooSlow {
                bytes: arrived,
                window: self.window,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_fails_once_a_whole_window_is_below_the_minimum() {
        let s = Duration::from_secs;
        let mut pace = Pace::new(100, s(10));
        // One byte every second: fine until a whole window has passed.
        for t in 1..10 {
            pace.record(s(t), t).expect("not a whole window yet");
        }
        let slow = pace.record(s(11), 11).expect_err("11 bytes in 11 s");
        assert_eq!(slow.window, s(10));
        assert!(slow.bytes <= 11, "{slow:?}");
    }

    #[test]
    fn a_fast_start_does_not_excuse_a_stall_later_and_zero_disables() {
        let s = Duration::from_secs;
        let mut pace = Pace::new(100, s(10));
        pace.record(s(1), 1_000_000).expect("fast");
        pace.record(s(5), 1_000_100)
            .expect("not a whole window yet");
        let slow = pace
            .record(s(11), 1_000_200)
            .expect_err("only 200 bytes in 1..11 s");
        assert_eq!(slow.bytes, 200);
        let mut off = Pace::new(0, s(10));
        off.record(s(100), 0).expect("no minimum");
    }

    #[test]
    fn a_steady_rate_above_the_minimum_passes() {
        let ms = Duration::from_millis;
        let mut pace = Pace::new(1000, ms(2000));
        for i in 1..=100u64 {
            pace.record(ms(i * 100), i * 200).expect("2000 B/s");
        }
    }

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
