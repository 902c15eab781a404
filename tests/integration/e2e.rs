//! End to end: `kvm-manager run` as PID 1 of a simulated pod boots the tiny real guest under
//! TCG. The guest reports what it saw (`KVMTEST …` lines on its serial console, which reach
//! our stdout); the node namespace plays the cluster: it serves the base image over HTTP and
//! answers DNS like cluster DNS (tests/integration/vm.rs).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pod::Pod;
use crate::vm::{field, http_get, pid1, stop, Cluster, BOOT, DNS_ANSWER, T, USERDATA};

fn tcp_exchange(pod: &Pod, port: u16, send: &str) -> String {
    let script = format!(
        "import socket; s = socket.create_connection(('{}', {port}), 5); s.settimeout(5); s.sendall(b'''{send}'''); s.shutdown(socket.SHUT_WR);\nout = b''\nwhile True:\n    d = s.recv(4096)\n    if not d: break\n    out += d\n    if len(out) > 12 and b'GET' not in b'''{send}''': break\nprint(out.decode(errors='replace'))",
        pod.pod_ip
    );
    node_python(pod, &script)
}

fn udp_echo(pod: &Pod, port: u16, payload: &str) -> String {
    let script = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\nfor _ in range(5):\n    s.sendto(b'{payload}', ('{}', {port}))\n    try:\n        print(s.recvfrom(2048)[0].decode()); break\n    except socket.timeout: pass",
        pod.pod_ip
    );
    node_python(pod, &script).trim().to_owned()
}

/// What a Python client `script` run on the node prints.
fn node_python(pod: &Pod, script: &str) -> String {
    let out = pod
        .node("python3")
        .args(["-c", script])
        .output()
        .expect("python3 client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_rules(pod: &Pod) -> usize {
    let out = pod
        .exec("nft")
        .args(["-a", "list", "table", "ip", "kvm_manager"])
        .output()
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("# handle") && !l.contains("chain") && !l.contains("table"))
        .count()
}

#[test]
fn a_real_guest_boots_sees_its_lease_drive_and_dns_serves_the_pod_ip_and_powers_off_on_sigterm() {
    let Some(cluster) = Cluster::for_test("kme", "vm-e2e") else {
        return;
    };
    let pod = &cluster.pod;
    let mut vm = cluster.boot(&[]);

    let lease = vm.wait_for_line("KVMTEST lease", T);
    assert_eq!(field(&lease, "ip"), "192.168.254.2", "{lease}");
    assert_eq!(field(&lease, "router"), "192.168.254.1", "{lease}");
    assert_eq!(field(&lease, "dns"), "192.168.254.1", "{lease}");
    assert_eq!(field(&lease, "mtu"), "1450", "{lease}");
    assert_eq!(field(&lease, "hostname"), "vm-e2e", "{lease}");
    assert!(
        field(&lease, "search").contains("default.svc.cluster.local"),
        "{lease}"
    );

    let drive = vm.wait_for_line("KVMTEST configdrive", T);
    assert_eq!(field(&drive, "label"), "config-2", "{drive}");
    let files = field(&drive, "files");
    for want in [
        "openstack/latest/meta_data.json",
        "openstack/latest/user_data",
        "openstack/latest/network_data.json",
    ] {
        assert!(files.contains(want), "{want} missing from {drive}");
    }
    let user_data = vm.wait_for_line("KVMTEST file path=openstack/latest/user_data", T);
    let want = sha256_hex(USERDATA.as_bytes());
    assert_eq!(
        field(&user_data, "sha256"),
        want,
        "user-data must arrive byte for byte"
    );

    let dns = vm.wait_for_line("KVMTEST dns name=kvmtest.example", T);
    assert_eq!(field(&dns, "answer"), DNS_ANSWER, "{dns}");
    let own = vm.wait_for_line("KVMTEST dns name=vm-e2e", T);
    assert_eq!(field(&own, "answer"), "192.168.254.2", "{own}");

    // The node reaches the guest through the pod IP: TCP, UDP. 5900 is qemu's VNC, which
    // without VNC_PASSWORD listens on the pod's loopback only: the node gets neither VNC nor
    // the guest's listener there (5900 stays out of the NAT).
    let (code, page) = http_get(pod, 80, "/");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("kvmtest hostname=vm-e2e"), "{page}");
    assert_eq!(udp_echo(pod, 7, "ping-e2e"), "ping-e2e");
    let banner = tcp_exchange(pod, 5900, "");
    assert!(
        banner.trim().is_empty(),
        "nothing should answer on 5900 of the pod IP, got {banner:?}"
    );

    // Our own HTTP server: health and readiness reflect the running guest.
    let (code, body) = http_get(pod, 8080, "/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(pod, 8080, "/readyz");
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = http_get(pod, 8080, "/metrics");
    assert!(metrics.contains("kvm_manager_qemu_up 1"), "{metrics}");

    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    vm.wait_for_line("KVMTEST powerdown", T);
    let status = vm.wait(T);
    assert_eq!(
        status.code(),
        Some(0),
        "graceful shutdown must exit 0:\n{}",
        vm.output()
    );
    assert!(
        pod.pids().is_empty(),
        "processes left in the pod: {:?}",
        pod.pids()
    );
}

#[test]
fn a_container_restart_keeps_the_disk_mac_and_lease_and_duplicates_no_rule() {
    let Some(cluster) = Cluster::for_test("kmr", "vm-restart") else {
        return;
    };
    let pod = &cluster.pod;
    let mut first = cluster.boot(&[]);
    let boot1: u32 = field(&first.wait_for_line("KVMTEST boot", T), "count")
        .parse()
        .expect("count");
    let lease1 = first.wait_for_line("KVMTEST lease", T);
    let rules1 = nft_rules(pod);
    assert!(rules1 > 0);

    // A container restart: PID 1 dies (SIGKILL), the PID namespace and qemu with it; the pod's
    // network namespace and volumes survive.
    kill(pid1(&first), Signal::SIGKILL).expect("SIGKILL PID 1");
    first.wait(T);
    let deadline = Instant::now() + T;
    while !pod.pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut second = cluster.boot(&[]);
    let boot2: u32 = field(&second.wait_for_line("KVMTEST boot", T), "count")
        .parse()
        .expect("count");
    assert_eq!(
        boot2,
        boot1 + 1,
        "the pet overlay must keep the guest's data:\n{}\n--- second start ---\n{}",
        first.output(),
        second.output()
    );
    let lease2 = second.wait_for_line("KVMTEST lease", T);
    assert_eq!(field(&lease2, "ip"), field(&lease1, "ip"));
    assert_eq!(
        field(&lease2, "mac"),
        field(&lease1, "mac"),
        "same MAC across restarts"
    );
    assert_eq!(nft_rules(pod), rules1, "no duplicated nft rule");
    stop(&mut second);
    assert!(pod.pids().is_empty(), "processes left: {:?}", pod.pids());
}

#[test]
fn no_vnc_hands_port_5900_to_the_guest() {
    let Some(cluster) = Cluster::for_test("kmv", "vm-novnc") else {
        return;
    };
    let mut vm = cluster.boot(&[("NO_VNC", "1")]);
    let banner = tcp_exchange(&cluster.pod, 5900, "");
    assert!(
        banner.contains("kvmtest hostname=vm-novnc"),
        "the guest's listener expected, got {banner:?}"
    );
    stop(&mut vm);
}

#[test]
fn a_guest_that_ignores_acpi_is_quit_after_the_timeout() {
    let Some(cluster) = Cluster::for_test("kma", "vm-stubborn") else {
        return;
    };
    // No guest agent either: it would shut the guest down (guest-shutdown) in time.
    cluster.user_data("# kvmtest.ignore_acpi=1\n# kvmtest.agent=0\n");
    let mut vm = cluster.boot(&[("SHUTDOWN_TIMEOUT", "6s")]);
    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM");
    vm.wait_for_line("KVMTEST powerdown ignored", T);
    assert_eq!(
        vm.wait(T).code(),
        Some(7),
        "documented exit code for a forced quit:\n{}",
        vm.output()
    );
    assert!(
        vm.output()
            .contains("did not power off within SHUTDOWN_TIMEOUT"),
        "{}",
        vm.output()
    );
}

#[test]
fn killing_qemu_ends_kvm_manager_promptly_with_an_error() {
    let Some(cluster) = Cluster::for_test("kmk", "vm-killed") else {
        return;
    };
    let mut vm = cluster.start(&[]);
    let line = vm.wait_for_line("qemu started", BOOT);
    let qemu: i32 = field(&line, "pid").parse().expect("pid");
    // That pid is in the pod's PID namespace; find the host pid through /proc.
    let host = find_host_pid(pid1(&vm), qemu);
    kill(host, Signal::SIGKILL).expect("SIGKILL qemu");
    let status = vm.wait(T);
    assert_eq!(status.code(), Some(137), "{}", vm.output());
    assert!(
        cluster.pod.pids().is_empty(),
        "left: {:?}",
        cluster.pod.pids()
    );
}

/// The host pid of the process that is `ns_pid` inside the PID namespace of `pid1`.
fn find_host_pid(pid1: Pid, ns_pid: i32) -> Pid {
    let children =
        std::fs::read_to_string(format!("/proc/{pid1}/task/{pid1}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("NSpid:")) {
            if line.split_whitespace().last() == Some(&ns_pid.to_string()) {
                return Pid::from_raw(child.parse().expect("pid"));
            }
        }
    }
    panic!("no child of {pid1} has namespace pid {ns_pid}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_nat_that_fails_beside_qemu_start_stops_qemu_and_exits_with_the_network_code() {
    // qemu starts while the NAT is applied; an `nft` that refuses the ruleset must not leave a
    // VM running without its NAT.
    let Some(cluster) = Cluster::for_test("kmn", "vm-nonat") else {
        return;
    };
    let fake = cluster.pod.path("fake-bin");
    std::fs::create_dir_all(&fake).expect("mkdir");
    let nft = fake.join("nft");
    std::fs::write(
        &nft,
        "#!/bin/sh\necho 'Error: syntax error, unexpected junk' >&2\nexit 1\n",
    )
    .expect("write fake nft");
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut vm = cluster.start(&[("PATH", path.as_str())]);
    let status = vm.wait(T);
    failed_beside_qemu(&cluster, status, &vm.output(), &["syntax error"]);
}

/// A start that failed in what runs beside qemu's start: exit 4 after qemu started, the
/// error's `messages` in the log, nothing left running in the pod.
fn failed_beside_qemu(
    cluster: &Cluster,
    status: std::process::ExitStatus,
    output: &str,
    messages: &[&str],
) {
    assert_eq!(status.code(), Some(4), "{output}");
    assert!(
        output.contains("qemu started"),
        "qemu must have been started: {output}"
    );
    for message in messages {
        assert!(output.contains(message), "no {message:?} in: {output}");
    }
    assert!(
        cluster.pod.pids().is_empty(),
        "left: {:?}",
        cluster.pod.pids()
    );
}

#[test]
fn dhcp_or_dns_that_cannot_start_beside_qemu_stops_qemu_and_exits_with_the_network_code() {
    // DHCP and DNS start while qemu starts; a forwarder that cannot bind (another process in
    // the pod holds UDP port 53 on every address) must not leave a VM running without it.
    let Some(cluster) = Cluster::for_test("kms", "vm-nodns") else {
        return;
    };
    let mut squatter = cluster
        .pod
        .exec("python3")
        .args([
            "-c",
            "import socket, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', 53))\n\
             print('bound', flush=True)\n\
             time.sleep(600)\n",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the port-53 squatter");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(squatter.stdout.take().expect("piped stdout")),
        &mut line,
    )
    .expect("read the squatter's line");
    assert_eq!(line.trim(), "bound");
    let mut vm = cluster.start(&[]);
    let status = vm.wait(T);
    let _ = squatter.kill();
    let _ = squatter.wait();
    failed_beside_qemu(
        &cluster,
        status,
        &vm.output(),
        &[
            "could not listen on 192.168.254.1 port 53 (udp)",
            "Address already in use",
        ],
    );
}
