//! Polling the guest agent, cheaply: one `guest-ping` every `AGENT_POLL_INTERVAL` (one
//! wakeup, one small line each way) while the guest has the agent's port open ([`Port`]);
//! nothing while it has not (a guest without an agent), and at once when it opens or closes. The rest (`guest-info`, `guest-get-osinfo`,
//! `guest-get-host-name`, `guest-network-get-interfaces`, `guest-get-fsinfo`,
//! `guest-get-users`) is fetched only when the agent (re)appears, then at each poll while no
//! interface but loopback has an address (a guest still coming up), then every
//! [`FACTS_REFRESH`]. The last answers are kept with their time, in a watch that `/status`,
//! readiness and the metrics read.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::guest::{self, GuestFacts};
use super::port::Port;
use super::ssh::{self, SshKeys};
use super::{Agent, AgentError, DEADLINE};
use crate::metrics;
use crate::qemu::qmp::Qmp;

/// How old the facts may grow while the agent answers before they are fetched again (a
/// guest's addresses and filesystems change rarely; their age is shown).
pub(crate) const FACTS_REFRESH: Duration = Duration::from_secs(60);

/// The agent as last seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AgentView {
    pub connected: bool,
    /// When `connected` last changed (or polling began).
    pub since: Option<SystemTime>,
    /// When the agent last answered.
    pub last_answer: Option<SystemTime>,
    /// Why the last poll failed.
    pub error: Option<String>,
    pub facts: Option<GuestFacts>,
    /// When `facts` were fetched.
    pub facts_at: Option<SystemTime>,
}

/// Starts polling `agent` every `interval` while the guest has its port open (qemu's `qmp`
/// says when); the task lives as long as the returned receiver.
pub(crate) fn spawn(
    agent: Arc<Agent>,
    qmp: Qmp,
    interval: Duration,
    ssh: Option<SshKeys>,
) -> watch::Receiver<AgentView> {
    let (tx, rx) = watch::channel(AgentView {
        since: Some(SystemTime::now()),
        ..AgentView::default()
    });
    metrics::GUEST.agent_up.set(0);
    tokio::spawn(async move {
        let mut port = Port::watch(qmp).await;
        let mut keys = KeysPushed::default();
        loop {
            let view = tx.borrow().clone();
            let next = if port.is_open() {
                poll_once(&agent, view).await
            } else {
                port_closed(view)
            };
            if let Some(ssh) = &ssh {
                keys.follow(&agent, ssh, next.connected).await;
            }
            let _ = tx.send_if_modified(|current| {
                let changed = *current != next;
                *current = next;
                changed
            });
            if tx.is_closed() {
                return;
            }
            if port.is_open() {
                tokio::select! {
                    () = crate::timer::sleep(interval) => {}
                    _ = port.changed() => {}
                }
            } else {
                port.changed().await;
            }
        }
    });
    rx
}

/// The keys last added to the guest, and the last failure (logged once, not at every poll).
#[derive(Debug, Default)]
struct KeysPushed {
    keys: Option<Vec<String>>,
    failure: Option<String>,
}

impl KeysPushed {
    /// Adds the keys when the agent (re)appeared or they changed.
    async fn follow(&mut self, agent: &Agent, ssh: &SshKeys, connected: bool) {
        if !connected {
            // A restarted guest or agent gets them again.
            self.keys = None;
            return;
        }
        let keys = match ssh::read_keys(&ssh.path) {
            Ok(keys) => keys,
            Err(e) => {
                return self.failed(format!(
                    "cannot read SSH_AUTHORIZED_KEYS {}: {e}",
                    ssh.path.display()
                ))
            }
        };
        if self.keys.as_ref() == Some(&keys) || keys.is_empty() {
            return;
        }
        match ssh::push(agent, ssh.user.as_deref(), &keys).await {
            Ok(user) => {
                tracing::info!(user, keys = keys.len(), "SSH keys added to the guest");
                self.keys = Some(keys);
                self.failure = None;
            }
            Err(e) => self.failed(format!("could not add SSH keys to the guest: {e}")),
        }
    }

    fn failed(&mut self, why: String) {
        if self.failure.as_ref() != Some(&why) {
            tracing::warn!("{why}");
            self.failure = Some(why);
        }
    }
}

/// One poll: a ping, and the facts when due. Pure in its decisions but for the calls.
async fn poll_once(agent: &Agent, mut view: AgentView) -> AgentView {
    let now = SystemTime::now();
    match agent.ping().await {
        Ok(()) => {
            if !view.connected {
                tracing::info!("the guest agent answers");
                view.connected = true;
                view.since = Some(now);
            }
            view.last_answer = Some(now);
            view.error = None;
            let due = match (&view.facts, view.facts_at) {
                // A guest still coming up (no address yet): asked again at each poll.
                (Some(facts), _) if !has_address(facts) => true,
                (Some(_), Some(at)) => now
                    .duration_since(at)
                    .map_or(true, |age| age >= FACTS_REFRESH),
                _ => true,
            };
            if due {
                view.facts = Some(facts(agent).await);
                view.facts_at = Some(SystemTime::now());
            }
        }
        Err(e) => {
            if view.connected {
                tracing::warn!(error = %e, "the guest agent stopped answering");
                view.connected = false;
                view.since = Some(now);
            }
            view.error = Some(describe(&e));
        }
    }
    export(&view);
    view
}

/// The view while the guest has the agent's port closed: no agent can answer.
fn port_closed(mut view: AgentView) -> AgentView {
    if view.connected {
        tracing::warn!("the guest agent stopped answering (the guest closed its port)");
        view.connected = false;
        view.since = Some(SystemTime::now());
    }
    view.error = Some("no agent (the guest has not opened the agent's port)".to_owned());
    export(&view);
    view
}

/// Whether any interface but loopback has an address.
fn has_address(facts: &GuestFacts) -> bool {
    facts
        .interfaces
        .iter()
        .any(|i| i.name != "lo" && !i.addresses.is_empty())
}

fn describe(error: &AgentError) -> String {
    match error {
        // The socket exists but nothing in the guest opened the port.
        AgentError::Timeout { .. } => "no agent (no answer)".to_owned(),
        other => format!("no agent ({other})"),
    }
}

/// Asks everything at once (each with its own deadline); a command an agent refuses or lacks
/// leaves its part empty.
async fn facts(agent: &Agent) -> GuestFacts {
    let ask = |command: &'static str| async move {
        match agent.execute(command, None, DEADLINE).await {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::debug!(command, error = %e, "guest agent");
                None
            }
        }
    };
    // One at a time: the channel carries one command at a time anyway.
    let info = ask("guest-info").await;
    let os = ask("guest-get-osinfo").await;
    let host = ask("guest-get-host-name").await;
    let interfaces = ask("guest-network-get-interfaces").await;
    let filesystems = ask("guest-get-fsinfo").await;
    let users = ask("guest-get-users").await;
    GuestFacts {
        agent_version: info.as_ref().and_then(guest::agent_version),
        os: os.as_ref().map(guest::os),
        hostname: host.as_ref().and_then(guest::hostname),
        interfaces: interfaces
            .as_ref()
            .map(guest::interfaces)
            .unwrap_or_default(),
        filesystems: filesystems
            .as_ref()
            .map(guest::filesystems)
            .unwrap_or_default(),
        users: users.as_ref().map(guest::users).unwrap_or_default(),
    }
}

/// The metrics of `view`: the facts stay exported while the agent is away (they are the
/// last known), `agent_up` says whether they are current.
fn export(view: &AgentView) {
    metrics::GUEST.agent_up.set(i64::from(view.connected));
    let Some(facts) = &view.facts else {
        return;
    };
    let filesystems: Vec<_> = facts
        .filesystems
        .iter()
        .map(|fs| (fs.mountpoint.clone(), fs.used_bytes, fs.total_bytes))
        .collect();
    metrics::GUEST.filesystems(&filesystems);
    metrics::GUEST.info(facts.os.as_ref().map(|os| {
        let text = |value: &Option<String>| value.clone().unwrap_or_default();
        [text(&os.name), text(&os.version), text(&os.kernel)]
    }));
}
