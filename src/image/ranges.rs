//! Which bytes of a parallel download are there, and who fetches which of the rest: pure
//! bookkeeping, no IO (the journal on disk is [`super::fetch`]'s).
//!
//! A parallel download asks each connection for one long span (`Range: bytes=A-B`), so that it
//! pays the server's latency once, like `aria2c -x N`; a connection whose span is done takes
//! the next unclaimed span, and when none is left it takes the far half of the largest span
//! still being received (the owner simply stops reading at the new end). Only spans worth a
//! new request are split: below [`MIN_STEAL`] the owner finishes alone.

use std::ops::Range;

/// Bytes of a span below which it is not split for another connection (a new request costs a
/// round trip; at tens of MB/s per connection that is worth about a megabyte).
pub(crate) const MIN_STEAL: u64 = 2 << 20;
/// Split points are multiples of this (page and filesystem block aligned writes).
const ALIGN: u64 = 64 << 10;

/// A set of byte ranges, kept sorted, disjoint and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ranges(Vec<Range<u64>>);

impl Ranges {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `range` (empty ranges are ignored), merging it with its neighbours.
    pub(crate) fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start, range.end);
        // Every range that touches or overlaps the new one is merged into it.
        let first = self.0.partition_point(|r| r.end < start);
        let last = self.0.partition_point(|r| r.start <= end);
        if first < last {
            start = start.min(self.0[first].start);
            end = end.max(self.0[last - 1].end);
        }
        self.0.splice(first..last, std::iter::once(start..end));
    }

    /// Bytes covered.
    pub(crate) fn len(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// The end of the range that starts at 0 (0 when there is none): the bytes that can be
    /// hashed in order.
    pub(crate) fn prefix(&self) -> u64 {
        self.0.first().filter(|r| r.start == 0).map_or(0, |r| r.end)
    }

    /// Whether `0..total` is covered.
    pub(crate) fn covers(&self, total: u64) -> bool {
        total == 0 || self.prefix() >= total
    }

    /// The gaps of `0..total`, in order.
    pub(crate) fn missing(&self, total: u64) -> Vec<Range<u64>> {
        let mut gaps = Vec::new();
        let mut at = 0;
        for r in &self.0 {
            if r.start >= total {
                break;
            }
            if r.start > at {
                gaps.push(at..r.start);
            }
            at = at.max(r.end);
        }
        if at < total {
            gaps.push(at..total);
        }
        gaps
    }
}

/// One journal record: a range whose bytes are on disk. Little-endian start and end.
pub(crate) const RECORD: usize = 16;

pub(crate) fn encode(range: &Range<u64>) -> [u8; RECORD] {
    let mut record = [0u8; RECORD];
    record[..8].copy_from_slice(&range.start.to_le_bytes());
    record[8..].copy_from_slice(&range.end.to_le_bytes());
    record
}

/// The ranges a journal records, within `0..total`. A torn last record (the process died while
/// appending it) and records that do not fit the file are ignored: they only cost a re-fetch.
pub(crate) fn decode(bytes: &[u8], total: u64) -> Ranges {
    let mut ranges = Ranges::new();
    for record in bytes.chunks_exact(RECORD) {
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&record[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (start, end) = (word(0), word(8));
        if start < end && end <= total {
            ranges.insert(start..end);
        }
    }
    ranges
}

/// The spans of a parallel download and who receives which.
#[derive(Debug)]
pub(crate) struct Schedule {
    /// Spans nobody has claimed yet, in file order.
    todo: std::collections::VecDeque<Range<u64>>,
    /// Per connection: the span it receives (`start` is the next byte expected).
    active: Vec<Option<Range<u64>>>,
}

impl Schedule {
    /// The `missing` bytes cut into spans for `connections` connections: about one span each,
    /// so each pays for one request.
    pub(crate) fn new(missing: &[Range<u64>], connections: usize) -> Self {
        let connections = connections.max(1);
        let left: u64 = missing.iter().map(|r| r.end - r.start).sum();
        let share = align_up((left / connections as u64).max(1)).max(MIN_STEAL);
        let mut todo = std::collections::VecDeque::new();
        for gap in missing {
            let mut at = gap.start;
            while at < gap.end {
                // A remainder smaller than a share's quarter rides along with the last span.
                let mut end = align_up(at + share).min(gap.end);
                if gap.end - end < share / 4 {
                    end = gap.end;
                }
                todo.push_back(at..end);
                at = end;
            }
        }
        Self {
            todo,
            active: vec![None; connections],
        }
    }

    /// The next span for `connection`: an unclaimed one, else the far half of the largest
    /// span being received; `None` when nothing is worth a request.
    pub(crate) fn claim(&mut self, connection: usize) -> Option<Range<u64>> {
        let span = self.todo.pop_front().or_else(|| self.steal())?;
        if let Some(slot) = self.active.get_mut(connection) {
            *slot = Some(span.clone());
        }
        Some(span)
    }

    fn steal(&mut self) -> Option<Range<u64>> {
        let victim = self
            .active
            .iter_mut()
            .flatten()
            .max_by_key(|r| r.end - r.start)?;
        let left = victim.end - victim.start;
        if left < 2 * MIN_STEAL {
            return None;
        }
        let mid = align_up(victim.start + left / 2);
        if mid >= victim.end {
            return None;
        }
        let stolen = mid..victim.end;
        victim.end = mid;
        Some(stolen)
    }

    /// `connection` received `n` more bytes of its span; returns how many of them are still
    /// its own (the rest was handed to another connection meanwhile) and whether its span is
    /// complete.
    pub(crate) fn advance(&mut self, connection: usize, n: u64) -> (u64, bool) {
        let Some(Some(span)) = self.active.get_mut(connection) else {
            return (0, true);
        };
        let take = n.min(span.end - span.start);
        span.start += take;
        let complete = span.start == span.end;
        if complete {
            self.active[connection] = None;
        }
        (take, complete)
    }
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Whether a download of `total` bytes is fetched over several connections: more than one
/// allowed, the server takes ranges and names a validator for `If-Range` (without one, spans
/// of two versions of the file could be spliced), the size is known and at least
/// `min_size`, and it is not compressed (a decoder needs the stream in order).
pub(crate) fn parallel(
    connections: u32,
    min_size: u64,
    total: Option<u64>,
    accepts_ranges: bool,
    validated: bool,
    compressed: bool,
) -> bool {
    connections > 1
        && accepts_ranges
        && validated
        && !compressed
        && total.is_some_and(|t| t >= min_size && t > 0)
}

#[cfg(test)]
// Lists of byte ranges, not ranges meant as lists.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ranges_merge_and_report_their_prefix_and_gaps() {
        let mut r = Ranges::new();
        r.insert(10..20);
        r.insert(30..40);
        assert_eq!(r.prefix(), 0);
        assert_eq!(r.missing(50), [0..10, 20..30, 40..50]);
        r.insert(0..10);
        assert_eq!(r.prefix(), 20);
        r.insert(15..35);
        assert_eq!(r.0, [0..40]);
        assert_eq!(r.len(), 40);
        assert!(!r.covers(50));
        r.insert(40..50);
        assert!(r.covers(50));
        assert!(r.missing(50).is_empty());
        r.insert(5..5);
        assert_eq!(r.0, [0..50]);
    }

    #[test]
    fn a_journal_round_trips_and_a_torn_or_foreign_record_is_ignored() {
        let mut bytes = Vec::new();
        for range in [0..100, 200..300, 300..400, 900..2000] {
            bytes.extend_from_slice(&encode(&range));
        }
        bytes.extend_from_slice(&encode(&(500..600))[..7]); // torn
        let ranges = decode(&bytes, 1000);
        assert_eq!(ranges.0, [0..100, 200..400], "900..2000 is past the end");
    }

    #[test]
    fn the_schedule_gives_one_span_per_connection_then_steals_halves() {
        let mut s = Schedule::new(&[0..64 * MIB], 4);
        let spans: Vec<_> = (0..4).map(|c| s.claim(c).expect("span")).collect();
        assert_eq!(
            spans,
            [
                0..16 * MIB,
                16 * MIB..32 * MIB,
                32 * MIB..48 * MIB,
                48 * MIB..64 * MIB
            ]
        );
        // Connection 0 is done; connection 1 has received 4 MiB of its 16.
        assert_eq!(s.advance(0, 16 * MIB), (16 * MIB, true));
        s.advance(1, 4 * MIB);
        s.advance(2, 10 * MIB);
        s.advance(3, 10 * MIB);
        let stolen = s.claim(0).expect("steals");
        assert_eq!(stolen, 26 * MIB..32 * MIB, "the far half of the largest");
        assert_eq!(s.active[1], Some(20 * MIB..26 * MIB));
        // Connection 1 gets only what is still its own.
        assert_eq!(s.advance(1, 30 * MIB), (6 * MIB, true));
    }

    #[test]
    fn small_spans_are_not_split_and_gaps_are_scheduled_in_order() {
        let mut s = Schedule::new(&[0..MIB, 3 * MIB..4 * MIB], 4);
        assert_eq!(s.claim(0), Some(0..MIB));
        assert_eq!(s.claim(1), Some(3 * MIB..4 * MIB));
        assert_eq!(s.claim(2), None, "nothing left worth a request");
        assert_eq!(
            s.advance(2, 10),
            (0, true),
            "an idle connection owns nothing"
        );
    }

    #[test]
    fn a_small_remainder_rides_with_the_last_span() {
        let s = Schedule::new(&[0..(16 * MIB + 100)], 4);
        let spans: Vec<_> = s.todo.iter().cloned().collect();
        assert_eq!(spans.last().map(|r| r.end), Some(16 * MIB + 100));
        assert_eq!(spans.len(), 4, "{spans:?}");
    }

    #[test]
    fn parallel_only_for_large_validated_uncompressed_ranged_downloads() {
        let big = Some(64 * MIB);
        assert!(parallel(4, 64 * MIB, big, true, true, false));
        assert!(
            !parallel(1, 64 * MIB, big, true, true, false),
            "1 = one stream"
        );
        assert!(!parallel(
            4,
            64 * MIB,
            Some(64 * MIB - 1),
            true,
            true,
            false
        ));
        assert!(!parallel(4, 64 * MIB, None, true, true, false));
        assert!(!parallel(4, 64 * MIB, big, false, true, false));
        assert!(!parallel(4, 64 * MIB, big, true, false, false));
        assert!(!parallel(4, 64 * MIB, big, true, true, true));
    }
}
