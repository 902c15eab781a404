//! Vendor-data that makes cloud-init mount each of `SHARES` at `/mnt/TAG`, at every boot, so a
//! stock cloud image uses the shares with no user-data from the user.
//!
//! cloud-init's `mounts:` module is not used: it keeps only entries that name a block device
//! (or `host:path`), and drops a virtio-fs or 9p tag as a "nonexistent named mount"
//! (cloud-init 22.4, Debian 12). `bootcmd` runs at every boot, before most services: it tries
//! virtio-fs first, then 9p, so the guest needs not know which `SHARE_TRANSPORT` chose.
//! A user-data with its own `bootcmd` replaces ours (cloud-init's vendor-data rule): such a
//! user mounts the shares in it (the commands are in the README).

use hadris_fs::Content;
use serde_json::{json, Value};

use super::layout::{DriveFile, Format, Layout};
use super::ConfigDriveError;
use crate::qemu::shares::Share;

/// The shell command that mounts `share` at `/mnt/TAG` unless something is mounted there.
pub(crate) fn mount_command(share: &Share) -> String {
    let tag = &share.tag;
    let (ro, ro_9p) = if share.writable {
        ("", "")
    } else {
        ("-o ro ", ",ro")
    };
    format!(
        "mkdir -p /mnt/{tag} && {{ mountpoint -q /mnt/{tag} || mount -t virtiofs {ro}{tag} \
         /mnt/{tag} || mount -t 9p -o trans=virtio,version=9p2000.L{ro_9p} {tag} /mnt/{tag}; }}"
    )
}

/// The cloud-config vendor-data for `shares`; `None` without shares.
pub(crate) fn vendor_data(shares: &[Share]) -> Result<Option<String>, ConfigDriveError> {
    if shares.is_empty() {
        return Ok(None);
    }
    let commands: Vec<Value> = shares
        .iter()
        .map(|share| json!(["sh", "-c", mount_command(share)]))
        .collect();
    let yaml = serde_saphyr::to_string(&json!({ "bootcmd": commands })).map_err(|e| {
        ConfigDriveError::Encode {
            file: "vendor-data",
            source: Box::new(e),
        }
    })?;
    Ok(Some(format!("#cloud-config\n{yaml}")))
}

/// Adds the vendor-data to `layout`: `vendor-data` (NoCloud) or `vendor_data.json` with the
/// cloud-config under `cloud-init` (OpenStack, in each version's directory).
pub(crate) fn add_vendor_data(
    layout: &mut Layout,
    format: Format,
    shares: &[Share],
) -> Result<(), ConfigDriveError> {
    let Some(text) = vendor_data(shares)? else {
        return Ok(());
    };
    match format {
        Format::NoCloud => layout.files.push(DriveFile {
            path: "vendor-data".to_owned(),
            content: Content::from(text.into_bytes()),
        }),
        Format::ConfigDrive => {
            let mut bytes =
                serde_json::to_vec_pretty(&json!({ "cloud-init": text })).map_err(|e| {
                    ConfigDriveError::Encode {
                        file: "vendor_data.json",
                        source: Box::new(e),
                    }
                })?;
            bytes.push(b'\n');
            let content = Content::from(bytes);
            let dirs: Vec<String> = layout
                .files
                .iter()
                .filter_map(|f| f.path.strip_suffix("/meta_data.json").map(str::to_owned))
                .collect();
            for dir in dirs {
                layout.files.push(DriveFile {
                    path: format!("{dir}/vendor_data.json"),
                    content: content.clone(),
                });
            }
        }
    }
    layout.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, writable: bool) -> Share {
        Share {
            tag: tag.into(),
            path: format!("/{tag}").into(),
            writable,
            transport: None,
        }
    }

    #[test]
    fn a_read_only_share_is_mounted_read_only_by_either_transport() {
        assert_eq!(
            mount_command(&share("config", false)),
            "mkdir -p /mnt/config && { mountpoint -q /mnt/config || mount -t virtiofs -o ro \
             config /mnt/config || mount -t 9p -o trans=virtio,version=9p2000.L,ro config \
             /mnt/config; }"
        );
        assert!(!mount_command(&share("data", true)).contains("ro"));
    }

    #[test]
    fn no_shares_no_vendor_data() {
        assert_eq!(vendor_data(&[]).expect("encodes"), None);
    }

    #[test]
    fn vendor_data_is_cloud_config_with_one_bootcmd_per_share() {
        let text = vendor_data(&[share("config", false), share("data", true)])
            .expect("encodes")
            .expect("some");
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        let parsed: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
        let commands = parsed["bootcmd"].as_array().expect("a list");
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[1][2], mount_command(&share("data", true)));
    }
}
