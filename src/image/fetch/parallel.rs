//! A download over `FETCH_CONNECTIONS` connections into one partial file, each connection
//! receiving its own span of it (`Range: bytes=A-B` with `If-Range`), like `aria2c -x N`: one
//! TCP stream over a long path is limited by its window and by per-connection caps of many
//! mirrors; several are not.
//!
//! Each connection has a writing thread that writes at the span's offsets and records what is
//! on disk in the [`journal`](super::journal), so a restart fetches only the rest. One hashing
//! thread follows the part of the file that is complete from its first byte and hashes it in
//! order as it grows (from the page cache, while the download goes on), so the digest is ready
//! when the last byte is written; re-reading the whole file at the end would add that read to
//! every download (bench/fetch-wan, 512 MiB: 0.4 s from the last byte to the end, fsync
//! included, against 6.6 s for one `sha256sum` of the file here). Memory is bounded: at most
//! [`IN_FLIGHT_KIB`](super::connection::IN_FLIGHT_KIB) received and not yet written over all connections, one buffer to hash.
//!
//! A failed connection ends the attempt (the others stop; what they wrote is journaled) and
//! the caller's retry resumes from the journal; a 200 to a range request means the file
//! changed, or the server ignores ranges: the partial file is dropped and, when the validator
//! is the same, the download continues over one connection.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::super::ranges::{Ranges, Schedule};
use super::super::sink::{hex, Finished, TEMP_MODE};
use super::super::source::Compression;
use super::super::space;
use super::super::{ImageError, Temps};
use super::connection::{kib, receive, First, Own, Shared};
use super::journal::{Journal, RECORD_AFTER, RECORD_EVERY};
use super::{fatal, retry, Ctx, Failed, Validator, CHANNEL};
use crate::locked::Locked as _;

/// Bytes hashed per read.
const HASH_BUFFER: usize = 256 << 10;
/// Stops the hasher when the download ends without completing (also when it is dropped).
struct StopHasher(Arc<Shared>);

impl Drop for StopHasher {
    fn drop(&mut self) {
        self.0.written.locked().stopped = true;
        self.0.grown.notify_all();
    }
}

/// Downloads what `done` lacks of the file `validator` describes into the partial file.
pub(super) async fn download(
    ctx: Ctx<'_>,
    temps: &Temps,
    validator: &Validator,
    done: Ranges,
    first: Option<First>,
) -> Result<Finished, Failed> {
    let url = ctx.url.to_string();
    let internal = |what: &str| fatal(ImageError::Internal(what.to_owned()));
    let total = validator
        .length
        .ok_or_else(|| internal("a parallel download without a length"))?;
    let if_range = validator
        .if_range()
        .ok_or_else(|| internal("a parallel download without a validator"))?
        .to_owned();
    let fresh = first.is_some();
    let (part, journal) = open_journaled(temps, fresh, total).map_err(fatal)?;
    let had = done.len();
    let missing = done.missing(total);
    let connections = ctx.limits.connections.max(1) as usize;
    tracing::info!(
        image = %url,
        connections,
        resumed = had,
        gaps = missing.len(),
        "downloading over {connections} connections"
    );
    let schedule = Schedule::new(&missing, connections);
    let shared = Arc::new(Shared::new(schedule, done, total, temps));
    let stop_hasher = StopHasher(Arc::clone(&shared));
    let hasher = {
        let (path, shared) = (temps.part.clone(), Arc::clone(&shared));
        tokio::task::spawn_blocking(move || hash(&path, &shared, total))
    };

    let ended =
        connections_and_writers(ctx, temps, &journal, &shared, &if_range, total, first).await;
    let now = shared.written.locked().ranges.clone();
    let progressed = now.len() > had;
    if let Err(failed) = ended {
        return Err(Failed {
            progressed: progressed || failed.progressed,
            ..failed
        });
    }
    if !now.covers(total) {
        let short = ImageError::ShortBody {
            url,
            received: now.len(),
            total,
        };
        return Err(retry(short, progressed));
    }
    let last_byte = Instant::now();
    part.sync_all()
        .map_err(|source| fatal(temps.write_error(&temps.part, source)))?;
    let sha256 = hasher
        .await
        .map_err(|e| internal(&e.to_string()))?
        .map_err(fatal)?
        .ok_or_else(|| internal("the hasher stopped before the end"))?;
    drop(stop_hasher);
    let report = shared.progress.locked().report(total, Instant::now());
    tracing::info!(
        image = %url,
        connections,
        after_last_byte_ms = last_byte.elapsed().as_millis() as u64,
        "downloaded {report} (hashed in order while downloading)"
    );
    Ok(Finished {
        sha256,
        compression: Compression::None,
        image: temps.part.clone(),
    })
}

/// Runs every connection with its writer until all are done or one fails (then the others
/// stop), and waits for the writers: a writer's error comes first, it is the cause.
async fn connections_and_writers(
    ctx: Ctx<'_>,
    temps: &Temps,
    journal: &Arc<Journal>,
    shared: &Arc<Shared>,
    if_range: &str,
    total: u64,
    first: Option<First>,
) -> Result<(), Failed> {
    let connections = ctx.limits.connections.max(1) as usize;
    let mut writers = Vec::with_capacity(connections);
    let mut workers = FuturesUnordered::new();
    // The first response is from byte 0: it is the first span's, claimed before any other.
    let mut first = first.and_then(|f| Some((f, shared.schedule.locked().claim(0)?)));
    for connection in 0..connections {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let file = journal
            .part()
            .try_clone()
            .map_err(|source| fatal(temps.write_error(&temps.part, source)))?;
        let (journal, mine, temps) = (Arc::clone(journal), Arc::clone(shared), temps.clone());
        writers.push(tokio::task::spawn_blocking(move || {
            write(&file, &journal, &mine, &temps, total, rx)
        }));
        let own = Own {
            ctx,
            connection,
            shared: Arc::clone(shared),
            if_range,
            total,
            tx,
        };
        workers.push(receive(own, first.take()));
    }
    let mut failure = None;
    while let Some(result) = workers.next().await {
        if let Err(failed) = result {
            failure = Some(failed);
            break;
        }
    }
    // The other connections stop here; their writers journal what they wrote and end.
    drop(workers);
    let mut write_failure = None;
    for writer in writers {
        let result = writer
            .await
            .unwrap_or_else(|e| Err(ImageError::Internal(e.to_string())));
        if let Err(error) = result {
            write_failure.get_or_insert(error);
        }
    }
    match (write_failure, failure) {
        (Some(error), _) => Err(fatal(error)),
        (None, Some(failed)) => Err(failed),
        (None, None) => Ok(()),
    }
}

/// The partial file and its journal; a fresh one gets its full length (holes) only once the
/// journal exists, so a crash never leaves holes that look written.
fn open_journaled(
    temps: &Temps,
    fresh: bool,
    total: u64,
) -> Result<(File, Arc<Journal>), ImageError> {
    let part = open_part(temps, fresh, total)?;
    let journal = Arc::new(Journal::open(temps, &part, fresh)?);
    if fresh {
        part.set_len(total)
            .map_err(|source| temps.write_error(&temps.part, source))?;
    }
    Ok((part, journal))
}

fn open_part(temps: &Temps, fresh: bool, total: u64) -> Result<File, ImageError> {
    let write_err = |source| temps.write_error(&temps.part, source);
    let mut options = OpenOptions::new();
    options.create(true).read(true).write(true).mode(TEMP_MODE);
    if fresh {
        options.truncate(true);
    }
    let file = options.open(&temps.part).map_err(write_err)?;
    // A partial file from an older version may be world-readable.
    file.set_permissions(Permissions::from_mode(TEMP_MODE))
        .map_err(write_err)?;
    // The holes are what is left to write (sparse files use no space for them).
    let have = if fresh {
        0
    } else {
        file.metadata().map_err(write_err)?.blocks() * 512
    };
    space::check_keeping(&temps.dir, total.saturating_sub(have), temps.reserve)?;
    Ok(file)
}

/// One connection's writer: writes each chunk at its offset, journals what is written every
/// [`RECORD_EVERY`] bytes or [`RECORD_AFTER`], and when the connection ends, and tells the
/// hasher.
fn write(
    file: &File,
    journal: &Journal,
    shared: &Shared,
    temps: &Temps,
    total: u64,
    mut rx: mpsc::Receiver<(u64, Bytes)>,
) -> Result<(), ImageError> {
    // Written since the last record.
    let mut run: Option<std::ops::Range<u64>> = None;
    let mut recorded_at = Instant::now();
    let result = (|| {
        while let Some((offset, chunk)) = rx.blocking_recv() {
            let len = chunk.len() as u64;
            let taken = shared.budget.locked().take(len);
            if let Err(shortage) = taken {
                return Err(ImageError::Reserve {
                    dir: temps.dir.clone(),
                    downloaded: shared.received.load(Ordering::Relaxed),
                    total: Some(total),
                    unpacked: None,
                    available: shortage.available,
                    reserve: shortage.reserve,
                });
            }
            let written = file.write_all_at(&chunk, offset);
            drop(chunk);
            shared.in_flight.add_permits(kib(len) as usize);
            written.map_err(|source| temps.write_error(&temps.part, source))?;
            crate::metrics::IMAGE.download_bytes.inc_by(len);
            let end = offset + len;
            match &mut run {
                Some(r) if r.end == offset => r.end = end,
                _ => {
                    if let Some(r) = run.replace(offset..end) {
                        journal.record(r)?;
                    }
                }
            }
            shared.written.locked().ranges.insert(offset..end);
            shared.grown.notify_all();
            let due = run
                .as_ref()
                .is_some_and(|r| r.end - r.start >= RECORD_EVERY)
                || recorded_at.elapsed() >= RECORD_AFTER;
            if let Some(r) = run.take_if(|_| due) {
                journal.record(r)?;
                recorded_at = Instant::now();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        // The other connections must not wait for the KiB this writer will never release.
        shared.in_flight.close();
    }
    // Whatever ended the connection, what it wrote stays usable.
    let recorded = run.map_or(Ok(()), |r| journal.record(r));
    result.and(recorded)
}

/// Hashes the partial file in order as its complete prefix grows; `None` when the download
/// stopped first.
fn hash(path: &std::path::Path, shared: &Shared, total: u64) -> Result<Option<String>, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut hashed = 0u64;
    while hashed < total {
        let ready = {
            let mut written = shared.written.locked();
            loop {
                if written.stopped {
                    return Ok(None);
                }
                let prefix = written.ranges.prefix();
                if prefix > hashed {
                    break prefix;
                }
                written = shared
                    .grown
                    .wait(written)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        while hashed < ready {
            let n = (ready - hashed).min(HASH_BUFFER as u64) as usize;
            file.read_exact_at(&mut buf[..n], hashed)
                .map_err(read_err)?;
            hasher.update(&buf[..n]);
            hashed += n as u64;
        }
    }
    Ok(Some(hex(&hasher.finalize())))
}
