//! Where downloaded bytes go: the raw bytes are hashed and appended to the partial file (so a
//! retry or a restarted pod can resume them), and compressed streams are unpacked on the fly
//! into a second temporary file. Runs on a blocking thread; everything here is synchronous IO.
//!
//! A resumed download replays the partial file through the hash (and the decoder) first, so
//! the digest always covers every byte of the image as downloaded.
//!
//! Every byte written, to either file, is first taken from a [`Budget`] that keeps
//! `IMAGE_DIR_RESERVE` free on the shared volume: a body without a length or a decompression
//! bomb stops there, with the sizes it reached. Both files are mode 0600 (they may be private
//! images fetched with credentials); the base image is opened up when it is renamed into place.

mod unpack;

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::FutureExt as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::progress::Progress;
use super::source::Compression;
use super::space::{self, Budget, Shortage};
use super::{ImageError, Temps};
use crate::locked::Locked as _;
use unpack::Tally;

const BUFFER: usize = 256 << 10;
/// Every this many bytes, writeback of the partial file is started, so that the final fsync
/// does not have to write a whole image at once (the kernel's own background writeback would
/// only start at 10% of RAM).
const WRITEBACK: u64 = 32 << 20;

/// The bytes of one download so far.
pub(crate) struct Sink {
    temps: Temps,
    part: BufWriter<File>,
    received: u64,
    /// Chunks fed (for the debug log: tiny chunks mean a slow pipeline).
    chunks: u64,
    /// The partial file's offset up to which writeback was started.
    written_back: u64,
    hasher: Sha256,
    hint: Option<Compression>,
    state: State,
    progress: Progress,
    label: String,
    tally: Arc<Mutex<Tally>>,
    total: Option<u64>,
}

/// Mode of every temporary file: only we may read a download in progress.
pub(crate) const TEMP_MODE: u32 = 0o600;

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("part", &self.temps.part)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

enum State {
    /// Fewer than [`Compression::MAGIC_LEN`] bytes seen and no hint from the name.
    Undecided(Vec<u8>),
    Plain,
    Unpacking(Compression, Pin<Box<dyn AsyncWrite + Send>>),
}

/// A complete download.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Lowercase hex sha256 of the bytes as downloaded.
    pub sha256: String,
    pub compression: Compression,
    /// The disk image: the partial file itself, or the unpacked file.
    pub image: PathBuf,
}

impl Sink {
    /// Starts a new partial file, or (with `resume`) replays the existing one.
    pub(crate) fn open(
        temps: &Temps,
        hint: Option<Compression>,
        resume: bool,
        total: Option<u64>,
        label: &str,
    ) -> Result<Self, ImageError> {
        let write_err = |source| ImageError::Write {
            path: temps.part.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.create(true).read(true).mode(TEMP_MODE);
        if resume {
            options.append(true);
        } else {
            options.write(true).truncate(true);
        }
        let file = options.open(&temps.part).map_err(write_err)?;
        // A partial file from an older version may be world-readable.
        file.set_permissions(Permissions::from_mode(TEMP_MODE))
            .map_err(write_err)?;
        if let Some(total) = total {
            let have = if resume {
                file.metadata().map_err(write_err)?.len()
            } else {
                0
            };
            space::check_keeping(&temps.dir, total.saturating_sub(have), temps.reserve)?;
        }
        let replay = if resume {
            Some(file.try_clone().map_err(write_err)?)
        } else {
            None
        };
        let mut sink = Self {
            temps: temps.clone(),
            part: BufWriter::with_capacity(BUFFER, file),
            received: 0,
            chunks: 0,
            written_back: 0,
            hasher: Sha256::new(),
            hint,
            state: State::Undecided(Vec::new()),
            progress: Progress::new(0, total, Instant::now()),
            label: label.to_owned(),
            tally: Arc::new(Mutex::new(Tally {
                budget: Budget::new(&temps.dir, temps.reserve),
                unpacked: 0,
                shortage: None,
            })),
            total,
        };
        if let Some(mut existing) = replay {
            let mut buf = vec![0u8; BUFFER];
            loop {
                let n = existing.read(&mut buf).map_err(|source| ImageError::Read {
                    path: temps.part.clone(),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                sink.consume(&buf[..n])?;
            }
            sink.progress = Progress::new(sink.received, total, Instant::now());
            sink.written_back = sink.received;
        }
        Ok(sink)
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Appends `chunk` to the partial file, hashes it and unpacks it.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.chunks += 1;
        crate::metrics::IMAGE
            .download_bytes
            .inc_by(chunk.len() as u64);
        let taken = self.tally.locked().budget.take(chunk.len() as u64);
        if let Err(shortage) = taken {
            return Err(self.reserve_error(shortage, false));
        }
        self.part
            .write_all(chunk)
            .map_err(|source| self.temps.write_error(&self.temps.part, source))?;
        self.consume(chunk)?;
        if self.received - self.written_back >= WRITEBACK {
            self.start_writeback();
        }
        if let Some(report) = self.progress.tick(self.received, Instant::now()) {
            tracing::info!(image = %self.label, "downloading: {report}");
        }
        Ok(())
    }

    /// Asks the kernel to start writing what we wrote so far (without waiting for it); its
    /// pages also leave the page cache once written, keeping a big download from evicting
    /// everything else. Best effort: failure only makes the final fsync longer.
    fn start_writeback(&mut self) {
        if self.part.flush().is_err() {
            return;
        }
        let (from, to) = (self.written_back, self.received);
        let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
            return;
        };
        let _ = nix::fcntl::posix_fadvise(
            self.part.get_ref(),
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        self.written_back = to;
    }

    /// The reserve error with the sizes reached: of the download, and of the unpacked image
    /// when it was the decompression that wanted more (a bomb's real size, not its own).
    fn reserve_error(&self, shortage: Shortage, unpacking: bool) -> ImageError {
        ImageError::Reserve {
            dir: self.temps.dir.clone(),
            downloaded: self.received,
            total: self.total,
            unpacked: unpacking.then(|| self.tally.locked().unpacked),
            available: shortage.available,
            reserve: shortage.reserve,
        }
    }

    /// Hash and unpack (the bytes are already in the partial file).
    fn consume(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.hasher.update(chunk);
        self.received += chunk.len() as u64;
        match &mut self.state {
            State::Plain => Ok(()),
            State::Unpacking(compression, decoder) => {
                let result = unpack::unpack(*compression, decoder.as_mut(), chunk, &self.temps);
                self.refused_for_reserve(result)
            }
            State::Undecided(head) => {
                head.extend_from_slice(chunk);
                if self.hint.is_some() || head.len() >= Compression::MAGIC_LEN {
                    self.decide()
                } else {
                    Ok(())
                }
            }
        }
    }

    fn decide(&mut self) -> Result<(), ImageError> {
        let head = match &mut self.state {
            State::Undecided(head) => std::mem::take(head),
            _ => return Ok(()),
        };
        self.state = State::Plain;
        let compression = self.hint.unwrap_or_else(|| Compression::from_magic(&head));
        let Some(mut decoder) = unpack::decoder(compression, &self.temps, &self.tally)? else {
            return Ok(());
        };
        tracing::info!(image = %self.label, %compression, "unpacking while downloading");
        let result = unpack::unpack(compression, decoder.as_mut(), &head, &self.temps);
        self.refused_for_reserve(result)?;
        self.state = State::Unpacking(compression, decoder);
        Ok(())
    }

    /// An unpacking error that was really the reserve, said so with the sizes reached.
    fn refused_for_reserve(&self, result: Result<(), ImageError>) -> Result<(), ImageError> {
        let shortage = self.tally.locked().shortage.take();
        match (result, shortage) {
            (Err(_), Some(shortage)) => Err(self.reserve_error(shortage, true)),
            (result, _) => result,
        }
    }

    /// Writes what is buffered to the partial file (for a later resume).
    pub(crate) fn keep_partial(mut self) -> Result<u64, ImageError> {
        self.part
            .flush()
            .map_err(|source| self.temps.write_error(&self.temps.part, source))?;
        Ok(self.received)
    }

    /// Ends the stream: checks the compressed stream is complete, fsyncs the result.
    pub(crate) fn finish(mut self) -> Result<Finished, ImageError> {
        let part_err = |temps: &Temps, source| temps.write_error(&temps.part, source);
        self.part.flush().map_err(|e| part_err(&self.temps, e))?;
        self.decide()?;
        let compression = match std::mem::replace(&mut self.state, State::Plain) {
            State::Unpacking(compression, mut decoder) => {
                let done = decoder.shutdown().now_or_never().unwrap_or_else(|| {
                    Err(io::Error::other("the decoder waited on a synchronous file"))
                });
                let done = done.map_err(|source| unpack::decode_error(compression, source));
                self.refused_for_reserve(done)?;
                drop(decoder);
                sync(&self.temps.unpacked)
                    .map_err(|e| self.temps.write_error(&self.temps.unpacked, e))?;
                compression
            }
            _ => {
                self.part
                    .get_ref()
                    .sync_all()
                    .map_err(|e| part_err(&self.temps, e))?;
                Compression::None
            }
        };
        let report = self.progress.report(self.received, Instant::now());
        tracing::info!(image = %self.label, chunks = self.chunks, "downloaded {report}");
        Ok(Finished {
            sha256: hex(&self.hasher.finalize()),
            compression,
            image: match compression {
                Compression::None => self.temps.part.clone(),
                _ => self.temps.unpacked.clone(),
            },
        })
    }
}

fn sync(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
