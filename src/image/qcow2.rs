//! The qcow2 header of a base image, checked before it becomes the base of every pod: the
//! cheap structural checks qemu makes when it opens an image (and `qemu-img check` reports),
//! plus the rule qemu does not have — a base is **self-contained**. A header may name another
//! file (a backing file, an external data file); qemu would open that file and the guest
//! would read it as its disk, so `/etc/shadow` or another VM's pet disk could be read by
//! anyone who can publish an image. Such a base is refused, whatever the file it names.
//!
//! Layout: QEMU `docs/interop/qcow2.txt`. Pure functions over the first bytes and the length.

mod tables;

use crate::size::{ByteSize, TIB};

/// The largest virtual size a base may have: 64 TiB, the largest block volume the major
/// clouds offer (EBS, Persistent Disk). A larger disk cannot be backed by any volume a pod
/// can get, so such a header is broken or hostile (it also makes qemu allocate a huge L1).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 64 * TIB;

/// How many leading bytes the check wants: the header and its extensions, which live in
/// the first cluster and in practice in its first few hundred bytes.
pub(crate) const HEAD_LEN: usize = 64 * 1024;

const V2_HEADER_LEN: usize = 72;
const V3_MIN_HEADER_LEN: u32 = 104;
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits (`incompatible_features`, header bytes 72..80).
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Bits 0 (dirty) to 4 (extended L2) are the ones this check understands.
const INCOMPAT_KNOWN: u64 = 0b1_1111;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_CRYPTO: u32 = 0x0537_be77;

/// What a valid, self-contained header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub virtual_size: u64,
}

fn be32(head: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&head[at..at + 4]);
    u32::from_be_bytes(bytes)
}

fn be64(head: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&head[at..at + 8]);
    u64::from_be_bytes(bytes)
}

/// A file name from a header, safe to put in a log line: escaped and cut short.
fn quoted_name(head: &[u8], offset: u64, len: u64) -> String {
    let range = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(offset.saturating_add(len)).ok())
        .and_then(|(start, end)| head.get(start..end));
    match range {
        Some(bytes) => {
            let name: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
            format!(" {:?}", name)
        }
        None => String::new(),
    }
}

/// Checks a qcow2 header (`head` starts with the magic; `len` is the file's length). The
/// error says what is wrong, for an operator reading `kubectl logs`.
pub(crate) fn check(head: &[u8], len: u64) -> Result<Header, String> {
    let layout = layout(head, len)?;
    check_features(head, layout.header_len, layout.incompatible)?;
    if be32(head, 32) != 0 {
        return Err("an encrypted qcow2 image; a base image must not be encrypted".to_owned());
    }
    check_backing(head)?;
    let virtual_size = be64(head, 24);
    check_extensions(head, len, layout.header_len, layout.cluster)?;
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(format!(
            "a qcow2 image of virtual size {} ({virtual_size} bytes), above the limit of {} \
             (the largest block volume clouds offer): a broken or hostile header",
            ByteSize(virtual_size),
            ByteSize(MAX_VIRTUAL_SIZE)
        ));
    }
    tables::check(head, len, &layout, virtual_size)?;
    Ok(Header {
        version: layout.version,
        virtual_size,
    })
}

/// The header's shape, read by [`layout`] before anything else can be.
struct Layout {
    version: u32,
    /// Bytes per cluster.
    cluster: u64,
    header_len: u64,
    /// `incompatible_features` (0 for version 2).
    incompatible: u64,
}

/// The version, the cluster size and the header's length, each within what qemu accepts.
fn layout(head: &[u8], len: u64) -> Result<Layout, String> {
    if head.len() < V2_HEADER_LEN || len < V2_HEADER_LEN as u64 {
        return Err(format!(
            "a truncated qcow2 image: {len} bytes, less than its header"
        ));
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(format!(
            "a qcow2 image of version {version}; only versions 2 and 3 are supported"
        ));
    }
    let cluster_bits = be32(head, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(format!(
            "a corrupt qcow2 header: cluster_bits {cluster_bits} is outside \
             {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
        ));
    }
    let cluster = 1u64 << cluster_bits;
    if version == 2 {
        return Ok(Layout {
            version,
            cluster,
            header_len: V2_HEADER_LEN as u64,
            incompatible: 0,
        });
    }
    if head.len() < V3_MIN_HEADER_LEN as usize {
        return Err(format!(
            "a truncated qcow2 image: {len} bytes, less than its header"
        ));
    }
    let header_len = be32(head, 100);
    if header_len < V3_MIN_HEADER_LEN || u64::from(header_len) > cluster {
        return Err(format!(
            "a corrupt qcow2 header: header_length {header_len}"
        ));
    }
    let refcount_order = be32(head, 96);
    if refcount_order > 6 {
        return Err(format!(
            "a corrupt qcow2 header: refcount_order {refcount_order}"
        ));
    }
    Ok(Layout {
        version,
        cluster,
        header_len: u64::from(header_len),
        incompatible: be64(head, 72),
    })
}

/// A backing file is another file qemu would open as part of the disk: refused.
fn check_backing(head: &[u8]) -> Result<(), String> {
    let backing_offset = be64(head, 8);
    let backing_len = be32(head, 16);
    if backing_offset != 0 || backing_len != 0 {
        let name = if backing_len <= MAX_BACKING_NAME {
            quoted_name(head, backing_offset, u64::from(backing_len))
        } else {
            String::new()
        };
        return Err(format!(
            "a qcow2 image that names a backing file{name}; a base image must be \
             self-contained (flatten it with `qemu-img convert -O qcow2`)"
        ));
    }
    Ok(())
}

fn check_features(head: &[u8], header_len: u64, incompatible: u64) -> Result<(), String> {
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let bits: Vec<String> = (0..64)
            .filter(|bit| unknown & (1u64 << bit) != 0)
            .map(|bit| bit.to_string())
            .collect();
        return Err(format!(
            "a qcow2 image with unknown incompatible features (bits {}); qemu's meaning of \
             them cannot be checked",
            bits.join(", ")
        ));
    }
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(
            "a qcow2 image whose data lives in an external data file; a base image \
                    must be self-contained (flatten it with `qemu-img convert -O qcow2`)"
                .to_owned(),
        );
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(
            "a qcow2 image that qemu marked corrupt; repair it with `qemu-img check -r all` \
             or publish a fresh one"
                .to_owned(),
        );
    }
    let compression = if header_len > 104 {
        head.get(104).copied().unwrap_or(0)
    } else {
        0
    };
    let compression_flag = incompatible & INCOMPAT_COMPRESSION != 0;
    if compression > 1 || (compression != 0) != compression_flag {
        return Err(format!(
            "a corrupt qcow2 header: compression type {compression}"
        ));
    }
    Ok(())
}

/// Walks the header extensions (after the header, up to the end of the first cluster).
fn check_extensions(head: &[u8], len: u64, header_len: u64, cluster: u64) -> Result<(), String> {
    let end = cluster.min(len);
    let mut at = header_len;
    while at < end {
        let Some(fixed) = usize::try_from(at).ok().and_then(|at| head.get(at..at + 8)) else {
            return Err(format!(
                "a qcow2 image whose header extensions run past its first {} (not checkable)",
                ByteSize(head.len() as u64)
            ));
        };
        let kind = be32(fixed, 0);
        let ext_len = u64::from(be32(fixed, 4));
        if kind == EXT_END {
            return Ok(());
        }
        if end - at < 8 || ext_len > end - at - 8 {
            return Err("a corrupt qcow2 header: a header extension is too large".to_owned());
        }
        match kind {
            EXT_DATA_FILE => {
                let name = quoted_name(head, at + 8, ext_len);
                return Err(format!(
                    "a qcow2 image that names an external data file{name}; a base image must \
                     be self-contained (flatten it with `qemu-img convert -O qcow2`)"
                ));
            }
            EXT_CRYPTO => {
                return Err(
                    "an encrypted qcow2 image; a base image must not be encrypted".to_owned(),
                );
            }
            _ => {}
        }
        at += 8 + ext_len.next_multiple_of(8);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
