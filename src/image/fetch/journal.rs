//! The journal of a parallel download: which byte ranges of the partial file are on disk, so
//! that a restart after kill -9 (or a power cut) fetches only the rest.
//!
//! It is an append-only file of 16-byte records beside the partial file ([`Temps::ranges`]).
//! A range is appended only after the partial file was fdatasynced with its bytes in it, and
//! the record itself is fdatasynced: what the journal says is there, is there. Records are
//! appended every [`RECORD_EVERY`] bytes of a connection (or [`RECORD_AFTER`]) and when it
//! stops, so a crash costs at most that much per connection. Its presence also says "this partial file has holes": a
//! partial file without a journal is a single stream's prefix.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::sync::Mutex;

use super::super::ranges::{self, Ranges};
use super::super::sink::TEMP_MODE;
use super::super::{ImageError, Temps};
use crate::locked::Locked as _;

/// A connection records what it wrote every this many bytes…
pub(super) const RECORD_EVERY: u64 = 8 << 20;
/// …or after this long, whichever comes first (a slow connection loses little to a crash).
pub(super) const RECORD_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The open journal, shared by the writers of one download.
#[derive(Debug)]
pub(super) struct Journal {
    file: Mutex<File>,
    /// The partial file, fdatasynced before each record.
    part: File,
    temps: Temps,
}

/// The ranges the journal of `temps` records within `0..total`; `None` without a journal.
pub(super) fn load(temps: &Temps, total: u64) -> Option<Ranges> {
    let bytes = std::fs::read(&temps.ranges).ok()?;
    Some(ranges::decode(&bytes, total))
}

impl Journal {
    /// Opens the journal of `temps` for appending (`fresh`: empty, a new download), made
    /// durable before any byte of the partial file is written.
    pub(super) fn open(temps: &Temps, part: &File, fresh: bool) -> Result<Self, ImageError> {
        let write_err = |source| temps.write_error(&temps.ranges, source);
        if fresh {
            let _ = std::fs::remove_file(&temps.ranges);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(TEMP_MODE)
            .open(&temps.ranges)
            .map_err(write_err)?;
        file.set_permissions(Permissions::from_mode(TEMP_MODE))
            .map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        crate::atomic_file::sync_parent(&temps.ranges).map_err(write_err)?;
        Ok(Self {
            file: Mutex::new(file),
            part: part.try_clone().map_err(write_err)?,
            temps: temps.clone(),
        })
    }

    /// The partial file.
    pub(super) fn part(&self) -> &File {
        &self.part
    }

    /// Records that `range` of the partial file is written: fdatasyncs the partial file,
    /// then appends the record and fdatasyncs it.
    pub(super) fn record(&self, range: std::ops::Range<u64>) -> Result<(), ImageError> {
        if range.is_empty() {
            return Ok(());
        }
        self.part
            .sync_data()
            .map_err(|source| self.temps.write_error(&self.temps.part, source))?;
        let mut file = self.file.locked();
        file.write_all(&ranges::encode(&range))
            .and_then(|()| file.sync_data())
            .map_err(|source| self.temps.write_error(&self.temps.ranges, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_ranges_load_back_and_a_fresh_journal_forgets_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let temps = Temps::for_target(&dir.path().join("disk.raw"));
        assert_eq!(
            load(&temps, 100),
            None,
            "no journal: not a parallel download"
        );
        let part = File::create(&temps.part).expect("part");
        let journal = Journal::open(&temps, &part, true).expect("open");
        journal.record(0..10).expect("record");
        journal.record(10..20).expect("record");
        journal.record(50..60).expect("record");
        journal.record(70..70).expect("an empty range is no record");
        let mut expected = Ranges::new();
        expected.insert(0..20);
        expected.insert(50..60);
        assert_eq!(load(&temps, 100), Some(expected.clone()));
        assert_eq!(
            std::fs::metadata(&temps.ranges).expect("journal").len(),
            3 * ranges::RECORD as u64
        );
        // Resuming appends; starting afresh empties.
        let again = Journal::open(&temps, &part, false).expect("reopen");
        again.record(20..30).expect("record");
        expected.insert(20..30);
        assert_eq!(load(&temps, 100), Some(expected));
        Journal::open(&temps, &part, true).expect("fresh");
        assert_eq!(load(&temps, 100), Some(Ranges::new()));
    }
}
