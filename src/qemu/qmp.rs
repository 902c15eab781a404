//! A small QMP client: JSON lines over qemu's unix socket.
//!
//! One reader task routes replies to their command by `id` and passes events to whoever
//! subscribed ([`Qmp::events`]); commands may be issued from anywhere through a shared [`Qmp`]
//! handle, each with a deadline: a stuck qemu must never block PID 1. (The `qapi` crate is
//! stale and rejects events it does not know, hence our own.)

use crate::locked::Locked as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, Mutex};

/// How long qemu gets to answer a command (or to greet us).
const DEADLINE: Duration = Duration::from_secs(10);
/// Events kept for a subscriber that falls behind; it then sees `Lagged` and must ask qemu.
const EVENT_BACKLOG: usize = 256;

/// Events that [`crate::qemu::process::watch_pauses`] reports itself, with their meaning and at
/// the level they deserve; logged here only at debug level.
const REPORTED_ELSEWHERE: [&str; 3] = ["BLOCK_IO_ERROR", "STOP", "RESUME"];

#[derive(Debug, thiserror::Error)]
pub(crate) enum QmpError {
    #[error("could not connect to qemu's QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection failed")]
    Io(#[source] std::io::Error),
    #[error("qemu sent something that is not QMP: {0}")]
    Protocol(String),
    #[error("qemu refused {command}: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
    #[error("the QMP connection closed")]
    Closed,
    #[error("no QMP reply to {0} within 10s")]
    Timeout(String),
}

/// An asynchronous message from qemu.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QmpEvent {
    pub name: String,
    pub data: Value,
}

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A connected, negotiated QMP session.
#[derive(Debug, Clone)]
pub(crate) struct Qmp {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    /// The reader task owns the sender, so subscribers see `Closed` once qemu is gone.
    events: Weak<broadcast::Sender<QmpEvent>>,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and leaves negotiation mode.
    pub(crate) async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .map_err(|_| QmpError::Timeout("the greeting".to_owned()))?
            .map_err(QmpError::Io)?
            .ok_or(QmpError::Closed)?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|_| QmpError::Protocol(greeting.clone()))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        let pending: Pending = Arc::default();
        let events = Arc::new(broadcast::channel(EVENT_BACKLOG).0);
        let qmp = Self {
            writer: Arc::new(Mutex::new(write)),
            pending: Arc::clone(&pending),
            next_id: Arc::new(AtomicU64::new(1)),
            events: Arc::downgrade(&events),
        };
        tokio::spawn(read_replies(lines, pending, events));
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// qemu's events from now on, until its QMP connection closes.
    pub(crate) fn events(&self) -> broadcast::Receiver<QmpEvent> {
        match self.events.upgrade() {
            Some(sender) => sender.subscribe(),
            // Already closed: a receiver whose sender is gone says so at once.
            None => broadcast::channel(1).1,
        }
    }

    /// Runs `command` and returns its `return` value, or fails after [`DEADLINE`].
    pub(crate) async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let result = tokio::time::timeout(DEADLINE, self.exchange(command, arguments)).await;
        result.unwrap_or_else(|_| Err(QmpError::Timeout(command.to_owned())))
    }

    async fn exchange(&self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.locked().insert(id, tx);
        // Whether answered, failed or abandoned at the deadline, the waiter goes.
        let _waiter = Forget(self, id);
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .lock()
            .await
            .write_all(line.as_bytes())
            .await
            .map_err(QmpError::Io)?;
        match rx.await {
            Ok(reply) => reply.map_err(|e| match e {
                QmpError::Refused { class, desc, .. } => QmpError::Refused {
                    command: command.to_owned(),
                    class,
                    desc,
                },
                other => other,
            }),
            Err(_) => Err(QmpError::Closed),
        }
    }

    fn forget(&self, id: u64) {
        self.pending.locked().remove(&id);
    }

    /// Presses the ACPI power button.
    pub(crate) async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Asks qemu to exit now (the guest gets no say).
    pub(crate) async fn quit(&self) -> Result<(), QmpError> {
        self.execute("quit", None).await.map(drop)
    }

    pub(crate) async fn set_vnc_password(&self, password: &str) -> Result<(), QmpError> {
        self.execute(
            "set_password",
            Some(json!({ "protocol": "vnc", "password": password })),
        )
        .await
        .map(drop)
    }

    /// Continues a paused VM (qemu first retries the disk requests it held back).
    pub(crate) async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// The drives whose I/O status is `nospace` (qemu stopped on ENOSPC writing them).
    pub(crate) async fn drives_out_of_space(&self) -> Result<Vec<String>, QmpError> {
        let reply = self.execute("query-block", None).await?;
        Ok(reply
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|drive| drive.get("io-status").and_then(Value::as_str) == Some("nospace"))
            .filter_map(|drive| drive.get("device").and_then(Value::as_str))
            .map(str::to_owned)
            .collect())
    }

    /// `running`, `paused`, `shutdown`, … as qemu reports it.
    pub(crate) async fn status(&self) -> Result<String, QmpError> {
        let reply = self.execute("query-status", None).await?;
        Ok(reply
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }
}

// --- issue 22: backups (dirty bitmaps, block jobs) ---
/// A dirty bitmap on a block node, as `query-named-block-nodes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirtyBitmap {
    pub name: String,
    pub recording: bool,
    pub busy: bool,
    pub inconsistent: bool,
}

/// A running block job, as `query-block-jobs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockJob {
    pub id: String,
    pub offset: u64,
    pub len: u64,
}

impl Qmp {
    /// The dirty bitmaps of the node named `node`.
    pub(crate) async fn dirty_bitmaps(&self, node: &str) -> Result<Vec<DirtyBitmap>, QmpError> {
        let reply = self
            .execute("query-named-block-nodes", Some(json!({ "flat": true })))
            .await?;
        let flag = |b: &Value, key: &str| b.get(key).and_then(Value::as_bool).unwrap_or(false);
        Ok(reply
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
            .and_then(|n| n.get("dirty-bitmaps"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|b| DirtyBitmap {
                name: b
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                recording: flag(b, "recording"),
                busy: flag(b, "busy"),
                inconsistent: flag(b, "inconsistent"),
            })
            .collect())
    }

    /// The size the guest sees of the node named `node`.
    pub(crate) async fn virtual_size(&self, node: &str) -> Result<u64, QmpError> {
        let reply = self
            .execute("query-named-block-nodes", Some(json!({ "flat": true })))
            .await?;
        reply
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
            .and_then(|n| n.pointer("/image/virtual-size"))
            .and_then(Value::as_u64)
            .ok_or_else(|| QmpError::Protocol(format!("no block node {node}")))
    }

    /// Runs `actions` (`[{"type": …, "data": …}]`) atomically: all happen, or none.
    pub(crate) async fn transaction(&self, actions: Value) -> Result<(), QmpError> {
        self.execute("transaction", Some(json!({ "actions": actions })))
            .await
            .map(drop)
    }

    pub(crate) async fn blockdev_add(&self, node: Value) -> Result<(), QmpError> {
        self.execute("blockdev-add", Some(node)).await.map(drop)
    }

    pub(crate) async fn blockdev_del(&self, node: &str) -> Result<(), QmpError> {
        self.execute("blockdev-del", Some(json!({ "node-name": node })))
            .await
            .map(drop)
    }

    pub(crate) async fn remove_dirty_bitmap(&self, node: &str, name: &str) -> Result<(), QmpError> {
        self.execute(
            "block-dirty-bitmap-remove",
            Some(json!({ "node": node, "name": name })),
        )
        .await
        .map(drop)
    }

    /// Cancels the block job `id` (it ends with `BLOCK_JOB_CANCELLED`).
    pub(crate) async fn cancel_block_job(&self, id: &str) -> Result<(), QmpError> {
        self.execute(
            "block-job-cancel",
            Some(json!({ "device": id, "force": true })),
        )
        .await
        .map(drop)
    }

    /// Lets the pending job `id` (started with `auto-finalize: false`) complete.
    pub(crate) async fn finalize_job(&self, id: &str) -> Result<(), QmpError> {
        self.execute("job-finalize", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    pub(crate) async fn block_jobs(&self) -> Result<Vec<BlockJob>, QmpError> {
        let reply = self.execute("query-block-jobs", None).await?;
        let number = |j: &Value, key: &str| j.get(key).and_then(Value::as_u64).unwrap_or(0);
        Ok(reply
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|j| BlockJob {
                id: j
                    .get("device")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                offset: number(j, "offset"),
                len: number(j, "len"),
            })
            .collect())
    }
}
// --- end issue 22 ---

/// Removes a waiter whose caller gave up (its deadline passed), so a late reply is dropped.
struct Forget<'a>(&'a Qmp, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// One line from qemu, classified.
#[derive(Debug)]
enum Line {
    /// An asynchronous event.
    Event(QmpEvent),
    /// The answer to the command with this `id`: its `return` value or its `error`.
    Reply {
        id: u64,
        reply: Result<Value, QmpError>,
    },
    /// A reply without our `id` (nobody waits for it).
    NoId,
    NotJson,
}

fn classify(line: &str) -> Line {
    let Ok(message) = serde_json::from_str::<Value>(line) else {
        return Line::NotJson;
    };
    if let Some(event) = message.get("event").and_then(Value::as_str) {
        return Line::Event(QmpEvent {
            name: event.to_owned(),
            data: message.get("data").cloned().unwrap_or(Value::Null),
        });
    }
    let Some(id) = message.get("id").and_then(Value::as_u64) else {
        return Line::NoId;
    };
    let text = |error: &Value, key: &str| {
        error
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let reply = match (message.get("return"), message.get("error")) {
        (Some(value), _) => Ok(value.clone()),
        (None, Some(error)) => Err(QmpError::Refused {
            command: String::new(),
            class: text(error, "class"),
            desc: text(error, "desc"),
        }),
        (None, None) => Err(QmpError::Protocol(line.to_owned())),
    };
    Line::Reply { id, reply }
}

async fn read_replies(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: Arc<broadcast::Sender<QmpEvent>>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        match classify(&line) {
            Line::NotJson => tracing::warn!(%line, "ignoring a QMP line that is not JSON"),
            Line::NoId => tracing::debug!(%line, "QMP reply without id"),
            Line::Event(event) => {
                if REPORTED_ELSEWHERE.contains(&event.name.as_str()) {
                    tracing::debug!(target: "qemu", event = event.name, data = %event.data, "QMP event");
                } else {
                    tracing::info!(target: "qemu", event = event.name, data = %event.data, "QMP event");
                }
                // No subscriber is no error.
                let _ = events.send(event);
            }
            Line::Reply { id, reply } => {
                let waiter = pending.locked().remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            }
        }
    }
    // Wake every waiter: dropping the senders makes them see `Closed`.
    pending.locked().clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_name_and_data() {
        let line = r#"{"event": "STOP", "data": {"reason": "io-error"}, "timestamp": {}}"#;
        let Line::Event(event) = classify(line) else {
            panic!("an event: {line}");
        };
        assert_eq!(event.name, "STOP");
        assert_eq!(event.data, json!({ "reason": "io-error" }));
        let Line::Event(event) = classify(r#"{"event": "RESUME"}"#) else {
            panic!("an event without data");
        };
        assert_eq!(event.data, Value::Null);
    }

    #[test]
    fn replies_are_routed_by_id_with_their_return_or_error() {
        match classify(r#"{"return": {"status": "running"}, "id": 7}"#) {
            Line::Reply {
                id: 7,
                reply: Ok(value),
            } => {
                assert_eq!(value, json!({ "status": "running" }));
            }
            other => panic!("a reply to 7: {other:?}"),
        }
        match classify(r#"{"error": {"class": "GenericError", "desc": "no"}, "id": 8}"#) {
            Line::Reply {
                id: 8,
                reply: Err(QmpError::Refused { class, desc, .. }),
            } => assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "no")),
            other => panic!("a refusal of 8: {other:?}"),
        }
        match classify(r#"{"error": {}, "id": 9}"#) {
            Line::Reply {
                reply: Err(QmpError::Refused { class, desc, .. }),
                ..
            } => assert_eq!((class.as_str(), desc.as_str()), ("?", "?")),
            other => panic!("a refusal without words: {other:?}"),
        }
        assert!(matches!(
            classify(r#"{"id": 10}"#),
            Line::Reply {
                id: 10,
                reply: Err(QmpError::Protocol(_))
            }
        ));
    }

    #[test]
    fn lines_nobody_waits_for_are_told_apart() {
        assert!(matches!(classify(r#"{"return": {}}"#), Line::NoId));
        assert!(matches!(
            classify(r#"{"return": {}, "id": "x"}"#),
            Line::NoId
        ));
        assert!(matches!(classify("not json"), Line::NotJson));
    }
}
