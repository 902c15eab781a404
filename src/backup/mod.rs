//! Backups of the pet disk while the VM runs, and their restore (issue 22).
//!
//! PID 1 owns the only QMP connection, so every backup runs inside `kvm-manager run`: the
//! `backup` subcommand asks over `RUNTIME_DIR/backup.sock` ([`socket`]), `POST /backup` and the
//! `BACKUP_SCHEDULE` timer call the same [`job::Backups`]. A full backup adds a persistent dirty
//! bitmap to the pet overlay and starts `blockdev-backup sync=full` in one QMP transaction (the
//! copy and the bitmap share a point in time); an incremental one copies only the clusters of
//! that bitmap into a qcow2 whose backing file is the previous backup. Files are written under a
//! hidden `.partial` name and renamed when complete; the [`manifest`] is written last. A restore
//! ([`restore`]) runs with the VM stopped, under the pet lock.

pub(crate) mod firmware;
pub(crate) mod job;
pub(crate) mod manifest;
pub(crate) mod plan;
pub(crate) mod restore;
pub(crate) mod schedule;
pub(crate) mod socket;

use std::path::PathBuf;

use crate::qemu::qmp::QmpError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupError {
    #[error("could not {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a backup manifest: {why}", path.display())]
    BadManifest { path: PathBuf, why: String },
    #[error("qemu refused the backup")]
    Qmp(#[from] QmpError),
    #[error("could not create the backup file {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup job failed: {0}")]
    Job(String),
    #[error("the backup was cancelled (its client went away)")]
    Cancelled,
    #[error(
        "no incremental backup possible: {0}. Fix: take a full one (`kvm-manager backup --full`)"
    )]
    NoIncremental(String),
    #[error("a backup is already running; wait for it to end")]
    Busy,
    #[error("the backup directory {} does not exist or is not a directory; mount a volume there (BACKUP_DIR, --to)", path.display())]
    NoDir { path: PathBuf },
    #[error(
        "{} does not match the manifest (sha256 {got}, expected {want}): the backup is damaged; restore another one",
        path.display()
    )]
    Checksum {
        path: PathBuf,
        want: String,
        got: String,
    },
    #[error(
        "the pet disk {} exists; pass --force to replace it (it is kept aside until the restore is complete)",
        path.display()
    )]
    PetExists { path: PathBuf },
    #[error(
        "the base image {} the backup was taken on is missing; run `kvm-manager image` first (same IMG_SOURCE)",
        path.display()
    )]
    NoBase { path: PathBuf },
    #[error("{program} failed ({status}) during the restore")]
    Tool { program: String, status: String },
    #[error("could not run {program}")]
    Spawn {
        program: String,
        #[source]
        source: crate::pid1::Pid1Error,
    },
    #[error("could not reach kvm-manager's backup socket {} (is `kvm-manager run` running in this pod, with the same RUNTIME_DIR?)", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup failed: {0}")]
    Refused(String),
}
