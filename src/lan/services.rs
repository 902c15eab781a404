//! DHCP and DNS for the VM once the bridge exists: the same code behind `run` and `network`,
//! so the documented `network` subcommand serves exactly what `run` serves.

use super::ipv6::Ipv6Error;
use super::{dhcp, dns, Lan};
use crate::net;

/// Why the LAN services could not start.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error(transparent)]
    Ipv6(#[from] Ipv6Error),
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
    /// Only held: router advertisements and DHCPv6 while the VM has IPv6 (issue 23).
    _ipv6: Option<(super::ra::RaServer, super::dhcpv6::Dhcpv6Server)>,
}

impl Services {
    pub async fn start(lan: &Lan) -> Result<Self, LanError> {
        let dhcp = dhcp::serve(lan).await?;
        let dns = dns::serve(lan).await?;
        let ipv6 = match &lan.ipv6 {
            Some(v6) => Some((
                super::ra::serve(&lan.bridge, v6).await?,
                super::dhcpv6::serve(&lan.bridge, v6, lan.vm_mac).await?,
            )),
            None => None,
        };
        Ok(Self {
            dhcp,
            _dns: dns,
            spoofed: None,
            vm_ip: lan.vm_ip,
            _ipv6: ipv6,
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
