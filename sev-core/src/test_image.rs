//! Small firmware-shaped images for unit tests: a byte pattern with a footer
//! table and, optionally, SEV metadata, laid out as QEMU reads them.

#![allow(clippy::cast_possible_truncation, clippy::indexing_slicing)]

use crate::firmware::{FOOTER_TABLE_GUID, SEV_METADATA_GUID};
use crate::guid::Guid;

/// `len` bytes of a fixed pattern (byte `i` is `31 * i + salt`, modulo 256) with
/// a footer table holding `entries` (first = nearest the footer) and, if
/// `sections` (gpa, size, type) is given, SEV metadata 0x1000 bytes from the end.
pub fn image(
    len: usize,
    salt: u8,
    entries: &[(Guid, Vec<u8>)],
    sections: Option<&[(u32, u32, u32)]>,
) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect();
    let mut entries = entries.to_vec();
    if let Some(sections) = sections {
        let at = len - 0x1000;
        let size = 16 + 12 * sections.len();
        let mut meta = b"ASEV".to_vec();
        for v in [size as u32, 1, sections.len() as u32] {
            meta.extend_from_slice(&v.to_le_bytes());
        }
        for (gpa, size, kind) in sections {
            for v in [gpa, size, kind] {
                meta.extend_from_slice(&v.to_le_bytes());
            }
        }
        data[at..at + meta.len()].copy_from_slice(&meta);
        entries.push((SEV_METADATA_GUID, 0x1000u32.to_le_bytes().to_vec()));
    }
    let mut table = Vec::new();
    for (guid, value) in entries.iter().rev() {
        table.extend_from_slice(value);
        table.extend_from_slice(&((value.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&guid.efi_bytes());
    }
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(&FOOTER_TABLE_GUID.efi_bytes());
    let end = len - 32;
    data[end - table.len()..end].copy_from_slice(&table);
    data
}
