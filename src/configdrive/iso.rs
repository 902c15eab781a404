//! A [`Layout`] as ISO 9660 bytes, with Rock Ridge (Linux and BSD guests read the real
//! names and modes) and Joliet (Windows guests: cloudbase-init), written in memory by
//! hadris-iso.
//!
//! Deterministic by construction: hadris-iso reads no clock (every date is the fixed
//! [`IsoOptions::with_time`] value, 1980-01-01 unless set), the tree is sorted, and files
//! carry no host metadata (mode 0644, directories 0755, owner 0). Files with identical bytes
//! (`user_data` in both OpenStack versions) are hard links to one extent, so a large
//! user-data is stored once.

use std::collections::HashMap;
use std::path::Path;

use hadris_fs::{Node, Tree};
use hadris_iso::{IsoId, IsoLevel, IsoOptions};

use super::layout::Layout;
use super::ConfigDriveError;
use crate::atomic_file;

/// Written into the primary volume descriptor, so `isoinfo -d` says who made the drive.
const APPLICATION: &str = "KVM-MANAGER";

pub(crate) fn encode(layout: &Layout) -> Result<Vec<u8>, ConfigDriveError> {
    let tree = tree(layout)?;
    let options = options(layout);
    // Sized up front: growing a multi-megabyte Vec costs copies and page faults.
    let size = hadris_iso::plan(&tree, &options)
        .map_err(ConfigDriveError::BuildIso)?
        .size();
    let mut out: Vec<u8> = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    hadris_iso::sync::write(&mut out, &tree, &options).map_err(ConfigDriveError::BuildIso)?;
    Ok(out)
}

/// Writes the ISO to `path` atomically (a hidden temporary sibling renamed over it) but
/// without fsync: the drive is rebuilt from the ConfigMaps on every start, so durability would
/// only cost time (and the drive is in memory anyway: it is at most a few MiB, ConfigMaps and
/// Secrets are limited to 1 MiB).
pub(crate) fn write(layout: &Layout, path: &Path) -> Result<(), ConfigDriveError> {
    let bytes = encode(layout)?;
    atomic_file::write_unsynced(path, &bytes).map_err(|source| ConfigDriveError::Write {
        path: path.to_owned(),
        source,
    })
}

fn options(layout: &Layout) -> IsoOptions {
    IsoOptions::new()
        .with_id(IsoId::Volume, layout.label)
        .with_id(IsoId::Application, APPLICATION)
        // Level 2: 30-character primary names (META_DATA.JSON, not META_DAT.JSO) for readers
        // that ignore both extensions.
        .with_level(IsoLevel::L2)
        .with_rock_ridge()
        .with_joliet()
}

fn tree(layout: &Layout) -> Result<Tree, ConfigDriveError> {
    let mut tree = Tree::new();
    // Content length → paths already holding bytes of that length, to find duplicates
    // without hashing megabytes.
    let mut by_len: HashMap<usize, Vec<usize>> = HashMap::new();
    for (index, file) in layout.files.iter().enumerate() {
        let bytes = file.bytes();
        let twins = by_len.entry(bytes.len()).or_default();
        let twin = twins
            .iter()
            .map(|&i| &layout.files[i])
            .find(|other| !bytes.is_empty() && other.bytes() == bytes);
        match twin {
            Some(twin) => tree.link(&twin.path, &file.path),
            None => {
                twins.push(index);
                tree.insert(&file.path, Node::file(file.content.clone()))
            }
        }
        .map_err(ConfigDriveError::BuildIso)?;
    }
    Ok(tree)
}
