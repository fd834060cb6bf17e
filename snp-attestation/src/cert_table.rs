//! The certificate table that accompanies an extended attestation report
//! (SNP_GET_EXT_REPORT): 24-byte entries {GUID, offset, length} ended by an
//! all-zero entry, followed by the DER certificates the offsets point at.
//!
//! GUIDs are stored in RFC 4122 byte order (the hexadecimal digits of the
//! textual form, in order), which is what the host tools and the `sev` crate
//! write. Decoding also recognises the mixed-endian (EFI) byte order, so a
//! table from a host that used it still yields its certificates.

/// Largest table accepted, in bytes.
pub const MAX_TABLE_LEN: usize = 64 * 1024;

/// Most entries accepted, the terminating entry not counted.
pub const MAX_ENTRIES: usize = 64;

const ENTRY_LEN: usize = 24;

/// Why a certificate table is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertTableError {
    /// The table is larger than [`MAX_TABLE_LEN`].
    #[error("certificate table is {len} bytes, more than the {MAX_TABLE_LEN} accepted")]
    TooLarge {
        /// Length of the table.
        len: usize,
    },
    /// More than [`MAX_ENTRIES`] entries before the terminator.
    #[error("certificate table has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// The table ends inside an entry or without the all-zero terminator.
    #[error(
        "certificate table ends after {entries} entries without an all-zero terminating entry"
    )]
    Unterminated {
        /// Complete entries read before the end.
        entries: usize,
    },
    /// An entry's offset and length reach outside the table.
    #[error("certificate table entry {index} ({kind}) points at bytes {offset}..{offset}+{length}, outside the {table_len}-byte table")]
    OutOfBounds {
        /// Index of the entry, from 0.
        index: usize,
        /// What the entry's GUID names.
        kind: CertKind,
        /// The entry's offset field.
        offset: u32,
        /// The entry's length field.
        length: u32,
        /// Length of the table.
        table_len: usize,
    },
}

/// What a certificate table entry holds, from its GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (for a VLEK: the AMD SEV VLEK Key, ASVK, stored under the
    /// same GUID).
    Ask,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// Any other GUID, as its 16 bytes appeared in the table.
    Other([u8; 16]),
}

/// GUIDs in RFC 4122 byte order.
const KNOWN: [(CertKind, [u8; 16]); 4] = [
    (
        CertKind::Ark,
        guid(0xc0b406a4, 0xa803, 0x4952, 0x97433fb6014cd0ae),
    ),
    (
        CertKind::Ask,
        guid(0x4ab7b379, 0xbbac, 0x4fe4, 0xa02f05aef327c782),
    ),
    (
        CertKind::Vcek,
        guid(0x63da758d, 0xe664, 0x4564, 0xadc5f4b93be8accd),
    ),
    (
        CertKind::Vlek,
        guid(0xa8074bc2, 0xa25a, 0x483e, 0xaae639c045a0b8a1),
    ),
];

const fn guid(a: u32, b: u16, c: u16, d: u64) -> [u8; 16] {
    let a = a.to_be_bytes();
    let b = b.to_be_bytes();
    let c = c.to_be_bytes();
    let d = d.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Swaps between RFC 4122 and mixed-endian GUID byte order (the operation is
/// its own inverse).
fn swap_guid_order(g: [u8; 16]) -> [u8; 16] {
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = g;
    let mut out = [0u8; 16];
    let head = [a3, a2, a1, a0, b1, b0, c1, c0];
    for (dst, src) in out.iter_mut().zip(head.iter().chain(rest.iter())) {
        *dst = *src;
    }
    out
}

impl CertKind {
    /// The kind a table GUID names, accepting either byte order.
    pub fn from_guid(g: [u8; 16]) -> Self {
        let swapped = swap_guid_order(g);
        KNOWN
            .iter()
            .find(|(_, known)| *known == g || *known == swapped)
            .map_or(Self::Other(g), |(kind, _)| *kind)
    }

    /// The GUID written for this kind, in RFC 4122 byte order.
    pub fn guid(&self) -> [u8; 16] {
        match self {
            Self::Other(g) => *g,
            known => KNOWN
                .iter()
                .find(|(k, _)| k == known)
                .map_or([0; 16], |(_, g)| *g),
        }
    }
}

impl std::fmt::Display for CertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ark => f.write_str("ARK"),
            Self::Ask => f.write_str("ASK"),
            Self::Vcek => f.write_str("VCEK"),
            Self::Vlek => f.write_str("VLEK"),
            Self::Other(g) => {
                for (i, b) in g.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// One certificate from a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// What the entry's GUID names.
    pub kind: CertKind,
    /// The certificate's bytes (DER), not checked here.
    pub der: Vec<u8>,
}

/// Splits a certificate table into its entries. An empty or all-zero table
/// yields no entries. The certificates are not parsed.
pub fn decode_cert_table(blob: &[u8]) -> Result<Vec<CertEntry>, CertTableError> {
    if blob.len() > MAX_TABLE_LEN {
        return Err(CertTableError::TooLarge { len: blob.len() });
    }
    if blob.is_empty() {
        return Ok(Vec::new());
    }
    // Read every header up to the terminator before looking at offsets, so a
    // truncated table is reported as such rather than as a bad offset.
    let mut headers: Vec<(CertKind, u32, u32)> = Vec::new();
    let mut chunks = blob.chunks_exact(ENTRY_LEN);
    loop {
        let unterminated = CertTableError::Unterminated {
            entries: headers.len(),
        };
        let Some(raw) = chunks.next() else {
            return Err(unterminated);
        };
        let Ok(raw) = <&[u8; ENTRY_LEN]>::try_from(raw) else {
            return Err(unterminated);
        };
        if raw.iter().all(|b| *b == 0) {
            break;
        }
        if headers.len() == MAX_ENTRIES {
            return Err(CertTableError::TooManyEntries);
        }
        let [g @ .., o0, o1, o2, o3, l0, l1, l2, l3] = *raw;
        headers.push((
            CertKind::from_guid(g),
            u32::from_le_bytes([o0, o1, o2, o3]),
            u32::from_le_bytes([l0, l1, l2, l3]),
        ));
    }
    headers
        .into_iter()
        .enumerate()
        .map(|(index, (kind, offset, length))| {
            let der = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(length).ok())
                .and_then(|(o, l)| blob.get(o..o.checked_add(l)?))
                .ok_or(CertTableError::OutOfBounds {
                    index,
                    kind,
                    offset,
                    length,
                    table_len: blob.len(),
                })?;
            Ok(CertEntry {
                kind,
                der: der.to_vec(),
            })
        })
        .collect()
}

/// Builds a certificate table: the entries, the terminator, then the
/// certificates in the same order. Lengths beyond `u32::MAX` cannot occur in
/// a table the firmware accepts and are clamped.
pub fn encode_cert_table(entries: &[CertEntry]) -> Vec<u8> {
    let header_len = (entries.len() + 1) * ENTRY_LEN;
    let mut table =
        Vec::with_capacity(header_len + entries.iter().map(|e| e.der.len()).sum::<usize>());
    let mut offset = header_len;
    for e in entries {
        table.extend_from_slice(&e.kind.guid());
        table.extend_from_slice(&clamp(offset).to_le_bytes());
        table.extend_from_slice(&clamp(e.der.len()).to_le_bytes());
        offset += e.der.len();
    }
    table.extend_from_slice(&[0u8; ENTRY_LEN]);
    for e in entries {
        table.extend_from_slice(&e.der);
    }
    table
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<CertEntry> {
        vec![
            CertEntry {
                kind: CertKind::Ark,
                der: vec![1; 10],
            },
            CertEntry {
                kind: CertKind::Ask,
                der: vec![2; 20],
            },
            CertEntry {
                kind: CertKind::Vcek,
                der: vec![3; 30],
            },
            CertEntry {
                kind: CertKind::Other([9; 16]),
                der: vec![],
            },
        ]
    }

    #[test]
    fn round_trip() {
        let blob = encode_cert_table(&entries());
        assert_eq!(blob.len(), 5 * 24 + 60);
        assert_eq!(decode_cert_table(&blob).unwrap(), entries());
    }

    #[test]
    fn guids_are_written_in_rfc_order() {
        let blob = encode_cert_table(&entries()[..1]);
        assert_eq!(hex::encode(&blob[..16]), "c0b406a4a803495297433fb6014cd0ae");
        assert_eq!(&blob[16..20], &48u32.to_le_bytes());
        assert_eq!(&blob[20..24], &10u32.to_le_bytes());
    }

    #[test]
    fn mixed_endian_guids_are_recognised() {
        for (kind, g) in KNOWN {
            assert_eq!(CertKind::from_guid(g), kind);
            assert_eq!(CertKind::from_guid(swap_guid_order(g)), kind);
            assert_eq!(swap_guid_order(swap_guid_order(g)), g);
        }
        assert_eq!(CertKind::Vlek.to_string(), "VLEK");
        assert_eq!(
            CertKind::Other(CertKind::Vlek.guid()).to_string(),
            "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
        );
    }

    #[test]
    fn empty_and_zero_tables_have_no_entries() {
        assert_eq!(decode_cert_table(&[]).unwrap(), vec![]);
        assert_eq!(decode_cert_table(&[0; 4096]).unwrap(), vec![]);
    }

    #[test]
    fn refuses_entries_outside_the_blob() {
        let mut blob = encode_cert_table(&entries());
        // Make the ASK's length reach one byte past the end.
        let len = u32::try_from(blob.len()).unwrap();
        let ask_off = u32::from_le_bytes(blob[24 + 16..24 + 20].try_into().unwrap());
        blob[24 + 20..24 + 24].copy_from_slice(&(len - ask_off + 1).to_le_bytes());
        assert!(matches!(
            decode_cert_table(&blob),
            Err(CertTableError::OutOfBounds {
                index: 1,
                kind: CertKind::Ask,
                ..
            })
        ));
        // Offset + length overflowing u32 arithmetic must not wrap.
        let mut blob = encode_cert_table(&entries()[..1]);
        blob[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        blob[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_cert_table(&blob),
            Err(CertTableError::OutOfBounds { index: 0, .. })
        ));
    }

    #[test]
    fn refuses_unterminated_tables() {
        let blob = encode_cert_table(&entries()[..1]);
        assert_eq!(
            decode_cert_table(&blob[..24]),
            Err(CertTableError::Unterminated { entries: 1 })
        );
        assert_eq!(
            decode_cert_table(&blob[..30]),
            Err(CertTableError::Unterminated { entries: 1 })
        );
        assert_eq!(
            decode_cert_table(&[1; 10]),
            Err(CertTableError::Unterminated { entries: 0 })
        );
    }

    #[test]
    fn refuses_too_many_entries_and_large_blobs() {
        let many: Vec<_> = (0..=MAX_ENTRIES)
            .map(|_| CertEntry {
                kind: CertKind::Vcek,
                der: vec![0x30],
            })
            .collect();
        assert_eq!(
            decode_cert_table(&encode_cert_table(&many)),
            Err(CertTableError::TooManyEntries)
        );
        assert_eq!(
            decode_cert_table(&encode_cert_table(&many[..MAX_ENTRIES]))
                .unwrap()
                .len(),
            MAX_ENTRIES
        );
        assert_eq!(
            decode_cert_table(&vec![0; MAX_TABLE_LEN + 1]),
            Err(CertTableError::TooLarge {
                len: MAX_TABLE_LEN + 1
            })
        );
    }
}
