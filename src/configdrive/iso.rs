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

use hadris_fs::{Content, Node, Tree};
use hadris_iso::{IsoId, IsoLevel, IsoOptions};

use super::layout::Layout;
use super::ConfigDriveError;

/// Written into the primary volume descriptor, so `isoinfo -d` says who made the drive.
const APPLICATION: &str = "KVM-MANAGER";

pub fn encode(layout: &Layout) -> Result<Vec<u8>, ConfigDriveError> {
    let tree = tree(layout)?;
    let options = IsoOptions::new()
        .with_id(IsoId::Volume, layout.label)
        .with_id(IsoId::Application, APPLICATION)
        // Level 2: 30-character primary names (META_DATA.JSON, not META_DAT.JSO) for readers
        // that ignore both extensions.
        .with_level(IsoLevel::L2)
        .with_rock_ridge()
        .with_joliet();
    let mut out: Vec<u8> = Vec::new();
    hadris_iso::sync::write(&mut out, &tree, &options).map_err(ConfigDriveError::BuildIso)?;
    Ok(out)
}

fn tree(layout: &Layout) -> Result<Tree, ConfigDriveError> {
    let mut tree = Tree::new();
    // Content length → paths already holding bytes of that length, to find duplicates
    // without hashing megabytes.
    let mut by_len: HashMap<usize, Vec<usize>> = HashMap::new();
    for (index, file) in layout.files.iter().enumerate() {
        let twins = by_len.entry(file.bytes.len()).or_default();
        let twin = twins
            .iter()
            .map(|&i| &layout.files[i])
            .find(|other| !file.bytes.is_empty() && other.bytes == file.bytes);
        match twin {
            Some(twin) => tree.link(&twin.path, &file.path),
            None => {
                twins.push(index);
                tree.insert(&file.path, Node::file(Content::bytes(file.bytes.to_vec())))
            }
        }
        .map_err(ConfigDriveError::BuildIso)?;
    }
    Ok(tree)
}
