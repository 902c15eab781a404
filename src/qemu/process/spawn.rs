//! Starting qemu's process: the spawn through PID 1's reaper (its errors named for `QEMU=`),
//! and the relays of its streams: the guest's serial console (stdout, kept in a ring and
//! broadcast to attached sessions), qemu's own messages (stderr, its last words kept), and
//! what is typed into the console (stdin).

use std::ffi::OsString;
use std::io::ErrorKind;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

use super::super::console::{self, Ring, Stream};
use super::super::QemuError;
use crate::pid1::reaper::{Pipes, Spawned, Stdio};
use crate::pid1::{Pid1, Pid1Error};

/// qemu's streams, relayed.
pub(super) struct Relays {
    pub console: Arc<Ring>,
    pub stderr: Arc<Ring>,
    pub console_raw: broadcast::Sender<Vec<u8>>,
    pub console_input: mpsc::Sender<Vec<u8>>,
}

/// Spawns `program` with `args` and piped streams.
pub(super) fn spawn(
    pid1: &Pid1,
    program: &OsString,
    args: &[OsString],
) -> Result<Spawned, QemuError> {
    pid1.reaper()
        .spawn(program, args, [Stdio::Piped; 3])
        .map_err(|e| match e {
            Pid1Error::Spawn { source, .. } if source.kind() == ErrorKind::NotFound => {
                QemuError::NotFound {
                    qemu: program.into(),
                    path: std::env::var("PATH").unwrap_or_default(),
                }
            }
            // The program is named once, by QEMU=, not again by the reaper's message.
            Pid1Error::Spawn { source, .. } => QemuError::Spawn {
                qemu: program.into(),
                source,
            },
            other => QemuError::Reaper(other),
        })
}

/// Starts the relays of qemu's `pipes`; they end when qemu closes its streams.
pub(super) fn relay(pipes: Pipes) -> Relays {
    let console = Arc::new(Ring::new(1000));
    let stderr = Arc::new(Ring::new(50));
    let (console_raw, _) = broadcast::channel(256);
    if let Some(out) = pipes.stdout {
        let (ring, raw) = (Arc::clone(&console), console_raw.clone());
        tokio::spawn(async move { console::pump(out, Stream::Guest, &ring, Some(&raw)).await });
    }
    if let Some(err) = pipes.stderr {
        let ring = Arc::clone(&stderr);
        tokio::spawn(async move { console::pump(err, Stream::Qemu, &ring, None).await });
    }
    let (console_input, mut typed) = mpsc::channel::<Vec<u8>>(64);
    if let Some(mut stdin) = pipes.stdin {
        tokio::spawn(async move {
            while let Some(bytes) = typed.recv().await {
                if stdin.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
    }
    Relays {
        console,
        stderr,
        console_raw,
        console_input,
    }
}
