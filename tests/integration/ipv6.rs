//! Issue 23: IPv6 dual-stack in NAT mode, shown with `kvm-manager network` in namespaces (a
//! dual-stack "pod", a "node", and a "VM" namespace on our bridge in place of qemu's tap).

use std::time::Duration;

use crate::network::topology::{Topology, NODE_IP6, POD_IP6, T, VM_MAC};

/// The VM namespace's kernel derives this from VM_MAC (EUI-64) in the default VM_GW6 /64;
/// it is also where the ip6 DNAT sends.
const VM_IP6: &str = "fd6b:766d::5054:ff:feaa:bbcc";

/// Waits until the VM namespace's kernel configured [`VM_IP6`] and a default route through
/// our bridge's link-local address from our router advertisements (SLAAC, no config).
fn wait_for_slaac(topo: &Topology) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let addr = topo.must_in(&topo.vm, &["ip", "-6", "addr", "show", "dev", "eth0"]);
        let route = topo.must_in(&topo.vm, &["ip", "-6", "route", "show", "default"]);
        if addr.contains(&format!("inet6 {VM_IP6}/64")) && route.contains("via fe80::") {
            return route;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SLAAC address or default route in the VM:\n{addr}\n{route}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A router solicitation from the VM's link-local address, after garbage: prints `unicast RA
/// mtu=<mtu> rdnss=<addr>` when a router advertisement comes back to that address.
const SOLICIT: &str = r#"
import socket, struct, sys, os
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
idx = socket.if_nametoindex("eth0")
for junk in [b"\x85", b"\x85\x01\0\0\0\0\0\0", b"\x85\0\0\0\0\0\0\0\x01\0", b"\x85\0\0\0\0\0\0\0\x01\x09abc", os.urandom(300), b"\x87" + os.urandom(40)]:
    try:
        s.sendto(junk, ("ff02::2", 0, 0, idx))
    except OSError as e:
        print("junk refused", e, flush=True)
s.sendto(b"\x85\0\0\0\0\0\0\0", ("ff02::2", 0, 0, idx))
s.settimeout(10)
while True:
    data, anc, _, peer = s.recvmsg(2000, 100)
    dst = None
    for level, kind, value in anc:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            dst = socket.inet_ntop(socket.AF_INET6, value[:16])
    if data[0] == 134 and dst and dst.startswith("fe80"):
        opts, mtu, rdnss = data[16:], None, None
        while opts:
            kind, length = opts[0], opts[1] * 8
            if kind == 5: mtu = struct.unpack("!I", opts[4:8])[0]
            if kind == 25: rdnss = socket.inet_ntop(socket.AF_INET6, opts[8:24])
            opts = opts[length:]
        print(f"unicast RA mtu={mtu} rdnss={rdnss}", flush=True)
        break
"#;

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
    let route = wait_for_slaac(&topo);
    assert!(route.contains("dev eth0"), "{route}");

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

#[test]
fn garbage_solicitations_are_survived_a_real_one_is_answered_and_nothing_reaches_the_uplink() {
    let Some(topo) = Topology::dual_stack("v6rs") else {
        return;
    };
    let mut daemon = topo.up(&[]);
    wait_for_slaac(&topo);
    let out = topo.must_in(&topo.vm, &["/usr/bin/python3", "-c", SOLICIT]);
    assert!(
        out.contains("unicast RA mtu=1450 rdnss=fd6b:766d::1"),
        "{out}"
    );
    assert!(
        daemon.0.child.try_wait().expect("poll").is_none(),
        "kvm-manager died"
    );
    // The node (the uplink's far end) never saw a router advertisement of ours.
    let snmp = topo.must_in(&topo.node, &["cat", "/proc/net/snmp6"]);
    let ras = snmp
        .lines()
        .find(|l| l.starts_with("Icmp6InRouterAdvertisements"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the counter");
    assert_eq!(ras, "0", "{snmp}");
    let routes = topo.must_in(&topo.pod, &["ip", "-6", "route", "show", "default"]);
    assert!(
        routes.contains("via fd99::1"),
        "the pod's own default route stays: {routes}"
    );
}

/// dnsmasq on the node's IPv6 only, answering `www.kvmtest.example` with 10.77.0.5.
fn cluster_dns6(pod: &crate::pod::Pod, address: &str) -> crate::support::Running {
    let mut command = pod.node("dnsmasq");
    command.args([
        "-k",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--port",
        "53",
        "--bind-interfaces",
        "--log-facility=-",
        "--address=/kvmtest.example/10.77.0.5",
    ]);
    command.arg(format!("--listen-address={address}"));
    let mut dnsmasq = crate::support::Running::spawn(&mut command);
    dnsmasq.wait_for_line("started", T);
    dnsmasq
}

#[test]
fn the_vm_resolves_a_cluster_name_over_ipv6_through_our_forwarder_relaying_to_an_ipv6_nameserver() {
    if !crate::support::require_root("ipv6 dns") {
        return;
    }
    let node6 = std::cell::RefCell::new(String::new());
    let net = crate::vmnet::VmNet::start_with(|pod| {
        let (node, _) = pod.add_ipv6();
        let text = format!("search default.svc.cluster.local\nnameserver {node}\n");
        *node6.borrow_mut() = node;
        Some(text)
    });
    let _dns = cluster_dns6(&net.pod, &node6.borrow());
    // The VM namespace configures itself from our RAs alone.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let vm_ip6 = "fd6b:766d::5054:ff:feab:cd01";
    loop {
        let out = std::process::Command::new("ip")
            .args(["-n", net.vm_ns(), "-6", "addr", "show", "dev", "eth0"])
            .output()
            .expect("ip addr");
        if String::from_utf8_lossy(&out.stdout).contains(vm_ip6) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SLAAC address in the VM"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for transport in ["+notcp", "+tcp"] {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                net.vm_ns(),
                "dig",
                "@fd6b:766d::1",
                "+time=6",
                "+tries=1",
            ])
            .args([transport, "+short", "www.kvmtest.example"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("dig");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "10.77.0.5",
            "{transport}: {}",
            crate::vmnet::describe(&out)
        );
    }
}

#[test]
fn a_real_dhcpv6_client_gets_the_vms_address_and_our_dns_server() {
    let Some(topo) = Topology::dual_stack("v6dhcp") else {
        return;
    };
    let _daemon = topo.up(&[]);
    // dhclient -6 needs a usable link-local address, which SLAAC's wait covers.
    wait_for_slaac(&topo);
    let dir = tempfile::tempdir().expect("tempdir");
    let leases = dir.path().join("leases");
    let pid = dir.path().join("pid");
    let out = topo.exec(
        &topo.vm,
        &[
            "timeout",
            "90",
            "dhclient",
            "-6",
            "-1",
            "-v",
            "-sf",
            "/bin/true",
            "-lf",
            &leases.to_string_lossy(),
            "-pf",
            &pid.to_string_lossy(),
            "eth0",
        ],
    );
    if let Ok(pid) = std::fs::read_to_string(&pid) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dhclient -6 failed:\n{log}");
    let lease = std::fs::read_to_string(&leases).expect("the lease file");
    assert!(
        lease.contains(&format!("iaaddr {VM_IP6}")),
        "{lease}\n{log}"
    );
    assert!(lease.contains("dhcp6.name-servers fd6b:766d::1"), "{lease}");
}

/// The pod's IPv6 state a restart must leave as it was: our ip6 table (without handles and
/// counts), the bridge's global IPv6 addresses, IPv6 forwarding.
fn ipv6_state(topo: &Topology) -> (serde_json::Value, String, String) {
    let table = topo.must_in(
        &topo.pod,
        &["nft", "-j", "list", "table", "ip6", "kvm_manager"],
    );
    let mut table: serde_json::Value = serde_json::from_str(&table).expect("nft -j");
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.retain(|k, _| k != "handle" && k != "packets" && k != "bytes");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut table);
    let addrs = topo.must_in(
        &topo.pod,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", "kvmbr0", "scope", "global",
        ],
    );
    // Lifetimes tick; the address, prefix and flags are the state.
    let addrs = addrs
        .lines()
        .map(|l| l.split("valid_lft").next().unwrap_or(l).trim().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let forwarding = topo.must_in(
        &topo.pod,
        &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"],
    );
    (table, addrs, forwarding)
}

#[test]
fn five_restarts_leave_the_ip6_table_addresses_and_the_vms_address_identical() {
    let Some(topo) = Topology::dual_stack("v6restart") else {
        return;
    };
    let first = topo.up(&[]);
    wait_for_slaac(&topo);
    drop(first);
    let reference = ipv6_state(&topo);
    assert!(reference.1.contains("fd6b:766d::1/64"), "{}", reference.1);
    let vm_addrs = |topo: &Topology| {
        let out = topo.must_in(
            &topo.vm,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
            ],
        );
        out.lines()
            .map(|l| l.split("valid_lft").next().unwrap_or(l).trim().to_owned())
            .collect::<Vec<_>>()
    };
    let vm_reference = vm_addrs(&topo);
    for round in 1..=5 {
        // `up` kills nothing itself: dropping the daemon is the SIGKILL of a container restart.
        let mut daemon = topo.network(&[], &[]);
        daemon.0.wait_for_line("network ready", T);
        assert_eq!(ipv6_state(&topo), reference, "after restart {round}");
        assert_eq!(
            vm_addrs(&topo),
            vm_reference,
            "the VM's IPv6 after restart {round}"
        );
        let chains = reference.0["nftables"].as_array().map_or(0, Vec::len);
        assert!(chains > 5, "the ip6 table has its chains: {}", reference.0);
        drop(daemon);
    }
}

/// Garbage to the DHCPv6 servers' group from the VM's link-local address, then a valid
/// Solicit: prints `advertise` when ours answers.
const DHCPV6_GARBAGE: &str = r#"
import os, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("::", 546))
idx = socket.if_nametoindex("eth0")
dst = ("ff02::1:2", 547, 0, idx)
for junk in [b"", b"\x01", b"\x01\0\0\0\0\x03\0\x28" + os.urandom(8), b"\x03" + os.urandom(60), os.urandom(400), b"\x01\x01\x02\x03\0\x01\0\x0a\0\x03\0\x01RT\0\xab\xcd\x01\0\x03\xff\xff"]:
    s.sendto(junk, dst)
solicit = b"\x01\x01\x02\x03" + b"\0\x01\0\x0a\0\x03\0\x01" + bytes.fromhex("525400aabbcc") + b"\0\x03\0\x0c" + b"\0\0\0\x07" + b"\0" * 8
s.sendto(solicit, dst)
s.settimeout(10)
data, peer = s.recvfrom(2000)
print("advertise" if data[0] == 2 else "type %d" % data[0], flush=True)
"#;

#[test]
fn garbage_dhcpv6_from_the_vm_is_survived_and_nothing_reaches_the_uplink() {
    let Some(topo) = Topology::dual_stack("v6junk") else {
        return;
    };
    let mut daemon = topo.up(&[]);
    wait_for_slaac(&topo);
    // A listener on the node's client and server ports: nothing of ours may arrive there.
    let listen = r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 546))
t = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
t.bind(("::", 547))
s.settimeout(6)
print("ready", flush=True)
try:
    print("got", s.recvfrom(2000)[1], flush=True)
except socket.timeout:
    print("quiet", flush=True)
"#;
    let mut node = crate::network::topology::Daemon(crate::support::Running::spawn(
        std::process::Command::new("ip").args([
            "netns",
            "exec",
            &topo.node,
            "/usr/bin/python3",
            "-c",
            listen,
        ]),
    ));
    node.0.wait_for_line("ready", T);
    let out = topo.must_in(&topo.vm, &["/usr/bin/python3", "-c", DHCPV6_GARBAGE]);
    assert!(out.contains("advertise"), "{out}");
    node.0.wait_for_line("quiet", T);
    assert!(
        daemon.0.child.try_wait().expect("poll").is_none(),
        "kvm-manager died"
    );
}

#[test]
fn the_test_guest_gets_ipv6_by_our_ra_alone_and_the_node_reaches_it_through_the_pods_ipv6() {
    use crate::vm::{field, stop, Cluster, BOOT};
    let Some(cluster) = Cluster::for_test("kmv6", "vm-nat6") else {
        return;
    };
    let pod = &cluster.pod;
    let (node6, pod6) = pod.add_ipv6();
    // The node has no route to the VM's ULA /64: its ping's answer can only come back if the
    // VM's packets left with the pod's IPv6 as source.
    // A ping from the guest's usable (no longer tentative) address, and a cluster name looked
    // up at our forwarder on VM_GW6, over IPv6.
    cluster.user_data(&format!(
        "# kvmtest.ping_six={node6}\n# kvmtest.dns_six=fd6b:766d::1,www.kvmtest.example\n"
    ));
    let mut vm = cluster.start(&[("NETWORK_MODE", "nat")]);
    vm.wait_for_line("KVMTEST READY", BOOT);
    let v6 = vm.wait_for_line("KVMTEST ipv6", Duration::from_secs(180));
    assert!(
        field(&v6, "addrs")
            .split(',')
            .any(|a| a.starts_with("fd6b:766d::") && a.ends_with("/64")),
        "a SLAAC address in VM_GW6's /64 expected: {v6}"
    );
    assert!(
        field(&v6, "router").starts_with("fe80::"),
        "a default route via our bridge: {v6}"
    );
    let ping = vm.wait_for_line("KVMTEST ping6", Duration::from_secs(90));
    assert_eq!(
        field(&ping, "ok"),
        "1",
        "the guest pings the node over IPv6: {ping}"
    );

    let dns6 = vm.wait_for_line("KVMTEST dns6", Duration::from_secs(90));
    assert_eq!(
        field(&dns6, "answer"),
        crate::vm::DNS_ANSWER,
        "over IPv6: {dns6}"
    );

    let url = format!("http://[{pod6}]:80/");
    let out = pod
        .node("curl")
        .args(["-s", "-m", "20", "-g", &url])
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains("kvmtest hostname="),
        "the guest's page over IPv6, got {page:?}"
    );
    // TCP 5900 on the pod's IPv6 stays in the pod (qemu's VNC listens on IPv4 only, so it
    // is refused there); the guest, which answers 5900 with its banner, never sees it.
    let vnc = pod
        .node("python3")
        .args([
            "-c",
            &format!(
                "import socket\ntry:\n    s = socket.create_connection(('{pod6}', 5900), 10)\n    \
                 print(s.recv(64).decode(errors='replace'))\nexcept ConnectionRefusedError:\n    \
                 print('refused')"
            ),
        ])
        .output()
        .expect("python3");
    let banner = String::from_utf8_lossy(&vnc.stdout);
    assert!(
        banner.starts_with("RFB") || banner.trim() == "refused",
        "[{pod6}]:5900 must stay in the pod, got {banner:?}"
    );
    stop(&mut vm);
}

#[test]
fn a_pod_that_refuses_ipv6_forwarding_is_exit_4_naming_ipv6_off_which_then_works() {
    if !crate::support::require_root("ipv6 forwarding refused") {
        return;
    }
    let pod = crate::pod::Pod::new("kmv6fw", "vm-0");
    pod.add_ipv6();
    // IPv4 forwarding is on already; /proc/sys is read-only, as in a pod without the sysctl.
    crate::pod::run(&[
        "ip",
        "netns",
        "exec",
        &pod.pod_ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let read_only = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys";
    let mut refused = pod.kvm_manager_after(read_only, &["network"], &[]);
    assert_eq!(refused.wait(T).code(), Some(4), "{}", refused.output());
    let out = refused.output();
    assert!(
        out.contains(
            "could not enable IPv6 forwarding through /proc/sys/net/ipv6/conf/all/forwarding"
        ) && out.contains("IPV6=off"),
        "{out}"
    );
    let mut off = pod.kvm_manager_after(read_only, &["network"], &[("IPV6", "off")]);
    off.wait_for_line("network ready", T);
    let _ = off.child.kill();
    let _ = off.child.wait();
}

/// From the VM namespace: `COUNT` UDP datagrams to NODE:PORT from the forged source FORGED.
const FORGE6: &str = r#"
import socket, sys
forged, node, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((forged, 0))
for _ in range(count):
    s.sendto(b"forged", (node, port))
"#;

#[test]
fn ipv6_from_the_vm_with_a_forged_source_is_dropped_and_counted_with_the_ipv4_ones() {
    let Some(topo) = Topology::dual_stack("v6spoof") else {
        return;
    };
    let mut daemon = topo.up(&[]);
    wait_for_slaac(&topo);
    // Another pod's address and the pod's own: not in VM_GW6's /64.
    for forged in ["fd99::77", POD_IP6] {
        topo.must_in(
            &topo.vm,
            &[
                "ip",
                "addr",
                "add",
                &format!("{forged}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        topo.must_in(
            &topo.vm,
            &[
                "/usr/bin/python3",
                "-c",
                FORGE6,
                forged,
                NODE_IP6,
                "2222",
                "10",
            ],
        );
    }
    let counter = topo.must_in(
        &topo.pod,
        &["nft", "list", "counter", "ip6", "kvm_manager", "spoofed"],
    );
    assert!(counter.contains("packets 20 "), "{counter}");
    let line = daemon.0.wait_for_line("forged source", T);
    assert!(line.contains("dropped=20"), "{line}");
    // The VM's own IPv6 still leaves (as the pod), once the forged addresses (which the
    // kernel would prefer as sources towards fd99::1) are gone again.
    for forged in ["fd99::77", POD_IP6] {
        topo.must_in(
            &topo.vm,
            &["ip", "addr", "del", &format!("{forged}/128"), "dev", "eth0"],
        );
    }
    let mut node = topo.serve(&topo.node, "udp", NODE_IP6, 3334);
    let answer = topo.call(&topo.vm, "udp", NODE_IP6, 3334);
    assert_eq!(answer.as_deref(), Some(&*format!("saw {POD_IP6}")));
    node.0.wait_for_line("peer", T);
}
