//! The web console's viewer slots, and the rule that keeps anyone from holding them.
//!
//! At most [`MAX_VIEWERS`] viewers share the console. A new viewer always gets in: when every
//! slot is taken, the viewer whose last input is the oldest is told to leave. Refusing the
//! newcomer instead (as a plain semaphore does) lets eight idle tabs, or eight connections
//! that never finish the VNC handshake, lock the operator out for good. Besides, each viewer
//! closes itself after `CONSOLE_IDLE_TIMEOUT` without input (see the bridge).

use crate::locked::Locked as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

/// Concurrent web-console viewers.
pub(crate) const MAX_VIEWERS: usize = 8;

#[derive(Debug)]
struct Slot {
    id: u64,
    last_input: Instant,
    /// Dropping it tells the viewer to leave.
    _evict: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    taken: Vec<Slot>,
}

/// The slots, shared by every request.
#[derive(Debug, Clone, Default)]
pub(super) struct Viewers {
    slots: Arc<Mutex<Slots>>,
}

/// A viewer's slot; dropping it frees the slot.
#[derive(Debug)]
pub(super) struct Seat {
    id: u64,
    viewers: Viewers,
    /// Resolves when a newer viewer took this slot.
    pub evicted: oneshot::Receiver<()>,
}

/// What [`Viewers::join`] did.
#[derive(Debug)]
pub(super) struct Joined {
    pub seat: Seat,
    /// How long the viewer that had to leave had sent no input.
    pub evicted_idle: Option<std::time::Duration>,
}

impl Viewers {
    /// Takes a slot at `now`, evicting the longest-idle viewer when all are taken.
    pub(super) fn join(&self, now: Instant) -> Joined {
        let mut slots = self.slots.locked();
        let mut evicted_idle = None;
        if slots.taken.len() >= MAX_VIEWERS {
            let oldest = slots
                .taken
                .iter()
                .enumerate()
                .min_by_key(|(_, slot)| slot.last_input)
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                let slot = slots.taken.swap_remove(i);
                evicted_idle = Some(now.saturating_duration_since(slot.last_input));
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        slots.taken.push(Slot {
            id,
            last_input: now,
            _evict: evict,
        });
        Joined {
            seat: Seat {
                id,
                viewers: self.clone(),
                evicted,
            },
            evicted_idle,
        }
    }

    /// Viewers holding a slot.
    pub(super) fn count(&self) -> usize {
        self.slots.locked().taken.len()
    }
}

impl Seat {
    /// The viewer sent input at `now`.
    pub(super) fn input(&self, now: Instant) {
        if let Some(slot) = self
            .viewers
            .slots
            .locked()
            .taken
            .iter_mut()
            .find(|slot| slot.id == self.id)
        {
            slot.last_input = now;
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.viewers
            .slots
            .locked()
            .taken
            .retain(|slot| slot.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_ninth_viewer_gets_in_and_the_longest_idle_one_leaves() {
        let viewers = Viewers::default();
        let start = Instant::now();
        let mut seats: Vec<Seat> = (0..MAX_VIEWERS)
            .map(|i| viewers.join(at(start, i as u64)).seat)
            .collect();
        // The first viewer types, so the second one is now idle the longest.
        seats[0].input(at(start, 20));
        let ninth = viewers.join(at(start, 30));
        assert_eq!(ninth.evicted_idle, Some(Duration::from_secs(29)));
        assert_eq!(viewers.count(), MAX_VIEWERS);
        assert!(seats[1]
            .evicted
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        for (i, seat) in seats.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
            assert_eq!(
                seat.evicted.try_recv(),
                Err(oneshot::error::TryRecvError::Empty),
                "viewer {i} stays"
            );
        }
    }

    #[test]
    fn below_the_limit_nobody_is_evicted_and_leaving_frees_the_slot() {
        let viewers = Viewers::default();
        let start = Instant::now();
        let first = viewers.join(start);
        assert!(first.evicted_idle.is_none());
        let second = viewers.join(start);
        assert_eq!(viewers.count(), 2);
        drop(first);
        assert_eq!(viewers.count(), 1);
        drop(second);
        assert_eq!(viewers.count(), 0);
    }

    #[test]
    fn an_evicted_viewer_leaving_later_does_not_free_another_slot() {
        let viewers = Viewers::default();
        let start = Instant::now();
        let seats: Vec<Joined> = (0..MAX_VIEWERS)
            .map(|i| viewers.join(at(start, i as u64)))
            .collect();
        let _ninth = viewers.join(at(start, 10));
        drop(seats);
        assert_eq!(viewers.count(), 1, "only the ninth viewer is left");
    }
}
