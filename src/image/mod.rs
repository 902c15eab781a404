//! The disk: a base image in the shared `IMAGE_DIR` (fetched once, verified, never half-written)
//! and this VM's pet overlay in `PET_DIR` (created once, never overwritten).
//!
//! [`ensure_base`]: an existing target is used without touching the network once it is shown
//! to be a self-contained disk ([`source`], [`qcow2`]) with the digest `IMG_SHA256` names
//! ([`verify`]: cheaply, by its verification record, while the file is unchanged); a mismatch
//! leaves it in place for the other pods. Otherwise one pod takes the cross-pod [`lock`],
//! downloads to hidden temporary names beside the target ([`Temps`]), verifies the sha256 and
//! the disk, fsyncs, renames and records the digest. A refused download is removed; a killed
//! or failed one leaves its partial file for the next attempt to resume when it can be
//! resumed (a length and a validator from the server), and nothing otherwise.
//!
//! [`ensure_overlay`]: see [`overlay`].

mod error;
pub(crate) mod fetch;
pub(crate) mod local;
pub(crate) mod lock;
pub(crate) mod overlay;
pub(crate) mod owner;
pub(crate) mod progress;
pub(crate) mod qcow2;
pub(crate) mod ranges;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod space;
pub(crate) mod verify;

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use crate::config::{ImageConfig, ImageSource, ImageTarget};
use crate::size::ByteSize;

pub(crate) use error::ImageError;
pub(crate) use overlay::ensure_overlay;
use source::{Compression, DiskFormat};

/// The hidden temporary files of one base image, beside it in `IMAGE_DIR`.
#[derive(Debug, Clone)]
pub(crate) struct Temps {
    pub dir: PathBuf,
    /// The bytes as downloaded (resumable).
    pub part: PathBuf,
    /// The resume validator of `part`.
    pub meta: PathBuf,
    /// The journal of the ranges of `part` on disk, while a parallel download fills it.
    pub ranges: PathBuf,
    /// `part` decompressed, when it is compressed.
    pub unpacked: PathBuf,
    /// Download size, when known (for the out-of-space message).
    pub total: Option<u64>,
    /// Bytes left free on the volume (`IMAGE_DIR_RESERVE`).
    pub reserve: u64,
}

impl Temps {
    pub(crate) fn for_target(target: &Path) -> Self {
        let temp = |tag| crate::atomic_file::temp_path(target, tag);
        Self {
            dir: target.parent().map(Path::to_path_buf).unwrap_or_default(),
            part: temp("part"),
            meta: temp("part.meta"),
            ranges: temp("part.ranges"),
            unpacked: temp("unpacked"),
            total: None,
            reserve: 0,
        }
    }

    /// A write error, or the out-of-space error when that is what it was.
    pub(crate) fn write_error(&self, path: &Path, source: io::Error) -> ImageError {
        if source.kind() == io::ErrorKind::StorageFull {
            ImageError::NoSpace {
                dir: self.dir.clone(),
                needed: self.total,
                available: None,
                reserve: self.reserve,
            }
        } else {
            ImageError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Reads the first bytes and the length of `path` and decides what it is.
pub(crate) fn inspect_file(path: &Path) -> Result<Result<DiskFormat, String>, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let mut head = Vec::with_capacity(source::HEAD_LEN);
    (&mut file)
        .take(source::HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    Ok(source::inspect(&head, len))
}

/// The base image and its format, decided once (when it was checked or downloaded) and handed
/// to the overlay and to qemu's command line, which never re-read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseImage {
    pub path: PathBuf,
    pub format: DiskFormat,
}

impl BaseImage {
    /// Reads the format of the image at `path`; an image that is not a disk is refused.
    #[cfg(test)]
    pub(crate) fn read(path: &Path) -> Result<Self, ImageError> {
        let format = inspect_file(path)?.map_err(|what| ImageError::ExistingInvalid {
            path: path.to_path_buf(),
            what,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            format,
        })
    }
}

/// The base image, fetched if it is not there yet. Returns it with its format. The gauge
/// `kvm_manager_image_state{state}` says which of `waiting` (for another pod's download),
/// `downloading`, `ready` or `failed` it is in.
pub(crate) async fn ensure_base(image: &ImageConfig) -> Result<BaseImage, ImageError> {
    let result = fetch_base(image).await;
    image_state(if result.is_ok() { "ready" } else { "failed" });
    result
}

fn image_state(state: &'static str) {
    let states = ["waiting", "downloading", "ready", "failed"];
    crate::metrics::IMAGE.state(&states, state);
}

async fn fetch_base(image: &ImageConfig) -> Result<BaseImage, ImageError> {
    let expected = image.sha256.as_deref();
    let target = match &image.target {
        Some(ImageTarget::Existing(path)) => {
            return existing(path, expected).await.map(|format| BaseImage {
                path: path.clone(),
                format,
            })
        }
        Some(ImageTarget::Name(name)) => image.dir.join(name),
        None => return Err(ImageError::Internal("no IMG_TARGET".to_owned())),
    };
    if target.is_file() {
        return existing(&target, expected).await.map(|format| BaseImage {
            path: target,
            format,
        });
    }
    let source = image.source.as_ref().ok_or_else(|| ImageError::NoSource {
        target: target.clone(),
    })?;
    std::fs::create_dir_all(&image.dir).map_err(|source| ImageError::CreateDir {
        dir: image.dir.clone(),
        source,
    })?;
    image_state("waiting");
    let _lock = lock::acquire(&target).await?;
    if target.is_file() {
        // Another pod finished while we waited.
        return existing(&target, expected).await.map(|format| BaseImage {
            path: target,
            format,
        });
    }
    image_state("downloading");
    let temps = Temps {
        reserve: space::reserve_bytes(&image.dir, image.fetch.reserve),
        ..Temps::for_target(&target)
    };
    let (source_name, hint) = describe(source);
    let url = match source {
        ImageSource::Url(url) => Some(url),
        ImageSource::Path(_) => None,
    };
    // What an earlier start left and cannot be resumed goes first; what this one leaves
    // goes when it fails or is interrupted (SIGTERM drops this future).
    fetch::tidy(&temps, url);
    let mut leftovers = fetch::Leftovers::new(&temps, url);
    let mut clean_retry = image.sha256.is_some();
    let finished = loop {
        let fetched = match source {
            ImageSource::Url(url) => {
                fetch::http(url, &temps, hint, &image.fetch, image.auth.as_ref()).await
            }
            ImageSource::Path(path) => local::copy(path, &temps, hint).await,
        };
        let finished = match fetched {
            Ok(finished) => finished,
            Err(error) => {
                leftovers.abandon(&error);
                return Err(error);
            }
        };
        match &image.sha256 {
            None => {
                tracing::info!(image = %source_name, sha256 = %finished.sha256, "downloaded; set IMG_SHA256 to this digest to pin the image");
                break finished;
            }
            Some(expected) if *expected == finished.sha256 => {
                tracing::info!(image = %source_name, sha256 = %finished.sha256, "checksum verified");
                break finished;
            }
            Some(expected) => {
                fetch::discard(&temps);
                let mismatch = ImageError::Checksum {
                    source_name: source_name.clone(),
                    expected: expected.clone(),
                    actual: finished.sha256.clone(),
                };
                if !clean_retry {
                    return Err(mismatch);
                }
                clean_retry = false;
                tracing::warn!("{mismatch}; downloading once more from scratch");
            }
        }
    };
    let format = match inspect_file(&finished.image)? {
        Ok(format) => {
            tracing::info!(image = %source_name, format = format.name(), virtual_size = %ByteSize(format.virtual_size()), "base image is a usable disk");
            format
        }
        Err(what) => {
            fetch::discard(&temps);
            return Err(ImageError::NotADisk { source_name, what });
        }
    };
    // Temporary files are 0600; the base image is read by every pod on the volume, whatever
    // its user, and holds nothing a pod could not download itself.
    std::fs::set_permissions(
        &finished.image,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(|source| ImageError::Write {
        path: finished.image.clone(),
        source,
    })?;
    std::fs::rename(&finished.image, &target).map_err(|source| ImageError::Rename {
        from: finished.image.clone(),
        to: target.clone(),
        source,
    })?;
    crate::atomic_file::sync_parent(&target).map_err(|source| ImageError::Write {
        path: temps.dir.clone(),
        source,
    })?;
    fetch::discard(&temps);
    leftovers.disarm();
    let pinned = image.sha256.is_some();
    let recorded = target.clone();
    tokio::task::spawn_blocking(move || verify::record_download(&recorded, &finished, pinned))
        .await
        .map_err(|e| ImageError::Internal(e.to_string()))?;
    tracing::info!(path = %target.display(), "base image ready");
    Ok(BaseImage {
        path: target,
        format,
    })
}

/// A base image that is already there: usable as it is (a disk, self-contained, and the
/// digest `IMG_SHA256` names), or a clear refusal that leaves the file alone.
async fn existing(path: &Path, expected: Option<&str>) -> Result<DiskFormat, ImageError> {
    let format = inspect_file(path)?.map_err(|what| ImageError::ExistingInvalid {
        path: path.to_path_buf(),
        what,
    })?;
    if let Some(expected) = expected {
        let (path, expected) = (path.to_path_buf(), expected.to_owned());
        tokio::task::spawn_blocking(move || verify::existing(&path, &expected))
            .await
            .map_err(|e| ImageError::Internal(e.to_string()))??;
    }
    tracing::info!(path = %path.display(), format = format.name(), "using the existing base image");
    Ok(format)
}

/// A name for log lines (a URL redacted) and the compression hinted by the source's name.
fn describe(source: &ImageSource) -> (String, Option<Compression>) {
    match source {
        ImageSource::Url(url) => (url.to_string(), Compression::from_name(url.last_segment())),
        ImageSource::Path(path) => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            (path.display().to_string(), Compression::from_name(&name))
        }
    }
}
