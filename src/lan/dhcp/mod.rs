//! The DHCP server for the VM, on the bridge only: one lease (`VM_IP` for `VM_MAC`), the
//! pod's DNS settings and MTU as options.
//!
//! Three layers, after dhcproto/dora: [`codec`] (bytes ↔ message, size rules), [`policy`]
//! (message → decision, pure), [`socket`] (UDP 67 bound to the bridge, sending replies).
//! What it serves is the [`Lan`] of [`crate::lan`].

pub mod codec;
pub mod lease;
pub mod policy;
pub mod socket;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::Lan;

pub use lease::Lease;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "could not bind the DHCP server to UDP port 67 on bridge {bridge} (does it exist, and \
         is another DHCP server running in the pod?)"
    )]
    Bind {
        bridge: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running DHCP server; dropping it stops the server.
#[derive(Debug)]
pub struct DhcpServer {
    leased: watch::Receiver<bool>,
    task: Option<AbortHandle>,
}

impl DhcpServer {
    /// True once the VM has been ACKed its lease (readiness).
    pub fn leased(&self) -> bool {
        *self.leased.borrow()
    }

    /// Resolves when the VM holds its lease; never, when DHCP is disabled.
    pub async fn wait_leased(&self) {
        let mut rx = self.leased.clone();
        if rx.wait_for(|leased| *leased).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Follows whether the VM holds its lease.
    pub fn lease_watch(&self) -> watch::Receiver<bool> {
        self.leased.clone()
    }

    /// False when `NO_DHCP` is set.
    pub fn enabled(&self) -> bool {
        self.task.is_some()
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Binds UDP 67 on the bridge and serves in a task of the current runtime. With `no_dhcp`,
/// returns a disabled handle without binding anything.
pub async fn serve(cfg: &Lan) -> Result<DhcpServer, DhcpError> {
    let (leased_tx, leased) = watch::channel(false);
    if cfg.no_dhcp {
        tracing::info!("NO_DHCP is set; not serving DHCP");
        return Ok(DhcpServer { leased, task: None });
    }
    let (lease, warnings) = Lease::from_config(cfg);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let socket = socket::bind(&cfg.bridge).map_err(|source| DhcpError::Bind {
        bridge: cfg.bridge.clone(),
        source,
    })?;
    tracing::info!(bridge = %cfg.bridge, vm_ip = %lease.vm_ip, vm_mac = %lease.vm_mac, "serving DHCP");
    let server = socket::Server::new(socket, cfg.bridge.clone(), lease, leased_tx);
    let task = tokio::spawn(server.run()).abort_handle();
    Ok(DhcpServer {
        leased,
        task: Some(task),
    })
}
