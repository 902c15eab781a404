//! The virtio-fs shares' daemons: one `virtiofsd` (the Rust daemon) per share, started through
//! PID 1's reaper before qemu (qemu connects to its socket once, at start), its messages
//! relayed and its last words kept.
//!
//! A virtiofsd that dies takes the share's filesystem from under the guest: [`Virtiofsds::died`]
//! resolves and `run` stops the VM the graceful way with exit 9, rather than leave a guest
//! whose files vanished running unnoticed. virtiofsd also exits by itself when qemu closes
//! its socket: the death counts only if qemu outlives it by [`DEATH_GRACE`].
//!
//! Flags: `--sandbox none`, because the other sandboxes need what a pod lacks (`namespace`:
//! CAP_SYS_ADMIN for new mount and PID namespaces; `chroot`: CAP_SYS_CHROOT, dropped by
//! restricted pods); the pod is the sandbox, and virtiofsd still resolves every guest request
//! beneath the shared directory. `--readonly` for a `:ro` share: refused on the pod side.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::shares::{ShareBackend, ShareDevice};
use crate::config::GuestIoConfig;
use crate::pid1::daemon::Daemon;
use crate::pid1::{ExitStatus, Pid1Error, Reaper};

/// How long virtiofsd gets to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(30);
/// How long virtiofsd gets to obey SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A virtiofsd exit counts as a death only if qemu is still running this long after it.
pub(crate) const DEATH_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ShareError {
    #[error("could not start virtiofsd for share {tag:?}; install it or set VIRTIOFSD (or SHARE_TRANSPORT=9p)")]
    Spawn {
        tag: String,
        #[source]
        source: Pid1Error,
    },
    #[error("virtiofsd for share {tag:?} exited at start ({status}); is the shared directory there and readable? Its last words:\n{last_words}")]
    EarlyExit {
        tag: String,
        status: ExitStatus,
        last_words: String,
    },
    #[error("virtiofsd for share {tag:?} made no socket {path} within 30s; its last words:\n{last_words}")]
    NoSocket {
        tag: String,
        path: PathBuf,
        last_words: String,
    },
    #[error("virtiofsd for share {tag:?} died ({status}): the guest lost that filesystem, so the VM was stopped. Its last words:\n{last_words}")]
    Died {
        tag: String,
        status: ExitStatus,
        last_words: String,
    },
    #[error("virtiofsd for share {tag:?} (pid {pid}) was lost by the reaper")]
    Lost { tag: String, pid: i32 },
}

/// virtiofsd's arguments for a share at `path` on `socket`.
pub(crate) fn args(path: &Path, socket: &Path, writable: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("--socket-path={}", socket.display()).into(),
        format!("--shared-dir={}", path.display()).into(),
        "--sandbox=none".into(),
        "--log-level=warn".into(),
    ];
    if !writable {
        args.push("--readonly".into());
    }
    args
}

/// One running virtiofsd.
#[derive(Debug)]
struct Share {
    tag: String,
    daemon: Daemon,
}

/// The virtiofsd of every virtio-fs share (none when no share uses virtio-fs).
#[derive(Debug, Default)]
pub(crate) struct Virtiofsds(Vec<Share>);

/// Starts a virtiofsd for each virtio-fs share among `devices` (the share's directory from
/// `config`) and returns once every socket is there for qemu. On a failure, those already
/// started are stopped.
pub(crate) async fn start(
    devices: &[ShareDevice],
    config: &GuestIoConfig,
    reaper: &Reaper,
) -> Result<Virtiofsds, ShareError> {
    let mut started = Virtiofsds::default();
    for device in devices {
        let ShareBackend::VirtioFs { socket } = &device.backend else {
            continue;
        };
        let Some(share) = config.shares.iter().find(|s| s.tag == device.tag) else {
            continue;
        };
        let args = args(&share.path, socket, share.writable);
        match start_one(&device.tag, &config.virtiofsd, &args, socket, reaper).await {
            Ok(daemon) => started.0.push(daemon),
            Err(e) => {
                started.stop().await;
                return Err(e);
            }
        }
    }
    Ok(started)
}

async fn start_one(
    tag: &str,
    binary: &Path,
    args: &[OsString],
    socket: &Path,
    reaper: &Reaper,
) -> Result<Share, ShareError> {
    let _ = std::fs::remove_file(socket);
    let share = tag.to_owned();
    let mut daemon = Daemon::spawn(reaper, binary.as_os_str(), args, move |line| {
        tracing::info!(target: "virtiofsd", share, "{line}");
        true
    })
    .map_err(|source| ShareError::Spawn {
        tag: tag.to_owned(),
        source,
    })?;
    tracing::info!(
        share = tag,
        pid = daemon.pid().as_raw(),
        ?args,
        "virtiofsd started"
    );
    let deadline = Instant::now() + SOCKET_WAIT;
    while !socket.exists() {
        if let Some(status) = daemon.exited().await {
            return Err(ShareError::EarlyExit {
                tag: tag.to_owned(),
                status,
                last_words: daemon.last_words(),
            });
        }
        if Instant::now() >= deadline {
            let last_words = daemon.last_words();
            daemon.stop(STOP_GRACE).await;
            return Err(ShareError::NoSocket {
                tag: tag.to_owned(),
                path: socket.to_owned(),
                last_words,
            });
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok(Share {
        tag: tag.to_owned(),
        daemon,
    })
}

impl Share {
    async fn died(&mut self) -> ShareError {
        // qemu closing the socket ends virtiofsd too: give qemu's own exit the time to win.
        match self.daemon.died(DEATH_GRACE).await {
            Some(status) => ShareError::Died {
                tag: self.tag.clone(),
                status,
                last_words: self.daemon.last_words(),
            },
            None => ShareError::Lost {
                tag: self.tag.clone(),
                pid: self.daemon.pid().as_raw(),
            },
        }
    }
}

impl Virtiofsds {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Resolves when one of them dies (never when there is none).
    pub(crate) async fn died(&mut self) -> ShareError {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let deaths = self.0.iter_mut().map(|d| Box::pin(d.died()));
        futures_util::future::select_all(deaths).await.0
    }

    /// Stops every one still running (SIGTERM, then SIGKILL after a grace period).
    pub(crate) async fn stop(self) {
        for share in self.0 {
            share.daemon.stop(STOP_GRACE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_share_is_read_only_in_virtiofsd_and_the_sandbox_fits_a_pod() {
        let ro = args(
            Path::new("/etc/app"),
            Path::new("/run/kvm-manager/virtiofsd-cm.sock"),
            false,
        );
        assert_eq!(
            ro,
            [
                "--socket-path=/run/kvm-manager/virtiofsd-cm.sock",
                "--shared-dir=/etc/app",
                "--sandbox=none",
                "--log-level=warn",
                "--readonly"
            ]
            .map(OsString::from)
        );
        let rw = args(Path::new("/data"), Path::new("/s"), true);
        assert!(!rw.iter().any(|a| a == "--readonly"));
    }
}
