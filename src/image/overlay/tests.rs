//! The overlay's plan (pure), its creation and reuse, and growth refused under qemu's locks.

use std::fs::{File, OpenOptions};

use nix::fcntl::{fcntl, FcntlArg};

use super::growth_lock::{lock_holder, whole_file_write_lock};
use super::*;

const GIB: u64 = crate::size::GIB;
const BASE: DiskFormat = DiskFormat::Qcow2 {
    version: 3,
    virtual_size: 2 * GIB,
};

fn existing(backing: &str, format: &str, size: u64) -> Existing {
    Existing {
        backing_file: Some(backing.into()),
        backing_format: Some(format.into()),
        virtual_size: size,
    }
}

fn decide(
    existing: Option<&Existing>,
    disk: Option<u64>,
) -> Result<(Plan, Vec<String>), ImageError> {
    plan(
        existing,
        Path::new("/pet/vm-0.qcow2"),
        Path::new("/image/base.qcow2"),
        BASE,
        disk.map(ByteSize),
    )
}

#[test]
fn a_new_overlay_gets_the_larger_of_base_size_and_disk_size() {
    assert_eq!(
        decide(None, None).expect("plan").0,
        Plan::Create { size: 2 * GIB }
    );
    assert_eq!(
        decide(None, Some(10 * GIB)).expect("plan").0,
        Plan::Create { size: 10 * GIB }
    );
    let (plan, warnings) = decide(None, Some(GIB)).expect("plan");
    assert_eq!(plan, Plan::Create { size: 2 * GIB });
    assert_eq!(warnings.len(), 1, "a smaller VM_DISK_SIZE is a warning");
}

#[test]
fn an_existing_overlay_only_ever_grows() {
    let e = existing("/image/base.qcow2", "qcow2", 4 * GIB);
    assert_eq!(
        decide(Some(&e), None).expect("plan").0,
        Plan::Reuse { size: 4 * GIB }
    );
    assert_eq!(
        decide(Some(&e), Some(8 * GIB)).expect("plan").0,
        Plan::Grow {
            from: 4 * GIB,
            to: 8 * GIB
        }
    );
    let (plan, warnings) = decide(Some(&e), Some(3 * GIB)).expect("plan");
    assert_eq!(plan, Plan::Reuse { size: 4 * GIB });
    assert!(warnings[0].contains("never shrink"), "{warnings:?}");
}

#[test]
fn relative_backing_names_are_read_from_the_overlay_directory() {
    let e = existing("../image/base.qcow2", "qcow2", 2 * GIB);
    let result = plan(
        Some(&e),
        Path::new("/pet/vm-0.qcow2"),
        Path::new("/pet/../image/base.qcow2"),
        BASE,
        None,
    );
    assert!(result.is_ok());
}

#[test]
fn a_different_backing_file_or_format_is_refused_with_the_choices() {
    for e in [
        existing("/image/other.qcow2", "qcow2", 2 * GIB),
        existing("/image/base.qcow2", "raw", 2 * GIB),
    ] {
        let err = decide(Some(&e), None).expect_err("mismatch").to_string();
        assert!(err.contains("/image/base.qcow2"), "{err}");
        assert!(err.contains("qemu-img rebase"), "{err}");
        assert!(err.contains("move"), "{err}");
    }
}

#[test]
fn creates_a_qcow2_v3_overlay_and_reuses_it_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).expect("base");
    let base = BaseImage::read(&base).expect("a disk");
    let overlay = dir.path().join("vm-0.qcow2");
    let first = ensure_overlay(&base, &overlay, None).expect("create");
    assert!(first.created);
    assert_eq!(first.virtual_size, 1 << 20);
    let bytes = std::fs::read(&overlay).expect("read");
    assert_eq!(&bytes[..8], b"QFI\xfb\0\0\0\x03", "qcow2 v3");
    let again = ensure_overlay(&base, &overlay, None).expect("reuse");
    assert!(!again.created);
    assert_eq!(
        std::fs::read(&overlay).expect("read"),
        bytes,
        "byte-identical"
    );
    let grown = ensure_overlay(&base, &overlay, Some(ByteSize(4 << 20))).expect("grow");
    assert_eq!(grown.virtual_size, 4 << 20);
    assert_eq!(read(&overlay).expect("header").virtual_size, 4 << 20);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("creating")),
        "temporary left: {names:?}"
    );
}

/// A lock like the one qemu takes on byte 100 ("consistent read" permission) of an image it
/// has open, on its own open file description; dropping the file releases it.
fn hold_like_qemu(path: &Path, kind: libc::c_int) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let lock = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 100,
        l_len: 1,
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_OFD_SETLK(&lock)).expect("OFD lock");
    file
}

#[test]
fn an_overlay_is_never_grown_while_a_process_holds_qemus_image_locks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).expect("base");
    let base = BaseImage::read(&base).expect("a disk");
    let overlay = dir.path().join("vm-0.qcow2");
    ensure_overlay(&base, &overlay, None).expect("create");
    let before = std::fs::read(&overlay).expect("read");
    for kind in [libc::F_RDLCK, libc::F_WRLCK] {
        let qemu = hold_like_qemu(&overlay, kind);
        let err = ensure_overlay(&base, &overlay, Some(ByteSize(4 << 20)))
            .expect_err("grown under a running qemu");
        assert!(matches!(err, ImageError::OverlayInUse { .. }), "{err}");
        assert!(err.to_string().contains("byte 100"), "{err}");
        assert_eq!(
            std::fs::read(&overlay).expect("read"),
            before,
            "refused, yet changed"
        );
        // Reusing at the same size never writes, so it stays allowed.
        ensure_overlay(&base, &overlay, None).expect("reuse while in use");
        drop(qemu);
    }
    let grown = ensure_overlay(&base, &overlay, Some(ByteSize(4 << 20))).expect("grow");
    assert_eq!(grown.virtual_size, 4 << 20);
}

#[test]
fn the_lock_probe_names_a_posix_holder_by_pid_and_qemu_by_its_locking() {
    let mut probe = whole_file_write_lock();
    probe.l_type = libc::F_UNLCK as libc::c_short;
    assert_eq!(lock_holder(&probe), None);
    probe.l_type = libc::F_RDLCK as libc::c_short;
    probe.l_start = 201;
    probe.l_pid = -1;
    let ofd = lock_holder(&probe).expect("held");
    assert!(ofd.contains("qemu") && ofd.contains("byte 201"), "{ofd}");
    probe.l_pid = 4242;
    let posix = lock_holder(&probe).expect("held");
    assert!(posix.contains("process 4242"), "{posix}");
}

#[test]
fn an_installer_iso_needs_vm_disk_size_and_gets_a_blank_disk_kept_blank() {
    let iso = Path::new("/image/installer.iso");
    let overlay = Path::new("/pet/vm-0.qcow2");
    let err = plan_blank(None, overlay, iso, None).expect_err("no size");
    assert!(err.to_string().contains("VM_DISK_SIZE"), "{err}");
    let size = Some(ByteSize(1 << 30));
    let (plan, _) = plan_blank(None, overlay, iso, size).expect("create");
    assert_eq!(plan, Plan::Create { size: 1 << 30 });
    let blank = Existing {
        backing_file: None,
        backing_format: None,
        virtual_size: 1 << 30,
    };
    let (plan, _) = plan_blank(Some(&blank), overlay, iso, size).expect("reuse");
    assert_eq!(plan, Plan::Reuse { size: 1 << 30 });
    let backed = Existing {
        backing_file: Some("/image/debian.qcow2".into()),
        ..blank
    };
    assert!(matches!(
        plan_blank(Some(&backed), overlay, iso, size),
        Err(ImageError::NotBlank { .. })
    ));
}
