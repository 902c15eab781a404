//! One owner per pet (issue 16, findings 1 and 2): a second `run`, or a `kubectl exec`-style
//! `image` beside a running VM, is refused with exit 8 and changes nothing while the guest
//! keeps writing; racing first starts agree on one instance id; a killed overlay creation's
//! temporary file is removed at the next start.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pod::Pod;
use crate::support::{names_in, require_root, Running, BIN};
use crate::vm::{field, guest_image, http_get, pet_state, pid1, stop, Cluster, BOOT, T};

/// "Another kvm-manager owns this pet".
const OWNED: i32 = 8;

/// The virtual size in a qcow2 header (bytes 24..32, big-endian).
fn qcow2_size(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("read the overlay");
    u64::from_be_bytes(bytes[24..32].try_into().expect("8 bytes"))
}

fn instance_id(pet: &Path, hostname: &str) -> String {
    pet_state(pet, hostname)["instance_id"]
        .as_str()
        .expect("an instance_id")
        .to_owned()
}

/// What the process's descriptors point at.
fn open_files(pid: &str) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn a_second_run_and_an_exec_image_beside_a_running_vm_exit_8_and_the_guest_keeps_writing() {
    let Some(cluster) = Cluster::for_test("kmpo", "vm-pet") else {
        return;
    };
    let pod = &cluster.pod;
    cluster.user_data("#cloud-config\n# kvmtest.write=8\n");
    let mut vm = cluster.start(&[]);
    vm.wait_for_line("KVMTEST write mib=1", BOOT);

    let pet = pod.path("pet");
    let overlay = pet.join("vm-pet.qcow2");
    let size = qcow2_size(&overlay);
    let state = std::fs::read(pet.join("vm-pet.state.json")).expect("state");
    let files = names_in(&pet);

    // `kubectl exec POD -- kvm-manager image` with a larger disk: the running container's
    // namespaces (hostname, mounts, network, PIDs) and environment.
    let mut exec = Command::new("nsenter");
    exec.args(["-t", &pid1(&vm).to_string(), "-m", "-u", "-n", "-p", "--"])
        .arg(BIN)
        .arg("image")
        .envs(pod.volume_env())
        .env("IMG_SOURCE", &cluster.image_url)
        .env("VM_DISK_SIZE", "1G");
    let mut image = Running::spawn(&mut exec);
    let code = image.wait(T).code();
    assert_eq!(code, Some(OWNED), "{}", image.output());
    for holder in [
        "owns this pet",
        "vm-pet.lock",
        "hostname=vm-pet",
        "command=run",
    ] {
        assert!(
            image.output().contains(holder),
            "{holder:?} not in:\n{}",
            image.output()
        );
    }

    // A second pod with the same hostname and PET_DIR (a misconfigured StatefulSet).
    let mut second = cluster.start(&[("VM_DISK_SIZE", "1G")]);
    let code = second.wait(T).code();
    assert_eq!(code, Some(OWNED), "{}", second.output());
    assert!(
        second.output().contains("command=run"),
        "{}",
        second.output()
    );

    assert_eq!(qcow2_size(&overlay), size, "the overlay was grown");
    assert_eq!(
        std::fs::read(pet.join("vm-pet.state.json")).expect("state"),
        state,
        "the state file changed"
    );
    assert_eq!(
        names_in(&pet),
        files,
        "files appeared or vanished in PET_DIR"
    );

    let done = vm.wait_for_line("KVMTEST write done", BOOT);
    assert_eq!(field(&done, "verified"), "1", "{done}");
    assert_eq!(field(&done, "mib"), "8", "{done}");
    assert!(
        !vm.output().contains("write failed"),
        "the guest saw a write error:\n{}",
        vm.output()
    );
    let (code, body) = http_get(pod, 8080, "/healthz");
    assert_eq!(code, 200, "{body}");

    // PID 1 holds the lock; no child (qemu) inherited it, so none can outlive kvm-manager
    // holding the pet.
    let lock = pet.join("vm-pet.lock");
    let holders: Vec<String> = pod
        .pids()
        .into_iter()
        .filter(|pid| open_files(pid).contains(&lock))
        .collect();
    assert_eq!(holders, [pid1(&vm).to_string()], "holders of {lock:?}");

    stop(&mut vm);
    let check = Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&overlay)
        .output()
        .expect("qemu-img check");
    assert!(
        check.status.success(),
        "the overlay is damaged: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(qcow2_size(&overlay), size);
}

#[test]
fn simultaneous_first_starts_agree_on_one_instance_id_and_the_state_keeps_it() {
    if !require_root("simultaneous_first_starts_agree_…") {
        return;
    }
    // Every process is PID 1 of its own PID namespace, as in a pod: a PID-derived temporary
    // name would be the same for all of them.
    let pod = Pod::new("kmpr", "vm-race");
    std::fs::write(pod.path("userdata").join("user-data"), "#cloud-config\n").expect("ud");
    let source = guest_image().to_string_lossy().into_owned();
    let env = [("IMG_SOURCE", source.as_str()), ("CONFIG_DRIVE", "nocloud")];
    let isos: Vec<_> = (0..4)
        .map(|i| pod.path("run").join(format!("drive{i}.iso")))
        .collect();
    let mut starts: Vec<(Option<&Path>, Running)> = Vec::new();
    for iso in &isos {
        let iso_arg = iso.to_string_lossy().into_owned();
        starts.push((
            Some(iso.as_path()),
            pod.kvm_manager(&["config-drive", "--output", &iso_arg], &env),
        ));
        starts.push((None, pod.kvm_manager(&["image"], &env)));
    }
    let mut succeeded = 0;
    for (_, start) in &mut starts {
        match start.wait(T).code() {
            Some(0) => succeeded += 1,
            Some(OWNED) => assert!(
                start.output().contains("owns this pet"),
                "{}",
                start.output()
            ),
            other => panic!("exit {other:?}, neither 0 nor 8:\n{}", start.output()),
        }
    }
    assert!(succeeded >= 1, "nobody got the pet");

    let pet = pod.path("pet");
    let id = instance_id(&pet, "vm-race");
    for iso in starts.iter().filter_map(|(iso, _)| *iso) {
        if iso.exists() {
            let bytes = std::fs::read(iso).expect("read the ISO");
            assert!(
                contains(&bytes, &id),
                "{} booted with another instance id than the state's {id}",
                iso.display()
            );
        }
    }
    let leftovers: Vec<_> = names_in(&pet)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The next start (a restart) sees the same id.
    let again = pod.path("run").join("again.iso");
    let mut restart = pod.kvm_manager(
        &["config-drive", "--output", &again.to_string_lossy()],
        &env,
    );
    assert_eq!(restart.wait(T).code(), Some(0), "{}", restart.output());
    assert!(contains(&std::fs::read(&again).expect("ISO"), &id));
    assert_eq!(instance_id(&pet, "vm-race"), id, "the state file changed");
}

#[test]
fn a_killed_overlay_creation_and_state_write_leave_nothing_after_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image_dir, pet) = (dir.path().join("image"), dir.path().join("pet"));
    std::fs::create_dir_all(&pet).expect("pet dir");
    let host = nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned();
    // What kills mid-write left: the old PID-derived names and the new random ones.
    let planted = [
        format!(".{host}.qcow2.creating1"),
        format!(".{host}.qcow2.creatingq7Rt0xZa"),
        format!(".{host}.state.json.tmp1"),
    ];
    for name in &planted {
        std::fs::write(pet.join(name), b"half written").expect("plant");
    }
    let output = image_in(&image_dir, &pet, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(
        names_in(&pet),
        [
            format!("{host}.lock"),
            format!("{host}.qcow2"),
            format!("{host}.state.json"),
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains("removed a temporary file left by a killed start"),
        "{stderr}"
    );
    // The lock file is released with the process: the next start takes it again.
    let again = image_in(&image_dir, &pet, &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// `kvm-manager image` in `pet` (the machine's hostname), with `extra` settings.
fn image_in(image_dir: &Path, pet: &Path, extra: &[(&str, &str)]) -> std::process::Output {
    Command::new("timeout")
        .arg("120")
        .arg(BIN)
        .arg("image")
        .env("IMG_SOURCE", guest_image())
        .env("IMAGE_DIR", image_dir)
        .env("PET_DIR", pet)
        .envs(extra.iter().copied())
        .output()
        .expect("run kvm-manager image")
}

#[test]
fn an_overlay_that_a_qemu_has_open_is_never_grown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image_dir, pet) = (dir.path().join("image"), dir.path().join("pet"));
    let first = image_in(&image_dir, &pet, &[]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    let overlay = PathBuf::from(
        String::from_utf8_lossy(&first.stdout)
            .lines()
            .nth(1)
            .expect("the overlay path"),
    );
    let size = qcow2_size(&overlay);

    // Another qemu, not ours (no kvm-manager lock), with the overlay open read-write: it holds
    // qemu's OFD image locks until it ends.
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "sleep 60000"])
        .arg(&overlay)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io (qemu-utils)");
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&overlay).expect("stat"));
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_to_string("/proc/locks")
        .expect("/proc/locks")
        .lines()
        .any(|l| l.contains("OFDLCK") && l.contains(&format!(":{ino} ")))
    {
        assert!(std::time::Instant::now() < deadline, "qemu-io took no lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let refused = image_in(&image_dir, &pet, &[("VM_DISK_SIZE", "1G")]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("is in use") && stderr.contains("qemu's image locking"),
        "{stderr}"
    );
    assert_eq!(qcow2_size(&overlay), size, "grown under a running qemu");

    let grown = image_in(&image_dir, &pet, &[("VM_DISK_SIZE", "1G")]);
    assert!(
        grown.status.success(),
        "{}",
        String::from_utf8_lossy(&grown.stderr)
    );
    assert_eq!(qcow2_size(&overlay), 1 << 30);
}

/// Issue 18, item 1: a PET_DIR that cannot be created is a PET_DIR problem, exit 3, in `run`
/// as in `image` (not "could not create RUNTIME_DIR", exit 6), and nothing is started.
#[test]
fn an_unusable_pet_dir_is_named_and_exits_3_in_run_and_in_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("write");
    // No directory can be made beneath a regular file, not even by root.
    let pet = file.join("pet");
    for subcommand in ["run", "image"] {
        let output = Command::new("timeout")
            .arg("60")
            .arg(BIN)
            .arg(subcommand)
            .env("IMG_SOURCE", "http://127.0.0.1:9/never-fetched.qcow2")
            .env("IMAGE_DIR", dir.path().join("image"))
            .env("PET_DIR", &pet)
            .env("RUNTIME_DIR", dir.path().join("run"))
            .env("HTTP_PORT", "0")
            .output()
            .expect("run kvm-manager");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{subcommand}: {stderr}");
        assert!(
            stderr.contains("could not create PET_DIR"),
            "{subcommand}: {stderr}"
        );
        assert!(!stderr.contains("RUNTIME_DIR"), "{subcommand}: {stderr}");
    }
}
