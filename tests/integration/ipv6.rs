//! Issue 23: IPv6 dual-stack in NAT mode, shown with `kvm-manager network` in namespaces (a
//! dual-stack "pod", a "node", and a "VM" namespace on our bridge in place of qemu's tap).

use crate::network::topology::{Topology, NODE_IP6, POD_IP6, T, VM_MAC};

/// The VM namespace's kernel derives this from VM_MAC (EUI-64) in the default VM_GW6 /64;
/// it is also where the ip6 DNAT sends.
const VM_IP6: &str = "fd6b:766d::5054:ff:feaa:bbcc";

/// Gives the VM namespace its IPv6 by hand (what SLAAC from our RA does, once there is one).
fn static_vm_ip6(topo: &Topology) {
    topo.must_in(
        &topo.vm,
        &[
            "ip",
            "addr",
            "add",
            &format!("{VM_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    );
    topo.must_in(
        &topo.vm,
        &["ip", "-6", "route", "add", "default", "via", "fd6b:766d::1"],
    );
}

#[test]
fn ipv6_to_the_pod_reaches_the_vm_except_the_kept_ports_and_the_vm_leaves_as_the_pod() {
    let Some(topo) = Topology::dual_stack("v6fwd") else {
        return;
    };
    assert_eq!(VM_MAC, "52:54:00:aa:bb:cc");
    let daemon = topo.up(&[]);
    let printed = daemon.0.output();
    for needle in [
        &*format!("ipv6:       bridge fd6b:766d::1/64 vm {VM_IP6} pod {POD_IP6}/64 on eth0"),
        "table ip6 kvm_manager {",
    ] {
        assert!(printed.contains(needle), "{needle:?} not in:\n{printed}");
    }
    static_vm_ip6(&topo);

    for proto in ["tcp", "udp"] {
        let mut server = topo.serve(&topo.vm, proto, "::", 2222);
        let answer = topo.call(&topo.node, proto, POD_IP6, 2222);
        assert_eq!(
            answer.as_deref(),
            Some(&*format!("saw {NODE_IP6}")),
            "{proto}"
        );
        server.0.wait_for_line(&format!("peer {NODE_IP6}"), T);
    }

    // 5900 and HTTP_PORT belong to the pod: nothing listens there in the pod, so refused.
    for port in [5900, 8080] {
        let _vm = topo.serve(&topo.vm, "tcp", "::", port);
        assert_eq!(topo.call(&topo.node, "tcp", POD_IP6, port), None, "{port}");
    }

    // The VM's IPv6 traffic leaves with the pod's IPv6 as its source.
    let mut node = topo.serve(&topo.node, "tcp", NODE_IP6, 3333);
    let answer = topo.call(&topo.vm, "tcp", NODE_IP6, 3333);
    assert_eq!(answer.as_deref(), Some(&*format!("saw {POD_IP6}")));
    node.0.wait_for_line(&format!("peer {POD_IP6}"), T);

    // The pod reaches the VM on the pod's own IPv6 (what a sidecar would use).
    let _server = topo.serve(&topo.vm, "tcp", "::", 2224);
    let answer = topo.call(&topo.pod, "tcp", POD_IP6, 2224);
    assert!(
        answer.as_deref().is_some_and(|a| a.starts_with("saw ")),
        "pod to its own IPv6: {answer:?}"
    );

    let forwarding = topo.must_in(
        &topo.pod,
        &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"],
    );
    assert_eq!(forwarding.trim(), "1");
    let bridge = topo.must_in(&topo.pod, &["ip", "-6", "addr", "show", "kvmbr0"]);
    assert!(bridge.contains("inet6 fd6b:766d::1/64"), "{bridge}");
}

#[test]
fn an_ipv4_only_pod_does_nothing_ipv6_and_says_so_once() {
    let Some(topo) = Topology::for_test("v6none") else {
        return;
    };
    let daemon = topo.up(&[]);
    let out = daemon.0.output();
    assert_eq!(out.matches("the VM gets IPv4 only").count(), 1, "{out}");
    assert!(out.contains("the pod has no global IPv6 address"), "{out}");
    assert!(out.contains("ipv6:       none"), "{out}");
    let tables = topo.must_in(&topo.pod, &["nft", "list", "tables"]);
    assert!(!tables.contains("ip6 kvm_manager"), "{tables}");
    let bridge = topo.must_in(
        &topo.pod,
        &["ip", "-6", "addr", "show", "kvmbr0", "scope", "global"],
    );
    assert!(bridge.trim().is_empty(), "{bridge}");
}

#[test]
fn ipv6_off_on_a_dual_stack_pod_removes_what_auto_made() {
    let Some(topo) = Topology::dual_stack("v6off") else {
        return;
    };
    drop(topo.up(&[]));
    let tables = topo.must_in(&topo.pod, &["nft", "list", "tables"]);
    assert!(tables.contains("ip6 kvm_manager"), "{tables}");

    let daemon = topo.up(&[("IPV6", "off")]);
    let out = daemon.0.output();
    assert!(out.contains("IPV6=off"), "{out}");
    let tables = topo.must_in(&topo.pod, &["nft", "list", "tables"]);
    assert!(!tables.contains("ip6 kvm_manager"), "{tables}");
    let bridge = topo.must_in(
        &topo.pod,
        &["ip", "-6", "addr", "show", "kvmbr0", "scope", "global"],
    );
    assert!(bridge.trim().is_empty(), "{bridge}");
}
