//! The contract, parsed once: raw strings from [`crate::cli::Settings`] → a typed [`Config`].
//!
//! Downstream code never re-checks what this module accepted. Every error names the variable
//! (and its flag), the value it got and what to set instead, because the person reading it is
//! an operator looking at `kubectl logs` of a crash-looping pod.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use macaddr::MacAddr6;

use crate::cli::Settings;
use crate::size::ByteSize;

/// Compression suffixes that are stripped from the default `IMG_TARGET`.
pub(crate) const COMPRESSION_SUFFIXES: [&str; 3] = [".xz", ".gz", ".zst"];

/// The port qemu's VNC server listens on (display :0).
pub(crate) const VNC_PORT: u16 = 5900;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} ({flag}) = {value:?}: {reason}. Fix: {fix}", flag = flag_of(var))]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
        fix: String,
    },
    #[error("{var} ({flag}) is required: {fix}", flag = flag_of(var))]
    Missing { var: &'static str, fix: String },
    #[error(
        "the pod hostname {hostname:?} cannot name the pet overlay file: {reason}. Fix: give \
         the pod a DNS-label name (a StatefulSet does), e.g. vm-0"
    )]
    Hostname {
        hostname: String,
        reason: &'static str,
    },
    #[error("could not read the hostname")]
    ReadHostname(#[source] nix::Error),
}

/// `VM_IP` → `--vm-ip`.
fn flag_of(var: &str) -> String {
    format!("--{}", var.to_ascii_lowercase().replace('_', "-"))
}

fn invalid(
    var: &'static str,
    value: &str,
    reason: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason: reason.into(),
        fix: fix.into(),
    }
}

/// Everything the program needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: Hostname,
    pub image: ImageConfig,
    /// `None` only when neither `IMG_SOURCE` nor `IMG_TARGET` is set; `run` and `image` get
    /// theirs from [`Config::with_image`] as a value, never as an `Option`.
    pub image_target: Option<ImageTarget>,
    pub pet_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// The noVNC client served by the web console.
    pub novnc_dir: PathBuf,
    pub net: NetConfig,
    pub vm: VmConfig,
    pub config_drive: ConfigDriveConfig,
    pub log: LogConfig,
    pub agent: AgentConfig,
    /// Shares, Ignition, NIC queues (issue 24).
    pub(crate) guest_io: GuestIoConfig,
    /// Issue 22: scheduled backups.
    pub backup: backup::BackupConfig,
    /// `FIRMWARE`, `MACHINE`, `FIRMWARE_RESET`.
    pub firmware: FirmwareConfig,
    /// Accepted but questionable settings, logged once logging is up.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    /// Accepts names that can name `<hostname>.qcow2` in `PET_DIR` and appear on qemu's
    /// command line; Kubernetes pod names always pass.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let reason = if raw.is_empty() {
            Some("it is empty")
        } else if raw.len() > 253 {
            Some("it is longer than 253 bytes")
        } else if raw.contains('/') {
            Some("it contains `/`")
        } else if raw.starts_with('.') {
            Some("it starts with `.` (a hidden file, or `..`)")
        } else if raw.starts_with('-') {
            Some("it starts with `-`")
        } else if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Some("it contains whitespace or control characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ConfigError::Hostname {
                hostname: raw.to_owned(),
                reason,
            }),
            None => Ok(Self(raw.to_owned())),
        }
    }

    /// The kernel's hostname of this UTS namespace (the pod name in Kubernetes).
    pub fn from_system() -> Result<Self, ConfigError> {
        let raw = nix::unistd::gethostname().map_err(ConfigError::ReadHostname)?;
        Self::parse(&raw.to_string_lossy())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `http://` or `https://`; shown only redacted.
    Url(ImageUrl),
    /// `file://` or a plain path.
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageTarget {
    /// A file name inside `IMAGE_DIR`.
    Name(String),
    /// The absolute path of an image that already exists (never downloaded to).
    Existing(PathBuf),
}

impl ImageTarget {
    /// Where the base image lives (or will live).
    pub fn path(&self, image_dir: &Path) -> PathBuf {
        match self {
            Self::Name(name) => image_dir.join(name),
            Self::Existing(path) => path.clone(),
        }
    }
}

/// How a base image is had: where from, its digest, where it goes, how a download gives up.
/// Which file it is, the [`ImageTarget`], is apart: `run` and `image` must have one.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub source: Option<ImageSource>,
    /// Lowercase hex.
    pub sha256: Option<String>,
    pub dir: PathBuf,
    /// From `IMG_AUTH_FILE`.
    pub auth: Option<ImageAuth>,
    pub fetch: FetchLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    Forward,
    Passthrough,
}

/// `NETWORK_MODE`: which way the VM reaches the pod network ([`crate::net::mode`] decides
/// `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    Auto,
    Nat,
    Passt,
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    /// `VM_IP` and `VM_GW`.
    pub slash30: crate::net::Slash30,
    pub vm_mac: Option<MacAddr6>,
    pub no_vnc: bool,
    pub no_dhcp: bool,
    pub dns_mode: DnsMode,
    /// `None` when `HTTP_PORT=0`.
    pub http_port: Option<u16>,
    /// Guest TCP port that means "ready" with `NO_DHCP`.
    pub ready_port: u16,
    pub mode: NetworkMode,
    /// `IPV6`, `VM_IP6`, `VM_GW6` (issue 23); `None` with `IPV6=off`.
    pub ipv6: Option<crate::net::ip6::Ip6Config>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// A value that must not appear in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub cpus: Option<u32>,
    pub memory: Option<ByteSize>,
    pub disk_size: Option<ByteSize>,
    pub accel: Accel,
    pub qemu: PathBuf,
    pub vnc_password: Option<Secret>,
    pub shutdown_timeout: Duration,
    /// How long a web-console viewer may send no input before it is disconnected.
    pub console_idle_timeout: Duration,
    /// Appended to qemu's command line.
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveFormat {
    ConfigDrive,
    NoCloud,
    None,
}

#[derive(Debug, Clone)]
pub struct ConfigDriveConfig {
    pub format: DriveFormat,
    pub userdata: PathBuf,
    pub metadata: PathBuf,
    /// `SHARES`, for the vendor-data that mounts them.
    pub(crate) shares: Vec<crate::qemu::shares::Share>,
}

/// When `/readyz` turns ready (`READY_ON`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOn {
    Lease,
    Agent,
    Port,
}

/// The guest agent: polling, readiness, freeze.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub poll_interval: Duration,
    pub ready_on: ReadyOn,
    pub freeze_timeout: Duration,
    /// From `CONTROL_TOKEN_FILE`: lets POST /freeze and /thaw in from the pod network.
    pub control_token: Option<Secret>,
    /// `SSH_AUTHORIZED_KEYS` and `SSH_USER`.
    pub(crate) ssh_keys: Option<crate::qemu::agent::ssh::SshKeys>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A valid `tracing_subscriber::EnvFilter` directive.
    pub level: String,
}

/// Parses only what logging needs, so that logging can start before anything else fails.
pub(crate) fn parse_log(settings: &Settings) -> Result<LogConfig, ConfigError> {
    let format = choice(
        "LOG_FORMAT",
        &settings.log_format,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )?;
    let level = settings.log_level.trim().to_owned();
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        return Err(invalid(
            "LOG_LEVEL",
            &settings.log_level,
            format!("not a log filter ({e})"),
            "use error, warn, info, debug or trace",
        ));
    }
    Ok(LogConfig { format, level })
}

impl Config {
    /// For the subcommands that need no base image: `IMG_TARGET` may be unset.
    pub fn from_settings(
        settings: &Settings,
        hostname: Hostname,
        extra_args: Vec<String>,
    ) -> Result<Self, ConfigError> {
        let (config, ()) = Self::parse(settings, hostname, extra_args, |_, _| Ok(()))?;
        Ok(config)
    }

    /// For `run` and `image`, which need a base image: the config and the image's target,
    /// which either exists or can be fetched from `IMG_SOURCE`.
    pub fn with_image(
        settings: &Settings,
        hostname: Hostname,
        extra_args: Vec<String>,
    ) -> Result<(Self, ImageTarget), ConfigError> {
        Self::parse(settings, hostname, extra_args, image::needed_target)
    }

    /// Parses every setting in a fixed order (the first error wins); `needed` decides about
    /// the image's target right after the image settings are parsed.
    fn parse<T>(
        settings: &Settings,
        hostname: Hostname,
        extra_args: Vec<String>,
        needed: impl FnOnce(&ImageConfig, Option<&ImageTarget>) -> Result<T, ConfigError>,
    ) -> Result<(Self, T), ConfigError> {
        let mut warnings = Vec::new();
        let log = parse_log(settings)?;
        let (image, image_target) = image::parse_image(settings)?;
        let needed = needed(&image, image_target.as_ref())?;
        let net = net::parse_net(settings)?;
        let vm = vm::parse_vm(settings, extra_args)?;
        let agent = agent::parse_agent(settings, net.no_dhcp)?;
        let guest_io = shares::parse_guest_io(&settings.guest_io)?;
        let backup = backup::parse_backup(settings)?;
        let firmware = firmware::parse_firmware(settings)?;
        if let (Some(_), true) = (&vm.vnc_password, net.no_vnc) {
            warnings.push("VNC_PASSWORD is ignored because NO_VNC is set".to_owned());
        }
        let config_drive = ConfigDriveConfig {
            format: choice(
                "CONFIG_DRIVE",
                &settings.config_drive,
                &[
                    ("config-2", DriveFormat::ConfigDrive),
                    ("nocloud", DriveFormat::NoCloud),
                    ("none", DriveFormat::None),
                ],
            )?,
            userdata: settings.userdata.clone(),
            metadata: settings.metadata.clone(),
            shares: guest_io.shares.clone(),
        };
        let config = Self {
            hostname,
            image,
            image_target,
            pet_dir: settings.pet_dir.clone(),
            runtime_dir: settings.runtime_dir.clone(),
            novnc_dir: settings.novnc_dir.clone(),
            net,
            vm,
            config_drive,
            log,
            agent,
            guest_io,
            backup,
            firmware,
            warnings,
        };
        Ok((config, needed))
    }

    /// `PET_DIR/<hostname>.qcow2`.
    pub fn overlay_path(&self) -> PathBuf {
        self.pet_dir.join(format!("{}.qcow2", self.hostname))
    }
}

/// One of a fixed set of words; the error lists them.
fn choice<T: Copy>(var: &'static str, raw: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
    let wanted = raw.trim().to_ascii_lowercase();
    options
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            invalid(
                var,
                raw,
                "unknown value",
                format!("use one of: {}", names.join(", ")),
            )
        })
}

/// Empty strings count as unset (a Helm chart often renders `VALUE: ""`).
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

mod agent;
mod auth;
mod backup;
mod duration;
mod fetch_limits;
mod firmware;
mod image;
mod net;
mod shares;
mod url;
mod vm;

pub(crate) use auth::ImageAuth;
pub(crate) use fetch_limits::{FetchLimits, Reserve};
pub(crate) use firmware::{Firmware, FirmwareChoice, FirmwareConfig, Machine};
pub(crate) use shares::{GuestIoConfig, IgnitionMode, ShareTransport};
pub(crate) use url::{redact_url, ImageUrl};

#[cfg(test)]
mod tests;
