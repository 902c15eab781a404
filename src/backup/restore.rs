//! `kvm-manager restore --from DIR/<manifest>`: with the VM stopped (the caller holds the pet
//! lock), rebuilds `PET_DIR/<hostname>.qcow2` from the backup chain onto the base image the
//! backup names, and puts the firmware files back.
//!
//! Nothing changes until every file's sha256 matched and the rebuilt disk compared equal to the
//! chain (`qemu-img compare`) and passed `qemu-img check`; the old pet disk is kept aside under
//! `<hostname>.qcow2.pre-restore` until the new one is in place, then removed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::manifest::{self, Manifest};
use super::BackupError;
use crate::pid1::reaper::{Reaper, Stdio};

/// What to restore, and where.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub manifest: &'a Path,
    pub pet_dir: &'a Path,
    pub hostname: &'a str,
    pub force: bool,
    /// `qemu-img`, looked up in `PATH` unless it has a slash.
    pub qemu_img: &'a str,
}

/// Where a firmware file of the backup goes back to (pure): `<host>-<stamp>.vars` →
/// `PET_DIR/<hostname>.vars`, `<host>-<stamp>.tpm/x` → `PET_DIR/<hostname>.tpm/x`.
pub(crate) fn firmware_target(
    manifest: &Manifest,
    file: &str,
    pet_dir: &Path,
    hostname: &str,
) -> Option<PathBuf> {
    let prefix = format!("{}-{}", manifest.hostname, manifest.stamp);
    let suffix = file.strip_prefix(&prefix)?;
    let allowed = suffix == ".vars"
        || suffix
            .strip_prefix(".tpm/")
            .is_some_and(|rest| !rest.split('/').any(|part| part == ".." || part.is_empty()));
    allowed.then(|| pet_dir.join(format!("{hostname}{suffix}")))
}

/// Restores; returns the pet disk's path.
pub(crate) async fn restore(
    request: &Request<'_>,
    reaper: &Reaper,
) -> Result<PathBuf, BackupError> {
    let manifest = Manifest::read(request.manifest)?;
    let dir = request
        .manifest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if manifest.hostname != request.hostname {
        tracing::warn!(
            backup_of = manifest.hostname,
            hostname = request.hostname,
            "restoring another VM's backup onto this one"
        );
    }
    tracing::info!(manifest = %request.manifest.display(), files = manifest.chain.len() + manifest.firmware.len(), "verifying the backup's checksums");
    manifest::verify(&manifest, &dir)?;
    let pet = request.pet_dir.join(format!("{}.qcow2", request.hostname));
    if pet.exists() && !request.force {
        return Err(BackupError::PetExists { path: pet });
    }
    if let Some(base) = &manifest.base {
        if !Path::new(&base.path).is_file() {
            return Err(BackupError::NoBase {
                path: PathBuf::from(&base.path),
            });
        }
    }
    let top = manifest
        .chain
        .last()
        .ok_or_else(|| BackupError::BadManifest {
            path: request.manifest.to_owned(),
            why: "its chain is empty".to_owned(),
        })?;
    let top = dir.join(&top.file);
    let building = crate::atomic_file::temp_path(&pet, "restoring");
    let _ = std::fs::remove_file(&building);
    let result = build(request, &manifest, &top, &building, reaper).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&building);
        return Err(e);
    }

    // Firmware first (its old files are only replaced, one by one, atomically), then the disk.
    for entry in &manifest.firmware {
        let Some(target) =
            firmware_target(&manifest, &entry.file, request.pet_dir, request.hostname)
        else {
            tracing::warn!(
                file = entry.file,
                "skipping a firmware file of unknown kind"
            );
            continue;
        };
        let bytes = std::fs::read(dir.join(&entry.file)).map_err(|source| BackupError::Io {
            what: "read",
            path: dir.join(&entry.file),
            source,
        })?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|source| BackupError::Io {
                what: "create",
                path: parent.to_owned(),
                source,
            })?;
        }
        crate::atomic_file::write(&target, &bytes).map_err(|source| BackupError::Io {
            what: "write",
            path: target.clone(),
            source,
        })?;
    }
    let aside = pet.with_file_name(format!("{}.qcow2.pre-restore", request.hostname));
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { what, path, source }
    };
    let had_one = pet.exists();
    if had_one {
        std::fs::rename(&pet, &aside).map_err(io("keep the old pet disk aside as", &aside))?;
    }
    std::fs::rename(&building, &pet).map_err(io("put the restored disk in place at", &pet))?;
    crate::atomic_file::sync_parent(&pet).map_err(io("fsync the directory of", &pet))?;
    if had_one {
        std::fs::remove_file(&aside).map_err(io("remove the old pet disk", &aside))?;
    }
    tracing::info!(pet = %pet.display(), kind = manifest.kind, stamp = manifest.stamp, "restored");
    Ok(pet)
}

/// `qemu-img convert` of the chain, `rebase` onto the base, then `compare` and `check`.
async fn build(
    request: &Request<'_>,
    manifest: &Manifest,
    top: &Path,
    building: &Path,
    reaper: &Reaper,
) -> Result<(), BackupError> {
    // Flattened first, then a safe rebase onto the base: it writes explicit zeros where the
    // backup reads zero and the base does not (`convert -B` would assume the chain's
    // unallocated clusters equal the base and let the base show through).
    let convert: Vec<OsString> = vec![
        "convert".into(),
        "-q".into(),
        "-O".into(),
        "qcow2".into(),
        top.as_os_str().to_owned(),
        building.as_os_str().to_owned(),
    ];
    run(request.qemu_img, &convert, reaper).await?;
    if let Some(base) = &manifest.base {
        let rebase: Vec<OsString> = vec![
            "rebase".into(),
            "-q".into(),
            "-b".into(),
            base.path.clone().into(),
            "-F".into(),
            base.format.clone().into(),
            building.as_os_str().to_owned(),
        ];
        run(request.qemu_img, &rebase, reaper).await?;
    }
    run(
        request.qemu_img,
        &[
            OsString::from("compare"),
            "-q".into(),
            top.as_os_str().to_owned(),
            building.as_os_str().to_owned(),
        ],
        reaper,
    )
    .await?;
    run(
        request.qemu_img,
        &[
            OsString::from("check"),
            "-q".into(),
            building.as_os_str().to_owned(),
        ],
        reaper,
    )
    .await?;
    std::fs::File::open(building)
        .and_then(|f| f.sync_all())
        .map_err(|source| BackupError::Io {
            what: "fsync",
            path: building.to_owned(),
            source,
        })
}

/// Runs `program args` as a supervised child and waits for it to succeed.
async fn run(program: &str, args: &[OsString], reaper: &Reaper) -> Result<(), BackupError> {
    tracing::info!(program, args = ?args, "running");
    let spawned = reaper
        .spawn(
            program.as_ref(),
            args,
            [Stdio::Null, Stdio::Inherit, Stdio::Inherit],
        )
        .map_err(|source| BackupError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let status = spawned.exit.await.map_err(|_| BackupError::Tool {
        program: program.to_owned(),
        status: "not reaped".to_owned(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BackupError::Tool {
            program: format!(
                "{program} {}",
                args.first()
                    .map(|a| a.to_string_lossy())
                    .unwrap_or_default()
            ),
            status: status.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::Consistency;

    #[test]
    fn firmware_goes_back_under_this_hostname_and_nowhere_else() {
        let manifest = Manifest {
            version: 1,
            hostname: "old".to_owned(),
            stamp: "S".to_owned(),
            created: String::new(),
            kind: "full".to_owned(),
            consistency: Consistency::Crash,
            bitmap: String::new(),
            virtual_size: 0,
            base: None,
            chain: Vec::new(),
            firmware: Vec::new(),
            bytes_copied: 0,
            duration_ms: 0,
        };
        let pet = Path::new("/pet");
        let target = |file| firmware_target(&manifest, file, pet, "new");
        assert_eq!(target("old-S.vars"), Some(PathBuf::from("/pet/new.vars")));
        assert_eq!(
            target("old-S.tpm/tpm2-00.permall"),
            Some(PathBuf::from("/pet/new.tpm/tpm2-00.permall"))
        );
        assert_eq!(target("old-S.tpm/../../etc/passwd"), None);
        assert_eq!(target("old-S-full.qcow2"), None);
        assert_eq!(target("other-S.vars"), None);
    }
}
