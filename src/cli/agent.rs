//! The guest agent's settings: polling, readiness, freeze and thaw.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentSettings {
    /// How often the guest agent is pinged (one small request; the guest's details are
    /// fetched again only when the agent reappears, and at most every minute). A guest without
    /// an agent is reported as "no agent".
    #[arg(
        long,
        env = "AGENT_POLL_INTERVAL",
        global = true,
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub agent_poll_interval: String,

    /// When /readyz turns ready: `lease` (the guest took its DHCP lease), `agent` (the guest
    /// agent answers) or `port` (the guest accepts TCP on READY_PORT). Default: `lease`, or
    /// `port` with NO_DHCP.
    #[arg(long, env = "READY_ON", global = true, value_name = "lease|agent|port")]
    pub ready_on: Option<String>,

    /// A freeze of the guest's filesystems (`kvm-manager freeze`, POST /freeze) thaws by
    /// itself after this long if nobody thaws it.
    #[arg(
        long,
        env = "FREEZE_TIMEOUT",
        global = true,
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub freeze_timeout: String,

    /// File holding a token (a mounted Secret key) that lets POST /freeze and /thaw in from
    /// the pod network (`Authorization: Bearer TOKEN`); without it they answer loopback only.
    #[arg(long, env = "CONTROL_TOKEN_FILE", global = true, value_name = "PATH")]
    pub control_token_file: Option<PathBuf>,
}
