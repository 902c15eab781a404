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
use crate::support::{require_root, BIN};
use crate::vm::{guest_image, http_get, pid1, Cluster, BOOT, T};

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

/// Opens the web console in headless Chromium from the node (webconsole.cjs); its JSON report.
fn web_console(pod: &Pod, password: Option<&str>, screenshot: &str) -> serde_json::Value {
    let png = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(screenshot);
    let mut command = pod.node("node");
    command
        .arg(format!("{HERE}/webconsole.cjs"))
        .arg(format!("http://{}:8080/", pod.pod_ip))
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
    if !require_root("probes_metrics_console_and_web_console_follow_the_vm_…") {
        return;
    }
    let cluster = Cluster::new("kmh", "vm-http");
    let pod = &cluster.pod;
    std::fs::write(
        pod.path("userdata").join("user-data"),
        "# kvmtest.ignore_acpi=1\n",
    )
    .expect("user-data");
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

    // The web console: no password, so RFB offers None (1); the guest's screen is drawn.
    let report = web_console(pod, None, "webconsole.png");
    assert_eq!(report["security"], serde_json::json!([1]), "{report}");
    assert_eq!(report["status"], "connected", "{report}");
    assert!(report["canvas"]["colors"].as_u64() > Some(1), "{report}");

    // noVNC is served from NOVNC_DIR, and nothing outside it.
    let (code, body) = http_get(pod, 8080, "/novnc/core/rfb.js");
    assert!(
        code == 200 && body.contains("export default class RFB"),
        "{code}"
    );
    let (code, _) = http_get(pod, 8080, "/novnc/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/hostname");
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
    if !require_root("with_no_dhcp_readiness_follows_the_guest_port_…") {
        return;
    }
    let cluster = Cluster::new("kmp", "vm-port");
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

    // With VNC_PASSWORD, RFB through /websockify offers only VNC authentication (2), and the
    // page connects once the password is typed into its prompt.
    let report = web_console(pod, Some("kmh-pass"), "webconsole-password.png");
    assert_eq!(report["security"], serde_json::json!([2]), "{report}");
    assert_eq!(report["status"], "connected", "{report}");
    assert!(report["canvas"]["colors"].as_u64() > Some(1), "{report}");

    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    nix::sys::signal::kill(pid1(&vm), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(vm.wait(T).code(), Some(0), "{}", vm.output());
}
