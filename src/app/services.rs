//! DHCP and DNS for the VM once the bridge exists: the same code behind `run` and `network`,
//! so the documented `network` subcommand serves exactly what `run` serves.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::http::{self, VmStatus};
use crate::{dhcp, dns, net};

/// The pod's resolver configuration (the kubelet writes it).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// DHCP and DNS for the VM, and the watch on spoofed packets; dropping this stops them.
#[derive(Debug)]
pub struct Services {
    dhcp: dhcp::DhcpServer,
    dns: dns::DnsServer,
    spoofed: tokio::task::AbortHandle,
}

impl Services {
    pub async fn start(config: &Config, plan: &net::NetPlan) -> Result<Self, Error> {
        let resolv = dns::ResolvConf::load(Path::new(RESOLV_CONF)).map_err(dns::DnsError::from)?;
        tracing::info!(nameservers = ?resolv.nameservers, search = ?resolv.search, "pod resolver");
        let cfg = dhcp::ServeConfig {
            bridge: plan.bridge.clone(),
            vm_ip: plan.slash30.vm(),
            vm_gw: plan.slash30.gw(),
            vm_mac: plan.vm_mac,
            mtu: plan.mtu,
            hostname: config.hostname.clone(),
            dns_mode: config.net.dns_mode,
            resolv,
            no_dhcp: config.net.no_dhcp,
        };
        let dhcp = dhcp::serve(&cfg).await?;
        let dns = dns::serve(&cfg).await?;
        let spoofed = tokio::spawn(net::spoof::watch(plan.slash30.vm())).abort_handle();
        Ok(Self { dhcp, dns, spoofed })
    }

    /// Exports the servers' counters and feeds readiness from the lease until the runtime ends.
    pub fn report(&self, status: &Arc<VmStatus>) {
        http::metrics::watch_services(self.dhcp.stats_handle(), self.dns.stats_handle());
        http::metrics::watch_spoofed(net::spoof::read_count);
        let status = Arc::clone(status);
        let mut leased = self.dhcp.lease_watch();
        tokio::spawn(async move {
            loop {
                status.set_lease(*leased.borrow_and_update());
                if leased.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.spoofed.abort();
    }
}
