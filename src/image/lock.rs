//! The cross-pod lock on one base image: `flock` on `IMAGE_DIR/.<target>.lock`.
//!
//! Exactly one pod downloads; the others wait and then use the result. `flock` belongs to the
//! open file description, so a pod that is killed (even with SIGKILL, even the whole node's
//! process) releases it when the kernel closes its descriptors — nobody waits forever on a
//! dead holder, and there is no stale lock file to clean up (the file itself is never
//! removed: removing a lock file races with the next locker). On NFS, Linux maps `flock` to
//! POSIX byte-range locks, which the server arbitrates.
//!
//! Waiting polls with a non-blocking attempt, so the async runtime stays free to notice
//! SIGTERM while another pod downloads.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::ImageError;

const POLL: Duration = Duration::from_millis(100);
const REMIND: Duration = Duration::from_secs(30);

/// Held while this process owns the base image; released on drop or death.
#[derive(Debug)]
pub(crate) struct ImageLock {
    _lock: Flock<File>,
}

/// `IMAGE_DIR/.<name>.lock` for `IMAGE_DIR/<name>`.
pub(crate) fn path_for(target: &Path) -> PathBuf {
    crate::atomic_file::temp_path(target, "lock")
}

/// Takes the lock, waiting (and saying so) while another process holds it.
pub(crate) async fn acquire(target: &Path) -> Result<ImageLock, ImageError> {
    let path = path_for(target);
    let lock_err = |source: std::io::Error| ImageError::Lock {
        path: path.clone(),
        source,
    };
    // 0600 like every file we write in IMAGE_DIR: it names this pod's host.
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(lock_err)?;
    let started = Instant::now();
    let mut next_reminder = started;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                if started.elapsed() > POLL {
                    tracing::info!(lock = %path.display(), waited = %humantime::format_duration(round(started.elapsed())), "got the image lock");
                }
                // Who holds it, for the waiters' log lines; best effort.
                let _ = lock.set_len(0);
                let _ = writeln!(lock, "pid {} on {}", std::process::id(), holder_name());
                return Ok(ImageLock { _lock: lock });
            }
            Err((back, Errno::EWOULDBLOCK)) => {
                file = back;
                if Instant::now() >= next_reminder {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    tracing::info!(
                        lock = %path.display(),
                        holder = holder.trim(),
                        "another pod is fetching this base image; waiting for it"
                    );
                    next_reminder = Instant::now() + REMIND;
                }
                tokio::time::sleep(POLL).await;
            }
            Err((_, errno)) => return Err(lock_err(errno.into())),
        }
    }
}

fn holder_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_locker_waits_until_the_first_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("base.qcow2");
        let first = acquire(&target).await.expect("first lock");
        let second = tokio::time::timeout(Duration::from_millis(300), acquire(&target)).await;
        assert!(second.is_err(), "the second locker must wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), acquire(&target)).await;
        assert!(matches!(second, Ok(Ok(_))), "released on drop");
        assert!(path_for(&target).ends_with(".base.qcow2.lock"));
    }
}
