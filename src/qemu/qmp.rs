//! A small QMP client: JSON lines over qemu's unix socket.
//!
//! One reader task routes replies to their command by `id` and logs events; commands may be
//! issued from anywhere through a shared [`Qmp`] handle. (The `qapi` crate is stale and
//! rejects events it does not know, hence our own.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
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

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A connected, negotiated QMP session.
#[derive(Debug, Clone)]
pub struct Qmp {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and leaves negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = lines
            .next_line()
            .await
            .map_err(QmpError::Io)?
            .ok_or(QmpError::Closed)?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|_| QmpError::Protocol(greeting.clone()))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        let pending: Pending = Arc::default();
        tokio::spawn(read_replies(lines, Arc::clone(&pending)));
        let qmp = Self {
            writer: Arc::new(Mutex::new(write)),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            message["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .lock()
            .await
            .write_all(line.as_bytes())
            .await
            .map_err(QmpError::Io)?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(reply)) => reply.map_err(|e| match e {
                QmpError::Refused { class, desc, .. } => QmpError::Refused {
                    command: command.to_owned(),
                    class,
                    desc,
                },
                other => other,
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => Err(QmpError::Timeout(command.to_owned())),
        }
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Asks qemu to exit now (the guest gets no say).
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.execute("quit", None).await.map(drop)
    }

    pub async fn set_vnc_password(&self, password: &str) -> Result<(), QmpError> {
        self.execute(
            "set_password",
            Some(json!({ "protocol": "vnc", "password": password })),
        )
        .await
        .map(drop)
    }

    /// `running`, `paused`, `shutdown`, … as qemu reports it.
    pub async fn status(&self) -> Result<String, QmpError> {
        let reply = self.execute("query-status", None).await?;
        Ok(reply
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }
}

async fn read_replies(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(%line, "ignoring a QMP line that is not JSON");
            continue;
        };
        if let Some(event) = message.get("event").and_then(Value::as_str) {
            let data = message.get("data").cloned().unwrap_or(Value::Null);
            tracing::info!(target: "qemu", event, %data, "QMP event");
            continue;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            tracing::debug!(%line, "QMP reply without id");
            continue;
        };
        let reply = match (message.get("return"), message.get("error")) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(error)) => Err(QmpError::Refused {
                command: String::new(),
                class: error
                    .get("class")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                desc: error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
            }),
            (None, None) => Err(QmpError::Protocol(line.clone())),
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply);
        }
    }
    // Wake every waiter: dropping the senders makes them see `Closed`.
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}
