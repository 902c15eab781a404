//! passt mode: the VM on the pod's own IPv4/IPv6 address through `passt`, a supervised child
//! (GPL: run, never linked) that turns the guest's frames into ordinary sockets of the pod and
//! listens on the pod's ports for the guest. Needs no capability and no tun device.
//!
//! This file decides (pure): [`plan`] turns the config and the pod's facts into a
//! [`PasstPlan`], [`PasstPlan::args`] into passt's command line. [`child`] runs it.
//!
//! - Ports: every TCP and UDP port reaches the guest except the ones the pod keeps (VNC 5900
//!   unless `NO_VNC`, `HTTP_PORT`) and the pod's ephemeral range (`ip_local_port_range`),
//!   whose ports carry the pod's own outgoing connections, the guest's through passt among
//!   them (passt's own `all` leaves them out for the same reason). passt holds one socket per
//!   port, protocol and address family, so the ports are capped by the open-files limit:
//!   the lowest ports first, and a warning naming the limit when it cuts.
//! - `--no-map-gw`: by default passt maps the guest's traffic to the gateway address onto the
//!   pod's loopback, where our HTTP server trusts local peers; the guest gets no such door.
//! - DNS: the guest gets the pod's nameservers and search list (passt reads the pod's
//!   resolv.conf) in either `DNS_MODE`. This passt maps a `--dns-forward` address only to the
//!   first nameserver of a list given with `--dns` (so never to our forwarder), and the guest
//!   has no address of ours to send queries to: `forward` means NAT mode's forwarder, and
//!   [`plan`] says so in a note.

pub(crate) mod child;

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use macaddr::MacAddr6;

use crate::config::{DnsMode, NetConfig, VNC_PORT};
use crate::net::discover::PodNet;

/// Sockets passt holds per forwarded port: TCP and UDP, IPv4 and IPv6.
const SOCKETS_PER_PORT: u64 = 4;
/// Open files passt keeps for itself and its connections besides the listening sockets.
const RESERVED_FILES: u64 = 1024;
/// The user passt runs as when we are root (passt refuses root and would pick it anyway).
pub(crate) const NOBODY: u32 = 65534;

/// What the pod says, read once by [`child::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodFacts {
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral: RangeInclusive<u16>,
    /// `net.ipv4.ip_unprivileged_port_start`: lower ports need root or that sysctl.
    pub unprivileged_start: u16,
    /// Our soft `RLIMIT_NOFILE` (raised to the hard limit at start), which passt inherits.
    pub open_files: u64,
    /// We run as root: passt then runs as [`NOBODY`] and owns its socket's directory.
    pub root: bool,
}

/// passt's command line, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasstPlan {
    pub binary: PathBuf,
    /// The unix socket qemu's `-netdev stream` connects to.
    pub socket: PathBuf,
    pub mtu: u32,
    pub vm_mac: MacAddr6,
    /// The pod's (and so the guest's) IPv4 address.
    pub pod_ip: Ipv4Addr,
    /// Forwarded ports, the same for TCP and UDP.
    pub ports: Vec<RangeInclusive<u16>>,
    /// `Some(port)`: the open-files limit stopped forwarding after this port.
    pub capped_at: Option<u16>,
    /// `Some(n)`: ports below n do not reach the guest (non-root without the sysctl).
    pub privileged_below: Option<u16>,
    /// `DNS_MODE=forward` was asked for: the log says the pod's nameservers serve instead.
    pub forward_ignored: bool,
    /// `NO_DHCP`: passt's DHCP and DHCPv6 servers off (the guest is configured otherwise).
    pub no_dhcp: bool,
    /// `--runas UID:GID`, when we are root.
    pub runas: Option<u32>,
}

/// The directory of passt's socket under `RUNTIME_DIR` (owned by the user passt runs as).
pub(crate) fn socket_dir(runtime_dir: &std::path::Path) -> PathBuf {
    runtime_dir.join("passt")
}

/// Config + pod facts → the plan.
pub(crate) fn plan(
    net: &NetConfig,
    binary: PathBuf,
    runtime_dir: &std::path::Path,
    pod: &PodNet,
    vm_mac: MacAddr6,
    facts: &PodFacts,
) -> PasstPlan {
    let mut kept: Vec<u16> = net.http_port.into_iter().collect();
    if !net.no_vnc {
        kept.push(VNC_PORT);
    }
    let budget = facts.open_files.saturating_sub(RESERVED_FILES) / SOCKETS_PER_PORT;
    let (ports, capped_at) = forwarded(&kept, &facts.ephemeral, budget);
    PasstPlan {
        binary,
        socket: socket_dir(runtime_dir).join("passt.sock"),
        mtu: pod.mtu,
        vm_mac,
        pod_ip: pod.pod_ip,
        ports,
        capped_at,
        // As root, passt binds its ports before it becomes nobody.
        privileged_below: (!facts.root && facts.unprivileged_start > 1)
            .then_some(facts.unprivileged_start),
        forward_ignored: net.dns_mode == DnsMode::Forward,
        no_dhcp: net.no_dhcp,
        runas: facts.root.then_some(NOBODY),
    }
}

/// Ports 1-65535 without `kept` and `ephemeral`, as ranges, lowest first, at most `budget`
/// ports; the second value is the last port forwarded when the budget cut the list.
fn forwarded(
    kept: &[u16],
    ephemeral: &RangeInclusive<u16>,
    budget: u64,
) -> (Vec<RangeInclusive<u16>>, Option<u16>) {
    let mut ranges: Vec<RangeInclusive<u16>> = Vec::new();
    let mut count = 0u64;
    for port in 1..=u16::MAX {
        if kept.contains(&port) || ephemeral.contains(&port) {
            continue;
        }
        if count == budget {
            let last = ranges.last().map_or(0, |r| *r.end());
            return (ranges, Some(last));
        }
        count += 1;
        match ranges.last_mut() {
            Some(last) if *last.end() + 1 == port => *last = *last.start()..=port,
            _ => ranges.push(port..=port),
        }
    }
    (ranges, None)
}

/// `a-b,c,d-e`: passt's port specification.
fn spec(ranges: &[RangeInclusive<u16>]) -> String {
    if ranges.is_empty() {
        return "none".to_owned();
    }
    ranges
        .iter()
        .map(|r| match (r.start(), r.end()) {
            (a, b) if a == b => a.to_string(),
            (a, b) => format!("{a}-{b}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl PasstPlan {
    /// passt's arguments (the program not included).
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--foreground",
            "--stderr",
            "--socket",
            &self.socket.to_string_lossy(),
            "--mtu",
            &self.mtu.to_string(),
            "--no-map-gw",
            "--tcp-ports",
            &spec(&self.ports),
            "--udp-ports",
            &spec(&self.ports),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if self.no_dhcp {
            args.extend(["--no-dhcp".to_owned(), "--no-dhcpv6".to_owned()]);
        }
        if let Some(uid) = self.runas {
            args.extend(["--runas".to_owned(), format!("{uid}:{uid}")]);
        }
        args
    }
}

#[cfg(test)]
mod tests;
