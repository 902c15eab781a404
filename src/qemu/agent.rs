//! Our own client of the QEMU guest agent (qemu-ga in the guest), over the virtio-serial
//! channel `org.qemu.guest_agent.0` that qemu exposes as a unix socket in `RUNTIME_DIR`.
//!
//! A guest is not trusted to answer, nor to answer sensibly: every call has a deadline (waiting
//! for the connection included), answers are read in lines of bounded length, and whatever
//! goes wrong leaves the channel marked unsynchronised, so that the next call first resyncs
//! with `guest-sync-delimited` (see [`protocol`]). One call at a time holds the channel (the
//! protocol has no ids); callers never block PID 1, the shutdown path or the HTTP server for
//! longer than their deadline. The wire format is pure ([`protocol`]), what the answers mean
//! is in [`guest`], the polling in [`poll`] and freezing in [`freeze`].

pub(crate) mod control;
pub(crate) mod freeze;
pub(crate) mod guest;
pub(crate) mod poll;
pub(crate) mod port;
pub(crate) mod protocol;
pub(crate) mod ssh;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use protocol::Answer;

/// The name qemu-ga looks for; the socket's file name in `RUNTIME_DIR`.
pub(crate) const CHANNEL: &str = "org.qemu.guest_agent.0";
/// Deadline of an ordinary call (ping, information).
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);
/// Longest answer line kept: a guest cannot make us buffer more than this per line.
const MAX_LINE: u64 = 1024 * 1024;

/// The guest agent of a running VM: the client, its poller's view and the freezer.
#[derive(Debug, Clone)]
pub(crate) struct Guest {
    pub agent: Arc<Agent>,
    pub view: tokio::sync::watch::Receiver<poll::AgentView>,
    pub freezer: Arc<freeze::Freezer>,
}

impl Guest {
    /// Starts polling the agent behind `runtime_dir`'s socket, while qemu (`qmp`) says the
    /// guest has its port open.
    pub(crate) fn start(
        runtime_dir: &Path,
        qmp: crate::qemu::qmp::Qmp,
        poll_interval: Duration,
        freeze_timeout: Duration,
        ssh: Option<ssh::SshKeys>,
    ) -> Self {
        let agent = Arc::new(Agent::new(socket_path(runtime_dir)));
        Self {
            view: poll::spawn(Arc::clone(&agent), qmp, poll_interval, ssh),
            freezer: freeze::Freezer::new(Arc::clone(&agent), freeze_timeout),
            agent,
        }
    }
}

/// The agent's socket in `runtime_dir`.
pub(crate) fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("agent.sock")
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("could not connect to the guest agent's channel {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent's channel failed")]
    Io(#[source] std::io::Error),
    #[error("the guest agent's channel closed")]
    Closed,
    #[error("the guest agent did not answer {command} within {}", humantime::format_duration(*after))]
    Timeout { command: String, after: Duration },
    #[error("the guest agent refused {command}: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
}

/// One connection to the channel, and whether it is known to be in step with the agent.
#[derive(Debug)]
struct Channel {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    synced: bool,
}

/// A handle on the guest agent; clones share the channel.
#[derive(Debug)]
pub(crate) struct Agent {
    path: PathBuf,
    channel: Mutex<Option<Channel>>,
    next_sync: AtomicU64,
}

impl Agent {
    pub(crate) fn new(path: PathBuf) -> Self {
        // A different first id on each start: a stale answer from before a restart of ours is
        // never taken for a fresh one.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 & 0xFFFF_FFFF_0000)
            .unwrap_or(0);
        Self {
            path,
            channel: Mutex::new(None),
            next_sync: AtomicU64::new(seed + 1),
        }
    }

    /// Runs `command` and returns its `return` value, or fails within `deadline`.
    pub(crate) async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        deadline: Duration,
    ) -> Result<Value, AgentError> {
        let until = tokio::time::Instant::now() + deadline;
        let timed_out = || AgentError::Timeout {
            command: command.to_owned(),
            after: deadline,
        };
        // Waiting for the channel counts against the deadline too.
        let mut channel = tokio::time::timeout_at(until, self.channel.lock())
            .await
            .map_err(|_| timed_out())?;
        let result = tokio::time::timeout_at(
            until,
            self.exchange(&mut channel, command, arguments.as_ref()),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        if let Err(AgentError::Io(_) | AgentError::Closed | AgentError::Timeout { .. }) = result {
            // Connect again next time (qemu accepts a new client on its socket): what a silent
            // guest left unread goes with the old socket, so the pings to a guest without an
            // agent never pile up in qemu's socket buffer.
            *channel = None;
        }
        result
    }

    /// `guest-ping`: whether the agent answers now.
    pub(crate) async fn ping(&self) -> Result<(), AgentError> {
        self.execute("guest-ping", None, DEADLINE).await.map(drop)
    }

    /// `guest-shutdown` (powerdown); the agent answers nothing when it obeys, so a closed
    /// channel or a timeout after the request went out counts as sent.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> Result<(), AgentError> {
        match self
            .execute(
                "guest-shutdown",
                Some(json!({ "mode": "powerdown" })),
                deadline,
            )
            .await
        {
            Ok(_) | Err(AgentError::Timeout { .. } | AgentError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn exchange(
        &self,
        channel: &mut Option<Channel>,
        command: &str,
        arguments: Option<&Value>,
    ) -> Result<Value, AgentError> {
        if channel.is_none() {
            let stream =
                UnixStream::connect(&self.path)
                    .await
                    .map_err(|source| AgentError::Connect {
                        path: self.path.clone(),
                        source,
                    })?;
            let (read, write) = stream.into_split();
            *channel = Some(Channel {
                reader: BufReader::new(read),
                writer: write,
                synced: false,
            });
        }
        let Some(channel) = channel.as_mut() else {
            return Err(AgentError::Closed);
        };
        if !channel.synced {
            let id = self.next_sync.fetch_add(1, Ordering::Relaxed);
            resync(channel, id).await?;
        }
        // Until the answer is read, the channel is out of step: a call abandoned at its
        // deadline leaves it so, and the next one resyncs.
        channel.synced = false;
        channel
            .writer
            .write_all(&protocol::command(command, arguments))
            .await
            .map_err(AgentError::Io)?;
        let mut line = Vec::new();
        loop {
            read_capped(&mut channel.reader, b'\n', &mut line).await?;
            match protocol::classify(trim_newline(&line)) {
                Answer::Return(value) => {
                    channel.synced = true;
                    return Ok(value);
                }
                Answer::Error { class, desc } => {
                    channel.synced = true;
                    return Err(AgentError::Refused {
                        command: command.to_owned(),
                        class,
                        desc,
                    });
                }
                Answer::Garbage => {
                    tracing::debug!(
                        command,
                        bytes = line.len(),
                        "ignoring garbage from the guest agent"
                    );
                }
            }
        }
    }
}

/// Sends 0xFF and `guest-sync-delimited` with `id`, then drops everything up to the agent's
/// 0xFF and every line that is not the answer with `id`.
async fn resync(channel: &mut Channel, id: u64) -> Result<(), AgentError> {
    channel
        .writer
        .write_all(&protocol::sync(id))
        .await
        .map_err(AgentError::Io)?;
    let mut buffer = Vec::new();
    loop {
        loop {
            read_capped(&mut channel.reader, protocol::SYNC_BYTE, &mut buffer).await?;
            if buffer.last() == Some(&protocol::SYNC_BYTE) {
                break;
            }
        }
        read_capped(&mut channel.reader, b'\n', &mut buffer).await?;
        if protocol::is_sync_answer(trim_newline(&buffer), id) {
            channel.synced = true;
            return Ok(());
        }
    }
}

/// Reads up to and including `delimiter`, at most [`MAX_LINE`] bytes (a longer run comes back
/// cut, without its delimiter: garbage to the caller). End of stream is [`AgentError::Closed`].
async fn read_capped(
    reader: &mut BufReader<OwnedReadHalf>,
    delimiter: u8,
    buffer: &mut Vec<u8>,
) -> Result<(), AgentError> {
    buffer.clear();
    let read = (&mut *reader)
        .take(MAX_LINE)
        .read_until(delimiter, buffer)
        .await
        .map_err(AgentError::Io)?;
    if read == 0 {
        return Err(AgentError::Closed);
    }
    Ok(())
}

fn trim_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

#[cfg(test)]
mod tests;
