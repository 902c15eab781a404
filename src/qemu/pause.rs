//! Why the VM is paused, and whether kvm-manager resumes it: the deciding half of the pause
//! watcher (the IO half, which feeds it qemu's QMP events and the pet volume's free space and
//! carries out its decisions, is [`super::process::watch_pauses`]).
//!
//! When the pet volume is full, qemu does not fail the guest's write: its disk's error policy
//! (`werror=enospc`, qemu's default) stops the VM and keeps the request to retry it on `cont`,
//! so nothing is lost. qemu then sends `BLOCK_IO_ERROR` (`action: stop`, `nospace: true`) and
//! `STOP`. Such a pause is ours to undo: once space is back, we send `cont`. Any other pause
//! (another I/O error, an operator's QMP `stop`) is reported and left alone: resuming it would
//! either fail the same way or overrule someone.

use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Free space on the pet volume that lets a paused VM resume. Big enough that the guest makes
/// real progress once resumed (512 qcow2 clusters of 64 KiB, with room for their L2 and
/// refcount tables; qemu first retries the writes it held back) rather than pausing again at
/// once; small enough to be reached on a small volume. If the guest fills it again, the
/// backoff below spaces the attempts.
pub(crate) const RESUME_FREE: u64 = 32 << 20;
/// How often the free space is looked at while paused for lack of it (one `statvfs`).
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(2);
/// A VM that pauses again within this time after we resumed it counts as a failed attempt.
const STABLE: Duration = Duration::from_secs(60);
/// The wait after the first failed attempt, doubled after each further one, up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What qemu told us, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// `BLOCK_IO_ERROR`.
    DiskError {
        device: String,
        operation: String,
        /// The drive's policy stops the VM (`action: stop`) rather than telling the guest.
        stops: bool,
        /// qemu saw ENOSPC.
        nospace: bool,
        reason: String,
    },
    /// `STOP`: the VM is paused.
    Stop,
    /// `RESUME`: the VM runs again.
    Resume,
    /// `query-status` (and `query-block`) after events may have been missed.
    Status {
        running: bool,
        status: String,
        /// A drive whose I/O status is `nospace`.
        nospace_device: Option<String>,
    },
    /// Anything else.
    Other,
}

impl Event {
    /// Reads a QMP event (`{"event": name, "data": data}`).
    pub(crate) fn from_qmp(name: &str, data: &Value) -> Self {
        let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or("");
        match name {
            "BLOCK_IO_ERROR" => {
                // `device` is empty for a drive defined by node name only.
                let device = match text("device") {
                    "" => text("node-name"),
                    device => device,
                };
                Event::DiskError {
                    device: device.to_owned(),
                    operation: text("operation").to_owned(),
                    stops: text("action") == "stop",
                    nospace: data.get("nospace").and_then(Value::as_bool) == Some(true),
                    reason: text("reason").to_owned(),
                }
            }
            "STOP" => Event::Stop,
            "RESUME" => Event::Resume,
            _ => Event::Other,
        }
    }
}

/// Why the VM is paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pause {
    /// qemu stopped on ENOSPC: the pet volume is full. Resumed once space is back.
    NoSpace { device: String },
    /// qemu stopped on another I/O error. Not resumed: it would fail the same way.
    IoError {
        device: String,
        operation: String,
        reason: String,
    },
    /// Paused by something other than a disk error (QMP `stop`, …). Not ours to undo.
    Stopped { status: String },
}

impl Pause {
    /// Every value of [`Pause::label`], for a metric that shows all of them.
    pub(crate) const LABELS: [&'static str; 3] = ["no-space", "io-error", "stopped"];

    /// A short name for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Pause::NoSpace { .. } => "no-space",
            Pause::IoError { .. } => "io-error",
            Pause::Stopped { .. } => "stopped",
        }
    }
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pause::NoSpace { device } => write!(
                f,
                "the VM is paused: no space left on PET_DIR for disk {device}; it resumes by \
                 itself once {} MiB are free there",
                RESUME_FREE >> 20
            ),
            Pause::IoError {
                device,
                operation,
                reason,
            } => write!(
                f,
                "the VM is paused: {operation} error on disk {device}: {reason}; it is not \
                 resumed automatically"
            ),
            Pause::Stopped { status } => write!(
                f,
                "the VM is paused (qemu status {status}, not a disk error); kvm-manager does \
                 not resume a pause it did not cause"
            ),
        }
    }
}

/// What changed, for the watcher to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Paused(Pause),
    Resumed,
    /// An I/O error qemu passed on to the guest (its policy is not to stop): the VM runs on.
    DiskError {
        device: String,
        operation: String,
        reason: String,
    },
}

/// What to do after looking at the free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send `cont`: this is attempt number `attempt` since the VM last ran steadily.
    Resume {
        attempt: u32,
    },
    Wait,
}

/// The pause state of one VM.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    current: Option<Pause>,
    /// The cause a `BLOCK_IO_ERROR` announced, waiting for the `STOP` that follows it.
    cause: Option<Pause>,
    /// Resumes in a row that were followed by another pause within [`STABLE`].
    attempts: u32,
    last_resume: Option<Instant>,
    /// No resume before this (the backoff).
    retry_at: Option<Instant>,
}

impl Pauses {
    /// Why the VM is paused, if it is.
    pub(crate) fn current(&self) -> Option<&Pause> {
        self.current.as_ref()
    }

    /// True while the free space decides: the VM is paused for lack of it.
    pub(crate) fn watching_space(&self) -> bool {
        matches!(self.current, Some(Pause::NoSpace { .. }))
    }

    pub(crate) fn on_event(&mut self, event: Event, now: Instant) -> Option<Change> {
        match event {
            Event::DiskError {
                device,
                operation,
                stops: false,
                reason,
                ..
            } => Some(Change::DiskError {
                device,
                operation,
                reason,
            }),
            Event::DiskError {
                device,
                operation,
                nospace,
                reason,
                ..
            } => {
                // Requests already in flight fail too; the first error is the cause.
                if self.current.is_none() && self.cause.is_none() {
                    self.cause = Some(if nospace {
                        Pause::NoSpace { device }
                    } else {
                        Pause::IoError {
                            device,
                            operation,
                            reason,
                        }
                    });
                }
                None
            }
            Event::Stop => {
                let pause = self.cause.take().unwrap_or(Pause::Stopped {
                    status: "paused".to_owned(),
                });
                self.pause(pause, now)
            }
            Event::Resume | Event::Status { running: true, .. } => {
                self.cause = None;
                self.current.take().map(|_| Change::Resumed)
            }
            Event::Status {
                running: false,
                status,
                nospace_device,
            } => {
                let pause = match (self.cause.take(), nospace_device) {
                    (Some(cause), _) => cause,
                    (None, Some(device)) => Pause::NoSpace { device },
                    (None, None) if status == "io-error" => Pause::IoError {
                        device: "?".to_owned(),
                        operation: "I/O".to_owned(),
                        reason: "unknown (the event was missed)".to_owned(),
                    },
                    (None, None) => Pause::Stopped { status },
                };
                self.pause(pause, now)
            }
            Event::Other => None,
        }
    }

    fn pause(&mut self, pause: Pause, now: Instant) -> Option<Change> {
        if self.current.is_some() {
            return None;
        }
        let again_soon = self
            .last_resume
            .is_some_and(|at| now.saturating_duration_since(at) < STABLE);
        if !again_soon {
            // The VM ran steadily since our last resume (or we never resumed it): no backoff.
            self.attempts = 0;
            self.retry_at = None;
        }
        self.current = Some(pause.clone());
        Some(Change::Paused(pause))
    }

    /// Decides, from the pet volume's free space (`None`: unknown), whether to resume now.
    pub(crate) fn on_free_space(&mut self, free: Option<u64>, now: Instant) -> Decision {
        if !self.watching_space() || self.retry_at.is_some_and(|at| now < at) {
            return Decision::Wait;
        }
        // Not knowing is no reason to resume: qemu would pause again at once if still full.
        if free.is_none_or(|free| free < RESUME_FREE) {
            return Decision::Wait;
        }
        self.attempts = self.attempts.saturating_add(1);
        self.last_resume = Some(now);
        self.retry_at = Some(now + backoff(self.attempts));
        Decision::Resume {
            attempt: self.attempts,
        }
    }
}

/// The wait before the attempt after attempt `n` (1-based): 5 s, 10 s, 20 s, … up to 5 min.
fn backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests;
