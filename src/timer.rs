//! A long sleep that wakes the process once. tokio's timer wheel reaches a deadline seconds
//! away in steps (it returns from `epoll_wait` at each coarser slot on the way: three or four
//! wakeups for a 10 s sleep), which is most of what an idle VM costs us; a `timerfd` armed for
//! the deadline is one readable file descriptor, one wakeup.

use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// Sleeps for `duration` with a single wakeup at its end (tokio's sleep if no timerfd can be
/// made). Cancel-safe: dropping the future disarms and closes the timer.
pub(crate) async fn sleep(duration: Duration) {
    match arm(duration) {
        Ok(fd) => {
            // Readable once the deadline passed: that is all we wait for (no read needed, the
            // descriptor is closed right after).
            if fd.readable().await.is_err() {
                tokio::time::sleep(duration).await;
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "no timerfd; sleeping on tokio's timer");
            tokio::time::sleep(duration).await;
        }
    }
}

fn arm(duration: Duration) -> std::io::Result<AsyncFd<crate::sys::Timer>> {
    let timer = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    // A zero expiration would disarm the timer instead of firing at once.
    let duration = duration.max(Duration::from_nanos(1));
    timer.set(
        Expiration::OneShot(TimeSpec::from_duration(duration)),
        TimerSetTimeFlags::empty(),
    )?;
    crate::sys::register_timerfd(timer)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn it_returns_after_the_duration_not_before() {
        for ms in [0, 30] {
            let started = Instant::now();
            sleep(Duration::from_millis(ms)).await;
            assert!(started.elapsed() >= Duration::from_millis(ms), "{ms} ms");
        }
    }
}
