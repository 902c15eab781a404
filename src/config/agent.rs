//! The guest agent: `AGENT_POLL_INTERVAL`, `READY_ON`, `FREEZE_TIMEOUT`, `CONTROL_TOKEN_FILE`,
//! `SSH_AUTHORIZED_KEYS`, `SSH_USER`.

use std::time::Duration;

use super::vm::parse_timeout;
use super::{choice, invalid, non_empty, AgentConfig, ConfigError, ReadyOn, Secret};
use crate::cli::Settings;

pub(super) fn parse_agent(settings: &Settings, no_dhcp: bool) -> Result<AgentConfig, ConfigError> {
    let raw = &settings.agent;
    Ok(AgentConfig {
        poll_interval: parse_poll_interval(&raw.agent_poll_interval)?,
        ready_on: parse_ready_on(&raw.ready_on, no_dhcp)?,
        freeze_timeout: parse_freeze_timeout(&raw.freeze_timeout)?,
        control_token: raw
            .control_token_file
            .as_deref()
            .map(read_control_token)
            .transpose()?,
        ssh_keys: parse_ssh_keys(raw.ssh_authorized_keys.as_ref(), &raw.ssh_user)?,
    })
}

fn parse_poll_interval(raw: &str) -> Result<Duration, ConfigError> {
    let poll_interval = parse_timeout("AGENT_POLL_INTERVAL", raw)?;
    if poll_interval < Duration::from_secs(1) {
        return Err(invalid(
            "AGENT_POLL_INTERVAL",
            raw,
            "shorter than 1s",
            "use a duration of at least 1s, e.g. 10s",
        ));
    }
    Ok(poll_interval)
}

fn parse_ready_on(raw: &Option<String>, no_dhcp: bool) -> Result<ReadyOn, ConfigError> {
    let ready_on = match non_empty(raw) {
        None if no_dhcp => ReadyOn::Port,
        None => ReadyOn::Lease,
        Some(value) => choice(
            "READY_ON",
            value,
            &[
                ("lease", ReadyOn::Lease),
                ("agent", ReadyOn::Agent),
                ("port", ReadyOn::Port),
            ],
        )?,
    };
    if ready_on == ReadyOn::Lease && no_dhcp {
        return Err(invalid(
            "READY_ON",
            raw.as_deref().unwrap_or_default(),
            "with NO_DHCP there is no lease to wait for",
            "use READY_ON=port (with READY_PORT) or READY_ON=agent",
        ));
    }
    Ok(ready_on)
}

fn parse_freeze_timeout(raw: &str) -> Result<Duration, ConfigError> {
    let freeze_timeout = parse_timeout("FREEZE_TIMEOUT", raw)?;
    if freeze_timeout.is_zero() {
        return Err(invalid(
            "FREEZE_TIMEOUT",
            raw,
            "zero would thaw every freeze at once",
            "use a duration like 60s",
        ));
    }
    Ok(freeze_timeout)
}

/// Reads `CONTROL_TOKEN_FILE` (a regular file, a Secret's symlink to one is fine).
fn read_control_token(path: &std::path::Path) -> Result<Secret, ConfigError> {
    let shown = path.display().to_string();
    const FIX: &str = "name a regular file holding the token (a mounted Secret key), or unset it";
    let file = crate::regular_file::open(path)
        .map_err(|e| invalid("CONTROL_TOKEN_FILE", &shown, format!("{e}"), FIX))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file.into_file(), 4096), &mut bytes)
        .map_err(|e| {
            invalid(
                "CONTROL_TOKEN_FILE",
                &shown,
                format!("cannot be read ({e})"),
                FIX,
            )
        })?;
    let token = String::from_utf8_lossy(&bytes).trim().to_owned();
    if token.len() < 16 {
        return Err(invalid(
            "CONTROL_TOKEN_FILE",
            &shown,
            "the token is shorter than 16 characters",
            "put a long random token in the file (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(Secret(token))
}

fn parse_ssh_keys(
    path: Option<&std::path::PathBuf>,
    user: &Option<String>,
) -> Result<Option<crate::qemu::agent::ssh::SshKeys>, ConfigError> {
    let ssh_user = non_empty(user).map(str::to_owned);
    if let Some(user) = &ssh_user {
        let valid = user.len() <= 32
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(invalid(
                "SSH_USER",
                user,
                "not a user name",
                "use the guest user's login name, e.g. debian",
            ));
        }
    }
    match path {
        None => Ok(None),
        Some(path) if !path.exists() => Err(invalid(
            "SSH_AUTHORIZED_KEYS",
            &path.display().to_string(),
            "does not exist",
            "name a file of public keys or a mounted Secret directory, or unset it",
        )),
        Some(path) => Ok(Some(crate::qemu::agent::ssh::SshKeys {
            path: path.clone(),
            user: ssh_user,
        })),
    }
}
