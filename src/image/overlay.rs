//! The pet overlay `PET_DIR/<hostname>.qcow2`: this VM's own disk, a qcow2 v3 whose backing
//! file is the base image (absolute path, format recorded so qemu never probes it).
//!
//! It holds the only copy of the guest's writes, so it is created once — under a temporary
//! name, then linked into place with `link(2)`, which never replaces an existing file — and
//! afterwards only reused or grown. An overlay whose backing file is not the current base is
//! refused: we do not guess which of the two the operator meant. Written in-process with
//! imago; no `qemu-img` at run time.
//!
//! Creating and growing happen only under the pet's [owner lock](super::owner), and growing
//! never while any process holds qemu's image locks on the file (qemu takes OFD locks on bytes
//! of every image it opens; changing the header under a running qemu makes it mark the image
//! corrupt and the guest see EIO).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatCreateBuilder as _, StorageOpenOptions};

use super::source::DiskFormat;
use super::{BaseImage, ImageError};
use crate::size::ByteSize;

/// The overlay as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlay {
    pub path: PathBuf,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
    /// True when this call created it.
    pub created: bool,
}

/// `PET_DIR/<hostname>.qcow2`.
pub(crate) fn path(pet_dir: &Path, hostname: &crate::config::Hostname) -> PathBuf {
    pet_dir.join(format!("{hostname}.qcow2"))
}

/// The tag of the temporary file a creation writes first: `.NAME.qcow2.creating<random>`.
const CREATING: &str = "creating";

/// Removes the temporary files of killed creations of `overlay`; returns what it removed. Only
/// for the pet's owner.
pub(crate) fn remove_temps(overlay: &Path) -> Vec<PathBuf> {
    crate::atomic_file::remove_temps(overlay, CREATING)
}

/// What an existing overlay records about its backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub virtual_size: u64,
}

/// What to do with the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    Create { size: u64 },
    Reuse { size: u64 },
    Grow { from: u64, to: u64 },
}

/// Decides, without IO. `base` is absolute; relative backing names in `existing` are read
/// relative to `overlay_dir`, as qemu reads them. Warnings are for the log.
pub(crate) fn plan(
    existing: Option<&Existing>,
    overlay: &Path,
    base: &Path,
    base_format: DiskFormat,
    disk_size: Option<ByteSize>,
) -> Result<(Plan, Vec<String>), ImageError> {
    let mut warnings = Vec::new();
    let wanted = disk_size.map(|s| s.bytes().next_multiple_of(512));
    let Some(existing) = existing else {
        let base_size = base_format.virtual_size();
        let size = match wanted {
            Some(w) if w < base_size => {
                warnings.push(format!(
                    "VM_DISK_SIZE {} is smaller than the base image ({}); the disk keeps the \
                     base's size",
                    ByteSize(w),
                    ByteSize(base_size)
                ));
                base_size
            }
            Some(w) => w,
            None => base_size,
        };
        return Ok((Plan::Create { size }, warnings));
    };
    let recorded = existing.backing_file.as_deref().map(|b| {
        let b = Path::new(b);
        match overlay.parent() {
            Some(dir) if b.is_relative() => dir.join(b),
            _ => b.to_path_buf(),
        }
    });
    let format_ok = existing
        .backing_format
        .as_deref()
        .is_none_or(|f| f == base_format.name());
    if recorded.as_deref() != Some(base) || !format_ok {
        return Err(ImageError::BackingMismatch {
            overlay: overlay.to_path_buf(),
            recorded: existing
                .backing_file
                .clone()
                .unwrap_or_else(|| "no backing file".into()),
            recorded_format: existing
                .backing_format
                .clone()
                .unwrap_or_else(|| "unrecorded".into()),
            base: base.to_path_buf(),
            base_format: base_format.name(),
        });
    }
    let current = existing.virtual_size;
    let plan = match wanted {
        Some(w) if w > current => Plan::Grow {
            from: current,
            to: w,
        },
        Some(w) if w < current => {
            warnings.push(format!(
                "VM_DISK_SIZE {} is smaller than the disk ({}); disks never shrink, keeping {}",
                ByteSize(w),
                ByteSize(current),
                ByteSize(current)
            ));
            Plan::Reuse { size: current }
        }
        _ => Plan::Reuse { size: current },
    };
    Ok((plan, warnings))
}

/// Creates the overlay of `base` at `overlay`, or reuses (and maybe grows) the one there.
pub(crate) fn ensure_overlay(
    base: &BaseImage,
    overlay: &Path,
    disk_size: Option<ByteSize>,
) -> Result<Overlay, ImageError> {
    let base_format = base.format;
    let base = std::path::absolute(&base.path).map_err(|source| ImageError::Read {
        path: base.path.clone(),
        source,
    })?;
    let existing = if overlay.exists() {
        Some(read(overlay)?)
    } else {
        None
    };
    let (plan, warnings) = plan(existing.as_ref(), overlay, &base, base_format, disk_size)?;
    for warning in warnings {
        tracing::warn!(overlay = %overlay.display(), "{warning}");
    }
    let overlay_err = |source| ImageError::Overlay {
        path: overlay.to_path_buf(),
        source,
    };
    let (virtual_size, created) = match plan {
        Plan::Reuse { size } => {
            tracing::info!(overlay = %overlay.display(), size = %ByteSize(size), "reusing the pet overlay");
            (size, false)
        }
        Plan::Grow { from, to } => {
            let _exclusive = lock_for_growth(overlay)?;
            let image = open(overlay, true)?;
            image
                .resize_grow(to, PreallocateMode::None)
                .and_then(|()| image.flush())
                .map_err(overlay_err)?;
            tracing::info!(overlay = %overlay.display(), from = %ByteSize(from), to = %ByteSize(to), "grew the pet overlay");
            (to, false)
        }
        Plan::Create { size } => {
            let started = std::time::Instant::now();
            create(overlay, &base, base_format, size)?;
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::info!(overlay = %overlay.display(), base = %base.display(), size = %ByteSize(size), micros, "created the pet overlay");
            (size, true)
        }
    };
    Ok(Overlay {
        path: overlay.to_path_buf(),
        virtual_size,
        created,
    })
}

/// A write lock over the whole overlay, held while its header changes: refused when any
/// process holds a lock on it (a qemu that has it open), and it keeps a qemu from opening it
/// meanwhile (qemu checks the same locks). Released when the returned file is dropped.
fn lock_for_growth(overlay: &Path) -> Result<File, ImageError> {
    let io_err = |source| ImageError::Overlay {
        path: overlay.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(overlay)
        .map_err(io_err)?;
    let mut probe = whole_file_write_lock();
    fcntl(&file, FcntlArg::F_OFD_GETLK(&mut probe)).map_err(|e| io_err(e.into()))?;
    if let Some(holder) = lock_holder(&probe) {
        return Err(ImageError::OverlayInUse {
            path: overlay.to_path_buf(),
            holder,
        });
    }
    match fcntl(&file, FcntlArg::F_OFD_SETLK(&whole_file_write_lock())) {
        Ok(_) => Ok(file),
        // Taken between the probe and now.
        Err(Errno::EAGAIN | Errno::EACCES) => Err(ImageError::OverlayInUse {
            path: overlay.to_path_buf(),
            holder: "a process that locked it a moment ago".to_owned(),
        }),
        Err(e) => Err(io_err(e.into())),
    }
}

fn whole_file_write_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Who holds the conflicting lock `F_OFD_GETLK` returned, or `None` when nobody does. OFD locks
/// (qemu's) have no owning process: the kernel reports pid -1.
fn lock_holder(probe: &libc::flock) -> Option<String> {
    if probe.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    let kind = if probe.l_type == libc::F_WRLCK as libc::c_short {
        "write"
    } else {
        "read"
    };
    Some(if probe.l_pid > 0 {
        format!(
            "process {} holds a {kind} lock at byte {}",
            probe.l_pid, probe.l_start
        )
    } else {
        format!(
            "an open file (qemu's image locking) holds a {kind} lock at byte {}",
            probe.l_start
        )
    })
}

fn open(path: &Path, write: bool) -> Result<FormatAccess<ImagoFile>, ImageError> {
    // Only this file: the backing image is not opened (nor needed) to read the header.
    let image =
        Qcow2::<ImagoFile>::open_path(path, write).map_err(|source| ImageError::Overlay {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(FormatAccess::new(image))
}

fn read(path: &Path) -> Result<Existing, ImageError> {
    let image =
        Qcow2::<ImagoFile>::open_path(path, false).map_err(|source| ImageError::Overlay {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Existing {
        backing_file: image.implicit_backing_file().cloned(),
        backing_format: image.implicit_backing_format().cloned(),
        virtual_size: FormatAccess::new(image).size(),
    })
}

fn create(overlay: &Path, base: &Path, format: DiskFormat, size: u64) -> Result<(), ImageError> {
    let overlay_err = |source| ImageError::Overlay {
        path: overlay.to_path_buf(),
        source,
    };
    // Unique and exclusive; removed when `named` drops, whatever happens below.
    let named = crate::atomic_file::unique_temp(overlay, CREATING).map_err(overlay_err)?;
    let temp = named.path().to_path_buf();
    let err = |source| ImageError::Overlay {
        path: temp.clone(),
        source,
    };
    let file = named.as_file().try_clone().map_err(err)?;
    let storage =
        ImagoFile::from_open_file(file, StorageOpenOptions::new().write(true).filename(&temp))
            .map_err(err)?;
    Qcow2::<ImagoFile>::create_builder(storage)
        .backing(base.display().to_string(), format.name().to_owned())
        .size(size)
        .create()
        .map_err(err)?;
    named.as_file().sync_all().map_err(err)?;
    // link(2) fails if the overlay appeared meanwhile: never replace a pet disk.
    std::fs::hard_link(&temp, overlay).map_err(overlay_err)?;
    crate::atomic_file::sync_parent(overlay).map_err(err)
}

#[cfg(test)]
mod tests {
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
}
