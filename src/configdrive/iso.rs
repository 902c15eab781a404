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
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use hadris_fs::{Node, Tree};
use hadris_iso::{IsoId, IsoLevel, IsoOptions};
use hadris_storage::host::FileDevice;

use super::layout::Layout;
use super::ConfigDriveError;
use crate::atomic_file;

/// Written into the primary volume descriptor, so `isoinfo -d` says who made the drive.
const APPLICATION: &str = "KVM-MANAGER";

pub fn encode(layout: &Layout) -> Result<Vec<u8>, ConfigDriveError> {
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

/// Writes the ISO to `path` atomically (a hidden temporary sibling, fsynced, renamed, the
/// directory fsynced, as [`crate::atomic_file`] does), streaming it into the file instead of
/// holding a second copy of a large user-data in memory.
pub fn write(layout: &Layout, path: &Path) -> Result<(), ConfigDriveError> {
    let tree = tree(layout)?;
    let options = options(layout);
    // Every layout error surfaces here, so that errors while writing are I/O errors.
    hadris_iso::plan(&tree, &options).map_err(ConfigDriveError::BuildIso)?;
    let write_error = |source| ConfigDriveError::Write {
        path: path.to_owned(),
        source,
    };
    let temp = atomic_file::temp_path(path, &format!("tmp{}", std::process::id()));
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        let mut device = FileDevice::new(file)?;
        // Flushing the device fsyncs the file.
        hadris_iso::sync::write(&mut device, &tree, &options).map_err(io::Error::other)?;
        drop(device);
        fs::rename(&temp, path)?;
        atomic_file::sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error)
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
