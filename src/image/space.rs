//! Free space in `IMAGE_DIR`, checked before a download whose size is known, so that a full
//! volume fails at once with the size needed instead of after an hour of downloading.

use std::path::Path;

use nix::sys::statvfs::statvfs;

use super::ImageError;

/// Fails when `dir`'s filesystem has fewer than `needed` bytes free for us.
pub fn check(dir: &Path, needed: u64) -> Result<(), ImageError> {
    let Ok(stat) = statvfs(dir) else {
        // Not knowing is no reason to refuse; a real shortage still ends in ENOSPC.
        return Ok(());
    };
    let available = stat.blocks_available().saturating_mul(stat.fragment_size());
    if available < needed {
        return Err(ImageError::NoSpace {
            dir: dir.to_path_buf(),
            needed: Some(needed),
            available: Some(available),
        });
    }
    Ok(())
}
