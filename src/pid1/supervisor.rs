//! The running PID 1: the signal loop task, the main child, and the shutdown channel.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use super::reaper::{Reaper, Spawned};
use super::signals::{action, Action, SignalStream};
use super::{ExitStatus, Pid1Error};

/// Handle to the PID-1 machinery; cheap to share by reference.
#[derive(Debug)]
pub(crate) struct Pid1 {
    reaper: Arc<Reaper>,
    main_child: Arc<AtomicI32>,
    shutdown: watch::Receiver<Option<Signal>>,
}

impl Pid1 {
    /// Starts the signal loop. Call inside the tokio runtime, after
    /// [`super::signals::block`] ran on the main thread.
    pub(crate) fn start() -> Result<Self, Pid1Error> {
        if nix::unistd::getpid().as_raw() != 1 {
            nix::sys::prctl::set_child_subreaper(true).map_err(Pid1Error::Subreaper)?;
        }
        let stream = SignalStream::open()?;
        let reaper = Arc::new(Reaper::new());
        let main_child = Arc::new(AtomicI32::new(0));
        let (tx, shutdown) = watch::channel(None);
        tokio::spawn(signal_loop(
            stream,
            Arc::clone(&reaper),
            Arc::clone(&main_child),
            tx,
        ));
        Ok(Self {
            reaper,
            main_child,
            shutdown,
        })
    }

    pub(crate) fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// The process that receives forwarded signals (SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH).
    pub(crate) fn set_main_child(&self, pid: Option<Pid>) {
        self.main_child
            .store(pid.map_or(0, Pid::as_raw), Ordering::SeqCst);
    }

    /// Resolves with the signal that asked for shutdown (SIGTERM or SIGINT).
    pub(crate) async fn shutdown_requested(&self) -> Signal {
        let mut rx = self.shutdown.clone();
        let requested = rx.wait_for(Option::is_some).await.map(|signal| *signal);
        match requested {
            Ok(signal) => signal.unwrap_or(Signal::SIGTERM),
            // The signal loop never ends; if it did, no shutdown can be requested any more.
            Err(_) => std::future::pending().await,
        }
    }

    /// Runs `spawned` as the main child until it exits. On SIGTERM/SIGINT the signal is
    /// passed on; after `grace` the child is killed.
    pub(crate) async fn supervise(
        &self,
        spawned: Spawned,
        grace: Duration,
    ) -> Result<ExitStatus, Pid1Error> {
        let pid = spawned.pid;
        let mut exit = spawned.exit;
        self.set_main_child(Some(pid));
        let status = tokio::select! {
            status = &mut exit => status,
            signal = self.shutdown_requested() => {
                tracing::info!(pid = pid.as_raw(), %signal, grace = %humantime::format_duration(grace), "passing the shutdown signal on");
                send(pid, signal);
                stop_within(pid, grace, &mut exit).await
            }
        };
        self.set_main_child(None);
        self.reaper.reap();
        status.map_err(|_| Pid1Error::ReaperGone(pid.as_raw()))
    }
}

/// Waits `grace` for the child to exit, then SIGKILLs it and waits for the reaper.
pub(crate) async fn stop_within(
    pid: Pid,
    grace: Duration,
    exit: &mut oneshot::Receiver<ExitStatus>,
) -> Result<ExitStatus, oneshot::error::RecvError> {
    match tokio::time::timeout(grace, &mut *exit).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(
                pid = pid.as_raw(),
                "still running after the grace period; killing it"
            );
            send(pid, Signal::SIGKILL);
            exit.await
        }
    }
}

fn send(pid: Pid, signal: Signal) {
    if let Err(e) = kill(pid, signal) {
        // ESRCH: it exited meanwhile; the reaper reports that.
        tracing::debug!(pid = pid.as_raw(), %signal, error = %e, "could not signal child");
    }
}

/// The one consumer of PID 1's signals. Never returns: PID 1 must not lose its signals.
async fn signal_loop(
    mut stream: SignalStream,
    reaper: Arc<Reaper>,
    main_child: Arc<AtomicI32>,
    shutdown: watch::Sender<Option<Signal>>,
) {
    loop {
        let signal = match stream.next().await {
            Ok(signal) => signal,
            Err(e) => {
                tracing::error!(error = %e, "reading the signalfd failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match action(signal) {
            Some(Action::Reap) => {
                reaper.reap();
            }
            Some(Action::Shutdown) => {
                if shutdown.borrow().is_some() {
                    tracing::info!(%signal, "shutdown already in progress");
                } else {
                    tracing::info!(%signal, "shutdown requested");
                    shutdown.send_replace(Some(signal));
                }
            }
            Some(Action::Forward) => match main_child.load(Ordering::SeqCst) {
                0 => tracing::debug!(%signal, "no main child to forward to"),
                pid => {
                    tracing::debug!(%signal, pid, "forwarding");
                    send(Pid::from_raw(pid), signal);
                }
            },
            None => tracing::debug!(%signal, "ignored"),
        }
    }
}
