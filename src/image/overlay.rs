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

use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatCreateBuilder as _, StorageOpenOptions};

mod growth_lock;

use growth_lock::lock_for_growth;

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
    let iso = super::iso_detect::is_iso(&base.path).map_err(|source| ImageError::Read {
        path: base.path.clone(),
        source,
    })?;
    let base = std::path::absolute(&base.path).map_err(|source| ImageError::Read {
        path: base.path.clone(),
        source,
    })?;
    let existing = if overlay.exists() {
        Some(read(overlay)?)
    } else {
        None
    };
    let (plan, warnings) = if iso {
        plan_blank(existing.as_ref(), overlay, &base, disk_size)?
    } else {
        plan(existing.as_ref(), overlay, &base, base_format, disk_size)?
    };
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
            let backing = (!iso).then_some((base.as_path(), base_format));
            create(overlay, backing, size)?;
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

/// [`plan`] for an installer ISO base: a blank disk (no backing file) of `VM_DISK_SIZE`,
/// required; an existing disk must be blank too (it holds what was installed).
pub(crate) fn plan_blank(
    existing: Option<&Existing>,
    overlay: &Path,
    iso: &Path,
    disk_size: Option<ByteSize>,
) -> Result<(Plan, Vec<String>), ImageError> {
    let Some(wanted) = disk_size.map(|s| s.bytes().next_multiple_of(512)) else {
        return Err(ImageError::IsoNeedsDiskSize {
            path: iso.to_path_buf(),
        });
    };
    let Some(existing) = existing else {
        return Ok((Plan::Create { size: wanted }, Vec::new()));
    };
    if let Some(recorded) = &existing.backing_file {
        return Err(ImageError::NotBlank {
            path: overlay.to_path_buf(),
            recorded: recorded.clone(),
        });
    }
    let current = existing.virtual_size;
    Ok(if wanted > current {
        (
            Plan::Grow {
                from: current,
                to: wanted,
            },
            Vec::new(),
        )
    } else {
        (Plan::Reuse { size: current }, Vec::new())
    })
}

/// Creates the pet disk: an overlay of `backing` (the base and its format), or blank.
fn create(
    overlay: &Path,
    backing: Option<(&Path, DiskFormat)>,
    size: u64,
) -> Result<(), ImageError> {
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
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size);
    if let Some((base, format)) = backing {
        builder = builder.backing(base.display().to_string(), format.name().to_owned());
    }
    builder.create().map_err(err)?;
    named.as_file().sync_all().map_err(err)?;
    // link(2) fails if the overlay appeared meanwhile: never replace a pet disk.
    std::fs::hard_link(&temp, overlay).map_err(overlay_err)?;
    crate::atomic_file::sync_parent(overlay).map_err(err)
}

#[cfg(test)]
mod tests;
