//! EFI GUIDs as they appear in firmware and in SEV tables.
//!
//! EFI stores a GUID in "mixed-endian" order: the first three fields little-endian,
//! the last eight bytes as written. Every GUID this project reads from or writes to
//! firmware, hashes tables or secret tables uses that order, so the type keeps the
//! bytes in it and converts only when printing or parsing text.

use std::fmt;

/// A GUID, stored in EFI (mixed-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

/// A GUID string that is not of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GUID {text:?}: expected 8-4-4-4-12 hexadecimal digits")]
pub struct GuidParseError {
    /// The text that failed to parse (cut to 64 characters).
    pub text: String,
}

const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Positions of the 32 hex digits in canonical text form.
const DIGIT_POS: [usize; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29,
    30, 31, 32, 33, 34, 35,
];

/// Big-endian (text order) byte index -> EFI byte index.
const TEXT_TO_EFI: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];

impl Guid {
    /// Parses canonical text at compile time; invalid text fails the build.
    ///
    /// Only for constants: use [`Guid::parse`] for anything read at run time.
    #[allow(clippy::panic, clippy::indexing_slicing)]
    pub const fn from_text(text: &str) -> Guid {
        match Self::parse_bytes(text.as_bytes()) {
            Some(g) => g,
            None => panic!("invalid GUID constant"),
        }
    }

    #[allow(clippy::indexing_slicing)] // every index is bounded by the length check
    const fn parse_bytes(b: &[u8]) -> Option<Guid> {
        if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
            return None;
        }
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let hi = match hex_val(b[DIGIT_POS[2 * i]]) {
                Some(v) => v,
                None => return None,
            };
            let lo = match hex_val(b[DIGIT_POS[2 * i + 1]]) {
                Some(v) => v,
                None => return None,
            };
            out[TEXT_TO_EFI[i]] = (hi << 4) | lo;
            i += 1;
        }
        Some(Guid(out))
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    pub fn parse(text: &str) -> Result<Guid, GuidParseError> {
        Self::parse_bytes(text.as_bytes()).ok_or_else(|| GuidParseError {
            text: text.chars().take(64).collect(),
        })
    }

    /// The GUID from its 16 bytes in EFI order.
    pub const fn from_efi_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// The 16 bytes in EFI order, as firmware and SEV tables store them.
    pub const fn efi_bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 16];
        for (i, efi) in TEXT_TO_EFI.iter().enumerate() {
            if let (Some(t), Some(b)) = (text.get_mut(i), self.0.get(*efi)) {
                *t = *b;
            }
        }
        for (i, b) in text.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl std::str::FromStr for Guid {
    type Err = GuidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Guid::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efi_byte_order_matches_the_mixed_endian_layout() {
        // Python's uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
        let g = Guid::from_text("96b582de-1fb2-45f7-baea-a366c55a082d");
        assert_eq!(
            g.efi_bytes(),
            [
                0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a,
                0x08, 0x2d
            ]
        );
        assert_eq!(g.to_string(), "96b582de-1fb2-45f7-baea-a366c55a082d");
    }

    #[test]
    fn parse_accepts_upper_case_and_rejects_malformed_text() {
        let g = Guid::parse("E6F5A162-D67F-4750-A67C-5D065F2A9910");
        assert_eq!(
            g.map(|g| g.to_string()).ok().as_deref(),
            Some("e6f5a162-d67f-4750-a67c-5d065f2a9910")
        );
        for bad in [
            "",
            "e6f5a162d67f4750a67c5d065f2a9910",
            "e6f5a162-d67f-4750-a67c-5d065f2a991",
            "e6f5a162-d67f-4750-a67c-5d065f2a991g",
            "e6f5a162-d67f-4750-a67c-5d065f2a99100",
            "e6f5a162_d67f-4750-a67c-5d065f2a9910",
        ] {
            assert!(Guid::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
