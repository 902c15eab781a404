//! The client against fake agents on a real unix socket: well-behaved, noisy, mute, slow and
//! restarting ones.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::*;

/// How a fake agent behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Peer {
    /// Answers every command at once.
    Good,
    /// Writes random bytes (newlines and 0xFF among them) on connecting, then behaves.
    Garbage,
    /// Reads everything and never answers.
    Mute,
    /// On the first connection, answers the first ordinary command late (after the caller's
    /// deadline) with a wrong value; behaves otherwise.
    SlowFirst,
    /// Closes the first connection after reading its first command (an agent restarting
    /// mid-call), then behaves on the next.
    RestartFirst,
}

fn socket(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    (dir, path)
}

/// Serves `peer` on `path`; counts the connections it accepted.
fn fake_agent(path: &Path, peer: Peer) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(path).expect("bind");
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, peer, n));
        }
    });
    connections
}

async fn serve(stream: UnixStream, peer: Peer, connection: usize) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if peer == Peer::Garbage {
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .chain(*b"\n{\"return\": 12345}\n\xff{\"return\": {\"stale\": 1}}\n")
            .collect();
        let _ = write.write_all(&noise).await;
    }
    let mut ordinary = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if peer == Peer::Mute {
            continue;
        }
        // The client's 0xFF comes first on the line of its resync.
        let text = line.strip_prefix(&[protocol::SYNC_BYTE]).unwrap_or(&line);
        let Ok(message) = serde_json::from_slice::<Value>(text) else {
            continue;
        };
        let answer = match message["execute"].as_str() {
            Some("guest-sync-delimited") => {
                let mut out = vec![protocol::SYNC_BYTE];
                out.extend(
                    json!({ "return": message["arguments"]["id"] })
                        .to_string()
                        .bytes(),
                );
                out.push(b'\n');
                out
            }
            Some(command) => {
                ordinary += 1;
                if peer == Peer::RestartFirst && connection == 0 {
                    return;
                }
                if peer == Peer::SlowFirst && connection == 0 && ordinary == 1 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let _ = write.write_all(b"{\"return\": \"stale\"}\n").await;
                    continue;
                }
                let value = match command {
                    "guest-info" => json!({ "version": "7.2.0" }),
                    "guest-fsfreeze-freeze" | "guest-fsfreeze-thaw" => json!(1),
                    "guest-fail" => {
                        let _ = write
                            .write_all(b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}}\n")
                            .await;
                        continue;
                    }
                    _ => json!({}),
                };
                format!("{}\n", json!({ "return": value })).into_bytes()
            }
            None => continue,
        };
        if write.write_all(&answer).await.is_err() {
            return;
        }
    }
}

const SHORT: Duration = Duration::from_millis(150);

#[tokio::test]
async fn a_good_agent_answers_each_call() {
    let (_dir, path) = socket("good.sock");
    fake_agent(&path, Peer::Good);
    let agent = Agent::new(path);
    agent.ping().await.expect("ping");
    let info = agent
        .execute("guest-info", None, DEADLINE)
        .await
        .expect("info");
    assert_eq!(info["version"], "7.2.0");
    match agent.execute("guest-fail", None, DEADLINE).await {
        Err(AgentError::Refused { command, class, .. }) => {
            assert_eq!(
                (command.as_str(), class.as_str()),
                ("guest-fail", "CommandNotFound")
            );
        }
        other => panic!("a refusal: {other:?}"),
    }
    // A refusal leaves the channel in step.
    agent.ping().await.expect("ping after a refusal");
}

#[tokio::test]
async fn garbage_on_the_channel_is_skipped_by_the_resync() {
    let (_dir, path) = socket("garbage.sock");
    fake_agent(&path, Peer::Garbage);
    let agent = Agent::new(path);
    let info = agent
        .execute("guest-info", None, DEADLINE)
        .await
        .expect("info through the noise");
    assert_eq!(info["version"], "7.2.0");
}

#[tokio::test]
async fn an_agent_that_never_answers_fails_each_call_at_its_deadline() {
    let (_dir, path) = socket("mute.sock");
    fake_agent(&path, Peer::Mute);
    let agent = Agent::new(path);
    for _ in 0..2 {
        match agent.execute("guest-ping", None, SHORT).await {
            Err(AgentError::Timeout { command, after }) => {
                assert_eq!((command.as_str(), after), ("guest-ping", SHORT));
            }
            other => panic!("a timeout: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_late_answer_is_never_taken_for_the_next_calls() {
    let (_dir, path) = socket("slow.sock");
    fake_agent(&path, Peer::SlowFirst);
    let agent = Agent::new(path);
    assert!(matches!(
        agent.execute("guest-info", None, SHORT).await,
        Err(AgentError::Timeout { .. })
    ));
    // The stale "stale" arrives while this call waits; the resync drops it.
    let info = agent
        .execute("guest-info", None, DEADLINE)
        .await
        .expect("info");
    assert_eq!(info["version"], "7.2.0");
}

#[tokio::test]
async fn an_agent_restarting_mid_call_fails_that_call_and_the_next_reconnects() {
    let (_dir, path) = socket("restart.sock");
    let connections = fake_agent(&path, Peer::RestartFirst);
    let agent = Agent::new(path);
    assert!(matches!(
        agent.execute("guest-info", None, DEADLINE).await,
        Err(AgentError::Closed | AgentError::Io(_))
    ));
    let info = agent
        .execute("guest-info", None, DEADLINE)
        .await
        .expect("info");
    assert_eq!(info["version"], "7.2.0");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_socket_is_a_connect_error_naming_it() {
    let (_dir, path) = socket("absent.sock");
    let agent = Agent::new(path.clone());
    match agent.ping().await {
        Err(e @ AgentError::Connect { .. }) => {
            assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        }
        other => panic!("a connect error: {other:?}"),
    }
}

#[tokio::test]
async fn a_freeze_is_reported_once_and_thaws_by_itself_when_nobody_thaws_it() {
    let (_dir, path) = socket("freeze.sock");
    fake_agent(&path, Peer::Good);
    let freezer = freeze::Freezer::new(Arc::new(Agent::new(path)), Duration::from_millis(200));
    let done = freezer.freeze().await.expect("freeze");
    assert_eq!(done.filesystems, 1);
    assert!(done.frozen.since.is_some());
    let again = freezer.freeze().await.expect("a second freeze");
    assert_eq!(
        again.filesystems, 0,
        "already frozen: the agent is not asked again"
    );
    assert_eq!(again.frozen, done.frozen);
    // FREEZE_TIMEOUT (200 ms here) passes with nobody thawing.
    for _ in 0..100 {
        if freezer.frozen().since.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        freezer.frozen(),
        freeze::Frozen::default(),
        "thawed by itself"
    );
}

#[tokio::test]
async fn a_thaw_before_the_timeout_disarms_the_auto_thaw_of_that_freeze() {
    let (_dir, path) = socket("thaw.sock");
    fake_agent(&path, Peer::Good);
    let freezer = freeze::Freezer::new(Arc::new(Agent::new(path)), Duration::from_secs(3600));
    freezer.freeze().await.expect("freeze");
    let thawed = freezer.thaw().await.expect("thaw");
    assert_eq!(thawed.frozen, freeze::Frozen::default());
    assert_eq!(freezer.frozen(), freeze::Frozen::default());
}

#[tokio::test]
async fn the_control_socket_is_private_and_answers_freeze_and_thaw() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, path) = socket("agent.sock");
    fake_agent(&path, Peer::Good);
    let freezer = freeze::Freezer::new(Arc::new(Agent::new(path)), Duration::from_secs(3600));
    let control_path = control::socket_path(dir.path());
    control::serve(&control_path, Arc::clone(&freezer)).expect("serve");
    let mode = std::fs::metadata(&control_path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ask = |action| {
        let path = control_path.clone();
        tokio::task::spawn_blocking(move || control::request(&path, action))
    };
    let frozen = ask(control::Action::Freeze)
        .await
        .expect("join")
        .expect("freeze");
    assert_eq!(frozen["frozen"], true, "{frozen}");
    assert!(freezer.frozen().since.is_some());
    let thawed = ask(control::Action::Thaw)
        .await
        .expect("join")
        .expect("thaw");
    assert_eq!(thawed["frozen"], false, "{thawed}");
}

#[tokio::test]
async fn a_freeze_the_agent_does_not_answer_is_an_error_and_nothing_is_frozen() {
    let (_dir, path) = socket("mute-freeze.sock");
    fake_agent(&path, Peer::Mute);
    let freezer = freeze::Freezer::new(Arc::new(Agent::new(path)), Duration::from_secs(3600));
    let result = control::act(&freezer, control::Action::Freeze).await;
    assert!(
        matches!(result, Err(AgentError::Timeout { .. })),
        "{result:?}"
    );
    assert_eq!(freezer.frozen(), freeze::Frozen::default());
    let answer = control::answer(&result);
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{answer}"
    );
}
