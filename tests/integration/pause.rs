//! A full pet volume: qemu pauses the VM on ENOSPC; the probes, the metrics and the log say so;
//! once space is freed kvm-manager resumes the VM (QMP `cont`) and the guest's data is intact.
//!
//! `PET_DIR` is a small tmpfs mounted in the pod's own mount namespace, mostly taken by a
//! filler file; the guest is told to write more than is left (tests/guest/README.md).

use std::time::{Duration, Instant};

use crate::pod::Pod;
use crate::support::Running;
use crate::vm::{field, http_get, pid1, stop, Cluster, BOOT, T};

/// The pet volume, and how much of it the filler takes: about 16 MiB stay free for the
/// overlay, less than the guest writes (40 MiB) and less than kvm-manager's resume threshold
/// (32 MiB); deleting the filler frees 80 MiB, enough for the rest of the writes.
const VOLUME_MIB: u32 = 96;
const FILLER_MIB: u32 = 80;
const WRITE_MIB: u32 = 40;

/// `/healthz`, `/readyz` or `/metrics` until `ok` holds (the probes follow the VM within a
/// moment); returns the last answer.
fn poll_http(pod: &Pod, path: &str, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + T;
    loop {
        let (code, body) = http_get(pod, 8080, path);
        if ok(code, &body) || Instant::now() > deadline {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn paused_metric(metrics: &str, reason: &str) -> Option<String> {
    let prefix = format!("kvm_manager_vm_paused{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
}

fn start_on_a_small_pet_volume(cluster: &Cluster) -> Running {
    let setup = format!(
        r#"mount -t tmpfs -o size={VOLUME_MIB}m kvmtest-pet "$PET_DIR"
dd if=/dev/zero of="$PET_DIR/filler" bs=1M count={FILLER_MIB} status=none"#
    );
    cluster
        .pod
        .kvm_manager_after(&setup, &["run"], &cluster.env(&[]))
}

#[test]
fn a_full_pet_volume_pauses_the_vm_turns_the_probes_503_and_it_resumes_once_space_is_freed() {
    let Some(cluster) = Cluster::for_test("kmf", "vm-full") else {
        return;
    };
    let pod = &cluster.pod;
    cluster.user_data(&format!("#cloud-config\n# kvmtest.write={WRITE_MIB}\n"));
    let mut vm = start_on_a_small_pet_volume(&cluster);
    vm.wait_for_line("KVMTEST READY", BOOT);
    let (code, body) = poll_http(pod, "/readyz", |code, _| code == 200);
    assert_eq!(code, 200, "ready before the volume fills: {body}");

    // qemu stops the VM on ENOSPC; the log says why, at WARN.
    let paused = vm.wait_for_line("the VM is paused", BOOT);
    assert!(paused.contains("WARN"), "{paused}");
    assert!(paused.contains("no space left on PET_DIR"), "{paused}");
    assert!(
        !vm.output().contains("KVMTEST write done"),
        "the guest finished writing on a full volume:\n{}",
        vm.output()
    );
    let (code, body) = http_get(pod, 8080, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no space left on PET_DIR"), "{body}");
    let (code, body) = http_get(pod, 8080, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no space left on PET_DIR"), "{body}");
    let (_, metrics) = http_get(pod, 8080, "/metrics");
    assert_eq!(
        paused_metric(&metrics, "no-space").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(
        paused_metric(&metrics, "stopped").as_deref(),
        Some("0"),
        "{metrics}"
    );
    // Still full: a few polls later the VM is still paused, and no `cont` was tried.
    std::thread::sleep(Duration::from_secs(5));
    let (code, body) = http_get(pod, 8080, "/healthz");
    assert_eq!(code, 503, "still paused while the volume is full: {body}");
    assert!(
        !vm.output().contains("QMP cont"),
        "resumed on a full volume:\n{}",
        vm.output()
    );

    // Free the volume, inside the pod's mount namespace, as an operator would.
    let filler = format!(
        "/proc/{}/root{}/filler",
        pid1(&vm),
        pod.path("pet").display()
    );
    std::fs::remove_file(&filler).expect("delete the filler file");
    let resuming = vm.wait_for_line("resuming the VM (QMP cont)", T);
    assert!(resuming.contains("INFO"), "{resuming}");
    vm.wait_for_line("the VM runs again", T);

    // The guest's writes carry on where they stopped and read back intact.
    let done = vm.wait_for_line("KVMTEST write done", BOOT);
    assert_eq!(field(&done, "mib"), WRITE_MIB.to_string(), "{done}");
    assert_eq!(field(&done, "verified"), "1", "data lost:\n{}", vm.output());
    let (code, body) = poll_http(pod, "/healthz", |code, _| code == 200);
    assert_eq!(code, 200, "{body}");
    let (code, body) = poll_http(pod, "/readyz", |code, _| code == 200);
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = http_get(pod, 8080, "/metrics");
    assert_eq!(
        paused_metric(&metrics, "no-space").as_deref(),
        Some("0"),
        "{metrics}"
    );

    stop(&mut vm);
}
