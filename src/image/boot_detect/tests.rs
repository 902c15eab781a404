//! Synthetic images: GPT (ESP only, hybrid), MBR, a superfloppy, El Torito catalogs, and
//! mutations of each; plus the IO half on a raw file.

use super::*;

const LINUX: [u8; 16] = guid(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

/// A disk's first 34 sectors: a protective MBR (with or without boot code), a GPT header in
/// LBA 1 and 128 entries of 128 bytes from LBA 2, the first ones of `types`.
fn gpt(types: &[[u8; 16]], boot_code: bool) -> Vec<u8> {
    let mut disk = vec![0u8; 34 * 512];
    if boot_code {
        disk[..3].copy_from_slice(&[0xEB, 0x63, 0x90]);
    }
    disk[446 + 4] = 0xEE;
    disk[510..512].copy_from_slice(&[0x55, 0xAA]);
    disk[512..520].copy_from_slice(b"EFI PART");
    disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
    disk[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
    disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
    for (i, t) in types.iter().enumerate() {
        disk[1024 + 128 * i..1024 + 128 * i + 16].copy_from_slice(t);
    }
    disk
}

/// An MBR-only disk with partitions of `types` and, or not, boot code.
fn mbr(types: &[u8], boot_code: bool) -> Vec<u8> {
    let mut disk = vec![0u8; 1024];
    if boot_code {
        disk[..2].copy_from_slice(&[0xFA, 0x31]);
    }
    for (i, t) in types.iter().enumerate() {
        disk[446 + 16 * i + 4] = *t;
    }
    disk[510..512].copy_from_slice(&[0x55, 0xAA]);
    disk
}

fn decide(disk: &[u8]) -> Detection {
    match gpt_entries(disk) {
        Some(shape) => {
            let start = usize::try_from(shape.offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(shape.count * shape.size).unwrap_or(0));
            let bytes = disk
                .get(start.min(disk.len())..end.min(disk.len()))
                .unwrap_or(&[]);
            decide_disk(disk, Some((&shape, bytes)))
        }
        None => decide_disk(disk, None),
    }
}

#[test]
fn an_esp_only_gpt_disk_without_boot_code_is_uefi() {
    let found = decide(&gpt(&[ESP, LINUX], false));
    assert!(found.uefi, "{found:?}");
    assert!(found.why.contains("EFI system partition"), "{found:?}");
}

#[test]
fn hybrid_gpt_disks_are_bios() {
    // Debian's and Ubuntu's cloud images: a BIOS boot partition, an ESP and GRUB's boot.img.
    let hybrid = decide(&gpt(&[BIOS_BOOT, ESP, LINUX], true));
    assert!(!hybrid.uefi, "{hybrid:?}");
    assert_eq!(hybrid.why, "the MBR holds BIOS boot code");
    let partition_only = decide(&gpt(&[LINUX, BIOS_BOOT, ESP], false));
    assert_eq!(partition_only.why, "a GPT disk with a BIOS boot partition");
    let code_only = decide(&gpt(&[ESP], true));
    assert!(!code_only.uefi, "{code_only:?}");
    let no_esp = decide(&gpt(&[LINUX], false));
    assert_eq!(no_esp.why, "no EFI system partition");
}

#[test]
fn mbr_disks_are_uefi_only_with_an_efi_partition_and_no_boot_code() {
    assert!(decide(&mbr(&[0xEF], false)).uefi);
    assert!(!decide(&mbr(&[0xEF], true)).uefi);
    assert!(!decide(&mbr(&[0x83], true)).uefi);
    assert!(!decide(&mbr(&[0x83], false)).uefi);
}

#[test]
fn no_partition_table_is_bios() {
    for disk in [&[][..], &[0u8; 4096], &[0xFFu8; 1024], b"QFI\xfb"] {
        assert_eq!(decide(disk), bios("no partition table"), "{disk:?}");
    }
    // A FAT superfloppy (the test guest): a boot sector with code, no partitions.
    let mut fat = vec![0u8; 1024];
    fat[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    fat[3..11].copy_from_slice(b"SYSLINUX");
    fat[510..512].copy_from_slice(&[0x55, 0xAA]);
    assert!(!decide(&fat).uefi);
}

#[test]
fn a_truncated_or_implausible_gpt_is_not_trusted() {
    // The entries are cut off: no ESP seen, BIOS.
    let disk = gpt(&[ESP], false);
    let shape = gpt_entries(&disk).expect("a GPT");
    assert_eq!(
        shape,
        GptEntries {
            offset: 1024,
            count: 128,
            size: 128
        }
    );
    assert!(!decide_disk(&disk[..1024], Some((&shape, &[]))).uefi);
    assert!(!decide(&disk[..1030]).uefi, "the ESP's type is cut in half");
    // Entries of an impossible size, or an absurd number of them, or at LBA 0.
    for (at, value) in [(84, 100u32), (84, 0), (80, 0), (80, u32::MAX), (72, 0)] {
        let mut bad = disk.clone();
        bad[512 + at..512 + at + 4].copy_from_slice(&value.to_le_bytes());
        assert_eq!(gpt_entries(&bad), None, "field {at} = {value}");
    }
    let mut far = disk.clone();
    far[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(gpt_entries(&far), None);
}

/// Sector 17 and a catalog: the validation entry for `default_platform`, a bootable default
/// entry, then one section per `sections` platform with one bootable entry each.
fn iso(default_platform: u8, sections: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut record = vec![0u8; 2048];
    record[1..6].copy_from_slice(b"CD001");
    record[6] = 1;
    record[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
    record[0x47..0x4B].copy_from_slice(&20u32.to_le_bytes());
    let mut catalog = vec![0u8; 2048];
    catalog[0] = 1;
    catalog[1] = default_platform;
    catalog[30..32].copy_from_slice(&[0x55, 0xAA]);
    catalog[32] = 0x88;
    for (i, platform) in sections.iter().enumerate() {
        let at = 64 + 64 * i;
        catalog[at] = if i + 1 == sections.len() { 0x91 } else { 0x90 };
        catalog[at + 1] = *platform;
        catalog[at + 2] = 1;
        catalog[at + 32] = 0x88;
    }
    (record, catalog)
}

fn decide_iso_bytes(record: &[u8], catalog: &[u8]) -> Detection {
    decide_iso(boot_catalog(record).map(|_| catalog))
}

#[test]
fn an_iso_is_uefi_only_when_its_catalog_boots_nothing_but_efi() {
    let (record, catalog) = iso(PLATFORM_EFI, &[]);
    assert_eq!(boot_catalog(&record), Some(20 * 2048));
    assert!(decide_iso_bytes(&record, &catalog).uefi);
    // Installer ISOs that boot both ways (Debian, Windows): BIOS.
    let (record, catalog) = iso(PLATFORM_X86, &[PLATFORM_EFI]);
    assert_eq!(catalog_platforms(&catalog), [PLATFORM_X86, PLATFORM_EFI]);
    assert_eq!(
        decide_iso_bytes(&record, &catalog).why,
        "an ISO whose El Torito catalog has a BIOS entry"
    );
    let (record, catalog) = iso(PLATFORM_EFI, &[PLATFORM_EFI, PLATFORM_EFI]);
    assert!(decide_iso_bytes(&record, &catalog).uefi);
    // No boot record, or a catalog that fails validation.
    assert!(!decide_iso(None).uefi);
    let mut broken = catalog.clone();
    broken[31] = 0;
    assert!(!decide_iso_bytes(&record, &broken).uefi);
    assert_eq!(boot_catalog(&[0u8; 2048]), None);
}

/// Every synthetic image with bytes flipped, cut and appended, from a fixed seed: the deciding
/// code never panics.
#[test]
fn mutated_images_never_panic() {
    let (record, catalog) = iso(PLATFORM_X86, &[PLATFORM_EFI]);
    let seeds = [
        gpt(&[BIOS_BOOT, ESP, LINUX], true),
        gpt(&[ESP], false),
        mbr(&[0xEF, 0x83], false),
        [record.clone(), catalog.clone()].concat(),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..=next() % 4 {
            let at = (next() as usize) % bytes.len().max(1);
            match next() % 3 {
                // Most flips in the headers, where the parsing is.
                0 if !bytes.is_empty() => {
                    let at = at % bytes.len().min(2048);
                    bytes[at] = next() as u8;
                }
                1 => bytes.truncate(at),
                _ => bytes.extend((0..next() % 8).map(|_| next() as u8)),
            }
        }
        let _ = decide(&bytes);
        let (record, catalog) = bytes.split_at(bytes.len().min(2048));
        let _ = decide_iso_bytes(record, catalog);
        let _ = catalog_platforms(&bytes);
    }
}

#[test]
fn a_raw_file_is_read_as_a_disk_or_as_an_iso() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    let mut bytes = gpt(&[ESP], false);
    bytes.resize(1 << 20, 0);
    std::fs::write(&disk, &bytes).expect("disk");
    let raw = DiskFormat::Raw { size: 1 << 20 };
    assert!(detect(&disk, raw).expect("read").uefi);

    let image = dir.path().join("installer");
    let (record, catalog) = iso(PLATFORM_EFI, &[]);
    let mut bytes = vec![0u8; 22 * 2048];
    bytes[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
    bytes[17 * 2048..18 * 2048].copy_from_slice(&record);
    bytes[20 * 2048..21 * 2048].copy_from_slice(&catalog);
    std::fs::write(&image, &bytes).expect("iso");
    let found = detect(&image, raw).expect("read");
    assert_eq!(found.why, "an ISO whose El Torito catalog boots UEFI only");

    let short = dir.path().join("short");
    std::fs::write(&short, [0x55u8; 100]).expect("short");
    assert!(!detect(&short, raw).expect("read").uefi);
}
