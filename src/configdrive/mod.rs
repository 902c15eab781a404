//! The config drive: the ISO the guest's cloud-init reads its instance id, hostname,
//! user-data and network config from.
//!
//! Three steps, as everywhere in kvm-manager: [`input`] reads `USERDATA` and `METADATA` (a
//! file or a mounted ConfigMap directory), [`layout`] decides the files of the drive (pure),
//! and [`iso`] turns them into deterministic ISO 9660 bytes, which [`write`] puts in place
//! atomically. Nothing here reads a clock or a random source: the same inputs and the same
//! [`PetState`] give the same bytes, so a restarted pod hands the guest an identical drive.

pub(crate) mod ignition;
pub(crate) mod input;
pub(crate) mod iso;
pub(crate) mod layout;
pub(crate) mod metadata;
pub(crate) mod render;
pub(crate) mod scalar;
pub(crate) mod shares;

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{ConfigDriveConfig, Hostname};
use crate::state::PetState;

pub(crate) use layout::Layout;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigDriveError {
    #[error("could not read {var} from {path}; fix its permissions or the volume mount")]
    ReadInput {
        var: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{var} {path} is {kind}, not a regular file; point {var} at a file or a ConfigMap \
         directory"
    )]
    InputNotRegular {
        var: &'static str,
        path: PathBuf,
        kind: crate::regular_file::Kind,
    },
    #[error(
        "{var} {path} is a symlink that leads out of {dir}; links are followed only inside \
         the mounted directory (as a ConfigMap's are): put the file itself there"
    )]
    InputEscapes {
        var: &'static str,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error(
        "{var} {path} is {size} bytes, over the limit of {limit} bytes; shrink it (gzip \
         user-data: cloud-init unpacks it)"
    )]
    InputTooLarge {
        var: &'static str,
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{var} directory {dir} holds more than one of the keys {keys}; keep only one of them")]
    AmbiguousKeys {
        var: &'static str,
        dir: PathBuf,
        keys: String,
    },
    #[error(
        "METADATA {path}:{line}:{column} is not a {syntax} mapping; write meta-data as a \
         mapping of keys to values (YAML or JSON)"
    )]
    ParseMetadata {
        path: PathBuf,
        line: u64,
        column: u64,
        syntax: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("could not encode the generated {file}")]
    Encode {
        file: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the ISO 9660 writer failed")]
    BuildIso(#[source] hadris_fs::PathError),
    #[error("could not write the config drive to {path}; is its directory writable?")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The ISO for `config`, or `None` for `CONFIG_DRIVE=none` (in memory, for the tests).
#[cfg(test)]
fn build(
    config: &ConfigDriveConfig,
    hostname: &Hostname,
    state: &PetState,
) -> Result<Option<Vec<u8>>, ConfigDriveError> {
    plan(config, hostname, state)?
        .map(|layout| iso::encode(&layout))
        .transpose()
}

/// Builds the ISO and writes it to `output` atomically; returns whether a drive was written
/// (`false` for `CONFIG_DRIVE=none`, which leaves `output` alone).
pub(crate) fn write(
    config: &ConfigDriveConfig,
    hostname: &Hostname,
    state: &PetState,
    output: &Path,
) -> Result<bool, ConfigDriveError> {
    let Some(layout) = plan(config, hostname, state)? else {
        return Ok(false);
    };
    iso::write(&layout, output)?;
    tracing::info!(path = %output.display(), label = layout.label, "config drive written");
    Ok(true)
}

/// Reads the inputs and decides the files; `None` for `CONFIG_DRIVE=none`.
fn plan(
    config: &ConfigDriveConfig,
    hostname: &Hostname,
    state: &PetState,
) -> Result<Option<Layout>, ConfigDriveError> {
    let Some(format) = layout::Format::of(config.format) else {
        return Ok(None);
    };
    let user_data = input::read("USERDATA", &config.userdata, input::USER_DATA_KEYS)?;
    let metadata = input::read("METADATA", &config.metadata, input::METADATA_KEYS)?
        .map(|found| metadata::parse(&found.path, &found.bytes))
        .transpose()?
        .unwrap_or_default();
    let inputs = layout::Inputs {
        user_data: user_data.map(|found| found.bytes),
        metadata,
    };
    let mut layout = layout::plan(format, inputs, hostname, state)?;
    shares::add_vendor_data(&mut layout, format, &config.shares)?;
    Ok(Some(layout))
}

#[cfg(test)]
mod tests;
