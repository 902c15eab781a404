//! Running one backup against the live VM (QMP), from the decision to the manifest.
//!
//! The order is what makes a backup safe to interrupt at any point: the copy goes to a hidden
//! `.NAME.partial<random>` file (removed on every failure; a killed PID 1's leftovers are
//! removed by the next backup), which is fsynced and renamed only when qemu reports the job
//! complete; the manifest comes last. A failed full backup removes only the bitmap it added, a
//! failed incremental one gives its bitmap back to qemu (`bitmap-mode=on-success`): the newest
//! manifest and its bitmap always describe a chain that still holds every change.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder as _, StorageOpenOptions};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::manifest::{self, Base, Consistency, FileEntry, Manifest};
use super::plan::{self, Bitmap, Facts, Plan, Want};
use super::BackupError;
use crate::qemu::agent::control::{act, Action};
use crate::qemu::agent::freeze::Freezer;
use crate::qemu::qmp::Qmp;
use crate::size::ByteSize;

/// The pet overlay's node (qemu/args.rs names it).
const DISK_NODE: &str = "disk0";
/// The node of the file being written, while a job runs.
const TARGET_NODE: &str = "kvm-manager-backup";
const JOB_ID: &str = "kvm-manager-backup";
/// The tag of the file being written: `.NAME.partial<random>`.
const PARTIAL: &str = "partial";
/// How often the progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a backup needs of the running VM; one per `kvm-manager run`.
#[derive(Debug)]
pub(crate) struct Backups {
    pub qmp: Qmp,
    pub freezer: Option<Arc<Freezer>>,
    pub hostname: String,
    pub pet_dir: PathBuf,
    /// The pet overlay's backing image, recorded for the restore.
    pub base: Option<Base>,
    /// One backup at a time.
    pub running: tokio::sync::Mutex<()>,
    /// `BACKUP_DIR`: where `POST /backup` and the schedule write.
    pub default_dir: Option<PathBuf>,
}

/// What one backup did.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub manifest: Manifest,
    pub path: PathBuf,
    /// Why a full one was taken when an incremental could have been asked for.
    pub reason: Option<String>,
}

impl Outcome {
    /// The answer body (socket and HTTP).
    pub(crate) fn answer(&self) -> Value {
        json!({
            "manifest": self.path,
            "kind": self.manifest.kind,
            "consistency": self.manifest.consistency,
            "bytes_copied": self.manifest.bytes_copied,
            "virtual_size": self.manifest.virtual_size,
            "chain": self.manifest.chain.iter().map(|f| &f.file).collect::<Vec<_>>(),
            "full_because": self.reason,
            "duration_ms": self.manifest.duration_ms,
        })
    }
}

impl Backups {
    /// Whether a backup runs now.
    pub(crate) fn busy(&self) -> bool {
        self.running.try_lock().is_err()
    }

    /// Takes one backup into `dir`; `cancelled` resolving cancels it (a client that went away).
    pub(crate) async fn run(
        &self,
        dir: &Path,
        want: Want,
        rate_limit: Option<u64>,
        cancelled: impl Future<Output = ()>,
    ) -> Result<Outcome, BackupError> {
        let _one = self.running.try_lock().map_err(|_| BackupError::Busy)?;
        let started = Instant::now();
        crate::metrics::backup_started();
        let result = self.take(dir, want, rate_limit, cancelled, started).await;
        match &result {
            Ok(outcome) => {
                crate::metrics::backup_succeeded(
                    outcome.manifest.bytes_copied,
                    started.elapsed(),
                    SystemTime::now(),
                );
                tracing::info!(
                    manifest = %outcome.path.display(),
                    kind = outcome.manifest.kind,
                    consistency = ?outcome.manifest.consistency,
                    copied = %ByteSize(outcome.manifest.bytes_copied),
                    ms = outcome.manifest.duration_ms,
                    "backup complete"
                );
            }
            Err(e) => {
                crate::metrics::backup_failed();
                tracing::error!(error = %crate::logging::render_chain(e), "backup failed");
            }
        }
        result
    }

    async fn take(
        &self,
        dir: &Path,
        want: Want,
        rate_limit: Option<u64>,
        cancelled: impl Future<Output = ()>,
        started: Instant,
    ) -> Result<Outcome, BackupError> {
        if !dir.is_dir() {
            return Err(BackupError::NoDir {
                path: dir.to_owned(),
            });
        }
        remove_leftovers(dir, &self.hostname);
        let bitmaps: Vec<Bitmap> = self
            .qmp
            .dirty_bitmaps(DISK_NODE)
            .await?
            .into_iter()
            .map(|b| Bitmap {
                name: b.name,
                recording: b.recording,
                busy: b.busy,
                inconsistent: b.inconsistent,
            })
            .collect();
        let latest = manifest::latest(dir, &self.hostname)?;
        let chain_present = latest
            .as_ref()
            .is_some_and(|m| m.chain.iter().all(|f| dir.join(&f.file).is_file()));
        let now = SystemTime::now();
        let stamp = stamp(now);
        let plan = plan::decide(
            want,
            &Facts {
                hostname: &self.hostname,
                latest: latest.as_ref(),
                chain_present,
                bitmaps: &bitmaps,
                stamp: &stamp,
            },
        )
        .map_err(BackupError::NoIncremental)?;
        let reason = match &plan {
            Plan::Full {
                reason: Some(r), ..
            } => Some(r.clone()),
            _ => None,
        };
        tracing::info!(kind = plan.kind(), file = plan.file(), full_because = reason.as_deref(), dir = %dir.display(), "backup starting");

        let final_path = dir.join(plan.file());
        let size = self.qmp.virtual_size(DISK_NODE).await?;
        let backing = match &plan {
            Plan::Incremental { chain, .. } => chain.last().cloned(),
            Plan::Full { .. } => None,
        };
        let partial = create_target(&final_path, size, backing.as_deref())?;
        let copied = self
            .copy(&plan, partial.path(), rate_limit, cancelled)
            .await;
        let (copied, consistency) = match copied {
            Ok(done) => done,
            Err(e) => {
                // `partial` drops (and goes) on return; a full's new bitmap must go too, so
                // the old chain's bitmap stays the one the newest manifest names.
                if let Plan::Full { bitmap, .. } = &plan {
                    let _ = self.qmp.remove_dirty_bitmap(DISK_NODE, bitmap).await;
                }
                return Err(e);
            }
        };

        let finished = Finished {
            partial,
            final_path: &final_path,
            dir,
            plan: &plan,
            latest: latest.as_ref(),
            stamp,
            now,
            consistency,
            virtual_size: size,
            copied,
            started,
        };
        let (manifest, path) = match self.complete(finished) {
            Ok(done) => done,
            Err(e) => {
                // qemu counts the copy as done (an incremental's bitmap is cleared), but it is
                // no backup: drop the bitmap too, so the next backup is a full one instead of
                // an incremental that would miss this copy's changes.
                let _ = std::fs::remove_file(&final_path);
                if let Err(e) = self.qmp.remove_dirty_bitmap(DISK_NODE, plan.bitmap()).await {
                    tracing::warn!(error = %e, "could not remove the dirty bitmap of an unfinished backup");
                }
                return Err(e);
            }
        };
        if let Plan::Full { bitmap, .. } = &plan {
            // The new chain is complete: older chains' bitmaps only cost writes now.
            for stale in plan::stale_bitmaps(&bitmaps, bitmap) {
                if let Err(e) = self.qmp.remove_dirty_bitmap(DISK_NODE, stale).await {
                    tracing::warn!(bitmap = stale, error = %e, "could not remove an old dirty bitmap");
                }
            }
        }
        Ok(Outcome {
            manifest,
            path,
            reason,
        })
    }

    /// Makes a copied file a backup: durable under its final name, then the firmware, then
    /// the manifest.
    fn complete(&self, f: Finished<'_>) -> Result<(Manifest, PathBuf), BackupError> {
        let io = |what| {
            let path = f.final_path.to_owned();
            move |source| BackupError::Io { what, path, source }
        };
        f.partial.as_file().sync_all().map_err(io("fsync"))?;
        f.partial
            .persist(f.final_path)
            .map_err(|e| BackupError::Io {
                what: "rename into place",
                path: f.final_path.to_owned(),
                source: e.error,
            })?;
        crate::atomic_file::sync_parent(f.final_path).map_err(io("fsync the directory of"))?;
        let (file_size, sha256) = manifest::digest(f.final_path)?;
        let mut chain = match (f.plan, f.latest) {
            (Plan::Incremental { .. }, Some(latest)) => latest.chain.clone(),
            _ => Vec::new(),
        };
        chain.push(FileEntry {
            file: f.plan.file().to_owned(),
            size: file_size,
            sha256,
        });
        let firmware = super::firmware::copy(&self.pet_dir, &self.hostname, f.dir, &f.stamp)?;
        let manifest = Manifest {
            version: 1,
            hostname: self.hostname.clone(),
            stamp: f.stamp,
            created: humantime::format_rfc3339_seconds(f.now).to_string(),
            kind: f.plan.kind().to_owned(),
            consistency: f.consistency,
            bitmap: f.plan.bitmap().to_owned(),
            virtual_size: f.virtual_size,
            base: self.base.clone(),
            chain,
            firmware,
            bytes_copied: f.copied,
            duration_ms: u64::try_from(f.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let path = manifest.write(f.dir)?;
        Ok((manifest, path))
    }

    /// Opens the target in qemu, starts the job (frozen around the start if the agent
    /// answers), waits for its end; returns the bytes copied and the consistency.
    async fn copy(
        &self,
        plan: &Plan,
        target: &Path,
        rate_limit: Option<u64>,
        cancelled: impl Future<Output = ()>,
    ) -> Result<(u64, Consistency), BackupError> {
        self.qmp
            .blockdev_add(json!({
                "driver": "qcow2",
                "node-name": TARGET_NODE,
                "file": { "driver": "file", "filename": target.to_string_lossy() },
                // Only the clusters the job writes: the chain below is not opened.
                "backing": null,
            }))
            .await?;
        let result = self.copy_into_target(plan, rate_limit, cancelled).await;
        if let Err(e) = self.qmp.blockdev_del(TARGET_NODE).await {
            tracing::warn!(error = %e, "could not close the backup target in qemu");
        }
        result
    }

    async fn copy_into_target(
        &self,
        plan: &Plan,
        rate_limit: Option<u64>,
        cancelled: impl Future<Output = ()>,
    ) -> Result<(u64, Consistency), BackupError> {
        let mut events = self.qmp.events();
        let mut backup = match plan {
            // Not finalized by itself: we decide, once the copy is done, whether it counts
            // (an incremental's bitmap is cleared only then), or is cancelled (the bitmap
            // keeps every change).
            Plan::Full { .. } => json!({
                "job-id": JOB_ID, "device": DISK_NODE, "target": TARGET_NODE, "sync": "full",
                "auto-finalize": false,
            }),
            Plan::Incremental { bitmap, .. } => json!({
                "job-id": JOB_ID, "device": DISK_NODE, "target": TARGET_NODE,
                "sync": "incremental", "bitmap": bitmap, "bitmap-mode": "on-success",
                "auto-finalize": false,
            }),
        };
        if let Some(speed) = rate_limit {
            backup["speed"] = json!(speed);
        }
        let mut actions = Vec::new();
        if let Plan::Full { bitmap, .. } = plan {
            actions.push(json!({ "type": "block-dirty-bitmap-add", "data": {
                "node": DISK_NODE, "name": bitmap, "persistent": true,
            }}));
        }
        actions.push(json!({ "type": "blockdev-backup", "data": backup }));

        let frozen = match &self.freezer {
            Some(freezer) => match act(freezer, Action::Freeze).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::info!(error = %crate::logging::render_chain(&e), "no freeze (the guest agent did not answer): the backup is crash-consistent");
                    false
                }
            },
            None => false,
        };
        let freeze_started = Instant::now();
        let started = self.qmp.transaction(Value::Array(actions)).await;
        if frozen {
            if let Some(freezer) = &self.freezer {
                if let Err(e) = act(freezer, Action::Thaw).await {
                    tracing::warn!(error = %crate::logging::render_chain(&e), "could not thaw the guest after the backup started (it thaws by itself after FREEZE_TIMEOUT)");
                }
                let ms = u64::try_from(freeze_started.elapsed().as_millis()).unwrap_or(u64::MAX);
                tracing::info!(ms, "guest frozen while the backup job started");
            }
        }
        started?;
        let consistency = if frozen {
            Consistency::Frozen
        } else {
            Consistency::Crash
        };
        let copied = self.wait(&mut events, cancelled).await?;
        Ok((copied, consistency))
    }

    /// Waits for the job's end, logging progress; cancels it when `cancelled` resolves.
    async fn wait(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<crate::qemu::qmp::QmpEvent>,
        cancelled: impl Future<Output = ()>,
    ) -> Result<u64, BackupError> {
        tokio::pin!(cancelled);
        let mut cancelling = false;
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.tick().await;
        loop {
            tokio::select! {
                // A client gone is seen before the job's end is acted on.
                biased;
                () = &mut cancelled, if !cancelling => {
                    tracing::warn!("the backup's client went away: cancelling the job");
                    cancelling = true;
                    self.qmp.cancel_block_job(JOB_ID).await?;
                }
                event = events.recv() => match event {
                    Ok(event) if is_ours(&event.data) => match event.name.as_str() {
                        "JOB_STATUS_CHANGE"
                            if event.data.get("status").and_then(Value::as_str) == Some("pending")
                                && !cancelling =>
                        {
                            self.qmp.finalize_job(JOB_ID).await?;
                        }
                        "BLOCK_JOB_COMPLETED" => {
                            if let Some(error) = event.data.get("error").and_then(Value::as_str) {
                                return Err(BackupError::Job(error.to_owned()));
                            }
                            return Ok(event.data.get("offset").and_then(Value::as_u64).unwrap_or(0));
                        }
                        "BLOCK_JOB_CANCELLED" => return Err(BackupError::Cancelled),
                        _ => {}
                    },
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Err(BackupError::Job("qemu went away".to_owned())),
                },
                _ = progress.tick() => {
                    if let Some(job) = self.qmp.block_jobs().await?.into_iter().find(|j| j.id == JOB_ID) {
                        crate::metrics::backup_progress(job.offset);
                        tracing::info!(done = %ByteSize(job.offset), of = %ByteSize(job.len), "backup progress");
                    }
                }
            }
        }
    }
}

/// A copy qemu has finished, to be made a backup.
struct Finished<'a> {
    partial: tempfile::NamedTempFile,
    final_path: &'a Path,
    dir: &'a Path,
    plan: &'a Plan,
    latest: Option<&'a Manifest>,
    stamp: String,
    now: SystemTime,
    consistency: Consistency,
    virtual_size: u64,
    copied: u64,
    started: Instant,
}

/// Block-job events name the job `device`, job events `id`.
fn is_ours(data: &Value) -> bool {
    ["device", "id"]
        .iter()
        .any(|key| data.get(*key).and_then(Value::as_str) == Some(JOB_ID))
}

/// `YYYYMMDDTHHMMSSZ`, sortable, from `now`.
fn stamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace(['-', ':'], "")
}

/// The empty qcow2 the job writes into, under a hidden unique name beside `path` (removed when
/// dropped); `backing` is the previous backup's file name (relative: the chain moves as a
/// directory).
fn create_target(
    path: &Path,
    size: u64,
    backing: Option<&str>,
) -> Result<tempfile::NamedTempFile, BackupError> {
    let err = |source| BackupError::Create {
        path: path.to_owned(),
        source,
    };
    let named = crate::atomic_file::unique_temp(path, PARTIAL).map_err(err)?;
    let temp = named.path().to_path_buf();
    let file = named.as_file().try_clone().map_err(err)?;
    let storage =
        ImagoFile::from_open_file(file, StorageOpenOptions::new().write(true).filename(&temp))
            .map_err(err)?;
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size);
    if let Some(backing) = backing {
        builder = builder.backing(backing.to_owned(), "qcow2".to_owned());
    }
    builder.create().map_err(err)?;
    Ok(named)
}

/// Removes `.HOST-…partial…` files a killed PID 1 left (never anything else).
fn remove_leftovers(dir: &Path, hostname: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{hostname}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.contains(&format!(".{PARTIAL}")) {
            tracing::info!(file = %entry.path().display(), "removing an interrupted backup's file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sort_like_time() {
        let a = stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let b = stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_001));
        assert_eq!(a, "20270115T080000Z");
        assert!(a < b);
    }

    #[test]
    fn only_this_vms_interrupted_files_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        for name in [
            ".vm-S-full.qcow2.partialXYZ",
            ".other-S-full.qcow2.partialXYZ",
            "vm-S-full.qcow2",
        ] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        remove_leftovers(dir.path(), "vm");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".other-S-full.qcow2.partialXYZ", "vm-S-full.qcow2"]);
    }
}
