//! The control socket `RUNTIME_DIR/control.sock` (mode 0600: root in the pod, i.e. whoever
//! may `kubectl exec`), through which `kvm-manager freeze` and `kvm-manager thaw` reach the
//! running `kvm-manager run`. One request line (`freeze` or `thaw`), one JSON answer line
//! (the same body as `POST /freeze` and `/thaw`).

use std::io::{BufRead as _, BufReader as StdBufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::freeze::{Done, Freezer, DEADLINE};
use super::AgentError;

/// How long a client may take to send its line.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("could not open the control socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "could not reach kvm-manager's control socket {} (is `kvm-manager run` running in \
         this pod, with the same RUNTIME_DIR?)",
        path.display()
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from kvm-manager on its control socket")]
    NoAnswer(#[source] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Freeze,
    Thaw,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Freeze => "freeze",
            Action::Thaw => "thaw",
        }
    }
}

/// `RUNTIME_DIR/control.sock`.
pub(crate) fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("control.sock")
}

/// The answer body of a freeze or thaw (here and over HTTP).
pub(crate) fn answer(result: &Result<Done, AgentError>) -> Value {
    match result {
        Ok(done) => json!({
            "frozen": done.frozen.since.is_some(),
            "since": done.frozen.since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "filesystems": done.filesystems,
        }),
        Err(e) => json!({ "error": crate::logging::render_chain(e) }),
    }
}

/// Runs `action` on `freezer`, in a task of its own: a caller that gives up (an HTTP request
/// past its timeout, a client that hangs up) never cuts a freeze short between the guest's
/// answer and the auto-thaw being armed.
pub(crate) async fn act(freezer: &Arc<Freezer>, action: Action) -> Result<Done, AgentError> {
    let freezer = Arc::clone(freezer);
    let task = tokio::spawn(async move {
        match action {
            Action::Freeze => freezer.freeze().await,
            Action::Thaw => freezer.thaw().await,
        }
    });
    task.await.unwrap_or(Err(AgentError::Closed))
}

/// Listens on `path` (replacing a stale socket) and serves in a task.
pub(crate) fn serve(path: &Path, freezer: Arc<Freezer>) -> Result<(), ControlError> {
    let bind = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = crate::private_socket::bind(path).map_err(bind)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let freezer = Arc::clone(&freezer);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let read = tokio::time::timeout(
                    REQUEST_WAIT,
                    BufReader::new(read.take(64)).read_line(&mut line),
                )
                .await;
                let body = match (read, line.trim()) {
                    (Ok(Ok(_)), "freeze") => answer(&act(&freezer, Action::Freeze).await),
                    (Ok(Ok(_)), "thaw") => answer(&act(&freezer, Action::Thaw).await),
                    _ => json!({ "error": "unknown request: send `freeze` or `thaw`" }),
                };
                let _ = write.write_all(format!("{body}\n").as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// The client side (`kvm-manager freeze|thaw`): asks and returns the answer, or the refusal
/// as an error.
pub(crate) fn request(path: &Path, action: Action) -> Result<Value, ControlError> {
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    // The agent's deadline, plus slack.
    let wait = DEADLINE + Duration::from_secs(5);
    stream
        .set_read_timeout(Some(wait))
        .and_then(|()| stream.write_all(format!("{}\n", action.word()).as_bytes()))
        .map_err(ControlError::NoAnswer)?;
    let mut line = String::new();
    StdBufReader::new(stream)
        .read_line(&mut line)
        .map_err(ControlError::NoAnswer)?;
    let answer: Value = serde_json::from_str(&line).map_err(|_| {
        ControlError::NoAnswer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a JSON line",
        ))
    })?;
    match answer.get("error").and_then(Value::as_str) {
        Some(error) => Err(ControlError::Refused(error.to_owned())),
        None => Ok(answer),
    }
}
