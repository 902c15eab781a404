//! kvm-manager's HTTP endpoints, web console and `kvm-manager console` through a real VM's
//! life in a simulated pod (tests/integration/vm.rs): booting (the image download held at the
//! node's gate) → running without a lease (DHCP requests dropped by a firewall of the test)
//! → ready → shutting down (a guest that ignores ACPI) → stopped. `/metrics` is read by
//! Prometheus' reference parser; the web console is opened in headless Chromium.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::pod::Pod;
use crate::support::BIN;
use crate::vm::{guest_image, http_get, pid1, stop, Cluster, BOOT, T};

const HERE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration");

/// Runs a `scripts/` installer once per test run and returns the directory it prints.
fn installed(script: &'static str, cell: &'static OnceLock<String>) -> String {
    cell.get_or_init(|| {
        let out = Command::new(format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR")))
            .stderr(Stdio::inherit())
            .output()
            .expect("run the installer");
        assert!(out.status.success(), "scripts/{script} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
    .clone()
}

fn novnc_dir() -> String {
    static DIR: OnceLock<String> = OnceLock::new();
    installed("novnc", &DIR)
}

fn playwright_modules() -> String {
    static DIR: OnceLock<String> = OnceLock::new();
    installed("playwright", &DIR)
}

/// `/healthz` and `/readyz` as (status, body) each.
fn probes(pod: &Pod) -> ((u16, String), (u16, String)) {
    (
        http_get(pod, 8080, "/healthz"),
        http_get(pod, 8080, "/readyz"),
    )
}

/// Polls until `check` holds; panics with the last value after `timeout`.
fn eventually<V: std::fmt::Debug>(
    timeout: Duration,
    mut get: impl FnMut() -> V,
    check: impl Fn(&V) -> bool,
) -> V {
    let deadline = Instant::now() + timeout;
    loop {
        let value = get();
        if check(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "still {value:?} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

type Samples = Vec<(String, HashMap<String, String>, f64)>;

/// `/metrics`, parsed by prometheus_client's text parser (a malformed exposition fails).
fn metrics(pod: &Pod) -> Samples {
    let (code, text) = http_get(pod, 8080, "/metrics");
    assert_eq!(code, 200, "{text}");
    let mut parser = Command::new("/usr/bin/python3")
        .arg(format!("{HERE}/prometheus_samples.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Prometheus parser");
    parser
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = parser.wait_with_output().expect("run the parser");
    assert!(
        out.status.success(),
        "the Prometheus parser rejects /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser JSON")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(_, _, v)| *v)
}

fn phase_is(samples: &Samples, phase: &str) -> bool {
    value(samples, "kvm_manager_vm_phase", &[("phase", phase)]) == Some(1.0)
}

/// Where a client of the web console runs.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// Another pod of the cluster (the node's namespace), to the pod IP.
    Node,
    /// The pod's own loopback, where `kubectl port-forward` connects.
    PortForward,
}

impl Peer {
    fn command(self, pod: &Pod, program: &str) -> Command {
        match self {
            Peer::Node => pod.node(program),
            Peer::PortForward => pod.exec(program),
        }
    }

    fn host(self, pod: &Pod) -> String {
        match self {
            Peer::Node => pod.pod_ip.clone(),
            Peer::PortForward => "127.0.0.1".to_owned(),
        }
    }
}

/// Opens the web console in headless Chromium (webconsole.cjs); its JSON report.
fn web_console(
    pod: &Pod,
    from: Peer,
    password: Option<&str>,
    screenshot: &str,
) -> serde_json::Value {
    let png = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(screenshot);
    let mut command = from.command(pod, "node");
    command
        .arg(format!("{HERE}/webconsole.cjs"))
        .arg(format!("http://{}:8080/", from.host(pod)))
        .arg(&png)
        .args(password)
        .env("NODE_PATH", playwright_modules());
    let out = command.output().expect("run node");
    assert!(
        out.status.success(),
        "the web console did not show the guest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "no screenshot at {}", png.display());
    report
}

/// Runs console_viewers.py (raw WebSocket viewers speaking RFB) `from` there; its report.
fn viewers(pod: &Pod, from: Peer, args: &[&str]) -> serde_json::Value {
    let out = from
        .command(pod, "/usr/bin/python3")
        .arg(format!("{HERE}/console_viewers.py"))
        .arg(args[0])
        .arg(from.host(pod))
        .arg("8080")
        .args(&args[1..])
        .output()
        .expect("run console_viewers.py");
    assert!(
        out.status.success(),
        "console_viewers.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("viewers JSON")
}

/// One WebSocket upgrade of /websockify with `origin` (`-`: none), then the RFB banner.
fn ws_probe(pod: &Pod, from: Peer, origin: &str) -> serde_json::Value {
    viewers(pod, from, &["probe", origin])
}

/// What answers on TCP 5900 of the pod IP (from the node) or of the pod's loopback: the
/// first 12 bytes, or why there are none.
fn vnc_banner(pod: &Pod, from: Peer) -> String {
    let script = "import socket, sys\n\
try:\n    s = socket.create_connection((sys.argv[1], 5900), 5)\n    s.settimeout(5)\n    print(s.recv(12).decode(errors='replace').strip() or 'closed')\n\
except OSError as e:\n    print(type(e).__name__)\n";
    let out = from
        .command(pod, "/usr/bin/python3")
        .args(["-c", script, &from.host(pod)])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `curl` of `path` on port 8080 `from` there, with extra curl arguments: (status, body).
fn curl(pod: &Pod, from: Peer, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{}:8080{path}", from.host(pod));
    let out = from
        .command(pod, "curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The environment of the pod's qemu, from /proc (NUL-separated `KEY=value`).
fn qemu_environ(vm: &crate::support::Running) -> String {
    let pid = pid1(vm).as_raw();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("children of the pod's PID 1");
    let qemu = children
        .split_whitespace()
        .find(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|comm| comm.starts_with("qemu-system"))
        })
        .unwrap_or_else(|| panic!("no qemu among {children:?}"));
    let environ = std::fs::read(format!("/proc/{qemu}/environ")).expect("qemu's environ");
    String::from_utf8_lossy(&environ).replace('\0', "\n")
}

/// Runs `kvm-manager console` on a pseudo-terminal through `steps` (console_attach.py).
fn attach(pod: &Pod, steps: &[String]) -> serde_json::Value {
    let out = Command::new("/usr/bin/python3")
        .arg(format!("{HERE}/console_attach.py"))
        .arg(T.as_secs().to_string())
        .args([BIN, "console", "--"])
        .args(steps)
        .env("RUNTIME_DIR", pod.path("run"))
        .output()
        .expect("run the console driver");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("driver JSON")
}

/// Drops DHCP requests to kvm-manager in the pod (an nft table of the test's own).
fn block_dhcp(pod: &Pod, block: bool) {
    let rules = if block {
        "table inet kmh_test {\n chain input {\n type filter hook input priority -10;\n udp dport 67 drop\n }\n}\n"
    } else {
        "delete table inet kmh_test\n"
    };
    let file = pod.path("dhcp-block.nft");
    std::fs::write(&file, rules).expect("write the nft rules");
    let status = pod.exec("nft").arg("-f").arg(&file).status().expect("nft");
    assert!(status.success(), "nft {rules}");
}

#[test]
fn probes_metrics_console_and_web_console_follow_the_vm_from_booting_to_stopped() {
    let Some(cluster) = Cluster::for_test("kmh", "vm-http") else {
        return;
    };
    let pod = &cluster.pod;
    // No guest agent either: it would shut the guest down (guest-shutdown) in time.
    cluster.user_data("# kvmtest.ignore_acpi=1\n# kvmtest.agent=0\n");
    cluster.close_gate();
    block_dhcp(pod, true);
    let novnc = novnc_dir();
    let mut vm = cluster.start(&[("SHUTDOWN_TIMEOUT", "20s"), ("NOVNC_DIR", &novnc)]);

    // Booting: the base image is still downloading. The HTTP server answers, qemu does not run.
    let (health, ready) = eventually(T, || probes(pod), |((code, _), _)| *code != 0);
    assert_eq!(health.0, 503, "{health:?}");
    assert!(health.1.contains("starting"), "{health:?}");
    assert_eq!(ready.0, 503, "{ready:?}");
    let m = metrics(pod);
    assert!(phase_is(&m, "starting"), "{m:?}");
    assert_eq!(value(&m, "kvm_manager_qemu_up", &[]), Some(0.0), "{m:?}");
    assert_eq!(
        value(&m, "kvm_manager_image_state", &[("state", "downloading")]),
        Some(1.0),
        "{m:?}"
    );
    assert_eq!(
        value(&m, "kvm_manager_starts_total", &[]),
        Some(1.0),
        "{m:?}"
    );

    // Running, but the guest has no lease yet (its DHCP requests are dropped).
    cluster.open_gate();
    vm.wait_for_line("qemu started", BOOT);
    let (health, ready) = eventually(T, || probes(pod), |((code, _), _)| *code == 200);
    assert!(health.1.contains("running"), "{health:?}");
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(ready.1.contains("DHCP lease"), "{ready:?}");
    let m = metrics(pod);
    assert!(phase_is(&m, "running"), "{m:?}");
    assert_eq!(value(&m, "kvm_manager_qemu_up", &[]), Some(1.0), "{m:?}");

    // Ready once the guest holds its lease.
    block_dhcp(pod, false);
    vm.wait_for_line("KVMTEST READY", BOOT);
    let (_, ready) = eventually(T, || probes(pod), |(_, (code, _))| *code == 200);
    assert!(ready.1.contains("DHCP lease"), "{ready:?}");
    let m = eventually(
        T,
        || metrics(pod),
        |m| value(m, "kvm_manager_dhcp_replies_total", &[("kind", "ack")]) >= Some(1.0),
    );
    assert!(value(&m, "kvm_manager_dhcp_replies_total", &[("kind", "offer")]) >= Some(1.0));
    assert_eq!(
        value(&m, "kvm_manager_image_state", &[("state", "ready")]),
        Some(1.0),
        "{m:?}"
    );
    let image_bytes = std::fs::metadata(guest_image()).expect("guest image").len() as f64;
    assert_eq!(
        value(&m, "kvm_manager_image_download_bytes_total", &[]),
        Some(image_bytes),
        "every byte of the image is counted once: {m:?}"
    );
    let upstream = format!("{}:53", pod.node_ip);
    assert!(
        value(
            &m,
            "kvm_manager_dns_upstream_queries_total",
            &[("upstream", &upstream)]
        ) >= Some(1.0),
        "the guest's lookups were relayed to the pod's nameserver: {m:?}"
    );
    for phase in [
        "image",
        "overlay",
        "config-drive",
        "network",
        "services",
        "qemu-start",
    ] {
        let took = value(&m, "kvm_manager_phase_seconds", &[("phase", phase)]);
        assert!(
            took.is_some_and(|s| s >= 0.0),
            "phase_seconds{{{phase}}}: {m:?}"
        );
    }
    assert_eq!(
        value(&m, "kvm_manager_starts_total", &[]),
        Some(1.0),
        "{m:?}"
    );

    // The web console through `kubectl port-forward` (the pod's loopback): no password, so
    // RFB offers None (1); the guest's screen is drawn.
    let report = web_console(pod, Peer::PortForward, None, "webconsole.png");
    assert_eq!(report["security"], serde_json::json!([1]), "{report}");
    assert_eq!(report["status"], "connected", "{report}");
    assert!(report["canvas"]["colors"].as_u64() > Some(1), "{report}");

    // noVNC is served from NOVNC_DIR, and nothing outside it.
    let (code, body) = curl(pod, Peer::PortForward, "/novnc/core/rfb.js", &[]);
    assert!(
        code == 200 && body.contains("export default class RFB"),
        "{code}"
    );
    let (code, _) = curl(
        pod,
        Peer::PortForward,
        "/novnc/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/hostname",
        &[],
    );
    assert!(code == 400 || code == 404, "path traversal answered {code}");

    // `kvm-manager console`: the replay, typed input echoed by the guest's tty, then a live
    // line (SIGTERM presses the power button, which this guest reports and ignores); Ctrl-]
    // detaches and the VM keeps running.
    let pid = pid1(&vm);
    let session = attach(
        pod,
        &[
            "expect:KVMTEST READY".into(),
            "send:kmh-typed-42\\r".into(),
            "expect:kmh-typed-42".into(),
            format!("kill:{pid}"),
            "expect:KVMTEST powerdown ignored".into(),
            "detach".into(),
        ],
    );
    assert_eq!(session["failed"], serde_json::Value::Null, "{session}");
    assert_eq!(session["exit"], 0, "{session}");
    assert!(
        session["output"]
            .as_str()
            .is_some_and(|o| o.contains("[kvm-manager: detached]")),
        "{session}"
    );

    // Shutting down: not ready at once, still alive while qemu runs.
    let ((health, _), (ready, body)) = probes(pod);
    assert_eq!((health, ready), (200, 503), "{body}");
    assert!(body.contains("shutting-down"), "{body}");
    let m = metrics(pod);
    assert!(phase_is(&m, "shutting-down"), "{m:?}");
    assert_eq!(value(&m, "kvm_manager_qemu_up", &[]), Some(1.0), "{m:?}");

    // Stopped: qemu is quit after SHUTDOWN_TIMEOUT, kvm-manager exits 7 and stops answering.
    assert_eq!(vm.wait(T).code(), Some(7), "{}", vm.output());
    assert_eq!(
        http_get(pod, 8080, "/healthz").0,
        0,
        "nothing listens after exit"
    );
}

#[test]
fn with_no_dhcp_readiness_follows_the_guest_port_and_vnc_password_guards_the_web_console() {
    let Some(cluster) = Cluster::for_test("kmp", "vm-port") else {
        return;
    };
    let pod = &cluster.pod;
    let novnc = novnc_dir();
    let mut vm = cluster.start(&[
        ("NO_DHCP", "1"),
        ("READY_PORT", "80"),
        ("VNC_PASSWORD", "kmh-pass"),
        ("NOVNC_DIR", &novnc),
    ]);
    vm.wait_for_line("qemu started", BOOT);
    // The guest has no address until the test's own DHCP server runs: port 80 cannot answer.
    let (health, ready) = eventually(T, || probes(pod), |((code, _), _)| *code == 200);
    assert_eq!(ready.0, 503, "{health:?} {ready:?}");
    assert!(ready.1.contains("192.168.254.2:80"), "{ready:?}");

    // "The guest configured otherwise": dnsmasq on kvm-manager's bridge hands out VM_IP.
    let mut dnsmasq = pod
        .exec("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--port=0",
            "--interface=kvmbr0",
            "--bind-interfaces",
            "--dhcp-range=192.168.254.2,192.168.254.2,255.255.255.252,1h",
            "--dhcp-option=3,192.168.254.1",
            "--pid-file=",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            pod.path("dnsmasq.leases").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq in the pod");
    vm.wait_for_line("KVMTEST READY", BOOT);
    let (_, ready) = eventually(T, || probes(pod), |(_, (code, _))| *code == 200);
    assert!(ready.1.contains("answers on 192.168.254.2:80"), "{ready:?}");

    // With VNC_PASSWORD, the console is open to the cluster: VNC on the pod IP offers only
    // VNC authentication (2), so does RFB through /websockify, and the page connects from the
    // node once the password is typed into its prompt.
    vm.wait_for_line("console: VNC_PASSWORD is set", T);
    assert_eq!(vnc_banner(pod, Peer::Node), "RFB 003.008");
    let probe = ws_probe(pod, Peer::Node, &format!("http://{}:8080", pod.pod_ip));
    assert_eq!(probe["status"], 101, "{probe}");
    assert_eq!(probe["security"], serde_json::json!([2]), "{probe}");
    let probe = ws_probe(pod, Peer::Node, "http://evil.example");
    assert_eq!(probe["status"], 403, "a foreign Origin is refused: {probe}");
    let report = web_console(pod, Peer::Node, Some("kmh-pass"), "webconsole-password.png");
    assert_eq!(report["security"], serde_json::json!([2]), "{report}");
    assert_eq!(report["status"], "connected", "{report}");
    assert!(report["canvas"]["colors"].as_u64() > Some(1), "{report}");

    // qemu (like every child) starts with a minimal environment: neither the VNC password
    // nor the image URL is in its /proc/PID/environ.
    let environ = qemu_environ(&vm);
    assert!(environ.contains("PATH="), "{environ}");
    for secret in ["kmh-pass", "VNC_PASSWORD", "IMG_SOURCE", &cluster.image_url] {
        assert!(
            !environ.contains(secret),
            "{secret} in qemu's environment:\n{environ}"
        );
    }

    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    stop(&mut vm);
}

#[test]
fn without_a_password_the_console_answers_only_through_port_forward_and_idle_viewers_cannot_hold_it(
) {
    let Some(cluster) = Cluster::for_test("kml", "vm-loop") else {
        return;
    };
    let pod = &cluster.pod;
    let novnc = novnc_dir();
    let mut vm = cluster.start(&[
        ("NOVNC_DIR", &novnc),
        ("CONSOLE_IDLE_TIMEOUT", "4s"),
        ("SHUTDOWN_TIMEOUT", "2s"),
    ]);
    // The start log says which access model is in force and how to connect.
    let line = vm.wait_for_line("console: no VNC_PASSWORD", T);
    assert!(line.contains("kubectl port-forward"), "{line}");
    vm.wait_for_line("qemu started", BOOT);
    // From the pod's loopback (port-forward), VNC itself answers, without a password (None).
    let probe = eventually(
        T,
        || ws_probe(pod, Peer::PortForward, "http://127.0.0.1:8080"),
        |p| p["status"] == 101 && p.get("banner").is_some(),
    );
    assert_eq!(probe["banner"], "RFB 003.008", "{probe}");
    assert_eq!(probe["security"], serde_json::json!([1]), "{probe}");
    assert_eq!(vnc_banner(pod, Peer::PortForward), "RFB 003.008");

    // From another pod: no VNC server on TCP 5900 of the pod IP (and no NAT to the VM
    // either), no page, no noVNC files, no WebSocket. The probes and metrics still answer.
    let banner = vnc_banner(pod, Peer::Node);
    assert!(!banner.contains("RFB"), "VNC answered the node: {banner}");
    for path in ["/", "/novnc/core/rfb.js", "/websockify"] {
        let (code, body) = curl(pod, Peer::Node, path, &[]);
        assert_eq!(code, 403, "{path}: {body}");
        assert!(body.contains("kubectl port-forward"), "{path}: {body}");
    }
    let probe = ws_probe(pod, Peer::Node, &format!("http://{}:8080", pod.pod_ip));
    assert_eq!(probe["status"], 403, "{probe}");
    assert!(probe.get("banner").is_none(), "{probe}");
    assert_eq!(curl(pod, Peer::Node, "/healthz", &[]).0, 200);
    assert_eq!(curl(pod, Peer::Node, "/metrics", &[]).0, 200);

    // Through port-forward: the page and noVNC are served.
    let (code, body) = curl(pod, Peer::PortForward, "/", &[]);
    assert!(
        code == 200 && body.contains("kvm-manager console"),
        "{code}"
    );
    assert_eq!(
        curl(pod, Peer::PortForward, "/novnc/core/rfb.js", &[]).0,
        200
    );
    // A page of another origin cannot open the WebSocket, not even on loopback; nor can a
    // DNS-rebinding page (its Host is a domain name).
    let probe = ws_probe(pod, Peer::PortForward, "http://evil.example");
    assert_eq!(probe["status"], 403, "{probe}");
    let (code, _) = curl(
        pod,
        Peer::PortForward,
        "/",
        &["-H", "Host: rebind.evil.example:8080"],
    );
    assert_eq!(code, 403);

    // Eight viewers that send nothing: a ninth gets in at once (the longest idle one leaves,
    // close code 4001), the other seven are closed after CONSOLE_IDLE_TIMEOUT (4000), the
    // ninth keeps moving its mouse and stays, and a tenth gets in afterwards.
    let report = viewers(pod, Peer::PortForward, &["slots", "4"]);
    assert_eq!(report["ninth_status"], 101, "{report}");
    assert_eq!(
        report["ninth_handshake"],
        serde_json::json!(["RFB 003.008", [1], 0]),
        "{report}"
    );
    let idle = report["idle"].as_array().expect("idle viewers");
    assert_eq!(idle[0]["code"], 4001, "{report}");
    for viewer in &idle[1..] {
        assert_eq!(viewer["code"], 4000, "{report}");
        assert!(viewer["after"].as_f64() >= Some(3.5), "{report}");
    }
    assert_eq!(report["tenth_status"], 101, "{report}");
    assert_eq!(report["tenth_handshake"][0], "RFB 003.008", "{report}");
    assert_eq!(
        report["active"]["code"],
        serde_json::Value::Null,
        "a viewer with input is not idle: {report}"
    );

    // The guest may still be booting (it is not what this test is about): no exit code check.
    nix::sys::signal::kill(pid1(&vm), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    vm.wait(T);
}
