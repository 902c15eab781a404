//! `kvm-manager network` in network namespaces: a "node" linked by veth to a "pod" (pod IP on
//! eth0, MTU 1450 like an overlay CNI, default route via the node), and a "VM" namespace
//! plugged into our bridge by a veth that carries VM_MAC/VM_IP in place of qemu's tap.

pub(crate) mod topology;

use std::path::Path;

use crate::support::{require_root, BIN};
use topology::{add_address, must, Daemon, Topology, NODE_IP, POD_IP, T, VM_IP};

#[test]
fn tcp_udp_and_icmp_to_the_pod_ip_reach_the_vm_and_vnc_stays_in_the_pod() {
    let Some(topo) = Topology::for_test("fwd") else {
        return;
    };
    let daemon = topo.up(&[]);
    for needle in [
        "bridge:     kvmbr0 192.168.254.1/30",
        "exclusions: tcp 5900 (VNC), tcp 8080 (HTTP)",
        "table ip kvm_manager {",
    ] {
        assert!(
            daemon.0.output().contains(needle),
            "{needle:?} not printed:\n{}",
            daemon.0.output()
        );
    }

    for proto in ["tcp", "udp"] {
        let mut server = topo.serve(&topo.vm, proto, "0.0.0.0", 2222);
        let answer = topo.call(&topo.node, proto, POD_IP, 2222);
        assert_eq!(
            answer.as_deref(),
            Some(&*format!("saw {NODE_IP}")),
            "{proto}"
        );
        server.0.wait_for_line(&format!("peer {NODE_IP}"), T);
    }

    // The pod itself ignores echo requests, so an answer can only come from the VM.
    topo.sysctl("net.ipv4.icmp_echo_ignore_all=1");
    let ping = topo.exec(
        &topo.node,
        &["busybox", "ping", "-c", "1", "-W", "5", POD_IP],
    );
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // VNC (5900) belongs to the pod: nothing listens there in the pod, so it is refused.
    let vnc = topo.serve(&topo.vm, "tcp", "0.0.0.0", 5900);
    assert_eq!(topo.call(&topo.node, "tcp", POD_IP, 5900), None);
    drop(vnc);

    // The VM's traffic leaves the pod with the pod IP as its source.
    let mut node = topo.serve(&topo.node, "tcp", NODE_IP, 3333);
    let answer = topo.call(&topo.vm, "tcp", NODE_IP, 3333);
    assert_eq!(answer.as_deref(), Some(&*format!("saw {POD_IP}")));
    node.0.wait_for_line(&format!("peer {POD_IP}"), T);

    // The VM reaches the pod's own services on the pod IP (it is not sent back to itself).
    let mut pod_service = topo.serve(&topo.pod, "tcp", POD_IP, 4444);
    let answer = topo.call(&topo.vm, "tcp", POD_IP, 4444);
    assert_eq!(answer.as_deref(), Some(&*format!("saw {VM_IP}")));
    pod_service.0.wait_for_line(&format!("peer {VM_IP}"), T);

    // kubectl port-forward connects to 127.0.0.1:<port> inside the pod netns.
    let _server = topo.serve(&topo.vm, "tcp", "0.0.0.0", 2222);
    let answer = topo.call(&topo.pod, "tcp", "127.0.0.1", 2222);
    assert!(
        answer.is_some_and(|a| a.starts_with("saw ")),
        "port-forward to 127.0.0.1"
    );
    let _server = topo.serve(&topo.vm, "tcp", "0.0.0.0", 2223);
    assert!(
        topo.call(&topo.pod, "tcp", POD_IP, 2223).is_some(),
        "pod to its own IP"
    );

    let links = must(&["ip", "-n", &topo.pod, "-d", "link", "show", "kvmtap0"]);
    assert!(
        links.contains("mtu 1450") && links.contains("master kvmbr0"),
        "{links}"
    );
    assert!(
        links.contains("vnet_hdr on") && links.contains("persist on"),
        "{links}"
    );
    let bridge = must(&["ip", "-n", &topo.pod, "link", "show", "kvmbr0"]);
    assert!(bridge.contains("mtu 1450"), "{bridge}");
    let forward = topo.exec(&topo.pod, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "1");
}

#[test]
fn no_vnc_forwards_tcp_5900_to_the_vm() {
    let Some(topo) = Topology::for_test("novnc") else {
        return;
    };
    let _daemon = topo.up(&[("NO_VNC", "1"), ("HTTP_PORT", "0")]);
    let mut server = topo.serve(&topo.vm, "tcp", "0.0.0.0", 5900);
    let answer = topo.call(&topo.node, "tcp", POD_IP, 5900);
    assert_eq!(answer.as_deref(), Some(&*format!("saw {NODE_IP}")));
    server.0.wait_for_line("peer", T);
}

/// `ip -j link` and `ip -j addr` without counters, and our table without object handles.
fn snapshot(topo: &Topology) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&must(args)).expect("JSON from ip/nft")
    };
    let mut links = json(&["ip", "-n", &topo.pod, "-j", "-d", "link"]);
    // Counters and the bridge's running timers are not state.
    strip(&mut links, &|key| {
        key.starts_with("stats") || key.ends_with("_timer")
    });
    let mut addrs = json(&["ip", "-n", &topo.pod, "-j", "addr"]);
    // IPv6 link-local addresses go through DAD (tentative, then not) on their own schedule.
    for link in addrs.as_array_mut().expect("ip -j addr").iter_mut() {
        if let Some(serde_json::Value::Array(infos)) = link.get_mut("addr_info") {
            infos.retain(|info| info["family"] == "inet");
        }
    }
    let mut table = json(&[
        "ip",
        "netns",
        "exec",
        &topo.pod,
        "nft",
        "-j",
        "list",
        "table",
        "ip",
        "kvm_manager",
    ]);
    // The table is recreated on every start, so its handle (a counter) moves on; what the
    // counters counted is not state either.
    strip(&mut table, &|key| {
        key == "handle" || key == "packets" || key == "bytes"
    });
    (links, addrs, table)
}

/// Removes every object key for which `noise` is true, at any depth.
fn strip(value: &mut serde_json::Value, noise: &dyn Fn(&str) -> bool) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|key, _| !noise(key));
            map.values_mut().for_each(|v| strip(v, noise));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| strip(v, noise)),
        _ => {}
    }
}

#[test]
fn restarts_after_sigkill_leave_links_addresses_and_rules_identical() {
    let Some(topo) = Topology::for_test("restart") else {
        return;
    };
    let first = topo.up(&[]);
    drop(first);
    let reference = snapshot(&topo);
    let rules = reference.2["nftables"]
        .as_array()
        .expect("nft -j list")
        .iter()
        .filter(|o| o.get("rule").is_some())
        .map(ToString::to_string)
        .collect::<Vec<_>>();
    let mut unique = rules.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(rules.len(), 15, "{rules:#?}");
    assert_eq!(unique.len(), rules.len(), "a rule is duplicated");
    for round in 1..=5 {
        let mut daemon = topo.network(&[], &[]);
        daemon.0.wait_for_line("network ready", T);
        drop(daemon);
        assert!(
            reference == snapshot(&topo),
            "round {round} changed the netns state"
        );
    }
    // Still working after the restarts.
    let mut daemon = topo.network(&[], &[]);
    daemon.0.wait_for_line("network ready", T);
    let _server = topo.serve(&topo.vm, "udp", "0.0.0.0", 2222);
    assert!(topo.call(&topo.node, "udp", POD_IP, 2222).is_some());
}

/// Runs the network phase expecting it to fail; returns its output.
fn fails(topo: &Topology, env: &[(&str, &str)], wrapper: &[&str]) -> String {
    let mut daemon = topo.network(env, wrapper);
    let status = daemon.0.wait(T);
    let output = daemon.0.output();
    assert_eq!(
        status.code(),
        Some(4),
        "exit code of a network error:\n{output}"
    );
    output
}

#[test]
fn missing_cap_net_admin_names_the_security_context_setting() {
    let Some(topo) = Topology::for_test("nocap") else {
        return;
    };
    let output = fails(
        &topo,
        &[],
        &[
            "capsh",
            "--drop=cap_net_admin",
            "--",
            "-c",
            "exec \"$0\" \"$@\"",
        ],
    );
    assert!(output.contains("lacks CAP_NET_ADMIN"), "{output}");
    assert!(
        output.contains("capabilities: {add: [NET_ADMIN]}"),
        "{output}"
    );
    topo.assert_nothing_created();
}

#[test]
fn missing_default_route_is_reported() {
    let Some(topo) = Topology::for_test("noroute") else {
        return;
    };
    must(&["ip", "-n", &topo.pod, "route", "del", "default"]);
    let output = fails(&topo, &[], &[]);
    assert!(output.contains("no IPv4 default route"), "{output}");
}

#[test]
fn vm_subnet_overlapping_the_pod_subnet_is_refused() {
    let Some(topo) = Topology::for_test("overlap") else {
        return;
    };
    let output = fails(
        &topo,
        &[("VM_IP", "10.99.0.6"), ("VM_GW", "10.99.0.5")],
        &[],
    );
    assert!(
        output.contains("10.99.0.4/30 overlaps the pod subnet 10.99.0.0/24"),
        "{output}"
    );
}

#[test]
fn missing_dev_net_tun_names_the_device_plugin_or_privileged() {
    if !require_root("missing_dev_net_tun_names_the_device_plugin_or_privileged") {
        return;
    }
    assert!(
        Path::new("/dev/net/tun").exists(),
        "this test hides an existing /dev/net/tun"
    );
    let topo = Topology::new("notun");
    let hide = "mount -t tmpfs none /dev/net && exec \"$0\" \"$@\"";
    let output = fails(&topo, &[], &["unshare", "--mount", "sh", "-c", hide]);
    assert!(output.contains("/dev/net/tun does not exist"), "{output}");
    assert!(output.contains("device plugin"), "{output}");
}

#[test]
fn missing_nft_binary_names_the_package_and_changes_nothing() {
    let Some(topo) = Topology::for_test("nonft") else {
        return;
    };
    let output = fails(&topo, &[], &["env", "PATH=/nonexistent"]);
    assert!(output.contains("`nft` binary was not found"), "{output}");
    topo.assert_nothing_created();
}

#[test]
fn a_wrong_bridge_and_tap_left_behind_are_corrected() {
    let Some(topo) = Topology::for_test("fix") else {
        return;
    };
    let pod = topo.pod.as_str();
    must(&[
        "ip", "-n", pod, "link", "add", "kvmbr0", "mtu", "1300", "type", "bridge",
    ]);
    add_address(pod, "10.77.0.1/24", "kvmbr0");
    must(&[
        "ip", "-n", pod, "link", "add", "kvmtap0", "type", "veth", "peer", "name", "stale",
    ]);
    let _daemon = topo.up(&[]);
    let bridge = must(&["ip", "-n", pod, "-4", "addr", "show", "kvmbr0"]);
    assert!(
        bridge.contains("mtu 1450") && bridge.contains("inet 192.168.254.1/30"),
        "{bridge}"
    );
    assert!(
        !bridge.contains("10.77.0.1"),
        "stale address kept: {bridge}"
    );
    let tap = must(&["ip", "-n", pod, "-d", "link", "show", "kvmtap0"]);
    assert!(
        tap.contains("tun type tap") && tap.contains("master kvmbr0"),
        "{tap}"
    );
    let _server = topo.serve(&topo.vm, "udp", "0.0.0.0", 2222);
    assert!(topo.call(&topo.node, "udp", POD_IP, 2222).is_some());
}

/// In the VM namespace: `count` UDP datagrams to `dst:port` from each forged source in
/// `sources` (comma-separated), through a raw socket that writes its own IP header.
const FORGE: &str = r#"
import socket, struct, sys
sources, dst, port, count = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for src in sources:
    udp = struct.pack("!HHHH", 40000, port, 8 + 6, 0) + b"forged"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    for _ in range(count):
        s.sendto(ip + udp, (dst, 0))
"#;

/// On the node: prints `from <ip>` for every datagram on `host:port` and answers `hi` with
/// `saw <ip>`.
const LISTEN: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(100)
    print("from", peer[0], flush=True)
    if data == b"hi":
        s.sendto(("saw " + peer[0]).encode(), peer)
"#;

#[test]
fn packets_from_the_vm_with_a_forged_source_are_dropped_and_counted_while_its_own_flow() {
    let Some(topo) = Topology::for_test("spoof") else {
        return;
    };
    let mut daemon = topo.up(&[]);
    // The drop rule wakes the watch over nflog (no polling while nothing is forged).
    let chain = must(&[
        "ip",
        "netns",
        "exec",
        &topo.pod,
        "nft",
        "list",
        "chain",
        "ip",
        "kvm_manager",
        "antispoof",
    ]);
    assert!(chain.contains("log group 19277"), "{chain}");
    forged_packets_are_dropped_counted_and_logged(&topo, &mut daemon);
    assert!(
        !daemon.0.seen.iter().any(|l| l.contains("nflog")),
        "the nflog wakeup was not used: {:?}",
        daemon.0.seen
    );
}

/// `nft` on a node whose kernel has no `nfnetlink_log`: it refuses any `log group` rule the way
/// the real one does there, and runs the real `nft` for everything else.
const NFT_WITHOUT_NFLOG: &str = r#"#!/bin/sh
input=$(cat)
case $input in
*"log group"*) echo "Error: Could not process rule: No such file or directory" >&2; exit 1 ;;
esac
printf '%s\n' "$input" | exec REAL_NFT "$@"
"#;

#[test]
fn without_nflog_on_the_node_forged_packets_are_still_dropped_counted_and_logged() {
    let Some(topo) = Topology::for_test("spoofpoll") else {
        return;
    };
    let bin = tempfile::tempdir().expect("a temp dir");
    let nft = bin.path().join("nft");
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
        .expect("nft on PATH");
    let script = NFT_WITHOUT_NFLOG.replace("REAL_NFT", &real.display().to_string());
    std::fs::write(&nft, script).expect("write the fake nft");
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut daemon = topo.up(&[("PATH", &path)]);
    let warning = daemon.0.wait_for_line("nft refused the nflog rule", T);
    assert!(warning.contains("nfnetlink_log"), "{warning}");
    let chain = must(&[
        "ip",
        "netns",
        "exec",
        &topo.pod,
        "nft",
        "list",
        "chain",
        "ip",
        "kvm_manager",
        "antispoof",
    ]);
    assert!(!chain.contains("log group"), "{chain}");
    forged_packets_are_dropped_counted_and_logged(&topo, &mut daemon);
}

/// The VM sends 3 × 20 packets with forged sources and then its own: the forged ones never
/// reach the node, the counter says 60, the log says so once; the VM's own flow is untouched.
fn forged_packets_are_dropped_counted_and_logged(topo: &Topology, daemon: &mut Daemon) {
    // The kernel's reverse-path filter is off in many pods: the drop must be ours.
    for conf in ["all", "default", "kvmbr0"] {
        topo.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter=0"));
    }
    let mut listener = {
        let mut command = std::process::Command::new("ip");
        command.args([
            "netns", "exec", &topo.node, "python3", "-c", LISTEN, NODE_IP, "2222",
        ]);
        Daemon(crate::support::Running::spawn(&mut command))
    };
    listener.0.wait_for_line("ready", T);

    // Another pod's address, the pod IP itself, and the VM's gateway: 3 × 20 packets.
    let forged = "10.99.0.77,10.99.0.2,192.168.254.1";
    let out = topo.exec(
        &topo.vm,
        &["python3", "-c", FORGE, forged, NODE_IP, "2222", "20"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The VM's own traffic still flows, after the forged packets on the same path.
    let answer = topo.call(&topo.vm, "udp", NODE_IP, 2222);
    assert_eq!(answer.as_deref(), Some(&*format!("saw {POD_IP}")));
    listener.0.wait_for_line(&format!("from {POD_IP}"), T);
    let leaked: Vec<&String> = listener
        .0
        .seen
        .iter()
        .filter(|l| l.starts_with("from ") && !l.ends_with(POD_IP))
        .collect();
    assert!(
        leaked.is_empty(),
        "forged packets reached the node: {leaked:?}"
    );

    let counter = must(&[
        "ip",
        "netns",
        "exec",
        &topo.pod,
        "nft",
        "list",
        "counter",
        "ip",
        "kvm_manager",
        "spoofed",
    ]);
    assert!(counter.contains("packets 60 "), "{counter}");
    // The operator learns it from the log, with the count.
    let line = daemon.0.wait_for_line("forged source", T);
    assert!(line.contains("dropped=60"), "{line}");
}

#[test]
fn http_port_on_the_dns_port_is_a_configuration_error_naming_the_variable() {
    if !require_root("http_port_on_the_dns_port_is_a_configuration_error_naming_the_variable") {
        return;
    }
    for (port, extra) in [("53", None), ("67", None), ("5900", Some(("NO_VNC", "")))] {
        // In an empty network namespace: were the port accepted, nothing real would change.
        let mut command = std::process::Command::new("unshare");
        command
            .args(["--net", BIN, "network"])
            .env("HTTP_PORT", port)
            .env_remove("NO_VNC");
        if let Some((var, value)) = extra {
            command.env(var, value);
        }
        let out = command.output().expect("run kvm-manager");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "HTTP_PORT={port}: {stderr}");
        assert!(
            stderr.contains(&format!("HTTP_PORT (--http-port) = \"{port}\"")),
            "{stderr}"
        );
        assert!(stderr.contains("Fix: choose another port"), "{stderr}");
    }
}
