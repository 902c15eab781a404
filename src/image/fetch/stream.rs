//! One stream: the body of one response, in order, through the [`Sink`] (hash, unpack,
//! reserve, progress) into the partial file; the path of every compressed or small download,
//! of servers without ranges, and of `FETCH_CONNECTIONS=1`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Response;

use super::super::progress::Pace;
use super::super::sink::{Finished, Sink};
use super::super::source::Compression;
use super::super::{ImageError, Temps};
use super::{fatal, retry, Ctx, Failed, CHANNEL};

/// Moves the body (after `head`, its first chunks already read) to a writing thread, chunk by
/// chunk, watching for stalls and a trickle.
pub(super) async fn stream(
    mut response: Response,
    head: Vec<Bytes>,
    ctx: Ctx<'_>,
    temps: &Temps,
    hint: Option<Compression>,
    resume: bool,
    total: Option<u64>,
) -> Result<Finished, Failed> {
    let Ctx { url, limits, .. } = ctx;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL);
    let temps_for_sink = Temps {
        total,
        ..temps.clone()
    };
    let label = url.to_string();
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = Sink::open(&temps_for_sink, hint, resume, total, &label)?;
        let started_at = sink.received();
        for chunk in head {
            sink.feed(&chunk)?;
        }
        while let Some(chunk) = rx.blocking_recv() {
            sink.feed(&chunk)?;
        }
        Ok::<_, ImageError>((sink, started_at))
    });
    let shown = url.to_string();
    let mut pace = Pace::new(limits.min_rate, limits.rate_window);
    // Time spent waiting on the server (not on our own disk) and bytes it sent.
    let (mut waited, mut arrived) = (Duration::ZERO, 0u64);
    let mut stopped = None;
    loop {
        let asked = Instant::now();
        let next = tokio::time::timeout(limits.stall_timeout, response.chunk()).await;
        waited += asked.elapsed();
        match next {
            Ok(Ok(Some(chunk))) => {
                arrived += chunk.len() as u64;
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed; its error is below
                }
                if let Err(slow) = pace.record(waited, arrived) {
                    stopped = Some(Stop::TooSlow(slow));
                    break;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(source)) => {
                stopped = Some(Stop::Network(source));
                break;
            }
            Err(_) => {
                stopped = Some(Stop::Stalled);
                break;
            }
        }
    }
    drop(tx);
    drop(response);
    let (sink, started_at) = writer
        .await
        .map_err(|e| fatal(ImageError::Internal(e.to_string())))?
        .map_err(fatal)?;
    let progressed = sink.received() > started_at;
    if let Some(stop) = stopped {
        let received = sink.keep_partial().map_err(fatal)?;
        let error = match stop {
            Stop::Network(source) => ImageError::BodyBroken {
                url: shown,
                received,
                total,
                source: source.without_url(),
            },
            Stop::Stalled => ImageError::Stalled {
                url: shown,
                timeout: limits.stall_timeout,
                received,
            },
            Stop::TooSlow(slow) => ImageError::TooSlow {
                url: shown,
                bytes: slow.bytes,
                window: slow.window,
                min_rate: limits.min_rate,
                received,
            },
        };
        return Err(retry(error, progressed));
    }
    if let Some(total) = total.filter(|t| *t != sink.received()) {
        let received = sink.keep_partial().map_err(fatal)?;
        let short = ImageError::ShortBody {
            url: shown,
            received,
            total,
        };
        return Err(retry(short, progressed));
    }
    sink.finish().map_err(fatal)
}

/// Why the body stopped before its end.
enum Stop {
    Network(reqwest::Error),
    Stalled,
    TooSlow(super::super::progress::TooSlow),
}
