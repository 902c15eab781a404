//! Rate-limited logging of per-packet events: a hostile or broken peer must not be able to
//! flood the pod's log, but the operator must still learn what happens and how often.
//!
//! [`LogLimit`] decides (pure: the caller passes the time), [`LogLimits`] keeps one per kind
//! of line, [`DropLog`] is the one line for malformed packets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most `burst` lines per `window`; the next line admitted after some were held back
/// carries how many.
#[derive(Debug, Clone)]
pub struct LogLimit {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)`: log the line now, saying that `suppressed` were left out since
    /// the last one. `None`: stay silent (counted for the next line).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window)
        {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// The `suppressed` field of a line: left out (not `suppressed=0`) while nothing was.
pub fn shown(suppressed: u64) -> Option<u64> {
    (suppressed > 0).then_some(suppressed)
}

/// Lines per packet: 5 of each kind per 10 s (a DHCP exchange logs one or two).
pub const PER_PACKET: LogLimit = LogLimit::new(5, Duration::from_secs(10));

/// One [`LogLimit`] per kind of line, so a flood of one kind never hides another.
#[derive(Debug)]
pub struct LogLimits {
    template: LogLimit,
    kinds: HashMap<&'static str, LogLimit>,
}

impl LogLimits {
    pub fn new(template: LogLimit) -> Self {
        Self {
            template,
            kinds: HashMap::new(),
        }
    }

    /// [`LogLimit::admit`] for the line `kind`, now.
    pub fn admit(&mut self, kind: &'static str) -> Option<u64> {
        self.admit_at(kind, Instant::now())
    }

    pub fn admit_at(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        let template = &self.template;
        self.kinds
            .entry(kind)
            .or_insert_with(|| template.clone())
            .admit(now)
    }
}

impl Default for LogLimits {
    fn default() -> Self {
        Self::new(PER_PACKET)
    }
}

/// One line per `interval` at most, carrying how many drops were not logged in between.
#[derive(Debug)]
pub struct DropLog {
    what: &'static str,
    interval: Duration,
    limit: LogLimit,
}

impl DropLog {
    pub fn new(what: &'static str) -> Self {
        let interval = Duration::from_secs(10);
        Self {
            what,
            interval,
            limit: LogLimit::new(1, interval),
        }
    }

    /// Logs `reason` for a packet from `peer`, unless a line was logged less than the interval
    /// ago.
    pub fn dropped(&mut self, peer: impl std::fmt::Display, reason: &dyn std::error::Error) {
        let Some(suppressed) = self.limit.admit(Instant::now()) else {
            return;
        };
        tracing::warn!(
            %peer,
            error = %crate::logging::render_chain(reason),
            suppressed = shown(suppressed),
            "dropped a malformed {} packet (further drops logged at most every {}s)",
            self.what,
            self.interval.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn a_flood_logs_the_burst_then_one_line_per_window_with_the_count_left_out() {
        let mut limit = LogLimit::new(3, WINDOW);
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..1000u64)
            .map(|i| limit.admit(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(&admitted[..3], &[Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // The next window: the first line says how many of the flood were not logged.
        assert_eq!(limit.admit(t0 + WINDOW), Some(997));
        assert_eq!(limit.admit(t0 + WINDOW), Some(0));
    }

    #[test]
    fn quiet_traffic_is_logged_line_by_line() {
        let mut limit = LogLimit::new(1, WINDOW);
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(limit.admit(t0 + WINDOW * i), Some(0), "line {i}");
        }
    }

    #[test]
    fn each_kind_of_line_has_its_own_budget() {
        let mut limits = LogLimits::new(LogLimit::new(1, WINDOW));
        let t0 = Instant::now();
        assert_eq!(limits.admit_at("offer", t0), Some(0));
        assert_eq!(limits.admit_at("offer", t0), None);
        assert_eq!(
            limits.admit_at("ack", t0),
            Some(0),
            "offers do not hide acks"
        );
        assert_eq!(limits.admit_at("offer", t0 + WINDOW), Some(1));
    }
}
