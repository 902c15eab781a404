//! Which HTTP connections the server keeps, and when it lets one go. Pure: the IO that carries
//! these decisions out is in `listener.rs`.
//!
//! `HTTP_PORT` is reachable from every pod in the cluster, and the kubelet's probes share it with
//! whoever else connects. So that no number of connections that do nothing can stop the probes:
//! - a connection with no request in flight is *idle*; it is closed after [`IDLE_TIMEOUT`], and
//!   once the first byte of a request has arrived the whole head must follow within
//!   [`HEADER_TIMEOUT`] (a slowloris client trickles it forever);
//! - at most [`Limits::cap`] connections are open. A new connection is always admitted: to make
//!   room, the ones idle the longest are closed (connections busy with a request only when none
//!   is idle), so the newest connection, which is what a probe is, is the last to go. The cap
//!   is high on purpose: connections beyond it wait in the kernel's accept queue, in order, and
//!   a probe queued behind them waits for all of them to be taken (and others shed). A
//!   connection that has sent nothing costs little (no buffers until its first byte);
//! - a connection upgraded to a WebSocket (the web console) is handed over to its handler and
//!   leaves this table: viewers are long-lived by design and have their own limits.

use std::time::{Duration, Instant};

/// How long a connection may sit with no request in flight (before its first request, or
/// between keep-alive requests). Clients reconnect when they need to; an idle socket is worth
/// nothing to us and costs a file descriptor and its buffers.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a request head may take from its first byte to its last. A real client sends it
/// in one packet; the kubelet's own probe timeout is 1 s.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most, whatever the open-files limit allows. Our clients are the
/// kubelet, Prometheus and a few people, far below this; a flood is better held than churned
/// (see the module doc), and at this cap it costs at most some 40 MiB (a connection holds an
/// 8 KiB read buffer once it has sent a byte), handed back when the flood ends.
pub(super) const MAX_CONNECTIONS: usize = 4096;
/// Connections shed at once when the cap is reached, as a share of the cap: one scan of the
/// table makes room for a burst, instead of one scan per new connection.
const SHED_SHARE: usize = 32;
/// The least the cap may be, however low the open-files limit.
const MIN_CONNECTIONS: usize = 16;
/// At most one warning about shed connections per this period.
pub(super) const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Freed memory is handed back to the system once open connections fall to a quarter of a peak
/// at least this high (a flood has ended).
const TRIM_AFTER_PEAK: usize = 128;

/// The limits one server applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub idle: Duration,
    pub header: Duration,
    pub cap: usize,
}

impl Limits {
    /// The limits for a process allowed `open_files` descriptors.
    pub(super) fn for_open_files(open_files: u64) -> Self {
        Self {
            idle: IDLE_TIMEOUT,
            header: HEADER_TIMEOUT,
            cap: cap_for(open_files),
        }
    }
}

/// The connection cap for an open-files limit: half of it at most, because the DNS forwarder,
/// QMP, the console, the image download and the web console's sockets need descriptors too.
pub(super) fn cap_for(open_files: u64) -> usize {
    let half = usize::try_from(open_files / 2).unwrap_or(usize::MAX);
    half.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// What one connection is doing, as far as closing it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Activity {
    /// Requests whose response is not fully sent yet.
    in_flight: u32,
    /// When the current state began: idle since the connection was accepted or its last
    /// response was sent; busy since its request arrived.
    since: Instant,
    /// While idle: when the first byte of the next request head arrived.
    head_since: Option<Instant>,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// Nothing arrived for [`Limits::idle`].
    Idle,
    /// A request head took longer than [`Limits::header`].
    Header,
}

impl Expiry {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Expiry::Idle => "idle timeout",
            Expiry::Header => "request header timeout",
        }
    }
}

/// When to look at a connection again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    Expired(Expiry),
    /// Nothing to do before this instant.
    At(Instant),
}

impl Activity {
    /// A connection just accepted: idle, nothing received.
    pub(super) fn accepted(now: Instant) -> Self {
        Self {
            in_flight: 0,
            since: now,
            head_since: None,
        }
    }

    /// Bytes arrived. While idle, they start a request head and its clock.
    pub(super) fn bytes_read(&mut self, now: Instant) {
        if self.in_flight == 0 && self.head_since.is_none() {
            self.head_since = Some(now);
        }
    }

    /// A request head was read in full and handed to its handler.
    pub(super) fn request_started(&mut self, now: Instant) {
        if self.in_flight == 0 {
            self.since = now;
        }
        self.in_flight += 1;
        self.head_since = None;
    }

    /// A response was sent in full (or dropped).
    pub(super) fn response_done(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.since = now;
            self.head_since = None;
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.in_flight == 0
    }

    /// Whether the connection has overstayed, and if not, when to check again.
    ///
    /// The next check is never later than `now + header`: a head that starts after this call
    /// cannot expire before then, so its timeout is never overslept.
    pub(super) fn check(&self, now: Instant, limits: &Limits) -> Check {
        let deadline = match (self.in_flight, self.head_since) {
            // A request in flight is bounded by the router's request timeout, not here.
            (1.., _) => None,
            (0, Some(head)) => Some((head + limits.header, Expiry::Header)),
            (0, None) => Some((self.since + limits.idle, Expiry::Idle)),
        };
        let recheck = now + limits.header;
        match deadline {
            Some((at, why)) if at <= now => Check::Expired(why),
            Some((at, _)) => Check::At(at.min(recheck)),
            None => Check::At(recheck),
        }
    }

    /// The order in which connections are shed: idle before busy, then the oldest first.
    fn shed_rank(&self) -> (bool, Instant) {
        (!self.is_idle(), self.since)
    }
}

/// How many connections to close when a new one arrives at the cap.
pub(super) fn shed_batch(cap: usize) -> usize {
    (cap / SHED_SHARE).max(1)
}

/// The `n` connections to close to make room for new ones: those idle the longest, then, if
/// that is not enough, those busy the longest.
pub(super) fn victims<K>(connections: impl IntoIterator<Item = (K, Activity)>, n: usize) -> Vec<K> {
    let mut ranked: Vec<((bool, Instant), K)> = connections
        .into_iter()
        .map(|(key, activity)| (activity.shed_rank(), key))
        .collect();
    if n == 0 {
        return Vec::new();
    }
    if n < ranked.len() {
        ranked.select_nth_unstable_by_key(n - 1, |(rank, _)| *rank);
        ranked.truncate(n);
    }
    ranked.sort_unstable_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, key)| key).collect()
}

/// Rate limit for the warning about shed connections: one line at most per
/// [`SHED_LOG_INTERVAL`], carrying the count shed since the last line.
#[derive(Debug, Default)]
pub(super) struct ShedLog {
    last_line: Option<Instant>,
    pending: u64,
}

impl ShedLog {
    /// `count` connections were shed; returns the count to log now, if a line is due.
    pub(super) fn shed(&mut self, now: Instant, count: u64) -> Option<u64> {
        self.pending += count;
        self.flush(now)
    }

    /// Whether shed connections wait for their log line.
    pub(super) fn pending(&self) -> bool {
        self.pending > 0
    }

    /// Returns the count shed since the last line, if there is one and a line is due.
    pub(super) fn flush(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_line
            .is_none_or(|last| now.duration_since(last) >= SHED_LOG_INTERVAL);
        if self.pending == 0 || !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// When to hand freed memory back to the system: after a flood, once it has ended.
///
/// glibc keeps freed heap pages for reuse; after thousands of connections' buffers are freed,
/// they would stay in our RSS for good.
#[derive(Debug, Default)]
pub(super) struct TrimPolicy {
    peak: usize,
}

impl TrimPolicy {
    /// `peak` connections were open at most since the last call, `open` are open now: whether
    /// to trim now.
    pub(super) fn observe(&mut self, peak: usize, open: usize) -> bool {
        self.peak = self.peak.max(peak).max(open);
        if self.peak >= TRIM_AFTER_PEAK && open.saturating_mul(4) <= self.peak {
            self.peak = open;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        Limits {
            idle: 20 * S,
            header: 10 * S,
            cap: 4,
        }
    }

    #[test]
    fn an_idle_connection_expires_after_the_idle_timeout() {
        let t0 = Instant::now();
        let a = Activity::accepted(t0);
        assert_eq!(a.check(t0, &limits()), Check::At(t0 + 10 * S));
        assert_eq!(a.check(t0 + 15 * S, &limits()), Check::At(t0 + 20 * S));
        assert_eq!(
            a.check(t0 + 20 * S, &limits()),
            Check::Expired(Expiry::Idle)
        );
    }

    #[test]
    fn a_request_head_trickling_in_expires_after_the_header_timeout() {
        let t0 = Instant::now();
        let mut a = Activity::accepted(t0);
        a.bytes_read(t0 + 2 * S);
        // More bytes do not restart the clock: that is what a slowloris client relies on.
        a.bytes_read(t0 + 9 * S);
        assert_eq!(a.check(t0 + 9 * S, &limits()), Check::At(t0 + 12 * S));
        assert_eq!(
            a.check(t0 + 12 * S, &limits()),
            Check::Expired(Expiry::Header)
        );
    }

    #[test]
    fn a_head_that_starts_late_in_the_idle_period_gets_its_full_header_time() {
        let t0 = Instant::now();
        let mut a = Activity::accepted(t0);
        a.bytes_read(t0 + 15 * S);
        assert_eq!(a.check(t0 + 21 * S, &limits()), Check::At(t0 + 25 * S));
    }

    #[test]
    fn the_next_check_never_oversleeps_a_head_that_starts_after_it_was_planned() {
        let t0 = Instant::now();
        let mut a = Activity::accepted(t0);
        let Check::At(wake) = a.check(t0, &limits()) else {
            panic!("not expired")
        };
        a.bytes_read(t0 + S);
        assert!(wake <= t0 + S + 10 * S);
    }

    #[test]
    fn a_busy_connection_never_expires_here_and_is_idle_again_after_its_response() {
        let t0 = Instant::now();
        let mut a = Activity::accepted(t0);
        a.bytes_read(t0);
        a.request_started(t0 + S);
        assert!(!a.is_idle());
        assert_eq!(a.check(t0 + 100 * S, &limits()), Check::At(t0 + 110 * S));
        a.response_done(t0 + 100 * S);
        assert!(a.is_idle());
        assert_eq!(
            a.check(t0 + 119 * S, &limits()),
            Check::At(t0 + 120 * S),
            "the idle clock starts when the response is sent, the old head is forgotten"
        );
    }

    #[test]
    fn bytes_read_while_busy_do_not_start_a_head() {
        let t0 = Instant::now();
        let mut a = Activity::accepted(t0);
        a.request_started(t0);
        a.bytes_read(t0 + S);
        a.response_done(t0 + 2 * S);
        assert_eq!(a.check(t0 + 21 * S, &limits()), Check::At(t0 + 22 * S));
    }

    #[test]
    fn the_victim_is_the_oldest_idle_connection_then_the_oldest_busy_one() {
        let t0 = Instant::now();
        let idle_old = Activity::accepted(t0 + S);
        let idle_new = Activity::accepted(t0 + 5 * S);
        let mut busy_oldest = Activity::accepted(t0);
        busy_oldest.request_started(t0);
        let mut busy_new = Activity::accepted(t0);
        busy_new.request_started(t0 + 3 * S);

        let all = [
            ("busy_oldest", busy_oldest),
            ("idle_new", idle_new),
            ("idle_old", idle_old),
            ("busy_new", busy_new),
        ];
        assert_eq!(victims(all, 1), ["idle_old"]);
        assert_eq!(victims(all, 2), ["idle_old", "idle_new"]);
        assert_eq!(
            victims(all, 3),
            ["idle_old", "idle_new", "busy_oldest"],
            "busy ones only when the idle ones are not enough"
        );
        assert_eq!(victims(all, 9).len(), 4);
        assert_eq!(victims(all, 0), Vec::<&str>::new());
        assert_eq!(victims::<&str>([], 1), Vec::<&str>::new());
    }

    #[test]
    fn a_burst_at_the_cap_sheds_a_share_of_it_at_once() {
        assert_eq!(shed_batch(4096), 128);
        assert_eq!(shed_batch(16), 1);
    }

    #[test]
    fn a_keepalive_connection_idle_since_its_last_response_ranks_by_that_response() {
        let t0 = Instant::now();
        let mut reused = Activity::accepted(t0);
        reused.request_started(t0 + 8 * S);
        reused.response_done(t0 + 9 * S);
        let fresh = Activity::accepted(t0 + 5 * S);
        assert_eq!(
            victims([("reused", reused), ("fresh", fresh)], 1),
            ["fresh"]
        );
    }

    #[test]
    fn the_cap_is_half_the_open_files_limit_within_bounds() {
        assert_eq!(cap_for(1024), 512);
        assert_eq!(cap_for(20_000), MAX_CONNECTIONS);
        assert_eq!(cap_for(1_048_576), MAX_CONNECTIONS);
        assert_eq!(cap_for(u64::MAX), MAX_CONNECTIONS);
        assert_eq!(cap_for(8), MIN_CONNECTIONS);
    }

    #[test]
    fn shed_warnings_come_at_most_once_per_interval_with_the_count_since_the_last() {
        let t0 = Instant::now();
        let mut log = ShedLog::default();
        assert_eq!(log.shed(t0, 1), Some(1), "the first shed is told at once");
        for i in 1..=500 {
            assert_eq!(log.shed(t0 + Duration::from_millis(i), 2), None);
        }
        assert_eq!(log.flush(t0 + 9 * S), None);
        assert_eq!(log.flush(t0 + 10 * S), Some(1000));
        assert_eq!(log.flush(t0 + 30 * S), None, "nothing shed, nothing said");
        assert_eq!(log.shed(t0 + 31 * S, 3), Some(3));
    }

    #[test]
    fn memory_is_trimmed_once_after_a_flood_ends_not_during_it_nor_in_quiet_times() {
        let mut trim = TrimPolicy::default();
        assert!(!trim.observe(10, 2), "no flood");
        assert!(!trim.observe(1024, 1024), "still flooding");
        assert!(!trim.observe(1024, 600));
        assert!(trim.observe(700, 3), "the flood ended");
        assert!(!trim.observe(3, 3), "once");
        assert!(!trim.observe(0, 0));
    }
}
