//! What a base image boots with, for `FIRMWARE=auto`: read once, at the VM's first boot.
//!
//! A disk boots under UEFI alone when it has an EFI system partition (GPT type
//! C12A7328-F81F-11D2-BA4B-00A0C93EC93B, or MBR type 0xEF) and no BIOS boot code: no code in
//! the MBR's first 440 bytes and no GPT "BIOS boot" partition (GRUB's core image for BIOS).
//! Anything else is BIOS: hybrid cloud images boot both ways and BIOS is what they were
//! always booted with here; a disk without a partition table (a FAT "superfloppy", raw
//! unknown bytes) too. An ISO is UEFI-only when its El Torito boot catalog names only the
//! EFI platform (0xEF); one with an x86 (BIOS) entry, or none, is BIOS.
//!
//! The deciding half is pure and never panics on any bytes; [`detect`] reads the few sectors
//! it needs (MBR, GPT header and entries: ~17 KiB; an ISO's boot record and catalog: 4 KiB)
//! through the file (raw, ISO) or in-process through imago (qcow2), with no child process.
//! Only 512-byte logical sectors are read: what every cloud image and qemu's default disk use.

use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::FormatAccess;

use super::source::DiskFormat;

const SECTOR: u64 = 512;
/// The GPT partition type of an EFI system partition, as stored (mixed-endian).
const ESP: [u8; 16] = guid(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// GRUB's "BIOS boot" partition, where its BIOS core image lives on a GPT disk.
const BIOS_BOOT: [u8; 16] = guid(
    0x2168_6148,
    0x6449,
    0x6E6F,
    [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);
/// At most this many bytes of GPT entries are read (the usual 128 × 128 is 16 KiB).
const MAX_ENTRIES_LEN: u64 = 1 << 20;
/// ISO 9660: 2048-byte sectors; El Torito's boot record volume descriptor is in sector 17.
const ISO_SECTOR: u64 = 2048;
const BOOT_RECORD_AT: u64 = 17 * ISO_SECTOR;
/// El Torito platform ids.
const PLATFORM_X86: u8 = 0x00;
const PLATFORM_EFI: u8 = 0xEF;

/// A GUID's on-disk bytes: the first three fields little-endian, the rest as written.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// What the base boots with, and why (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Detection {
    pub uefi: bool,
    pub why: &'static str,
}

/// What a base that cannot be read (e.g. a qcow2 feature imago lacks, such as extended L2
/// entries) is taken for: BIOS, what every VM booted before `FIRMWARE=auto` existed.
pub(crate) const UNREADABLE: Detection = bios("the base's partition table could not be read");

const fn uefi(why: &'static str) -> Detection {
    Detection { uefi: true, why }
}

const fn bios(why: &'static str) -> Detection {
    Detection { uefi: false, why }
}

/// Where a GPT's partition entries are, from its header in LBA 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GptEntries {
    pub offset: u64,
    pub count: u64,
    pub size: u64,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(b);
    Some(u64::from_le_bytes(word))
}

/// The GPT header in `head` (LBA 0 and 1, at least 1024 bytes), if there is a plausible one:
/// its signature and an entry table of sane shape. The backup header is not needed.
pub(crate) fn gpt_entries(head: &[u8]) -> Option<GptEntries> {
    let header = head.get(SECTOR as usize..2 * SECTOR as usize)?;
    if !header.starts_with(b"EFI PART") {
        return None;
    }
    let lba = u64_at(header, 72)?;
    let count = u64::from(u32_at(header, 80)?);
    let size = u64::from(u32_at(header, 84)?);
    // UEFI: an entry is 128 × 2^n bytes.
    if lba < 2 || size < 128 || !size.is_power_of_two() || count == 0 {
        return None;
    }
    let offset = lba.checked_mul(SECTOR)?;
    let len = count.checked_mul(size)?;
    (len <= MAX_ENTRIES_LEN).then_some(GptEntries {
        offset,
        count,
        size,
    })
}

/// The deciding half for a disk: `head` is LBA 0 and 1 (shorter when the image is), `entries`
/// the bytes at [`gpt_entries`] (shorter when the image is) when there is a GPT.
pub(crate) fn decide_disk(head: &[u8], entries: Option<(&GptEntries, &[u8])>) -> Detection {
    let mbr = match head.get(..SECTOR as usize) {
        Some(mbr) if mbr[510..512] == [0x55, 0xAA] => mbr,
        _ => return bios("no partition table"),
    };
    let boot_code = mbr[..440].iter().any(|&b| b != 0);
    let (esp, bios_boot, gpt) = match entries {
        Some((shape, bytes)) => {
            let types: Vec<&[u8]> = bytes
                .chunks(usize::try_from(shape.size).unwrap_or(usize::MAX))
                .filter_map(|entry| entry.get(..16))
                .collect();
            (
                types.iter().any(|t| *t == ESP),
                types.iter().any(|t| *t == BIOS_BOOT),
                true,
            )
        }
        None => {
            let types = || (0..4).map(|i| mbr[446 + 16 * i + 4]);
            (types().any(|t| t == 0xEF), false, false)
        }
    };
    match (esp, boot_code, bios_boot) {
        (true, false, false) if gpt => {
            uefi("a GPT disk with an EFI system partition and no BIOS boot code")
        }
        (true, false, false) => {
            uefi("an MBR disk with an EFI system partition (type 0xEF) and no BIOS boot code")
        }
        (_, true, _) => bios("the MBR holds BIOS boot code"),
        (_, _, true) => bios("a GPT disk with a BIOS boot partition"),
        (false, _, _) => bios("no EFI system partition"),
    }
}

/// Where the El Torito boot catalog is, from the boot record volume descriptor (sector 17).
pub(crate) fn boot_catalog(boot_record: &[u8]) -> Option<u64> {
    let id = boot_record.get(..39)?;
    if id[0] != 0 || &id[1..6] != b"CD001" || !id[7..].starts_with(b"EL TORITO SPECIFICATION") {
        return None;
    }
    u64::from(u32_at(boot_record, 0x47)?).checked_mul(ISO_SECTOR)
}

/// The platforms an El Torito catalog has bootable entries for: the validation entry's (for
/// the default entry), then each section header's, until the final one.
pub(crate) fn catalog_platforms(catalog: &[u8]) -> Vec<u8> {
    let mut platforms = Vec::new();
    let mut entries = catalog.chunks_exact(32);
    let (Some(validation), Some(default)) = (entries.next(), entries.next()) else {
        return platforms;
    };
    if validation[0] != 1 || validation[30..32] != [0x55, 0xAA] {
        return platforms;
    }
    if default[0] == 0x88 {
        platforms.push(validation[1]);
    }
    let mut in_section = None;
    for entry in entries {
        match (entry[0], in_section) {
            // A section header: 0x90, or 0x91 for the last one.
            (0x90 | 0x91, _) => in_section = Some((entry[1], entry[0] == 0x91)),
            // A bootable entry of the current section.
            (0x88, Some((platform, _))) => platforms.push(platform),
            // Not bootable, or an extension entry.
            (0x00 | 0x44, Some(_)) => {}
            _ => break,
        }
    }
    platforms
}

/// The deciding half for an ISO: `catalog` is the sector [`boot_catalog`] points at (`None`
/// without an El Torito boot record).
pub(crate) fn decide_iso(catalog: Option<&[u8]>) -> Detection {
    let Some(catalog) = catalog else {
        return bios("an ISO without an El Torito boot catalog");
    };
    let platforms = catalog_platforms(catalog);
    if platforms.contains(&PLATFORM_EFI) && !platforms.contains(&PLATFORM_X86) {
        uefi("an ISO whose El Torito catalog boots UEFI only")
    } else if platforms.contains(&PLATFORM_X86) {
        bios("an ISO whose El Torito catalog has a BIOS entry")
    } else {
        bios("an ISO without a bootable El Torito entry")
    }
}

/// Reads `len` guest-visible bytes at `offset`; past the end reads as short or zeros.
type ReadAt<'a> = dyn FnMut(u64, u64) -> io::Result<Vec<u8>> + 'a;

fn detect_disk(read: &mut ReadAt<'_>) -> io::Result<Detection> {
    let head = read(0, 2 * SECTOR)?;
    let Some(shape) = gpt_entries(&head) else {
        return Ok(decide_disk(&head, None));
    };
    let bytes = read(shape.offset, shape.count * shape.size)?;
    Ok(decide_disk(&head, Some((&shape, &bytes))))
}

fn detect_iso(read: &mut ReadAt<'_>) -> io::Result<Detection> {
    let record = read(BOOT_RECORD_AT, ISO_SECTOR)?;
    let catalog = match boot_catalog(&record) {
        Some(at) => Some(read(at, ISO_SECTOR)?),
        None => None,
    };
    Ok(decide_iso(catalog.as_deref()))
}

/// Reads what the base at `path` (of `format`, as checked) boots with.
pub(crate) fn detect(path: &Path, format: DiskFormat) -> io::Result<Detection> {
    match format {
        DiskFormat::Raw { .. } => {
            let mut file = std::fs::File::open(path)?;
            let mut read = |offset: u64, len: u64| -> io::Result<Vec<u8>> {
                file.seek(SeekFrom::Start(offset))?;
                let mut bytes = Vec::new();
                (&mut file).take(len).read_to_end(&mut bytes)?;
                Ok(bytes)
            };
            if super::iso_detect::is_iso(path)? {
                detect_iso(&mut read)
            } else {
                detect_disk(&mut read)
            }
        }
        DiskFormat::Qcow2 { .. } => {
            // Only this file: a base is self-contained (the image check refuses a backing file).
            let image = FormatAccess::new(Qcow2::<ImagoFile>::open_path(path, false)?);
            let size = image.size();
            let mut read = |offset: u64, len: u64| -> io::Result<Vec<u8>> {
                let len = len.min(size.saturating_sub(offset));
                let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
                image.read(&mut bytes[..], offset)?;
                Ok(bytes)
            };
            detect_disk(&mut read)
        }
    }
}

#[cfg(test)]
mod tests;
