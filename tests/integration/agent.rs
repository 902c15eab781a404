//! The QEMU guest agent with the real test guest (qemu-ga from Debian in its initramfs):
//! `/status` and the metrics show the guest, `READY_ON=agent`, freeze and thaw (the CLI over
//! the control socket, HTTP on loopback, refused from the pod IP, thawed by `FREEZE_TIMEOUT`),
//! `guest-shutdown` when the guest ignores ACPI, an agent that restarts after writing garbage
//! or dies, and a guest without an agent. Options reach the guest through comment lines in
//! user-data (tests/guest/README.md).

use std::os::unix::fs::PermissionsExt as _;
use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use serde_json::Value;

use crate::support::{require_root, Running, BIN};
use crate::vm::{http_get, pid1, Cluster, BOOT, T};

/// What `/status` and the probes answer must follow the agent within this (a 2 s poll, a 5 s
/// call deadline, a slow TCG guest).
const FOLLOW: Duration = Duration::from_secs(45);

fn user_data(cluster: &Cluster, options: &[&str]) {
    let lines: String = options.iter().map(|o| format!("# kvmtest.{o}\n")).collect();
    std::fs::write(
        cluster.pod.path("userdata").join("user-data"),
        format!("#cloud-config\n{lines}"),
    )
    .expect("user-data");
}

fn status(cluster: &Cluster) -> Value {
    let (code, body) = http_get(&cluster.pod, 8080, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// `/status` until `ok` holds; panics with the last document after `within`.
fn status_until(
    cluster: &Cluster,
    vm: &mut Running,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let doc = status(cluster);
        if ok(&doc) {
            return doc;
        }
        if Instant::now() > deadline {
            // Collect what the VM said meanwhile, for the message.
            let _ = vm.try_wait_for_line("\u{0}never", Duration::from_millis(100));
            panic!(
                "/status never got there:\n{doc:#}\noutput:\n{}",
                vm.output()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn metric<'a>(metrics: &'a str, series: &str) -> Option<&'a str> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

/// `curl -X POST` from the pod's own loopback (like `kubectl exec … curl`).
fn post_from_loopback(cluster: &Cluster, path: &str) -> (u16, String) {
    curl_post(&mut cluster.pod.exec("curl"), "127.0.0.1", path)
}

/// `curl -X POST` from the node to the pod IP (anyone on the pod network).
fn post_from_node(cluster: &Cluster, path: &str) -> (u16, String) {
    curl_post(&mut cluster.pod.node("curl"), &cluster.pod.pod_ip, path)
}

fn curl_post(curl: &mut std::process::Command, host: &str, path: &str) -> (u16, String) {
    let out = curl
        .args(["-s", "-m", "30", "-X", "POST", "-w", "\n%{http_code}"])
        .arg(format!("http://{host}:8080{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `kvm-manager freeze|thaw` beside the VM, as `kubectl exec` runs it.
fn control(cluster: &Cluster, subcommand: &str) -> Output {
    cluster
        .pod
        .exec(BIN)
        .arg(subcommand)
        .envs(cluster.pod.volume_env())
        .output()
        .expect("run kvm-manager freeze/thaw")
}

/// The highest `KVMTEST tick n=` seen so far.
fn last_tick(vm: &Running) -> u32 {
    vm.seen
        .iter()
        .filter_map(|l| l.split("KVMTEST tick n=").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Ticks stop while frozen: none past one in flight during `quiet`.
fn assert_ticks_stopped(vm: &mut Running, quiet: Duration, what: &str) -> u32 {
    let frozen_at = last_tick(vm);
    let too_far = format!("KVMTEST tick n={}", frozen_at + 2);
    assert!(
        vm.try_wait_for_line(&too_far, quiet).is_none(),
        "the guest kept writing while frozen ({what}):\n{}",
        vm.output()
    );
    last_tick(vm)
}

#[test]
fn the_agent_shows_the_guest_gates_readiness_freezes_and_thaws_and_shuts_an_acpi_deaf_guest_down() {
    if !require_root("the_agent_shows_the_guest_…") {
        return;
    }
    let cluster = Cluster::new("kag", "vm-agent");
    user_data(&cluster, &["tick=1", "ignore_acpi=1"]);
    let mut vm = cluster.start(&[
        ("READY_ON", "agent"),
        ("AGENT_POLL_INTERVAL", "2s"),
        ("FREEZE_TIMEOUT", "20s"),
        ("SHUTDOWN_TIMEOUT", "40s"),
    ]);
    vm.wait_for_line("KVMTEST boot", BOOT);
    let (code, body) = http_get(&cluster.pod, 8080, "/readyz");
    assert_eq!(code, 503, "ready before the agent answered: {body}");
    vm.wait_for_line("KVMTEST agent dev=", BOOT);
    let deadline = Instant::now() + FOLLOW;
    loop {
        let (code, body) = http_get(&cluster.pod, 8080, "/readyz");
        if code == 200 {
            assert!(body.contains("guest agent answers"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz: {code} {body}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The guest as its agent sees it: eth0's lease, the OS, the ticker's filesystem.
    let doc = status_until(&cluster, &mut vm, BOOT, |doc| {
        let eth0 = doc["guest"]["interfaces"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["name"] == "eth0"));
        let leased = eth0.is_some_and(|i| {
            i["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a == "192.168.254.2/30"))
        });
        let mounted = doc["guest"]["filesystems"]
            .as_array()
            .is_some_and(|all| all.iter().any(|f| f["mountpoint"] == "/mnt/tick"));
        leased && mounted
    });
    assert_eq!(doc["agent"]["state"], "connected", "{doc:#}");
    assert_eq!(doc["guest"]["os"]["name"], "kvmtest", "{doc:#}");
    assert!(
        doc["guest"]["agent_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("7.2")),
        "Debian 12's qemu-ga: {doc:#}"
    );
    assert_eq!(doc["phase"], "running", "{doc:#}");
    assert_eq!(doc["qemu"]["state"], "running", "{doc:#}");
    assert_eq!(doc["lease"]["held"], true, "{doc:#}");
    assert_eq!(doc["frozen"]["frozen"], false, "{doc:#}");
    let (_, metrics) = http_get(&cluster.pod, 8080, "/metrics");
    assert_eq!(
        metric(&metrics, "kvm_manager_guest_agent_up"),
        Some("1"),
        "{metrics}"
    );
    let kernel = doc["guest"]["os"]["kernel"].as_str().expect("kernel");
    let info =
        format!("kvm_manager_guest_info{{os=\"kvmtest\",version=\"1\",kernel=\"{kernel}\"}}");
    assert_eq!(metric(&metrics, &info), Some("1"), "{metrics}");
    let size = metric(
        &metrics,
        "kvm_manager_guest_filesystem_size_bytes{mountpoint=\"/mnt/tick\"}",
    );
    assert!(
        size.is_some_and(|s| s.parse::<u64>().is_ok_and(|b| b > 1_000_000)),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    // Nobody on the pod network may freeze it.
    for path in ["/freeze", "/thaw"] {
        let (code, body) = post_from_node(&cluster, path);
        assert_eq!(code, 403, "{path} from the pod IP: {body}");
    }

    // The sockets that change the VM are the pod owner's alone (and complete from the start:
    // bound in a private directory, so no staging directory is left beside them).
    let run = cluster.pod.path("run");
    for name in ["control.sock", "backup.sock", "console.sock"] {
        let meta = std::fs::symlink_metadata(run.join(name)).expect(name);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    let staging: Vec<_> = std::fs::read_dir(&run)
        .expect("RUNTIME_DIR")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bind"))
        .collect();
    assert!(staging.is_empty(), "{staging:?}");

    // `kvm-manager freeze` over the control socket: the guest's writes block.
    vm.wait_for_line("KVMTEST tick n=3", BOOT);
    let out = control(&cluster, "freeze");
    assert!(
        out.status.success(),
        "freeze: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("freeze answers JSON");
    assert_eq!(answer["frozen"], true, "{answer}");
    let doc = status(&cluster);
    assert_eq!(doc["frozen"]["frozen"], true, "{doc:#}");
    assert!(doc["frozen"]["since"].is_string(), "{doc:#}");
    let held = assert_ticks_stopped(&mut vm, Duration::from_secs(8), "kvm-manager freeze");
    let out = control(&cluster, "thaw");
    assert!(
        out.status.success(),
        "thaw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    vm.wait_for_line(&format!("KVMTEST tick n={}", held + 2), T);
    assert_eq!(status(&cluster)["frozen"]["frozen"], false);

    // POST /freeze on loopback, left alone: it thaws by itself after FREEZE_TIMEOUT.
    let (code, body) = post_from_loopback(&cluster, "/freeze");
    assert_eq!(code, 200, "{body}");
    let held = assert_ticks_stopped(&mut vm, Duration::from_secs(8), "POST /freeze");
    vm.wait_for_line("nobody thawed the guest within FREEZE_TIMEOUT", T);
    vm.wait_for_line(&format!("KVMTEST tick n={}", held + 2), T);
    assert_eq!(status(&cluster)["frozen"]["frozen"], false);

    // SIGTERM while frozen: thawed first; the guest ignores the power button; its agent shuts
    // it down in time.
    let out = control(&cluster, "freeze");
    assert!(
        out.status.success(),
        "freeze: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    vm.wait_for_line("guest filesystems thawed", T);
    vm.wait_for_line("KVMTEST powerdown ignored", T);
    vm.wait_for_line("KVMTEST powerdown agent", T);
    assert_eq!(vm.wait(T).code(), Some(0), "{}", vm.output());
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let auto_thaws = vm
        .seen
        .iter()
        .filter(|l| l.contains("nobody thawed the guest"))
        .count();
    assert_eq!(
        auto_thaws,
        1,
        "SIGTERM thawed, not FREEZE_TIMEOUT:\n{}",
        vm.output()
    );
}

#[test]
fn an_agent_that_writes_garbage_and_restarts_is_followed_and_one_that_dies_is_reported() {
    if !require_root("an_agent_that_writes_garbage_…") {
        return;
    }
    let cluster = Cluster::new("kgb", "vm-garbage");
    user_data(&cluster, &["agent_garbage=15", "agent_kill=60"]);
    let mut vm = cluster.start(&[("AGENT_POLL_INTERVAL", "2s")]);
    vm.wait_for_line("KVMTEST agent dev=", BOOT);
    status_until(&cluster, &mut vm, FOLLOW, |doc| {
        doc["agent"]["connected"] == true
    });

    vm.wait_for_line("KVMTEST agent garbage", T);
    let restarted = Instant::now();
    vm.wait_for_line("KVMTEST agent restarted", T);
    // Garbage from the guest and the restart: resynced, no crash, no hang.
    let doc = status_until(&cluster, &mut vm, FOLLOW, |doc| {
        doc["agent"]["connected"] == true
            && doc["agent"]["last_answer"].as_str().is_some_and(|t| {
                humantime::parse_rfc3339(t)
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < restarted.elapsed()))
            })
    });
    assert_eq!(doc["phase"], "running", "{doc:#}");

    vm.wait_for_line("KVMTEST agent killed", T);
    let doc = status_until(&cluster, &mut vm, FOLLOW, |doc| {
        doc["agent"]["connected"] == false
    });
    assert_eq!(doc["agent"]["state"], "no agent", "{doc:#}");
    let (_, metrics) = http_get(&cluster.pod, 8080, "/metrics");
    assert_eq!(
        metric(&metrics, "kvm_manager_guest_agent_up"),
        Some("0"),
        "{metrics}"
    );
    vm.wait_for_line("the guest agent stopped answering", T);

    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    assert_eq!(vm.wait(T).code(), Some(0), "{}", vm.output());
}

#[test]
fn a_guest_without_an_agent_is_no_agent_every_endpoint_answers_and_shutdown_keeps_its_timeout() {
    if !require_root("a_guest_without_an_agent_…") {
        return;
    }
    let cluster = Cluster::new("kna", "vm-noagent");
    user_data(&cluster, &["agent=0", "ignore_acpi=1"]);
    let mut vm = cluster.start(&[("AGENT_POLL_INTERVAL", "2s"), ("SHUTDOWN_TIMEOUT", "15s")]);
    vm.wait_for_line("KVMTEST agent off", BOOT);
    vm.wait_for_line("KVMTEST READY", BOOT);
    let doc = status_until(&cluster, &mut vm, FOLLOW, |doc| {
        doc["lease"]["held"] == true
    });
    assert_eq!(doc["agent"]["state"], "no agent", "{doc:#}");
    // Known from qemu (the port is closed), not from pings timing out: an idle guest without
    // an agent costs no wakeup.
    assert_eq!(
        doc["agent"]["error"], "no agent (the guest has not opened the agent's port)",
        "{doc:#}"
    );
    assert_eq!(doc["guest"], Value::Null, "{doc:#}");

    // Each answers within its deadline, none hangs on the silent channel.
    for path in ["/status", "/healthz", "/readyz", "/metrics"] {
        let asked = Instant::now();
        let (code, body) = http_get(&cluster.pod, 8080, path);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            asked.elapsed()
        );
    }
    let (code, body) = post_from_loopback(&cluster, "/freeze");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("did not answer"), "{body}");
    let out = control(&cluster, "freeze");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("guest agent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let started = Instant::now();
    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    assert_eq!(vm.wait(T).code(), Some(7), "{}", vm.output());
    // SHUTDOWN_TIMEOUT, then qemu's quit (5 s at most): never past it for the agent's sake.
    assert!(
        started.elapsed() < Duration::from_secs(22),
        "{:?}",
        started.elapsed()
    );
}

/// A Secret volume as the kubelet writes it: the keys in `..<timestamp>/`, `..data` linking to
/// it, and a visible link per key; an update makes a new directory and swaps `..data`.
fn write_secret(dir: &std::path::Path, version: u32, authorized_keys: &str) {
    let data = format!("..2026_12_02_{version}");
    std::fs::create_dir_all(dir.join(&data)).expect("mkdir secret data");
    std::fs::write(dir.join(&data).join("authorized_keys"), authorized_keys).expect("write keys");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&data, &tmp).expect("link ..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    let link = dir.join("authorized_keys");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/authorized_keys", &link).expect("link the key");
    }
}

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmSfqvL4Mrbx6AZ0kBQx1lDpRmk8c0AzDiKtZHzbQB first@test";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxbR3bx1AXu2bRCBgLyV4zEFxNUwHj0W5QUUy0YqkCM second@test";

#[test]
fn ssh_keys_from_a_mounted_secret_reach_the_guest_user_and_so_does_an_update_without_a_restart() {
    if !require_root("ssh_keys_from_a_mounted_secret_…") {
        return;
    }
    let cluster = Cluster::new("ksh", "vm-ssh");
    user_data(&cluster, &["keys_watch=1"]);
    let secret = cluster.pod.path("ssh-keys");
    write_secret(&secret, 1, &format!("{KEY_A}\n"));
    let secret_path = secret.to_string_lossy().into_owned();
    let mut vm = cluster.start(&[
        ("AGENT_POLL_INTERVAL", "2s"),
        ("SSH_AUTHORIZED_KEYS", secret_path.as_str()),
    ]);
    // No SSH_USER: the guest's UID 1000 user, `debian`.
    vm.wait_for_line(
        "KVMTEST authorized_keys user=debian comments=first@test",
        BOOT,
    );
    let added = vm.wait_for_line("SSH keys added to the guest", T);
    assert!(
        added.contains("user=\"debian\"") || added.contains("user=debian"),
        "{added}"
    );

    write_secret(&secret, 2, &format!("# both\n{KEY_A}\n{KEY_B}\n"));
    vm.wait_for_line(
        "KVMTEST authorized_keys user=debian comments=first@test,second@test",
        FOLLOW,
    );

    kill(pid1(&vm), Signal::SIGTERM).expect("SIGTERM to PID 1");
    assert_eq!(vm.wait(T).code(), Some(0), "{}", vm.output());
}
