//! Our nftables table, `ip kvm_manager`, as text: a pure function of the [`NetPlan`]. [`super::nft`]
//! hands it to `nft`.
//!
//! The ruleset starts with `table …` + `delete table …` and then declares the table again, and
//! `nft -f -` runs the whole file as one transaction: after a container restart (the pod netns
//! survives it) the table is replaced, never appended to, and nobody else's tables are touched.
//!
//! What it does, chain by chain:
//! - `prerouting`: every protocol addressed to the pod IP goes to the VM, except the TCP ports
//!   the pod keeps (VNC, HTTP). Traffic that comes from the bridge is left alone, so the VM can
//!   reach the pod's own services on the pod IP.
//! - `output`: the same for traffic generated inside the pod, plus TCP to 127.0.0.1, which is
//!   where `kubectl port-forward` connects. Our own sockets opt out with [`LOCAL_MARK`].
//! - `postrouting`: locally generated traffic entering the bridge gets the bridge's address as
//!   source (a 127.0.0.1 or pod-IP source would be a martian to the kernel on the way back);
//!   the VM's traffic leaving the uplink gets the pod IP.
//! - `forward`: TCP MSS clamped to the route MTU in both directions.
//! - `antispoof` (before conntrack): what arrives from the bridge must come from `VM_IP`, or
//!   from 0.0.0.0 (a DHCP client without an address; the kernel never forwards a zero
//!   source), or carry [`LOCAL_MARK`] (our own broadcasts, looped back to the bridge). Anything
//!   else is a forged source: dropped and counted in the named counter [`SPOOFED_COUNTER`],
//!   which `/metrics` reads. At most one such packet a minute is also sent to nflog group
//!   [`SPOOFED_LOG_GROUP`]: that wakes the watch that logs it ([`super::spoof`]), which
//!   otherwise sleeps. IPv6 is the `ip6 kvm_manager` table's (issue 23), declared
//!   in the same transaction when the VM has IPv6 and deleted otherwise; link-local sources
//!   stay usable on the bridge there.

use std::fmt::Write as _;

use super::plan::NetPlan;

/// Our table: `table ip kvm_manager`.
pub(crate) const TABLE: &str = "kvm_manager";

/// Packets from sockets with this `SO_MARK` are never NAT'ed: kvm-manager's own traffic, e.g.
/// the DNS forwarder's queries to a resolver on 127.0.0.1 (set by [`mark_own`]).
pub(crate) const LOCAL_MARK: u32 = 0x4b4d;

/// The named counter of packets from the VM with a forged source address.
pub(crate) const SPOOFED_COUNTER: &str = "spoofed";

/// The nflog group the anti-spoofing chain notifies (no packet data: only the wakeup counts).
pub(crate) const SPOOFED_LOG_GROUP: u16 = 0x4b4d;

/// How the spoofed-packet watch learns that the VM forged a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpoofWake {
    /// From the kernel, over nflog: no wakeup while nothing is forged.
    Nflog,
    /// By reading the counter every few seconds: the ruleset went without its `log group`
    /// rule (see [`without_spoof_log`]).
    Poll,
}

/// The complete `nft -f -` input for `plan`.
pub(crate) fn ruleset(plan: &NetPlan) -> String {
    let pod = plan.pod_ip;
    let vm = plan.slash30.vm();
    let bridge = &plan.bridge;
    let uplink = &plan.uplink;
    let ports: Vec<String> = plan
        .excluded_tcp_ports
        .iter()
        .map(|p| p.port.to_string())
        .collect();
    let excluded = match ports.len() {
        0 => None,
        1 => Some(ports.join("")),
        _ => Some(format!("{{ {} }}", ports.join(", "))),
    };
    let mut out = String::new();
    // Writing to a String cannot fail; the macro below keeps the text readable.
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(out, $($arg)*); };
    }
    line!("# kvm-manager: the pod IP {pod} on {uplink} <-> the VM {vm} on {bridge}.");
    line!("# Replaced as a whole in one transaction on every start.");
    line!("table ip {TABLE}");
    line!("delete table ip {TABLE}");
    line!("table ip {TABLE} {{");
    line!("\tchain prerouting {{");
    line!("\t\ttype nat hook prerouting priority dstnat; policy accept;");
    line!("\t\tiifname \"{bridge}\" return");
    if let Some(ports) = &excluded {
        line!("\t\tip daddr {pod} tcp dport {ports} return");
    }
    line!("\t\tip daddr {pod} dnat to {vm}");
    line!("\t}}");
    line!("\tchain output {{");
    // nft 1.0.6 (Debian 12) accepts the name `dstnat` only on prerouting; -100 is its value.
    line!("\t\ttype nat hook output priority -100; policy accept;");
    line!("\t\tmeta mark {LOCAL_MARK:#x} return");
    if let Some(ports) = &excluded {
        line!("\t\tip daddr {{ {pod}, 127.0.0.1 }} tcp dport {ports} return");
    }
    line!("\t\tip daddr {pod} dnat to {vm}");
    line!("\t\tip daddr 127.0.0.1 meta l4proto tcp dnat to {vm}");
    line!("\t}}");
    line!("\tchain postrouting {{");
    line!("\t\ttype nat hook postrouting priority srcnat; policy accept;");
    line!(
        "\t\toifname \"{bridge}\" ip saddr {{ 127.0.0.0/8, {pod} }} snat to {}",
        plan.slash30.gw()
    );
    line!(
        "\t\toifname \"{uplink}\" ip saddr {} snat to {pod}",
        plan.vm_net()
    );
    line!("\t}}");
    line!("\tchain forward {{");
    line!("\t\ttype filter hook forward priority mangle; policy accept;");
    line!("\t\ttcp flags syn tcp option maxseg size set rt mtu");
    line!("\t}}");
    line!("\tcounter {SPOOFED_COUNTER} {{");
    line!("\t}}");
    line!("\tchain antispoof {{");
    line!("\t\ttype filter hook prerouting priority raw; policy accept;");
    line!("\t\tiifname != \"{bridge}\" return");
    line!("\t\tmeta mark {LOCAL_MARK:#x} return");
    line!("\t\tip saddr {{ {vm}, 0.0.0.0 }} return");
    line!("\t\tlimit rate 1/minute burst 1 packets log group {SPOOFED_LOG_GROUP}");
    line!("\t\tcounter name \"{SPOOFED_COUNTER}\" drop");
    line!("\t}}");
    line!("}}");
    ruleset6(plan, excluded.as_deref(), &mut out);
    out
}

// --- issue 23: the ip6 table, in the same transaction ---
/// NDP, RS/RA and MLD addressed to the pod's own IPv6 stay with the pod: its neighbours'
/// reachability probes must be answered by the pod, not by the VM.
const NDP: &str = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, \
     nd-neighbor-advert, nd-redirect, mld-listener-query, mld-listener-report, \
     mld2-listener-report";

/// `table ip6 kvm_manager`: the same NAT as the ip table for the VM's IPv6. Without IPv6 the
/// table is only deleted, so turning `IPV6=off` leaves no ip6 table behind.
fn ruleset6(plan: &NetPlan, excluded: Option<&str>, out: &mut String) {
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(out, $($arg)*); };
    }
    line!("table ip6 {TABLE}");
    line!("delete table ip6 {TABLE}");
    let Some(v6) = &plan.ipv6 else {
        return;
    };
    let (pod, vm, bridge, uplink) = (v6.pod_ip, v6.vm, &plan.bridge, &v6.uplink);
    line!("table ip6 {TABLE} {{");
    line!("\tchain prerouting {{");
    line!("\t\ttype nat hook prerouting priority dstnat; policy accept;");
    line!("\t\tiifname \"{bridge}\" return");
    line!("\t\ticmpv6 type {{ {NDP} }} return");
    if let Some(ports) = excluded {
        line!("\t\tip6 daddr {pod} tcp dport {ports} return");
    }
    line!("\t\tip6 daddr {pod} dnat to {vm}");
    line!("\t}}");
    line!("\tchain output {{");
    line!("\t\ttype nat hook output priority -100; policy accept;");
    line!("\t\tmeta mark {LOCAL_MARK:#x} return");
    line!("\t\ticmpv6 type {{ {NDP} }} return");
    if let Some(ports) = excluded {
        line!("\t\tip6 daddr {pod} tcp dport {ports} return");
    }
    // No `::1` twin of the 127.0.0.1 port-forward: IPv6 has no route_localnet, and the
    // kernel never sends a loopback source out of `lo` (seen: a DNAT'ed [::1] connection
    // hangs), so [::1] is left to fail fast; port-forwards use 127.0.0.1.
    line!("\t\tip6 daddr {pod} dnat to {vm}");
    line!("\t}}");
    line!("\tchain postrouting {{");
    line!("\t\ttype nat hook postrouting priority srcnat; policy accept;");
    line!("\t\toifname \"{bridge}\" ip6 saddr {pod} snat to {}", v6.gw);
    line!(
        "\t\toifname \"{uplink}\" ip6 saddr {} snat to {pod}",
        v6.net
    );
    line!("\t}}");
    line!("\tchain forward {{");
    line!("\t\ttype filter hook forward priority mangle; policy accept;");
    line!("\t\ttcp flags syn tcp option maxseg size set rt mtu");
    line!("\t}}");
    line!("\tcounter {SPOOFED_COUNTER} {{");
    line!("\t}}");
    // The VM may use any address of its /64 (SLAAC, privacy addresses), link-local ones on
    // the bridge, and :: while it probes for duplicates.
    line!("\tchain antispoof {{");
    line!("\t\ttype filter hook prerouting priority raw; policy accept;");
    line!("\t\tiifname != \"{bridge}\" return");
    line!("\t\tmeta mark {LOCAL_MARK:#x} return");
    line!("\t\tip6 saddr {{ {}, fe80::/10, :: }} return", v6.net);
    line!("\t\tlimit rate 1/minute burst 1 packets log group {SPOOFED_LOG_GROUP}");
    line!("\t\tcounter name \"{SPOOFED_COUNTER}\" drop");
    line!("\t}}");
    line!("}}");
}
// --- end issue 23 ---

/// `ruleset` with its `delete table` turned into `flush table`: the same rules end up in the
/// table, but existing chains are kept (so their hook and priority must not have changed).
pub(crate) fn flushing(ruleset: &str) -> String {
    let text = ruleset.replacen(
        &format!("delete table ip {TABLE}"),
        &format!("flush table ip {TABLE}"),
        1,
    );
    // Only an ip6 table that is declared again is flushed; one that is going away is deleted.
    if text.contains(&format!("table ip6 {TABLE} {{")) {
        text.replacen(
            &format!("delete table ip6 {TABLE}"),
            &format!("flush table ip6 {TABLE}"),
            1,
        )
    } else {
        text
    }
}

/// `ruleset` without the rule that notifies nflog, for a kernel without `nfnetlink_log` (where
/// `nft` refuses a `log group` rule): everything else, the drop and its counter included, stays.
pub(crate) fn without_spoof_log(ruleset: &str) -> String {
    let rule = format!(" log group {SPOOFED_LOG_GROUP}\n");
    let mut out = String::with_capacity(ruleset.len());
    for line in ruleset.split_inclusive('\n') {
        if !line.ends_with(&rule) {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flushing_variant_flushes_an_ip6_table_only_when_it_is_declared_again() {
        let on = "table ip kvm_manager\ndelete table ip kvm_manager\ntable ip6 kvm_manager\n\
                  delete table ip6 kvm_manager\ntable ip6 kvm_manager {\n}\n";
        assert!(flushing(on).contains("flush table ip6 kvm_manager\n"));
        let off = "table ip kvm_manager\ndelete table ip kvm_manager\ntable ip6 kvm_manager\n\
                   delete table ip6 kvm_manager\n";
        assert!(flushing(off).contains("delete table ip6 kvm_manager\n"));
    }

    #[test]
    fn the_flushing_variant_only_swaps_the_delete() {
        let full = "table ip kvm_manager\ndelete table ip kvm_manager\ntable ip kvm_manager {\n}\n";
        assert_eq!(
            flushing(full),
            "table ip kvm_manager\nflush table ip kvm_manager\ntable ip kvm_manager {\n}\n"
        );
    }
}
