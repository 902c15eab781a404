//! `BACKUP_SCHEDULE`: PID 1 backs the pet disk up by itself every so long into `BACKUP_DIR`
//! (incremental; a new chain every `BACKUP_FULL_EVERY` backups), then keeps the newest
//! `BACKUP_KEEP` chains. Which files go is decided by [`prune`] (pure); manifests are deleted
//! before their files, so no manifest ever names a missing file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::job::Backups;
use super::manifest::{self, Manifest};
use super::plan::Want;

/// What the timer needs.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub dir: PathBuf,
    pub every: Duration,
    pub full_every: u32,
    pub keep: u32,
}

/// The names (relative to the directory) to delete so that only the newest `keep` chains of
/// `manifests` stay: every manifest of an older chain first, then its files.
pub(crate) fn prune(manifests: &[Manifest], keep: u32) -> Vec<String> {
    // A chain is named by its full backup's file; its age is its oldest manifest's stamp.
    let mut chains: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for manifest in manifests {
        if let Some(full) = manifest.chain.first() {
            chains.entry(full.file.as_str()).or_default().push(manifest);
        }
    }
    let mut ordered: Vec<(&str, Vec<&Manifest>)> = chains.into_iter().collect();
    ordered.sort_by_key(|(_, members)| {
        std::cmp::Reverse(members.iter().map(|m| m.stamp.clone()).min())
    });
    let old = ordered
        .into_iter()
        .skip(usize::try_from(keep).unwrap_or(usize::MAX));
    let (mut names, mut files) = (Vec::new(), Vec::new());
    for (_, members) in old {
        for manifest in members {
            names.push(manifest.name());
            files.extend(manifest.files().map(|f| f.file.clone()));
        }
    }
    files.sort();
    files.dedup();
    names.extend(files);
    names
}

/// Deletes what [`prune`] says in `dir` (this VM's backups only); logs what went.
fn prune_dir(dir: &Path, hostname: &str, keep: u32) {
    let manifests = match manifest::all(dir) {
        Ok(all) => all
            .into_iter()
            .filter(|m| m.hostname == hostname)
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::warn!(error = %crate::logging::render_chain(&e), "could not list old backups");
            return;
        }
    };
    for name in prune(&manifests, keep) {
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed an old backup file (BACKUP_KEEP)")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not remove an old backup file")
            }
        }
    }
}

/// Runs the timer until the task is dropped (the VM stops).
pub(crate) async fn run(backups: Arc<Backups>, schedule: Schedule) {
    tracing::info!(dir = %schedule.dir.display(), every = %humantime::format_duration(schedule.every), full_every = schedule.full_every, keep = schedule.keep, "scheduled backups");
    let start = tokio::time::Instant::now() + schedule.every;
    let mut timer = tokio::time::interval_at(start, schedule.every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let want = Want::Auto {
            full_every: Some(schedule.full_every),
        };
        // A failure is logged and counted by the job; the next tick tries again.
        if backups
            .run(&schedule.dir, want, None, std::future::pending())
            .await
            .is_ok()
        {
            prune_dir(&schedule.dir, &backups.hostname, schedule.keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{Consistency, FileEntry};

    fn manifest(stamp: &str, chain: &[&str]) -> Manifest {
        let entry = |f: &&str| FileEntry {
            file: (*f).to_owned(),
            size: 1,
            sha256: String::new(),
        };
        Manifest {
            version: 1,
            hostname: "vm".to_owned(),
            stamp: stamp.to_owned(),
            created: String::new(),
            kind: String::new(),
            consistency: Consistency::Crash,
            bitmap: String::new(),
            virtual_size: 0,
            base: None,
            chain: chain.iter().map(entry).collect(),
            firmware: vec![entry(&format!("vm-{stamp}.vars").as_str())],
            bytes_copied: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn the_newest_chains_stay_and_older_ones_go_manifests_first() {
        let all = [
            manifest("1", &["a-full"]),
            manifest("2", &["a-full", "b-incr"]),
            manifest("3", &["c-full"]),
            manifest("4", &["c-full", "d-incr"]),
            manifest("5", &["e-full"]),
        ];
        assert_eq!(
            prune(&all, 2),
            [
                "vm-1.manifest.json",
                "vm-2.manifest.json",
                "a-full",
                "b-incr",
                "vm-1.vars",
                "vm-2.vars",
            ]
        );
        assert!(prune(&all, 3).is_empty());
        assert_eq!(prune(&all, 1).len(), 6 + 6);
    }
}
