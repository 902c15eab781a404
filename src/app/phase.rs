//! How long each start phase took: logged and recorded in the metrics, for `run`'s phases and
//! the network's around qemu.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::metrics;

/// Runs one phase, logging and recording how long it took.
pub(super) async fn timed<T>(phase: &'static str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = work.await;
    phase_done(phase, started.elapsed());
    result
}

/// [`timed`] for blocking work.
pub(super) fn timed_blocking<T>(phase: &'static str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = work();
    phase_done(phase, started.elapsed());
    result
}

fn phase_done(phase: &'static str, took: Duration) {
    metrics::VM.phase_took(phase, took);
    tracing::info!(
        phase,
        took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        "phase done"
    );
}
