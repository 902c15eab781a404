//! `kvm-manager console`: the guest's serial console on a unix socket in `RUNTIME_DIR`, and
//! the client that attaches a terminal to it (`kubectl exec -it pod -- kvm-manager console`).
//!
//! On connect the server replays the recent console lines, then streams output as it comes
//! and feeds whatever the client types to the guest. The client detaches on Ctrl-] (0x1d),
//! like telnet; the VM keeps running.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, Semaphore};

use super::console::Ring;

/// The detach key: Ctrl-].
pub(crate) const DETACH: u8 = 0x1d;
/// Concurrent attached sessions.
const MAX_SESSIONS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    #[error("could not listen on the console socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no VM console at {path}: is `kvm-manager run` running in this container (same RUNTIME_DIR)?")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("console connection failed")]
    Io(#[source] io::Error),
}

pub(crate) fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("console.sock")
}

/// Serves the console socket in a task until the runtime ends.
pub(crate) fn serve(
    path: &Path,
    ring: Arc<Ring>,
    raw: broadcast::Sender<Vec<u8>>,
    input: mpsc::Sender<Vec<u8>>,
) -> Result<(), AttachError> {
    let listener = crate::private_socket::bind(path).map_err(|source| AttachError::Listen {
        path: path.to_owned(),
        source,
    })?;
    let slots = Arc::new(Semaphore::new(MAX_SESSIONS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let (ring, mut output, input) = (Arc::clone(&ring), raw.subscribe(), input.clone());
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let mut replay = ring.snapshot().join("\r\n");
                replay.push_str("\r\n");
                if write.write_all(replay.as_bytes()).await.is_err() {
                    return;
                }
                let to_guest = async {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = read.read(&mut buf).await {
                        if input.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                };
                let from_guest = async {
                    loop {
                        match output.recv().await {
                            Ok(bytes) => {
                                if write.write_all(&bytes).await.is_err() {
                                    break;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                };
                tokio::select! {
                    () = to_guest => {}
                    () = from_guest => {}
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

/// Puts the terminal in raw mode for its lifetime (when stdin is a terminal).
struct RawTerminal {
    saved: Option<Termios>,
}

impl RawTerminal {
    fn enter() -> Self {
        let stdin = io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        Self { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Attaches this terminal to the console at `path` until Ctrl-] or the VM goes away.
pub(crate) fn attach(path: &Path) -> Result<(), AttachError> {
    let stream = StdUnixStream::connect(path).map_err(|source| AttachError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let mut from_guest = stream.try_clone().map_err(AttachError::Io)?;
    let mut to_guest = stream;
    let _ = writeln!(
        io::stderr(),
        "[kvm-manager: attached to the guest console; detach with Ctrl-]]"
    );
    let raw = RawTerminal::enter();
    let output = std::thread::spawn(move || {
        let mut stdout = io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from_guest.read(&mut buf) {
            if stdout
                .write_all(&buf[..n])
                .and_then(|()| stdout.flush())
                .is_err()
            {
                break;
            }
        }
    });
    let mut stdin = io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let typed = &buf[..n];
        let (send, detach) = match typed.iter().position(|b| *b == DETACH) {
            Some(at) => (&typed[..at], true),
            None => (typed, false),
        };
        if to_guest.write_all(send).is_err() || detach {
            break;
        }
    }
    let _ = to_guest.shutdown(std::net::Shutdown::Both);
    drop(raw);
    let _ = output.join();
    let _ = writeln!(io::stderr(), "\r\n[kvm-manager: detached]");
    Ok(())
}
