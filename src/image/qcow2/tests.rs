//! Crafted headers: a valid one shaped like `qemu-img create -f qcow2 x 1G` writes it, then
//! one field at a time made wrong.

use super::*;

const CLUSTER: u64 = 1 << 16;
/// Header, refcount table, refcount block, L1 table: four clusters.
const LEN: u64 = 4 * CLUSTER;

fn put32(head: &mut [u8], at: usize, value: u32) {
    head[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn put64(head: &mut [u8], at: usize, value: u64) {
    head[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// A 1 GiB qcow2 header of `version`, followed by the end-of-extensions marker.
fn valid(version: u32) -> Vec<u8> {
    let mut head = vec![0u8; 4096];
    head[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut head, 4, version);
    put32(&mut head, 20, 16);
    put64(&mut head, 24, 1 << 30);
    put32(&mut head, 36, 2);
    put64(&mut head, 40, 3 * CLUSTER);
    put64(&mut head, 48, CLUSTER);
    put32(&mut head, 56, 1);
    if version == 3 {
        put32(&mut head, 96, 4);
        put32(&mut head, 100, 104);
    }
    head
}

fn refused(head: &[u8], len: u64) -> String {
    check(head, len).expect_err("the header must be refused")
}

#[test]
fn accepts_self_contained_v2_and_v3_headers() {
    for version in [2, 3] {
        assert_eq!(
            check(&valid(version), LEN),
            Ok(Header {
                version,
                virtual_size: 1 << 30
            })
        );
    }
}

#[test]
fn refuses_a_backing_file_and_names_it() {
    let mut head = valid(3);
    let name = b"/etc/shadow";
    head[512..512 + name.len()].copy_from_slice(name);
    put64(&mut head, 8, 512);
    put32(&mut head, 16, name.len() as u32);
    let err = refused(&head, LEN);
    assert!(err.contains("backing file \"/etc/shadow\""), "{err}");
    assert!(err.contains("self-contained"), "{err}");
}

#[test]
fn refuses_a_backing_file_whose_name_lies_beyond_the_head() {
    let mut head = valid(2);
    put64(&mut head, 8, 60_000);
    put32(&mut head, 16, 11);
    let err = refused(&head, LEN);
    assert!(err.contains("names a backing file;"), "{err}");
}

#[test]
fn refuses_the_external_data_file_feature_and_extension() {
    let mut flagged = valid(3);
    put64(&mut flagged, 72, INCOMPAT_DATA_FILE);
    assert!(refused(&flagged, LEN).contains("external data file"));

    let mut extension = valid(3);
    let name = b"/pet/other-vm.qcow2";
    put32(&mut extension, 104, EXT_DATA_FILE);
    put32(&mut extension, 108, name.len() as u32);
    extension[112..112 + name.len()].copy_from_slice(name);
    let err = refused(&extension, LEN);
    assert!(
        err.contains("external data file \"/pet/other-vm.qcow2\""),
        "{err}"
    );
}

#[test]
fn skips_known_extensions_to_find_a_data_file_after_them() {
    let mut head = valid(3);
    // A feature-name table of 48 bytes (padded to 48), then the data file name.
    put32(&mut head, 104, 0x6803_f857);
    put32(&mut head, 108, 48);
    put32(&mut head, 160, EXT_DATA_FILE);
    put32(&mut head, 164, 4);
    head[168..172].copy_from_slice(b"/dev");
    assert!(refused(&head, LEN).contains("external data file \"/dev\""));
}

#[test]
fn refuses_unknown_incompatible_features_naming_the_bits() {
    let mut head = valid(3);
    put64(&mut head, 72, 1 << 7 | 1 << 40);
    let err = refused(&head, LEN);
    assert!(err.contains("bits 7, 40"), "{err}");
}

#[test]
fn refuses_a_header_marked_corrupt_or_encrypted() {
    let mut corrupt = valid(3);
    put64(&mut corrupt, 72, INCOMPAT_CORRUPT);
    assert!(refused(&corrupt, LEN).contains("marked corrupt"));
    let mut encrypted = valid(2);
    put32(&mut encrypted, 32, 1);
    assert!(refused(&encrypted, LEN).contains("encrypted"));
}

#[test]
fn accepts_the_dirty_bit_of_a_base_that_is_only_read() {
    let mut head = valid(3);
    put64(&mut head, 72, 1);
    assert!(check(&head, LEN).is_ok());
}

#[test]
fn refuses_cluster_bits_outside_what_qemu_opens() {
    for bits in [0, 8, 22, 63] {
        let mut head = valid(3);
        put32(&mut head, 20, bits);
        let err = refused(&head, LEN);
        assert!(err.contains(&format!("cluster_bits {bits}")), "{err}");
    }
}

#[test]
fn refuses_a_virtual_size_of_one_pib_even_with_a_large_enough_l1() {
    let mut head = valid(3);
    let pib = 1u64 << 50;
    put64(&mut head, 24, pib);
    // 1 PiB / 512 MiB per L1 entry.
    put32(&mut head, 36, 1 << 21);
    let err = refused(&head, 1 << 30);
    assert!(err.contains("1024TiB"), "{err}");
    assert!(err.contains("above the limit of 64TiB"), "{err}");
}

#[test]
fn accepts_the_largest_virtual_size_allowed() {
    let mut head = valid(3);
    put64(&mut head, 24, MAX_VIRTUAL_SIZE);
    put32(&mut head, 36, (MAX_VIRTUAL_SIZE / (512 << 20)) as u32);
    assert!(check(&head, 1 << 30).is_ok());
}

#[test]
fn refuses_an_l1_table_too_small_for_the_virtual_size() {
    let mut head = valid(3);
    put32(&mut head, 36, 1);
    let err = refused(&head, LEN);
    assert!(err.contains("L1 table has 1 entries"), "{err}");
    assert!(err.contains("needs 2"), "{err}");
}

#[test]
fn extended_l2_entries_need_twice_the_l1() {
    let mut head = valid(3);
    put64(&mut head, 72, INCOMPAT_EXTL2);
    assert!(refused(&head, LEN).contains("needs 4"));
    put32(&mut head, 36, 4);
    assert!(check(&head, LEN).is_ok());
}

#[test]
fn refuses_tables_off_a_cluster_boundary_or_past_the_end() {
    let mut unaligned = valid(3);
    put64(&mut unaligned, 40, 3 * CLUSTER + 8);
    assert!(refused(&unaligned, LEN).contains("L1 table offset"));

    let mut beyond = valid(3);
    put64(&mut beyond, 48, 100 * CLUSTER);
    assert!(refused(&beyond, LEN).contains("refcount table ends at byte"));

    let mut none = valid(3);
    put64(&mut none, 48, 0);
    assert!(refused(&none, LEN).contains("no refcount table"));
}

#[test]
fn refuses_a_snapshot_table_past_the_end() {
    let mut head = valid(3);
    put32(&mut head, 60, 1);
    put64(&mut head, 64, 9 * CLUSTER);
    assert!(refused(&head, LEN).contains("snapshot table"));
}

#[test]
fn refuses_a_bad_v3_header_length_and_refcount_order() {
    let mut short = valid(3);
    put32(&mut short, 100, 96);
    assert!(refused(&short, LEN).contains("header_length 96"));
    let mut order = valid(3);
    put32(&mut order, 96, 7);
    assert!(refused(&order, LEN).contains("refcount_order 7"));
}

#[test]
fn refuses_an_oversized_header_extension() {
    let mut head = valid(3);
    put32(&mut head, 104, 0x1234_5678);
    put32(&mut head, 108, u32::MAX);
    assert!(refused(&head, LEN).contains("extension is too large"));
}

#[test]
fn never_panics_on_mutated_or_short_headers() {
    use proptest::prelude::*;
    let flips = proptest::collection::vec((0usize..200, any::<u8>()), 0..12);
    proptest!(|(flips in flips, cut in 0usize..4096, len in any::<u64>())| {
        let mut head = valid(3);
        for (at, byte) in flips {
            head[at] = byte;
        }
        head.truncate(cut.max(4));
        let _ = check(&head, len);
    });
}
