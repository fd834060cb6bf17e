//! The SEV platform certificate format (AMD SEV API spec, appendix
//! "Certificate Formats", "SEV certificate"): what the PDH, PEK, OCA and CEK
//! certificates and the guest owner's Diffie-Hellman certificate look like.
//!
//! 0x824 bytes, little-endian: version u32 (1), API major u8, API minor u8,
//! reserved u16, then the public key (usage u32, algorithm u32, and a 1028-byte
//! key area; for ECC: curve u32 (P-384 = 2), `qx[72]`, `qy[72]`, zeros), which ends
//! the signed body at 0x414; then two signature slots of 520 bytes (usage u32,
//! algorithm u32, 512-byte signature area; ECDSA: `r[72]`, `s[72]`, zeros; RSA: the
//! signature, little-endian). An empty slot has usage 0x1000 and algorithm 0.

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, PKey, Private, Public};

use crate::bytes::{array_at, be_to_le, bn_from_le, bn_to_le, u32_at};
use crate::error::{crypto, SimError};
use crate::roots::{rsa_pss_sign, RootKeySize, USAGE_ASK};

/// Length of a SEV certificate.
pub(crate) const CERT_LEN: usize = 0x824;
/// Length of the signed body (version, firmware, reserved, public key).
const BODY_LEN: usize = 0x414;
/// Length of one signature slot.
const SLOT_LEN: usize = 520;
/// Width of one ECC coordinate or signature number.
const ECC_NUM: usize = 72;
/// Bytes of a P-384 coordinate.
const P384_BYTES: usize = 48;
/// Offset of the public key's usage field.
const KEY_USAGE_AT: usize = 8;
/// Offset of the public key's algorithm field.
const KEY_ALGO_AT: usize = 12;
/// Offset of the curve id.
const CURVE_AT: usize = 16;
/// Offset of qx; qy follows it.
const QX_AT: usize = 20;

/// Usage of an Owner Certificate Authority key.
pub(crate) const USAGE_OCA: u32 = 0x1001;
/// Usage of a Platform Endorsement Key.
pub(crate) const USAGE_PEK: u32 = 0x1002;
/// Usage of a Platform Diffie-Hellman key (and of the guest owner's DH key).
pub(crate) const USAGE_PDH: u32 = 0x1003;
/// Usage of a Chip Endorsement Key.
pub(crate) const USAGE_CEK: u32 = 0x1004;
/// Usage of an empty signature slot.
const USAGE_NONE: u32 = 0x1000;

const ALGO_RSA_SHA256: u32 = 0x0001;
const ALGO_ECDSA_SHA256: u32 = 0x0002;
const ALGO_ECDH_SHA256: u32 = 0x0003;
const ALGO_RSA_SHA384: u32 = 0x0101;
const ALGO_ECDH_SHA384: u32 = 0x0103;
const CURVE_P384: u32 = 2;

/// A P-384 key with the usage and algorithm its certificate names.
pub(crate) struct SevKey {
    pub(crate) usage: u32,
    pub(crate) key: EcKey<Private>,
}

impl SevKey {
    /// A fresh P-384 key for `usage`.
    pub(crate) fn generate(usage: u32) -> Result<SevKey, SimError> {
        let group = p384()?;
        let key = EcKey::generate(&group).map_err(crypto("generating a P-384 key"))?;
        Ok(SevKey { usage, key })
    }

    /// ECDH for the PDH, ECDSA with SHA-256 for the signing keys (as AMD's
    /// firmware issues them).
    fn algorithm(&self) -> u32 {
        if self.usage == USAGE_PDH {
            ALGO_ECDH_SHA256
        } else {
            ALGO_ECDSA_SHA256
        }
    }

    /// The private key for AWS-LC's ECDH (the scalar, big-endian, 48 bytes).
    pub(crate) fn agreement_key(&self) -> Result<aws_lc_rs::agreement::PrivateKey, SimError> {
        let step = "exporting the PDH private key";
        let width = i32::try_from(P384_BYTES).map_err(|_| SimError::BadGodh("scalar width"))?;
        let scalar = zeroize_vec(
            self.key
                .private_key()
                .to_vec_padded(width)
                .map_err(crypto(step))?,
        );
        aws_lc_rs::agreement::PrivateKey::from_private_key(
            &aws_lc_rs::agreement::ECDH_P384,
            &scalar.0,
        )
        .map_err(|_| SimError::BadGodh("the PDH private key is not a P-384 scalar"))
    }
}

/// Who signs a certificate slot.
pub(crate) enum SlotSigner<'a> {
    /// A SEV platform key (ECDSA P-384 with SHA-256).
    Sev(&'a SevKey),
    /// The AMD Signing Key (RSA-PSS), which signs the CEK.
    Ask(&'a PKey<Private>, RootKeySize),
}

/// A byte vector wiped on drop.
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

fn zeroize_vec(v: Vec<u8>) -> Wiped {
    Wiped(v)
}

fn p384() -> Result<EcGroup, SimError> {
    EcGroup::from_curve_name(Nid::SECP384R1).map_err(crypto("loading the P-384 curve"))
}

/// Encodes a certificate for `subject` with firmware `version`, signed by
/// up to two signers (slot 1 then slot 2).
pub(crate) fn certificate(
    name: &'static str,
    version: (u8, u8),
    subject: &SevKey,
    signers: &[SlotSigner<'_>],
) -> Result<Vec<u8>, SimError> {
    let body = body(name, version, subject)?;
    let mut cert = body.clone();
    let mut slots = 0usize;
    for signer in signers {
        // Every signature covers the body alone, never another slot.
        let slot = match signer {
            SlotSigner::Sev(key) => ecdsa_slot(name, key, &body)?,
            SlotSigner::Ask(key, size) => rsa_slot(name, key, *size, &body)?,
        };
        cert.extend_from_slice(&slot);
        slots += 1;
    }
    if slots > 2 {
        return Err(SimError::CertEncoding {
            cert: name,
            reason: "more than two signatures",
        });
    }
    for _ in slots..2 {
        let mut empty = Vec::with_capacity(SLOT_LEN);
        empty.extend_from_slice(&USAGE_NONE.to_le_bytes());
        empty.resize(SLOT_LEN, 0);
        cert.extend_from_slice(&empty);
    }
    if cert.len() != CERT_LEN {
        return Err(SimError::CertEncoding {
            cert: name,
            reason: "the encoding is not 0x824 bytes",
        });
    }
    Ok(cert)
}

/// The signed body: version, firmware version, reserved, public key.
fn body(name: &'static str, version: (u8, u8), subject: &SevKey) -> Result<Vec<u8>, SimError> {
    let (qx, qy) = affine(&subject.key)?;
    let coord = |n: &BigNum| {
        bn_to_le(n, ECC_NUM).ok_or(SimError::CertEncoding {
            cert: name,
            reason: "coordinate wider than 72 bytes",
        })
    };
    let mut out = Vec::with_capacity(CERT_LEN);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&[version.0, version.1]);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&subject.usage.to_le_bytes());
    out.extend_from_slice(&subject.algorithm().to_le_bytes());
    out.extend_from_slice(&CURVE_P384.to_le_bytes());
    out.extend_from_slice(&coord(&qx)?);
    out.extend_from_slice(&coord(&qy)?);
    out.resize(BODY_LEN, 0);
    Ok(out)
}

fn affine<T: HasPublic>(key: &EcKey<T>) -> Result<(BigNum, BigNum), SimError> {
    let step = "reading a P-384 public key";
    let mut ctx = BigNumContext::new().map_err(crypto(step))?;
    let mut x = BigNum::new().map_err(crypto(step))?;
    let mut y = BigNum::new().map_err(crypto(step))?;
    key.public_key()
        .affine_coordinates(key.group(), &mut x, &mut y, &mut ctx)
        .map_err(crypto(step))?;
    Ok((x, y))
}

/// An ECDSA slot: the signer's usage and algorithm, r and s little-endian.
fn ecdsa_slot(name: &'static str, signer: &SevKey, body: &[u8]) -> Result<Vec<u8>, SimError> {
    let digest = openssl::sha::sha256(body);
    let sig = EcdsaSig::sign(&digest, &signer.key).map_err(crypto("signing with ECDSA"))?;
    let num = |n: &openssl::bn::BigNumRef| {
        bn_to_le(n, ECC_NUM).ok_or(SimError::CertEncoding {
            cert: name,
            reason: "ECDSA number wider than 72 bytes",
        })
    };
    let mut slot = Vec::with_capacity(SLOT_LEN);
    slot.extend_from_slice(&signer.usage.to_le_bytes());
    slot.extend_from_slice(&signer.algorithm().to_le_bytes());
    slot.extend_from_slice(&num(sig.r())?);
    slot.extend_from_slice(&num(sig.s())?);
    slot.resize(SLOT_LEN, 0);
    Ok(slot)
}

/// An RSA-PSS slot signed by the ASK: usage ASK, RSA with the ASK's digest,
/// the signature little-endian.
///
/// The `sev` crate reads the slot back as a big number, dropping leading zero
/// bytes, and a short signature then fails to verify; PSS signatures are
/// randomised, so a signature whose first byte is zero is simply redrawn.
fn rsa_slot(
    name: &'static str,
    ask: &PKey<Private>,
    size: RootKeySize,
    body: &[u8],
) -> Result<Vec<u8>, SimError> {
    let algorithm = match size {
        RootKeySize::Rsa2048 => ALGO_RSA_SHA256,
        RootKeySize::Rsa4096 => ALGO_RSA_SHA384,
    };
    let mut signature = rsa_pss_sign(ask, size.digest(), body)?;
    for _ in 0..16 {
        if signature.first().is_some_and(|b| *b != 0) {
            break;
        }
        signature = rsa_pss_sign(ask, size.digest(), body)?;
    }
    let signature = be_to_le(&signature, 512).ok_or(SimError::CertEncoding {
        cert: name,
        reason: "RSA signature wider than 512 bytes",
    })?;
    let mut slot = Vec::with_capacity(SLOT_LEN);
    slot.extend_from_slice(&USAGE_ASK.to_le_bytes());
    slot.extend_from_slice(&algorithm.to_le_bytes());
    slot.extend_from_slice(&signature);
    Ok(slot)
}

/// The public key of a guest owner's Diffie-Hellman certificate (GODH), as
/// the PSP reads it at LAUNCH_START: a version-1 SEV certificate with usage
/// PDH, an ECDH algorithm and a point on P-384. Its signatures are not
/// checked (the PSP does not either: the GODH is unsigned).
pub(crate) fn godh_public_key(cert: &[u8]) -> Result<PKey<Public>, SimError> {
    if cert.len() != CERT_LEN {
        return Err(SimError::BadGodh("not 0x824 bytes long"));
    }
    if u32_at(cert, 0) != Some(1) {
        return Err(SimError::BadGodh("not a version 1 certificate"));
    }
    if u32_at(cert, KEY_USAGE_AT) != Some(USAGE_PDH) {
        return Err(SimError::BadGodh("its usage is not PDH (0x1003)"));
    }
    let algo = u32_at(cert, KEY_ALGO_AT);
    if algo != Some(ALGO_ECDH_SHA256) && algo != Some(ALGO_ECDH_SHA384) {
        return Err(SimError::BadGodh("its algorithm is not ECDH"));
    }
    if u32_at(cert, CURVE_AT) != Some(CURVE_P384) {
        return Err(SimError::BadGodh("its curve is not P-384"));
    }
    let qx: [u8; ECC_NUM] =
        array_at(cert, QX_AT).ok_or(SimError::BadGodh("truncated public key"))?;
    let qy: [u8; ECC_NUM] =
        array_at(cert, QX_AT + ECC_NUM).ok_or(SimError::BadGodh("truncated public key"))?;
    let high_zero = |q: &[u8; ECC_NUM]| q.iter().skip(P384_BYTES).all(|b| *b == 0);
    if !high_zero(&qx) || !high_zero(&qy) {
        return Err(SimError::BadGodh("a coordinate is wider than P-384"));
    }
    let step = "reading the guest owner's DH key";
    let x = bn_from_le(&qx).map_err(crypto(step))?;
    let y = bn_from_le(&qy).map_err(crypto(step))?;
    let group = p384()?;
    // Decoding the point checks that it is on the curve, which for P-384
    // (cofactor 1) is the whole validation; EC_KEY_check_key would add an order
    // check that costs a scalar multiplication per launch.
    let mut sec1 = Vec::with_capacity(1 + 2 * P384_BYTES);
    sec1.push(0x04);
    let width = i32::try_from(P384_BYTES).map_err(|_| SimError::BadGodh("coordinate width"))?;
    sec1.extend_from_slice(&x.to_vec_padded(width).map_err(crypto(step))?);
    sec1.extend_from_slice(&y.to_vec_padded(width).map_err(crypto(step))?);
    let mut ctx = openssl::bn::BigNumContext::new().map_err(crypto(step))?;
    let point = openssl::ec::EcPoint::from_bytes(&group, &sec1, &mut ctx)
        .map_err(|_| SimError::BadGodh("its point is not on P-384"))?;
    let key = EcKey::from_public_key(&group, &point).map_err(crypto(step))?;
    PKey::from_ec_key(key).map_err(crypto(step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::certs::sev::{sev as sevcert, Verifiable};
    use sev::parser::{Decoder, Encoder};

    fn decode(bytes: &[u8]) -> sevcert::Certificate {
        sevcert::Certificate::decode(&mut &bytes[..], ()).unwrap()
    }

    #[test]
    fn certificates_decode_and_verify_with_the_sev_crate() {
        let oca = SevKey::generate(USAGE_OCA).unwrap();
        let pek = SevKey::generate(USAGE_PEK).unwrap();
        let oca_cert = certificate("OCA", (1, 55), &oca, &[SlotSigner::Sev(&oca)]).unwrap();
        let pek_cert = certificate("PEK", (1, 55), &pek, &[SlotSigner::Sev(&oca)]).unwrap();
        assert_eq!(oca_cert.len(), CERT_LEN);
        let (o, p) = (decode(&oca_cert), decode(&pek_cert));
        let mut reencoded = Vec::new();
        p.encode(&mut reencoded, ()).unwrap();
        assert_eq!(reencoded, pek_cert);
        (&o, &o).verify().unwrap();
        (&o, &p).verify().unwrap();
        assert!((&p, &o).verify().is_err());
    }

    #[test]
    fn a_generated_pdh_reads_back_as_a_godh() {
        let pdh = SevKey::generate(USAGE_PDH).unwrap();
        let cert = certificate("PDH", (1, 55), &pdh, &[]).unwrap();
        let key = godh_public_key(&cert).unwrap();
        assert!(key.public_eq(&PKey::from_ec_key(pdh.key.clone()).unwrap()));
    }

    #[test]
    fn malformed_godh_certificates_are_refused() {
        let pdh = SevKey::generate(USAGE_PDH).unwrap();
        let good = certificate("PDH", (1, 55), &pdh, &[]).unwrap();
        assert!(godh_public_key(&good[..CERT_LEN - 1]).is_err());
        assert!(godh_public_key(&[]).is_err());
        for (offset, value) in [(0usize, 2u8), (8, 0x02), (12, 0x02), (16, 1), (20 + 60, 1)] {
            let mut bad = good.clone();
            bad[offset] = value;
            assert!(godh_public_key(&bad).is_err(), "offset {offset}");
        }
        let mut off_curve = good.clone();
        off_curve[20] ^= 1;
        assert!(godh_public_key(&off_curve).is_err());
    }
}
