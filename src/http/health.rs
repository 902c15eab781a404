//! Liveness and readiness that reflect the VM, not just our process.
//!
//! `/healthz`: 200 while qemu runs the VM and answers QMP. `/readyz`: 200 once the guest holds
//! its DHCP lease (or, with `NO_DHCP`, once a guest TCP port answers), 503 before that and from
//! the moment shutdown starts. Both are 503 while the VM is paused (a full pet volume, an I/O
//! error, an operator's QMP `stop`), with the reason in the body: a paused VM serves nobody.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use crate::locked::Locked as _;
use crate::qemu::pause::Pause;
use crate::qemu::qmp::Qmp;

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Preparing image, network, config drive.
    Starting = 0,
    /// qemu is running.
    Running = 1,
    /// SIGTERM received; the guest is being shut down.
    ShuttingDown = 2,
    /// qemu has exited.
    Stopped = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::ShuttingDown,
            _ => Phase::Stopped,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::ShuttingDown => "shutting-down",
            Phase::Stopped => "stopped",
        }
    }
}

/// How readiness is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// The guest took its DHCP lease.
    Lease,
    /// This guest address answers TCP connections (`READY_ON=port`).
    TcpPort(SocketAddr),
    /// passt mode: the guest answers on this port of the pod IP, as a watcher outside the
    /// handler found (passt accepts for the guest, so a bare connect proves nothing).
    GuestPort(SocketAddr),
    /// The guest agent answers (`READY_ON=agent`).
    Agent,
}

/// Shared, lock-light view of the VM for the HTTP handlers.
#[derive(Debug)]
pub(crate) struct VmStatus {
    phase: AtomicU8,
    lease: AtomicBool,
    readiness: Mutex<Readiness>,
    qmp: Mutex<Option<Qmp>>,
    /// Why the VM is paused, as the pause watcher last reported.
    pause: Mutex<Option<Pause>>,
    /// The guest agent, once qemu runs.
    guest: Mutex<Option<GuestLink>>,
    /// Backups of the running VM (issue 22), once qemu runs.
    backups: Mutex<Option<std::sync::Arc<crate::backup::job::Backups>>>,
}

/// The running VM's guest agent and the facts `/status` shows beside it.
#[derive(Debug, Clone)]
pub(crate) struct GuestLink {
    pub guest: crate::qemu::agent::Guest,
    pub vm_ip: std::net::Ipv4Addr,
    pub mac: String,
    /// `nat` (bridge, tap and NAT).
    pub network: &'static str,
}

impl VmStatus {
    pub(crate) fn new(readiness: Readiness) -> Self {
        crate::metrics::VM.paused(&Pause::LABELS, None);
        Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            lease: AtomicBool::new(false),
            readiness: Mutex::new(readiness),
            qmp: Mutex::new(None),
            pause: Mutex::new(None),
            guest: Mutex::new(None),
            backups: Mutex::new(None),
        }
    }

    // --- issue 22: backups ---
    pub(crate) fn set_backups(&self, backups: Option<std::sync::Arc<crate::backup::job::Backups>>) {
        *self.backups.locked() = backups;
    }

    pub(crate) fn backups(&self) -> Option<std::sync::Arc<crate::backup::job::Backups>> {
        self.backups.locked().clone()
    }
    // --- end issue 22 ---

    pub(crate) fn set_guest(&self, guest: Option<GuestLink>) {
        *self.guest.locked() = guest;
    }

    pub(crate) fn guest(&self) -> Option<GuestLink> {
        self.guest.locked().clone()
    }

    pub(crate) fn lease(&self) -> bool {
        self.lease.load(Ordering::SeqCst)
    }

    pub(crate) fn paused(&self) -> Option<Pause> {
        self.pause()
    }

    /// qemu's own state (`running`, `paused`…), or why it is unknown; within 2 s.
    pub(crate) async fn qemu_state(&self) -> Result<String, String> {
        let qmp = self.qmp().ok_or_else(|| "no QMP connection".to_owned())?;
        match tokio::time::timeout(Duration::from_secs(2), qmp.status()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(format!("QMP: {e}")),
            Err(_) => Err("QMP did not answer within 2s".to_owned()),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
        let phases = [
            Phase::Starting,
            Phase::Running,
            Phase::ShuttingDown,
            Phase::Stopped,
        ];
        crate::metrics::VM.phase(&phases.map(Phase::name), phase.name());
        crate::metrics::VM.qemu_up.set(i64::from(matches!(
            phase,
            Phase::Running | Phase::ShuttingDown
        )));
    }

    pub(crate) fn set_qmp(&self, qmp: Option<Qmp>) {
        *self.qmp.locked() = qmp;
    }

    /// Called as the VM pauses (`Some`, with the reason) and runs again (`None`).
    pub(crate) fn set_pause(&self, pause: Option<Pause>) {
        crate::metrics::VM.paused(&Pause::LABELS, pause.as_ref().map(Pause::label));
        *self.pause.locked() = pause;
    }

    fn pause(&self) -> Option<Pause> {
        self.pause.locked().clone()
    }

    /// How readiness is decided, once the network mode is known.
    pub(crate) fn set_readiness(&self, readiness: Readiness) {
        *self.readiness.locked() = readiness;
    }

    /// Fed by `run` from the DHCP server's lease watch: true once the VM's MAC holds its address
    /// (in passt mode: from the watcher of the guest's port, see [`Readiness::GuestPort`]).
    pub(crate) fn set_lease(&self, held: bool) {
        self.lease.store(held, Ordering::SeqCst);
    }

    fn qmp(&self) -> Option<Qmp> {
        self.qmp.locked().clone()
    }

    /// Liveness: qemu runs the VM (not paused) and answers `query-status`.
    pub(crate) async fn healthy(&self) -> Result<String, String> {
        match self.phase() {
            Phase::Running | Phase::ShuttingDown => {}
            phase => return Err(format!("qemu is not running ({})", phase.name())),
        }
        if let Some(pause) = self.pause() {
            return Err(pause.to_string());
        }
        let qmp = self.qmp().ok_or_else(|| "no QMP connection".to_owned())?;
        match tokio::time::timeout(Duration::from_secs(2), qmp.status()).await {
            Ok(Ok(status)) if status == "running" => Ok(format!("qemu {status}")),
            // Paused in a way the watcher has not reported yet (or never will: `suspended`).
            Ok(Ok(status)) => Err(format!("the VM is not running: qemu {status}")),
            Ok(Err(e)) => Err(format!("QMP: {e}")),
            Err(_) => Err("QMP did not answer within 2s".to_owned()),
        }
    }

    /// Readiness: the guest is up and we are not shutting down.
    pub(crate) async fn ready(&self) -> Result<String, String> {
        match self.phase() {
            Phase::Running => {}
            phase => return Err(format!("not ready: {}", phase.name())),
        }
        if let Some(pause) = self.pause() {
            return Err(format!("not ready: {pause}"));
        }
        let readiness = *self.readiness.locked();
        match readiness {
            Readiness::GuestPort(addr) if self.lease.load(Ordering::SeqCst) => {
                Ok(format!("the guest answers on {addr} (through passt)"))
            }
            Readiness::GuestPort(addr) => Err(format!(
                "the guest does not answer on {addr} (through passt) yet"
            )),
            Readiness::Lease if self.lease.load(Ordering::SeqCst) => {
                Ok("the guest holds its DHCP lease".to_owned())
            }
            Readiness::Lease => Err("the guest has not taken its DHCP lease yet".to_owned()),
            Readiness::Agent => match self.guest() {
                Some(link) if link.guest.view.borrow().connected => {
                    Ok("the guest agent answers".to_owned())
                }
                _ => Err("the guest agent does not answer yet".to_owned()),
            },
            Readiness::TcpPort(addr) => {
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(format!("the guest answers on {addr}")),
                    _ => Err(format!("the guest does not answer on {addr} yet")),
                }
            }
        }
    }
}

fn reply(result: Result<String, String>) -> (StatusCode, String) {
    match result {
        Ok(text) => (StatusCode::OK, format!("ok: {text}\n")),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, format!("{text}\n")),
    }
}

pub(crate) async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    reply(state.status.healthy().await)
}

pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    reply(state.status.ready().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_paused_vm_is_neither_healthy_nor_ready_and_says_why() {
        let status = VmStatus::new(Readiness::Lease);
        status.set_phase(Phase::Running);
        status.set_lease(true);
        assert!(status.ready().await.is_ok());
        status.set_pause(Some(Pause::NoSpace {
            device: "disk0".into(),
        }));
        for probe in [status.healthy().await, status.ready().await] {
            let why = probe.expect_err("503 while paused");
            assert!(why.contains("no space left on PET_DIR"), "{why}");
        }
        status.set_pause(None);
        assert!(status.ready().await.is_ok());
    }
}
