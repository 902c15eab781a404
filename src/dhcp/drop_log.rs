//! Rate-limited logging of dropped packets: a hostile or broken peer must not be able to
//! flood the pod's log, but the operator must still learn that packets are being dropped.

use std::time::{Duration, Instant};

/// One line per `interval` at most, carrying how many drops were not logged in between.
#[derive(Debug)]
pub struct DropLog {
    what: &'static str,
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl DropLog {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            interval: Duration::from_secs(10),
            last: None,
            suppressed: 0,
        }
    }

    /// Logs `reason` for a packet from `peer`, unless a line was logged less than the interval
    /// ago.
    pub fn dropped(&mut self, peer: impl std::fmt::Display, reason: &dyn std::error::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %peer,
            error = %crate::error::render_chain(reason),
            suppressed = self.suppressed,
            "dropped a malformed {} packet (further drops logged at most every {}s)",
            self.what,
            self.interval.as_secs()
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}
