//! Starting qemu and seeing it through to the end: console relay, QMP, the graceful
//! shutdown ladder (ACPI power button, re-pressed every few seconds, until
//! `SHUTDOWN_TIMEOUT`; then QMP `quit`; then SIGKILL), and the pause watcher (a VM paused
//! on a full pet volume is reported and resumed once space is back; see [`super::pause`]).
//!
//! qemu is not the main child for forwarded signals: qemu treats SIGHUP like SIGTERM (it
//! quits without asking the guest) and uses SIGUSR1 internally, so nothing is passed on.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};

use super::console::Ring;
use super::qmp::Qmp;
use super::QemuError;
use crate::pid1::{ExitStatus, Pid1, Pid1Error};

mod pauses;
mod spawn;

pub(crate) use pauses::watch_pauses;

/// How often the power button is pressed again while the guest has not powered off.
const REPRESS_EVERY: Duration = Duration::from_secs(5);
/// How long qemu gets to obey `quit` before SIGKILL.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// How long qemu gets to open its QMP socket.
const QMP_WAIT: Duration = Duration::from_secs(30);

/// A started qemu.
#[derive(Debug)]
pub(crate) struct Qemu {
    pub pid: Pid,
    pub qmp: Qmp,
    pub console: Arc<Ring>,
    pub stderr: Arc<Ring>,
    /// The guest console's output as it arrives, for attached sessions.
    pub console_raw: broadcast::Sender<Vec<u8>>,
    /// Bytes typed into the guest console.
    pub console_input: mpsc::Sender<Vec<u8>>,
    exit: oneshot::Receiver<ExitStatus>,
    /// The guest agent: asked for `guest-shutdown` when the guest ignores the power button.
    pub agent: Option<Arc<super::agent::Agent>>,
}

/// How qemu ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub status: ExitStatus,
    /// The guest did not power off in time: qemu was told to quit, or killed.
    pub forced: bool,
    /// qemu's last stderr lines.
    pub stderr: Vec<String>,
}

/// Spawns qemu with `argv` (program first) and connects to its QMP socket.
pub(crate) async fn start(
    pid1: &Pid1,
    argv: &[OsString],
    qmp_socket: &Path,
    vnc_password: Option<&str>,
) -> Result<Qemu, QemuError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(QemuError::NotFound {
            qemu: "".into(),
            path: String::new(),
        });
    };
    if let Some(dir) = qmp_socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| QemuError::RuntimeDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let _ = std::fs::remove_file(qmp_socket);

    let spawned = spawn::spawn(pid1, program, args)?;
    let pid = spawned.pid;
    let mut exit = spawned.exit;
    // Logged once qemu runs: formatting the command line would delay its start.
    tracing::info!(pid = pid.as_raw(), argv = ?argv, "qemu started");
    let relays = spawn::relay(spawned.pipes);
    let stderr = Arc::clone(&relays.stderr);

    let qmp = match connect_qmp(qmp_socket, &mut exit).await {
        Ok(qmp) => qmp,
        Err(Connect::Exited(status)) => {
            // Let the stderr relay catch qemu's last words.
            sleep(Duration::from_millis(200)).await;
            return Err(QemuError::EarlyExit {
                status,
                stderr: stderr.snapshot().join("\n"),
            });
        }
        Err(Connect::ReaperGone) => {
            let _ = kill(pid, Signal::SIGKILL);
            return Err(QemuError::Reaper(Pid1Error::ReaperGone(pid.as_raw())));
        }
        Err(Connect::Failed(e)) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = exit.await;
            return Err(QemuError::Qmp(e));
        }
    };
    // With `password=on`, qemu's VNC accepts no password until this sets one: the short
    // window since qemu started lets nobody in.
    if let Some(password) = vnc_password {
        if let Err(e) = qmp.set_vnc_password(password).await {
            let _ = qmp.quit().await;
            let _ = timeout(QUIT_GRACE, &mut exit).await;
            let _ = kill(pid, Signal::SIGKILL);
            return Err(QemuError::VncPassword(e));
        }
    }
    Ok(Qemu {
        pid,
        qmp,
        console: relays.console,
        stderr,
        console_raw: relays.console_raw,
        console_input: relays.console_input,
        exit,
        agent: None,
    })
}

enum Connect {
    Exited(ExitStatus),
    /// The reaper dropped qemu's exit channel: its exit status is unknown.
    ReaperGone,
    Failed(super::qmp::QmpError),
}

async fn connect_qmp(
    path: &Path,
    exit: &mut oneshot::Receiver<ExitStatus>,
) -> Result<Qmp, Connect> {
    let deadline = Instant::now() + QMP_WAIT;
    loop {
        tokio::select! {
            status = &mut *exit => {
                return Err(match status {
                    Ok(status) => Connect::Exited(status),
                    Err(_) => Connect::ReaperGone,
                });
            }
            attempt = Qmp::connect(path) => match attempt {
                Ok(qmp) => return Ok(qmp),
                Err(e) if Instant::now() >= deadline => return Err(Connect::Failed(e)),
                Err(_) => sleep(Duration::from_millis(50)).await,
            },
        }
    }
}

impl Qemu {
    /// Once the guest ignored the power button: `guest-shutdown` through its agent, once,
    /// if the agent answers, each call within what is left of `SHUTDOWN_TIMEOUT`.
    async fn agent_shutdown(&mut self, deadline: Instant) {
        let Some(agent) = self.agent.take() else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = left.min(Duration::from_secs(3));
        if budget.is_zero() {
            return;
        }
        if agent.execute("guest-ping", None, budget).await.is_err() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tracing::info!("the guest ignores the power button; asking its agent to shut it down");
        if let Err(e) = agent.shutdown(left.min(Duration::from_secs(3))).await {
            tracing::warn!(error = %e, "guest-shutdown failed");
        }
    }

    /// Stops qemu at once, for a start that failed after it (the guest has not booted yet).
    pub(crate) async fn kill(mut self) {
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = (&mut self.exit).await;
    }

    /// Waits until qemu exits; on SIGTERM/SIGINT shuts the guest down gracefully. An error
    /// only when the reaper lost qemu's exit status: no code is made up for it.
    pub(crate) async fn supervise(
        self,
        pid1: &Pid1,
        shutdown_timeout: Duration,
    ) -> Result<Outcome, QemuError> {
        let never = std::future::pending::<std::convert::Infallible>();
        self.supervise_unless(pid1, shutdown_timeout, never).await.0
    }

    /// [`Qemu::supervise`], and when `fatal` resolves first (a child the VM depends on died),
    /// the same graceful shutdown; its value comes back beside the outcome.
    pub(crate) async fn supervise_unless<E>(
        mut self,
        pid1: &Pid1,
        shutdown_timeout: Duration,
        fatal: impl std::future::Future<Output = E>,
    ) -> (Result<Outcome, QemuError>, Option<E>) {
        let mut cause = None;
        let (status, forced) = tokio::select! {
            status = &mut self.exit => (status, false),
            signal = pid1.shutdown_requested() => {
                tracing::info!(%signal, timeout = %humantime::format_duration(shutdown_timeout), "shutting the guest down (ACPI power button)");
                self.graceful(shutdown_timeout).await
            }
            e = fatal => {
                cause = Some(e);
                tracing::info!(timeout = %humantime::format_duration(shutdown_timeout), "shutting the guest down (ACPI power button)");
                self.graceful(shutdown_timeout).await
            }
        };
        let status =
            match status.map_err(|_| QemuError::Reaper(Pid1Error::ReaperGone(self.pid.as_raw()))) {
                Ok(status) => status,
                Err(e) => return (Err(e), cause),
            };
        // Let the relays flush the last lines.
        sleep(Duration::from_millis(100)).await;
        let outcome = Outcome {
            status,
            forced,
            stderr: self.stderr.snapshot(),
        };
        (Ok(outcome), cause)
    }

    async fn graceful(
        &mut self,
        shutdown_timeout: Duration,
    ) -> (Result<ExitStatus, oneshot::error::RecvError>, bool) {
        let deadline = Instant::now() + shutdown_timeout;
        let mut pressed = false;
        loop {
            if pressed {
                self.agent_shutdown(deadline).await;
            }
            pressed = true;
            if let Err(e) = self.qmp.system_powerdown().await {
                tracing::warn!(error = %e, "could not press the ACPI power button");
            }
            let wait_until = (Instant::now() + REPRESS_EVERY).min(deadline);
            if let Ok(status) = tokio::time::timeout_at(wait_until, &mut self.exit).await {
                tracing::info!("the guest powered off");
                return (status, false);
            }
            if Instant::now() >= deadline {
                break;
            }
            tracing::info!("the guest is still running; pressing the power button again");
        }
        tracing::warn!(timeout = %humantime::format_duration(shutdown_timeout), "the guest did not power off within SHUTDOWN_TIMEOUT; telling qemu to quit");
        if let Err(e) = self.qmp.quit().await {
            tracing::warn!(error = %e, "QMP quit failed");
        }
        if let Ok(status) = timeout(QUIT_GRACE, &mut self.exit).await {
            return (status, true);
        }
        tracing::warn!(pid = self.pid.as_raw(), "qemu ignored quit; killing it");
        let _ = kill(self.pid, Signal::SIGKILL);
        ((&mut self.exit).await, true)
    }
}
