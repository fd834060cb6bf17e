//! The layout of an OVMF firmware image, as far as SEV launch measurement needs it.
//!
//! QEMU maps the firmware so that it ends at 4 GiB and reads two structures from its
//! last bytes: the GUIDed footer table (entries that grow backwards from 32 bytes
//! before the end) and, through one of its entries, the SEV metadata that lists the
//! pages an SNP launch pre-populates. The parser here reads both with bounds checks;
//! a malformed image gives a [`FirmwareError`] naming the structure, never a panic.

use crate::guid::Guid;

/// GUID that ends the footer table.
pub const FOOTER_TABLE_GUID: Guid = Guid::from_text("96b582de-1fb2-45f7-baea-a366c55a082d");
/// Footer entry giving the guest-physical address of the SEV hashes table.
pub const SEV_HASH_TABLE_RV_GUID: Guid = Guid::from_text("7255371f-3a3b-4b04-927b-1da6efa8d454");
/// Footer entry giving the SEV-ES application-processor reset vector.
pub const SEV_ES_RESET_BLOCK_GUID: Guid = Guid::from_text("00f771de-1a7e-4fcb-890e-68c77e2fb44e");
/// Footer entry giving the offset (from the end) of the SEV metadata.
pub const SEV_METADATA_GUID: Guid = Guid::from_text("dc886566-984a-4798-a75e-5585a7bf67cc");

/// Size of a footer table entry header: u16 length followed by a GUID.
const ENTRY_HEADER: usize = 18;
/// The footer entry ends this many bytes before the end of the image.
const FOOTER_GAP: usize = 32;
/// Size of the SEV metadata header: "ASEV", size, version, item count.
const METADATA_HEADER: usize = 16;
/// Size of one SEV metadata section descriptor: gpa, size, type.
const METADATA_ITEM: usize = 12;
/// Firmware is mapped so that it ends here.
const FOUR_GIB: u64 = 1 << 32;

/// Kinds of page ranges that SEV metadata asks the VMM to pre-populate for SNP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// Zeroed memory that the firmware validates early (`SNP_SEC_MEM`).
    SecMem,
    /// The SNP secrets page.
    Secrets,
    /// The CPUID page.
    Cpuid,
    /// The SVSM calling-area page; zero-filled when no SVSM runs.
    SvsmCaa,
    /// The page holding the SEV hashes table (kernel, initrd, command line).
    KernelHashes,
    /// A type this implementation does not know.
    Unknown(u32),
}

impl SectionKind {
    fn from_raw(raw: u32) -> SectionKind {
        match raw {
            1 => SectionKind::SecMem,
            2 => SectionKind::Secrets,
            3 => SectionKind::Cpuid,
            4 => SectionKind::SvsmCaa,
            0x10 => SectionKind::KernelHashes,
            other => SectionKind::Unknown(other),
        }
    }
}

/// One SEV metadata section: a guest-physical range and what goes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataSection {
    /// Guest-physical start address.
    pub gpa: u32,
    /// Length in bytes.
    pub size: u32,
    /// What the VMM puts there.
    pub kind: SectionKind,
}

/// Why a firmware image cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FirmwareError {
    /// Too short to hold a footer table.
    #[error("firmware is only {len} bytes; an OVMF image is megabytes long")]
    TooSmall {
        /// Image length.
        len: usize,
    },
    /// Does not fit below 4 GiB.
    #[error("firmware is {len} bytes, larger than the 4 GiB it must fit below")]
    TooLarge {
        /// Image length.
        len: usize,
    },
    /// The footer table's declared length runs past the start of the image.
    #[error("firmware footer table claims {size} bytes, more than the image holds")]
    FooterTableOverrun {
        /// Declared length.
        size: usize,
    },
    /// A footer entry's declared length is impossible.
    #[error("firmware footer table entry {guid} has invalid length {size}")]
    FooterEntryLength {
        /// Entry GUID.
        guid: Guid,
        /// Declared length.
        size: usize,
    },
    /// A footer entry is shorter than the value it must hold.
    #[error("firmware footer table entry {guid} holds {len} bytes, needs at least 4")]
    FooterEntryTooShort {
        /// Entry GUID.
        guid: Guid,
        /// Data length.
        len: usize,
    },
    /// The SEV metadata offset or header is malformed.
    #[error("firmware SEV metadata is malformed: {reason}")]
    BadMetadata {
        /// What is wrong.
        reason: String,
    },
}

/// A parsed firmware image: the bytes plus the footer entries and metadata it carries.
#[derive(Debug, Clone)]
pub struct Firmware<'a> {
    data: &'a [u8],
    /// Footer entries in the order the table is walked (from its end backwards).
    entries: Vec<(Guid, &'a [u8])>,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

fn guid_at(b: &[u8], at: usize) -> Option<Guid> {
    let s = b.get(at..at.checked_add(16)?)?;
    let mut a = [0u8; 16];
    a.copy_from_slice(s);
    Some(Guid::from_efi_bytes(a))
}

impl<'a> Firmware<'a> {
    /// Parses the footer table of `data`. An image without one (a non-SEV build) is
    /// valid: it measures as firmware alone.
    pub fn parse(data: &'a [u8]) -> Result<Firmware<'a>, FirmwareError> {
        let len = data.len();
        if u64::try_from(len).map_or(true, |l| l > FOUR_GIB) {
            return Err(FirmwareError::TooLarge { len });
        }
        let footer_at = len
            .checked_sub(FOOTER_GAP + ENTRY_HEADER)
            .ok_or(FirmwareError::TooSmall { len })?;
        let mut fw = Firmware {
            data,
            entries: Vec::new(),
        };
        let (Some(footer_size), Some(footer_guid)) =
            (le_u16(data, footer_at), guid_at(data, footer_at + 2))
        else {
            return Err(FirmwareError::TooSmall { len });
        };
        if footer_guid != FOOTER_TABLE_GUID {
            return Ok(fw);
        }
        let Some(table_size) = usize::from(footer_size).checked_sub(ENTRY_HEADER) else {
            return Ok(fw);
        };
        let table_start =
            footer_at
                .checked_sub(table_size)
                .ok_or(FirmwareError::FooterTableOverrun {
                    size: usize::from(footer_size),
                })?;
        let mut table = data
            .get(table_start..footer_at)
            .ok_or(FirmwareError::TooSmall { len })?;
        while table.len() >= ENTRY_HEADER {
            let hdr = table.len() - ENTRY_HEADER;
            let (Some(size), Some(guid)) = (le_u16(table, hdr), guid_at(table, hdr + 2)) else {
                break;
            };
            let size = usize::from(size);
            if size < ENTRY_HEADER || size > table.len() {
                return Err(FirmwareError::FooterEntryLength { guid, size });
            }
            let start = table.len() - size;
            let value = table.get(start..hdr).unwrap_or_default();
            fw.entries.push((guid, value));
            table = table.get(..start).unwrap_or_default();
        }
        Ok(fw)
    }

    /// The whole image.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Guest-physical address of the first byte: the image ends at 4 GiB.
    pub fn gpa(&self) -> u64 {
        FOUR_GIB - self.data.len() as u64
    }

    /// Whether the image has a footer table at all.
    pub fn has_footer_table(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The value of a footer entry. Where a GUID repeats, the entry nearest the start
    /// of the table wins, as in QEMU's table walk.
    pub fn entry(&self, guid: Guid) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .rev()
            .find(|(g, _)| *g == guid)
            .map(|(_, v)| *v)
    }

    /// The little-endian `u32` a footer entry starts with, if the entry is present.
    pub fn entry_u32(&self, guid: Guid) -> Result<Option<u32>, FirmwareError> {
        match self.entry(guid) {
            None => Ok(None),
            Some(v) => le_u32(v, 0)
                .map(Some)
                .ok_or(FirmwareError::FooterEntryTooShort { guid, len: v.len() }),
        }
    }

    /// Guest-physical address of the SEV hashes table, if the image reserves one.
    /// Zero means the build has the entry but no table (a generic OVMF).
    pub fn sev_hashes_table_gpa(&self) -> Result<Option<u32>, FirmwareError> {
        self.entry_u32(SEV_HASH_TABLE_RV_GUID)
    }

    /// Whether QEMU can place kernel, initrd and command line hashes in this image:
    /// like QEMU, this wants a non-zero table address and, where the entry states the
    /// area's size, room for the padded table.
    pub fn supports_kernel_hashes(&self) -> Result<bool, FirmwareError> {
        let Some(gpa) = self.sev_hashes_table_gpa()? else {
            return Ok(false);
        };
        let size = self
            .entry(SEV_HASH_TABLE_RV_GUID)
            .and_then(|v| le_u32(v, 4))
            .unwrap_or(u32::MAX);
        Ok(gpa != 0 && size as usize >= crate::hashes::PADDED_TABLE_LEN)
    }

    /// The SEV-ES reset vector for application processors, if present.
    pub fn sev_es_reset_eip(&self) -> Result<Option<u32>, FirmwareError> {
        self.entry_u32(SEV_ES_RESET_BLOCK_GUID)
    }

    /// The SEV metadata sections, or `None` when the image has no SEV metadata.
    pub fn metadata_sections(&self) -> Result<Option<Vec<MetadataSection>>, FirmwareError> {
        let Some(offset) = self.entry_u32(SEV_METADATA_GUID)? else {
            return Ok(None);
        };
        let bad = |reason: String| FirmwareError::BadMetadata { reason };
        let start = self
            .data
            .len()
            .checked_sub(offset as usize)
            .ok_or_else(|| {
                bad(format!(
                    "offset {offset} from the end lies before the image"
                ))
            })?;
        let header = self
            .data
            .get(start..start.saturating_add(METADATA_HEADER))
            .ok_or_else(|| bad(format!("header at offset {start} runs past the end")))?;
        if header.get(..4) != Some(b"ASEV".as_slice()) {
            return Err(bad("signature is not \"ASEV\"".into()));
        }
        let (Some(size), Some(version), Some(count)) =
            (le_u32(header, 4), le_u32(header, 8), le_u32(header, 12))
        else {
            return Err(bad("header truncated".into()));
        };
        if version != 1 {
            return Err(bad(format!("version {version}, only version 1 is known")));
        }
        let items = self
            .data
            .get(start.saturating_add(METADATA_HEADER)..start.saturating_add(size as usize))
            .ok_or_else(|| bad(format!("declared size {size} runs past the end")))?;
        let mut sections = Vec::new();
        for i in 0..count as usize {
            let at = i * METADATA_ITEM;
            let (Some(gpa), Some(size), Some(kind)) = (
                le_u32(items, at),
                le_u32(items, at + 4),
                le_u32(items, at + 8),
            ) else {
                return Err(bad(format!(
                    "{count} sections declared, only {} fit in {size} bytes",
                    items.len() / METADATA_ITEM
                )));
            };
            sections.push(MetadataSection {
                gpa,
                size,
                kind: SectionKind::from_raw(kind),
            });
        }
        Ok(Some(sections))
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    /// Builds an image of `len` bytes with the given footer entries (first = nearest
    /// the footer) and optional metadata placed 0x1000 bytes from the end.
    fn image(len: usize, entries: &[(Guid, Vec<u8>)]) -> Vec<u8> {
        let mut data = vec![0u8; len];
        let mut table = Vec::new();
        for (guid, value) in entries.iter().rev() {
            table.extend_from_slice(value);
            table.extend_from_slice(&((value.len() + ENTRY_HEADER) as u16).to_le_bytes());
            table.extend_from_slice(&guid.efi_bytes());
        }
        table.extend_from_slice(&((table.len() + ENTRY_HEADER) as u16).to_le_bytes());
        table.extend_from_slice(&FOOTER_TABLE_GUID.efi_bytes());
        let end = len - FOOTER_GAP;
        data[end - table.len()..end].copy_from_slice(&table);
        data
    }

    #[test]
    fn image_without_footer_has_no_entries() {
        let data = vec![0u8; 4096];
        let fw = Firmware::parse(&data).unwrap();
        assert!(!fw.has_footer_table());
        assert_eq!(fw.sev_hashes_table_gpa().unwrap(), None);
        assert_eq!(fw.metadata_sections().unwrap(), None);
        assert_eq!(fw.gpa(), (1u64 << 32) - 4096);
    }

    #[test]
    fn reads_entries_and_metadata() {
        let mut data = image(
            8192,
            &[
                (
                    SEV_HASH_TABLE_RV_GUID,
                    vec![0x00, 0x0c, 0x81, 0x00, 0, 4, 0, 0],
                ),
                (SEV_ES_RESET_BLOCK_GUID, vec![0x04, 0xb0, 0x80, 0x00]),
                (SEV_METADATA_GUID, 0x1000u32.to_le_bytes().to_vec()),
            ],
        );
        let m = 8192 - 0x1000;
        data[m..m + 4].copy_from_slice(b"ASEV");
        data[m + 4..m + 8].copy_from_slice(&40u32.to_le_bytes());
        data[m + 8..m + 12].copy_from_slice(&1u32.to_le_bytes());
        data[m + 12..m + 16].copy_from_slice(&2u32.to_le_bytes());
        for (i, (gpa, size, kind)) in [(0x80_0000u32, 0x9000u32, 1u32), (0x81_0000, 0x1000, 0x10)]
            .into_iter()
            .enumerate()
        {
            let at = m + 16 + 12 * i;
            data[at..at + 4].copy_from_slice(&gpa.to_le_bytes());
            data[at + 4..at + 8].copy_from_slice(&size.to_le_bytes());
            data[at + 8..at + 12].copy_from_slice(&kind.to_le_bytes());
        }
        let fw = Firmware::parse(&data).unwrap();
        assert_eq!(fw.sev_hashes_table_gpa().unwrap(), Some(0x0081_0c00));
        assert!(fw.supports_kernel_hashes().unwrap());
        assert_eq!(fw.sev_es_reset_eip().unwrap(), Some(0x0080_b004));
        let s = fw.metadata_sections().unwrap().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].kind, SectionKind::KernelHashes);
    }

    #[test]
    fn malformed_images_give_errors_not_panics() {
        assert!(matches!(
            Firmware::parse(&[0u8; 10]),
            Err(FirmwareError::TooSmall { len: 10 })
        ));
        // Footer claims a table longer than the image.
        let mut data = vec![0u8; 64];
        let at = 64 - FOOTER_GAP - ENTRY_HEADER;
        data[at..at + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        data[at + 2..at + 18].copy_from_slice(&FOOTER_TABLE_GUID.efi_bytes());
        assert!(matches!(
            Firmware::parse(&data),
            Err(FirmwareError::FooterTableOverrun { .. })
        ));
        // An entry of impossible length.
        let mut data = image(4096, &[(SEV_ES_RESET_BLOCK_GUID, vec![1, 2, 3, 4])]);
        let at = 4096 - FOOTER_GAP - 2 * ENTRY_HEADER;
        data[at..at + 2].copy_from_slice(&3u16.to_le_bytes());
        assert!(matches!(
            Firmware::parse(&data),
            Err(FirmwareError::FooterEntryLength { size: 3, .. })
        ));
        // A metadata offset beyond the image, and one with a bad signature.
        let data = image(4096, &[(SEV_METADATA_GUID, 9999u32.to_le_bytes().to_vec())]);
        assert!(Firmware::parse(&data).unwrap().metadata_sections().is_err());
        let data = image(4096, &[(SEV_METADATA_GUID, 100u32.to_le_bytes().to_vec())]);
        assert!(Firmware::parse(&data).unwrap().metadata_sections().is_err());
        // A reset-block entry too short for its value.
        let data = image(4096, &[(SEV_ES_RESET_BLOCK_GUID, vec![1, 2])]);
        assert!(Firmware::parse(&data).unwrap().sev_es_reset_eip().is_err());
    }
}
