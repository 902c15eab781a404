//! The DHCP server for the VM, on the bridge only: one lease (`VM_IP` for `VM_MAC`), the
//! pod's DNS settings and MTU as options.
//!
//! Three layers, after dhcproto/dora: [`codec`] (bytes ↔ message, size rules), [`policy`]
//! (message → decision, pure), [`socket`] (UDP 67 bound to the bridge, sending replies).
//! [`ServeConfig`] is shared with [`crate::dns`].

pub mod codec;
pub mod drop_log;
pub mod lease;
pub mod policy;
pub mod socket;

use std::net::Ipv4Addr;

use macaddr::MacAddr6;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::config::{DnsMode, Hostname};
use crate::dns::ResolvConf;

pub use drop_log::{DropLog, LogLimits};
pub use lease::Lease;

/// What the DHCP server and the DNS forwarder serve, decided before they start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The bridge the VM's tap is attached to; it carries `vm_gw`.
    pub bridge: String,
    pub vm_ip: Ipv4Addr,
    pub vm_gw: Ipv4Addr,
    pub vm_mac: MacAddr6,
    /// The pod's MTU (option 26).
    pub mtu: u32,
    pub hostname: Hostname,
    pub dns_mode: DnsMode,
    pub resolv: ResolvConf,
    pub no_dhcp: bool,
}

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
    #[error("could not read the MTU of bridge {bridge}")]
    ReadMtu {
        bridge: String,
        #[source]
        source: std::io::Error,
    },
}

/// The MTU of `device`, from sysfs.
pub fn device_mtu(device: &str) -> Result<u32, DhcpError> {
    let path = std::path::Path::new("/sys/class/net")
        .join(device)
        .join("mtu");
    let error = |source| DhcpError::ReadMtu {
        bridge: device.to_owned(),
        source,
    };
    std::fs::read_to_string(path)
        .map_err(error)?
        .trim()
        .parse()
        .map_err(|_| error(std::io::ErrorKind::InvalidData.into()))
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
pub async fn serve(cfg: &ServeConfig) -> Result<DhcpServer, DhcpError> {
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
