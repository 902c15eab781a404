//! The hidden temporary files of a download, beside the base image in `IMAGE_DIR` (so that
//! the final rename stays on one filesystem), and the out-of-space error their writes give.

use std::io;
use std::path::{Path, PathBuf};

use super::ImageError;

/// The hidden temporary files of one base image, beside it in `IMAGE_DIR`.
#[derive(Debug, Clone)]
pub(crate) struct Temps {
    pub dir: PathBuf,
    /// The bytes as downloaded (resumable).
    pub part: PathBuf,
    /// The resume validator of `part`.
    pub meta: PathBuf,
    /// The journal of the ranges of `part` on disk, while a parallel download fills it.
    pub ranges: PathBuf,
    /// `part` decompressed, when it is compressed.
    pub unpacked: PathBuf,
    /// Download size, when known (for the out-of-space message).
    pub total: Option<u64>,
    /// Bytes left free on the volume (`IMAGE_DIR_RESERVE`).
    pub reserve: u64,
}

impl Temps {
    pub(crate) fn for_target(target: &Path) -> Self {
        let temp = |tag| crate::atomic_file::temp_path(target, tag);
        Self {
            dir: target.parent().map(Path::to_path_buf).unwrap_or_default(),
            part: temp("part"),
            meta: temp("part.meta"),
            ranges: temp("part.ranges"),
            unpacked: temp("unpacked"),
            total: None,
            reserve: 0,
        }
    }

    /// A write error, or the out-of-space error when that is what it was.
    pub(crate) fn write_error(&self, path: &Path, source: io::Error) -> ImageError {
        if source.kind() == io::ErrorKind::StorageFull {
            ImageError::NoSpace {
                dir: self.dir.clone(),
                needed: self.total,
                available: None,
                reserve: self.reserve,
            }
        } else {
            ImageError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
