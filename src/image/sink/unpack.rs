//! The compressed side of a download: the decoder writes the unpacked file through
//! [`Immediate`], which takes every byte from the shared [`Tally`]'s budget first.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::tokio::write::{GzipDecoder, XzDecoder, ZstdDecoder};
use futures_util::FutureExt as _;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::{Temps, BUFFER, TEMP_MODE};
use crate::image::source::Compression;
use crate::image::space::{Budget, Shortage};
use crate::image::ImageError;
use crate::locked::Locked as _;

/// Shared by both files of one download: what may still be written, and what the unpacked
/// file holds (counted where the decoder writes it).
#[derive(Debug)]
pub(super) struct Tally {
    pub budget: Budget,
    pub unpacked: u64,
    /// Set when the decoder's write was refused for the reserve.
    pub shortage: Option<Shortage>,
}

/// The decoder of `compression`, writing to the unpacked file (created 0600), or `None` for
/// an uncompressed stream.
pub(super) fn decoder(
    compression: Compression,
    temps: &Temps,
    tally: &Arc<Mutex<Tally>>,
) -> Result<Option<Pin<Box<dyn AsyncWrite + Send>>>, ImageError> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(TEMP_MODE)
            .open(&temps.unpacked)
            .and_then(|out| {
                out.set_permissions(Permissions::from_mode(TEMP_MODE))?;
                Ok(Immediate {
                    out: BufWriter::with_capacity(BUFFER, out),
                    tally: Arc::clone(tally),
                })
            })
            .map_err(|source| temps.write_error(&temps.unpacked, source))
    };
    Ok(Some(match compression {
        Compression::None => return Ok(None),
        Compression::Xz => Box::pin(XzDecoder::new(open()?)),
        Compression::Gzip => Box::pin(GzipDecoder::new(open()?)),
        Compression::Zstd => Box::pin(ZstdDecoder::new(open()?)),
    }))
}

pub(super) fn unpack(
    compression: Compression,
    decoder: Pin<&mut (dyn AsyncWrite + Send)>,
    chunk: &[u8],
    temps: &Temps,
) -> Result<(), ImageError> {
    let mut decoder = decoder;
    let written = decoder
        .write_all(chunk)
        .now_or_never()
        .unwrap_or_else(|| Err(io::Error::other("the decoder waited on a synchronous file")));
    written.map_err(|source| match source.kind() {
        io::ErrorKind::StorageFull => temps.write_error(&temps.unpacked, source),
        _ => decode_error(compression, source),
    })
}

pub(super) fn decode_error(compression: Compression, source: io::Error) -> ImageError {
    ImageError::Decompress {
        compression,
        source,
    }
}

/// A file as an `AsyncWrite` that never waits: the decoders are async-only, and we drive them
/// on a blocking thread where a plain `write` is exactly right. Each write is taken from the
/// budget first, so a bomb stops within one buffer of the reserve.
struct Immediate {
    out: BufWriter<File>,
    tally: Arc<Mutex<Tally>>,
}

impl AsyncWrite for Immediate {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut tally = this.tally.locked();
        if let Err(shortage) = tally.budget.take(buf.len() as u64) {
            tally.shortage = Some(shortage);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "IMAGE_DIR_RESERVE reached",
            )));
        }
        let written = this.out.write(buf);
        if let Ok(n) = written {
            tally.unpacked += n as u64;
        }
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.out.flush())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.out.flush())
    }
}
