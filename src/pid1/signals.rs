//! Which signals PID 1 takes, what each one means, and the one stream they arrive on.

use std::io;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;

use super::Pid1Error;

/// What PID 1 does with a signal it consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// A child changed state: reap.
    Reap,
    /// Start the graceful shutdown path.
    Shutdown,
    /// Pass it on to the main child.
    Forward,
}

/// Every signal PID 1 consumes, with its action. Synchronous signals (SIGSEGV, SIGBUS, …)
/// and SIGKILL/SIGSTOP are not here: they cannot be consumed from a queue.
pub(crate) const HANDLED: [(Signal, Action); 7] = [
    (Signal::SIGCHLD, Action::Reap),
    (Signal::SIGTERM, Action::Shutdown),
    (Signal::SIGINT, Action::Shutdown),
    (Signal::SIGHUP, Action::Forward),
    (Signal::SIGUSR1, Action::Forward),
    (Signal::SIGUSR2, Action::Forward),
    (Signal::SIGWINCH, Action::Forward),
];

pub(crate) fn action(signal: Signal) -> Option<Action> {
    HANDLED.iter().find(|(s, _)| *s == signal).map(|(_, a)| *a)
}

/// [`HANDLED`] as a set.
pub(crate) fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for (signal, _) in HANDLED {
        set.add(signal);
    }
    set
}

/// Blocks every handled signal in the calling thread. Call it before any thread starts.
pub(crate) fn block() -> Result<(), Pid1Error> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None).map_err(Pid1Error::BlockSignals)
}

/// The handled signals, read from a non-blocking signalfd registered with tokio.
#[derive(Debug)]
pub(crate) struct SignalStream {
    fd: AsyncFd<SignalFd>,
}

impl SignalStream {
    /// Must be called inside a tokio runtime, after [`block`].
    pub(crate) fn open() -> Result<Self, Pid1Error> {
        let fd = SignalFd::with_flags(
            &handled_set(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(|e| Pid1Error::SignalFd(e.into()))?;
        let fd = crate::sys::register_signalfd(fd).map_err(Pid1Error::SignalFd)?;
        Ok(Self { fd })
    }

    /// The next signal. Several deliveries of one standard signal may arrive as one.
    pub(crate) async fn next(&mut self) -> io::Result<Signal> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.get_inner().read_signal() {
                Ok(Some(info)) => match i32::try_from(info.ssi_signo).map(Signal::try_from) {
                    Ok(Ok(signal)) => return Ok(signal),
                    _ => continue,
                },
                Ok(None) => guard.clear_ready(),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_signals_start_shutdown_and_job_signals_are_forwarded() {
        assert_eq!(action(Signal::SIGTERM), Some(Action::Shutdown));
        assert_eq!(action(Signal::SIGINT), Some(Action::Shutdown));
        assert_eq!(action(Signal::SIGCHLD), Some(Action::Reap));
        for s in [
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGWINCH,
        ] {
            assert_eq!(action(s), Some(Action::Forward), "{s}");
        }
        assert_eq!(action(Signal::SIGSEGV), None);
        assert_eq!(action(Signal::SIGKILL), None);
    }
}
