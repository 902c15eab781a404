//! What another pod can do to `HTTP_PORT` (issue 17, finding 2): connections that send nothing,
//! or a request head a byte at a time, by the thousand. The VM is the tiny real guest, so
//! `/healthz` is the real liveness answer (qemu answers QMP). The clients are flood.py, run in
//! the node's namespace (another pod's view of the pod IP); the web-console viewer runs on
//! the pod's loopback, as `kubectl port-forward` connects.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::pod::Pod;
use crate::support::Running;
use crate::vm::{http_get, pid1, stop, Cluster, BOOT, T};

const FLOOD_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/flood.py");
/// The soft open-files limit a container usually starts with; the hard one stays ours.
const POD_SOFT_NOFILE: u64 = 1024;
/// README: idle connections are closed after 20 s, a request head must arrive within 10 s.
const IDLE_TIMEOUT: f64 = 20.0;
const HEADER_TIMEOUT: f64 = 10.0;
/// The kubelet's default probe timeout (the chart keeps it).
const PROBE_TIMEOUT: f64 = 1.0;
const FLOOD_SECONDS: u64 = 30;

/// The test's own hard open-files limit.
fn hard_nofile() -> u64 {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    hard
}

/// `kvm-manager run` with the test guest, under the open-files limits `soft`:`hard` (a
/// container runtime's are typically 1024 under a much higher hard limit).
fn start_like_a_container(cluster: &Cluster, soft: u64, hard: u64) -> Running {
    let inner = cluster.pod.kvm_manager_command(&["run"], &cluster.env(&[]));
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    Running::spawn(&mut command)
}

/// Waits until qemu runs and `/healthz` says so.
fn wait_until_healthy(cluster: &Cluster, vm: &mut Running) {
    // Booted in full: the guest watches its power button, so SIGTERM ends it cleanly.
    vm.wait_for_line("KVMTEST READY", BOOT);
    let deadline = Instant::now() + T;
    loop {
        let (code, body) = http_get(&cluster.pod, 8080, "/healthz");
        if code == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "/healthz: {code} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (soft, hard) "Max open files" of a process.
fn open_files_limit(pid: Pid) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "flood.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("flood.py JSON")
}

/// Runs flood.py's flood from the node against the pod for `seconds`; its report and the
/// highest RSS of `pid` seen meanwhile.
fn flood(pod: &Pod, pid: Pid, idle: u32, slow: u32, seconds: u64) -> (serde_json::Value, u64) {
    let mut flood = pod
        .node("python3")
        .arg(FLOOD_PY)
        .args(["flood", &pod.pod_ip, "8080"])
        .args([idle.to_string(), slow.to_string(), seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the flood");
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(seconds) + T;
    while flood.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the flood did not end");
        peak_rss = peak_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = json_of(&flood.wait_with_output().expect("flood output"));
    (report, peak_rss)
}

/// Prints the flood's numbers; asserts that every probe was answered 200 in time.
fn assert_probes_answered(report: &serde_json::Value, seconds: u64) {
    let probes = report["probes"].as_array().expect("probes");
    let worst = probes
        .iter()
        .map(|p| p["seconds"].as_f64().expect("seconds"))
        .fold(0.0, f64::max);
    let failed: Vec<_> = probes.iter().filter(|p| p["status"] != 200).collect();
    eprintln!(
        "flood: {} connections opened ({} at most at once), closed by the server: {}; \
         {} probes of /healthz, worst latency {worst:.3} s, failed: {failed:?}",
        report["opened"],
        report["max_open"],
        report["closed_by_server"],
        probes.len(),
    );
    assert!(failed.is_empty(), "every probe answered 200: {failed:?}");
    assert!(
        probes.len() as u64 >= seconds - 2,
        "one probe a second: {probes:?}"
    );
    assert!(
        worst <= PROBE_TIMEOUT,
        "every probe answered within the kubelet's {PROBE_TIMEOUT} s: worst {worst:.3} s"
    );
}

#[test]
fn a_flood_of_idle_and_slowloris_connections_from_another_pod_leaves_healthz_answering_and_memory_returned(
) {
    let Some(cluster) = Cluster::for_test("kmf", "vm-flood") else {
        return;
    };
    let pod = &cluster.pod;
    let hard = hard_nofile();
    assert!(
        hard > 2 * 2500,
        "the test needs a hard open-files limit above 5000, not {hard}"
    );
    let mut vm = start_like_a_container(&cluster, POD_SOFT_NOFILE, hard);
    wait_until_healthy(&cluster, &mut vm);
    let pid = pid1(&vm);

    let (soft, hard) = open_files_limit(pid);
    eprintln!("open files: soft {soft}, hard {hard} (started with soft {POD_SOFT_NOFILE})");
    assert_eq!(
        soft, hard,
        "the soft open-files limit is raised to the hard one"
    );

    // The idle footprint, once every path a probe or a scrape takes has been used.
    for path in ["/healthz", "/readyz", "/metrics", "/healthz"] {
        http_get(pod, 8080, path);
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(pid);

    let (report, peak_rss) = flood(pod, pid, 2000, 500, FLOOD_SECONDS);
    assert_probes_answered(&report, FLOOD_SECONDS);

    // Memory comes back once the flood is over.
    let deadline = Instant::now() + T;
    let after_rss = loop {
        let rss = rss_kib(pid);
        if rss <= 2 * idle_rss || Instant::now() > deadline {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("VmRSS: idle {idle_rss} KiB, peak {peak_rss} KiB, after {after_rss} KiB");
    assert!(
        after_rss <= 2 * idle_rss,
        "RSS after the flood ({after_rss} KiB) is within 2x idle ({idle_rss} KiB)"
    );
    let (code, body) = http_get(pod, 8080, "/healthz");
    assert_eq!(code, 200, "{body}");

    stop(&mut vm);
}

#[test]
fn at_the_connection_cap_idle_connections_are_shed_for_new_ones_and_it_is_logged_rate_limited() {
    let Some(cluster) = Cluster::for_test("kmc", "vm-cap") else {
        return;
    };
    let pod = &cluster.pod;
    // 256 open files: a cap of 128 connections (half the limit).
    let mut vm = start_like_a_container(&cluster, 256, 256);
    wait_until_healthy(&cluster, &mut vm);
    let pid = pid1(&vm);
    vm.wait_for_line("max_connections=128", T);

    let seconds = 15;
    let (report, _) = flood(pod, pid, 400, 0, seconds);
    assert_probes_answered(&report, seconds);
    assert!(
        report["closed_by_server"]["quiet"].as_u64() > Some(0),
        "connections that never sent a byte were shed: {report}"
    );

    stop(&mut vm);
    let warnings: Vec<&String> = vm
        .seen
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("to admit new ones"))
        .collect();
    eprintln!("shed warnings: {warnings:#?}");
    assert!(!warnings.is_empty(), "shedding is logged: {}", vm.output());
    assert!(
        warnings.len() as u64 <= seconds / 10 + 2,
        "at most one shed warning per 10 s: {warnings:#?}"
    );
}

#[test]
fn slow_request_heads_and_idle_connections_are_closed_but_a_web_console_viewer_is_not() {
    let Some(cluster) = Cluster::for_test("kml", "vm-linger") else {
        return;
    };
    let pod = &cluster.pod;
    let mut vm = cluster.start(&[]);
    wait_until_healthy(&cluster, &mut vm);

    // A viewer that sends nothing for longer than both timeouts together.
    let hold = IDLE_TIMEOUT + HEADER_TIMEOUT + 2.0;
    let viewer = pod
        .exec("python3")
        .arg(FLOOD_PY)
        .args(["viewer", "8080"])
        .arg(hold.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the viewer");
    let linger = pod
        .node("python3")
        .arg(FLOOD_PY)
        .args(["linger", &pod.pod_ip, "8080"])
        .output()
        .expect("run linger");
    let lifetimes = json_of(&linger);
    let viewer = json_of(&viewer.wait_with_output().expect("viewer output"));
    eprintln!("server closed after (s): {lifetimes}; web console viewer: {viewer}");

    let lifetime = |kind: &str| {
        lifetimes[kind]
            .as_f64()
            .unwrap_or_else(|| panic!("the server never closed the {kind} connection: {lifetimes}"))
    };
    let slow = lifetime("slow");
    assert!(
        (HEADER_TIMEOUT - 1.0..HEADER_TIMEOUT + 15.0).contains(&slow),
        "a request head a byte a second is cut off after {HEADER_TIMEOUT} s: {slow}"
    );
    for kind in ["quiet", "kept"] {
        let idle = lifetime(kind);
        assert!(
            (IDLE_TIMEOUT - 1.0..IDLE_TIMEOUT + 15.0).contains(&idle),
            "a {kind} idle connection is closed after {IDLE_TIMEOUT} s: {idle}"
        );
    }
    assert_eq!(viewer["status"], 101, "{viewer}");
    assert_eq!(viewer["security"], serde_json::json!([1]), "{viewer}");
    assert_eq!(
        viewer["update_type"], 0,
        "the viewer still gets the screen after {hold} s without a word: {viewer}"
    );
    stop(&mut vm);
}
