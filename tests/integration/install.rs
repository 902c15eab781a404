//! Installing from an ISO (issue 20): `IMG_SOURCE` an installer ISO (known by its content)
//! gives a blank pet disk of `VM_DISK_SIZE` (required) and the ISO as a read-only CD-ROM after
//! the disk in the boot order. The ISO here is built in the test with xorriso: a UEFI El
//! Torito image (systemd-boot, the test guest's kernel with `kvmtest.install=1`) and the UEFI
//! test guest's disk as `disk.img`, which the guest copies onto the blank disk. The second
//! start boots the installed disk, without fetching the ISO again. `INSTALL_MEDIA` may be a
//! URL: fetched once into `IMAGE_DIR` (verified by `INSTALL_MEDIA_SHA256`), a further CD-ROM.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::vm::{field, guest_image, pet_state, Cluster, BOOT, T};

fn run(command: &mut Command) {
    let out = command.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the installer ISO at `iso` from the UEFI test guest.
fn build_iso(work: &Path, iso: &Path) {
    let uefi = guest_image().with_file_name("guest-uefi.qcow2");
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).expect("tree");
    let disk = tree.join("disk.img");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&uefi)
        .arg(&disk));
    // The El Torito EFI image: a small FAT with the guest's loader, kernel and initrd.
    let efi = tree.join("efi.img");
    run(Command::new("mkfs.vfat").arg("-C").arg(&efi).arg("24576"));
    let from = |name: &str| format!("::{name}");
    for (src, dst) in [
        ("EFI/BOOT/BOOTX64.EFI", "bootx64.efi"),
        ("vmlinuz", "vmlinuz"),
        ("initrd.gz", "initrd.gz"),
    ] {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&disk)
            .arg(from(src))
            .arg(work.join(dst)));
    }
    std::fs::write(
        work.join("loader.conf"),
        "default install.conf\ntimeout 0\n",
    )
    .expect("conf");
    std::fs::write(
        work.join("install.conf"),
        "title install\nlinux /vmlinuz\ninitrd /initrd.gz\noptions console=ttyS0,115200 quiet \
         panic=-1 kvmtest.install=1\n",
    )
    .expect("entry");
    run(Command::new("mmd").arg("-i").arg(&efi).args([
        "::EFI",
        "::EFI/BOOT",
        "::loader",
        "::loader/entries",
    ]));
    for (src, dst) in [
        ("bootx64.efi", "::EFI/BOOT/BOOTX64.EFI"),
        ("vmlinuz", "::vmlinuz"),
        ("initrd.gz", "::initrd.gz"),
        ("loader.conf", "::loader/loader.conf"),
        ("install.conf", "::loader/entries/install.conf"),
    ] {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&efi)
            .arg(work.join(src))
            .arg(dst));
    }
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", "KVMINSTALL"])
        .args(["-e", "efi.img", "-no-emul-boot", "-o"])
        .arg(iso)
        .arg(&tree));
}

#[test]
fn an_iso_installs_onto_a_blank_disk_and_the_next_start_boots_the_disk_without_fetching() {
    let Some(cluster) = Cluster::for_test("kmin", "vm-inst") else {
        return;
    };
    let pod = &cluster.pod;
    let work = pod.path("iso-build");
    // Served by the cluster's image server, beside the test guest; named like a disk, since
    // only the content says what it is.
    let name = format!("install-{}.img", std::process::id());
    let iso: PathBuf = guest_image().with_file_name(&name);
    build_iso(&work, &iso);
    let url = cluster.url_of(&name);
    // FIRMWARE unset: auto reads the ISO's El Torito catalog, which boots UEFI only.
    let env = [("IMG_SOURCE", url.as_str()), ("VM_MEMORY", "512")];

    // Without VM_DISK_SIZE: a clear configuration error.
    let mut vm = cluster.start(&env);
    let code = vm.wait(BOOT).code();
    let out = vm.output();
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("installer ISO") && out.contains("VM_DISK_SIZE"),
        "{out}"
    );

    let refused = out;

    let mut env = env.to_vec();
    env.push(("VM_DISK_SIZE", "128M"));
    let mut vm = cluster.start(&env);
    let done = vm.wait_for_line("KVMTEST install done", BOOT);
    assert!(field(&done, "dev").starts_with("/dev/sr"), "{done}");
    assert_eq!(vm.wait(T).code(), Some(0), "{}", vm.output());
    // auto decides at most once per start. The refused start may decide too: its overlay
    // error can end the preparation after the base was read and before the state with the
    // record was persisted, and then this start rightly decides again, from the same base.
    // The state file below is what must say uefi.
    let installing = vm.output();
    assert!(
        installing.matches("FIRMWARE=auto chose uefi").count() <= 1,
        "decided twice in one start:\n{installing}"
    );
    let out = format!("{refused}\n{installing}");
    assert!(
        out.contains("FIRMWARE=auto chose uefi"),
        "auto never decided:\n{out}"
    );
    assert!(
        out.contains("an ISO whose El Torito catalog boots UEFI only"),
        "{out}"
    );
    let state = pet_state(&pod.path("pet"), "vm-inst");
    assert_eq!(state["firmware"]["firmware"], "uefi", "{state}");
    let overlay = pod.path("pet/vm-inst.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .expect("qemu-img info");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(info["virtual-size"], 128 << 20, "{info}");
    assert!(info.get("backing-filename").is_none(), "not blank: {info}");

    // The second start: no download (the image server would hold it), the installed disk.
    cluster.close_gate();
    let mut vm = cluster.start(&env);
    let boot = vm.wait_for_line("KVMTEST boot count=", BOOT);
    assert_eq!(field(&boot, "count"), "1", "{boot}");
    assert!(
        !vm.output().contains("KVMTEST install"),
        "the installer ran again:\n{}",
        vm.output()
    );
    vm.wait_for_line("KVMTEST READY", BOOT);
    crate::vm::stop(&mut vm);
    cluster.open_gate();
    let _ = std::fs::remove_file(&iso);
}

/// A small ISO labelled `label` with one file, served beside the test guest; returns its path
/// (the caller removes it) and URL.
fn served_iso(cluster: &Cluster, label: &str) -> (PathBuf, String) {
    let tree = cluster.pod.path("media-tree");
    std::fs::create_dir_all(&tree).expect("tree");
    std::fs::write(tree.join("README.TXT"), "a driver disk\n").expect("file");
    let name = format!("media-{}.iso", std::process::id());
    let iso = guest_image().with_file_name(&name);
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-V", label, "-o"])
        .arg(&iso)
        .arg(&tree));
    (iso, cluster.url_of(&name))
}

#[test]
fn install_media_as_a_url_is_fetched_once_into_image_dir_and_the_guest_sees_a_second_cdrom() {
    let Some(cluster) = Cluster::for_test("kmim", "vm-media") else {
        return;
    };
    let pod = &cluster.pod;
    let (iso, url) = served_iso(&cluster, "KVMMEDIA");
    let name = iso
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let cached = pod.path("image").join(&name);
    let sum = Command::new("sha256sum")
        .arg(&iso)
        .output()
        .expect("sha256sum");
    let sha256 = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned();
    let env = [
        ("INSTALL_MEDIA", url.as_str()),
        ("INSTALL_MEDIA_SHA256", sha256.as_str()),
    ];

    // qemu-args shows where it will be: a CD-ROM from IMAGE_DIR, the URL's file name.
    let mut args = pod.kvm_manager(&["qemu-args"], &cluster.env(&env));
    assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
    let out = args.output();
    assert!(
        out.contains(&format!(
            "file={},if=none,id=media0,media=cdrom,readonly=on,format=raw",
            cached.display()
        )),
        "{out}"
    );

    let mut vm = cluster.start(&env);
    let cdroms = vm.wait_for_line("KVMTEST cdroms", BOOT);
    assert!(
        field(&cdroms, "list").contains("config-2") && field(&cdroms, "list").contains("KVMMEDIA"),
        "{cdroms}"
    );
    vm.wait_for_line("KVMTEST READY", BOOT);
    crate::vm::stop(&mut vm);
    assert!(
        vm.output().contains("INSTALL_MEDIA ready"),
        "{}",
        vm.output()
    );
    assert_eq!(
        std::fs::read(&cached).expect("cached in IMAGE_DIR"),
        std::fs::read(&iso).expect("iso")
    );

    // The second start: nothing is fetched (the image server would hold it), the same CD.
    cluster.close_gate();
    let mut vm = cluster.start(&env);
    let cdroms = vm.wait_for_line("KVMTEST cdroms", BOOT);
    assert!(field(&cdroms, "list").contains("KVMMEDIA"), "{cdroms}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    crate::vm::stop(&mut vm);
    cluster.open_gate();

    // A wrong digest is refused before the VM starts (exit 3), and the cached copy is not used.
    std::fs::remove_file(&cached).expect("uncache");
    let wrong = "0".repeat(64);
    let mut vm = cluster.start(&[
        ("INSTALL_MEDIA", url.as_str()),
        ("INSTALL_MEDIA_SHA256", wrong.as_str()),
    ]);
    assert_eq!(vm.wait(BOOT).code(), Some(3), "{}", vm.output());
    assert!(!cached.exists(), "a mismatching download was kept");
    let _ = std::fs::remove_file(&iso);
}
