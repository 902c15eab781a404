//! Scheduled backups (issue 22): `BACKUP_DIR`, `BACKUP_SCHEDULE`, `BACKUP_FULL_EVERY`,
//! `BACKUP_KEEP`.

use std::path::PathBuf;
use std::time::Duration;

use super::{duration, invalid, non_empty, ConfigError};
use crate::cli::Settings;

/// Where and how often PID 1 backs the pet disk up by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// `BACKUP_DIR`: the default directory of `POST /backup` and the schedule's.
    pub dir: Option<PathBuf>,
    /// `BACKUP_SCHEDULE`: a backup every this long (`None`: no timer).
    pub every: Option<Duration>,
    /// `BACKUP_FULL_EVERY`: a chain holds at most this many backups (the full one included).
    pub full_every: u32,
    /// `BACKUP_KEEP`: the schedule keeps this many newest chains.
    pub keep: u32,
}

pub(super) fn parse_backup(settings: &Settings) -> Result<BackupConfig, ConfigError> {
    let raw = &settings.backup;
    let dir = raw.backup_dir.clone().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = &dir {
        if !dir.is_absolute() {
            return Err(invalid(
                "BACKUP_DIR",
                &dir.display().to_string(),
                "not an absolute path",
                "name the mounted backup volume, e.g. /backup",
            ));
        }
    }
    let every = non_empty(&raw.backup_schedule)
        .map(|value| {
            const FIX: &str = "use a duration of at least 1m, e.g. 6h, or unset it";
            let every = duration::parse("BACKUP_SCHEDULE", value, FIX)?;
            if every < Duration::from_secs(60) {
                return Err(invalid("BACKUP_SCHEDULE", value, "shorter than 1m", FIX));
            }
            Ok(every)
        })
        .transpose()?;
    if let (Some(_), None) = (every, &dir) {
        return Err(invalid(
            "BACKUP_SCHEDULE",
            raw.backup_schedule.as_deref().unwrap_or_default(),
            "BACKUP_DIR is not set",
            "set BACKUP_DIR to the mounted backup volume (e.g. /backup)",
        ));
    }
    Ok(BackupConfig {
        dir,
        every,
        full_every: count("BACKUP_FULL_EVERY", &raw.backup_full_every)?,
        keep: count("BACKUP_KEEP", &raw.backup_keep)?,
    })
}

/// A whole number of at least 1.
fn count(var: &'static str, raw: &str) -> Result<u32, ConfigError> {
    raw.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid(var, raw, "not a whole number of at least 1", "use e.g. 7"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    fn parse(args: &[&str]) -> Result<BackupConfig, ConfigError> {
        let mut argv = vec!["kvm-manager"];
        argv.extend_from_slice(args);
        parse_backup(&Cli::try_parse_from(argv).expect("cli").settings)
    }

    #[test]
    fn a_schedule_needs_a_directory_and_sane_numbers() {
        let off = parse(&[]).expect("defaults");
        assert_eq!(
            (off.dir, off.every, off.full_every, off.keep),
            (None, None, 7, 2)
        );
        let on = parse(&["--backup-dir", "/backup", "--backup-schedule", "6h"]).expect("on");
        assert_eq!(on.every, Some(Duration::from_secs(6 * 3600)));
        for (args, var) in [
            (&["--backup-schedule", "6h"][..], "BACKUP_SCHEDULE"),
            (
                &["--backup-dir", "/b", "--backup-schedule", "10s"],
                "BACKUP_SCHEDULE",
            ),
            (&["--backup-dir", "relative"], "BACKUP_DIR"),
            (&["--backup-keep", "0"], "BACKUP_KEEP"),
            (&["--backup-full-every", "x"], "BACKUP_FULL_EVERY"),
        ] {
            match parse(args) {
                Err(ConfigError::Invalid { var: got, .. }) => assert_eq!(got, var, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }
}
