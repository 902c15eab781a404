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

use crate::config::Hostname;

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
    unsaved: Option<(PathBuf, Vec<u8>)>,
}

impl Loaded {
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
    let wanted_mac = configured.map(Mac);
    let state = match stored {
        Some(state) if wanted_mac.as_ref().is_none_or(|m| *m == state.mac) => {
            return Ok(Loaded {
                state,
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
        },
    };
    let bytes = serde_json::to_vec_pretty(&state).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    Ok(Loaded {
        state,
        unsaved: Some((path, bytes)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> Hostname {
        Hostname::parse(name).expect("valid hostname")
    }

    #[test]
    fn derived_mac_is_stable_unicast_and_differs_per_host() {
        let a = derived_mac(&host("vm-0"));
        assert_eq!(a, derived_mac(&host("vm-0")));
        assert_ne!(a, derived_mac(&host("vm-1")));
        assert_eq!(a.as_bytes()[0] & 1, 0, "unicast");
        assert_eq!(&a.as_bytes()[..3], &[0x52, 0x54, 0x00]);
    }

    #[test]
    fn state_survives_a_restart_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path(), &host("vm-0"), None).expect("create");
        let second = load_or_create(dir.path(), &host("vm-0"), None).expect("reload");
        assert_eq!(first, second);
        assert_eq!(first.mac(), derived_mac(&host("vm-0")));
        assert_eq!(first.instance_id.len(), 36);
    }

    #[test]
    fn configured_mac_wins_and_keeps_the_instance_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path(), &host("vm-0"), None).expect("create");
        let mac: MacAddr6 = "52:54:00:aa:bb:cc".parse().expect("mac");
        let second = load_or_create(dir.path(), &host("vm-0"), Some(mac)).expect("override");
        assert_eq!(second.mac(), mac);
        assert_eq!(second.instance_id, first.instance_id);
        let third = load_or_create(dir.path(), &host("vm-0"), None).expect("reload");
        assert_eq!(third.mac(), mac, "the override is persisted");
    }

    #[test]
    fn peek_writes_nothing_and_agrees_with_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let peeked = peek(dir.path(), &host("vm-0"), None).expect("peek");
        assert!(
            std::fs::read_dir(dir.path()).expect("ls").next().is_none(),
            "peek wrote a file"
        );
        let loaded = load_or_create(dir.path(), &host("vm-0"), None).expect("create");
        assert_eq!(peeked.mac, loaded.mac);
        assert_eq!(peek(dir.path(), &host("vm-0"), None).expect("peek"), loaded);
    }

    #[test]
    fn load_writes_only_when_persisted_and_only_what_is_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = |dir: &Path| std::fs::read_dir(dir).expect("ls").next().is_none();
        let first = load(dir.path(), &host("vm-0"), None).expect("load");
        assert!(empty(dir.path()), "load wrote a file");
        first.persist().expect("persist");
        let again = load(dir.path(), &host("vm-0"), None).expect("reload");
        assert_eq!(again.state, first.state);
        assert!(
            again.unsaved.is_none(),
            "an unchanged state is not rewritten"
        );
        let mac: MacAddr6 = "52:54:00:aa:bb:cc".parse().expect("mac");
        let changed = load(dir.path(), &host("vm-0"), Some(mac)).expect("override");
        assert!(changed.unsaved.is_some(), "a new VM_MAC is written");
    }

    #[test]
    fn the_file_keeps_the_mac_as_a_lowercase_string() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mac: MacAddr6 = "52:54:00:AA:BB:CC".parse().expect("mac");
        load_or_create(dir.path(), &host("vm-0"), Some(mac)).expect("create");
        let text = std::fs::read_to_string(path(dir.path(), &host("vm-0"))).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["mac"], "52:54:00:aa:bb:cc");
        let written = r#"{"mac": "52:54:00:12:34:56", "instance_id": "x"}"#;
        std::fs::write(path(dir.path(), &host("vm-1")), written).expect("write");
        let state = load_or_create(dir.path(), &host("vm-1"), None).expect("load");
        assert_eq!(state.mac(), MacAddr6::new(0x52, 0x54, 0, 0x12, 0x34, 0x56));
    }

    #[test]
    fn a_mac_that_is_not_one_makes_the_file_corrupt_instead_of_all_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = r#"{"mac": "not a mac", "instance_id": "x"}"#;
        std::fs::write(path(dir.path(), &host("vm-0")), written).expect("write");
        let err = peek(dir.path(), &host("vm-0"), None).expect_err("corrupt");
        assert!(matches!(err, StateError::Parse { .. }), "{err}");
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(path(dir.path(), &host("vm-0")), b"{not json").expect("write");
        let err = load_or_create(dir.path(), &host("vm-0"), None).expect_err("corrupt");
        assert!(err.to_string().contains("vm-0.state.json"), "{err}");
    }
}
