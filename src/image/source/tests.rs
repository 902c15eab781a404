//! What a download's first bytes make of it: a disk qemu can boot, or what else it is.

use super::*;

fn qcow2_head(version: u32, l1_offset: u64, refcount_offset: u64) -> Vec<u8> {
    let mut head = vec![0u8; 112];
    head[..4].copy_from_slice(&QCOW2_MAGIC);
    head[4..8].copy_from_slice(&version.to_be_bytes());
    head[20..24].copy_from_slice(&16u32.to_be_bytes());
    head[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
    head[36..40].copy_from_slice(&2u32.to_be_bytes());
    head[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    head[48..56].copy_from_slice(&refcount_offset.to_be_bytes());
    head[56..60].copy_from_slice(&1u32.to_be_bytes());
    if version == 3 {
        head[96..100].copy_from_slice(&4u32.to_be_bytes());
        head[100..104].copy_from_slice(&104u32.to_be_bytes());
    }
    head
}

#[test]
fn recognises_qcow2_v2_and_v3_with_their_virtual_size() {
    for version in [2, 3] {
        let head = qcow2_head(version, 3 << 16, 1 << 16);
        assert_eq!(
            inspect(&head, 4 << 16),
            Ok(DiskFormat::Qcow2 {
                version,
                virtual_size: 1 << 30
            })
        );
    }
}

#[test]
fn rejects_a_qcow2_whose_tables_lie_past_the_end() {
    let head = qcow2_head(3, 3 << 16, 1 << 16);
    let err = inspect(&head, 100_000).expect_err("truncated");
    assert!(err.contains("truncated qcow2"), "{err}");
}

#[test]
fn rejects_unknown_qcow2_versions() {
    let err = inspect(&qcow2_head(4, 0, 0), 1 << 20).expect_err("v4");
    assert!(err.contains("version 4"), "{err}");
}

#[test]
fn describes_an_html_page_without_quoting_it() {
    let page = b"<!DOCTYPE html>\n<html><body>Not found</body></html>\n";
    let err = inspect(page, page.len() as u64).expect_err("html");
    assert!(err.starts_with("an HTML page (52 bytes)"), "{err}");
    assert!(
        !err.contains("DOCTYPE") && !err.contains("Not found"),
        "{err}"
    );
}

#[test]
fn describes_shadow_like_text_without_quoting_any_of_it() {
    let shadow = b"root:$y$j9T$secrethash:19000:0:99999:7:::\ndaemon:*:19000::::::\n";
    let err = inspect(shadow, shadow.len() as u64).expect_err("text");
    assert!(
        err.starts_with("text (63 bytes), not a disk image"),
        "{err}"
    );
    for secret in ["root", "secrethash", "daemon", "19000"] {
        assert!(!err.contains(secret), "{err}");
    }
}

#[test]
fn describes_executables_archives_zeros_and_binary_data() {
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0);
    assert!(inspect(&elf, 4096)
        .expect_err("elf")
        .starts_with("an ELF executable"));
    let zip = b"PK\x03\x04rest";
    assert!(inspect(zip, 512)
        .expect_err("zip")
        .starts_with("a zip archive"));
    let zeros = vec![0u8; 1000];
    let err = inspect(&zeros, 1000).expect_err("odd size");
    assert!(err.starts_with("zeros (1000 bytes)"), "{err}");
    let binary = [0x01u8, 0xfe, 0x80, 0x00, 0x10];
    let err = inspect(&binary, 5).expect_err("odd size");
    assert!(err.starts_with("binary data (5 bytes)"), "{err}");
    assert!(!err.contains("\\x"), "{err}");
}

#[test]
fn rejects_plain_text_and_empty_files() {
    let err = inspect(b"Access denied\n", 14).expect_err("text");
    assert!(err.starts_with("text"), "{err}");
    assert!(!err.contains("Access"), "{err}");
    assert_eq!(inspect(b"", 0), Err("an empty file".to_owned()));
}

#[test]
fn accepts_raw_disks_of_whole_sectors_only() {
    let mut mbr = vec![0u8; 512];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    assert_eq!(
        inspect(&mbr, 1 << 20),
        Ok(DiskFormat::Raw { size: 1 << 20 })
    );
    let err = inspect(&mbr, (1 << 20) + 100).expect_err("partial sector");
    assert!(err.contains("512-byte sectors"), "{err}");
}

#[test]
fn compressed_data_is_not_a_disk() {
    let err = inspect(&[0x1f, 0x8b, 8, 0, 0, 0], 512).expect_err("gzip");
    assert!(err.starts_with("gzip"), "{err}");
}

#[test]
fn compression_by_name_and_by_magic() {
    assert_eq!(Compression::from_name("d.qcow2.xz"), Some(Compression::Xz));
    assert_eq!(Compression::from_name("d.raw.gz"), Some(Compression::Gzip));
    assert_eq!(
        Compression::from_name("d.qcow2.zst"),
        Some(Compression::Zstd)
    );
    assert_eq!(Compression::from_name("d.qcow2"), None);
    assert_eq!(
        Compression::from_magic(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
        Compression::Xz
    );
    assert_eq!(
        Compression::from_magic(&[0x28, 0xb5, 0x2f, 0xfd]),
        Compression::Zstd
    );
    assert_eq!(Compression::from_magic(b"QFI\xfb"), Compression::None);
}
