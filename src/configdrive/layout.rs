//! What goes on the drive, decided without IO: inputs + hostname + [`PetState`] + format →
//! the volume label and a sorted list of files.
//!
//! - `config-2` (OpenStack config drive, what the classic kvm-manager wrote): the same
//!   `meta_data.json`, `network_data.json` and `user_data` in `openstack/latest/` and
//!   `openstack/2012-08-10/` (the oldest version cloud-init and cloudbase-init read).
//! - `nocloud` (label `cidata`): `meta-data`, `user-data` and `network-config` at the root.
//!   cloud-init requires both `meta-data` and `user-data`, so `user-data` is written empty
//!   when none is given.
//!
//! The generated meta-data carries the persisted instance id (so cloud-init does not re-run
//! its per-instance modules after a container restart) and the pod hostname; the operator's
//! top-level keys replace ours. The network config matches the VM's NIC by MAC and asks for
//! DHCP, which our DHCP server answers. User-data is copied byte for byte.
//!
//! File bytes are [`Content`], hadris-fs's shared immutable buffer, so that a 16 MiB
//! user-data is copied once into it and then shared by both OpenStack versions and the ISO
//! writer instead of being copied again at each step.

use hadris_fs::Content;
use serde_json::{json, Value};

use super::metadata::{Metadata, Value as MetaValue};
use super::render;
use super::scalar::Scalar;
use super::ConfigDriveError;
use crate::config::{DriveFormat, Hostname};
use crate::state::PetState;

/// The OpenStack metadata versions we publish.
const OPENSTACK_VERSIONS: [&str; 2] = ["2012-08-10", "latest"];
/// The name of the NIC in the network configs (cloud-init does not rename it).
const NIC: &str = "nic0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    ConfigDrive,
    NoCloud,
}

impl Format {
    /// `None` for `CONFIG_DRIVE=none`.
    pub(crate) fn of(format: DriveFormat) -> Option<Self> {
        match format {
            DriveFormat::ConfigDrive => Some(Self::ConfigDrive),
            DriveFormat::NoCloud => Some(Self::NoCloud),
            DriveFormat::None => None,
        }
    }

    /// The volume label cloud-init looks for.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::ConfigDrive => "config-2",
            Self::NoCloud => "cidata",
        }
    }
}

/// What the operator gave us.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Inputs {
    pub user_data: Option<Vec<u8>>,
    pub metadata: Metadata,
}

/// One file of the drive; files with equal bytes share one buffer.
#[derive(Debug, Clone)]
pub(crate) struct DriveFile {
    /// Relative, `/`-separated.
    pub path: String,
    pub content: Content,
}

impl DriveFile {
    pub(crate) fn bytes(&self) -> &[u8] {
        // Layout only ever makes in-memory content.
        self.content.as_bytes().unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub label: &'static str,
    /// Sorted by path.
    pub files: Vec<DriveFile>,
}

/// Takes `inputs` by value so user-data moves into the layout without a copy of our own.
pub(crate) fn plan(
    format: Format,
    inputs: Inputs,
    hostname: &Hostname,
    state: &PetState,
) -> Result<Layout, ConfigDriveError> {
    let mut files = match format {
        Format::ConfigDrive => config_drive(inputs, hostname, state)?,
        Format::NoCloud => nocloud(inputs, hostname, state)?,
    };
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Layout {
        label: format.label(),
        files,
    })
}

fn config_drive(
    inputs: Inputs,
    hostname: &Hostname,
    state: &PetState,
) -> Result<Vec<DriveFile>, ConfigDriveError> {
    let generated = [
        ("uuid", state.instance_id.as_str()),
        ("hostname", hostname.as_str()),
        ("name", hostname.as_str()),
    ];
    let meta_data = Content::from(render::json(&merged(&generated, &inputs.metadata)).into_bytes());
    let network_data = json_bytes(
        "network_data.json",
        &json!({
            "links": [{
                "id": NIC,
                "type": "phy",
                "ethernet_mac_address": state.mac,
            }],
            "networks": [{
                "id": "network0",
                "network_id": "network0",
                "link": NIC,
                "type": "ipv4_dhcp",
            }],
            "services": [],
        }),
    )?;
    let user_data = inputs.user_data.map(Content::from);

    let mut files = Vec::new();
    for version in OPENSTACK_VERSIONS {
        let dir = format!("openstack/{version}");
        files.push(file(format!("{dir}/meta_data.json"), &meta_data));
        files.push(file(format!("{dir}/network_data.json"), &network_data));
        if let Some(user_data) = &user_data {
            files.push(file(format!("{dir}/user_data"), user_data));
        }
    }
    Ok(files)
}

fn nocloud(
    inputs: Inputs,
    hostname: &Hostname,
    state: &PetState,
) -> Result<Vec<DriveFile>, ConfigDriveError> {
    let generated = [
        ("instance-id", state.instance_id.as_str()),
        ("local-hostname", hostname.as_str()),
    ];
    let meta_data = Content::from(render::yaml(&merged(&generated, &inputs.metadata)).into_bytes());
    let network_config = yaml_bytes(
        "network-config",
        &json!({
            "version": 2,
            "ethernets": {
                NIC: {
                    "match": { "macaddress": state.mac },
                    "dhcp4": true,
                },
            },
        }),
    )?;
    let user_data = Content::from(inputs.user_data.unwrap_or_default());
    Ok(vec![
        file("meta-data".into(), &meta_data),
        file("network-config".into(), &network_config),
        file("user-data".into(), &user_data),
    ])
}

fn file(path: String, content: &Content) -> DriveFile {
    DriveFile {
        path,
        content: content.clone(),
    }
}

/// `ours` with the operator's top-level keys put over it.
fn merged(ours: &[(&str, &str)], theirs: &Metadata) -> Metadata {
    let mut out = Metadata::new();
    for (key, value) in ours {
        out.insert(Scalar::Str((*key).to_owned()), MetaValue::from(*value));
    }
    for (key, value) in theirs.iter() {
        out.insert(key.clone(), value.clone());
    }
    out
}

fn json_bytes(file: &'static str, value: &Value) -> Result<Content, ConfigDriveError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| ConfigDriveError::Encode {
        file,
        source: Box::new(e),
    })?;
    bytes.push(b'\n');
    Ok(bytes.into())
}

fn yaml_bytes(file: &'static str, value: &Value) -> Result<Content, ConfigDriveError> {
    let text = serde_saphyr::to_string(value).map_err(|e| ConfigDriveError::Encode {
        file,
        source: Box::new(e),
    })?;
    Ok(Content::from(text.into_bytes()))
}
