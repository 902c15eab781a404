//! PID 1: signals, reaping and exit codes, for qemu and any other child we start.
//!
//! The discipline (after tini and catatonit):
//! 1. [`signals::block`] runs first thing in `main`, before any thread exists, so every thread
//!    inherits the mask and the signals stay pending for our signalfd — for the init of a PID
//!    namespace a blocked signal is also never dropped as "default action, ignored".
//! 2. One task, [`Pid1::start`]'s signal loop, consumes all of them: SIGCHLD → reap,
//!    SIGTERM/SIGINT → the shutdown path (a watch channel the app acts on), SIGHUP, SIGUSR1,
//!    SIGUSR2, SIGWINCH → forwarded to the main child.
//! 3. [`reaper::Reaper`] is the only caller of `waitpid(-1)`: it reaps everything, orphans
//!    re-parented to us included, and hands each exit status to whoever spawned that pid.
//!    Children are spawned through it so a fast exit cannot be reaped before it is watched.
//! 4. Every child starts with an empty signal mask and the default action for SIGPIPE and
//!    for every signal we consume or forward ([`reaper::Reaper::spawn`]).
//! 5. When we are not PID 1, we become a child subreaper so orphans still come to us.
//! 6. After startup nothing recoverable makes PID 1 exit: a failed read of the signalfd is
//!    logged and retried, not returned.
//! 7. The soft open-files limit is raised to the hard one at start
//!    ([`raise_open_files_limit`]): the pod IP is open to the whole cluster, and every
//!    connection to our HTTP server costs a descriptor.

pub(crate) mod daemon;
pub(crate) mod reaper;
pub(crate) mod signals;
pub(crate) mod supervisor;

use std::fmt;
use std::io;
use std::path::PathBuf;

use nix::sys::signal::Signal;

pub(crate) use reaper::Reaper;
pub(crate) use supervisor::Pid1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Pid1Error {
    #[error("could not block signals")]
    BlockSignals(#[source] nix::Error),
    #[error("could not open a signalfd")]
    SignalFd(#[source] io::Error),
    #[error("could not become a child subreaper")]
    Subreaper(#[source] nix::Error),
    #[error("could not start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("could not start {program:?}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the reaper went away before process {0} exited")]
    ReaperGone(i32),
}

/// Raises `RLIMIT_NOFILE`'s soft limit to the hard one; a failure is only worth a warning
/// (the HTTP server sizes its connection cap on whatever limit is in force).
pub(crate) fn raise_open_files_limit() {
    match crate::sys::raise_open_files_limit() {
        Ok((before, after)) => {
            tracing::debug!(before, after, "open-files limit (RLIMIT_NOFILE)");
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit (RLIMIT_NOFILE)");
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Exited(i32),
    Signaled(Signal),
}

impl ExitStatus {
    /// The code a shell would report: the exit code, or 128 + the signal number.
    pub(crate) fn code(self) -> u8 {
        match self {
            // Exit codes are 0..=255 by construction (the kernel keeps 8 bits).
            ExitStatus::Exited(code) => (code & 0xff) as u8,
            ExitStatus::Signaled(signal) => 128u8.wrapping_add(signal as i32 as u8),
        }
    }

    pub(crate) fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "killed by {signal}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_deaths_map_to_128_plus_signo() {
        assert_eq!(ExitStatus::Signaled(Signal::SIGKILL).code(), 137);
        assert_eq!(ExitStatus::Signaled(Signal::SIGTERM).code(), 143);
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Exited(0).code(), 0);
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Signaled(Signal::SIGINT).success());
    }
}
