//! The top-level error: wraps each module's error, decides the exit code, and is printed once
//! as a chain by [`crate::app::main`].

use std::fmt::Write as _;

use crate::config::ConfigError;
use crate::configdrive::ConfigDriveError;
use crate::http::HttpError;
use crate::image::owner::OwnerError;
use crate::image::ImageError;
use crate::lan::dhcp::DhcpError;
use crate::lan::dns::DnsError;
use crate::lan::LanError;
use crate::logging::LogError;
use crate::net::NetError;
use crate::pid1::Pid1Error;
use crate::qemu::QemuError;
use crate::state::StateError;

/// Exit codes, documented in the README and in `--help`.
pub mod exit {
    pub const INTERNAL: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const IMAGE: u8 = 3;
    pub const NETWORK: u8 = 4;
    pub const CONFIG_DRIVE: u8 = 5;
    pub const QEMU_START: u8 = 6;
    /// The guest ignored the ACPI power button for SHUTDOWN_TIMEOUT; qemu was made to quit.
    pub const SHUTDOWN_FORCED: u8 = 7;
    /// Another kvm-manager owns this pet (`PET_DIR/<hostname>.lock`); nothing was changed.
    pub const PET_OWNED: u8 = 8;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("the DHCP server failed")]
    Dhcp(#[from] DhcpError),
    #[error("the DNS forwarder failed")]
    Dns(#[from] DnsError),
    #[error("could not start logging")]
    Log(#[from] LogError),
    #[error("supervisor failed")]
    Pid1(#[from] Pid1Error),
    #[error("could not start the HTTP server")]
    Http(#[from] HttpError),
    #[error("qemu failed")]
    Qemu(#[from] QemuError),
    #[error("could not set up the pod network for the VM")]
    Net(#[from] NetError),
    #[error("could not prepare the VM's disk")]
    Image(#[from] ImageError),
    #[error("could not take ownership of this VM's pet in PET_DIR")]
    Owner(#[from] OwnerError),
    #[error("could not load this VM's persisted state in PET_DIR")]
    State(#[from] StateError),
    #[error("could not build the config drive")]
    ConfigDrive(#[from] ConfigDriveError),
}

/// The LAN services' error keeps its own top line ("the DHCP server failed", "the DNS forwarder
/// failed"), as each server's error did before they were started together.
impl From<LanError> for Error {
    fn from(error: LanError) -> Self {
        match error {
            LanError::Dhcp(e) => Error::Dhcp(e),
            LanError::Dns(e) => Error::Dns(e),
        }
    }
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Log(_) => exit::CONFIG,
            Error::Dhcp(_) | Error::Dns(_) => exit::NETWORK,
            Error::Pid1(e) => e.exit_code(),
            Error::Net(_) => exit::NETWORK,
            Error::Image(e) => e.exit_code(),
            Error::State(_) => exit::IMAGE,
            Error::Owner(e) => e.exit_code(),
            Error::Qemu(e) => e.exit_code(),
            Error::Http(_) => exit::NETWORK,
            Error::ConfigDrive(_) => exit::CONFIG_DRIVE,
        }
    }
}

/// `error: top\n  caused by: next\n  caused by: root` — each message once.
pub fn render_chain(error: &dyn std::error::Error) -> String {
    let mut out = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        // Infallible: writing to a String.
        let _ = write!(out, "\n  caused by: {cause}");
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_prints_every_cause_once_in_order() {
        let err = Error::Config(ConfigError::Missing {
            var: "IMG_SOURCE",
            fix: "set it".into(),
        });
        assert_eq!(
            render_chain(&err),
            "error: invalid configuration\n  caused by: IMG_SOURCE (--img-source) is required: set it"
        );
        assert_eq!(err.exit_code(), exit::CONFIG);
    }
}
