//! One stream: the body of one response, in order, through the [`Sink`] (hash, unpack,
//! reserve, progress) into the partial file; the path of every compressed or small download,
//! of servers without ranges, and of `FETCH_CONNECTIONS=1`.

use bytes::Bytes;
use reqwest::Response;

use super::super::sink::{Finished, Sink};
use super::super::source::Compression;
use super::super::{ImageError, Temps};
use super::body::{Body, Stop};
use super::{fatal, retry, Ctx, Failed, CHANNEL};
use crate::config::FetchLimits;

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
    let stopped = receive(&mut response, &tx, limits).await;
    drop(tx);
    drop(response);
    let (sink, started_at) = writer
        .await
        .map_err(|e| fatal(ImageError::Internal(e.to_string())))?
        .map_err(fatal)?;
    let progressed = sink.received() > started_at;
    if let Some(stop) = stopped {
        let received = sink.keep_partial().map_err(fatal)?;
        let error = stop.error(shown, received, total, limits);
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

/// Hands the body's chunks to the writer until it ends, fails, stalls or is too slow; why it
/// stopped early, if it did (a writer that failed ends it too: its error comes from the writer).
async fn receive(
    response: &mut Response,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    limits: &FetchLimits,
) -> Option<Stop> {
    let mut body = Body::new(response, limits);
    loop {
        match body.next().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    return None; // the writer failed; its error is the one reported
                }
                if let Err(stop) = body.paced() {
                    return Some(stop);
                }
            }
            Ok(None) => return None,
            Err(stop) => return Some(stop),
        }
    }
}
