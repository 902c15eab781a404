//! `GET /status`: the VM and its guest as JSON (schema in the README, "GET /status"). Read
//! from what the supervisor and the agent poller already hold: the only live question is
//! qemu's state over QMP (2 s at most), never the guest agent, so a guest that does not
//! answer cannot slow this down.

use std::time::SystemTime;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::health::{GuestLink, VmStatus};
use super::{json_response, AppState};
use crate::qemu::agent::poll::AgentView;

/// Version of the document's shape; bumped when a field changes meaning or goes away.
const SCHEMA: u32 = 1;

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    })
}

fn age(t: Option<SystemTime>, now: SystemTime) -> Value {
    t.and_then(|t| now.duration_since(t).ok())
        .map_or(Value::Null, |d| json!(d.as_secs()))
}

/// The agent's part: connected or "no agent", and the guest as it last described itself.
fn agent(view: Option<&AgentView>, now: SystemTime) -> (Value, Value) {
    let Some(view) = view else {
        return (
            json!({ "connected": false, "state": "no agent", "since": null, "last_answer": null, "error": "qemu is not running" }),
            Value::Null,
        );
    };
    let agent = json!({
        "connected": view.connected,
        "state": if view.connected { "connected" } else { "no agent" },
        "since": time(view.since),
        "last_answer": time(view.last_answer),
        "error": view.error,
    });
    let guest = match &view.facts {
        None => Value::Null,
        Some(facts) => {
            let mut guest = serde_json::to_value(facts).unwrap_or(Value::Null);
            guest["fetched_at"] = time(view.facts_at);
            guest["age_seconds"] = age(view.facts_at, now);
            guest
        }
    };
    (agent, guest)
}

/// The whole document, from a snapshot (pure).
pub(crate) fn document(
    status: &VmStatus,
    link: Option<&GuestLink>,
    qemu: Result<String, String>,
    now: SystemTime,
) -> Value {
    let view = link.map(|link| link.guest.view.borrow().clone());
    let (agent, guest) = agent(view.as_ref(), now);
    let frozen = link
        .map(|link| link.guest.freezer.frozen())
        .unwrap_or_default();
    json!({
        "schema": SCHEMA,
        "phase": status.phase().name(),
        "qemu": match qemu { Ok(state) => json!({ "state": state }), Err(error) => json!({ "state": null, "error": error }) },
        "paused": status.paused().map(|p| p.label()),
        "lease": {
            "held": status.lease(),
            "ip": link.map(|l| l.vm_ip.to_string()),
            "mac": link.map(|l| l.mac.clone()),
        },
        "network": { "mode": link.map(|l| l.network) },
        "firmware": "bios",
        "tpm": false,
        "agent": agent,
        "guest": guest,
        "frozen": { "frozen": frozen.since.is_some(), "since": time(frozen.since) },
    })
}

pub(crate) async fn status(State(state): State<AppState>) -> Response {
    let link = state.status.guest();
    let qemu = state.status.qemu_state().await;
    let document = document(&state.status, link.as_ref(), qemu, SystemTime::now());
    json_response(axum::http::StatusCode::OK, &document)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::http::{Phase, Readiness};
    use crate::qemu::agent::guest::{Filesystem, GuestFacts, Interface, Os};
    use crate::qemu::agent::{freeze::Freezer, Agent, Guest};

    fn link(view: AgentView) -> GuestLink {
        let agent = Arc::new(Agent::new("/nonexistent/agent.sock".into()));
        GuestLink {
            guest: Guest {
                view: tokio::sync::watch::channel(view).1,
                freezer: Freezer::new(Arc::clone(&agent), Duration::from_secs(60)),
                agent,
            },
            vm_ip: "192.168.254.2".parse().expect("ip"),
            mac: "52:54:00:12:34:56".into(),
            network: "nat",
        }
    }

    #[test]
    fn without_qemu_the_agent_is_no_agent_and_the_guest_unknown() {
        let status = VmStatus::new(Readiness::Lease);
        let doc = document(
            &status,
            None,
            Err("no QMP connection".into()),
            SystemTime::now(),
        );
        assert_eq!(doc["phase"], "starting");
        assert_eq!(doc["agent"]["state"], "no agent");
        assert_eq!(doc["agent"]["connected"], false);
        assert_eq!(doc["guest"], Value::Null);
        assert_eq!(doc["qemu"]["error"], "no QMP connection");
        assert_eq!(doc["frozen"]["frozen"], false);
    }

    #[test]
    fn a_connected_agent_shows_the_guest_with_its_age() {
        let status = VmStatus::new(Readiness::Lease);
        status.set_phase(Phase::Running);
        status.set_lease(true);
        let now = SystemTime::now();
        let view = AgentView {
            connected: true,
            since: Some(now),
            last_answer: Some(now),
            error: None,
            facts: Some(GuestFacts {
                agent_version: Some("7.2.0".into()),
                os: Some(Os {
                    name: Some("kvmtest".into()),
                    ..Os::default()
                }),
                hostname: Some("vm-0".into()),
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: None,
                    addresses: vec!["192.168.254.2/30".into()],
                }],
                filesystems: vec![Filesystem {
                    mountpoint: "/".into(),
                    kind: Some("ext4".into()),
                    used_bytes: Some(1),
                    total_bytes: Some(2),
                }],
                users: Vec::new(),
            }),
            facts_at: Some(now - Duration::from_secs(30)),
        };
        let doc = document(&status, Some(&link(view)), Ok("running".into()), now);
        assert_eq!(doc["agent"]["state"], "connected");
        assert_eq!(doc["qemu"]["state"], "running");
        assert_eq!(doc["lease"]["held"], true);
        assert_eq!(doc["lease"]["ip"], "192.168.254.2");
        assert_eq!(doc["network"]["mode"], "nat");
        assert_eq!(doc["guest"]["os"]["name"], "kvmtest");
        assert_eq!(
            doc["guest"]["interfaces"][0]["addresses"][0],
            "192.168.254.2/30"
        );
        assert_eq!(doc["guest"]["filesystems"][0]["type"], "ext4");
        assert_eq!(doc["guest"]["age_seconds"], 30);
    }
}
