//! A local source (`file://` or a plain path, e.g. a volume mounted from elsewhere): copied
//! through the same [`Sink`] as a download, so it is hashed, unpacked and checked the same way.
//! No resume: a local copy is fast to restart.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::sink::{Finished, Sink};
use super::source::Compression;
use super::{space, ImageError, Temps};

/// Copies a local file (`file://` or a plain path) through the same sink: hash, unpack.
pub(crate) async fn copy(
    path: &Path,
    temps: &Temps,
    hint: Option<Compression>,
) -> Result<Finished, ImageError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancelled));
    let (path, temps) = (path.to_path_buf(), temps.clone());
    tokio::task::spawn_blocking(move || {
        let read_err = |source| ImageError::Read {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(read_err)?;
        let total = file.metadata().map_err(read_err)?.len();
        space::check(&temps.dir, total)?;
        let temps = Temps {
            total: Some(total),
            ..temps
        };
        let mut sink = Sink::open(
            &temps,
            hint,
            false,
            Some(total),
            &path.display().to_string(),
        )?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if cancelled.load(Ordering::Relaxed) {
                return Err(ImageError::Internal("copy cancelled".to_owned()));
            }
            let n = file.read(&mut buf).map_err(read_err)?;
            if n == 0 {
                break;
            }
            sink.feed(&buf[..n])?;
        }
        sink.finish()
    })
    .await
    .map_err(|e| ImageError::Internal(e.to_string()))?
}

/// Stops a blocking copy when the future waiting on it is dropped (SIGTERM).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
