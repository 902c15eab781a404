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
mod tests {
    use super::*;

    const A: &str = "aa";
    const B: &str = "bb";
    const C: &str = "cc";

    fn identity(ino: u64) -> Identity {
        Identity {
            dev: 1,
            ino,
            size: 4096,
            mtime: 10,
            mtime_nsec: 0,
            ctime: 10,
            ctime_nsec: 5,
        }
    }

    fn record(sha256: &str, source: &str, ino: u64) -> Record {
        Record {
            sha256: sha256.to_owned(),
            source_sha256: source.to_owned(),
            identity: identity(ino),
        }
    }

    #[test]
    fn an_unchanged_file_is_judged_by_its_record() {
        let r = record(A, A, 7);
        assert_eq!(
            by_record(Some(&r), &identity(7), A),
            Some(Verdict::Verified { cheap: true })
        );
        assert_eq!(
            by_record(Some(&r), &identity(7), B),
            Some(Verdict::Mismatch { actual: A.into() })
        );
    }

    #[test]
    fn a_record_also_answers_for_the_digest_of_the_unpacked_file() {
        let r = record(A, C, 7);
        assert_eq!(
            by_record(Some(&r), &identity(7), A),
            Some(Verdict::Verified { cheap: true })
        );
    }

    #[test]
    fn any_change_of_identity_or_no_record_means_hashing() {
        let r = record(A, A, 7);
        assert_eq!(by_record(Some(&r), &identity(8), A), None);
        let mut touched = identity(7);
        touched.ctime_nsec += 1;
        assert_eq!(by_record(Some(&r), &touched, A), None);
        assert_eq!(by_record(None, &identity(7), A), None);
    }

    #[test]
    fn a_hashed_file_matches_directly_or_through_the_download_it_came_from() {
        assert_eq!(by_digest(None, A, A).0, Verdict::Verified { cheap: false });
        // Unpacked from a download whose digest was C.
        let r = record(A, C, 7);
        assert_eq!(
            by_digest(Some(&r), A, C),
            (Verdict::Verified { cheap: false }, C.to_owned())
        );
        assert_eq!(
            by_digest(Some(&r), A, B).0,
            Verdict::Mismatch { actual: C.into() }
        );
    }

    #[test]
    fn a_record_of_other_bytes_vouches_for_nothing() {
        let r = record(B, C, 7);
        assert_eq!(
            by_digest(Some(&r), A, C).0,
            Verdict::Mismatch { actual: A.into() }
        );
    }

    #[test]
    fn records_are_hidden_beside_the_base_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("debian.qcow2");
        std::fs::write(&base, b"disk").expect("write");
        assert_eq!(
            record_path(&base),
            dir.path().join(".debian.qcow2.verified")
        );
        let (digest, id) = hash(&base).expect("hash");
        let id = id.expect("unchanged while hashed");
        let r = Record {
            sha256: digest.clone(),
            source_sha256: digest,
            identity: id,
        };
        save(&base, &r).expect("save");
        assert_eq!(load(&base), Some(r));
        let mode = std::fs::metadata(record_path(&base)).expect("meta").mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }
}
