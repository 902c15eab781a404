//! Which backup to take (pure): a full one, or an incremental one on top of the newest
//! complete backup in the directory — only when that backup's dirty bitmap is still on the pet
//! disk, whole, and nothing else says the chain is broken. Every reason for a full is a
//! sentence, logged and returned to the caller.

use super::manifest::Manifest;

/// Prefix of the dirty bitmaps we own on the pet disk (`kvm-manager-<stamp>`).
pub(crate) const BITMAP_PREFIX: &str = "kvm-manager-";

/// What the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Full,
    Incremental,
    /// Incremental when possible, else full; a full also when the chain has `full_every`
    /// members already.
    Auto {
        full_every: Option<u32>,
    },
}

/// A dirty bitmap on the pet disk, as qemu reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    pub name: String,
    pub recording: bool,
    pub busy: bool,
    /// qemu found it not saved cleanly (qemu was killed): it may miss writes.
    pub inconsistent: bool,
}

/// The facts the decision needs.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    pub hostname: &'a str,
    /// The newest complete backup in the directory, if any.
    pub latest: Option<&'a Manifest>,
    /// Whether every file of `latest`'s chain is still in the directory.
    pub chain_present: bool,
    pub bitmaps: &'a [Bitmap],
    /// `YYYYMMDDTHHMMSSZ` of now: names the new files and bitmap.
    pub stamp: &'a str,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    Full {
        /// The new bitmap, added in the same transaction as the copy starts.
        bitmap: String,
        file: String,
        /// Why not incremental (for the log and the answer); `None` when a full was asked.
        reason: Option<String>,
    },
    Incremental {
        bitmap: String,
        file: String,
        /// The previous files of the chain, oldest first; the last is the new file's backing.
        chain: Vec<String>,
        /// The chain's manifest the new one extends.
        parent: String,
    },
}

impl Plan {
    pub(crate) fn file(&self) -> &str {
        match self {
            Plan::Full { file, .. } | Plan::Incremental { file, .. } => file,
        }
    }

    pub(crate) fn bitmap(&self) -> &str {
        match self {
            Plan::Full { bitmap, .. } | Plan::Incremental { bitmap, .. } => bitmap,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Plan::Full { .. } => "full",
            Plan::Incremental { .. } => "incremental",
        }
    }
}

/// Decides; `Err` only when an incremental was asked for and cannot be taken (the reason).
pub(crate) fn decide(want: Want, facts: &Facts<'_>) -> Result<Plan, String> {
    let full = |reason: Option<String>| Plan::Full {
        bitmap: format!("{BITMAP_PREFIX}{}", facts.stamp),
        file: format!("{}-{}-full.qcow2", facts.hostname, facts.stamp),
        reason,
    };
    if want == Want::Full {
        return Ok(full(None));
    }
    let incremental = why_not_incremental(facts).map_or_else(
        || {
            let latest = facts.latest.expect("why_not_incremental checked it");
            Ok(Plan::Incremental {
                bitmap: latest.bitmap.clone(),
                file: format!("{}-{}-incr.qcow2", facts.hostname, facts.stamp),
                chain: latest.chain.iter().map(|f| f.file.clone()).collect(),
                parent: latest.name(),
            })
        },
        Err,
    );
    match (want, incremental) {
        (
            Want::Auto {
                full_every: Some(n),
            },
            Ok(Plan::Incremental { chain, .. }),
        ) if u32::try_from(chain.len()).unwrap_or(u32::MAX) >= n.max(1) => Ok(full(Some(format!(
            "the chain has {} backups (a full one every {n})",
            chain.len()
        )))),
        (_, Ok(plan)) => Ok(plan),
        (Want::Auto { .. }, Err(reason)) => Ok(full(Some(reason))),
        (_, Err(reason)) => Err(reason),
    }
}

fn why_not_incremental(facts: &Facts<'_>) -> Option<String> {
    let Some(latest) = facts.latest else {
        return Some("there is no complete backup in the directory yet".to_owned());
    };
    if latest.hostname != facts.hostname {
        return Some(format!(
            "the newest backup in the directory is of another VM ({})",
            latest.hostname
        ));
    }
    if !facts.chain_present {
        return Some(format!(
            "a file of the chain of {} is missing from the directory",
            latest.name()
        ));
    }
    let Some(bitmap) = facts.bitmaps.iter().find(|b| b.name == latest.bitmap) else {
        return Some(format!(
            "the pet disk has no dirty bitmap {} (a restored or recreated disk, or a newer \
             full backup elsewhere)",
            latest.bitmap
        ));
    };
    if bitmap.inconsistent {
        return Some(format!(
            "the dirty bitmap {} was not saved cleanly (qemu was killed) and may miss writes",
            bitmap.name
        ));
    }
    if !bitmap.recording {
        return Some(format!("the dirty bitmap {} is not recording", bitmap.name));
    }
    if bitmap.busy {
        return Some(format!(
            "the dirty bitmap {} is in use by another job",
            bitmap.name
        ));
    }
    None
}

/// Our bitmaps other than `keep`: removed once a new full backup is complete.
pub(crate) fn stale_bitmaps<'a>(bitmaps: &'a [Bitmap], keep: &str) -> Vec<&'a str> {
    bitmaps
        .iter()
        .filter(|b| b.name.starts_with(BITMAP_PREFIX) && b.name != keep)
        .map(|b| b.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{Consistency, FileEntry};

    fn manifest(host: &str, bitmap: &str, chain: &[&str]) -> Manifest {
        Manifest {
            version: 1,
            hostname: host.to_owned(),
            stamp: "20261202T100000Z".to_owned(),
            created: "2026-12-02T10:00:00Z".to_owned(),
            kind: "full".to_owned(),
            consistency: Consistency::Crash,
            bitmap: bitmap.to_owned(),
            virtual_size: 1 << 20,
            base: None,
            chain: chain
                .iter()
                .map(|f| FileEntry {
                    file: (*f).to_owned(),
                    size: 1,
                    sha256: "00".to_owned(),
                })
                .collect(),
            firmware: Vec::new(),
            bytes_copied: 0,
            duration_ms: 0,
        }
    }

    fn bitmap(name: &str) -> Bitmap {
        Bitmap {
            name: name.to_owned(),
            recording: true,
            busy: false,
            inconsistent: false,
        }
    }

    fn facts<'a>(latest: Option<&'a Manifest>, bitmaps: &'a [Bitmap]) -> Facts<'a> {
        Facts {
            hostname: "vm",
            latest,
            chain_present: true,
            bitmaps,
            stamp: "20261202T110000Z",
        }
    }

    #[test]
    fn the_first_backup_is_full_and_an_asked_incremental_says_why_not() {
        let plan = decide(Want::Auto { full_every: None }, &facts(None, &[])).expect("plan");
        assert_eq!(
            plan,
            Plan::Full {
                bitmap: "kvm-manager-20261202T110000Z".to_owned(),
                file: "vm-20261202T110000Z-full.qcow2".to_owned(),
                reason: Some("there is no complete backup in the directory yet".to_owned()),
            }
        );
        let why = decide(Want::Incremental, &facts(None, &[])).expect_err("refused");
        assert!(why.contains("no complete backup"), "{why}");
    }

    #[test]
    fn an_incremental_extends_the_newest_chain_while_its_bitmap_is_whole() {
        let latest = manifest("vm", "kvm-manager-a", &["a-full.qcow2", "b-incr.qcow2"]);
        let bitmaps = [bitmap("kvm-manager-a")];
        let plan = decide(Want::Incremental, &facts(Some(&latest), &bitmaps)).expect("plan");
        assert_eq!(
            plan,
            Plan::Incremental {
                bitmap: "kvm-manager-a".to_owned(),
                file: "vm-20261202T110000Z-incr.qcow2".to_owned(),
                chain: vec!["a-full.qcow2".to_owned(), "b-incr.qcow2".to_owned()],
                parent: latest.name(),
            }
        );
    }

    #[test]
    fn a_missing_inconsistent_or_foreign_bitmap_or_chain_makes_it_full() {
        let latest = manifest("vm", "kvm-manager-a", &["a-full.qcow2"]);
        let cases: Vec<(Vec<Bitmap>, bool, &str, &str)> = vec![
            (vec![], true, "vm", "has no dirty bitmap"),
            (
                vec![Bitmap {
                    inconsistent: true,
                    ..bitmap("kvm-manager-a")
                }],
                true,
                "vm",
                "not saved cleanly",
            ),
            (vec![bitmap("kvm-manager-a")], false, "vm", "is missing"),
            (vec![bitmap("kvm-manager-a")], true, "other", "another VM"),
        ];
        for (bitmaps, chain_present, host, why) in cases {
            let facts = Facts {
                hostname: host,
                chain_present,
                ..facts(Some(&latest), &bitmaps)
            };
            let refused = decide(Want::Incremental, &facts).expect_err("refused");
            assert!(refused.contains(why), "{refused} / {why}");
            match decide(Want::Auto { full_every: None }, &facts).expect("auto") {
                Plan::Full { reason, .. } => assert!(reason.is_some_and(|r| r.contains(why))),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn auto_starts_a_new_chain_every_n_backups() {
        let latest = manifest("vm", "kvm-manager-a", &["a", "b", "c"]);
        let bitmaps = [bitmap("kvm-manager-a")];
        let f = facts(Some(&latest), &bitmaps);
        assert!(matches!(
            decide(
                Want::Auto {
                    full_every: Some(3)
                },
                &f
            ),
            Ok(Plan::Full { .. })
        ));
        assert!(matches!(
            decide(
                Want::Auto {
                    full_every: Some(4)
                },
                &f
            ),
            Ok(Plan::Incremental { .. })
        ));
    }

    #[test]
    fn only_our_other_bitmaps_are_stale() {
        let bitmaps = [
            bitmap("kvm-manager-a"),
            bitmap("kvm-manager-b"),
            bitmap("mine"),
        ];
        assert_eq!(
            stale_bitmaps(&bitmaps, "kvm-manager-b"),
            vec!["kvm-manager-a"]
        );
    }
}
