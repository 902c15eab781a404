//! What the bytes are: the compression of a download (by suffix or magic) and whether the
//! result is a disk image qemu can boot (qcow2 v2/v3 or raw) — pure functions over a file's
//! first bytes and its length, so that an HTML error page or a cut-off download is caught
//! before it becomes a permanent base image.

use std::fmt;

/// How many leading bytes [`inspect`] wants to see (more is fine, fewer only for short files).
pub(crate) const HEAD_LEN: usize = super::qcow2::HEAD_LEN;

/// Stream compression, undone while downloading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Xz,
    Gzip,
    Zstd,
}

impl Compression {
    /// Bytes needed to recognise every magic number.
    pub(crate) const MAGIC_LEN: usize = 6;

    /// From the last path segment of the source (`.xz`, `.gz`, `.zst`).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        if name.ends_with(".xz") {
            Some(Self::Xz)
        } else if name.ends_with(".gz") {
            Some(Self::Gzip)
        } else if name.ends_with(".zst") {
            Some(Self::Zstd)
        } else {
            None
        }
    }

    /// From the first bytes of the stream; `None` when no compression magic is there.
    pub(crate) fn from_magic(head: &[u8]) -> Self {
        if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Self::Xz
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "uncompressed",
            Self::Xz => "xz",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        })
    }
}

/// A disk image format qemu can use as a backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskFormat {
    Qcow2 { version: u32, virtual_size: u64 },
    Raw { size: u64 },
}

impl DiskFormat {
    /// The name qemu uses for it (`backing_fmt`).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Qcow2 { .. } => "qcow2",
            Self::Raw { .. } => "raw",
        }
    }

    /// The size the guest sees.
    pub(crate) fn virtual_size(&self) -> u64 {
        match *self {
            Self::Qcow2 { virtual_size, .. } => virtual_size,
            Self::Raw { size } => size,
        }
    }
}

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
const SECTOR: u64 = 512;

/// Decides what a file is from its first bytes (up to [`HEAD_LEN`]) and its length. The error
/// describes what was received, for an operator who will read it in `kubectl logs`; it never
/// quotes the bytes (the file may be `/etc/shadow`, or a page with a token in it).
pub(crate) fn inspect(head: &[u8], len: u64) -> Result<DiskFormat, String> {
    if len == 0 {
        return Err("an empty file".to_owned());
    }
    if head.starts_with(&QCOW2_MAGIC) {
        let header = super::qcow2::check(head, len)?;
        return Ok(DiskFormat::Qcow2 {
            version: header.version,
            virtual_size: header.virtual_size,
        });
    }
    if Compression::from_magic(head) != Compression::None {
        return Err(format!(
            "{} compressed data, not a disk image",
            Compression::from_magic(head)
        ));
    }
    let content = Content::of(head);
    if content.is_never_a_disk() {
        return Err(format!(
            "{} ({len} bytes), not a disk image{}",
            content.name(),
            content.hint()
        ));
    }
    if !len.is_multiple_of(SECTOR) {
        return Err(format!(
            "{} ({len} bytes), neither qcow2 nor a whole number of 512-byte sectors \
             (a truncated raw image?)",
            content.name()
        ));
    }
    Ok(DiskFormat::Raw { size: len })
}

/// What a file that is not an image looks like, judged from its first bytes: enough for an
/// operator to see what went wrong, without repeating the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Html,
    Text,
    Elf,
    Zip,
    Zeros,
    Binary,
}

impl Content {
    fn of(head: &[u8]) -> Self {
        let printable = |b: &u8| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e);
        if head.starts_with(b"\x7fELF") {
            Self::Elf
        } else if head.starts_with(b"PK\x03\x04") {
            Self::Zip
        } else if !head.is_empty() && head.iter().all(|b| *b == 0) {
            Self::Zeros
        } else if !head.is_empty() && head.iter().all(printable) {
            let lower = String::from_utf8_lossy(&head[..head.len().min(1024)]).to_ascii_lowercase();
            if lower.contains("<html") || lower.contains("<!doctype html") {
                Self::Html
            } else {
                Self::Text
            }
        } else {
            Self::Binary
        }
    }

    /// Content a raw disk never starts with (a raw disk may well start with zeros).
    fn is_never_a_disk(self) -> bool {
        matches!(self, Self::Html | Self::Text | Self::Elf | Self::Zip)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Html => "an HTML page",
            Self::Text => "text",
            Self::Elf => "an ELF executable",
            Self::Zip => "a zip archive",
            Self::Zeros => "zeros",
            Self::Binary => "binary data",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Self::Html | Self::Text => "; is the URL right, or does the server need a login?",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
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
}
