//! What must stay the same for this VM across container restarts, persisted in `PET_DIR`:
//! the NIC's MAC (a new MAC is a new NIC to the guest: new interface name, lost static
//! config) and the instance id (cloud-init re-runs per-instance modules when it changes).
//!
//! The file is `PET_DIR/<hostname>.state.json`, written atomically through a unique temporary
//! name. It is created on first start and only ever changed when the operator sets a different
//! `VM_MAC`. [`load`] and [`load_or_create`] decide (and may write) the state: callers hold the
//! pet's [owner lock](crate::image::owner) first, so two racing first starts cannot pick two
//! instance ids. [`peek`] only reads and needs no lock.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use macaddr::MacAddr6;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::config::{Firmware, Hostname, Machine};

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is corrupt; move it aside to start with a new instance id (the MAC is derived \
         from the hostname and stays the same)"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not write {path} (is PET_DIR writable?)")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PetState {
    pub mac: Mac,
    /// A UUID, used as the config drive's instance id.
    pub instance_id: String,
    /// The firmware the VM first booted with. Absent in states written before firmware
    /// was recorded: such a VM booted SeaBIOS on `pc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareRecord>,
}

/// Firmware, board and UEFI variable-store template, recorded at the first boot so that no
/// VM is switched under its OS (see [`crate::qemu::firmware`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FirmwareRecord {
    pub firmware: Firmware,
    pub machine: Machine,
    /// The template the UEFI variable store was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars_template: Option<PathBuf>,
}

impl PetState {
    pub(crate) fn mac(&self) -> MacAddr6 {
        self.mac.0
    }
}

/// The NIC's MAC, parsed when the file is read: in the file (and the config drive) it is
/// `aa:bb:cc:dd:ee:ff`, lowercase; a value that is not a MAC makes the file corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mac(pub MacAddr6);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_string().to_ascii_lowercase())
    }
}

impl FromStr for Mac {
    type Err = macaddr::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Mac)
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid mac {text:?}")))
    }
}

/// A locally administered unicast MAC derived from the hostname: `52:54:00` is qemu's own
/// prefix, the rest comes from a hash of the hostname, so it is stable even before the state
/// file exists.
pub(crate) fn derived_mac(hostname: &Hostname) -> MacAddr6 {
    let digest = Sha256::digest(hostname.as_str().as_bytes());
    MacAddr6::new(0x52, 0x54, 0x00, digest[0], digest[1], digest[2])
}

pub(crate) fn path(pet_dir: &Path, hostname: &Hostname) -> PathBuf {
    pet_dir.join(format!("{hostname}.state.json"))
}

/// Removes the temporary files of a killed state write; returns what it removed. Only for the
/// pet's owner.
pub(crate) fn remove_temps(pet_dir: &Path, hostname: &Hostname) -> Vec<PathBuf> {
    crate::atomic_file::remove_temps(&path(pet_dir, hostname), crate::atomic_file::TMP)
}

/// The stored state, if the file exists; a file that does not parse, or holds an invalid MAC
/// or an empty instance id, is an error naming it.
fn read_stored(path: &Path) -> Result<Option<PetState>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let parse_error = |source| StateError::Parse {
        path: path.to_owned(),
        source,
    };
    let state: PetState = serde_json::from_slice(&bytes).map_err(parse_error)?;
    if state.instance_id.is_empty() {
        let invalid = io::Error::other("empty instance_id");
        return Err(parse_error(serde_json::Error::io(invalid)));
    }
    Ok(Some(state))
}

/// The state as `run` would see it, without writing anything: the stored state, else what
/// would be created (with a placeholder instance id). For `qemu-args`.
pub(crate) fn peek(
    pet_dir: &Path,
    hostname: &Hostname,
    configured: Option<MacAddr6>,
) -> Result<PetState, StateError> {
    let mac = configured.map(Mac);
    Ok(match read_stored(&path(pet_dir, hostname))? {
        Some(state) => PetState {
            mac: mac.unwrap_or(state.mac),
            ..state
        },
        None => PetState {
            mac: mac.unwrap_or(Mac(derived_mac(hostname))),
            instance_id: "(created on first run)".to_owned(),
            firmware: None,
        },
    })
}

/// Loads the state, creating it on first start. `configured` (VM_MAC) wins over the stored MAC.
pub(crate) fn load_or_create(
    pet_dir: &Path,
    hostname: &Hostname,
    configured: Option<MacAddr6>,
) -> Result<PetState, StateError> {
    let loaded = load(pet_dir, hostname, configured)?;
    loaded.persist()?;
    Ok(loaded.state)
}

/// The state this start uses, and whether it still has to be written to `PET_DIR`.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub state: PetState,
    /// Whether the state file was there: a VM that booted before.
    pub existed: bool,
    path: PathBuf,
    unsaved: Option<(PathBuf, Vec<u8>)>,
}

impl Loaded {
    /// Records the firmware this start boots with; written by [`Loaded::persist`] if it is new.
    pub(crate) fn record_firmware(&mut self, record: FirmwareRecord) -> Result<(), StateError> {
        if self.state.firmware.as_ref() == Some(&record) {
            return Ok(());
        }
        self.state.firmware = Some(record);
        let bytes = serialize(&self.path, &self.state)?;
        self.unsaved = Some((self.path.clone(), bytes));
        Ok(())
    }

    /// Writes the state durably if it is new or changed; nothing otherwise. `run` does this on
    /// a worker thread while it builds the rest, and before qemu starts.
    pub(crate) fn persist(&self) -> Result<(), StateError> {
        let Some((path, bytes)) = &self.unsaved else {
            return Ok(());
        };
        crate::atomic_file::write(path, bytes).map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })
    }
}

/// Reads the state and decides it, without writing: a first start gets a new instance id, a
/// `VM_MAC` different from the stored MAC replaces it.
pub(crate) fn load(
    pet_dir: &Path,
    hostname: &Hostname,
    configured: Option<MacAddr6>,
) -> Result<Loaded, StateError> {
    let path = path(pet_dir, hostname);
    let stored = read_stored(&path)?;
    let existed = stored.is_some();
    let wanted_mac = configured.map(Mac);
    let state = match stored {
        Some(state) if wanted_mac.as_ref().is_none_or(|m| *m == state.mac) => {
            return Ok(Loaded {
                state,
                existed,
                path,
                unsaved: None,
            })
        }
        Some(state) => {
            let mac = wanted_mac.unwrap_or(state.mac);
            tracing::warn!(old = %state.mac, new = %mac, "VM_MAC differs from the stored MAC; the guest will see a new NIC");
            PetState { mac, ..state }
        }
        None => PetState {
            mac: wanted_mac.unwrap_or(Mac(derived_mac(hostname))),
            instance_id: uuid::Uuid::new_v4().to_string(),
            firmware: None,
        },
    };
    let bytes = serialize(&path, &state)?;
    Ok(Loaded {
        state,
        existed,
        path: path.clone(),
        unsaved: Some((path, bytes)),
    })
}

fn serialize(path: &Path, state: &PetState) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec_pretty(state).map_err(|source| StateError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The stored state, if there is one, read without deciding or writing anything.
pub(crate) fn stored(pet_dir: &Path, hostname: &Hostname) -> Result<Option<PetState>, StateError> {
    read_stored(&path(pet_dir, hostname))
}

#[cfg(test)]
mod tests;
