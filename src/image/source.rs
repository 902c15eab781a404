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
mod tests;
