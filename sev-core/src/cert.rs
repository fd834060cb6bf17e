//! The SEV platform certificate format (AMD SEV API specification, appendix
//! "Certificates"), as far as the guest owner needs it: reading the PDH's public
//! key and writing the guest owner's Diffie-Hellman certificate (GODH).
//!
//! Chain signatures are verified elsewhere (by the `sev` crate, in the key
//! broker); this module only lays bytes out. A certificate is 0x824 bytes,
//! little-endian: version u32, API major and minor u8, reserved u16, public key
//! usage u32, algorithm u32, a 0x404-byte key area (for P-384: curve u32, x and y
//! as 72-byte little-endian integers), then two 0x208-byte signature slots.

/// Length of one SEV certificate.
pub const CERT_LEN: usize = 0x824;
const KEY_AT: usize = 0x10;
const SIG1_AT: usize = 0x414;
const SIG2_AT: usize = 0x61c;
const COORD_LEN: usize = 72;
/// Usage of a platform Diffie-Hellman key.
pub const USAGE_PDH: u32 = 0x1003;
/// Usage of an empty signature slot.
pub const USAGE_INVALID: u32 = 0x1000;
/// ECDH with SHA-256.
pub const ALGO_ECDH_SHA256: u32 = 0x3;
/// ECDH with SHA-384.
pub const ALGO_ECDH_SHA384: u32 = 0x103;
/// The NIST P-384 curve.
pub const CURVE_P384: u32 = 2;

/// Why a certificate cannot be used as a Diffie-Hellman key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Wrong size.
    #[error("SEV certificate must be {CERT_LEN} bytes, got {0}")]
    Length(usize),
    /// Not a version 1 certificate.
    #[error("SEV certificate version {0} is not supported (expected 1)")]
    Version(u32),
    /// Not a Diffie-Hellman key on P-384.
    #[error("certificate holds no P-384 Diffie-Hellman key (usage {usage:#x}, algorithm {algo:#x}, curve {curve:#x})")]
    NotEcdhP384 {
        /// Key usage.
        usage: u32,
        /// Algorithm.
        algo: u32,
        /// Curve id.
        curve: u32,
    },
    /// Coordinates wider than the curve.
    #[error("P-384 coordinate has non-zero bytes past 48")]
    Coordinate,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// A P-384 public key as big-endian affine coordinates (SEC1 order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcdhPublicKey {
    /// x, big-endian.
    pub x: [u8; 48],
    /// y, big-endian.
    pub y: [u8; 48],
}

fn coord_from_le(area: &[u8]) -> Result<[u8; 48], CertError> {
    let (value, rest) = area.split_at(48.min(area.len()));
    if rest.iter().any(|&b| b != 0) || value.len() != 48 {
        return Err(CertError::Coordinate);
    }
    let mut out = [0u8; 48];
    for (o, v) in out.iter_mut().zip(value.iter().rev()) {
        *o = *v;
    }
    Ok(out)
}

/// Reads the Diffie-Hellman public key of a PDH (or GODH) certificate.
pub fn ecdh_public_key(cert: &[u8]) -> Result<EcdhPublicKey, CertError> {
    if cert.len() != CERT_LEN {
        return Err(CertError::Length(cert.len()));
    }
    let version = u32_at(cert, 0);
    if version != 1 {
        return Err(CertError::Version(version));
    }
    let (usage, algo, curve) = (u32_at(cert, 8), u32_at(cert, 12), u32_at(cert, KEY_AT));
    if usage != USAGE_PDH
        || !matches!(algo, ALGO_ECDH_SHA256 | ALGO_ECDH_SHA384)
        || curve != CURVE_P384
    {
        return Err(CertError::NotEcdhP384 { usage, algo, curve });
    }
    let x_at = KEY_AT + 4;
    let y_at = x_at + COORD_LEN;
    Ok(EcdhPublicKey {
        x: coord_from_le(cert.get(x_at..x_at + COORD_LEN).unwrap_or_default())?,
        y: coord_from_le(cert.get(y_at..y_at + COORD_LEN).unwrap_or_default())?,
    })
}

/// An unsigned GODH certificate for `key`, as guest owners send it with
/// LAUNCH_START (the firmware uses only its public key).
pub fn godh_certificate(key: &EcdhPublicKey) -> [u8; CERT_LEN] {
    let mut c = [0u8; CERT_LEN];
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = c.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(0, &1u32.to_le_bytes());
    put(8, &USAGE_PDH.to_le_bytes());
    put(12, &ALGO_ECDH_SHA256.to_le_bytes());
    put(KEY_AT, &CURVE_P384.to_le_bytes());
    let mut x = key.x;
    x.reverse();
    let mut y = key.y;
    y.reverse();
    put(KEY_AT + 4, &x);
    put(KEY_AT + 4 + COORD_LEN, &y);
    for sig in [SIG1_AT, SIG2_AT] {
        put(sig, &USAGE_INVALID.to_le_bytes());
    }
    c
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn godh_round_trips_and_keeps_coordinates_little_endian() {
        let mut key = EcdhPublicKey {
            x: [0; 48],
            y: [0; 48],
        };
        for (i, b) in key.x.iter_mut().enumerate() {
            *b = i as u8;
        }
        key.y[47] = 0xee;
        let c = godh_certificate(&key);
        assert_eq!(c[KEY_AT + 4], 47, "least significant byte first");
        assert_eq!(c[KEY_AT + 4 + COORD_LEN], 0xee);
        assert_eq!(ecdh_public_key(&c), Ok(key));
    }

    #[test]
    fn rejects_what_is_not_a_p384_dh_key() {
        assert_eq!(ecdh_public_key(&[0; 10]), Err(CertError::Length(10)));
        let key = EcdhPublicKey {
            x: [1; 48],
            y: [2; 48],
        };
        let mut c = godh_certificate(&key);
        c[8] = 0x02; // PEK usage
        assert!(matches!(
            ecdh_public_key(&c),
            Err(CertError::NotEcdhP384 { .. })
        ));
        let mut c = godh_certificate(&key);
        c[KEY_AT + 4 + 60] = 1; // beyond 48 bytes
        assert_eq!(ecdh_public_key(&c), Err(CertError::Coordinate));
        let mut c = godh_certificate(&key);
        c[0] = 2;
        assert_eq!(ecdh_public_key(&c), Err(CertError::Version(2)));
    }
}
