//! DHCP and DNS for the VM once the bridge exists: the same code behind `run` and `network`,
//! so the documented `network` subcommand serves exactly what `run` serves.

use super::{dhcp, dns, Lan};
use crate::net;

/// Why the LAN services could not start.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
}

/// DHCP and DNS for the VM, and the watch on spoofed packets; dropping this stops them.
#[derive(Debug)]
pub struct Services {
    dhcp: dhcp::DhcpServer,
    /// Only held: dropping it stops the forwarder.
    _dns: dns::DnsServer,
    /// The watch on spoofed packets, once the NAT says how it is woken.
    spoofed: Option<tokio::task::AbortHandle>,
    vm_ip: std::net::Ipv4Addr,
}

impl Services {
    pub async fn start(lan: &Lan) -> Result<Self, LanError> {
        let dhcp = dhcp::serve(lan).await?;
        let dns = dns::serve(lan).await?;
        Ok(Self {
            dhcp,
            _dns: dns,
            spoofed: None,
            vm_ip: lan.vm_ip,
        })
    }

    /// Starts the watch on spoofed packets, woken as the applied NAT says ([`net::apply`]).
    pub(crate) fn watch_spoofed(&mut self, wake: net::SpoofWake) {
        if let Some(old) = self
            .spoofed
            .replace(tokio::spawn(net::spoof::watch(self.vm_ip, wake)).abort_handle())
        {
            old.abort();
        }
    }

    /// The DHCP server: its lease feeds readiness.
    pub fn dhcp(&self) -> &dhcp::DhcpServer {
        &self.dhcp
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(watch) = &self.spoofed {
            watch.abort();
        }
    }
}
