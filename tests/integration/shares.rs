//! Pod directories shared into the guest (issue 24), by 9p and by virtio-fs: the guest reads
//! what the pod wrote, the pod sees what the guest wrote to a `:rw` share, a `:ro` share
//! refuses the guest's writes, and a ConfigMap-style directory updated by the kubelet's
//! `..data` symlink swap shows the new content in the guest without a restart.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::vm::{self, Cluster, BOOT, T};

/// A ConfigMap volume as the kubelet lays it out: `value -> ..data/value`, `..data -> ..GEN`.
fn config_map(dir: &Path, generation: &str, value: &str) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).expect("generation directory");
    std::fs::write(data.join("value"), value).expect("write the key");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..{generation}"), &tmp).expect("new ..data link");
    // The kubelet's atomic swap: rename the new link over the old one.
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    if !dir.join("value").exists() {
        symlink("..data/value", dir.join("value")).expect("key link");
    }
}

/// Boots the test guest with a `:rw` share `data` and a `:ro` ConfigMap share `cm` over
/// `transport` and checks what each side sees; returns the running VM.
fn shares_reach_the_guest(
    cluster: &Cluster,
    transport: &str,
    extra: &[(&str, &str)],
) -> crate::support::Running {
    let data = cluster.pod.path("share-data");
    let cm = cluster.pod.path("share-cm");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::create_dir_all(&cm).expect("cm dir");
    std::fs::write(data.join("value"), "from-pod\n").expect("pod-side file");
    config_map(&cm, "2026_12_02_22_00_00.1", "generation-1\n");
    cluster.user_data("#cloud-config\n# kvmtest.share=data,cm\n");
    let shares = format!("data={}:rw,cm={}:ro", data.display(), cm.display());
    let mut env = vec![("SHARES", shares.as_str()), ("SHARE_TRANSPORT", transport)];
    env.extend_from_slice(extra);
    let mut vm = cluster.start(&env);

    vm.wait_for_line(&format!("KVMTEST share tag=data fs={transport}"), BOOT);
    vm.wait_for_line("KVMTEST share write tag=data ok=1", T);
    vm.wait_for_line("KVMTEST share read tag=data content=from-pod", T);
    assert_eq!(
        std::fs::read_to_string(data.join("guest-wrote"))
            .expect("the guest's file on the pod side"),
        "written-by-guest\n"
    );

    vm.wait_for_line(&format!("KVMTEST share tag=cm fs={transport}"), T);
    vm.wait_for_line("KVMTEST share write tag=cm ok=0", T);
    assert!(!cm.join("guest-wrote").exists(), "a :ro share was written");
    vm.wait_for_line("KVMTEST share read tag=cm content=generation-1", T);

    config_map(&cm, "2026_12_02_22_05_00.2", "generation-2\n");
    vm.wait_for_line("KVMTEST share read tag=cm content=generation-2", T);
    vm
}

#[test]
fn nine_p_shares_read_write_refuse_read_only_writes_and_follow_a_config_map_update() {
    let Some(cluster) = Cluster::for_test("sh9p", "vm-sh9p") else {
        return;
    };
    let mut vm = shares_reach_the_guest(&cluster, "9p", &[]);
    vm.wait_for_line("KVMTEST READY", BOOT);
    vm::stop(&mut vm);
}

/// virtiofsd as `scripts/deps` installs it for the tests (`cargo install --root .cache/virtiofsd`).
fn virtiofsd() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/virtiofsd/bin/virtiofsd");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/deps (it builds virtiofsd)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// The host pids of the pod's processes whose name is `comm`.
fn pids_named(cluster: &Cluster, comm: &str) -> Vec<i32> {
    cluster
        .pod
        .pids()
        .iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

#[test]
fn virtio_fs_shares_behave_the_same_and_a_dead_virtiofsd_stops_the_vm_with_exit_9() {
    let Some(cluster) = Cluster::for_test("shfs", "vm-shfs") else {
        return;
    };
    let binary = virtiofsd();
    let mut vm = shares_reach_the_guest(&cluster, "virtiofs", &[("VIRTIOFSD", &binary)]);
    vm.wait_for_line("KVMTEST READY", BOOT);
    let daemons = pids_named(&cluster, "virtiofsd");
    assert!(daemons.len() >= 2, "one virtiofsd per share: {daemons:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemons[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill virtiofsd");
    vm.wait_for_line("KVMTEST powerdown", T);
    let status = vm.wait(T);
    assert_eq!(status.code(), Some(9), "{}", vm.output());
    assert!(
        vm.output().contains("virtiofsd for share"),
        "{}",
        vm.output()
    );
    for comm in ["virtiofsd", "qemu-system-x86", "kvm-manager"] {
        assert_eq!(
            pids_named(&cluster, comm),
            Vec::<i32>::new(),
            "{comm} left behind"
        );
    }
}
