//! The contract, parsed once: raw strings from [`crate::cli::Settings`] → a typed [`Config`].
//!
//! Downstream code never re-checks what this module accepted. Every error names the variable
//! (and its flag), the value it got and what to set instead, because the person reading it is
//! an operator looking at `kubectl logs` of a crash-looping pod.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use macaddr::MacAddr6;
use url::Url;

use crate::cli::Settings;
use crate::size::{ByteSize, MIB};

/// Compression suffixes that are stripped from the default `IMG_TARGET`.
pub const COMPRESSION_SUFFIXES: [&str; 3] = [".xz", ".gz", ".zst"];

/// The port qemu's VNC server listens on (display :0).
pub const VNC_PORT: u16 = 5900;

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
    pub pet_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// The noVNC client served by the web console.
    pub novnc_dir: PathBuf,
    pub net: NetConfig,
    pub vm: VmConfig,
    pub config_drive: ConfigDriveConfig,
    pub log: LogConfig,
    /// Accepted but questionable settings, logged once logging is up.
    pub warnings: Vec<String>,
}

/// Which subcommand asks: `run` and `image` need a base image, the others do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Image,
    Nothing,
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
    /// `http://` or `https://`.
    Url(Url),
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

#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub source: Option<ImageSource>,
    /// `None` only when neither `IMG_SOURCE` nor `IMG_TARGET` is set and nothing needs them.
    pub target: Option<ImageTarget>,
    /// Lowercase hex.
    pub sha256: Option<String>,
    pub dir: PathBuf,
}

impl ImageConfig {
    /// Where the base image lives (or will live).
    pub fn target_path(&self) -> Option<PathBuf> {
        match &self.target {
            Some(ImageTarget::Name(name)) => Some(self.dir.join(name)),
            Some(ImageTarget::Existing(path)) => Some(path.clone()),
            None => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    Forward,
    Passthrough,
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub vm_ip: Ipv4Addr,
    pub vm_gw: Ipv4Addr,
    pub vm_mac: Option<MacAddr6>,
    pub no_vnc: bool,
    pub no_dhcp: bool,
    pub dns_mode: DnsMode,
    /// `None` when `HTTP_PORT=0`.
    pub http_port: Option<u16>,
    /// Guest TCP port that means "ready" with `NO_DHCP`.
    pub ready_port: u16,
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
pub fn parse_log(settings: &Settings) -> Result<LogConfig, ConfigError> {
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
    pub fn from_settings(
        settings: &Settings,
        hostname: Hostname,
        extra_args: Vec<String>,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let log = parse_log(settings)?;
        let image = parse_image(settings, needs)?;
        let net = parse_net(settings)?;
        let vm = parse_vm(settings, extra_args)?;
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
        };
        Ok(Self {
            hostname,
            image,
            pet_dir: settings.pet_dir.clone(),
            runtime_dir: settings.runtime_dir.clone(),
            novnc_dir: settings.novnc_dir.clone(),
            net,
            vm,
            config_drive,
            log,
            warnings,
        })
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

fn parse_image(settings: &Settings, needs: Needs) -> Result<ImageConfig, ConfigError> {
    let source = non_empty(&settings.img_source)
        .map(parse_source)
        .transpose()?;
    let target = match non_empty(&settings.img_target) {
        Some(raw) => Some(parse_target(raw, &settings.image_dir)?),
        None => match &source {
            Some(source) => Some(ImageTarget::Name(default_target(source)?)),
            None => None,
        },
    };
    let sha256 = non_empty(&settings.img_sha256)
        .map(parse_sha256)
        .transpose()?;

    if needs == Needs::Image && source.is_none() {
        let existing = match &target {
            Some(ImageTarget::Existing(_)) => true,
            Some(ImageTarget::Name(name)) => settings.image_dir.join(name).is_file(),
            None => false,
        };
        if !existing {
            return Err(ConfigError::Missing {
                var: "IMG_SOURCE",
                fix: format!(
                    "set it to the http(s) URL or path of a qcow2 or raw base image, or set \
                     IMG_TARGET to an image that already exists in IMAGE_DIR ({})",
                    settings.image_dir.display()
                ),
            });
        }
    }
    Ok(ImageConfig {
        source,
        target,
        sha256,
        dir: settings.image_dir.clone(),
    })
}

fn parse_source(raw: &str) -> Result<ImageSource, ConfigError> {
    const FIX: &str = "use an http://, https:// or file:// URL, or a local path";
    if !raw.contains("://") {
        return Ok(ImageSource::Path(PathBuf::from(raw)));
    }
    let url =
        Url::parse(raw).map_err(|e| invalid("IMG_SOURCE", raw, format!("not a URL ({e})"), FIX))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(ImageSource::Url(url)),
        "http" | "https" => Err(invalid("IMG_SOURCE", raw, "the URL has no host", FIX)),
        "file" => url
            .to_file_path()
            .map(ImageSource::Path)
            .map_err(|()| invalid("IMG_SOURCE", raw, "not a local file URL", FIX)),
        other => Err(invalid(
            "IMG_SOURCE",
            raw,
            format!("unsupported scheme `{other}`"),
            FIX,
        )),
    }
}

/// The last path segment of the source, minus a compression suffix.
fn default_target(source: &ImageSource) -> Result<String, ConfigError> {
    let (raw, segment) = match source {
        ImageSource::Url(url) => (
            url.as_str().to_owned(),
            url.path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or("")
                .to_owned(),
        ),
        ImageSource::Path(path) => (
            path.display().to_string(),
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let name = COMPRESSION_SUFFIXES
        .iter()
        .find_map(|suffix| segment.strip_suffix(suffix))
        .unwrap_or(&segment);
    check_file_name(name).map(str::to_owned).map_err(|reason| {
        invalid(
            "IMG_SOURCE",
            &raw,
            format!("cannot derive the image file name from it: the last path segment {reason}"),
            "set IMG_TARGET to the file name the base image should have in IMAGE_DIR",
        )
    })
}

fn check_file_name(name: &str) -> Result<&str, &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains('/') {
        Err("contains `/`")
    } else if name.contains("..") {
        Err("contains `..`")
    } else if name.starts_with('.') {
        Err("starts with `.` (names starting with `.` are kvm-manager's temporary files)")
    } else if name.len() > 200 {
        Err("is longer than 200 bytes")
    } else if name.chars().any(char::is_control) {
        Err("contains control characters")
    } else {
        Ok(name)
    }
}

fn parse_target(raw: &str, image_dir: &Path) -> Result<ImageTarget, ConfigError> {
    let path = Path::new(raw);
    if path.is_absolute() {
        return if path.is_file() {
            Ok(ImageTarget::Existing(path.to_path_buf()))
        } else {
            Err(invalid(
                "IMG_TARGET",
                raw,
                "an absolute path must name an existing image file, and none is there",
                format!(
                    "mount the image at that path, or give a plain file name to download into \
                     IMAGE_DIR ({})",
                    image_dir.display()
                ),
            ))
        };
    }
    check_file_name(raw).map(|name| ImageTarget::Name(name.to_owned())).map_err(|reason| {
        invalid(
            "IMG_TARGET",
            raw,
            format!("the file name {reason}"),
            "use a plain file name such as debian-12.qcow2, or the absolute path of an existing image",
        )
    })
}

fn parse_sha256(raw: &str) -> Result<String, ConfigError> {
    let hex = raw
        .strip_prefix("sha256:")
        .unwrap_or(raw)
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(invalid(
            "IMG_SHA256",
            raw,
            format!("expected 64 hex digits, got {} characters", hex.len()),
            "paste the output of `sha256sum` for the file as downloaded, or unset it",
        ))
    }
}

fn parse_net(settings: &Settings) -> Result<NetConfig, ConfigError> {
    let vm_ip = parse_ipv4("VM_IP", &settings.vm_ip)?;
    let vm_gw = parse_ipv4("VM_GW", &settings.vm_gw)?;
    check_slash30(vm_ip, vm_gw)?;
    let vm_mac = non_empty(&settings.vm_mac).map(parse_mac).transpose()?;
    let dns_mode = choice(
        "DNS_MODE",
        &settings.dns_mode,
        &[
            ("forward", DnsMode::Forward),
            ("passthrough", DnsMode::Passthrough),
        ],
    )?;
    let port: u16 = settings.http_port.trim().parse().map_err(|_| {
        invalid(
            "HTTP_PORT",
            &settings.http_port,
            "not a port number",
            "use 1-65535, or 0 to disable",
        )
    })?;
    if port == VNC_PORT && !settings.no_vnc {
        return Err(invalid(
            "HTTP_PORT",
            &settings.http_port,
            "qemu's VNC server uses port 5900",
            "choose another port, or set NO_VNC",
        ));
    }
    let ready_port = match settings.ready_port.trim().parse::<u16>() {
        Ok(port @ 1..) => port,
        _ => {
            return Err(invalid(
                "READY_PORT",
                &settings.ready_port,
                "not a port number",
                "use the guest TCP port (1-65535) that answers once it has booted, e.g. 22",
            ))
        }
    };
    Ok(NetConfig {
        vm_ip,
        vm_gw,
        vm_mac,
        no_vnc: settings.no_vnc,
        no_dhcp: settings.no_dhcp,
        dns_mode,
        http_port: (port != 0).then_some(port),
        ready_port,
    })
}

fn parse_ipv4(var: &'static str, raw: &str) -> Result<Ipv4Addr, ConfigError> {
    raw.trim().parse().map_err(|_| {
        invalid(
            var,
            raw,
            "not an IPv4 address",
            "write it as four decimal octets, e.g. 192.168.254.2",
        )
    })
}

const SLASH30_FIX: &str = "VM_IP and VM_GW must be the two host addresses of one /30 \
     (…1 and …2 of a block starting at a multiple of 4), e.g. VM_GW=192.168.254.1 VM_IP=192.168.254.2";

/// Both addresses must be the two host addresses (offsets 1 and 2) of one /30.
pub fn check_slash30(vm_ip: Ipv4Addr, vm_gw: Ipv4Addr) -> Result<(), ConfigError> {
    for (var, addr) in [("VM_IP", vm_ip), ("VM_GW", vm_gw)] {
        let text = addr.to_string();
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast()
        {
            return Err(invalid(
                var,
                &text,
                "not a unicast address a NIC can have",
                SLASH30_FIX,
            ));
        }
        match u32::from(addr) & 3 {
            0 => {
                return Err(invalid(
                    var,
                    &text,
                    "the network address of its /30",
                    SLASH30_FIX,
                ))
            }
            3 => {
                return Err(invalid(
                    var,
                    &text,
                    "the broadcast address of its /30",
                    SLASH30_FIX,
                ))
            }
            _ => {}
        }
    }
    if vm_ip == vm_gw {
        return Err(invalid(
            "VM_IP",
            &vm_ip.to_string(),
            "equal to VM_GW",
            SLASH30_FIX,
        ));
    }
    if u32::from(vm_ip) & !3 != u32::from(vm_gw) & !3 {
        return Err(invalid(
            "VM_IP",
            &vm_ip.to_string(),
            format!("not in the /30 of VM_GW={vm_gw}"),
            SLASH30_FIX,
        ));
    }
    Ok(())
}

fn parse_mac(raw: &str) -> Result<MacAddr6, ConfigError> {
    const FIX: &str = "use six hex bytes like 52:54:00:12:34:56 (unicast: even first byte), or \
                       unset it to derive a stable one from the hostname";
    let mac: MacAddr6 = raw
        .parse()
        .map_err(|_| invalid("VM_MAC", raw, "not a MAC address", FIX))?;
    if mac.is_nil() {
        return Err(invalid("VM_MAC", raw, "the all-zero address", FIX));
    }
    if mac.as_bytes()[0] & 1 == 1 {
        return Err(invalid("VM_MAC", raw, "a multicast address", FIX));
    }
    Ok(mac)
}

fn parse_vm(settings: &Settings, extra_args: Vec<String>) -> Result<VmConfig, ConfigError> {
    let cpus = non_empty(&settings.vm_cpus)
        .map(|raw| match raw.parse::<u32>() {
            Ok(n @ 1..=1024) => Ok(n),
            _ => Err(invalid(
                "VM_CPUS",
                raw,
                "not a whole number from 1 to 1024",
                "e.g. VM_CPUS=2, or unset it to follow the container's CPU limit",
            )),
        })
        .transpose()?;
    let memory = non_empty(&settings.vm_memory)
        .map(|raw| {
            const FIX: &str =
                "e.g. VM_MEMORY=2Gi, or unset it to follow the container's memory limit";
            let size = ByteSize::parse(raw, Some(MIB))
                .map_err(|e| invalid("VM_MEMORY", raw, e.to_string(), FIX))?;
            if size.bytes() < 64 * MIB {
                Err(invalid(
                    "VM_MEMORY",
                    raw,
                    "less than 64MiB (a bare number means MiB)",
                    FIX,
                ))
            } else if !size.bytes().is_multiple_of(MIB) {
                Err(invalid("VM_MEMORY", raw, "not a whole number of MiB", FIX))
            } else {
                Ok(size)
            }
        })
        .transpose()?;
    let disk_size = non_empty(&settings.vm_disk_size)
        .map(|raw| {
            const FIX: &str = "e.g. VM_DISK_SIZE=20Gi (it only ever grows the disk), or unset it";
            let size = ByteSize::parse(raw, None)
                .map_err(|e| invalid("VM_DISK_SIZE", raw, e.to_string(), FIX))?;
            if size.bytes() < MIB || !size.bytes().is_multiple_of(512) {
                Err(invalid(
                    "VM_DISK_SIZE",
                    raw,
                    "not a multiple of 512 bytes of at least 1MiB",
                    FIX,
                ))
            } else {
                Ok(size)
            }
        })
        .transpose()?;
    let accel = choice(
        "ACCEL",
        &settings.accel,
        &[
            ("auto", Accel::Auto),
            ("kvm", Accel::Kvm),
            ("tcg", Accel::Tcg),
        ],
    )?;
    let vnc_password =
        match non_empty(&settings.vnc_password) {
            Some(p) if p.len() > 8 => return Err(ConfigError::Invalid {
                var: "VNC_PASSWORD",
                value: "(hidden)".to_owned(),
                reason: format!(
                    "{} characters long, but VNC authentication uses at most 8",
                    p.len()
                ),
                fix: "use a password of at most 8 characters (and keep VNC off the public network)"
                    .to_owned(),
            }),
            Some(p) => Some(Secret(p.to_owned())),
            None => None,
        };
    let shutdown_timeout = parse_timeout(&settings.shutdown_timeout)?;
    Ok(VmConfig {
        cpus,
        memory,
        disk_size,
        accel,
        qemu: settings.qemu.clone(),
        vnc_password,
        shutdown_timeout,
        extra_args,
    })
}

/// `30s`, `2m`, `1m30s`, or a bare number of seconds.
fn parse_timeout(raw: &str) -> Result<Duration, ConfigError> {
    const FIX: &str = "use a duration like 25s or 2m (a bare number means seconds)";
    let trimmed = raw.trim();
    let duration = match trimmed.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(trimmed).map_err(|e| {
            invalid(
                "SHUTDOWN_TIMEOUT",
                raw,
                format!("not a duration ({e})"),
                FIX,
            )
        })?,
    };
    if duration > Duration::from_secs(24 * 3600) {
        return Err(invalid("SHUTDOWN_TIMEOUT", raw, "longer than a day", FIX));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests;
