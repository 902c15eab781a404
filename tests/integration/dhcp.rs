//! Real DHCP clients (busybox udhcpc, ISC dhclient, dhcpcd) against `kvm-manager network` in a
//! simulated pod, asserting what each client applied: address, default route, resolv.conf, MTU and
//! the hostname option.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::vmnet::{describe, started, VmNet, HOSTNAME, MTU, VM_GW, VM_IP, VM_MAC};

/// One client run's own directory: `$STATE` for its files, and the resolv.conf it writes.
struct Scratch {
    dir: tempfile::TempDir,
    resolv: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "").expect("resolv.conf");
        Self { dir, resolv }
    }

    /// Runs `script` in `vm_ns` with this resolv.conf and `$STATE` set to this directory.
    fn run(&self, net: &VmNet, vm_ns: &str, script: &str, env: &[(&str, &str)]) -> Output {
        let state = self.dir.path().to_str().expect("utf-8 path");
        let env: Vec<(&str, &str)> = [("STATE", state)]
            .into_iter()
            .chain(env.iter().copied())
            .collect();
        net.in_vm(vm_ns, &self.resolv, script, &env)
    }

    /// Runs `script` in the VM's namespace with nothing but `$STATE` added.
    fn in_vm(&self, net: &VmNet, script: &str) -> Output {
        self.run(net, net.vm_ns(), script, &[])
    }

    /// A file the client wrote here (its resolv.conf, lease file or recorded events).
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}"))
    }
}

/// Starts the pod (see `started`) and runs `script` in the VM's namespace in a fresh `Scratch`.
fn client_in_vm(test: &str, script: &str) -> Option<(VmNet, Scratch, Output)> {
    let net = started(test)?;
    let scratch = Scratch::new();
    let out = scratch.in_vm(&net, script);
    Some((net, scratch, out))
}

const SEARCH: &str = "search default.svc.cluster.local svc.cluster.local cluster.local";

/// The `search` line with trailing dots removed (dhclient writes absolute names).
fn search_line(resolv_conf: &str) -> String {
    resolv_conf
        .lines()
        .find(|l| l.starts_with("search "))
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_end_matches('.'))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// How a client applies option 26: on the link (udhcpc, dhclient) or, since dhcpcd 9, on the
/// routes it adds.
#[derive(PartialEq)]
enum MtuOn {
    Link,
    Routes,
}

/// What every client must have applied in the VM namespace.
fn assert_applied(net: &VmNet, resolv_conf: &str, client: &str, mtu_on: MtuOn) {
    let vm = net.vm_ns();
    let addr = net.ip(vm, &["-4", "addr", "show", "dev", "eth0"]);
    assert!(
        addr.contains(&format!("inet {VM_IP}/30")),
        "{client}: address not applied:\n{addr}"
    );
    let route = net.ip(vm, &["-4", "route", "show", "default"]);
    assert!(
        route.contains(&format!("default via {VM_GW}")),
        "{client}: no default route:\n{route}"
    );
    let applied = match mtu_on {
        MtuOn::Link => &addr,
        MtuOn::Routes => &route,
    };
    assert!(
        applied.contains(&format!("mtu {MTU}")),
        "{client}: MTU not applied:\n{addr}\n{route}"
    );
    assert!(
        resolv_conf.contains(&format!("nameserver {VM_GW}")),
        "{client}: resolv.conf:\n{resolv_conf}"
    );
    assert_eq!(
        search_line(resolv_conf),
        SEARCH,
        "{client}: search list:\n{resolv_conf}"
    );
}

/// Asserts that `text`, which `what` names, contains `needle`.
fn assert_contains(text: &str, needle: &str, what: &str) {
    assert!(text.contains(needle), "{what}:\n{text}");
}

/// The udhcpc script: records each event's environment, applies the lease like Debian's
/// default.script would (Debian ships it in a separate package).
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
env > "$STATE/$1"
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" broadcast "$broadcast" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip route replace default via "$router" dev "$interface"
    { echo "search $search"; for s in $dns; do echo "nameserver $s"; done; } > /etc/resolv.conf
    ;;
esac
"#;

#[test]
fn udhcpc_gets_the_lease_with_every_option_and_renews_it() {
    let Some(mut net) = started("udhcpc_gets_the_lease_with_every_option_and_renews_it") else {
        return;
    };
    let scratch = Scratch::new();
    let script = scratch.dir.path().join("script");
    std::fs::write(&script, UDHCPC_SCRIPT).expect("write script");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    let out = scratch.run(
        &net,
        net.vm_ns(),
        r#"busybox udhcpc -f -i eth0 -s "$SCRIPT" -O mtu -O search -O hostname -t 5 -T 2 &
pid=$!
for i in $(seq 100); do [ -f "$STATE/bound" ] && break; sleep 0.1; done
kill -USR1 $pid
for i in $(seq 100); do [ -f "$STATE/renew" ] && break; sleep 0.1; done
kill $pid
test -f "$STATE/renew""#,
        &[("SCRIPT", script.to_str().expect("utf-8 path"))],
    );
    assert!(
        out.status.success(),
        "udhcpc did not bind and renew:\n{}",
        describe(&out)
    );
    let resolv_conf = scratch.read("resolv.conf");
    assert_applied(&net, &resolv_conf, "udhcpc", MtuOn::Link);
    let bound = scratch.read("bound");
    assert_contains(&bound, &format!("hostname={HOSTNAME}"), "hostname option");
    assert_contains(&bound, "domain=default.svc.cluster.local", "domain option");
    let renew = scratch.read("renew");
    assert!(renew.contains(&format!("ip={VM_IP}")), "renewal:\n{renew}");
    net.server
        .wait_for_line("the VM took its DHCP lease", Duration::from_secs(5));
    net.server
        .wait_for_line("DHCP lease renewed", Duration::from_secs(5));
}

#[test]
fn dhclient_gets_the_lease_and_gets_it_again_after_a_restart() {
    let Some(mut net) = started("dhclient_gets_the_lease_and_gets_it_again_after_a_restart") else {
        return;
    };
    let scratch = Scratch::new();
    // The second run starts from the saved lease: INIT-REBOOT (REQUEST with the old address).
    let out = scratch.in_vm(
        &net,
        r#"dhclient -4 -1 -v -lf "$STATE/leases" -pf "$STATE/pid" eth0
dhclient -4 -x -pf "$STATE/pid" eth0 || true
dhclient -4 -1 -v -lf "$STATE/leases" -pf "$STATE/pid" eth0
dhclient -4 -x -pf "$STATE/pid" eth0 || true"#,
    );
    assert!(out.status.success(), "dhclient failed:\n{}", describe(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert_contains(&log, "DHCPREQUEST for 192.168.254.2", "no second request");
    // dhclient -x removed the address; its lease file and resolv.conf record what it applied.
    let leases = scratch.read("leases");
    assert_contains(
        &leases,
        &format!("option host-name \"{HOSTNAME}\""),
        "hostname option",
    );
    assert_contains(
        &leases,
        &format!("option interface-mtu {MTU}"),
        "mtu option",
    );
    assert_contains(
        &leases,
        "option domain-search \"default.svc.cluster.local.\"",
        "search option",
    );
    let resolv_conf = scratch.read("resolv.conf");
    assert_contains(&resolv_conf, &format!("nameserver {VM_GW}"), "resolv.conf");
    assert_eq!(
        search_line(&resolv_conf),
        SEARCH,
        "search list:\n{resolv_conf}"
    );
    assert_eq!(log.matches("DHCPACK").count(), 2, "{log}");
    net.server
        .wait_for_line("the VM took its DHCP lease", Duration::from_secs(5));
}

#[test]
fn dhclient_applies_address_route_and_mtu() {
    let Some((net, scratch, out)) = client_in_vm(
        "dhclient_applies_address_route_and_mtu",
        r#"dhclient -4 -1 -lf "$STATE/leases" -pf "$STATE/pid" eth0"#,
    ) else {
        return;
    };
    assert!(out.status.success(), "dhclient failed:\n{}", describe(&out));
    let resolv_conf = scratch.read("resolv.conf");
    assert_applied(&net, &resolv_conf, "dhclient", MtuOn::Link);
}

#[test]
fn dhcpcd_gets_the_lease_and_sets_the_hostname() {
    let Some((net, scratch, out)) = client_in_vm(
        "dhcpcd_gets_the_lease_and_sets_the_hostname",
        r#"dhcpcd --ipv4only --oneshot --noarp --timeout 20 eth0
hostname"#,
    ) else {
        return;
    };
    assert!(out.status.success(), "dhcpcd failed:\n{}", describe(&out));
    let resolv_conf = scratch.read("resolv.conf");
    assert_applied(&net, &resolv_conf, "dhcpcd", MtuOn::Routes);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // dhcpcd's hostname hook joins option 12 and option 15 into an FQDN.
    let fqdn = format!("{HOSTNAME}.default.svc.cluster.local");
    assert_eq!(
        stdout.lines().last(),
        Some(fqdn.as_str()),
        "hostname not applied:\n{}",
        describe(&out)
    );
}

#[test]
fn a_client_with_another_mac_gets_no_lease() {
    let Some(mut net) = started("a_client_with_another_mac_gets_no_lease") else {
        return;
    };
    let stranger = net.add_vm("x", "52:54:00:00:00:99");
    let scratch = Scratch::new();
    let out = scratch.run(
        &net,
        &stranger,
        "exec busybox udhcpc -n -q -f -i eth0 -t 2 -T 1 -s /bin/true",
        &[],
    );
    assert!(
        !out.status.success(),
        "a foreign MAC got a lease:\n{}",
        describe(&out)
    );
    let addr = net.ip(&stranger, &["-4", "addr", "show", "dev", "eth0"]);
    assert!(!addr.contains("inet "), "{addr}");
    net.server
        .wait_for_line("52:54:00:00:00:99", Duration::from_secs(5));
}

#[test]
fn udhcpc_asking_for_broadcast_replies_gets_the_lease() {
    // -B sets the BROADCAST flag: RFC 2131 §4.1 sends the OFFER and ACK to 255.255.255.255.
    let Some((_net, _scratch, out)) = client_in_vm(
        "udhcpc_asking_for_broadcast_replies_gets_the_lease",
        "exec busybox udhcpc -B -n -q -f -i eth0 -t 3 -T 1 -s /bin/true",
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "no lease with broadcast replies:\n{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("lease of {VM_IP} obtained")),
        "{}",
        describe(&out)
    );
}

/// Sends `count` valid DHCPDISCOVERs from `mac` out of `eth0` as a client without an address
/// does (a raw frame from 0.0.0.0:68 to the broadcast address), one every half millisecond.
const DISCOVERS: &str = r#"
import socket, struct, sys, time, random
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
count = int(sys.argv[2])
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(count):
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, random.getrandbits(32), 0, 0,
                        bytes(4), bytes(4), bytes(4), bytes(4), mac, bytes(64), bytes(128))
    bootp += bytes([99, 130, 83, 99, 53, 1, 1, 255])
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    s.send(b"\xff" * 6 + mac + b"\x08\x00" + ip + udp)
    time.sleep(0.0005)
"#;

#[test]
fn a_flood_of_valid_discovers_logs_a_few_lines_and_the_count_left_out() {
    let Some(mut net) =
        started("a_flood_of_valid_discovers_logs_a_few_lines_and_the_count_left_out")
    else {
        return;
    };
    let scratch = Scratch::new();
    let flood = |count: &str| {
        let out = scratch.run(
            &net,
            net.vm_ns(),
            r#"exec python3 -c "$FLOOD" "$MAC" "$COUNT""#,
            &[("FLOOD", DISCOVERS), ("MAC", VM_MAC), ("COUNT", count)],
        );
        assert!(out.status.success(), "flood: {}", describe(&out));
    };
    flood("2000");
    // The next line after the window (10 s) says how many offers went unlogged.
    std::thread::sleep(Duration::from_secs(11));
    flood("1");
    let line = net
        .server
        .wait_for_line("suppressed=", Duration::from_secs(30));
    assert!(line.contains("DHCP offer sent"), "{line}");
    let suppressed: u64 = line
        .split("suppressed=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(
        suppressed >= 500,
        "the flood did not reach the server: {line}"
    );
    let offers = net
        .server
        .seen
        .iter()
        .filter(|l| l.contains("DHCP offer sent"))
        .count();
    assert!(
        offers <= 20,
        "{offers} offer lines for 2001 offers:\n{}",
        net.server.output()
    );
}

/// Our nft table's rules as `nft -j` lists them, without handles.
fn rules(net: &VmNet) -> Vec<String> {
    let out = net
        .pod
        .exec("nft")
        .args(["-j", "list", "table", "ip", "kvm_manager"])
        .output()
        .expect("nft");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft -j output");
    json["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|rule| {
            let mut rule = rule.clone();
            if let Some(map) = rule.as_object_mut() {
                map.remove("handle");
            }
            rule.to_string()
        })
        .collect()
}

#[test]
fn a_restart_of_network_in_the_same_pod_converges_with_the_same_lease_and_no_duplicate_rule() {
    let Some(mut net) = started(
        "a_restart_of_network_in_the_same_pod_converges_with_the_same_lease_and_no_duplicate_rule",
    ) else {
        return;
    };
    let scratch = Scratch::new();
    let lease = |net: &VmNet| {
        let out = scratch.in_vm(
            net,
            "exec busybox udhcpc -n -q -f -i eth0 -t 5 -T 2 -s /bin/true",
        );
        assert!(out.status.success(), "no lease: {}", describe(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(lease(&net).contains(&format!("lease of {VM_IP} obtained")));
    let before = rules(&net);
    let mut unique = before.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        before.len(),
        "a rule is duplicated: {before:#?}"
    );
    for round in 1..=2 {
        net.restart();
        assert_eq!(rules(&net), before, "round {round} changed the rules");
        let out = lease(&net);
        assert!(
            out.contains(&format!("lease of {VM_IP} obtained")),
            "round {round}: {out}"
        );
        net.server
            .wait_for_line("the VM took its DHCP lease", Duration::from_secs(10));
    }
}
