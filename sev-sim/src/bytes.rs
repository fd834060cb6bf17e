//! Little-endian helpers shared by the certificate and packet codecs: reading
//! fixed fields without indexing, and writing OpenSSL big numbers the way AMD's
//! formats store them (little-endian, zero-padded to a fixed width).

use openssl::bn::{BigNum, BigNumRef};

/// The `N` bytes at `offset`, if the buffer holds them.
pub(crate) fn array_at<const N: usize>(buf: &[u8], offset: usize) -> Option<[u8; N]> {
    let end = offset.checked_add(N)?;
    buf.get(offset..end)?.try_into().ok()
}

/// The little-endian u32 at `offset`, if the buffer holds it.
pub(crate) fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    array_at::<4>(buf, offset).map(u32::from_le_bytes)
}

/// `n` as exactly `width` little-endian bytes, or `None` if it does not fit.
pub(crate) fn bn_to_le(n: &BigNumRef, width: usize) -> Option<Vec<u8>> {
    let mut bytes = n.to_vec();
    if bytes.len() > width {
        return None;
    }
    bytes.reverse();
    bytes.resize(width, 0);
    Some(bytes)
}

/// A big-endian byte string (as OpenSSL signs) turned little-endian and
/// zero-padded to `width`, or `None` if it does not fit.
pub(crate) fn be_to_le(be: &[u8], width: usize) -> Option<Vec<u8>> {
    if be.len() > width {
        return None;
    }
    let mut bytes: Vec<u8> = be.iter().rev().copied().collect();
    bytes.resize(width, 0);
    Some(bytes)
}

/// The big number stored little-endian in `le`.
pub(crate) fn bn_from_le(le: &[u8]) -> Result<BigNum, openssl::error::ErrorStack> {
    let be: Vec<u8> = le.iter().rev().copied().collect();
    BigNum::from_slice(&be)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let buf = [1u8, 0, 0, 0, 2];
        assert_eq!(u32_at(&buf, 0), Some(1));
        assert_eq!(u32_at(&buf, 1), Some(0x0200_0000));
        assert_eq!(u32_at(&buf, 2), None);
        assert_eq!(u32_at(&buf, usize::MAX), None);
    }

    #[test]
    fn big_numbers_round_trip_little_endian() {
        let n = BigNum::from_u32(0x0001_0001).unwrap();
        let le = bn_to_le(&n, 8).unwrap();
        assert_eq!(le, [1, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(bn_from_le(&le).unwrap(), n);
        assert!(bn_to_le(&n, 2).is_none());
        assert_eq!(be_to_le(&[1, 2], 3).unwrap(), [2, 1, 0]);
    }
}
