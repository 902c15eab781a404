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

pub(crate) mod boot_detect;
mod error;
pub(crate) mod fetch;
pub(crate) mod iso_detect;
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
mod temps;
pub(crate) mod verify;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::config::{ImageConfig, ImageSource, ImageTarget};
use crate::size::ByteSize;

pub(crate) use error::ImageError;
pub(crate) use overlay::ensure_overlay;
use source::{Compression, DiskFormat};
pub(crate) use temps::Temps;

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
pub(crate) async fn ensure_base(
    image: &ImageConfig,
    target: &ImageTarget,
) -> Result<BaseImage, ImageError> {
    let result = fetch_base(image, target).await;
    image_state(if result.is_ok() { "ready" } else { "failed" });
    result
}

/// Another image fetched beside the base (`INSTALL_MEDIA` as a URL): the same lock, resume,
/// verification and cache in `IMAGE_DIR`, without the base's image-state metric.
pub(crate) async fn ensure_media(
    image: &ImageConfig,
    target: &ImageTarget,
) -> Result<BaseImage, ImageError> {
    fetch_base(image, target).await
}

fn image_state(state: &'static str) {
    let states = ["waiting", "downloading", "ready", "failed"];
    crate::metrics::IMAGE.state(&states, state);
}

async fn fetch_base(image: &ImageConfig, target: &ImageTarget) -> Result<BaseImage, ImageError> {
    let expected = image.sha256.as_deref();
    let target = match target {
        ImageTarget::Existing(path) => {
            return existing(path, expected).await.map(|format| BaseImage {
                path: path.clone(),
                format,
            })
        }
        ImageTarget::Name(name) => image.dir.join(name),
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
    download(image, source, target, &temps).await
}

/// Fetches `source` to its temporary files, shows it is the image `IMG_SHA256` names and a
/// disk, and renames it to `target` (under the cross-pod lock, which the caller holds).
async fn download(
    image: &ImageConfig,
    source: &ImageSource,
    target: PathBuf,
    temps: &Temps,
) -> Result<BaseImage, ImageError> {
    let (source_name, hint) = describe(source);
    let url = match source {
        ImageSource::Url(url) => Some(url),
        ImageSource::Path(_) => None,
    };
    // What an earlier start left and cannot be resumed goes first; what this one leaves
    // goes when it fails or is interrupted (SIGTERM drops this future).
    fetch::tidy(temps, url);
    let mut leftovers = fetch::Leftovers::new(temps, url);
    let finished = fetch_checked(image, source, temps, &source_name, hint, &mut leftovers).await?;
    let format = match inspect_file(&finished.image)? {
        Ok(format) => {
            tracing::info!(image = %source_name, format = format.name(), virtual_size = %ByteSize(format.virtual_size()), "base image is a usable disk");
            format
        }
        Err(what) => {
            fetch::discard(temps);
            return Err(ImageError::NotADisk { source_name, what });
        }
    };
    install(&finished.image, &target, temps)?;
    fetch::discard(temps);
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

/// The fetched file, with the digest `IMG_SHA256` names when it names one. A mismatch is
/// fetched once more from scratch, then refused.
async fn fetch_checked(
    image: &ImageConfig,
    source: &ImageSource,
    temps: &Temps,
    source_name: &str,
    hint: Option<Compression>,
    leftovers: &mut fetch::Leftovers,
) -> Result<sink::Finished, ImageError> {
    let mut clean_retry = image.sha256.is_some();
    loop {
        let fetched = match source {
            ImageSource::Url(url) => {
                fetch::http(url, temps, hint, &image.fetch, image.auth.as_ref()).await
            }
            ImageSource::Path(path) => local::copy(path, temps, hint).await,
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
                return Ok(finished);
            }
            Some(expected) if *expected == finished.sha256 => {
                tracing::info!(image = %source_name, sha256 = %finished.sha256, "checksum verified");
                return Ok(finished);
            }
            Some(expected) => {
                fetch::discard(temps);
                let mismatch = ImageError::Checksum {
                    source_name: source_name.to_owned(),
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
    }
}

/// Puts the finished file in place as the base image: readable by all, renamed, the rename
/// fsynced.
fn install(finished: &Path, target: &Path, temps: &Temps) -> Result<(), ImageError> {
    // Temporary files are 0600; the base image is read by every pod on the volume, whatever
    // its user, and holds nothing a pod could not download itself.
    std::fs::set_permissions(
        finished,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(|source| ImageError::Write {
        path: finished.to_path_buf(),
        source,
    })?;
    std::fs::rename(finished, target).map_err(|source| ImageError::Rename {
        from: finished.to_path_buf(),
        to: target.to_path_buf(),
        source,
    })?;
    crate::atomic_file::sync_parent(target).map_err(|source| ImageError::Write {
        path: temps.dir.clone(),
        source,
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
