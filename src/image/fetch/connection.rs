//! One connection of a parallel download: it takes spans from the [`Schedule`] until none is
//! left worth a request, asks for each (`Range: bytes=A-B`, `If-Range`), and hands what arrives
//! to its writer; and what the connections, the writers and the hasher share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;
use reqwest::{header, Response, StatusCode};
use tokio::sync::mpsc;

use super::super::progress::Progress;
use super::super::ranges::{Ranges, Schedule};
use super::super::space::Budget;
use super::super::{ImageError, Temps};
use super::body::Body;
use super::{content_range, fatal, network, retry, Ctx, Failed, Validator};
use crate::locked::Locked as _;

/// Bytes received but not yet written, over all connections (in KiB, the unit of the
/// semaphore's permits): memory stays bounded whatever `FETCH_CONNECTIONS` is, and a slow disk
/// slows the connections instead of filling the heap.
pub(super) const IN_FLIGHT_KIB: usize = 8 << 10;

/// The response that started the download (a 200 from byte 0) and the chunks of it already
/// read: the first connection's first span needs no request of its own.
pub(super) struct First {
    pub response: Response,
    pub head: Vec<Bytes>,
}

/// What the connections, writers and the hasher of one download share.
pub(super) struct Shared {
    pub(super) schedule: Mutex<Schedule>,
    /// Bytes written to the partial file (for the hasher; the journal is what is durable).
    pub(super) written: Mutex<Written>,
    pub(super) grown: Condvar,
    pub(super) received: AtomicU64,
    pub(super) progress: Mutex<Progress>,
    pub(super) budget: Mutex<Budget>,
    /// KiB in flight between the connections and the writers ([`IN_FLIGHT_KIB`]).
    pub(super) in_flight: tokio::sync::Semaphore,
}

impl Shared {
    /// The shared state of a download of `total` bytes that has `done` on disk already.
    pub(super) fn new(schedule: Schedule, done: Ranges, total: u64, temps: &Temps) -> Self {
        let had = done.len();
        Self {
            schedule: Mutex::new(schedule),
            written: Mutex::new(Written {
                ranges: done,
                stopped: false,
            }),
            grown: Condvar::new(),
            received: AtomicU64::new(had),
            progress: Mutex::new(Progress::new(had, Some(total), Instant::now())),
            budget: Mutex::new(Budget::new(&temps.dir, temps.reserve)),
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT_KIB),
        }
    }
}

pub(super) struct Written {
    pub(super) ranges: Ranges,
    /// Set when the download ends early: the hasher stops waiting.
    pub(super) stopped: bool,
}

/// What one connection owns.
pub(super) struct Own<'a> {
    pub(super) ctx: Ctx<'a>,
    pub(super) connection: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) if_range: &'a str,
    pub(super) total: u64,
    pub(super) tx: mpsc::Sender<(u64, Bytes)>,
}

/// One connection: takes spans until none is left worth a request, and receives them.
pub(super) async fn receive(
    own: Own<'_>,
    mut first: Option<(First, std::ops::Range<u64>)>,
) -> Result<(), Failed> {
    loop {
        let (span, response, head) = match first.take() {
            Some((First { response, head }, span)) => (span, response, head),
            None => {
                let Some(span) = own.shared.schedule.locked().claim(own.connection) else {
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
    let mut body = Body::new(&mut response, limits);
    loop {
        let next = body.next().await;
        let received = own.shared.received.load(Ordering::Relaxed);
        let stop = match next {
            Ok(Some(chunk)) => {
                if deliver(own, &mut at, chunk).await? {
                    return Ok(());
                }
                match body.paced() {
                    Ok(()) => continue,
                    Err(stop) => stop,
                }
            }
            Ok(None) => {
                let short = ImageError::ShortBody {
                    url: shown,
                    received,
                    total: own.total,
                };
                return Err(retry(short, at > start));
            }
            Err(stop) => stop,
        };
        let error = stop.error(shown, received, Some(own.total), limits);
        return Err(retry(error, at > start));
    }
}

/// Hands the part of `chunk` that is still this connection's to its writer; `true` when its
/// span is complete.
async fn deliver(own: &Own<'_>, at: &mut u64, chunk: Bytes) -> Result<bool, Failed> {
    let (take, complete) = own
        .shared
        .schedule
        .locked()
        .advance(own.connection, chunk.len() as u64);
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
        if let Some(report) = own.shared.progress.locked().tick(received, Instant::now()) {
            tracing::info!(image = %own.ctx.url, "downloading: {report}");
        }
    }
    Ok(complete)
}

/// Permits for `bytes` in flight: KiB, rounded up, never more than exist.
pub(super) fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(IN_FLIGHT_KIB as u64) as u32
}
