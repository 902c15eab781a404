//! The applying half of passt mode: reads the pod's facts, gives passt a socket directory it
//! owns, starts it through PID 1's reaper and waits for its socket, relays its messages
//! (keeping its last words), tells whether the guest answers on a port, and stops it.
//! passt dying is the VM losing its network: [`Passt::died`] resolves then, and `run` stops
//! the VM (exit 4) instead of leaving it cut off.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::{PasstPlan, PodFacts};
use crate::net::NetError;
use crate::pid1::daemon::Daemon;
use crate::pid1::Reaper;

/// How long passt gets to bind its ports and its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(30);
/// How long passt gets to obey SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a connection through passt must stay open, silent, to count as the guest's.
const ANSWER_WINDOW: Duration = Duration::from_secs(3);

/// Reads the ephemeral port range, the unprivileged port start and our open-files limit.
pub(crate) fn probe() -> PodFacts {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(str::parse::<u16>);
            match (parts.next(), parts.next()) {
                (Some(Ok(low)), Some(Ok(high))) if low <= high => Some(low..=high),
                _ => None,
            }
        })
        .unwrap_or(32768..=60999);
    let unprivileged_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1024);
    PodFacts {
        ephemeral,
        unprivileged_start,
        open_files: crate::sys::open_files_limit().unwrap_or(1024),
        root: nix::unistd::geteuid().is_root(),
    }
}

/// A running passt.
#[derive(Debug)]
pub(crate) struct Passt(Daemon);

/// Starts passt per `plan` and returns once its socket is there for qemu.
pub(crate) async fn start(plan: &PasstPlan, reaper: &Reaper) -> Result<Passt, NetError> {
    announce(plan);
    if let Some(dir) = plan.socket.parent() {
        socket_dir(dir, plan.runas)?;
    }
    let _ = std::fs::remove_file(&plan.socket);
    let mut passt = Daemon::spawn(reaper, plan.binary.as_os_str(), &plan.args(), relay)
        .map_err(NetError::PasstSpawn)?;
    tracing::info!(pid = passt.pid().as_raw(), args = ?plan.args(), "passt started");
    let deadline = Instant::now() + SOCKET_WAIT;
    while !plan.socket.exists() {
        if let Some(status) = passt.exited().await {
            return Err(NetError::PasstEarlyExit {
                status,
                last_words: passt.last_words(),
            });
        }
        if Instant::now() >= deadline {
            let last_words = passt.last_words();
            passt.stop(STOP_GRACE).await;
            return Err(NetError::PasstNoSocket {
                path: plan.socket.clone(),
                last_words,
            });
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok(Passt(passt))
}

/// Logs one line of passt's (at debug: its start banner is long); says whether to keep it.
fn relay(line: &str) -> bool {
    // passt also tries syslog, which a container does not have.
    if line.starts_with("Failed to send") {
        return false;
    }
    tracing::debug!(target: "passt", "{line}");
    true
}

/// The socket's directory, owned by the user passt runs as (it binds the socket as that user).
fn socket_dir(dir: &Path, runas: Option<u32>) -> Result<(), NetError> {
    let failed = |source| NetError::PasstSocketDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    if let Some(uid) = runas {
        std::os::unix::fs::chown(dir, Some(uid), Some(uid)).map_err(failed)?;
    }
    Ok(())
}

fn announce(plan: &PasstPlan) {
    if plan.forward_ignored {
        tracing::info!(
            "DNS_MODE=forward: in passt mode the guest gets the pod's nameservers and search \
             list from passt (our forwarder serves NAT mode only)"
        );
    }
    if let Some(last) = plan.capped_at {
        tracing::warn!(
            last_port = last,
            "the open-files limit (RLIMIT_NOFILE) lets passt listen only on ports up to {last} \
             for the VM (4 sockets per port); raise the container's nofile limit (1048576 is \
             containerd's default) to forward every port"
        );
    }
    if let Some(start) = plan.privileged_below {
        tracing::warn!(
            "ports below {start} do not reach the VM: passt runs unprivileged; set the safe \
             sysctl net.ipv4.ip_unprivileged_port_start=0 on the pod"
        );
    }
}

/// Whether the guest answers on `addr` (a port of the pod IP, which passt forwards). passt
/// accepts the connection for the guest at once, and closes it when the guest refuses: a
/// connection that brings data, or stays open for [`ANSWER_WINDOW`], is the guest's.
pub(crate) async fn guest_answers(addr: std::net::SocketAddr) -> bool {
    use tokio::io::AsyncReadExt as _;
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(ANSWER_WINDOW, stream.read(&mut byte)).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
        Err(_) => true,
    }
}

impl Passt {
    /// Resolves when passt exits, with the error that reports it.
    pub(crate) async fn died(&mut self) -> NetError {
        let status = self.0.died(Duration::ZERO).await;
        let last_words = self.0.last_words();
        match status {
            Some(status) => NetError::PasstDied { status, last_words },
            None => NetError::PasstLost {
                pid: self.0.pid().as_raw(),
            },
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; returns once the reaper collected it.
    pub(crate) async fn stop(self) {
        self.0.stop(STOP_GRACE).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    use super::*;

    /// A loopback listener that treats each connection with `serve`, as passt does for the
    /// guest: it accepts at once, then closes, writes, or holds the connection.
    async fn listener(serve: fn(tokio::net::TcpStream)) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serve(stream);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_passt_closes_at_once_is_not_the_guest() {
        let addr = listener(drop).await;
        assert!(!guest_answers(addr).await);
    }

    #[tokio::test]
    async fn nothing_listening_is_not_the_guest() {
        let addr = {
            let free = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            free.local_addr().expect("address")
        };
        assert!(!guest_answers(addr).await);
    }

    #[tokio::test]
    async fn a_banner_or_a_connection_held_open_is_the_guest() {
        let banner = listener(|mut stream| {
            tokio::spawn(async move {
                let _ = stream.write_all(b"SSH-2.0-guest\r\n").await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        })
        .await;
        assert!(guest_answers(banner).await);
        let silent = listener(|stream| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(stream);
            });
        })
        .await;
        assert!(guest_answers(silent).await);
    }
}
