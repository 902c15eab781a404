//! Decides the whole pod-side network of the VM without touching the host: names, addresses,
//! MTU, the gateway MAC and the ports kept for the pod itself. The nftables ruleset is a pure
//! function of the plan: [`super::ruleset`].
//!
//! [`plan`] is pure, so every policy choice (what is DNAT'ed, what is excluded, what is
//! rejected as overlapping) is unit-tested without root; [`super::apply`] only carries it out.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use macaddr::MacAddr6;

use super::discover::PodNet;
use super::ip6::Net64;
pub(crate) use super::slash30::Ipv4Net;
use super::slash30::Slash30;
use super::NetError;
use crate::config::{NetConfig, VNC_PORT};

/// The bridge the tap (and anything else, e.g. a test's veth) is plugged into.
pub(crate) const BRIDGE: &str = "kvmbr0";
/// The persistent tap qemu opens by name.
pub(crate) const TAP: &str = "kvmtap0";

/// Everything [`super::apply`] does, decided up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// The pod's default-route interface.
    pub uplink: String,
    pub bridge: String,
    /// Locally administered and derived from `vm_mac`, so the guest's ARP entry for its
    /// gateway survives restarts and does not change when ports join the bridge.
    pub bridge_mac: MacAddr6,
    pub tap: String,
    /// Of the bridge and the tap: the pod's MTU, so the guest never sends what the overlay drops.
    pub mtu: u32,
    /// The VM's address and the bridge's (the guest's router).
    pub slash30: Slash30,
    pub vm_mac: MacAddr6,
    pub pod_ip: Ipv4Addr,
    pub pod_prefix: u8,
    /// TCP ports on the pod IP (and 127.0.0.1) that stay with the pod: VNC and HTTP.
    pub excluded_tcp_ports: Vec<ExcludedPort>,
    /// Whether qemu can use `vhost=on` (`/dev/vhost-net` opens read-write).
    pub vhost_net: bool,
    /// Queue pairs of the tap and the VM's NIC; above 1 the tap is multiqueue. [`plan`] says 1,
    /// [`super::wire`] the VM's (`NIC_QUEUES`, issue 24).
    pub queues: u32,
    /// The VM's IPv6 behind the pod's (issue 23); `None`: IPv4 only, see `no_ipv6_because`.
    pub ipv6: Option<Plan6>,
    /// Why the VM gets no IPv6, for the one log line that says so.
    pub no_ipv6_because: Option<&'static str>,
}

/// The IPv6 half of the NAT: `VM_GW6/64` on the bridge, the VM's address, the pod's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan6 {
    /// The IPv6 default route's interface (usually the IPv4 uplink).
    pub uplink: String,
    pub pod_ip: Ipv6Addr,
    pub pod_prefix: u8,
    /// `VM_GW6`: the bridge's address, the guest's router and DNS forwarder.
    pub gw: Ipv6Addr,
    /// `VM_IP6`, or the VM MAC's SLAAC address: where the ip6 DNAT sends.
    pub vm: Ipv6Addr,
    pub net: Net64,
}

/// A TCP port that is not forwarded to the VM, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExcludedPort {
    pub port: u16,
    pub reason: &'static str,
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl NetPlan {
    /// The VM's /30.
    pub fn vm_net(&self) -> Ipv4Net {
        self.slash30.net()
    }
}

/// Config + discovered pod facts + the VM's MAC → the plan; rejects address clashes.
pub(crate) fn plan(net: &NetConfig, pod: &PodNet, vm_mac: MacAddr6) -> Result<NetPlan, NetError> {
    let vm_net = net.slash30.net();
    let pod_net = Ipv4Net::new(pod.pod_ip, pod.pod_prefix);
    if vm_net.overlaps(pod_net) {
        return Err(NetError::Overlap {
            vm_net: vm_net.to_string(),
            pod_net: pod_net.to_string(),
        });
    }
    if let Some(gateway) = pod.gateway.filter(|gw| vm_net.contains(*gw)) {
        return Err(NetError::GatewayInVmNet {
            vm_net: vm_net.to_string(),
            gateway,
        });
    }
    let mut excluded_tcp_ports = Vec::new();
    if !net.no_vnc {
        excluded_tcp_ports.push(ExcludedPort {
            port: VNC_PORT,
            reason: "VNC",
        });
    }
    if let Some(port) = net.http_port {
        excluded_tcp_ports.push(ExcludedPort {
            port,
            reason: "HTTP",
        });
    }
    let (ipv6, no_ipv6_because) = plan6(net, pod, vm_mac)?;
    Ok(NetPlan {
        ipv6,
        no_ipv6_because,
        uplink: pod.uplink.clone(),
        bridge: BRIDGE.to_owned(),
        bridge_mac: gateway_mac(vm_mac),
        tap: TAP.to_owned(),
        mtu: pod.mtu,
        slash30: net.slash30,
        vm_mac,
        pod_ip: pod.pod_ip,
        pod_prefix: pod.pod_prefix,
        excluded_tcp_ports,
        vhost_net: pod.vhost_net,
        queues: 1,
    })
}

// --- issue 23: the IPv6 half ---
type Planned6 = (Option<Plan6>, Option<&'static str>);

/// IPv6 when it is wanted and the pod has some; an overlap with the pod's prefix is refused.
fn plan6(net: &NetConfig, pod: &PodNet, vm_mac: MacAddr6) -> Result<Planned6, NetError> {
    let Some(config) = net.ipv6 else {
        return Ok((None, Some("IPV6=off")));
    };
    let Some(pod6) = &pod.ipv6 else {
        return Ok((None, Some("the pod has no global IPv6 address")));
    };
    let vm_net = config.net();
    if vm_net.overlaps(pod6.pod_ip, pod6.prefix) {
        return Err(NetError::Overlap6 {
            vm_net: vm_net.to_string(),
            pod_net: format!("{}/{}", pod6.pod_ip, pod6.prefix),
        });
    }
    Ok((
        Some(Plan6 {
            uplink: pod6.uplink.clone(),
            pod_ip: pod6.pod_ip,
            pod_prefix: pod6.prefix,
            gw: config.gw,
            vm: config.vm_for(vm_mac),
            net: vm_net,
        }),
        None,
    ))
}
// --- end issue 23 ---

/// Locally administered unicast, and never equal to `vm_mac` (the last octet differs).
fn gateway_mac(vm_mac: MacAddr6) -> MacAddr6 {
    let b = vm_mac.into_array();
    MacAddr6::new((b[0] | 0x02) & !0x01, b[1], b[2], b[3], b[4], b[5] ^ 0x01)
}

fn lower_mac(mac: MacAddr6) -> String {
    mac.to_string().to_ascii_lowercase()
}

/// What `kvm-manager network` prints: one line per decision, then the ruleset.
impl fmt::Display for NetPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exclusions = if self.excluded_tcp_ports.is_empty() {
            "none".to_owned()
        } else {
            self.excluded_tcp_ports
                .iter()
                .map(|p| format!("tcp {} ({})", p.port, p.reason))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let vhost = if self.vhost_net {
            "vhost-net available"
        } else {
            "no vhost-net"
        };
        writeln!(
            f,
            "uplink:     {} {}/{}",
            self.uplink, self.pod_ip, self.pod_prefix
        )?;
        writeln!(
            f,
            "bridge:     {} {}/{} mac {} mtu {}",
            self.bridge,
            self.slash30.gw(),
            Slash30::PREFIX,
            lower_mac(self.bridge_mac),
            self.mtu
        )?;
        writeln!(
            f,
            "tap:        {} (vnet_hdr, {vhost}) mtu {}",
            self.tap, self.mtu
        )?;
        writeln!(
            f,
            "vm:         {} mac {}",
            self.slash30.vm(),
            lower_mac(self.vm_mac)
        )?;
        writeln!(
            f,
            "dnat:       every protocol to {} and tcp to 127.0.0.1 -> {}",
            self.pod_ip,
            self.slash30.vm()
        )?;
        writeln!(f, "exclusions: {exclusions}")?;
        writeln!(
            f,
            "snat:       {} via {} -> {}",
            self.vm_net(),
            self.uplink,
            self.pod_ip
        )?;
        match (&self.ipv6, self.no_ipv6_because) {
            (Some(v6), _) => {
                writeln!(
                    f,
                    "ipv6:       bridge {}/{} vm {} pod {}/{} on {}",
                    v6.gw,
                    Net64::PREFIX,
                    v6.vm,
                    v6.pod_ip,
                    v6.pod_prefix,
                    v6.uplink
                )?;
                writeln!(
                    f,
                    "dnat6:      every protocol to {} -> {}; snat6 {} -> {}",
                    v6.pod_ip, v6.vm, v6.net, v6.pod_ip
                )
            }
            (None, why) => writeln!(f, "ipv6:       none ({})", why.unwrap_or("off")),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
