//! Reading `USERDATA` and `METADATA`: each is a file, a mounted ConfigMap directory, or
//! absent.
//!
//! A ConfigMap volume is a directory of key names that are symlinks into a hidden,
//! timestamped directory (`user-data -> ..data/user-data`, `..data -> ..2026_11_21_…`), which
//! the kubelet swaps atomically on update. We open the key names, so the symlinks resolve to
//! the current generation, and skip the `..`-prefixed entries. A missing path means "not
//! given" (the chart mounts nothing), while a path that exists but cannot be read is an
//! error: silently booting a guest without its user-data is worse than not booting.
//!
//! The path in the variable is the operator's and is followed as given; what the mounted
//! directory holds is not: a key (or, for a file path, the file's name in its directory) is
//! opened with [`regular_file::open_beneath`], so its links may only resolve inside that
//! directory (a link to `/proc/self/environ` would put our environment on the guest's drive),
//! and it must be a regular file, opened without blocking (a FIFO would hang the start).

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use super::ConfigDriveError;
use crate::regular_file::{self, RegularFile, RegularFileError};

/// The largest user-data or meta-data we copy, 16 MiB. cloud-init itself copes with more,
/// but the drive is rebuilt on every start and held in memory while it is built; gzip the
/// user-data if it is larger (cloud-init unpacks gzip).
pub(crate) const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// The ConfigMap keys accepted for user-data, in the spellings people use.
pub(crate) const USER_DATA_KEYS: &[&str] = &["user-data", "userdata", "user_data"];
/// The ConfigMap keys accepted for meta-data.
pub(crate) const METADATA_KEYS: &[&str] = &["meta-data", "metadata", "meta_data"];

/// An input that was found: the file it came from and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Reads the input `var` at `path`: the file itself, or in a directory the one key of
/// `keys` it holds. `None` when the path does not exist or the directory holds none of them.
pub(crate) fn read(
    var: &'static str,
    path: &Path,
    keys: &[&str],
) -> Result<Option<Found>, ConfigDriveError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(path = %path.display(), "{var} not present");
            return Ok(None);
        }
        Err(source) => {
            return Err(ConfigDriveError::ReadInput {
                var,
                path: path.to_owned(),
                source,
            })
        }
    };
    let (file, opened) = if meta.is_dir() {
        match key_in(var, path, keys)? {
            Some(found) => found,
            None => return Ok(None),
        }
    } else {
        // The file's own directory is the one its links must stay in: `/userdata/user-data`
        // pointing at a ConfigMap key still works.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = path.file_name().map_or(path, Path::new);
        let opened =
            regular_file::open_beneath(dir, name).map_err(|e| open_error(var, path, dir, e))?;
        (path.to_owned(), opened)
    };
    let bytes = read_limited(opened).map_err(|e| match e {
        Limited::Io(source) => ConfigDriveError::ReadInput {
            var,
            path: file.clone(),
            source,
        },
        Limited::TooLarge(size) => ConfigDriveError::InputTooLarge {
            var,
            path: file.clone(),
            size,
            limit: MAX_INPUT_BYTES,
        },
    })?;
    Ok(Some(Found { path: file, bytes }))
}

fn open_error(var: &'static str, path: &Path, dir: &Path, e: RegularFileError) -> ConfigDriveError {
    match e {
        RegularFileError::Open(source) => ConfigDriveError::ReadInput {
            var,
            path: path.to_owned(),
            source,
        },
        RegularFileError::NotRegular(kind) => ConfigDriveError::InputNotRegular {
            var,
            path: path.to_owned(),
            kind,
        },
        RegularFileError::Escapes => ConfigDriveError::InputEscapes {
            var,
            path: path.to_owned(),
            dir: dir.to_owned(),
        },
    }
}

/// The one accepted key present in the ConfigMap directory `dir`, opened.
fn key_in(
    var: &'static str,
    dir: &Path,
    keys: &[&str],
) -> Result<Option<(PathBuf, RegularFile)>, ConfigDriveError> {
    let mut present = Vec::new();
    for key in keys {
        let candidate = dir.join(key);
        match regular_file::open_beneath(dir, Path::new(key)) {
            Ok(file) => present.push((candidate, file)),
            // Absent, or a dangling link: the key is not there.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(open_error(var, &candidate, dir, e)),
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
/// even when its size is not known up front (a growing file).
fn read_limited(file: RegularFile) -> Result<Vec<u8>, Limited> {
    let size = file.len();
    if size > MAX_INPUT_BYTES {
        return Err(Limited::TooLarge(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.into_file()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Limited::Io)?;
    let read = bytes.len() as u64;
    if read > MAX_INPUT_BYTES {
        return Err(Limited::TooLarge(read));
    }
    Ok(bytes)
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A ConfigMap volume as the kubelet writes it: keys are symlinks through `..data` into a
    /// timestamped directory.
    pub(in crate::configdrive) fn config_map(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        let generation = "..2026_11_21_00_00_00.123456789";
        std::fs::create_dir_all(dir.join(generation)).expect("generation dir");
        for (key, bytes) in entries {
            std::fs::write(dir.join(generation).join(key), bytes).expect("key file");
            symlink(format!("..data/{key}"), dir.join(key)).expect("key symlink");
        }
        symlink(generation, dir.join("..data")).expect("..data symlink");
        dir.to_owned()
    }

    #[test]
    fn a_config_map_update_is_read_through_the_new_data_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cm = config_map(&dir.path().join("cm"), &[("user-data", b"old")]);
        // What the kubelet does on update: a new generation, `..data` swapped by rename, the
        // old generation removed. The key symlink itself never changes.
        let next = "..2026_11_21_00_05_00.987654321";
        std::fs::create_dir(cm.join(next)).expect("new generation");
        std::fs::write(cm.join(next).join("user-data"), b"new").expect("new key");
        symlink(next, cm.join("..data_tmp")).expect("symlink");
        std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).expect("swap");
        std::fs::remove_dir_all(cm.join("..2026_11_21_00_00_00.123456789")).expect("rm old");
        let found = read("USERDATA", &cm, USER_DATA_KEYS).expect("read");
        assert_eq!(found.expect("user-data").bytes, b"new");
    }

    #[test]
    fn one_config_map_can_hold_both_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let both = config_map(
            &dir.path().join("seed"),
            &[
                ("user-data", b"#cloud-config\n"),
                ("meta-data", b"zone: c\n"),
            ],
        );
        let user = read("USERDATA", &both, USER_DATA_KEYS).expect("read");
        let meta = read("METADATA", &both, METADATA_KEYS).expect("read");
        assert_eq!(user.expect("user-data").bytes, b"#cloud-config\n");
        assert_eq!(meta.expect("meta-data").bytes, b"zone: c\n");
    }

    #[test]
    fn missing_inputs_and_directories_without_keys_are_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = read("USERDATA", &dir.path().join("nope"), USER_DATA_KEYS);
        assert!(missing.expect("read").is_none());
        let other_keys = config_map(&dir.path().join("cm"), &[("cloud.cfg", b"x")]);
        let none = read("USERDATA", &other_keys, USER_DATA_KEYS).expect("read");
        assert!(none.is_none());
    }

    #[test]
    fn two_spellings_of_one_key_are_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cm = config_map(
            &dir.path().join("cm"),
            &[("user-data", b"a"), ("userdata", b"b")],
        );
        let err = read("USERDATA", &cm, USER_DATA_KEYS).expect_err("ambiguous");
        assert!(
            matches!(err, ConfigDriveError::AmbiguousKeys { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn unreadable_input_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cm = config_map(&dir.path().join("cm"), &[("user-data", b"x")]);
        // A key that resolves to a directory cannot be read as a file, even by root (who
        // would read a mode-000 file).
        let broken = cm.join("..data/user-data");
        std::fs::remove_file(&broken).expect("rm");
        std::fs::create_dir(&broken).expect("mkdir");
        let err = read("USERDATA", &cm, USER_DATA_KEYS).expect_err("unreadable");
        let message = err.to_string();
        assert!(
            matches!(err, ConfigDriveError::InputNotRegular { .. }),
            "{err:?}"
        );
        assert!(
            message.contains("USERDATA") && message.contains("cm/user-data"),
            "{message}"
        );
    }

    #[test]
    fn oversize_user_data_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("userdata");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(MAX_INPUT_BYTES + 1).expect("sparse file");
        let err = read("USERDATA", &path, USER_DATA_KEYS).expect_err("too large");
        assert!(
            matches!(err, ConfigDriveError::InputTooLarge { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("16777216"), "{err}");
    }
}
