//! Real DHCP clients (busybox udhcpc, ISC dhclient, dhcpcd) against `kvm-manager network` in a
//! simulated pod, asserting what each client applied: address, default route, resolv.conf, MTU and
//! the hostname option.

use std::time::Duration;

use crate::support::require_root;
use crate::vmnet::{describe, VmNet, HOSTNAME, MTU, VM_GW, VM_IP};

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
    if !require_root("udhcpc_gets_the_lease_with_every_option_and_renews_it") {
        return;
    }
    let mut net = VmNet::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("script");
    std::fs::write(&script, UDHCPC_SCRIPT).expect("write script");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .expect("chmod");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    let out = net.in_vm(
        net.vm_ns(),
        &resolv,
        r#"busybox udhcpc -f -i eth0 -s "$SCRIPT" -O mtu -O search -O hostname -t 5 -T 2 &
pid=$!
for i in $(seq 100); do [ -f "$STATE/bound" ] && break; sleep 0.1; done
kill -USR1 $pid
for i in $(seq 100); do [ -f "$STATE/renew" ] && break; sleep 0.1; done
kill $pid
test -f "$STATE/renew""#,
        &[
            ("SCRIPT", script.to_str().expect("utf-8 path")),
            ("STATE", dir.path().to_str().expect("utf-8 path")),
        ],
    );
    assert!(
        out.status.success(),
        "udhcpc did not bind and renew:\n{}",
        describe(&out)
    );
    let resolv_conf = std::fs::read_to_string(&resolv).expect("read resolv.conf");
    assert_applied(&net, &resolv_conf, "udhcpc", MtuOn::Link);
    let bound = std::fs::read_to_string(dir.path().join("bound")).expect("bound env");
    assert!(
        bound.contains(&format!("hostname={HOSTNAME}")),
        "hostname option:\n{bound}"
    );
    assert!(
        bound.contains("domain=default.svc.cluster.local"),
        "domain option:\n{bound}"
    );
    let renew = std::fs::read_to_string(dir.path().join("renew")).expect("renew env");
    assert!(renew.contains(&format!("ip={VM_IP}")), "renewal:\n{renew}");
    net.server
        .wait_for_line("the VM took its DHCP lease", Duration::from_secs(5));
    net.server
        .wait_for_line("DHCP lease renewed", Duration::from_secs(5));
}

#[test]
fn dhclient_gets_the_lease_and_gets_it_again_after_a_restart() {
    if !require_root("dhclient_gets_the_lease_and_gets_it_again_after_a_restart") {
        return;
    }
    let mut net = VmNet::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    // The second run starts from the saved lease: INIT-REBOOT (REQUEST with the old address).
    let out = net.in_vm(
        net.vm_ns(),
        &resolv,
        r#"dhclient -4 -1 -v -lf "$STATE/leases" -pf "$STATE/pid" eth0
dhclient -4 -x -pf "$STATE/pid" eth0 || true
dhclient -4 -1 -v -lf "$STATE/leases" -pf "$STATE/pid" eth0
dhclient -4 -x -pf "$STATE/pid" eth0 || true"#,
        &[("STATE", dir.path().to_str().expect("utf-8 path"))],
    );
    assert!(out.status.success(), "dhclient failed:\n{}", describe(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("DHCPREQUEST for 192.168.254.2"),
        "no second request:\n{log}"
    );
    // dhclient -x removed the address; its lease file and resolv.conf record what it applied.
    let leases = std::fs::read_to_string(dir.path().join("leases")).expect("lease file");
    assert!(
        leases.contains(&format!("option host-name \"{HOSTNAME}\"")),
        "hostname option:\n{leases}"
    );
    assert!(
        leases.contains(&format!("option interface-mtu {MTU}")),
        "mtu option:\n{leases}"
    );
    assert!(
        leases.contains("option domain-search \"default.svc.cluster.local.\""),
        "search option:\n{leases}"
    );
    let resolv_conf = std::fs::read_to_string(&resolv).expect("read resolv.conf");
    assert!(
        resolv_conf.contains(&format!("nameserver {VM_GW}")),
        "resolv.conf:\n{resolv_conf}"
    );
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
    if !require_root("dhclient_applies_address_route_and_mtu") {
        return;
    }
    let net = VmNet::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    let out = net.in_vm(
        net.vm_ns(),
        &resolv,
        r#"dhclient -4 -1 -lf "$STATE/leases" -pf "$STATE/pid" eth0"#,
        &[("STATE", dir.path().to_str().expect("utf-8 path"))],
    );
    assert!(out.status.success(), "dhclient failed:\n{}", describe(&out));
    let resolv_conf = std::fs::read_to_string(&resolv).expect("read resolv.conf");
    assert_applied(&net, &resolv_conf, "dhclient", MtuOn::Link);
}

#[test]
fn dhcpcd_gets_the_lease_and_sets_the_hostname() {
    if !require_root("dhcpcd_gets_the_lease_and_sets_the_hostname") {
        return;
    }
    let net = VmNet::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    let out = net.in_vm(
        net.vm_ns(),
        &resolv,
        r#"dhcpcd --ipv4only --oneshot --noarp --timeout 20 eth0
hostname"#,
        &[],
    );
    assert!(out.status.success(), "dhcpcd failed:\n{}", describe(&out));
    let resolv_conf = std::fs::read_to_string(&resolv).expect("read resolv.conf");
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
    if !require_root("a_client_with_another_mac_gets_no_lease") {
        return;
    }
    let mut net = VmNet::start();
    let stranger = net.add_vm("x", "52:54:00:00:00:99");
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    let out = net.in_vm(
        &stranger,
        &resolv,
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
    if !require_root("udhcpc_asking_for_broadcast_replies_gets_the_lease") {
        return;
    }
    let net = VmNet::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    // -B sets the BROADCAST flag: RFC 2131 §4.1 sends the OFFER and ACK to 255.255.255.255.
    let out = net.in_vm(
        net.vm_ns(),
        &resolv,
        "exec busybox udhcpc -B -n -q -f -i eth0 -t 3 -T 1 -s /bin/true",
        &[],
    );
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
