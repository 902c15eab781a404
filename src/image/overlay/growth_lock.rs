//! The write lock that guards growing the overlay: refused while any process (a qemu) holds
//! one of its image locks on the file.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

use crate::image::ImageError;

/// A write lock over the whole overlay, held while its header changes: refused when any
/// process holds a lock on it (a qemu that has it open), and it keeps a qemu from opening it
/// meanwhile (qemu checks the same locks). Released when the returned file is dropped.
pub(super) fn lock_for_growth(overlay: &Path) -> Result<File, ImageError> {
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

pub(super) fn whole_file_write_lock() -> libc::flock {
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
pub(super) fn lock_holder(probe: &libc::flock) -> Option<String> {
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
