//! Liveness and readiness that reflect the VM, not just our process.
//!
//! `/healthz`: 200 while qemu runs and answers QMP. `/readyz`: 200 once the guest holds its
//! DHCP lease (or, with `NO_DHCP`, once a guest TCP port answers), 503 before that and from
//! the moment shutdown starts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use crate::qemu::qmp::Qmp;

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
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

    pub fn name(self) -> &'static str {
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
pub enum Readiness {
    /// The guest took its DHCP lease.
    Lease,
    /// This guest address answers TCP connections (`NO_DHCP`).
    TcpPort(SocketAddr),
}

/// Shared, lock-light view of the VM for the HTTP handlers.
#[derive(Debug)]
pub struct VmStatus {
    phase: AtomicU8,
    lease: AtomicBool,
    readiness: Readiness,
    qmp: Mutex<Option<Qmp>>,
}

impl VmStatus {
    pub fn new(readiness: Readiness) -> Self {
        Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            lease: AtomicBool::new(false),
            readiness,
            qmp: Mutex::new(None),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
        crate::http::metrics::set_phase(phase);
    }

    pub fn set_qmp(&self, qmp: Option<Qmp>) {
        *self
            .qmp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = qmp;
    }

    /// Called by the DHCP server when the VM's MAC is ACKed its address.
    pub fn set_lease(&self, held: bool) {
        self.lease.store(held, Ordering::SeqCst);
    }

    fn qmp(&self) -> Option<Qmp> {
        self.qmp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Liveness: qemu runs and answers `query-status`.
    pub async fn healthy(&self) -> Result<String, String> {
        match self.phase() {
            Phase::Running | Phase::ShuttingDown => {}
            phase => return Err(format!("qemu is not running ({})", phase.name())),
        }
        let qmp = self.qmp().ok_or_else(|| "no QMP connection".to_owned())?;
        match tokio::time::timeout(Duration::from_secs(2), qmp.status()).await {
            Ok(Ok(status)) => Ok(format!("qemu {status}")),
            Ok(Err(e)) => Err(format!("QMP: {e}")),
            Err(_) => Err("QMP did not answer within 2s".to_owned()),
        }
    }

    /// Readiness: the guest is up and we are not shutting down.
    pub async fn ready(&self) -> Result<String, String> {
        match self.phase() {
            Phase::Running => {}
            phase => return Err(format!("not ready: {}", phase.name())),
        }
        match self.readiness {
            Readiness::Lease if self.lease.load(Ordering::SeqCst) => {
                Ok("the guest holds its DHCP lease".to_owned())
            }
            Readiness::Lease => Err("the guest has not taken its DHCP lease yet".to_owned()),
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
