//! Ignition (Fedora CoreOS, RHCOS, Flatcar): a user-data that is an Ignition config also goes
//! to the guest by fw_cfg as `opt/com.coreos/config`, where those images' `qemu` platform
//! reads it (the OpenShift-on-libvirt and crc way). It stays on the config drive as well, for
//! the images built for the `openstack` and `kubevirt` platforms.
//!
//! qemu reads the fw_cfg file once, at start, so we hand it a copy of the user-data in
//! `RUNTIME_DIR` (the bytes the config drive got, not whatever a ConfigMap key points at
//! later). A guest without fw_cfg DMA reads the item one byte per I/O port access: above
//! [`SLOW_BYTES`] that takes seconds under KVM (minutes under TCG), hence the warning.

use std::path::{Path, PathBuf};

use super::{input, ConfigDriveError};
use crate::config::IgnitionMode;
use crate::qemu::args::IGNITION_FW_CFG;

/// The copy qemu reads, in `RUNTIME_DIR`.
const FILE_NAME: &str = "ignition.json";
/// Above this, the warning that fw_cfg reads get slow.
pub(crate) const SLOW_BYTES: u64 = 1024 * 1024;

/// An Ignition config that qemu passes by fw_cfg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ignition {
    /// The copy qemu opens.
    pub path: PathBuf,
    pub bytes: u64,
}

/// Whether `user_data` is an Ignition config: a JSON object whose `ignition.version` is a
/// string (every Ignition spec version has it; cloud-config and scripts never parse as that).
pub(crate) fn is_ignition(user_data: &[u8]) -> bool {
    let starts_like_json = user_data
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    starts_like_json
        && serde_json::from_slice::<serde_json::Value>(user_data)
            .ok()
            .and_then(|v| v.get("ignition")?.get("version")?.as_str().map(drop))
            .is_some()
}

/// Reads `USERDATA`; an Ignition config (with `IGNITION=auto`) is copied to `RUNTIME_DIR`
/// when `write` (`run`) or only located (`qemu-args`, which changes nothing).
pub(crate) fn prepare(
    mode: IgnitionMode,
    userdata: &Path,
    runtime_dir: &Path,
    write: bool,
) -> Result<Option<Ignition>, ConfigDriveError> {
    if mode == IgnitionMode::Off {
        return Ok(None);
    }
    let Some(found) = input::read("USERDATA", userdata, input::USER_DATA_KEYS)? else {
        return Ok(None);
    };
    if !is_ignition(&found.bytes) {
        return Ok(None);
    }
    let path = runtime_dir.join(FILE_NAME);
    let bytes = found.bytes.len() as u64;
    if write {
        crate::atomic_file::write(&path, &found.bytes).map_err(|source| {
            ConfigDriveError::Write {
                path: path.clone(),
                source,
            }
        })?;
        if bytes > SLOW_BYTES {
            tracing::warn!(
                bytes,
                limit = SLOW_BYTES,
                "the Ignition config is large: guests without fw_cfg DMA read it slowly; \
                 keep it small (fetch big files with Ignition's `source` URLs instead)"
            );
        }
        tracing::info!(path = %path.display(), bytes, fw_cfg = IGNITION_FW_CFG, "Ignition config passed by fw_cfg too");
    }
    Ok(Some(Ignition { path, bytes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_an_ignition_version_is_ignition() {
        assert!(is_ignition(br#"{"ignition": {"version": "3.4.0"}}"#));
        assert!(is_ignition(
            b"\n  {\"ignition\":{\"version\":\"2.2.0\"},\"storage\":{}}"
        ));
    }

    #[test]
    fn cloud_config_scripts_and_other_json_are_not_ignition() {
        assert!(!is_ignition(b"#cloud-config\nhostname: a\n"));
        assert!(!is_ignition(b"#!/bin/sh\necho hi\n"));
        assert!(!is_ignition(br#"{"ignition": {}}"#));
        assert!(!is_ignition(br#"{"ignition": {"version": 3}}"#));
        assert!(!is_ignition(br#"{"version": "3.4.0"}"#));
        assert!(!is_ignition(b"{not json"));
        assert!(!is_ignition(b""));
    }

    #[test]
    fn ignition_off_reads_nothing() {
        let got = prepare(
            IgnitionMode::Off,
            Path::new("/nonexistent"),
            Path::new("/run"),
            true,
        )
        .expect("off");
        assert_eq!(got, None);
    }

    #[test]
    fn an_ignition_user_data_is_copied_and_another_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let user_data = dir.path().join("user-data");
        let config = br#"{"ignition":{"version":"3.4.0"}}"#;
        std::fs::write(&user_data, config).expect("write");
        let got = prepare(IgnitionMode::Auto, &user_data, dir.path(), true)
            .expect("reads")
            .expect("an Ignition config");
        assert_eq!(got.path, dir.path().join("ignition.json"));
        assert_eq!(got.bytes, config.len() as u64);
        assert_eq!(std::fs::read(&got.path).expect("copied"), config);

        std::fs::write(&user_data, b"#cloud-config\n").expect("write");
        let other = tempfile::tempdir().expect("tempdir");
        let got = prepare(IgnitionMode::Auto, &user_data, other.path(), true).expect("reads");
        assert_eq!(got, None);
        assert!(!other.path().join("ignition.json").exists());
    }
}
