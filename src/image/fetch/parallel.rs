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
//! [`IN_FLIGHT_KIB`] received and not yet written over all connections, one buffer to hash.
//!
//! A failed connection ends the attempt (the others stop; what they wrote is journaled) and
//! the caller's retry resumes from the journal; a 200 to a range request means the file
//! changed, or the server ignores ranges: the partial file is dropped and, when the validator
//! is the same, the download continues over one connection.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use reqwest::{header, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::super::progress::{Pace, Progress};
use super::super::ranges::{Ranges, Schedule};
use super::super::sink::{hex, Finished, TEMP_MODE};
use super::super::source::Compression;
use super::super::space::{self, Budget};
use super::super::{ImageError, Temps};
use super::journal::{Journal, RECORD_AFTER, RECORD_EVERY};
use super::{content_range, fatal, network, retry, Ctx, Failed, Validator, CHANNEL};

/// Bytes hashed per read.
const HASH_BUFFER: usize = 256 << 10;
/// Bytes received but not yet written, over all connections (in KiB, the unit of the
/// semaphore's permits): memory stays bounded whatever `FETCH_CONNECTIONS` is, and a slow disk
/// slows the connections instead of filling the heap.
const IN_FLIGHT_KIB: usize = 8 << 10;

/// The response that started the download (a 200 from byte 0) and the chunks of it already
/// read: the first connection's first span needs no request of its own.
pub(super) struct First {
    pub response: Response,
    pub head: Vec<Bytes>,
}

/// What the connections, writers and the hasher of one download share.
struct Shared {
    schedule: Mutex<Schedule>,
    /// Bytes written to the partial file (for the hasher; the journal is what is durable).
    written: Mutex<Written>,
    grown: Condvar,
    received: AtomicU64,
    progress: Mutex<Progress>,
    budget: Mutex<Budget>,
    /// KiB in flight between the connections and the writers ([`IN_FLIGHT_KIB`]).
    in_flight: tokio::sync::Semaphore,
}

struct Written {
    ranges: Ranges,
    /// Set when the download ends early: the hasher stops waiting.
    stopped: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops the hasher when the download ends without completing (also when it is dropped).
struct StopHasher(Arc<Shared>);

impl Drop for StopHasher {
    fn drop(&mut self) {
        lock(&self.0.written).stopped = true;
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
    let part = open_part(temps, fresh, total).map_err(fatal)?;
    let journal = Arc::new(Journal::open(temps, &part, fresh).map_err(fatal)?);
    if fresh {
        // Only now that the journal exists may the partial file have holes.
        part.set_len(total)
            .map_err(|source| fatal(temps.write_error(&temps.part, source)))?;
    }
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
    let shared = Arc::new(Shared {
        schedule: Mutex::new(Schedule::new(&missing, connections)),
        written: Mutex::new(Written {
            ranges: done,
            stopped: false,
        }),
        grown: Condvar::new(),
        received: AtomicU64::new(had),
        progress: Mutex::new(Progress::new(had, Some(total), Instant::now())),
        budget: Mutex::new(Budget::new(&temps.dir, temps.reserve)),
        in_flight: tokio::sync::Semaphore::new(IN_FLIGHT_KIB),
    });
    let stop_hasher = StopHasher(Arc::clone(&shared));
    let hasher = {
        let (path, shared) = (temps.part.clone(), Arc::clone(&shared));
        tokio::task::spawn_blocking(move || hash(&path, &shared, total))
    };

    let mut writers = Vec::with_capacity(connections);
    let workers = FuturesUnordered::new();
    // The first response is from byte 0: it is the first span's, claimed before any other.
    let mut first = first.and_then(|f| Some((f, lock(&shared.schedule).claim(0)?)));
    for connection in 0..connections {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let file = part
            .try_clone()
            .map_err(|source| fatal(temps.write_error(&temps.part, source)))?;
        let (journal, mine, temps) = (Arc::clone(&journal), Arc::clone(&shared), temps.clone());
        writers.push(tokio::task::spawn_blocking(move || {
            write(&file, &journal, &mine, &temps, total, rx)
        }));
        let own = Own {
            ctx,
            connection,
            shared: Arc::clone(&shared),
            if_range: &if_range,
            total,
            tx,
        };
        workers.push(receive(own, first.take()));
    }
    let mut workers = workers;
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
    if let Some(error) = write_failure {
        return Err(fatal(error));
    }
    let now = lock(&shared.written).ranges.clone();
    let progressed = now.len() > had;
    if let Some(failed) = failure {
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
    let report = lock(&shared.progress).report(total, Instant::now());
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

/// What one connection owns.
struct Own<'a> {
    ctx: Ctx<'a>,
    connection: usize,
    shared: Arc<Shared>,
    if_range: &'a str,
    total: u64,
    tx: mpsc::Sender<(u64, Bytes)>,
}

/// One connection: takes spans until none is left worth a request, and receives them.
async fn receive(
    own: Own<'_>,
    mut first: Option<(First, std::ops::Range<u64>)>,
) -> Result<(), Failed> {
    loop {
        let (span, response, head) = match first.take() {
            Some((First { response, head }, span)) => (span, response, head),
            None => {
                let Some(span) = lock(&own.shared.schedule).claim(own.connection) else {
                    return Ok(());
                };
                let response = request(&own, &span).await?;
                (span, response, Vec::new())
            }
        };
        receive_span(&own, span.start, response, head).await?;
    }
}

/// Asks for `span`: a 206 for exactly it, or the reason this attempt ends.
async fn request(own: &Own<'_>, span: &std::ops::Range<u64>) -> Result<Response, Failed> {
    let Ctx { url, limits, .. } = own.ctx;
    let shown = url.to_string();
    let request = own
        .ctx
        .get()
        .header(
            header::RANGE,
            format!("bytes={}-{}", span.start, span.end - 1),
        )
        .header(header::IF_RANGE, own.if_range);
    let response = match tokio::time::timeout(limits.stall_timeout, request.send()).await {
        Err(_) => {
            let stalled = ImageError::Stalled {
                url: shown,
                timeout: limits.stall_timeout,
                received: own.shared.received.load(Ordering::Relaxed),
            };
            return Err(retry(stalled, false));
        }
        Ok(Err(source)) => return Err(retry(network(&shown, source), false)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let final_url = crate::config::redact_url(response.url());
    let starts_at = response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(content_range)
        .map(|(start, _)| start);
    match status {
        StatusCode::PARTIAL_CONTENT if starts_at == Some(span.start) => Ok(response),
        StatusCode::PARTIAL_CONTENT => Err(Failed {
            discard: true,
            ..retry(ImageError::BadRange { url: final_url }, true)
        }),
        StatusCode::OK => {
            // The same validator: the file is the same, the server just sends it whole.
            let now = Validator::from_headers(url, response.headers(), None);
            let same = now.if_range() == Some(own.if_range);
            Err(Failed {
                discard: true,
                one_stream: same,
                ..retry(ImageError::RangeIgnored { url: final_url }, true)
            })
        }
        StatusCode::RANGE_NOT_SATISFIABLE => Err(Failed {
            discard: true,
            ..retry(
                ImageError::ServerStatus {
                    url: final_url,
                    status,
                },
                true,
            )
        }),
        s if s.is_server_error() => Err(retry(
            ImageError::ServerStatus {
                url: final_url,
                status,
            },
            false,
        )),
        _ => Err(fatal(ImageError::ClientStatus {
            url: final_url,
            status,
        })),
    }
}

/// Receives a span from `start` until this connection's part of it is complete (its end may
/// move closer while it runs, when another connection takes over its far half).
async fn receive_span(
    own: &Own<'_>,
    start: u64,
    mut response: Response,
    head: Vec<Bytes>,
) -> Result<(), Failed> {
    let limits = own.ctx.limits;
    let shown = own.ctx.url.to_string();
    let mut at = start;
    for chunk in head {
        if deliver(own, &mut at, chunk).await? {
            return Ok(());
        }
    }
    let mut pace = Pace::new(limits.min_rate, limits.rate_window);
    let (mut waited, mut arrived) = (Duration::ZERO, 0u64);
    loop {
        let asked = Instant::now();
        let next = tokio::time::timeout(limits.stall_timeout, response.chunk()).await;
        waited += asked.elapsed();
        let received = own.shared.received.load(Ordering::Relaxed);
        let error = match next {
            Ok(Ok(Some(chunk))) => {
                arrived += chunk.len() as u64;
                if deliver(own, &mut at, chunk).await? {
                    return Ok(());
                }
                match pace.record(waited, arrived) {
                    Ok(()) => continue,
                    Err(slow) => ImageError::TooSlow {
                        url: shown,
                        bytes: slow.bytes,
                        window: slow.window,
                        min_rate: limits.min_rate,
                        received,
                    },
                }
            }
            Ok(Ok(None)) => ImageError::ShortBody {
                url: shown,
                received,
                total: own.total,
            },
            Ok(Err(source)) => ImageError::BodyBroken {
                url: shown,
                received,
                total: Some(own.total),
                source: source.without_url(),
            },
            Err(_) => ImageError::Stalled {
                url: shown,
                timeout: limits.stall_timeout,
                received,
            },
        };
        return Err(retry(error, at > start));
    }
}

/// Hands the part of `chunk` that is still this connection's to its writer; `true` when its
/// span is complete.
async fn deliver(own: &Own<'_>, at: &mut u64, chunk: Bytes) -> Result<bool, Failed> {
    let (take, complete) = lock(&own.shared.schedule).advance(own.connection, chunk.len() as u64);
    if take > 0 {
        let offset = *at;
        *at += take;
        // Released by the writer once the chunk is written.
        let kib = kib(take);
        match own.shared.in_flight.acquire_many(kib).await {
            Ok(permits) => permits.forget(),
            // A writer failed; its error is what the caller reports.
            Err(_) => return Err(fatal(ImageError::Internal("a writer stopped".to_owned()))),
        }
        // The writer ended: its error is what the caller reports.
        if own
            .tx
            .send((offset, chunk.slice(..take as usize)))
            .await
            .is_err()
        {
            return Err(fatal(ImageError::Internal("a writer stopped".to_owned())));
        }
        let received = own.shared.received.fetch_add(take, Ordering::Relaxed) + take;
        if let Some(report) = lock(&own.shared.progress).tick(received, Instant::now()) {
            tracing::info!(image = %own.ctx.url, "downloading: {report}");
        }
    }
    Ok(complete)
}

/// Permits for `bytes` in flight: KiB, rounded up, never more than exist.
fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(IN_FLIGHT_KIB as u64) as u32
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
            let taken = lock(&shared.budget).take(len);
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
            lock(&shared.written).ranges.insert(offset..end);
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
            let mut written = lock(&shared.written);
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
