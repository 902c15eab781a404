//! Backups of the pet disk while the real test guest writes (issue 22): a full backup taken
//! while a counter is rewritten every 0.2 s, an incremental one holding what was written since,
//! a backup whose client is SIGKILLed and one into a full volume (neither leaves a
//! complete-looking backup, and the next incremental still holds every change), then the
//! restore: refused while the VM owns the pet, over an existing pet without `--force`, and for a
//! damaged backup; with `--force` it rebuilds a disk that passes `qemu-img check` and the
//! guest's own `fsck.fat` and boots with its counter intact and the data of the backup's moment
//! (and the same disk with a damaged FAT makes that fsck fail, so the check can fail). `POST /backup` answers only
//! the pod's loopback (or a token), and the `kvm_manager_backup_*` metrics count it all.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{names_in, Running, BIN};
use crate::vm::{field, http_get, stop, Cluster, BOOT, T};

/// A backup of the ~64 MiB test disk under a loaded TCG host: seconds, but be generous.
const BACKUP: Duration = Duration::from_secs(120);

/// `kvm-manager backup --to DIR [FLAG]` beside the VM, as `kubectl exec` runs it.
fn backup(cluster: &Cluster, dir: &Path, flag: Option<&str>) -> Output {
    let mut command = cluster.pod.exec(BIN);
    command
        .arg("backup")
        .arg("--to")
        .arg(dir)
        .args(flag)
        .envs(cluster.pod.volume_env());
    command.output().expect("run kvm-manager backup")
}

fn answer(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "backup failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the answer is JSON")
}

/// The highest `KVMTEST counter n=` seen so far.
fn last_counter(vm: &Running) -> u64 {
    vm.seen
        .iter()
        .filter_map(|l| l.split("KVMTEST counter n=").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Lets the VM's output catch up (the counter lines) for `d`.
fn drain(vm: &mut Running, d: Duration) {
    let _ = vm.try_wait_for_line("\u{0}never", d);
}

/// Writes `mib` MiB in the guest (its CGI); returns the file's sha256.
fn fill(cluster: &Cluster, mib: u32) -> String {
    let out = cluster
        .pod
        .node("curl")
        .args(["-s", "-m", "120"])
        .arg(format!(
            "http://{}:80/cgi-bin/fill?{mib}",
            cluster.pod.pod_ip
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.trim()
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("no sha256 from the guest's fill: {text:?}"))
        .to_owned()
}

/// `curl -X POST` to HOST:8080 PATH; the status code and body.
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

fn manifests(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.ends_with(".manifest.json"))
        .collect()
}

/// The pet disk's allocated data as `qemu-img map` sees it while the VM runs (`-U`): the
/// whole chain's (the base's and the overlay's data clusters: what the guest's disk holds)
/// and the overlay's own.
fn allocated(pet: &Path) -> (u64, u64) {
    let out = std::process::Command::new("qemu-img")
        .args(["map", "-U", "--output=json"])
        .arg(pet)
        .output()
        .expect("qemu-img map");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extents: Vec<Value> = serde_json::from_slice(&out.stdout).expect("qemu-img map JSON");
    let (mut chain, mut own) = (0, 0);
    for extent in extents.iter().filter(|e| e["data"] == true) {
        let length = extent["length"].as_u64().expect("length");
        chain += length;
        if extent["depth"] == 0 {
            own += length;
        }
    }
    (chain, own)
}

/// `qemu-io -c COMMAND` on a stopped VM's qcow2; its output.
fn qemu_io(disk: &Path, command: &str) -> String {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(disk)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("failed"),
        "{command}: {text}"
    );
    text
}

/// `len` bytes at `offset` of a qcow2 disk, from `qemu-io`'s `read -v` hex dump
/// (`0000abcd:  xx xx … xx  ascii`, 16 bytes a line).
fn read_bytes(disk: &Path, offset: u64, len: u64) -> Vec<u8> {
    let dump = qemu_io(disk, &format!("read -v {offset} {len}"));
    let bytes: Vec<u8> = dump
        .lines()
        .filter_map(|l| l.split_once(":  "))
        .flat_map(|(_, rest)| {
            rest.split_whitespace()
                .take(16)
                .map(|h| u8::from_str_radix(h, 16).expect("a hex byte"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(bytes.len() as u64, len, "{dump}");
    bytes
}

/// Damages the FAT16 filesystem of the test guest's (whole-disk) boot disk the way a torn
/// write of metadata would: 32 free clusters near the end marked used in both FATs, a lost
/// chain no file owns, which `fsck.fat` reports (and would reclaim). The disk still boots.
fn damage_fat(disk: &Path) {
    let boot = read_bytes(disk, 0, 64);
    let word = |at: usize| u64::from(u16::from_le_bytes([boot[at], boot[at + 1]]));
    let (sector, reserved, fats, fat_sectors) = (word(11), word(14), u64::from(boot[16]), word(22));
    assert!(
        fat_sectors > 0 && fats == 2,
        "a FAT16 boot sector: {boot:?}"
    );
    // Entry 32000 (2 bytes each), below the 32695 clusters of the 64 MiB filesystem.
    let entries = 32_000 * 2;
    for fat in 0..fats {
        let at = (reserved + fat * fat_sectors) * sector + entries;
        assert!(
            read_bytes(disk, at, 64).iter().all(|&b| b == 0),
            "the clusters to damage are free"
        );
        qemu_io(disk, &format!("write -P 0xff {at} 64"));
    }
}

/// A small tmpfs (a backup volume that fills up), unmounted when dropped.
struct SmallVolume(PathBuf);

impl SmallVolume {
    fn mount(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).expect("mountpoint");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(status.success(), "mount a tmpfs");
        Self(path)
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .status();
    }
}

/// `kvm-manager restore` as an init container would run it (the pod's hostname, PET_DIR).
fn restore(cluster: &Cluster, manifest: &Path, force: bool) -> (i32, String) {
    let mut args = vec!["restore", "--from", manifest.to_str().expect("utf-8")];
    if force {
        args.push("--force");
    }
    let mut run = cluster.pod.kvm_manager(&args, &[]);
    let status = run.wait(BACKUP);
    (status.code().unwrap_or(-1), run.output())
}

#[test]
fn a_running_vm_is_backed_up_full_and_incrementally_survives_failed_backups_and_restores() {
    let Some(cluster) = Cluster::for_test("kbk", "vm-backup") else {
        return;
    };
    cluster.user_data("#cloud-config\n# kvmtest.counter=1\n");
    let dir = cluster.pod.path("backup");
    std::fs::create_dir_all(&dir).expect("backup dir");
    let small = SmallVolume::mount(cluster.pod.path("small"), "4m");
    let mut vm = cluster.boot(&[("FREEZE_TIMEOUT", "30s")]);
    vm.wait_for_line("KVMTEST counter n=10", BOOT);
    vm.wait_for_line("KVMTEST agent dev=", BOOT);

    // (1) Full, while the counter runs.
    let before = last_counter(&vm);
    let full = answer(&backup(&cluster, &dir, Some("--full")));
    drain(&mut vm, Duration::from_secs(2));
    let after = last_counter(&vm) + 5;
    assert_eq!(full["kind"], "full", "{full}");
    assert_eq!(full["consistency"], "frozen", "the agent answers: {full}");
    let full_bytes = full["bytes_copied"].as_u64().expect("bytes");
    assert!(full_bytes > 0, "{full}");

    // (2) Incremental: about what was written since.
    let first_fill = fill(&cluster, 8);
    let incr = answer(&backup(&cluster, &dir, None));
    assert_eq!(incr["kind"], "incremental", "{incr}");
    let incr_bytes = incr["bytes_copied"].as_u64().expect("bytes");
    // The disk's allocated size at the incremental's moment: qemu-img map of the pet disk
    // (data clusters of the base and the overlay together, what the guest's disk holds).
    let pet = cluster.pod.path("pet").join("vm-backup.qcow2");
    let (disk_allocated, overlay_allocated) = allocated(&pet);
    let ratio = incr_bytes as f64 / disk_allocated as f64;
    eprintln!(
        "backup measurement: full copied {full_bytes} B, incremental after 8 MiB written copied \
         {incr_bytes} B: ratio incremental/full {:.3}; the disk's allocated data (qemu-img map, \
         base + overlay) {disk_allocated} B, the overlay's own {overlay_allocated} B: ratio \
         incremental/allocated {ratio:.3}",
        incr_bytes as f64 / full_bytes as f64
    );
    assert!(
        disk_allocated >= overlay_allocated && overlay_allocated >= 8 << 20,
        "the 8 MiB written are allocated in the overlay: {disk_allocated} {overlay_allocated}"
    );
    assert!(
        ratio < 0.75,
        "an incremental copies what changed, not the disk's allocated data: {ratio:.3} \
         ({incr_bytes} of {disk_allocated} B)"
    );
    assert!(
        (8 << 20..16 << 20).contains(&incr_bytes),
        "an incremental after 8 MiB written copies about 8 MiB: {incr}"
    );
    assert_eq!(incr["chain"].as_array().map(Vec::len), Some(2), "{incr}");

    // (3a) The client SIGKILLed while its backup starts: cancelled, nothing complete-looking.
    let second_fill = fill(&cluster, 4);
    assert_ne!(first_fill, second_fill);
    let complete = manifests(&dir);
    let mut client = cluster.pod.exec(BIN);
    // 256 KiB/s: the 4 MiB copy takes long enough to be cut short.
    client
        .args(["backup", "--rate-limit", "256K", "--to"])
        .arg(&dir)
        .envs(cluster.pod.volume_env())
        .process_group(0);
    // Only lines from now on count: the earlier backups said "backup starting" too.
    drain(&mut vm, Duration::from_secs(2));
    let earlier = std::mem::take(&mut vm.seen);
    let mut client = Running::spawn(&mut client);
    vm.wait_for_line("backup starting", BACKUP);
    vm.wait_for_line("\"status\":\"running\"", BACKUP);
    let group = Pid::from_raw(-i32::try_from(client.child.id()).expect("pid"));
    kill(group, Signal::SIGKILL).expect("SIGKILL the backup client");
    let _ = client.wait(T);
    let failed = vm.wait_for_line("backup failed", BACKUP);
    assert!(failed.contains("cancelled"), "{failed}");
    vm.seen.splice(0..0, earlier);
    assert_eq!(manifests(&dir), complete, "no new manifest after the kill");
    assert!(
        names_in(&dir).iter().all(|n| !n.starts_with('.')),
        "no partial file left: {:?}",
        names_in(&dir)
    );

    // (3b) A full backup volume: refused, nothing left there, the VM runs on.
    let out = backup(&cluster, &small.0, Some("--full"));
    assert!(!out.status.success(), "a full backup fit in 4 MiB?");
    assert!(
        manifests(&small.0).is_empty() && names_in(&small.0).is_empty(),
        "nothing complete-looking on the full volume: {:?}",
        names_in(&small.0)
    );
    let running = last_counter(&vm);
    vm.wait_for_line(&format!("KVMTEST counter n={}", running + 10), T);

    // The next backup is still incremental and holds the changes the failed ones did not take.
    let next = answer(&backup(&cluster, &dir, Some("--incremental")));
    assert_eq!(next["chain"].as_array().map(Vec::len), Some(3), "{next}");
    let next_manifest = PathBuf::from(next["manifest"].as_str().expect("path"));

    // (4) POST /backup: refused from the pod network without a token; from the pod's loopback
    // it starts one (202) that ends in the log and the metrics.
    let path = format!("/backup?mode=incremental&to={}", dir.display());
    let (code, body) = curl_post(&mut cluster.pod.node("curl"), &cluster.pod.pod_ip, &path);
    assert_eq!(code, 403, "{body}");
    drain(&mut vm, Duration::from_secs(1));
    let earlier = std::mem::take(&mut vm.seen);
    let (code, body) = curl_post(&mut cluster.pod.exec("curl"), "127.0.0.1", &path);
    assert_eq!(code, 202, "{body}");
    vm.wait_for_line("backup complete", BACKUP);
    vm.seen.splice(0..0, earlier);
    let (code, metrics) = http_get(&cluster.pod, 8080, "/metrics");
    assert_eq!(code, 200);
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(
        value("kvm_manager_backup_failures_total"),
        2.0,
        "the killed one and the full volume"
    );
    assert!(value("kvm_manager_backup_bytes_total") > (full_bytes + incr_bytes) as f64);
    assert!(value("kvm_manager_backup_last_success_timestamp_seconds") > 1.7e9);
    assert_eq!(value("kvm_manager_backup_running"), 0.0);

    // Restore: refused while the VM owns the pet.
    let (code, out) = restore(&cluster, &next_manifest, true);
    assert_eq!(code, 8, "restore beside a running VM: {out}");
    stop(&mut vm);
    let freeze_ms: Vec<&str> = vm
        .seen
        .iter()
        .filter(|l| l.contains("guest frozen while the backup job started"))
        .map(|l| l.rsplit("ms=").next().unwrap_or("?"))
        .collect();
    // The same disk copied by qemu-img with the VM stopped, for scale (not a benchmark).
    let started = Instant::now();
    let converted = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&pet)
        .arg(cluster.pod.path("converted.qcow2"))
        .status()
        .expect("qemu-img convert");
    assert!(converted.success());
    eprintln!(
        "backup measurement: full backup of the running VM {} ms (whole call, freeze and \
         checksums included) vs qemu-img convert of the stopped overlay {} ms; guest frozen \
         for (ms) {freeze_ms:?}",
        full["duration_ms"],
        started.elapsed().as_millis()
    );

    // Refused over an existing pet without --force, and for a damaged backup.
    let (code, out) = restore(&cluster, &next_manifest, false);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("--force"), "{out}");
    let mut damaged: Value =
        serde_json::from_str(&std::fs::read_to_string(&next_manifest).expect("read"))
            .expect("json");
    damaged["chain"][1]["sha256"] = Value::from("0".repeat(64));
    let damaged_path = dir.join("damaged.manifest.json");
    std::fs::write(&damaged_path, damaged.to_string()).expect("write");
    let (code, out) = restore(&cluster, &damaged_path, true);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("does not match"), "{out}");
    std::fs::remove_file(&damaged_path).expect("rm");

    // The real one: the chain of three onto the base.
    let started = Instant::now();
    let (code, out) = restore(&cluster, &next_manifest, true);
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "backup measurement: restore of a 3-file chain took {:?}",
        started.elapsed()
    );
    let check = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&pet)
        .output()
        .expect("qemu-img check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(
        !cluster
            .pod
            .path("pet")
            .join("vm-backup.qcow2.pre-restore")
            .exists(),
        "the old pet disk is gone once the restore is complete"
    );

    // It boots; the guest's own fsck finds nothing wrong (but the dirty bit a copy of a
    // mounted vfat carries); the counter is a value of the backups' moments, the data the
    // last one's.
    let mut vm = cluster.start(&[]);
    let fsck = vm.wait_for_line("KVMTEST fsck dev=/dev/vda", BOOT);
    eprintln!("backup measurement: the guest's fsck of the restored disk: {fsck}");
    assert_eq!(
        field(&fsck, "ok"),
        "1",
        "the restored disk is clean: {fsck}"
    );
    let start = vm.wait_for_line("KVMTEST counter start", BOOT);
    let from: u64 = field(&start, "from")
        .parse()
        .unwrap_or_else(|_| panic!("the counter is intact: {start}"));
    assert!(from >= before, "{from} < {before}: {start}");
    assert!(
        from > after,
        "the restored counter is the last backup's, later than the full's"
    );
    assert_eq!(field(&start, "cfill"), second_fill, "{start}");
    stop(&mut vm);

    // The guest's fsck can fail: the same disk with lost clusters in its FAT.
    damage_fat(&pet);
    let mut vm = cluster.start(&[]);
    let fsck = vm.wait_for_line("KVMTEST fsck dev=/dev/vda", BOOT);
    eprintln!("backup measurement: the guest's fsck of the damaged copy: {fsck}");
    assert_eq!(field(&fsck, "ok"), "0", "a damaged FAT: {fsck}");
    assert_ne!(field(&fsck, "findings"), "0", "{fsck}");
    stop(&mut vm);
}

#[test]
fn a_schedule_without_a_directory_and_a_backup_without_one_are_refused_naming_backup_dir() {
    let out = std::process::Command::new(BIN)
        .arg("backup")
        .env_remove("BACKUP_DIR")
        .env("BACKUP_SCHEDULE", "6h")
        .output()
        .expect("run kvm-manager");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("BACKUP_SCHEDULE") && stderr.contains("BACKUP_DIR"),
        "{stderr}"
    );

    let out = std::process::Command::new(BIN)
        .arg("backup")
        .env_remove("BACKUP_DIR")
        .env_remove("BACKUP_SCHEDULE")
        .output()
        .expect("run kvm-manager");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("BACKUP_DIR") && stderr.contains("--to"),
        "{stderr}"
    );
}

#[test]
fn the_schedule_backs_up_by_itself_keeps_the_newest_chains_and_restores_onto_a_fresh_volume() {
    let Some(cluster) = Cluster::for_test("kbs", "vm-sched") else {
        return;
    };
    let dir = cluster.pod.path("backup");
    std::fs::create_dir_all(&dir).expect("backup dir");
    let dir_text = dir.to_string_lossy().into_owned();
    let mut vm = cluster.boot(&[
        ("BACKUP_DIR", dir_text.as_str()),
        ("BACKUP_SCHEDULE", "1m"),
        ("BACKUP_FULL_EVERY", "1"),
        ("BACKUP_KEEP", "1"),
    ]);
    // Two timer ticks: two chains of one full backup each; the older one goes.
    let first = vm.wait_for_line("backup complete", Duration::from_secs(240));
    let only_first = manifests(&dir);
    assert_eq!(only_first.len(), 1, "{first}");
    let removed = vm.wait_for_line("removed an old backup file", Duration::from_secs(240));
    drain(&mut vm, Duration::from_secs(2));
    let left = manifests(&dir);
    assert_eq!(left.len(), 1, "{removed}\n{left:?}");
    assert_ne!(left, only_first, "the newer chain stays");
    let names = names_in(&dir);
    assert_eq!(
        names.iter().filter(|n| n.ends_with("-full.qcow2")).count(),
        1,
        "the old chain's file is gone too: {names:?}"
    );
    assert!(
        vm.output().contains("a full one every 1"),
        "the second one says why it is full:\n{}",
        vm.output()
    );
    stop(&mut vm);

    // Onto a fresh pet volume (no disk there): no --force needed.
    let pet = cluster.pod.path("pet").join("vm-sched.qcow2");
    std::fs::remove_file(&pet).expect("a fresh pet volume");
    let (code, out) = restore(&cluster, &dir.join(&left[0]), false);
    assert_eq!(code, 0, "{out}");
    let check = std::process::Command::new("qemu-img")
        .arg("check")
        .arg(&pet)
        .output()
        .expect("qemu-img check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
