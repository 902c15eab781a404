//! The sole owner of `waitpid(-1)`.
//!
//! Spawning and reaping take the same lock, so a child that exits at once cannot be reaped
//! before its exit status has somewhere to go. Statuses of pids nobody spawned through us
//! (orphans re-parented to PID 1 or to our subreaper) are logged and dropped.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::{ExitStatus, Pid1Error};

/// A child started through the reaper.
#[derive(Debug)]
pub struct Spawned {
    /// Its stdio handles. Never `wait()` on it: the reaper owns its exit status.
    pub child: Child,
    pub pid: Pid,
    /// Resolves once when the reaper collects the child.
    pub exit: oneshot::Receiver<ExitStatus>,
}

#[derive(Debug, Default)]
pub struct Reaper {
    watched: Mutex<HashMap<Pid, oneshot::Sender<ExitStatus>>>,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `command` with an empty signal mask and watches its exit.
    pub fn spawn(&self, command: &mut Command) -> Result<Spawned, Pid1Error> {
        crate::sys::reset_signal_mask_in_child(command);
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        // The reaper below collects this child's exit status; std's wait is never called.
        #[allow(clippy::zombie_processes)]
        let child = command.spawn().map_err(|source| Pid1Error::Spawn {
            program: command.get_program().into(),
            source,
        })?;
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let (tx, exit) = oneshot::channel();
        watched.insert(pid, tx);
        Ok(Spawned { child, pid, exit })
    }

    /// Collects every child that has exited; returns how many there were.
    pub fn reap(&self) -> usize {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reaped = 0;
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _core)) => (pid, ExitStatus::Signaled(signal)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
                Err(Errno::EINTR) => continue,
                // Stopped/continued are only reported with flags we do not pass.
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return reaped;
                }
            };
            reaped += 1;
            match watched.remove(&pid) {
                Some(tx) => {
                    tracing::debug!(pid = pid.as_raw(), %status, "child exited");
                    // The receiver may be gone if nobody waits any more; nothing to do then.
                    let _ = tx.send(status);
                }
                None => tracing::debug!(pid = pid.as_raw(), %status, "reaped orphan"),
            }
        }
    }
}
