//! Pod directories shared into the guest (issue 24), by 9p and by virtio-fs: the guest reads
//! what the pod wrote, the pod sees what the guest wrote to a `:rw` share, a `:ro` share
//! refuses the guest's writes, and a ConfigMap-style directory updated by the kubelet's
//! `..data` symlink swap shows the new content in the guest without a restart.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::support::BIN;
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
    let left: Vec<String> = cluster
        .pod
        .pids()
        .iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "processes left in the pod: {left:?}");
}

/// Where scripts/deps unpacks cloud-init's Python modules (as tests/integration/configdrive.rs).
const CLOUD_INIT: &str = "/usr/local/lib/kvm-manager-test/cloud-init/usr/lib/python3/dist-packages";
const DATASOURCE_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/integration/cloud_init_datasource.py"
);

#[test]
fn cloud_init_reads_vendor_data_that_mounts_every_share_from_both_drive_formats() {
    // No root needed; xorriso and cloud-init's modules come from scripts/deps.
    for (format, seed) in [("config-2", "config_drive"), ("nocloud", "nocloud")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let iso = dir.path().join("drive.iso");
        std::fs::create_dir(dir.path().join("pet")).expect("pet dir");
        let out = std::process::Command::new(BIN)
            .args(["config-drive", "--output"])
            .arg(&iso)
            .env("CONFIG_DRIVE", format)
            .env("USERDATA", dir.path().join("userdata"))
            .env("METADATA", dir.path().join("metadata"))
            .env("PET_DIR", dir.path().join("pet"))
            .env("SHARES", "data=/data:rw,cm=/etc/app:ro")
            .env("LOG_LEVEL", "warn")
            .env_remove("VM_MAC")
            .output()
            .expect("run kvm-manager config-drive");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The network config names the NIC by the MAC persisted in PET_DIR.
        let host = nix::unistd::gethostname().expect("hostname");
        let state_file = dir
            .path()
            .join(format!("pet/{}.state.json", host.to_string_lossy()));
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state_file).expect("state")).expect("json");
        let mac = state["mac"].as_str().expect("mac").to_owned();
        let cloud = dir.path().join("cloud");
        let seed_dir = cloud.join("seed").join(seed);
        std::fs::create_dir_all(cloud.join("seed")).expect("seed dir");
        let extracted = std::process::Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&iso)
            .args(["-extract", "/"])
            .arg(&seed_dir)
            .output()
            .expect("xorriso");
        assert!(extracted.status.success(), "xorriso failed");
        let seen = std::process::Command::new("/usr/bin/python3")
            .arg(DATASOURCE_PY)
            .arg(format)
            .arg(&cloud)
            .arg(&mac)
            .env("PYTHONPATH", CLOUD_INIT)
            .output()
            .expect("python3");
        assert!(
            seen.status.success(),
            "cloud-init could not read the {format} drive: {}",
            String::from_utf8_lossy(&seen.stderr)
        );
        let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).expect("json");
        let vendor = seen["vendor_data"].as_str().unwrap_or_default();
        assert!(vendor.starts_with("#cloud-config"), "{format}: {seen}");
        // cloud-init's own YAML reading of the vendor-data it found.
        let yaml = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(vendor.as_bytes())?;
                child.wait_with_output()
            })
            .expect("python3 yaml");
        let parsed: serde_json::Value = serde_json::from_slice(&yaml.stdout).expect("yaml json");
        let commands: Vec<String> = parsed["bootcmd"]
            .as_array()
            .expect("bootcmd")
            .iter()
            .map(|c| c[2].as_str().expect("a command").to_owned())
            .collect();
        assert_eq!(commands.len(), 2, "{format}: {commands:?}");
        assert!(
            commands[0].contains("mount -t virtiofs data /mnt/data")
                && commands[1].contains("mount -t virtiofs -o ro cm /mnt/cm")
                && commands[1]
                    .contains("mount -t 9p -o trans=virtio,version=9p2000.L,ro cm /mnt/cm"),
            "{format}: {commands:?}"
        );
    }
}

#[test]
fn a_directory_of_mount_points_shares_each_subdirectory_under_its_name() {
    let Some(cluster) = Cluster::for_test("shdir", "vm-shdir") else {
        return;
    };
    let dir = cluster.pod.path("mounts");
    for sub in ["alpha", "beta", "..data"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mount point");
    }
    let shares = format!("{}:rw", dir.display());
    let mut args = cluster.pod.kvm_manager(
        &["qemu-args"],
        &cluster.env(&[("SHARES", shares.as_str()), ("SHARE_TRANSPORT", "9p")]),
    );
    assert!(args.wait(T).success(), "{}", args.output());
    let fsdevs: Vec<&String> = args
        .seen
        .iter()
        .filter(|a| a.starts_with("local,"))
        .collect();
    assert_eq!(fsdevs.len(), 2, "{:?}", args.seen);
    for (i, tag) in ["alpha", "beta"].iter().enumerate() {
        assert_eq!(
            *fsdevs[i],
            format!(
                "local,id=fs{i},path={}/{tag},security_model=none",
                dir.display()
            )
        );
        assert!(
            args.seen
                .contains(&format!("virtio-9p-pci,fsdev=fs{i},mount_tag={tag}")),
            "{:?}",
            args.seen
        );
    }
}

#[test]
fn in_passt_mode_too_a_dead_virtiofsd_stops_the_vm_with_exit_9() {
    let Some(cluster) = Cluster::for_test("shpst", "vm-shpst") else {
        return;
    };
    let binary = virtiofsd();
    let data = cluster.pod.path("share-data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("value"), "through-passt\n").expect("pod-side file");
    cluster.user_data("#cloud-config\n# kvmtest.share=data\n");
    let shares = format!("data={}:rw", data.display());
    let mut vm = cluster.start(&[
        ("NETWORK_MODE", "passt"),
        ("SHARES", shares.as_str()),
        ("SHARE_TRANSPORT", "virtiofs"),
        ("VIRTIOFSD", &binary),
    ]);
    vm.wait_for_line("KVMTEST share read tag=data content=through-passt", BOOT);
    vm.wait_for_line("KVMTEST READY", BOOT);
    for pid in pids_named(&cluster, "virtiofsd") {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill virtiofsd");
    }
    let status = vm.wait(T);
    assert_eq!(status.code(), Some(9), "{}", vm.output());
    let left: Vec<String> = cluster
        .pod
        .pids()
        .iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "processes left in the pod: {left:?}");
}
