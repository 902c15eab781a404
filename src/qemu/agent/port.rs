//! Whether the guest has the agent's port open, as qemu sees it: `query-chardev`'s
//! `frontend-open` for our chardev at start, then `VSERPORT_CHANGE` events. No agent can
//! answer while the port is closed, so the poll does not ask then: a guest without an agent
//! costs no wakeup, and an agent that exits (its port closes) is seen at once.

use serde_json::Value;
use tokio::sync::broadcast;

use crate::qemu::qmp::{Qmp, QmpEvent};

/// The agent channel's chardev (`-chardev socket,id=…`).
pub(crate) const CHARDEV: &str = "agent0";
/// The agent port's device id (`-device virtserialport,id=…`): qemu sends `VSERPORT_CHANGE`
/// only for a port with an id.
pub(crate) const PORT_ID: &str = "agentport0";

/// The open state of our port in a `VSERPORT_CHANGE` event; `None` for any other event.
pub(crate) fn from_event(name: &str, data: &Value) -> Option<bool> {
    if name != "VSERPORT_CHANGE" || data.get("id")?.as_str()? != PORT_ID {
        return None;
    }
    data.get("open")?.as_bool()
}

/// `frontend-open` of our chardev in the answer to `query-chardev`.
pub(crate) fn from_chardevs(answer: &Value) -> Option<bool> {
    answer
        .as_array()?
        .iter()
        .find(|dev| dev.get("label").and_then(Value::as_str) == Some(CHARDEV))?
        .get("frontend-open")?
        .as_bool()
}

/// The port's state, followed from qemu's events.
pub(crate) struct Port {
    qmp: Qmp,
    events: broadcast::Receiver<QmpEvent>,
    open: bool,
}

impl Port {
    /// Subscribes, then asks qemu where the port stands (no event is missed in between).
    pub(crate) async fn watch(qmp: Qmp) -> Self {
        let events = qmp.events();
        let mut port = Self {
            qmp,
            events,
            open: true,
        };
        port.resync().await;
        port
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// What qemu says now; when it cannot say, the port counts as open (the poll then asks the
    /// agent, as it would without this watch).
    async fn resync(&mut self) {
        self.open = match self.qmp.execute("query-chardev", None).await {
            Ok(answer) => from_chardevs(&answer).unwrap_or(true),
            Err(e) => {
                tracing::debug!(error = %e, "query-chardev; the agent's port counts as open");
                true
            }
        };
    }

    /// Waits until the guest opens or closes the port and returns whether it is open now.
    /// Once qemu's QMP connection is gone (qemu is ending), it waits forever.
    pub(crate) async fn changed(&mut self) -> bool {
        loop {
            match self.events.recv().await {
                Ok(event) => {
                    if let Some(open) = from_event(&event.name, &event.data) {
                        if open != self.open {
                            self.open = open;
                            return open;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let was = self.open;
                    self.resync().await;
                    if self.open != was {
                        return self.open;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_our_ports_events_count() {
        let ours = json!({ "id": PORT_ID, "open": true });
        assert_eq!(from_event("VSERPORT_CHANGE", &ours), Some(true));
        assert_eq!(
            from_event("VSERPORT_CHANGE", &json!({ "id": PORT_ID, "open": false })),
            Some(false)
        );
        assert_eq!(
            from_event("VSERPORT_CHANGE", &json!({ "id": "other", "open": true })),
            None
        );
        assert_eq!(from_event("STOP", &ours), None);
        assert_eq!(
            from_event("VSERPORT_CHANGE", &json!({ "id": PORT_ID })),
            None
        );
    }

    #[test]
    fn the_chardev_list_says_whether_the_guest_opened_the_port() {
        // As qemu 7.2 answers `query-chardev`.
        let answer = json!([
            { "frontend-open": true, "filename": "stdio", "label": "console0" },
            { "frontend-open": false, "filename": "unix:/run/kvm-manager/agent.sock,server=on", "label": CHARDEV },
        ]);
        assert_eq!(from_chardevs(&answer), Some(false));
        let mut opened = answer.clone();
        opened[1]["frontend-open"] = json!(true);
        assert_eq!(from_chardevs(&opened), Some(true));
        assert_eq!(from_chardevs(&json!([])), None);
        assert_eq!(from_chardevs(&json!({})), None);
    }
}
