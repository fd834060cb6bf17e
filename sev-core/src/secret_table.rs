//! The EFI secret table: the layout of the secret area that LAUNCH_SECRET fills
//! and the guest kernel's `efi_secret` module reads.
//!
//! Little-endian throughout, GUIDs in EFI byte order: a header {GUID
//! 1e74f542-71dd-4d66-963e-ef4287ff173b, u32 total length including the header},
//! then entries {GUID, u32 length including the entry's 20-byte header, data},
//! then zero padding to a multiple of 16.

use crate::guid::Guid;

/// GUID that opens a secret table.
pub const TABLE_GUID: Guid = Guid::from_text("1e74f542-71dd-4d66-963e-ef4287ff173b");
/// GUID of the report-key entry the key broker adds to every secret table it
/// releases: JSON `{"launch_id":"<id>","report_key":"<base64 of 32 bytes>"}`.
/// The guest proves the secrets reached it through the PSP by MACing its status
/// report with that key (HMAC-SHA256, `kbsstatus.GuestStatus/Report`).
pub const REPORT_KEY_GUID: Guid = Guid::from_text("6c8e2b4a-3f1d-4e7a-9b5c-0d2f8a1e7c93");
/// Length of the table header and of each entry header.
pub const HEADER_LEN: usize = 20;
/// Most entries the guest's `efi_secret` module exposes.
pub const MAX_ENTRIES: usize = 64;

/// Why a secret table cannot be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// More entries than the guest exposes.
    #[error("a secret table holds at most {MAX_ENTRIES} entries, got {0}")]
    TooManyEntries(usize),
    /// An entry or the table does not fit the u32 length field.
    #[error("secret table too large")]
    TooLarge,
    /// Not a secret table.
    #[error("secret table header GUID is {0}, expected {TABLE_GUID}")]
    BadHeader(Guid),
    /// A length field that disagrees with the bytes.
    #[error("secret table is malformed at offset {offset}: {reason}")]
    Malformed {
        /// Byte offset of the bad field.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The entries of a secret table, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretTable {
    /// (GUID, data) pairs.
    pub entries: Vec<(Guid, Vec<u8>)>,
}

impl SecretTable {
    /// The table bytes, padded to a multiple of 16.
    pub fn encode(&self) -> Result<Vec<u8>, TableError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(TableError::TooManyEntries(self.entries.len()));
        }
        let body: usize = self.entries.iter().map(|(_, d)| HEADER_LEN + d.len()).sum();
        let total = u32::try_from(HEADER_LEN + body).map_err(|_| TableError::TooLarge)?;
        let mut out = Vec::with_capacity((HEADER_LEN + body + 15) & !15);
        out.extend_from_slice(&TABLE_GUID.efi_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        for (guid, data) in &self.entries {
            let len = u32::try_from(HEADER_LEN + data.len()).map_err(|_| TableError::TooLarge)?;
            out.extend_from_slice(&guid.efi_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(data);
        }
        out.resize((out.len() + 15) & !15, 0);
        Ok(out)
    }

    /// Reads a table (trailing padding allowed).
    pub fn decode(bytes: &[u8]) -> Result<SecretTable, TableError> {
        let header = read_header(bytes, 0)?;
        if header.0 != TABLE_GUID {
            return Err(TableError::BadHeader(header.0));
        }
        let total = header.1;
        if total < HEADER_LEN || total > bytes.len() {
            return Err(TableError::Malformed {
                offset: 16,
                reason: "total length outside the table",
            });
        }
        let mut at = HEADER_LEN;
        let mut entries = Vec::new();
        while at < total {
            let (guid, len) = read_header(bytes, at)?;
            let end = at
                .checked_add(len)
                .filter(|&e| len >= HEADER_LEN && e <= total)
                .ok_or(TableError::Malformed {
                    offset: at + 16,
                    reason: "entry length outside the table",
                })?;
            if entries.len() == MAX_ENTRIES {
                return Err(TableError::TooManyEntries(MAX_ENTRIES + 1));
            }
            let data = bytes.get(at + HEADER_LEN..end).unwrap_or_default();
            entries.push((guid, data.to_vec()));
            at = end;
        }
        Ok(SecretTable { entries })
    }
}

fn read_header(bytes: &[u8], at: usize) -> Result<(Guid, usize), TableError> {
    let h = bytes
        .get(at..at + HEADER_LEN)
        .ok_or(TableError::Malformed {
            offset: at,
            reason: "header runs past the end",
        })?;
    let mut g = [0u8; 16];
    g.copy_from_slice(h.get(..16).unwrap_or(&[0; 16]));
    let mut l = [0u8; 4];
    l.copy_from_slice(h.get(16..20).unwrap_or(&[0; 4]));
    Ok((Guid::from_efi_bytes(g), u32::from_le_bytes(l) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip() {
        let g = Guid::from_text("e6f5a162-d67f-4750-a67c-5d065f2a9910");
        let t = SecretTable {
            entries: vec![(g, b"{\"k\":\"v\"}".to_vec())],
        };
        let bytes = t.encode().unwrap();
        assert_eq!(bytes.len(), 64); // 20 + 20 + 9 = 49, padded
        assert_eq!(&bytes[..16], &TABLE_GUID.efi_bytes());
        assert_eq!(&bytes[16..20], &49u32.to_le_bytes());
        assert_eq!(&bytes[20..36], &g.efi_bytes());
        assert_eq!(&bytes[36..40], &29u32.to_le_bytes());
        assert_eq!(&bytes[49..], &[0u8; 15]);
        assert_eq!(SecretTable::decode(&bytes).unwrap(), t);
    }

    #[test]
    fn malformed_tables_are_errors() {
        let g = Guid::from_text("e6f5a162-d67f-4750-a67c-5d065f2a9910");
        let good = SecretTable {
            entries: vec![(g, vec![1, 2, 3])],
        }
        .encode()
        .unwrap();
        for cut in 0..good.len() {
            let _ = SecretTable::decode(&good[..cut]);
        }
        let mut bad = good.clone();
        bad[36] = 0xff; // entry length past the table
        assert!(SecretTable::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[36..40].copy_from_slice(&3u32.to_le_bytes()); // shorter than its header
        assert!(SecretTable::decode(&bad).is_err());
        let mut bad = good;
        bad[0] ^= 1;
        assert!(matches!(
            SecretTable::decode(&bad),
            Err(TableError::BadHeader(_))
        ));
        let many = SecretTable {
            entries: vec![(g, vec![]); 65],
        };
        assert_eq!(many.encode(), Err(TableError::TooManyEntries(65)));
    }
}
