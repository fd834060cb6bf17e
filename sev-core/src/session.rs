//! SEV launch-session cryptography on the guest owner's side (AMD SEV API
//! specification, "Launch secret" and "Key derivation").
//!
//! The key broker wraps a transport encryption key (TEK) and integrity key (TIK)
//! for the PSP at LAUNCH_START, later checks the PSP's LAUNCH_MEASURE output with
//! the TIK, and packages secrets for LAUNCH_SECRET under both keys. Everything
//! here is pure: randomness (nonces, IVs, keys) comes in as arguments.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

type HmacSha256 = Hmac<Sha256>;
type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// Length of an encoded [`LaunchBlob`].
pub const LAUNCH_BLOB_LEN: usize = 128;
/// Length of an encoded [`LaunchMeasurement`].
pub const MEASUREMENT_LEN: usize = 48;
/// Length of an encoded [`SecretHeader`].
pub const SECRET_HEADER_LEN: usize = 52;

/// A byte string of the wrong length where a fixed-size structure was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be {expected} bytes, got {got}")]
pub struct LengthError {
    /// The structure.
    pub what: &'static str,
    /// Its fixed length.
    pub expected: usize,
    /// What was given.
    pub got: usize,
}

fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], LengthError> {
    bytes.try_into().map_err(|_| LengthError {
        what,
        expected: N,
        got: bytes.len(),
    })
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// NIST SP 800-108 KDF in counter mode with HMAC-SHA256: block i is
/// `HMAC(key, i u32 LE || label || 0x00 || context || L u32 LE)`, L in bits.
pub fn kdf(key: &[u8], label: &str, context: &[u8], out_len: usize) -> Vec<u8> {
    let bits = u32::try_from(out_len.saturating_mul(8)).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(out_len + 32);
    let mut counter: u32 = 1;
    while out.len() < out_len {
        out.extend_from_slice(&hmac(
            key,
            &[
                &counter.to_le_bytes(),
                label.as_bytes(),
                &[0],
                context,
                &bits.to_le_bytes(),
            ],
        ));
        counter = counter.wrapping_add(1);
    }
    out.truncate(out_len);
    out
}

/// The transport keys of one launch session. Wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct TransportKeys {
    /// Transport encryption key (AES-128).
    pub tek: [u8; 16],
    /// Transport integrity key (HMAC-SHA256).
    pub tik: [u8; 16],
}

impl std::fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportKeys(..)")
    }
}

/// The session blob of LAUNCH_START.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchBlob {
    /// Context of the master-secret derivation.
    pub nonce: [u8; 16],
    /// TEK || TIK encrypted under the KEK.
    pub wrap_tk: [u8; 32],
    /// IV of that encryption.
    pub wrap_iv: [u8; 16],
    /// HMAC-SHA256(KIK, wrap_tk).
    pub wrap_mac: [u8; 32],
    /// HMAC-SHA256(TIK, policy).
    pub policy_mac: [u8; 32],
}

impl LaunchBlob {
    /// Wraps `keys` for the PSP, given the ECDH shared secret `z` with the
    /// platform's PDH and fresh `nonce` and `iv`.
    pub fn wrap(
        z: &[u8],
        nonce: [u8; 16],
        iv: [u8; 16],
        keys: &TransportKeys,
        policy: u32,
    ) -> LaunchBlob {
        let mut master = kdf(z, "sev-master-secret", &nonce, 16);
        let mut kek = kdf(&master, "sev-kek", &[], 16);
        let mut kik = kdf(&master, "sev-kik", &[], 16);
        let mut wrap_tk = [0u8; 32];
        wrap_tk[..16].copy_from_slice(&keys.tek);
        wrap_tk[16..].copy_from_slice(&keys.tik);
        if let Ok(mut c) = Aes128Ctr::new_from_slices(&kek, &iv) {
            c.apply_keystream(&mut wrap_tk);
        }
        let blob = LaunchBlob {
            nonce,
            wrap_tk,
            wrap_iv: iv,
            wrap_mac: hmac(&kik, &[&wrap_tk]),
            policy_mac: hmac(&keys.tik, &[&policy.to_le_bytes()]),
        };
        master.zeroize();
        kek.zeroize();
        kik.zeroize();
        blob
    }

    /// The 128 bytes as LAUNCH_START takes them.
    pub fn encode(&self) -> [u8; LAUNCH_BLOB_LEN] {
        let mut out = [0u8; LAUNCH_BLOB_LEN];
        out[..16].copy_from_slice(&self.nonce);
        out[16..48].copy_from_slice(&self.wrap_tk);
        out[48..64].copy_from_slice(&self.wrap_iv);
        out[64..96].copy_from_slice(&self.wrap_mac);
        out[96..].copy_from_slice(&self.policy_mac);
        out
    }

    /// Reads the 128-byte encoding.
    pub fn decode(bytes: &[u8]) -> Result<LaunchBlob, LengthError> {
        let b: [u8; LAUNCH_BLOB_LEN] = fixed("launch blob", bytes)?;
        let (nonce, rest) = b.split_at(16);
        let (wrap_tk, rest) = rest.split_at(32);
        let (wrap_iv, rest) = rest.split_at(16);
        let (wrap_mac, policy_mac) = rest.split_at(32);
        Ok(LaunchBlob {
            nonce: fixed("nonce", nonce)?,
            wrap_tk: fixed("wrap_tk", wrap_tk)?,
            wrap_iv: fixed("wrap_iv", wrap_iv)?,
            wrap_mac: fixed("wrap_mac", wrap_mac)?,
            policy_mac: fixed("policy_mac", policy_mac)?,
        })
    }
}

/// The firmware version the PSP reports and includes in the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FirmwareBuild {
    /// API major version.
    pub api_major: u8,
    /// API minor version.
    pub api_minor: u8,
    /// Build number.
    pub build: u8,
}

/// LAUNCH_MEASURE output: the measurement MAC and the PSP's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchMeasurement {
    /// HMAC-SHA256 under the TIK.
    pub measure: [u8; 32],
    /// Nonce chosen by the PSP.
    pub mnonce: [u8; 16],
}

impl LaunchMeasurement {
    /// Reads the 48-byte encoding (measure then mnonce).
    pub fn decode(bytes: &[u8]) -> Result<LaunchMeasurement, LengthError> {
        let b: [u8; MEASUREMENT_LEN] = fixed("launch measurement", bytes)?;
        let (measure, mnonce) = b.split_at(32);
        Ok(LaunchMeasurement {
            measure: fixed("measure", measure)?,
            mnonce: fixed("mnonce", mnonce)?,
        })
    }

    /// The 48-byte encoding.
    pub fn encode(&self) -> [u8; MEASUREMENT_LEN] {
        let mut out = [0u8; MEASUREMENT_LEN];
        out[..32].copy_from_slice(&self.measure);
        out[32..].copy_from_slice(&self.mnonce);
        out
    }

    /// The measurement the PSP produces for a launch with this digest, firmware
    /// and policy, given its nonce.
    pub fn expected(
        tik: &[u8; 16],
        fw: FirmwareBuild,
        policy: u32,
        digest: &[u8],
        mnonce: [u8; 16],
    ) -> LaunchMeasurement {
        let measure = hmac(
            tik,
            &[
                &[0x04, fw.api_major, fw.api_minor, fw.build],
                &policy.to_le_bytes(),
                digest,
                &mnonce,
            ],
        );
        LaunchMeasurement { measure, mnonce }
    }

    /// Whether this measurement proves a launch of `digest` under `policy` on
    /// firmware `fw` in the session keyed by `tik`. Compares in constant time.
    pub fn verify(&self, tik: &[u8; 16], fw: FirmwareBuild, policy: u32, digest: &[u8]) -> bool {
        let want = Self::expected(tik, fw, policy, digest, self.mnonce);
        bool::from(want.measure.ct_eq(&self.measure))
    }
}

/// The header of a LAUNCH_SECRET packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretHeader {
    /// Packet flags (bit 0: compressed); zero here.
    pub flags: u32,
    /// AES-128-CTR IV.
    pub iv: [u8; 16],
    /// HMAC-SHA256 under the TIK, bound to the launch measurement.
    pub mac: [u8; 32],
}

impl SecretHeader {
    /// The 52-byte encoding.
    pub fn encode(&self) -> [u8; SECRET_HEADER_LEN] {
        let mut out = [0u8; SECRET_HEADER_LEN];
        out[..4].copy_from_slice(&self.flags.to_le_bytes());
        out[4..20].copy_from_slice(&self.iv);
        out[20..].copy_from_slice(&self.mac);
        out
    }

    /// Reads the 52-byte encoding.
    pub fn decode(bytes: &[u8]) -> Result<SecretHeader, LengthError> {
        let b: [u8; SECRET_HEADER_LEN] = fixed("secret header", bytes)?;
        let (flags, rest) = b.split_at(4);
        let (iv, mac) = rest.split_at(16);
        Ok(SecretHeader {
            flags: u32::from_le_bytes(fixed("flags", flags)?),
            iv: fixed("iv", iv)?,
            mac: fixed("mac", mac)?,
        })
    }
}

/// Encrypts `plaintext` for injection into the guest of a verified launch:
/// AES-128-CTR under the TEK, authenticated with the TIK over the ciphertext and
/// the launch's measurement, so it is only accepted by that launch.
pub fn package_secret(
    keys: &TransportKeys,
    measurement: &LaunchMeasurement,
    iv: [u8; 16],
    plaintext: &[u8],
) -> Result<(SecretHeader, Vec<u8>), LengthError> {
    let len = u32::try_from(plaintext.len()).map_err(|_| LengthError {
        what: "secret",
        expected: u32::MAX as usize,
        got: plaintext.len(),
    })?;
    let mut ciphertext = plaintext.to_vec();
    if let Ok(mut c) = Aes128Ctr::new_from_slices(&keys.tek, &iv) {
        c.apply_keystream(&mut ciphertext);
    }
    let flags = 0u32;
    let mac = hmac(
        &keys.tik,
        &[
            &[0x01],
            &flags.to_le_bytes(),
            &iv,
            &len.to_le_bytes(),
            &len.to_le_bytes(),
            &ciphertext,
            &measurement.measure,
        ],
    );
    Ok((SecretHeader { flags, iv, mac }, ciphertext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_known_answer() {
        // Computed independently with Python's hmac module:
        // hmac.new(bytes(16), b"\x01\0\0\0sev-master-secret\0" + bytes(16) + b"\x80\0\0\0", sha256)
        let out = kdf(&[0u8; 16], "sev-master-secret", &[0u8; 16], 16);
        assert_eq!(hex::encode(out), "ab4d269fcc62bedb4511d56c386ce706");
        let longer = kdf(&[0u8; 16], "x", &[], 40);
        assert_eq!(longer.len(), 40);
        assert_ne!(
            &longer[..32],
            &kdf(&[0u8; 16], "x", &[], 32)[..],
            "L is part of each block"
        );
    }

    #[test]
    fn encodings_round_trip_and_check_lengths() {
        let blob = LaunchBlob {
            nonce: [1; 16],
            wrap_tk: [2; 32],
            wrap_iv: [3; 16],
            wrap_mac: [4; 32],
            policy_mac: [5; 32],
        };
        assert_eq!(LaunchBlob::decode(&blob.encode()), Ok(blob));
        assert!(LaunchBlob::decode(&[0; 127]).is_err());
        let m = LaunchMeasurement {
            measure: [7; 32],
            mnonce: [8; 16],
        };
        assert_eq!(LaunchMeasurement::decode(&m.encode()), Ok(m));
        let e = LaunchMeasurement::decode(&[0; 47]).unwrap_err();
        assert_eq!(e.to_string(), "launch measurement must be 48 bytes, got 47");
        let h = SecretHeader {
            flags: 0,
            iv: [9; 16],
            mac: [10; 32],
        };
        assert_eq!(SecretHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn measurement_verifies_only_for_its_inputs() {
        let tik = [0x11; 16];
        let fw = FirmwareBuild {
            api_major: 1,
            api_minor: 55,
            build: 21,
        };
        let digest = [0xab; 32];
        let m = LaunchMeasurement::expected(&tik, fw, 3, &digest, [0x22; 16]);
        assert!(m.verify(&tik, fw, 3, &digest));
        assert!(!m.verify(&tik, fw, 1, &digest));
        assert!(!m.verify(&tik, FirmwareBuild { build: 22, ..fw }, 3, &digest));
        assert!(!m.verify(&[0x12; 16], fw, 3, &digest));
        let mut other = digest;
        other[31] ^= 1;
        assert!(!m.verify(&tik, fw, 3, &other));
    }
}
