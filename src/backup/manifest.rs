//! The manifest: `DIR/<hostname>-<stamp>.manifest.json`, written last and atomically, so a backup without
//! one is not a backup. It lists the whole chain from the full backup to this one, with the
//! size and sha256 of every file, whether the guest was frozen, and the firmware files that
//! travel with the disk.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackupError;

/// The suffix that makes a file a manifest.
pub(crate) const SUFFIX: &str = ".manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Consistency {
    /// The guest agent froze the filesystems around the start of the copy.
    Frozen,
    /// No agent answered: the copy is what a power cut at that moment would have left.
    Crash,
}

/// One file beside the manifest, by name (the directory travels as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// The backing image the pet overlay had: a restore rebuilds the overlay on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Base {
    pub path: String,
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub version: u32,
    pub hostname: String,
    pub stamp: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// `full` or `incremental`.
    pub kind: String,
    pub consistency: Consistency,
    /// The dirty bitmap on the pet disk that holds the changes since this backup.
    pub bitmap: String,
    pub virtual_size: u64,
    pub base: Option<Base>,
    /// Oldest (the full backup) first; the last is this backup's own file.
    pub chain: Vec<FileEntry>,
    /// UEFI variables and TPM state copied beside the disk (paths relative to the directory).
    pub firmware: Vec<FileEntry>,
    /// Bytes qemu copied for this backup (the data of this file, not the chain).
    pub bytes_copied: u64,
    pub duration_ms: u64,
}

impl Manifest {
    /// Its file name.
    pub(crate) fn name(&self) -> String {
        format!("{}-{}{SUFFIX}", self.hostname, self.stamp)
    }

    /// Writes it into `dir` atomically and durably.
    pub(crate) fn write(&self, dir: &Path) -> Result<PathBuf, BackupError> {
        let path = dir.join(self.name());
        let mut text = serde_json::to_string_pretty(self).map_err(|e| BackupError::Io {
            what: "encode the manifest",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        crate::atomic_file::write(&path, text.as_bytes()).map_err(|source| BackupError::Io {
            what: "write the manifest",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    pub(crate) fn read(path: &Path) -> Result<Self, BackupError> {
        let text = std::fs::read_to_string(path).map_err(|source| BackupError::Io {
            what: "read the manifest",
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| BackupError::BadManifest {
            path: path.to_owned(),
            why: e.to_string(),
        })
    }

    /// Every file of the chain and the firmware, with the directory they are in.
    pub(crate) fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.chain.iter().chain(self.firmware.iter())
    }
}

/// The newest manifest in `dir` of `hostname` (by stamp; unreadable ones are skipped with a
/// warning: they are not backups).
pub(crate) fn latest(dir: &Path, hostname: &str) -> Result<Option<Manifest>, BackupError> {
    Ok(all(dir)?
        .into_iter()
        .filter(|m| m.hostname == hostname)
        .max_by(|a, b| a.stamp.cmp(&b.stamp)))
}

/// Every readable manifest in `dir`.
pub(crate) fn all(dir: &Path) -> Result<Vec<Manifest>, BackupError> {
    let entries = std::fs::read_dir(dir).map_err(|source| BackupError::Io {
        what: "list the backup directory",
        path: dir.to_owned(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(SUFFIX) {
            continue;
        }
        match Manifest::read(&entry.path()) {
            Ok(manifest) => found.push(manifest),
            Err(e) => {
                tracing::warn!(error = %crate::logging::render_chain(&e), "skipping a manifest")
            }
        }
    }
    Ok(found)
}

/// The size and sha256 of `path`, read once.
pub(crate) fn digest(path: &Path) -> Result<(u64, String), BackupError> {
    let io = |source| BackupError::Io {
        what: "read",
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks every file of `manifest` in `dir` against its size and sha256.
pub(crate) fn verify(manifest: &Manifest, dir: &Path) -> Result<(), BackupError> {
    for entry in manifest.files() {
        let path = dir.join(&entry.file);
        let (size, sha256) = digest(&path)?;
        if size != entry.size || sha256 != entry.sha256 {
            return Err(BackupError::Checksum {
                path,
                want: entry.sha256.clone(),
                got: sha256,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(stamp: &str, host: &str) -> Manifest {
        Manifest {
            version: 1,
            hostname: host.to_owned(),
            stamp: stamp.to_owned(),
            created: "2026-12-02T10:00:00Z".to_owned(),
            kind: "full".to_owned(),
            consistency: Consistency::Frozen,
            bitmap: "kvm-manager-x".to_owned(),
            virtual_size: 4096,
            base: Some(Base {
                path: "/image/base.qcow2".to_owned(),
                format: "qcow2".to_owned(),
            }),
            chain: vec![FileEntry {
                file: format!("{stamp}-full.qcow2"),
                size: 5,
                sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
                    .to_owned(),
            }],
            firmware: Vec::new(),
            bytes_copied: 5,
            duration_ms: 1,
        }
    }

    #[test]
    fn the_newest_manifest_of_this_vm_is_found_and_a_broken_one_is_no_backup() {
        let dir = tempfile::tempdir().expect("dir");
        sample("20261202T100000Z", "vm")
            .write(dir.path())
            .expect("write");
        sample("20261202T120000Z", "vm")
            .write(dir.path())
            .expect("write");
        sample("20261202T130000Z", "other")
            .write(dir.path())
            .expect("write");
        std::fs::write(dir.path().join("vm-20261202T140000Z.manifest.json"), "{").expect("write");
        let latest = latest(dir.path(), "vm").expect("list").expect("one");
        assert_eq!(latest.stamp, "20261202T120000Z");
        assert_eq!(
            Manifest::read(&dir.path().join(latest.name())).expect("read"),
            latest
        );
    }

    #[test]
    fn verify_refuses_a_file_whose_checksum_differs() {
        let dir = tempfile::tempdir().expect("dir");
        let manifest = sample("20261202T100000Z", "vm");
        let file = dir.path().join(&manifest.chain[0].file);
        std::fs::write(&file, "hello").expect("write");
        verify(&manifest, dir.path()).expect("intact");
        std::fs::write(&file, "hellp").expect("write");
        assert!(matches!(
            verify(&manifest, dir.path()),
            Err(BackupError::Checksum { .. })
        ));
    }
}
