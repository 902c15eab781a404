//! Whether a base image is an installer ISO, decided by content (the ISO 9660 primary volume
//! descriptor's `CD001` at byte 32769), never by name: a URL need not end in `.iso`.
//!
//! An ISO base is not a disk to put an overlay on: the pet disk is then a blank qcow2 of
//! `VM_DISK_SIZE` and the ISO a read-only CD-ROM the VM installs from.

use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::Path;

/// Where ISO 9660's standard identifier sits: sector 16 (2048-byte sectors), byte 1.
const MAGIC_AT: u64 = 16 * 2048 + 1;
const MAGIC: &[u8; 5] = b"CD001";

/// The pure half: `bytes` read at [`MAGIC_AT`].
pub(crate) fn is_iso_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Reads the 5 bytes at [`MAGIC_AT`]; a file too short to hold them is no ISO.
pub(crate) fn is_iso(path: &Path) -> io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(MAGIC_AT))?;
    let mut magic = [0u8; 5];
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(is_iso_magic(&magic)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iso_is_known_by_its_volume_descriptor_not_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = vec![0u8; 40 * 1024];
        bytes[32769..32774].copy_from_slice(b"CD001");
        let iso = dir.path().join("installer.qcow2");
        std::fs::write(&iso, &bytes).expect("iso");
        assert!(is_iso(&iso).expect("read"));
        let disk = dir.path().join("disk.iso");
        std::fs::write(&disk, vec![0u8; 40 * 1024]).expect("disk");
        assert!(!is_iso(&disk).expect("read"));
        let short = dir.path().join("short");
        std::fs::write(&short, b"CD001").expect("short");
        assert!(!is_iso(&short).expect("read"));
    }
}
