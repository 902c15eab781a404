//! Reading `USERDATA` and `METADATA`: each is a file, a mounted ConfigMap directory, or
//! absent.
//!
//! A ConfigMap volume is a directory of key names that are symlinks into a hidden,
//! timestamped directory (`user-data -> ..data/user-data`, `..data -> ..2026_11_21_…`), which
//! the kubelet swaps atomically on update. We open the key names, so the symlinks resolve to
//! the current generation, and skip the `..`-prefixed entries. A missing path means "not
//! given" (the chart mounts nothing), while a path that exists but cannot be read is an
//! error: silently booting a guest without its user-data is worse than not booting.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use super::ConfigDriveError;

/// The largest user-data or meta-data we copy, 16 MiB. cloud-init itself copes with more,
/// but the drive is rebuilt on every start and held in memory while it is built; gzip the
/// user-data if it is larger (cloud-init unpacks gzip).
pub const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// The ConfigMap keys accepted for user-data, in the spellings people use.
pub const USER_DATA_KEYS: &[&str] = &["user-data", "userdata", "user_data"];
/// The ConfigMap keys accepted for meta-data.
pub const METADATA_KEYS: &[&str] = &["meta-data", "metadata", "meta_data"];

/// An input that was found: the file it came from and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Reads the input `var` at `path`: the file itself, or in a directory the one key of
/// `keys` it holds. `None` when the path does not exist or the directory holds none of them.
pub fn read(
    var: &'static str,
    path: &Path,
    keys: &[&str],
) -> Result<Option<Found>, ConfigDriveError> {
    let read_error = |path: &Path, source| ConfigDriveError::ReadInput {
        var,
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "{var} not present");
            return Ok(None);
        }
        Err(e) => return Err(read_error(path, e)),
    };
    let file = if meta.is_dir() {
        match key_in(var, path, keys)? {
            Some(file) => file,
            None => return Ok(None),
        }
    } else {
        path.to_owned()
    };
    let bytes = read_limited(&file).map_err(|e| match e {
        Limited::Io(source) => read_error(&file, source),
        Limited::TooLarge(size) => ConfigDriveError::InputTooLarge {
            var,
            path: file.clone(),
            size,
            limit: MAX_INPUT_BYTES,
        },
    })?;
    Ok(Some(Found { path: file, bytes }))
}

/// The one accepted key present in the ConfigMap directory `dir`.
fn key_in(
    var: &'static str,
    dir: &Path,
    keys: &[&str],
) -> Result<Option<PathBuf>, ConfigDriveError> {
    let mut present = Vec::new();
    for key in keys {
        let candidate = dir.join(key);
        match std::fs::metadata(&candidate) {
            Ok(_) => present.push(candidate),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ConfigDriveError::ReadInput {
                    var,
                    path: candidate,
                    source,
                })
            }
        }
    }
    match present.len() {
        0 => {
            tracing::warn!(
                dir = %dir.display(),
                "{var} is a directory without any of the keys {}; the drive gets none",
                keys.join(", ")
            );
            Ok(None)
        }
        1 => Ok(present.pop()),
        _ => Err(ConfigDriveError::AmbiguousKeys {
            var,
            dir: dir.to_owned(),
            keys: keys.join(", "),
        }),
    }
}

enum Limited {
    Io(io::Error),
    TooLarge(u64),
}

/// Reads at most [`MAX_INPUT_BYTES`]; reading one byte more proves the file is too large
/// even when its size is not known up front (a pipe, a growing file).
fn read_limited(path: &Path) -> Result<Vec<u8>, Limited> {
    let file = File::open(path).map_err(Limited::Io)?;
    let size = file.metadata().map_err(Limited::Io)?.len();
    if size > MAX_INPUT_BYTES {
        return Err(Limited::TooLarge(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Limited::Io)?;
    let read = bytes.len() as u64;
    if read > MAX_INPUT_BYTES {
        return Err(Limited::TooLarge(read));
    }
    Ok(bytes)
}
