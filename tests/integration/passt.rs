//! passt mode (`NETWORK_MODE=auto|nat|passt`): the mode decision as a user sees it, and the
//! tiny real guest on the pod's own address through passt, in a simulated pod whose PID 1
//! runs as a non-root user with every capability dropped (what Pod Security "restricted"
//! allows), beside the two safe sysctls such a pod sets.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pod::{run, Pod};
use crate::support::{require_root, Running};
use crate::vm::{field, http_get, pid1, Cluster, BOOT, DNS_ANSWER, T};

/// The user the restricted pod runs as.
const USER: &str = "65534";
/// A port only the pod's loopback listens on, and the node does not.
const LOOPBACK_ONLY: u16 = 9999;

/// Every capability dropped, as `USER`, no way back (`no_new_privs`).
const RESTRICTED: &[&str] = &[
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
];

/// Only CAP_NET_ADMIN dropped (still root).
const NO_NET_ADMIN: &[&str] = &[
    "capsh",
    "--drop=cap_net_admin",
    "--",
    "-c",
    "exec \"$0\" \"$@\"",
];

/// `kvm-manager ARGS` as PID 1 of `pod`, started through `wrapper` (which drops privileges
/// after the pod's root-only setup: hostname, resolv.conf).
fn command(pod: &Pod, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Command {
    pod.kvm_manager_command_wrapped("", wrapper, args, env)
}

/// What a restricted pod gets besides: the two sysctls Kubernetes lists as safe (low ports
/// for passt, ICMP echo sockets for the guest's pings), and volumes its user owns.
fn restrict(pod: &Pod) {
    for sysctl in [
        "net.ipv4.ip_unprivileged_port_start=0",
        "net.ipv4.ping_group_range=0 2147483647",
    ] {
        run(&["ip", "netns", "exec", &pod.pod_ns, "sysctl", "-qw", sysctl]);
    }
    run(&[
        "chown",
        "-R",
        &format!("{USER}:{USER}"),
        &pod.dir.path().to_string_lossy(),
    ]);
}

fn qemu_args(pod: &Pod, wrapper: &[&str], mode: &str) -> String {
    let out = command(pod, wrapper, &["qemu-args"], &[("NETWORK_MODE", mode)])
        .output()
        .expect("run qemu-args");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-args failed:\n{text}");
    text
}

#[test]
fn auto_picks_nat_with_net_admin_and_tun_and_passt_without() {
    if !require_root("auto_picks_nat_with_net_admin_and_tun_and_passt_without") {
        return;
    }
    let pod = Pod::new("kmpa", "vm-auto");
    let nat = qemu_args(&pod, &[], "auto");
    assert!(nat.contains("tap,id=net0,ifname=kvmtap0"), "{nat}");
    let passt = qemu_args(&pod, NO_NET_ADMIN, "auto");
    assert!(
        passt.contains("stream,id=net0,server=off,addr.type=unix,addr.path="),
        "{passt}"
    );
    assert!(!passt.contains("tap,"), "{passt}");
    // Forced, passt needs no capability to be chosen.
    let forced = qemu_args(&pod, &[], "passt");
    assert!(forced.contains("stream,id=net0"), "{forced}");
}

#[test]
fn forcing_nat_without_net_admin_exits_4_naming_the_capability() {
    if !require_root("forcing_nat_without_net_admin_exits_4_naming_the_capability") {
        return;
    }
    let cluster = Cluster::new("kmpn", "vm-nat");
    // The image download waits: the network must fail on its own.
    cluster.close_gate();
    let mut vm = Running::spawn(&mut command(
        &cluster.pod,
        NO_NET_ADMIN,
        &["run"],
        &[
            ("IMG_SOURCE", cluster.image_url.as_str()),
            ("ACCEL", "tcg"),
            ("NETWORK_MODE", "nat"),
        ],
    ));
    let status = vm.wait(T);
    let output = vm.output();
    assert_eq!(status.code(), Some(4), "{output}");
    assert!(
        output.contains("NETWORK_MODE=nat needs CAP_NET_ADMIN"),
        "{output}"
    );
    assert!(output.contains("NETWORK_MODE=passt"), "{output}");
    assert!(cluster.pod.pids().is_empty(), "{:?}", cluster.pod.pids());
}

/// The guest's options: a cluster name to resolve, and what to probe from inside: the node's
/// image server (reachable: the probe works) and the gateway on a port only the pod's
/// loopback serves (must stay closed: passt runs with `--no-map-gw`).
fn guest_options(cluster: &Cluster, more: &str) {
    let node = &cluster.pod.node_ip;
    std::fs::write(
        cluster.pod.path("userdata").join("user-data"),
        format!(
            "#cloud-config\n# kvmtest.dns=kvmtest.example\n# kvmtest.probe={node}:8000,{node}:{LOOPBACK_ONLY}\n{more}"
        ),
    )
    .expect("write user-data");
}

/// The restricted pod running `run` in passt mode (`auto`: nothing else can work there);
/// `options`: more of the guest's user-data lines.
fn start_restricted(cluster: &Cluster, options: &str) -> Running {
    guest_options(cluster, options);
    restrict(&cluster.pod);
    let env = [
        ("IMG_SOURCE", cluster.image_url.as_str()),
        ("ACCEL", "tcg"),
        ("VM_MEMORY", "256"),
        ("SHUTDOWN_TIMEOUT", "30s"),
        ("VNC_PASSWORD", "secret12"),
        // The guest's web server: passt reports no lease, so readiness asks the guest.
        ("READY_PORT", "80"),
    ];
    Running::spawn(&mut command(&cluster.pod, RESTRICTED, &["run"], &env))
}

/// A loopback-only listener in the pod, as a sidecar or our own loopback-trusting endpoints.
fn loopback_listener(pod: &Pod) -> std::process::Child {
    pod.exec("python3")
        .args([
            "-c",
            &format!(
                "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {LOOPBACK_ONLY})); s.listen()\nwhile True:\n    c, _ = s.accept(); c.close()"
            ),
        ])
        .spawn()
        .expect("start the loopback listener")
}

fn tcp_banner(pod: &Pod, host: &str, port: u16) -> String {
    let script = format!(
        "import socket\ns = socket.create_connection(('{host}', {port}), 5); s.settimeout(5)\nprint(s.recv(64).decode(errors='replace'))"
    );
    let out = pod
        .node("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn udp_echo(pod: &Pod, port: u16, payload: &str) -> String {
    let script = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\nfor _ in range(5):\n    s.sendto(b'{payload}', ('{}', {port}))\n    try:\n        print(s.recvfrom(2048)[0].decode()); break\n    except socket.timeout: pass",
        pod.pod_ip
    );
    let out = pod
        .node("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_until_ready(pod: &Pod) -> (u16, String) {
    let deadline = Instant::now() + T;
    loop {
        let (code, body) = http_get(pod, 8080, "/readyz");
        if code == 200 || Instant::now() > deadline {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn passt_mode_without_any_capability_puts_the_guest_on_the_pod_ip() {
    if !require_root("passt_mode_without_any_capability_puts_the_guest_on_the_pod_ip") {
        return;
    }
    let cluster = Cluster::new("kmpp", "vm-passt");
    let pod = &cluster.pod;
    // Killed with the pod's namespace if the test fails before the end.
    let mut loopback = loopback_listener(pod);
    let mut vm = start_restricted(&cluster, "");
    let mode = vm.wait_for_line("network mode", T);
    assert!(mode.contains("passt"), "{mode}");
    assert!(mode.contains("CAP_NET_ADMIN"), "{mode}");
    vm.wait_for_line("KVMTEST READY", BOOT);

    let lease = vm.wait_for_line("KVMTEST lease", T);
    assert_eq!(
        field(&lease, "ip"),
        pod.pod_ip,
        "the pod's own address: {lease}"
    );
    assert_eq!(field(&lease, "router"), pod.node_ip, "{lease}");
    assert_eq!(field(&lease, "mtu"), "1450", "{lease}");
    assert!(
        field(&lease, "search").contains("default.svc.cluster.local"),
        "{lease}"
    );
    // From the guest: the pod's loopback is no door through the gateway (checked first: by
    // default passt maps the gateway onto the pod's loopback, which would also take the node's
    // port 8000 and the DNS below away); the node answers.
    let gateway = vm.wait_for_line(
        &format!("KVMTEST probe target={}:{LOOPBACK_ONLY}", pod.node_ip),
        T,
    );
    assert_eq!(
        field(&gateway, "open"),
        "0",
        "the guest reached the pod's loopback through the gateway: {gateway}"
    );
    let node = vm.wait_for_line(&format!("KVMTEST probe target={}:8000", pod.node_ip), T);
    assert_eq!(field(&node, "open"), "1", "{node}");
    let dns = vm.wait_for_line("KVMTEST dns name=kvmtest.example", T);
    assert_eq!(field(&dns, "answer"), DNS_ANSWER, "{dns}");

    // From the node, through the pod IP: TCP and UDP reach the guest, 5900 qemu's VNC (with
    // VNC_PASSWORD it listens on the pod IP), HTTP_PORT us.
    let (code, page) = http_get(pod, 80, "/");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("kvmtest hostname="), "{page}");
    assert_eq!(udp_echo(pod, 7, "ping-passt"), "ping-passt");
    let vnc = tcp_banner(pod, &pod.pod_ip, 5900);
    assert!(
        vnc.starts_with("RFB "),
        "qemu's VNC expected on 5900, got {vnc:?}"
    );
    let (code, body) = http_get(pod, 8080, "/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = wait_until_ready(pod);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("the guest answers on"), "{body}");

    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    vm.wait_for_line("KVMTEST powerdown", T);
    let status = vm.wait(T);
    assert_eq!(status.code(), Some(0), "{}", vm.output());
    assert!(
        pod.pids().iter().all(|p| !is_ours(p)),
        "left: {:?}",
        pod.pids()
    );
    let _ = loopback.kill();
    let _ = loopback.wait();
}

/// kvm-manager, qemu or passt.
fn is_ours(pid: &str) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ["kvm-manager", "qemu", "passt"]
        .iter()
        .any(|name| comm.trim().starts_with(name))
}

fn passt_pid(pod: &Pod) -> Option<Pid> {
    pod.pids().into_iter().find_map(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        comm.starts_with("passt")
            .then(|| Pid::from_raw(pid.parse().expect("numeric pid")))
    })
}

#[test]
fn passt_dying_stops_the_vm_cleanly_and_exits_4() {
    if !require_root("passt_dying_stops_the_vm_cleanly_and_exits_4") {
        return;
    }
    let cluster = Cluster::new("kmpd", "vm-passt-dies");
    let pod = &cluster.pod;
    let mut vm = start_restricted(&cluster, "");
    vm.wait_for_line("KVMTEST READY", BOOT);
    let passt = passt_pid(pod).expect("passt runs in the pod");
    kill(passt, Signal::SIGKILL).expect("kill passt");
    // The guest is asked to power off (it obeys), then we report passt's death.
    vm.wait_for_line("KVMTEST powerdown", T);
    let status = vm.wait(T);
    let output = vm.output();
    assert_eq!(status.code(), Some(4), "{output}");
    assert!(
        output.contains("passt, which carried the VM's network, exited"),
        "{output}"
    );
    assert!(output.contains("killed by SIGKILL"), "{output}");
    let deadline = Instant::now() + T;
    while pod.pids().iter().any(|p| is_ours(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        pod.pids().iter().all(|p| !is_ours(p)),
        "left: {:?}",
        pod.pids()
    );
}

#[test]
fn passt_mode_gives_the_guest_the_pods_ipv6_and_the_node_reaches_it() {
    if !require_root("passt_mode_gives_the_guest_the_pods_ipv6_and_the_node_reaches_it") {
        return;
    }
    let cluster = Cluster::new("kmp6", "vm-passt6");
    let pod = &cluster.pod;
    let (node, pod_ipv6) = pod.add_ipv6();
    // The guest configures its address from passt's advertisement (it has no DHCPv6 client);
    // passt learns it from the guest's first packet: a ping to the node, through passt's ICMP
    // echo sockets.
    let mut vm = start_restricted(&cluster, &format!("# kvmtest.ping={node}\n"));
    vm.wait_for_line("KVMTEST READY", BOOT);
    // passt advertises the pod's /64 (and serves the pod's own address over DHCPv6, which the
    // busybox guest has no client for): the guest's address is in the pod's prefix.
    let v6 = vm.wait_for_line("KVMTEST ipv6", T);
    let prefix = pod_ipv6.trim_end_matches("::2");
    assert!(
        field(&v6, "addrs")
            .split(',')
            .any(|a| a.starts_with(&format!("{prefix}:")) && a.ends_with("/64")),
        "an address in the pod's IPv6 /64 expected: {v6}"
    );
    assert!(
        !field(&v6, "router").is_empty(),
        "an IPv6 default route: {v6}"
    );
    let ping = vm.wait_for_line("KVMTEST ping target", T);
    assert_eq!(
        field(&ping, "ok"),
        "1",
        "the guest pings the node over IPv6: {ping}"
    );

    let url = format!("http://[{pod_ipv6}]:80/");
    let out = pod
        .node("curl")
        .args(["-s", "-m", "10", "-g", &url])
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains("kvmtest hostname="),
        "the guest's page over IPv6 from {node}, got {page:?}"
    );
    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    assert_eq!(vm.wait(T).code(), Some(0), "{}", vm.output());
}
