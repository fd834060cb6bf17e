//! HMAC-SHA256 and the key derivation function of the SEV API
//! (AMD SEV API spec, "Key Derivation Function": NIST SP 800-108 in counter
//! mode with HMAC-SHA256 as the PRF).
//!
//! HMAC is built here on OpenSSL's one-shot SHA-256 (RFC 2104) so that it
//! cannot fail: LAUNCH_MEASURE has no error path.

use openssl::sha::Sha256;

/// SHA-256 block size in bytes.
const BLOCK: usize = 64;

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k0 = [0u8; BLOCK];
    if key.len() > BLOCK {
        let digest = openssl::sha::sha256(key);
        k0.iter_mut().zip(digest.iter()).for_each(|(d, s)| *d = *s);
    } else {
        k0.iter_mut().zip(key.iter()).for_each(|(d, s)| *d = *s);
    }

    let mut inner = Sha256::new();
    inner.update(&k0.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finish();

    let mut outer = Sha256::new();
    outer.update(&k0.map(|b| b ^ 0x5c));
    outer.update(&inner);
    outer.finish()
}

/// NIST SP 800-108 counter-mode KDF with HMAC-SHA256, filling `out`.
///
/// Block `i` (from 1) is HMAC(key, i as u32 LE || label || 0x00 || context ||
/// L as u32 LE), L being the output length in bits.
pub(crate) fn kdf(key: &[u8], label: &str, context: &[u8], out: &mut [u8]) {
    let bits = u32::try_from(out.len().saturating_mul(8)).unwrap_or(u32::MAX);
    for (counter, chunk) in (1u32..).zip(out.chunks_mut(32)) {
        let block = hmac_sha256(
            key,
            &[
                &counter.to_le_bytes(),
                label.as_bytes(),
                &[0u8],
                context,
                &bits.to_le_bytes(),
            ],
        );
        chunk
            .iter_mut()
            .zip(block.iter())
            .for_each(|(d, s)| *d = *s);
    }
}

/// A 16-byte key from [`kdf`].
pub(crate) fn kdf16(key: &[u8], label: &str, context: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    kdf(key, label, context, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        hex::encode(b)
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test cases 1, 2 and 6 (key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], &[b"Hi There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn hmac_matches_openssl_hmac() {
        // OpenSSL 3 refuses an empty HMAC key; that case is a known answer below.
        for len in [1usize, 16, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..len)
                .map(|i| u8::try_from((i * 7 + 3) % 256).unwrap())
                .collect();
            let msg = b"the quick brown fox";
            let pkey = openssl::pkey::PKey::hmac(&key).unwrap();
            let mut signer =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).unwrap();
            signer.update(msg).unwrap();
            assert_eq!(
                signer.sign_to_vec().unwrap(),
                hmac_sha256(&key, &[msg]).to_vec()
            );
        }
    }

    #[test]
    fn hmac_with_empty_key_and_message() {
        assert_eq!(
            hex(&hmac_sha256(&[], &[])),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"
        );
    }

    #[test]
    fn kdf_known_answer() {
        // master = KDF(zero z, "sev-master-secret", zero nonce): the value the
        // `sev` crate's guest-owner session test pins.
        assert_eq!(
            hex(&kdf16(&[0u8; 16], "sev-master-secret", &[0u8; 16])),
            "ab4d269fcc62bedb4511d56c386ce706"
        );
    }

    #[test]
    fn kdf_longer_output_uses_counter_blocks() {
        let mut long = [0u8; 40];
        kdf(b"key", "label", b"ctx", &mut long);
        let bits = 320u32.to_le_bytes();
        let b1 = hmac_sha256(
            b"key",
            &[&1u32.to_le_bytes(), b"label", &[0], b"ctx", &bits],
        );
        let b2 = hmac_sha256(
            b"key",
            &[&2u32.to_le_bytes(), b"label", &[0], b"ctx", &bits],
        );
        assert_eq!(&long[..32], &b1[..]);
        assert_eq!(&long[32..], &b2[..8]);
    }
}
