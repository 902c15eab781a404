//! Freezing the guest's filesystems for a backup (`guest-fsfreeze-freeze`), and making sure
//! they thaw: on request, by themselves after `FREEZE_TIMEOUT` (a backup tool that died
//! must not leave the guest frozen: a freeze is an outage), and on SIGTERM.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::{Agent, AgentError};

/// Deadline of a freeze or thaw: the guest syncs its filesystems first, which takes a while,
/// but the caller (an HTTP request has 10 s in all) must hear back.
pub(crate) const DEADLINE: Duration = Duration::from_secs(8);

/// Whether the guest is frozen, and since when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Frozen {
    pub since: Option<SystemTime>,
}

/// What a freeze or thaw did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done {
    /// Filesystems the agent froze or thawed (0 when it already was so).
    pub filesystems: u64,
    pub frozen: Frozen,
}

/// What is left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[derive(Debug)]
pub(crate) struct Freezer {
    agent: Arc<Agent>,
    timeout: Duration,
    /// Serialises freezes and thaws; counts them, so an auto-thaw knows whether its freeze is
    /// still the current one.
    generation: Mutex<u64>,
    state: watch::Sender<Frozen>,
}

impl Freezer {
    pub(crate) fn new(agent: Arc<Agent>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            agent,
            timeout,
            generation: Mutex::new(0),
            state: watch::channel(Frozen::default()).0,
        })
    }

    pub(crate) fn frozen(&self) -> Frozen {
        *self.state.borrow()
    }

    /// Freezes the guest's filesystems; they thaw by themselves after `FREEZE_TIMEOUT`.
    pub(crate) async fn freeze(self: &Arc<Self>) -> Result<Done, AgentError> {
        let deadline = Instant::now() + DEADLINE;
        let mut generation = self.turn("guest-fsfreeze-freeze", deadline).await?;
        if self.frozen().since.is_some() {
            return Ok(Done {
                filesystems: 0,
                frozen: self.frozen(),
            });
        }
        let count = self
            .agent
            .execute("guest-fsfreeze-freeze", None, left(deadline))
            .await;
        let count = match count {
            Ok(count) => count.as_u64().unwrap_or(0),
            Err(e) => {
                // A freeze that timed out may have happened in the guest: thaw to be sure,
                // in the background (the caller hears of the failure now).
                if let AgentError::Timeout { .. } = e {
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = this.thaw().await;
                    });
                }
                return Err(e);
            }
        };
        *generation += 1;
        let frozen = Frozen {
            since: Some(SystemTime::now()),
        };
        self.state.send_replace(frozen);
        tracing::warn!(filesystems = count, thaw_after = %humantime::format_duration(self.timeout), "guest filesystems frozen");
        let (this, mine) = (Arc::clone(self), *generation);
        tokio::spawn(async move {
            tokio::time::sleep(this.timeout).await;
            if *this.generation.lock().await == mine && this.frozen().since.is_some() {
                tracing::warn!("nobody thawed the guest within FREEZE_TIMEOUT; thawing it");
                if let Err(e) = this.thaw().await {
                    tracing::error!(error = %e, "could not thaw the guest");
                }
            }
        });
        Ok(Done {
            filesystems: count,
            frozen,
        })
    }

    /// Thaws the guest's filesystems (asks the agent even when we think they are thawed: it
    /// is harmless, and the guest may know better).
    pub(crate) async fn thaw(&self) -> Result<Done, AgentError> {
        let deadline = Instant::now() + DEADLINE;
        let mut generation = self.turn("guest-fsfreeze-thaw", deadline).await?;
        let count = self
            .agent
            .execute("guest-fsfreeze-thaw", None, left(deadline))
            .await?
            .as_u64()
            .unwrap_or(0);
        *generation += 1;
        if self.frozen().since.is_some() {
            tracing::info!(filesystems = count, "guest filesystems thawed");
        }
        self.state.send_replace(Frozen::default());
        Ok(Done {
            filesystems: count,
            frozen: Frozen::default(),
        })
    }

    /// Waits for the freeze or thaw before this one, within `deadline`: the whole call keeps
    /// one deadline, however many callers queue.
    async fn turn(
        &self,
        command: &str,
        deadline: Instant,
    ) -> Result<tokio::sync::MutexGuard<'_, u64>, AgentError> {
        tokio::time::timeout_at(deadline, self.generation.lock())
            .await
            .map_err(|_| AgentError::Timeout {
                command: command.to_owned(),
                after: DEADLINE,
            })
    }

    /// On SIGTERM: thaws if frozen, so the guest can shut down cleanly.
    pub(crate) async fn thaw_if_frozen(&self) {
        if self.frozen().since.is_some() {
            if let Err(e) = self.thaw().await {
                tracing::warn!(error = %e, "could not thaw the guest before shutdown");
            }
        }
    }
}
