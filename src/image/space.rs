//! Free space in `IMAGE_DIR`, a volume many pods share: checked before a download whose size
//! is known (so that a full volume fails at once with the size needed, not after an hour), and
//! again as bytes arrive (a body without a length, a decompression bomb, another pod writing
//! at the same time), so that a download never takes the last `IMAGE_DIR_RESERVE` bytes.

use std::path::{Path, PathBuf};

use nix::sys::statvfs::statvfs;

use super::ImageError;
use crate::config::Reserve;

/// Re-read the free space after this many bytes even when the budget says there is room:
/// another pod may be filling the same volume.
const RECHECK: u64 = 64 << 20;

/// Bytes free for us on `dir`'s filesystem and the filesystem's size; `None` when unknown.
pub(crate) fn stat(dir: &Path) -> Option<(u64, u64)> {
    let stat = statvfs(dir).ok()?;
    let unit = stat.fragment_size();
    Some((
        stat.blocks_available().saturating_mul(unit),
        stat.blocks().saturating_mul(unit),
    ))
}

/// The reserve in bytes on `dir`'s filesystem (a percentage needs its size; unknown: 0).
pub(crate) fn reserve_bytes(dir: &Path, reserve: Reserve) -> u64 {
    match reserve {
        Reserve::Bytes(bytes) => bytes,
        Reserve::Percent(_) => stat(dir).map_or(0, |(_, size)| reserve.bytes_of(size)),
    }
}

/// Fails when `dir`'s filesystem has fewer than `needed` bytes free plus the reserve.
pub(crate) fn check(dir: &Path, needed: u64) -> Result<(), ImageError> {
    check_keeping(dir, needed, 0)
}

/// [`check`], keeping `reserve` bytes free.
pub(crate) fn check_keeping(dir: &Path, needed: u64, reserve: u64) -> Result<(), ImageError> {
    let Some((available, _)) = stat(dir) else {
        // Not knowing is no reason to refuse; a real shortage still ends in ENOSPC.
        return Ok(());
    };
    if available < needed.saturating_add(reserve) {
        return Err(ImageError::NoSpace {
            dir: dir.to_path_buf(),
            needed: Some(needed),
            available: Some(available),
            reserve,
        });
    }
    Ok(())
}

/// Writing more would take the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shortage {
    pub available: u64,
    pub reserve: u64,
}

/// How many more bytes may be written before the free space must be read again.
#[derive(Debug)]
pub(crate) struct Budget {
    dir: PathBuf,
    reserve: u64,
    /// Bytes we may still write without looking (as of the last look).
    left: u64,
    since_check: u64,
}

impl Budget {
    pub(crate) fn new(dir: &Path, reserve: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            reserve,
            left: 0,
            since_check: 0,
        }
    }

    /// Accounts for writing `n` more bytes; refuses when they would take the reserve.
    pub(crate) fn take(&mut self, n: u64) -> Result<(), Shortage> {
        let dir = self.dir.clone();
        self.take_with(n, || stat(&dir).map(|(available, _)| available))
    }

    /// [`Budget::take`] with the free space read by `available` (for tests).
    pub(crate) fn take_with(
        &mut self,
        n: u64,
        available: impl FnOnce() -> Option<u64>,
    ) -> Result<(), Shortage> {
        if n <= self.left && self.since_check.saturating_add(n) <= RECHECK {
            self.left -= n;
            self.since_check += n;
            return Ok(());
        }
        self.since_check = n;
        match available() {
            // Not knowing is no reason to refuse.
            None => {
                self.left = u64::MAX;
                Ok(())
            }
            Some(available) => match available.checked_sub(self.reserve.saturating_add(n)) {
                Some(left) => {
                    self.left = left;
                    Ok(())
                }
                None => Err(Shortage {
                    available,
                    reserve: self.reserve,
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_a_write_that_would_take_the_reserve() {
        let mut budget = Budget::new(Path::new("/nowhere"), 100);
        budget
            .take_with(50, || Some(200))
            .expect("150 left above the reserve");
        // Within what was seen free: no new look.
        budget
            .take_with(50, || panic!("no look needed"))
            .expect("fits");
        // Beyond it: a new look, which finds the other 50 bytes gone to another writer.
        let shortage = budget
            .take_with(10, || Some(105))
            .expect_err("would take the reserve");
        assert_eq!(
            shortage,
            Shortage {
                available: 105,
                reserve: 100
            }
        );
    }

    #[test]
    fn the_budget_looks_again_after_a_while_and_trusts_an_unknown_volume() {
        let mut budget = Budget::new(Path::new("/nowhere"), 0);
        budget.take_with(1, || Some(u64::MAX)).expect("room");
        let mut looked = false;
        budget
            .take_with(RECHECK, || {
                looked = true;
                Some(u64::MAX)
            })
            .expect("room");
        assert!(looked, "another pod may have filled the volume meanwhile");
        let mut unknown = Budget::new(Path::new("/nowhere"), 10);
        unknown
            .take_with(1 << 40, || None)
            .expect("unknown: allowed");
    }

    #[test]
    fn a_percentage_reserve_is_a_share_of_the_volume() {
        assert_eq!(Reserve::Percent(5).bytes_of(20 << 30), 1 << 30);
        assert_eq!(Reserve::Bytes(7).bytes_of(20 << 30), 7);
    }
}
