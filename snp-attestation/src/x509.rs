//! The X.509 side of AMD's chain: parsing certificates, checking the
//! RSASSA-PSS (SHA-384) signatures AMD uses on every certificate, extracting
//! the P-384 key of a VCEK/VLEK and reading AMD's private extensions.
//!
//! Failures are returned as plain strings or [`CertFault`]; the caller knows
//! which certificate it asked about and wraps them in its own error.

use der::asn1::{Ia5StringRef, ObjectIdentifier, OctetStringRef};
use der::{Decode, Encode, Reader, Sequence};
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// AMD's extensions on VCEK and VLEK certificates (arc 1.3.6.1.4.1.3704.1).
pub(crate) mod oid {
    use der::asn1::ObjectIdentifier;

    /// productName, an IA5String such as "Milan-B0".
    pub(crate) const PRODUCT_NAME: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    /// blSPL.
    pub(crate) const BL_SPL: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    /// teeSPL.
    pub(crate) const TEE_SPL: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    /// snpSPL.
    pub(crate) const SNP_SPL: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    /// ucodeSPL.
    pub(crate) const UCODE_SPL: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    /// fmcSPL (Turin and later).
    pub(crate) const FMC_SPL: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    /// hwID: the chip_id of the chip the VCEK belongs to.
    pub(crate) const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
}

/// RSASSA-PSS-params (RFC 4055). All fields are taken as optional so that
/// explicitly encoded default values, as in AMD's certificates, decode; the
/// values are judged afterwards.
#[derive(Sequence)]
struct PssParams {
    #[asn1(context_specific = "0", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", optional = "true")]
    mask_gen: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", optional = "true")]
    salt_len: Option<u32>,
    #[asn1(context_specific = "3", optional = "true")]
    trailer: Option<u32>,
}

/// Why a certificate's signature does not check out.
#[derive(Debug)]
pub(crate) enum CertFault {
    /// The signature is of the wrong algorithm or badly encoded.
    Malformed(String),
    /// The signature does not verify under the issuer's key.
    BadSignature,
}

/// A parsed certificate with the exact bytes its signature covers.
pub(crate) struct Cert {
    cert: Certificate,
    tbs: Vec<u8>,
}

impl Cert {
    /// Parses one DER certificate; trailing bytes are refused.
    pub(crate) fn parse(der: &[u8]) -> Result<Self, String> {
        let cert =
            Certificate::from_der(der).map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
        // The signature covers the TBSCertificate as transmitted; re-encoding
        // the parsed form could differ from it.
        let tbs = first_element(der)
            .map_err(|e| format!("not a DER X.509 certificate: {e}"))?
            .to_vec();
        Ok(Self { cert, tbs })
    }

    /// The DER of the subject public key info, for comparing keys.
    pub(crate) fn spki_der(&self) -> Result<Vec<u8>, String> {
        self.cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| format!("cannot re-encode the public key: {e}"))
    }

    /// The RSA public key (PKCS#1 RSAPublicKey DER) this certificate holds.
    pub(crate) fn rsa_key(&self) -> Result<&[u8], String> {
        let spki = self.cert.tbs_certificate().subject_public_key_info();
        if spki.algorithm.oid != RSA_ENCRYPTION && spki.algorithm.oid != RSASSA_PSS {
            return Err(format!(
                "public key algorithm {} is not RSA",
                spki.algorithm.oid
            ));
        }
        spki.subject_public_key
            .as_bytes()
            .ok_or_else(|| "public key bit string has unused bits".to_owned())
    }

    /// The uncompressed P-384 point this certificate holds.
    pub(crate) fn p384_point(&self) -> Result<&[u8], String> {
        let spki = self.cert.tbs_certificate().subject_public_key_info();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(SECP384R1) {
            return Err("public key is not an ECDSA P-384 key".to_owned());
        }
        spki.subject_public_key
            .as_bytes()
            .ok_or_else(|| "public key bit string has unused bits".to_owned())
    }

    /// Checks that `issuer_rsa_key` signed this certificate with RSASSA-PSS,
    /// SHA-384, MGF1 with SHA-384 and a 48-byte salt.
    pub(crate) fn verify_pss(&self, issuer_rsa_key: &[u8]) -> Result<(), CertFault> {
        let outer = self.cert.signature_algorithm();
        if outer != self.cert.tbs_certificate().signature() {
            return Err(CertFault::Malformed(
                "signature algorithm differs between the certificate and its signed part".into(),
            ));
        }
        check_pss_sha384(outer).map_err(CertFault::Malformed)?;
        let sig =
            self.cert.signature().as_bytes().ok_or_else(|| {
                CertFault::Malformed("signature bit string has unused bits".into())
            })?;
        let key = rsa::RsaPublicKey::from_pkcs1_der(issuer_rsa_key)
            .map_err(|e| CertFault::Malformed(format!("the issuer's RSA key: {e}")))?;
        let bits = key.n().bits();
        if !(2048..=8192).contains(&bits) {
            return Err(CertFault::Malformed(format!(
                "the issuer's RSA key has {bits} bits (2048 to 8192 accepted)"
            )));
        }
        let sig = rsa::pss::Signature::try_from(sig).map_err(|_| CertFault::BadSignature)?;
        // The salt is as long as the digest (48 bytes), as check_pss_sha384
        // made sure the parameters say.
        rsa::pss::VerifyingKey::<sha2::Sha384>::new(key)
            .verify(&self.tbs, &sig)
            .map_err(|_| CertFault::BadSignature)
    }

    /// The value of the extension `id`, if present once; an error if present
    /// more than once.
    pub(crate) fn extension(&self, id: ObjectIdentifier) -> Result<Option<&[u8]>, String> {
        let mut found = None;
        for ext in self
            .cert
            .tbs_certificate()
            .extensions()
            .into_iter()
            .flatten()
        {
            if ext.extn_id == id {
                if found.is_some() {
                    return Err(format!("extension {id} appears more than once"));
                }
                found = Some(ext.extn_value.as_bytes());
            }
        }
        Ok(found)
    }

    /// A small INTEGER extension (an SPL). AMD wraps a DER INTEGER in the
    /// extension's OCTET STRING; a bare single byte is accepted too.
    pub(crate) fn u8_extension(&self, id: ObjectIdentifier) -> Result<Option<u8>, String> {
        let Some(v) = self.extension(id)? else {
            return Ok(None);
        };
        if let Ok(n) = u8::from_der(v) {
            return Ok(Some(n));
        }
        match v {
            [n] => Ok(Some(*n)),
            _ => Err(format!("extension {id} is not an integer from 0 to 255")),
        }
    }

    /// The productName extension: a DER IA5String, or bare ASCII.
    pub(crate) fn product_name(&self) -> Result<Option<String>, String> {
        let Some(v) = self.extension(oid::PRODUCT_NAME)? else {
            return Ok(None);
        };
        if let Ok(s) = Ia5StringRef::from_der(v) {
            return Ok(Some(s.as_str().to_owned()));
        }
        match std::str::from_utf8(v) {
            Ok(s) if s.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(s.to_owned())),
            _ => Err("extension productName is neither an IA5String nor ASCII".to_owned()),
        }
    }

    /// The hwID extension, zero-padded to 64 bytes as the report's chip_id
    /// field is (Turin VCEKs carry 8 bytes). Raw bytes, as AMD issues them,
    /// or a DER OCTET STRING are accepted.
    pub(crate) fn hw_id(&self) -> Result<Option<[u8; 64]>, String> {
        let Some(v) = self.extension(oid::HW_ID)? else {
            return Ok(None);
        };
        let raw = match v.len() {
            8 | 64 => v,
            _ => <&OctetStringRef>::from_der(v)
                .map(|o| o.as_bytes())
                .ok()
                .filter(|inner| matches!(inner.len(), 8 | 64))
                .ok_or_else(|| format!("extension hwID is {} bytes, not 8 or 64", v.len()))?,
        };
        let mut out = [0u8; 64];
        for (dst, src) in out.iter_mut().zip(raw) {
            *dst = *src;
        }
        Ok(Some(out))
    }
}

/// Verifies an ECDSA P-384 SHA-384 signature given as big-endian r || s.
pub(crate) fn verify_p384(point: &[u8], message: &[u8], fixed_sig: &[u8; 96]) -> bool {
    let Ok(key) = p384::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
        return false;
    };
    let Ok(sig) = p384::ecdsa::Signature::from_slice(fixed_sig) else {
        return false;
    };
    key.verify(message, &sig).is_ok()
}

/// The complete first element (tag, length, value) inside the outer SEQUENCE.
fn first_element(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = der::SliceReader::new(der)?;
    let header = der::Header::decode(&mut reader)?;
    header.tag().assert_eq(der::Tag::Sequence)?;
    reader.tlv_bytes()
}

fn is_sha384(alg: &AlgorithmIdentifierOwned) -> bool {
    // The parameters must be absent or NULL.
    alg.oid == SHA384 && alg.parameters.as_ref().is_none_or(|p| p.is_null())
}

fn check_pss_sha384(alg: &AlgorithmIdentifierOwned) -> Result<(), String> {
    if alg.oid != RSASSA_PSS {
        return Err(format!("signature algorithm {} is not RSASSA-PSS", alg.oid));
    }
    let params = alg
        .parameters
        .as_ref()
        .ok_or("RSASSA-PSS without parameters means SHA-1, which is refused")?;
    let params = params
        .to_der()
        .ok()
        .and_then(|d| PssParams::from_der(&d).ok())
        .ok_or("RSASSA-PSS parameters do not decode")?;
    let hash_ok = params.hash.as_ref().is_some_and(is_sha384);
    let mgf_ok = params.mask_gen.as_ref().is_some_and(|m| {
        m.oid == MGF1
            && m.parameters
                .as_ref()
                .and_then(|p| p.to_der().ok())
                .and_then(|d| AlgorithmIdentifierOwned::from_der(&d).ok())
                .is_some_and(|h| is_sha384(&h))
    });
    if !hash_ok || !mgf_ok || params.salt_len != Some(48) || params.trailer.is_some_and(|t| t != 1)
    {
        return Err(
            "RSASSA-PSS parameters are not SHA-384 with MGF1-SHA-384 and a 48-byte salt".to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alg(der_hex: &str) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned::from_der(&hex::decode(der_hex).unwrap()).unwrap()
    }

    /// AMD's encoding, with the default trailer field written out.
    const AMD_PSS: &str = "304606092a864886f70d01010a3039a00f300d06096086480165030402020500a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130a303020101";

    #[test]
    fn pss_parameters_as_amd_writes_them_are_accepted() {
        check_pss_sha384(&alg(AMD_PSS)).unwrap();
    }

    #[test]
    fn other_pss_parameters_are_refused() {
        // Salt length 32 instead of 48.
        let salt32 = AMD_PSS.replace("a203020130", "a203020120");
        assert!(check_pss_sha384(&alg(&salt32)).is_err());
        // SHA-256 (…0201) as the hash.
        let sha256 = AMD_PSS.replacen(
            "6086480165030402020500a11c",
            "6086480165030402010500a11c",
            1,
        );
        assert!(check_pss_sha384(&alg(&sha256)).is_err());
        // Trailer field 2.
        let trailer = AMD_PSS.replace("a303020101", "a303020102");
        assert!(check_pss_sha384(&alg(&trailer)).is_err());
        // PKCS#1 v1.5 with SHA-384.
        assert!(check_pss_sha384(&alg("300d06092a864886f70d01010c0500")).is_err());
        // PSS without parameters.
        assert!(check_pss_sha384(&alg("300b06092a864886f70d01010a")).is_err());
    }
}
