//! UEFI firmware (issue 20): the UEFI test guest boots with `FIRMWARE=uefi` on q35, reads its
//! config drive, and a variable it writes is still there after a container restart; the
//! firmware a VM first booted with is kept, and a change is refused with exit 2 unless
//! `FIRMWARE_RESET=1`. `FIRMWARE=auto` (the default) decides at the first boot from the base
//! image: an ESP-only GPT disk boots OVMF on q35, the (hybrid) test guest SeaBIOS on pc, and a
//! pet that booted BIOS stays BIOS when its base becomes UEFI-only.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::vm::{field, guest_image, pet_state as state, stop, Cluster, BOOT, T};

/// A configuration error.
const CONFIG: i32 = 2;

fn uefi_image_url(cluster: &Cluster) -> String {
    variant_url(cluster, "uefi")
}

/// The URL of `guest-NAME.qcow2`, built beside the test guest.
fn variant_url(cluster: &Cluster, name: &str) -> String {
    cluster.url_of(&format!("guest-{name}.qcow2"))
}

#[test]
fn a_uefi_guest_reads_its_config_drive_and_keeps_its_variables_across_a_restart() {
    let Some(cluster) = Cluster::for_test("kmfw", "vm-uefi") else {
        return;
    };
    let url = uefi_image_url(&cluster);
    let env = [("IMG_SOURCE", url.as_str()), ("FIRMWARE", "uefi")];
    cluster.user_data("#cloud-config\n# kvmtest.efivar=kept-1\n");
    let mut vm = cluster.start(&env);
    let efi = vm.wait_for_line("KVMTEST efi ", BOOT);
    assert_eq!(field(&efi, "kvmtest"), "", "{efi}");
    vm.wait_for_line("KVMTEST efivar written=kept-1", T);
    let drive = vm.wait_for_line("KVMTEST configdrive", BOOT);
    assert_eq!(field(&drive, "label"), "config-2", "{drive}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);

    let pet = cluster.pod.path("pet");
    let vars = pet.join("vm-uefi.vars");
    let template = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").expect("ovmf installed");
    assert_ne!(
        std::fs::read(&vars).expect("the variable store"),
        template,
        "the guest's variable went to the template's copy"
    );
    let recorded = state(&pet, "vm-uefi");
    assert_eq!(recorded["firmware"]["firmware"], "uefi", "{recorded}");
    assert_eq!(recorded["firmware"]["machine"], "q35", "{recorded}");

    // A container restart: the same store, so the variable is there.
    let mut vm = cluster.start(&env);
    let efi = vm.wait_for_line("KVMTEST efi ", BOOT);
    assert_eq!(field(&efi, "kvmtest"), "kept-1", "{efi}");
    assert_eq!(field(&efi, "secureboot"), "0", "{efi}");
    assert!(
        vm.output().contains("UEFI variable store reused"),
        "{}",
        vm.output()
    );
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);
}

/// A pet whose state predates firmware records (it booted SeaBIOS on `pc`), with its disk: an
/// overlay of the base that `url` puts in IMAGE_DIR (made from `base`, the same image here).
/// Returns the state file's text.
fn old_pet(pod: &crate::pod::Pod, hostname: &str, base: &Path, url: &str) -> String {
    let pet = pod.path("pet");
    std::fs::create_dir_all(&pet).expect("PET_DIR");
    let old_state =
        r#"{"mac":"52:54:00:aa:bb:cd","instance_id":"0e3c8a52-6a9d-4bb4-a2b1-3f1de2f0b0c2"}"#;
    std::fs::write(pet.join(format!("{hostname}.state.json")), old_state).expect("state");
    let overlay = pet.join(format!("{hostname}.qcow2"));
    let name = url.rsplit('/').next().expect("a file name");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(&overlay));
    run(Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b"])
        .arg(pod.path("image").join(name))
        .arg(&overlay));
    old_state.to_owned()
}

#[test]
fn changing_the_firmware_of_an_existing_vm_exits_2_unless_firmware_reset_is_set() {
    let Some(cluster) = Cluster::for_test("kmfx", "vm-old") else {
        return;
    };
    let pod = &cluster.pod;
    // A pet whose state predates firmware records: it booted SeaBIOS on pc.
    let pet = pod.path("pet");
    let old_state = old_pet(pod, "vm-old", &guest_image(), &cluster.image_url);

    let mut vm = cluster.start(&[("FIRMWARE", "uefi")]);
    assert_eq!(vm.wait(T).code(), Some(CONFIG), "{}", vm.output());
    let out = vm.output();
    for words in [
        "FIRMWARE=bios MACHINE=pc",
        "FIRMWARE=uefi MACHINE=q35",
        "FIRMWARE_RESET=1",
    ] {
        assert!(out.contains(words), "{words:?} not in:\n{out}");
    }
    assert!(!pet.join("vm-old.vars").exists(), "a store was created");
    assert_eq!(
        std::fs::read_to_string(pet.join("vm-old.state.json")).expect("state"),
        old_state,
        "the state changed"
    );

    // The same pet as it was keeps working: qemu-args shows BIOS on pc.
    let mut args = pod.kvm_manager(&["qemu-args"], &cluster.env(&[]));
    assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
    assert!(args.output().contains("pc,accel=tcg"), "{}", args.output());

    // FIRMWARE_RESET=1 says yes to the switch: qemu-args shows OVMF (and changes nothing).
    let mut args = pod.kvm_manager(
        &["qemu-args"],
        &cluster.env(&[("FIRMWARE", "uefi"), ("FIRMWARE_RESET", "1")]),
    );
    assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
    let out = args.output();
    assert!(
        out.contains("q35,accel=tcg,pflash0=fw-code,pflash1=fw-vars"),
        "{out}"
    );
    assert!(out.contains("vm-old.vars"), "{out}");

    // UEFI on pc is refused at once, naming MACHINE.
    let mut vm = cluster.start(&[("FIRMWARE", "uefi"), ("MACHINE", "pc")]);
    assert_eq!(vm.wait(T).code(), Some(CONFIG), "{}", vm.output());
    assert!(
        vm.output().contains("MACHINE (--machine)"),
        "{}",
        vm.output()
    );
}

#[test]
fn under_uefi_secure_a_signed_chain_boots_with_secure_boot_on() {
    let Some(cluster) = Cluster::for_test("kmsb", "vm-sb") else {
        return;
    };
    let url = variant_url(&cluster, "secure");
    let env = [
        ("IMG_SOURCE", url.as_str()),
        ("FIRMWARE", "uefi-secure"),
        ("VM_MEMORY", "512"),
    ];
    let mut vm = cluster.start(&env);
    let efi = vm.wait_for_line("KVMTEST efi ", BOOT);
    assert_eq!(field(&efi, "secureboot"), "1", "{efi}");
    let drive = vm.wait_for_line("KVMTEST configdrive", BOOT);
    assert_eq!(field(&drive, "label"), "config-2", "{drive}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);
    let recorded = state(&cluster.pod.path("pet"), "vm-sb");
    assert_eq!(
        recorded["firmware"]["firmware"], "uefi-secure",
        "{recorded}"
    );
}

#[test]
fn under_uefi_secure_an_unsigned_loader_is_refused() {
    let Some(cluster) = Cluster::for_test("kmsu", "vm-su") else {
        return;
    };
    // The UEFI guest's loader, systemd-boot, is not signed.
    let url = uefi_image_url(&cluster);
    let env = [
        ("IMG_SOURCE", url.as_str()),
        ("FIRMWARE", "uefi-secure"),
        ("VM_MEMORY", "512"),
        ("SHUTDOWN_TIMEOUT", "1s"),
    ];
    let mut vm = cluster.start(&env);
    let refused = vm.wait_for_line("Access Denied", BOOT);
    assert!(refused.contains("BdsDxe: failed"), "{refused}");
    assert!(
        !vm.output().contains("KVMTEST boot"),
        "the unsigned loader booted:\n{}",
        vm.output()
    );
    // Nothing in the VM answers the power button: the ladder ends in a forced stop (exit 7).
    let pid = crate::vm::pid1(&vm);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(vm.wait(T).code(), Some(7), "{}", vm.output());
}

#[test]
fn the_smbios_uuid_and_serial_default_to_the_instance_id_and_follow_vm_uuid_and_vm_serial() {
    let Some(cluster) = Cluster::for_test("kmid", "vm-id") else {
        return;
    };
    let mut vm = cluster.start(&[]);
    let smbios = vm.wait_for_line("KVMTEST smbios", BOOT);
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);
    let recorded = state(&cluster.pod.path("pet"), "vm-id");
    let id = recorded["instance_id"].as_str().expect("an instance id");
    assert_eq!(field(&smbios, "uuid"), id, "{smbios}");
    assert_eq!(field(&smbios, "serial"), id, "{smbios}");

    let uuid = "4c4c4544-0042-3510-8052-b4c04f4e3132";
    let mut vm = cluster.start(&[("VM_UUID", uuid), ("VM_SERIAL", "SN-0001")]);
    let smbios = vm.wait_for_line("KVMTEST smbios", BOOT);
    assert_eq!(field(&smbios, "uuid"), uuid, "{smbios}");
    assert_eq!(field(&smbios, "serial"), "SN-0001", "{smbios}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);
}

fn run(command: &mut Command) {
    let out = command.output().expect("run a tool");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UEFI-only disk beside the test guest, served by the image server: a GPT (protective MBR
/// without boot code) whose one partition, an EFI system partition, holds the UEFI test
/// guest's FAT filesystem (systemd-boot as `\EFI\BOOT\BOOTX64.EFI`). The UEFI test guest
/// itself is a FAT superfloppy with syslinux's boot code too: hybrid, so `auto` gives it BIOS.
/// Returns its path and URL; the caller removes it.
fn esp_only_image(cluster: &Cluster, work: &Path) -> (PathBuf, String) {
    std::fs::create_dir_all(work).expect("work dir");
    let fs = work.join("esp.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(guest_image().with_file_name("guest-uefi.qcow2"))
        .arg(&fs));
    let sectors = std::fs::metadata(&fs).expect("esp").len() / 512;
    let disk = work.join("disk.raw");
    // 1 MiB before the partition, 1 MiB after it for the backup GPT.
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len((sectors + 4096) * 512))
        .expect("disk");
    run(Command::new("sgdisk")
        .arg(format!("--new=1:2048:{}", 2048 + sectors - 1))
        .arg("--typecode=1:EF00")
        .arg(&disk));
    run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"]));
    let name = format!("guest-esp-{}.qcow2", std::process::id());
    let image = guest_image().with_file_name(&name);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&disk)
        .arg(&image));
    (image, cluster.url_of(&name))
}

#[test]
fn under_firmware_auto_an_esp_only_disk_boots_uefi_on_q35_and_the_state_records_it() {
    let Some(cluster) = Cluster::for_test("kmau", "vm-auto") else {
        return;
    };
    let (image, url) = esp_only_image(&cluster, &cluster.pod.path("esp-build"));
    let env = [("IMG_SOURCE", url.as_str())];
    // `config-drive` before the first run writes a state, but boots nothing: auto still
    // decides at the first run.
    let iso = cluster.pod.path("early.iso");
    let iso = iso.to_str().expect("a UTF-8 path");
    let mut drive = cluster
        .pod
        .kvm_manager(&["config-drive", "--output", iso], &cluster.env(&env));
    assert_eq!(drive.wait(T).code(), Some(0), "{}", drive.output());
    let early = state(&cluster.pod.path("pet"), "vm-auto");
    assert!(early.get("firmware").is_none(), "{early}");
    let mut vm = cluster.start(&env);
    // Only a guest under UEFI prints this line.
    let efi = vm.wait_for_line("KVMTEST efi ", BOOT);
    assert_eq!(field(&efi, "secureboot"), "0", "{efi}");
    let drive = vm.wait_for_line("KVMTEST configdrive", BOOT);
    assert_eq!(field(&drive, "label"), "config-2", "{drive}");
    vm.wait_for_line("KVMTEST READY", BOOT);
    stop(&mut vm);
    let out = vm.output();
    assert!(
        out.contains("FIRMWARE=auto chose uefi")
            && out.contains("a GPT disk with an EFI system partition and no BIOS boot code"),
        "{out}"
    );
    let pet = cluster.pod.path("pet");
    let recorded = state(&pet, "vm-auto");
    assert_eq!(recorded["firmware"]["firmware"], "uefi", "{recorded}");
    assert_eq!(recorded["firmware"]["machine"], "q35", "{recorded}");
    assert!(pet.join("vm-auto.vars").exists(), "no variable store");

    // The next start keeps it without reading the base again.
    let mut args = cluster.pod.kvm_manager(&["qemu-args"], &cluster.env(&env));
    assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
    let out = args.output();
    assert!(
        out.contains("q35,accel=tcg,pflash0=fw-code,pflash1=fw-vars"),
        "{out}"
    );
    assert!(
        out.contains("the firmware this VM first booted with"),
        "{out}"
    );
    let _ = std::fs::remove_file(image);
}

#[test]
fn under_firmware_auto_the_hybrid_test_guest_boots_bios_on_pc_and_the_state_records_it() {
    let Some(cluster) = Cluster::for_test("kmab", "vm-autob") else {
        return;
    };
    let mut vm = cluster.boot(&[]);
    stop(&mut vm);
    let out = vm.output();
    assert!(!out.contains("KVMTEST efi "), "booted UEFI:\n{out}");
    assert!(
        out.contains("FIRMWARE=auto chose bios") && out.contains("the MBR holds BIOS boot code"),
        "{out}"
    );
    let recorded = state(&cluster.pod.path("pet"), "vm-autob");
    assert_eq!(recorded["firmware"]["firmware"], "bios", "{recorded}");
    assert_eq!(recorded["firmware"]["machine"], "pc", "{recorded}");
    assert!(!cluster.pod.path("pet/vm-autob.vars").exists());
}

#[test]
fn under_firmware_auto_a_pet_that_booted_bios_stays_bios_when_its_base_becomes_uefi_only() {
    let Some(cluster) = Cluster::for_test("kmak", "vm-keep") else {
        return;
    };
    let pod = &cluster.pod;
    let (image, url) = esp_only_image(&cluster, &pod.path("esp-build"));
    let env = cluster.env(&[("IMG_SOURCE", url.as_str()), ("SHUTDOWN_TIMEOUT", "1s")]);
    let qemu_args = || {
        let mut args = pod.kvm_manager(&["qemu-args"], &env);
        assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
        args.output()
    };

    // qemu-args before the first boot and before the base is here: auto has not decided.
    let out = qemu_args();
    assert!(out.contains("decides at the first boot"), "{out}");
    assert!(
        out.contains("pc,accel=tcg") && !out.contains("pflash"),
        "{out}"
    );

    // A pet whose state predates firmware records booted SeaBIOS on pc: it keeps it.
    let pet = pod.path("pet");
    old_pet(pod, "vm-keep", &image, &url);
    let mut vm = pod.kvm_manager(&["run"], &env);
    vm.wait_for_line("disk ready", BOOT);
    let kept = vm.wait_for_line("the firmware this VM first booted with", T);
    assert!(kept.contains("bios") && kept.contains("pc"), "{kept}");
    let pid = crate::vm::pid1(&vm);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    vm.wait(T);
    let out = vm.output();
    assert!(
        !out.contains("FIRMWARE=auto chose"),
        "decided again:\n{out}"
    );
    let recorded = state(&pet, "vm-keep");
    assert_eq!(recorded["firmware"]["firmware"], "bios", "{recorded}");
    assert_eq!(recorded["firmware"]["machine"], "pc", "{recorded}");
    assert!(
        !pet.join("vm-keep.vars").exists(),
        "a variable store was created"
    );
    let out = qemu_args();
    assert!(
        out.contains("pc,accel=tcg") && !out.contains("pflash"),
        "{out}"
    );

    // Without the state (a new VM on the same, now downloaded, base) qemu-args reads the base.
    std::fs::remove_file(pet.join("vm-keep.state.json")).expect("remove the state");
    let out = qemu_args();
    assert!(out.contains("FIRMWARE=auto chose uefi"), "{out}");
    // qemu-args writes no state, and says so.
    assert!(
        out.contains("nothing is recorded yet") && !out.contains("keeps it from now on"),
        "{out}"
    );
    assert!(
        !pet.join("vm-keep.state.json").exists(),
        "qemu-args wrote a state"
    );
    assert!(
        out.contains("q35,accel=tcg,pflash0=fw-code,pflash1=fw-vars"),
        "{out}"
    );
    let _ = std::fs::remove_file(image);
}

#[test]
fn under_firmware_auto_a_base_whose_partition_table_cannot_be_read_is_bios_with_a_warning() {
    let Some(cluster) = Cluster::for_test("kmae", "vm-el2") else {
        return;
    };
    let pod = &cluster.pod;
    // qemu opens a qcow2 with extended L2 entries; imago, which reads the partition table,
    // does not.
    let base = pod.path("image").join("el2.qcow2");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on",
        ])
        .arg(guest_image().with_file_name("guest-uefi.qcow2"))
        .arg(&base));
    let target = base.display().to_string();
    let mut args = pod.kvm_manager(
        &["qemu-args"],
        &cluster.env(&[("IMG_TARGET", target.as_str())]),
    );
    assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
    let out = args.output();
    assert!(
        out.contains("could not read the base image's partition table and takes bios"),
        "{out}"
    );
    assert!(out.contains("FIRMWARE=auto chose bios"), "{out}");
    assert!(
        out.contains("pc,accel=tcg") && !out.contains("pflash"),
        "{out}"
    );
}

#[test]
fn the_image_subcommand_before_the_first_boot_records_what_auto_decides() {
    let Some(cluster) = Cluster::for_test("kmai", "vm-img") else {
        return;
    };
    let pod = &cluster.pod;
    let (image, url) = esp_only_image(&cluster, &pod.path("esp-build"));
    let env = cluster.env(&[("IMG_SOURCE", url.as_str())]);
    // `image` writes the pet state: without a firmware record, `run` would take it for a VM
    // that booted BIOS before records existed.
    let mut prefetch = pod.kvm_manager(&["image"], &env);
    assert_eq!(prefetch.wait(T).code(), Some(0), "{}", prefetch.output());
    assert!(
        prefetch.output().contains("FIRMWARE=auto chose uefi"),
        "{}",
        prefetch.output()
    );
    let recorded = state(&pod.path("pet"), "vm-img");
    assert_eq!(recorded["firmware"]["firmware"], "uefi", "{recorded}");
    let mut args = pod.kvm_manager(&["qemu-args"], &env);
    assert_eq!(args.wait(T).code(), Some(0), "{}", args.output());
    let out = args.output();
    assert!(
        out.contains("q35,accel=tcg,pflash0=fw-code,pflash1=fw-vars"),
        "{out}"
    );
    let _ = std::fs::remove_file(image);
}
