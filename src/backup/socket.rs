//! `RUNTIME_DIR/backup.sock` (mode 0600: root in the pod, whoever may `kubectl exec`): how
//! `kvm-manager backup` reaches the running `kvm-manager run`, which holds the only QMP
//! connection. One request line (JSON `{"to": DIR, "mode": "full|incremental|auto"}`), one
//! answer line (the backup's summary, or `{"error": …}`). A client that hangs up before the
//! answer (Ctrl-C, a killed `kubectl exec`) cancels its backup.

use std::io::{BufRead as _, BufReader as StdBufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::job::Backups;
use super::plan::Want;
use super::BackupError;

/// How long a client may take to send its line.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// `RUNTIME_DIR/backup.sock`.
pub(crate) fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("backup.sock")
}

/// The mode word of a request.
pub(crate) fn mode_word(want: Want) -> &'static str {
    match want {
        Want::Full => "full",
        Want::Incremental => "incremental",
        Want::Auto { .. } => "auto",
    }
}

/// A request: the directory, what to take, the rate limit (bytes/s).
type Request = (PathBuf, Want, Option<u64>);

fn parse(line: &str) -> Option<Request> {
    let request: Value = serde_json::from_str(line).ok()?;
    let to = PathBuf::from(request.get("to")?.as_str()?);
    let want = match request.get("mode").and_then(Value::as_str) {
        Some("full") => Want::Full,
        Some("incremental") => Want::Incremental,
        Some("auto") | None => Want::Auto { full_every: None },
        Some(_) => return None,
    };
    let rate = request.get("rate_limit").and_then(Value::as_u64);
    to.is_absolute().then_some((to, want, rate))
}

/// The answer body of a backup (here, over HTTP, in the log).
pub(crate) fn answer(result: &Result<super::job::Outcome, BackupError>) -> Value {
    match result {
        Ok(outcome) => outcome.answer(),
        Err(e) => json!({ "error": crate::logging::render_chain(e) }),
    }
}

/// Listens on `path` (replacing a stale socket) and serves in a task.
pub(crate) fn serve(path: &Path, backups: Arc<Backups>) -> Result<(), BackupError> {
    let bind = |source| BackupError::Io {
        what: "open the backup socket",
        path: path.to_owned(),
        source,
    };
    let listener = crate::private_socket::bind(path).map_err(bind)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let backups = Arc::clone(&backups);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let mut line = String::new();
                let got = tokio::time::timeout(
                    REQUEST_WAIT,
                    (&mut reader).take(4096).read_line(&mut line),
                )
                .await;
                let body = match (got, parse(line.trim())) {
                    (Ok(Ok(_)), Some((dir, want, rate))) => {
                        // The client sends nothing more: end of file means it is gone.
                        let gone = async move {
                            let mut byte = [0u8; 1];
                            while let Ok(1..) = reader.read(&mut byte).await {}
                        };
                        answer(&backups.run(&dir, want, rate, gone).await)
                    }
                    _ => {
                        json!({ "error": "unknown request: send {\"to\": ABSOLUTE_DIR, \"mode\": \"full|incremental|auto\"}" })
                    }
                };
                let _ = write.write_all(format!("{body}\n").as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// The client side (`kvm-manager backup`): asks, waits as long as the backup takes, and
/// returns the answer, or the refusal as an error.
pub(crate) fn request(
    path: &Path,
    dir: &Path,
    want: Want,
    rate_limit: Option<u64>,
) -> Result<Value, BackupError> {
    let connect = |source| BackupError::Connect {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(connect)?;
    let line = json!({ "to": dir, "mode": mode_word(want), "rate_limit": rate_limit });
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(connect)?;
    let mut answer = String::new();
    StdBufReader::new(stream)
        .read_line(&mut answer)
        .map_err(connect)?;
    let answer: Value = serde_json::from_str(&answer)
        .map_err(|_| BackupError::Refused("kvm-manager run sent no answer".to_owned()))?;
    match answer.get("error").and_then(Value::as_str) {
        Some(error) => Err(BackupError::Refused(error.to_owned())),
        None => Ok(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_an_absolute_directory_and_a_known_mode() {
        assert_eq!(
            parse(r#"{"to": "/backup", "mode": "full"}"#),
            Some((PathBuf::from("/backup"), Want::Full, None))
        );
        assert_eq!(
            parse(r#"{"to": "/backup", "rate_limit": 1048576}"#),
            Some((
                PathBuf::from("/backup"),
                Want::Auto { full_every: None },
                Some(1_048_576)
            ))
        );
        assert_eq!(parse(r#"{"to": "backup", "mode": "full"}"#), None);
        assert_eq!(parse(r#"{"to": "/b", "mode": "sideways"}"#), None);
        assert_eq!(parse("freeze"), None);
    }
}
