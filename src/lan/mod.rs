//! The guest's LAN services: the servers that live until qemu exits, on the bridge that
//! [`crate::net`] made. `net/` is host plumbing applied once (bridge, tap, NAT); `lan/` is what
//! then serves the VM over it for as long as it runs: [`dhcp`] (its lease) and [`dns`] (the
//! forwarder on `VM_GW:53`), started together by [`Services::start`].
//!
//! What both serve is decided once, before they start, as one [`Lan`] built by [`Lan::load`]
//! (every caller, `run` and `network`, goes through it). The two servers share [`Lan`],
//! [`ResolvConf`] and [`DropLog`] from here and never import each other.

pub mod dhcp;
pub mod dhcpv6;
pub mod dns;
pub mod drop_log;
pub mod ipv6;
pub mod ra;
pub mod resolv_conf;
pub mod services;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use macaddr::MacAddr6;

use crate::config::{Config, DnsMode, Hostname};
use crate::net::NetPlan;

pub use drop_log::{DropLog, LogLimits};
pub use resolv_conf::{ResolvConf, ResolvConfError};
pub use services::{LanError, Services};

/// The pod's resolver configuration (the kubelet writes it).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What the DHCP server and the DNS forwarder serve, decided before they start.
#[derive(Debug, Clone)]
pub struct Lan {
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
    /// The VM's IPv6 side (issue 23); `None`: IPv4 only.
    pub ipv6: Option<Lan6>,
}

/// What the RA sender, DHCPv6 server and the forwarder's IPv6 side serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan6 {
    /// `VM_GW6`, on the bridge.
    pub gw: Ipv6Addr,
    pub vm: Ipv6Addr,
    /// The /64's network address.
    pub prefix: Ipv6Addr,
    pub bridge_mac: MacAddr6,
    pub mtu: u32,
    /// RDNSS / DHCPv6 DNS: `VM_GW6` (our forwarder) with `DNS_MODE=forward`, else the pod's
    /// IPv6 nameservers.
    pub dns: Vec<Ipv6Addr>,
    pub search: Vec<String>,
}

impl Lan {
    /// Reads the pod's [`RESOLV_CONF`] and builds the [`Lan`] for `plan`.
    pub fn load(config: &Config, plan: &NetPlan) -> Result<Self, LanError> {
        let resolv = ResolvConf::load(Path::new(RESOLV_CONF)).map_err(dns::DnsError::from)?;
        tracing::info!(nameservers = ?resolv.nameservers, search = ?resolv.search, "pod resolver");
        Ok(Self::new(config, plan, resolv))
    }

    /// The [`Lan`] for `plan` with the pod's resolver settings `resolv` (pure).
    pub fn new(config: &Config, plan: &NetPlan, resolv: ResolvConf) -> Self {
        Self {
            bridge: plan.bridge.clone(),
            vm_ip: plan.slash30.vm(),
            vm_gw: plan.slash30.gw(),
            vm_mac: plan.vm_mac,
            mtu: plan.mtu,
            hostname: config.hostname.clone(),
            dns_mode: config.net.dns_mode,
            no_dhcp: config.net.no_dhcp,
            ipv6: plan.ipv6.as_ref().map(|v6| Lan6 {
                gw: v6.gw,
                vm: v6.vm,
                prefix: v6.net.network(),
                bridge_mac: plan.bridge_mac,
                mtu: plan.mtu,
                dns: match config.net.dns_mode {
                    DnsMode::Forward => vec![v6.gw],
                    DnsMode::Passthrough => resolv
                        .nameservers
                        .iter()
                        .filter_map(|ip| match ip {
                            IpAddr::V6(ip) => Some(*ip),
                            IpAddr::V4(_) => None,
                        })
                        .collect(),
                },
                search: resolv.search.clone(),
            }),
            resolv,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;
    use crate::net::plan::tests::{pod, MAC};

    #[test]
    fn the_lan_serves_the_plans_addresses_and_the_configs_choices() {
        let settings =
            Cli::try_parse_from(["kvm-manager", "--dns-mode", "passthrough", "--no-dhcp"])
                .expect("valid arguments")
                .settings;
        let hostname = Hostname::parse("vm-0").expect("valid hostname");
        let config =
            Config::from_settings(&settings, hostname, Vec::new()).expect("valid configuration");
        let plan = crate::net::plan(&config.net, &pod(), MAC).expect("a valid plan");
        let lan = Lan::new(
            &config,
            &plan,
            ResolvConf::parse("search a.example\nnameserver 10.96.0.10\n"),
        );
        assert_eq!(lan.bridge, plan.bridge);
        assert_eq!(
            (lan.vm_ip, lan.vm_gw, lan.vm_mac, lan.mtu),
            (plan.slash30.vm(), plan.slash30.gw(), MAC, 1450)
        );
        assert_eq!(lan.hostname.as_str(), "vm-0");
        assert_eq!(lan.dns_mode, DnsMode::Passthrough);
        assert!(lan.no_dhcp);
        assert_eq!(lan.resolv.search, ["a.example"]);
    }
}
