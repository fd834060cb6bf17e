//! The PSP's launch commands for one guest (AMD SEV API spec, "LAUNCH_START",
//! "LAUNCH_MEASURE", "LAUNCH_SECRET"), with real cryptography:
//!
//! - LAUNCH_START derives the master secret from ECDH between the PDH and the
//!   guest owner's key, unwraps the TEK and TIK, and checks both MACs;
//! - LAUNCH_MEASURE binds the launch digest, policy and firmware version under
//!   the TIK;
//! - LAUNCH_SECRET checks the packet MAC against the measurement and decrypts
//!   the secret table with the TEK.
//!
//! Any MAC mismatch is a refusal: that is how a forged session is caught.

use openssl::symm::Cipher;
use rand::RngCore;

use crate::bytes::{array_at, u32_at};
use crate::error::{crypto, SimError};
use crate::kdf::{hmac_sha256, kdf16};
use crate::platform::SimPlatform;
use crate::sevcert::godh_public_key;

/// Length of the launch session blob.
pub const SESSION_BLOB_LEN: usize = 128;
/// Length of a LAUNCH_SECRET packet header.
pub const SECRET_HEADER_LEN: usize = 52;
/// Largest secret the simulated PSP injects: KVM's LAUNCH_SECRET takes one
/// guest page (OVMF's AmdSev secret area is smaller still, 3 KiB).
pub const MAX_SECRET_LEN: usize = 4096;

/// The launch session blob the guest owner sends with its GODH certificate:
/// `nonce[16]` `wrap_tk[32]` `wrap_iv[16]` `wrap_mac[32]` `policy_mac[32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBlob {
    /// Context of the master-secret derivation.
    pub nonce: [u8; 16],
    /// TEK || TIK encrypted with AES-128-CTR under the KEK.
    pub wrap_tk: [u8; 32],
    /// IV of that encryption.
    pub wrap_iv: [u8; 16],
    /// HMAC-SHA256(KIK, wrap_tk).
    pub wrap_mac: [u8; 32],
    /// HMAC-SHA256(TIK, policy as u32 LE).
    pub policy_mac: [u8; 32],
}

impl SessionBlob {
    /// Reads the 128-byte blob.
    pub fn parse(blob: &[u8]) -> Result<SessionBlob, SimError> {
        let short = || SimError::BlobLength(blob.len());
        if blob.len() != SESSION_BLOB_LEN {
            return Err(short());
        }
        Ok(SessionBlob {
            nonce: array_at(blob, 0).ok_or_else(short)?,
            wrap_tk: array_at(blob, 16).ok_or_else(short)?,
            wrap_iv: array_at(blob, 48).ok_or_else(short)?,
            wrap_mac: array_at(blob, 64).ok_or_else(short)?,
            policy_mac: array_at(blob, 96).ok_or_else(short)?,
        })
    }

    /// The 128 bytes, fields in order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SESSION_BLOB_LEN);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.wrap_tk);
        out.extend_from_slice(&self.wrap_iv);
        out.extend_from_slice(&self.wrap_mac);
        out.extend_from_slice(&self.policy_mac);
        out
    }
}

/// One guest launch inside the simulated PSP, after a successful
/// LAUNCH_START: holds the TEK, the TIK and the last measurement. A plain
/// value: tests may keep it across KBS restarts or clone it to replay.
#[derive(Clone)]
pub struct SimLaunch {
    policy: u32,
    api_major: u8,
    api_minor: u8,
    build: u8,
    tek: [u8; 16],
    tik: [u8; 16],
    measure: Option<[u8; 32]>,
}

impl std::fmt::Debug for SimLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLaunch")
            .field("policy", &format_args!("{:#010x}", self.policy))
            .field("api_major", &self.api_major)
            .field("api_minor", &self.api_minor)
            .field("build", &self.build)
            .field("measured", &self.measure.is_some())
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// LAUNCH_START with a guest owner session: `godh_cert` is the guest
    /// owner's Diffie-Hellman certificate (SEV format), `launch_blob` the
    /// 128-byte session blob, `policy` the guest policy of the launch.
    ///
    /// Refuses a GODH that is not a P-384 ECDH key, a policy that asks for
    /// newer firmware than the platform runs, a `wrap_mac` that does not
    /// authenticate the wrapped keys, and a `policy_mac` that does not
    /// authenticate `policy`.
    pub fn launch_start(
        &self,
        godh_cert: &[u8],
        launch_blob: &[u8],
        policy: u32,
    ) -> Result<SimLaunch, SimError> {
        let blob = SessionBlob::parse(launch_blob)?;
        let godh = godh_public_key(godh_cert)?;
        self.check_policy_firmware(policy)?;

        let step = "deriving the ECDH shared secret";
        let godh_point = godh_sec1(&godh).map_err(crypto(step))?;
        let shared = aws_lc_rs::agreement::agree(
            &self.pdh_agreement,
            aws_lc_rs::agreement::UnparsedPublicKey::new(
                &aws_lc_rs::agreement::ECDH_P384,
                &godh_point,
            ),
            SimError::BadGodh("its point is rejected by ECDH"),
            |z| Ok(z.to_vec()),
        )?;

        let master = kdf16(&shared, "sev-master-secret", &blob.nonce);
        let kek = kdf16(&master, "sev-kek", &[]);
        let kik = kdf16(&master, "sev-kik", &[]);

        let wrap_mac = hmac_sha256(&kik, &[&blob.wrap_tk]);
        if !openssl::memcmp::eq(&wrap_mac, &blob.wrap_mac) {
            return Err(SimError::WrapMac);
        }
        let keys = aes_128_ctr(&kek, &blob.wrap_iv, &blob.wrap_tk)?;
        let tek: [u8; 16] = array_at(&keys, 0).ok_or(SimError::WrapMac)?;
        let tik: [u8; 16] = array_at(&keys, 16).ok_or(SimError::WrapMac)?;

        let policy_mac = hmac_sha256(&tik, &[&policy.to_le_bytes()]);
        if !openssl::memcmp::eq(&policy_mac, &blob.policy_mac) {
            return Err(SimError::PolicyMac { policy });
        }

        Ok(SimLaunch {
            policy,
            api_major: self.api_major,
            api_minor: self.api_minor,
            build: self.build,
            tek,
            tik,
            measure: None,
        })
    }

    /// The policy's bits 16-23 and 24-31 name the minimum firmware API major
    /// and minor version; the PSP refuses to launch on older firmware.
    fn check_policy_firmware(&self, policy: u32) -> Result<(), SimError> {
        let [_, _, need_major, need_minor] = policy.to_le_bytes();
        if (self.api_major, self.api_minor) < (need_major, need_minor) {
            return Err(SimError::PolicyFirmware {
                policy,
                need_major,
                need_minor,
                api_major: self.api_major,
                api_minor: self.api_minor,
            });
        }
        Ok(())
    }
}

impl SimLaunch {
    /// LAUNCH_MEASURE over `launch_digest` with a fresh random mnonce:
    /// returns `measure[32]` || `mnonce[16]`, where measure = HMAC-SHA256(TIK,
    /// 0x04 || api_major || api_minor || build || policy u32 LE || digest ||
    /// mnonce). The measure is kept for LAUNCH_SECRET; measuring again
    /// replaces it.
    pub fn measure(&mut self, launch_digest: &[u8; 32]) -> [u8; 48] {
        let mut mnonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut mnonce);
        self.measure_with_nonce(launch_digest, mnonce)
    }

    /// LAUNCH_MEASURE with a given mnonce (for known-answer tests).
    pub fn measure_with_nonce(&mut self, launch_digest: &[u8; 32], mnonce: [u8; 16]) -> [u8; 48] {
        let measure = hmac_sha256(
            &self.tik,
            &[
                &[0x04, self.api_major, self.api_minor, self.build],
                &self.policy.to_le_bytes(),
                launch_digest,
                &mnonce,
            ],
        );
        self.measure = Some(measure);
        let mut out = [0u8; 48];
        out.iter_mut()
            .zip(measure.iter().chain(mnonce.iter()))
            .for_each(|(d, s)| *d = *s);
        out
    }

    /// LAUNCH_SECRET: checks the packet (header = flags u32 LE, `iv[16]`,
    /// `mac[32]`) against the TIK and this launch's measurement, then returns
    /// the plaintext, AES-128-CTR(TEK, iv, ciphertext): the secret table as
    /// the guest will find it.
    ///
    /// Refuses before LAUNCH_MEASURE, on a header that is not 52 bytes, on a
    /// ciphertext that is empty, not a multiple of 16 bytes or larger than a
    /// page, on a MAC mismatch, and on non-zero flags (compression).
    pub fn inject_secret(&self, header: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, SimError> {
        let measure = self.measure.ok_or(SimError::NotMeasured)?;
        let bad_header = || SimError::SecretHeaderLength(header.len());
        if header.len() != SECRET_HEADER_LEN {
            return Err(bad_header());
        }
        let flags = u32_at(header, 0).ok_or_else(bad_header)?;
        let iv: [u8; 16] = array_at(header, 4).ok_or_else(bad_header)?;
        let mac: [u8; 32] = array_at(header, 20).ok_or_else(bad_header)?;

        let len = ciphertext.len();
        let reason = if len == 0 {
            Some("empty")
        } else if len % 16 != 0 {
            Some("not a multiple of 16 bytes")
        } else if len > MAX_SECRET_LEN {
            Some("larger than one 4 KiB page")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(SimError::SecretLength { len, reason });
        }
        let len32 = u32::try_from(len).map_err(|_| SimError::SecretLength {
            len,
            reason: "larger than one 4 KiB page",
        })?;

        let expected = hmac_sha256(
            &self.tik,
            &[
                &[0x01],
                &flags.to_le_bytes(),
                &iv,
                &len32.to_le_bytes(),
                &len32.to_le_bytes(),
                ciphertext,
                &measure,
            ],
        );
        if !openssl::memcmp::eq(&expected, &mac) {
            return Err(SimError::SecretMac);
        }
        if flags != 0 {
            return Err(SimError::SecretFlags(flags));
        }
        aes_128_ctr(&self.tek, &iv, ciphertext)
    }

    /// The guest policy the launch was started with.
    pub fn policy(&self) -> u32 {
        self.policy
    }

    /// Whether LAUNCH_MEASURE has run.
    pub fn is_measured(&self) -> bool {
        self.measure.is_some()
    }
}

/// AES-128-CTR (encryption and decryption are one operation).
fn aes_128_ctr(key: &[u8; 16], iv: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, SimError> {
    openssl::symm::decrypt(Cipher::aes_128_ctr(), key, Some(iv), data)
        .map_err(crypto("running AES-128-CTR"))
}

/// The uncompressed SEC1 encoding of a P-384 public key.
fn godh_sec1(
    key: &openssl::pkey::PKey<openssl::pkey::Public>,
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let ec = key.ec_key()?;
    let mut ctx = openssl::bn::BigNumContext::new()?;
    ec.public_key().to_bytes(
        ec.group(),
        openssl::ec::PointConversionForm::UNCOMPRESSED,
        &mut ctx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_ctr_matches_nist_sp800_38a() {
        // SP 800-38A F.5.1, CTR-AES128, first two blocks.
        let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
            .unwrap()
            .try_into()
            .unwrap();
        let iv: [u8; 16] = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .unwrap()
            .try_into()
            .unwrap();
        let pt = hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
            .unwrap();
        let ct = aes_128_ctr(&key, &iv, &pt).unwrap();
        assert_eq!(
            hex::encode(&ct),
            "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
        );
        assert_eq!(aes_128_ctr(&key, &iv, &ct).unwrap(), pt);
        // Not a whole block: CTR is a stream cipher.
        assert_eq!(aes_128_ctr(&key, &iv, &pt[..5]).unwrap(), ct[..5].to_vec());
    }

    #[test]
    fn blob_round_trips_and_checks_length() {
        let raw: Vec<u8> = (0..128u8).collect();
        let blob = SessionBlob::parse(&raw).unwrap();
        assert_eq!(blob.nonce[0], 0);
        assert_eq!(blob.wrap_tk[0], 16);
        assert_eq!(blob.wrap_iv[0], 48);
        assert_eq!(blob.wrap_mac[0], 64);
        assert_eq!(blob.policy_mac[0], 96);
        assert_eq!(blob.to_bytes(), raw);
        assert!(matches!(
            SessionBlob::parse(&raw[..127]),
            Err(SimError::BlobLength(127))
        ));
    }

    fn launch(policy: u32) -> SimLaunch {
        SimLaunch {
            policy,
            api_major: 0,
            api_minor: 0x12,
            build: 0x0f,
            tek: [0; 16],
            tik: hex::decode("66320db73158a35a255d051758e95ed4")
                .unwrap()
                .try_into()
                .unwrap(),
            measure: None,
        }
    }

    #[test]
    fn measure_matches_the_sev_crate_known_answer() {
        // The known answer of the `sev` crate's guest-owner `verify` test.
        let digest: [u8; 32] =
            hex::decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .unwrap()
                .try_into()
                .unwrap();
        let mnonce: [u8; 16] = hex::decode("4fbe0bedbad6c86ae8f68971d103e554")
            .unwrap()
            .try_into()
            .unwrap();
        let out = launch(0).measure_with_nonce(&digest, mnonce);
        assert_eq!(
            hex::encode(&out[..32]),
            "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea"
        );
        assert_eq!(&out[32..], &mnonce);
    }

    #[test]
    fn secret_before_measure_is_refused() {
        let l = launch(0);
        assert!(matches!(
            l.inject_secret(&[0; 52], &[0; 16]),
            Err(SimError::NotMeasured)
        ));
    }

    #[test]
    fn secret_packet_shape_is_checked() {
        let mut l = launch(0);
        l.measure(&[0; 32]);
        assert!(matches!(
            l.inject_secret(&[0; 51], &[0; 16]),
            Err(SimError::SecretHeaderLength(51))
        ));
        for len in [0usize, 15, 17, 4112] {
            assert!(
                matches!(
                    l.inject_secret(&[0; 52], &vec![0; len]),
                    Err(SimError::SecretLength { .. })
                ),
                "len {len}"
            );
        }
        assert!(matches!(
            l.inject_secret(&[0; 52], &[0; 16]),
            Err(SimError::SecretMac)
        ));
    }
}
