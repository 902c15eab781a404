//! The partial download kept between attempts and starts: whether it can be resumed, its
//! validator on disk, and what is removed after a failure or when the download is dropped.

use std::fs::{OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

use super::super::ranges::Ranges;
use super::super::sink::TEMP_MODE;
use super::super::{ImageError, Temps};
use super::Validator;
use crate::config::ImageUrl;

/// A partial download that can be resumed.
#[derive(Debug)]
pub(super) struct Partial {
    /// Bytes of it on disk.
    pub bytes: u64,
    pub validator: Validator,
    /// The ranges on disk, for a parallel download (its journal); `None`: a prefix of
    /// `bytes` (one stream).
    pub ranges: Option<Ranges>,
}

/// The partial download of `url` that can be resumed: the server named a length and a
/// validator for it, and it holds some bytes (a single stream's prefix short of the length,
/// or any range a parallel download's journal records).
pub(super) fn resumable_partial(url: &ImageUrl, temps: &Temps) -> Option<Partial> {
    let validator = std::fs::read(&temps.meta)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Validator>(&bytes).ok())
        .filter(|v| v.url == url.to_string())?;
    let length = validator.length?;
    validator.if_range()?;
    if let Some(ranges) = super::journal::load(temps, length) {
        let bytes = ranges.len();
        return (bytes > 0).then_some(Partial {
            bytes,
            validator,
            ranges: Some(ranges),
        });
    }
    let len = std::fs::metadata(&temps.part).map_or(0, |m| m.len());
    (len > 0 && len < length).then_some(Partial {
        bytes: len,
        validator,
        ranges: None,
    })
}

/// Writes the validator: 0600 (it names the URL, if only redacted), atomically.
pub(super) fn save_validator(temps: &Temps, validator: &Validator) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec(validator).map_err(|e| ImageError::Internal(e.to_string()))?;
    // We hold the image lock: a fixed temporary name cannot collide.
    let temp = crate::atomic_file::temp_path(&temps.meta, "tmp");
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(TEMP_MODE)
            .open(&temp)?;
        file.set_permissions(Permissions::from_mode(TEMP_MODE))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &temps.meta)?;
        crate::atomic_file::sync_parent(&temps.meta)
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        temps.write_error(&temps.meta, source)
    })
}

/// Forgets a partial download that cannot be resumed.
pub(crate) fn discard(temps: &Temps) {
    let meta_temp = crate::atomic_file::temp_path(&temps.meta, "tmp");
    for path in [
        &temps.part,
        &temps.meta,
        &temps.ranges,
        &temps.unpacked,
        &meta_temp,
    ] {
        let _ = std::fs::remove_file(path);
    }
}

/// Before a download: removes what an earlier start left that cannot be resumed (the
/// unpacked file never can: a resume replays the partial file through the decoder).
pub(crate) fn tidy(temps: &Temps, url: Option<&ImageUrl>) {
    let _ = std::fs::remove_file(&temps.unpacked);
    if url.and_then(|url| resumable_partial(url, temps)).is_none() {
        discard(temps);
    }
}

/// Whether a download that ended with `error` is worth resuming later: not when the bytes
/// themselves were the problem (corrupt, not a disk, a bomb), nor after a 4xx.
fn worth_resuming(error: &ImageError) -> bool {
    match error {
        ImageError::GaveUp { last, .. } => worth_resuming(last),
        ImageError::Reserve { unpacked, .. } => unpacked.is_none(),
        ImageError::Network { .. }
        | ImageError::ServerStatus { .. }
        | ImageError::ShortBody { .. }
        | ImageError::BodyBroken { .. }
        | ImageError::Stalled { .. }
        | ImageError::TooSlow { .. }
        | ImageError::NoSpace { .. }
        | ImageError::Interrupted(_) => true,
        _ => false,
    }
}

/// The bytes of the partial download that [`abandon`] keeps after `error`.
pub(super) fn keeps(temps: &Temps, url: Option<&ImageUrl>, error: &ImageError) -> Option<u64> {
    url.filter(|_| worth_resuming(error))
        .and_then(|url| resumable_partial(url, temps))
        .map(|partial| partial.bytes)
}

/// After a failed download: removes the unpacked file, and the partial one unless it can be
/// resumed and is worth it. Returns the bytes kept.
pub(crate) fn abandon(temps: &Temps, url: Option<&ImageUrl>, error: &ImageError) -> Option<u64> {
    let _ = std::fs::remove_file(&temps.unpacked);
    let kept = keeps(temps, url, error);
    match kept {
        Some(bytes) => {
            tracing::info!(
                bytes,
                "the partial download is kept for the next start to resume"
            )
        }
        None => {
            discard(temps);
            tracing::info!("the partial download was removed (it cannot be resumed)");
        }
    }
    kept
}

/// Cleans up after a download that did not finish, also when its future is dropped (SIGTERM):
/// the unpacked file goes, the partial file stays only when it can be resumed.
#[derive(Debug)]
pub(crate) struct Leftovers {
    temps: Temps,
    url: Option<ImageUrl>,
    armed: bool,
}

impl Leftovers {
    pub(crate) fn new(temps: &Temps, url: Option<&ImageUrl>) -> Self {
        Self {
            temps: temps.clone(),
            url: url.cloned(),
            armed: true,
        }
    }

    /// The download failed with `error`.
    pub(crate) fn abandon(&mut self, error: &ImageError) {
        self.armed = false;
        abandon(&self.temps, self.url.as_ref(), error);
    }

    /// The download became the base image: nothing is left over.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.armed {
            tidy(&self.temps, self.url.as_ref());
        }
    }
}
