//! The tables a qcow2 header points at (L1, refcount, snapshots): each starts on a cluster
//! boundary, stays under qemu's size limit and lies within the file.

use super::{be32, be64, Layout, INCOMPAT_EXTL2};
use crate::size::ByteSize;

/// qemu's `QCOW_MAX_L1_SIZE` (bytes) and `QCOW_MAX_REFTABLE_SIZE` (bytes).
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// qemu's `QCOW_MAX_SNAPSHOTS`.
const MAX_SNAPSHOTS: u32 = 65536;

/// Checks the L1 table (large enough for `virtual_size`), the refcount table and the
/// snapshot table.
pub(super) fn check(
    head: &[u8],
    len: u64,
    layout: &Layout,
    virtual_size: u64,
) -> Result<(), String> {
    // One L1 entry maps one L2 table, which maps cluster/8 clusters (cluster/16 with
    // extended L2 entries).
    let l2_entry = if layout.incompatible & INCOMPAT_EXTL2 != 0 {
        16
    } else {
        8
    };
    let cluster = layout.cluster;
    let per_l1_entry = cluster * (cluster / l2_entry);
    let l1_needed = virtual_size.div_ceil(per_l1_entry);
    let l1_size = u64::from(be32(head, 36));
    let l1_offset = be64(head, 40);
    if l1_size < l1_needed {
        return Err(format!(
            "a corrupt qcow2 header: its L1 table has {l1_size} entries, but its virtual size \
             of {} needs {l1_needed}",
            ByteSize(virtual_size)
        ));
    }
    check_table(
        "L1 table",
        l1_offset,
        l1_size * 8,
        MAX_L1_BYTES,
        cluster,
        len,
    )?;

    let refcount_offset = be64(head, 48);
    let refcount_clusters = u64::from(be32(head, 56));
    if refcount_offset == 0 || refcount_clusters == 0 {
        return Err("a corrupt qcow2 header: it has no refcount table".to_owned());
    }
    check_table(
        "refcount table",
        refcount_offset,
        refcount_clusters * cluster,
        MAX_REFTABLE_BYTES,
        cluster,
        len,
    )?;

    let snapshots = be32(head, 60);
    let snapshots_offset = be64(head, 64);
    if snapshots > MAX_SNAPSHOTS {
        return Err(format!("a corrupt qcow2 header: {snapshots} snapshots"));
    }
    if snapshots > 0 {
        // Each entry is at least 40 bytes; the exact size needs the table itself.
        check_table(
            "snapshot table",
            snapshots_offset,
            u64::from(snapshots) * 40,
            u64::MAX,
            cluster,
            len,
        )?;
    }
    Ok(())
}

/// A table must start on a cluster boundary, stay under qemu's size limit and lie within
/// the file.
fn check_table(
    name: &str,
    offset: u64,
    bytes: u64,
    max: u64,
    cluster: u64,
    len: u64,
) -> Result<(), String> {
    if bytes > max {
        return Err(format!(
            "a corrupt qcow2 header: its {name} is too large ({bytes} bytes)"
        ));
    }
    if bytes == 0 {
        return Ok(());
    }
    if offset == 0 || !offset.is_multiple_of(cluster) {
        return Err(format!(
            "a corrupt qcow2 header: its {name} offset {offset} is not a cluster boundary"
        ));
    }
    let end = offset.saturating_add(bytes);
    if end > len {
        return Err(format!(
            "a truncated qcow2 image: its {name} ends at byte {end} but the file has only \
             {len} bytes"
        ));
    }
    Ok(())
}
