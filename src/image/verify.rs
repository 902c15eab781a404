//! `IMG_SHA256` for a base that is already in the shared `IMAGE_DIR`: whichever pod wrote
//! that name first must not decide what every pod boots. Hashing a multi-GiB image on every
//! start would be slow, so a **verification record** — `.NAME.verified` beside the base, JSON,
//! mode 0600, written atomically — remembers the digest together with the file's identity
//! (device, inode, size, mtime, ctime). While the identity is unchanged the record answers;
//! any change (a rewrite, a copy, a `touch`, a rename onto the name) makes the next start hash
//! the file again. A mismatch refuses to boot and leaves the file alone: other pods may use it.
//!
//! The record holds two digests, because `IMG_SHA256` is of the bytes as downloaded and a
//! compressed download is stored unpacked: `sha256` is of the file as stored, `source_sha256`
//! of the download it came from (the same digest when it was not compressed).

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::progress::Progress;
use super::sink::{hex, Finished};
use super::source::Compression;
use super::ImageError;

/// The identity of a file: if none of these changed, neither did its bytes (short of a
/// deliberate forgery by someone who can already write `IMAGE_DIR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl Identity {
    pub(crate) fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// What `.NAME.verified` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Lowercase hex sha256 of the file as stored.
    pub sha256: String,
    /// Lowercase hex sha256 of the bytes as downloaded (what `IMG_SHA256` names).
    pub source_sha256: String,
    pub identity: Identity,
}

/// The outcome of checking a stored base against `IMG_SHA256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The digest matches; `cheap` when the record answered without reading the file.
    Verified { cheap: bool },
    /// The digest differs: `actual` is the best knowledge of what the file is.
    Mismatch { actual: String },
}

/// Where the record of `base` lives.
pub(crate) fn record_path(base: &Path) -> PathBuf {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.with_file_name(format!(".{name}.verified"))
}

/// Decides from the record alone, when it still describes the file. `None`: hash the file.
pub(crate) fn by_record(
    record: Option<&Record>,
    now: &Identity,
    expected: &str,
) -> Option<Verdict> {
    let record = record.filter(|r| r.identity == *now)?;
    // IMG_SHA256 may name the download or, for a compressed one, the image as stored.
    Some(
        if record.source_sha256 == expected || record.sha256 == expected {
            Verdict::Verified { cheap: true }
        } else {
            Verdict::Mismatch {
                actual: record.source_sha256.clone(),
            }
        },
    )
}

/// Decides after hashing the file (`stored` is its digest). A stale record still vouches for
/// the download a file came from when the file's bytes are those it recorded (only its
/// identity changed: a copy, a `touch`).
pub(crate) fn by_digest(
    record: Option<&Record>,
    stored: &str,
    expected: &str,
) -> (Verdict, String) {
    if stored == expected {
        return (Verdict::Verified { cheap: false }, stored.to_owned());
    }
    match record.filter(|r| r.sha256 == stored) {
        Some(r) if r.source_sha256 == expected => {
            (Verdict::Verified { cheap: false }, r.source_sha256.clone())
        }
        Some(r) => (
            Verdict::Mismatch {
                actual: r.source_sha256.clone(),
            },
            r.source_sha256.clone(),
        ),
        None => (
            Verdict::Mismatch {
                actual: stored.to_owned(),
            },
            stored.to_owned(),
        ),
    }
}

/// The record beside `base`, if there is a readable one (anything else counts as none: the
/// file is then hashed, which is always safe).
pub(crate) fn load(base: &Path) -> Option<Record> {
    let bytes = std::fs::read(record_path(base)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes the record atomically (a unique temporary name, fsynced, renamed), mode 0600.
pub(crate) fn save(base: &Path, record: &Record) -> io::Result<()> {
    let path = record_path(base);
    let temp = crate::atomic_file::temp_path(
        &path,
        &format!(
            "tmp{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ),
    );
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, &path)?;
        crate::atomic_file::sync_parent(&path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// The identity of `path` now.
pub(crate) fn identity(path: &Path) -> io::Result<Identity> {
    Ok(Identity::of(&std::fs::metadata(path)?))
}

/// Hashes `path`, logging progress for a big file. Returns the digest and the identity the
/// file had throughout, or `None` for the identity when it changed while being read.
pub(crate) fn hash(path: &Path) -> io::Result<(String, Option<Identity>)> {
    let mut file = File::open(path)?;
    let before = Identity::of(&file.metadata()?);
    let mut progress = Progress::new(0, Some(before.size), Instant::now());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if let Some(report) = progress.tick(done, Instant::now()) {
            tracing::info!(path = %path.display(), "hashing the base image to verify IMG_SHA256: {report}");
        }
    }
    let after = Identity::of(&file.metadata()?);
    Ok((hex(&hasher.finalize()), (before == after).then_some(after)))
}

/// Checks a stored base against `IMG_SHA256`: by its verification record when the file is
/// unchanged since, else by hashing it (and recording the result).
pub(crate) fn existing(path: &Path, expected: &str) -> Result<(), ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let record = load(path);
    let now = identity(path).map_err(read_err)?;
    let verdict = match by_record(record.as_ref(), &now, expected) {
        Some(verdict) => verdict,
        None => {
            tracing::info!(path = %path.display(), "hashing the base image to verify IMG_SHA256 (no verification record matches the file)");
            let (stored, identity) = hash(path).map_err(read_err)?;
            let (verdict, source_sha256) = by_digest(record.as_ref(), &stored, expected);
            if let (Verdict::Verified { .. }, Some(identity)) = (&verdict, identity) {
                let fresh = Record {
                    sha256: stored,
                    source_sha256,
                    identity,
                };
                save_record(path, &fresh);
            }
            verdict
        }
    };
    match verdict {
        Verdict::Verified { cheap } => {
            let how = if cheap {
                "by its verification record (file unchanged since it was hashed)"
            } else {
                "by hashing it"
            };
            tracing::info!(path = %path.display(), sha256 = expected, "base image matches IMG_SHA256, verified {how}");
            Ok(())
        }
        Verdict::Mismatch { actual } => Err(ImageError::ExistingChecksum {
            path: path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        }),
    }
}

/// A record that cannot be written costs a hash on the next start, nothing more.
fn save_record(path: &Path, record: &Record) {
    if let Err(error) = save(path, record) {
        tracing::warn!(path = %record_path(path).display(), %error, "could not write the verification record; the base image will be hashed again on the next start");
    }
}

/// Records the digest of a base just downloaded, so that the next start verifies it
/// cheaply. A compressed download is stored unpacked: the stored file is hashed once here,
/// but only when `IMG_SHA256` pins the image (else no start will ask).
pub(crate) fn record_download(target: &Path, finished: &Finished, pinned: bool) {
    let stored = if finished.compression == Compression::None {
        identity(target).map(|id| Some((finished.sha256.clone(), Some(id))))
    } else if pinned {
        hash(target).map(Some)
    } else {
        Ok(None)
    };
    match stored {
        Ok(Some((sha256, Some(identity)))) => save_record(
            target,
            &Record {
                sha256,
                source_sha256: finished.sha256.clone(),
                identity,
            },
        ),
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(path = %target.display(), %error, "could not read the base image to record its digest")
        }
    }
}

#[cfg(test)]
mod tests;
