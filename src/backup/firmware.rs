//! The firmware files that belong to the disk — UEFI variables (`PET_DIR/<host>.vars`) and TPM
//! state (`PET_DIR/<host>.tpm/`) — copied beside a backup, with their checksums.

use std::path::{Path, PathBuf};

use super::manifest::{self, FileEntry};
use super::BackupError;

/// Copies the UEFI variables (`PET_DIR/<host>.vars`) and the TPM state (`PET_DIR/<host>.tpm/`)
/// beside the backup, when they exist: they belong to the disk.
pub(crate) fn copy(
    pet_dir: &Path,
    hostname: &str,
    dir: &Path,
    stamp: &str,
) -> Result<Vec<FileEntry>, BackupError> {
    let mut copied = Vec::new();
    let prefix = format!("{hostname}-{stamp}");
    let mut copy = |from: &Path, name: String| -> Result<(), BackupError> {
        let bytes = std::fs::read(from).map_err(|source| BackupError::Io {
            what: "read",
            path: from.to_owned(),
            source,
        })?;
        let to = dir.join(&name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|source| BackupError::Io {
                what: "create",
                path: parent.to_owned(),
                source,
            })?;
        }
        crate::atomic_file::write(&to, &bytes).map_err(|source| BackupError::Io {
            what: "write",
            path: to.clone(),
            source,
        })?;
        let (size, sha256) = manifest::digest(&to)?;
        copied.push(FileEntry {
            file: name,
            size,
            sha256,
        });
        Ok(())
    };
    let vars = pet_dir.join(format!("{hostname}.vars"));
    if vars.is_file() {
        copy(&vars, format!("{prefix}.vars"))?;
    }
    let tpm = pet_dir.join(format!("{hostname}.tpm"));
    if tpm.is_dir() {
        let mut files: Vec<PathBuf> = walk(&tpm);
        files.sort();
        for file in files {
            if let Ok(relative) = file.strip_prefix(&tpm) {
                copy(&file, format!("{prefix}.tpm/{}", relative.display()))?;
            }
        }
    }
    Ok(copied)
}

/// Regular files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => found.extend(walk(&path)),
            Ok(t) if t.is_file() => found.push(path),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_files_are_copied_beside_the_backup_with_their_checksums() {
        let pet = tempfile::tempdir().expect("pet");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(pet.path().join("vm.vars"), "vars").expect("vars");
        std::fs::create_dir_all(pet.path().join("vm.tpm/sub")).expect("tpm");
        std::fs::write(pet.path().join("vm.tpm/sub/state"), "tpm").expect("tpm");
        let copied = copy(pet.path(), "vm", dir.path(), "S").expect("copy");
        let names: Vec<&str> = copied.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, ["vm-S.vars", "vm-S.tpm/sub/state"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("vm-S.tpm/sub/state")).expect("read"),
            "tpm"
        );
        let none = copy(dir.path(), "other", dir.path(), "S").expect("none");
        assert!(none.is_empty());
    }
}
