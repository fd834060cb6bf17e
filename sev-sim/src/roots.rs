//! A fake AMD root of trust: an ARK and an ASK in AMD's CA certificate format,
//! as `sevctl export` writes them and as AMD's `ask_ark_<generation>.cert`
//! downloads hold them (AMD SEV API spec, appendix "Certificate Formats",
//! "AMD CA certificate").
//!
//! Layout, all little-endian: version u32 (1), `key_id[16]`, `signing_key_id[16]`,
//! usage u32 (ARK 0x0000, ASK 0x0013), `reserved[16]`, pubexp size in bits u32,
//! modulus size in bits u32 (the two sizes are equal), public exponent and
//! modulus (each modulus-size bytes), then the RSA-PSS signature (modulus-size
//! bytes) over everything before it. RSA-2048 keys sign with SHA-256 and
//! RSA-4096 keys with SHA-384; the PSS salt is as long as the digest and MGF1
//! uses the signing digest (what the `sev` crate verifies).

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer};

use crate::bytes::{be_to_le, bn_to_le};
use crate::error::{crypto, SimError};

/// Usage field of an AMD Root Key certificate.
pub(crate) const USAGE_ARK: u32 = 0x0000;
/// Usage field of an AMD Signing Key certificate.
pub(crate) const USAGE_ASK: u32 = 0x0013;

/// Size of the AMD root keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKeySize {
    /// RSA-2048 with SHA-256, as AMD's Naples roots.
    Rsa2048,
    /// RSA-4096 with SHA-384, as AMD's Rome, Milan, Genoa and Turin roots.
    Rsa4096,
}

impl RootKeySize {
    /// Modulus size in bits.
    pub fn bits(self) -> u32 {
        match self {
            RootKeySize::Rsa2048 => 2048,
            RootKeySize::Rsa4096 => 4096,
        }
    }

    /// Modulus size in bytes: the width of each number and of the signature.
    pub(crate) fn bytes(self) -> usize {
        match self {
            RootKeySize::Rsa2048 => 256,
            RootKeySize::Rsa4096 => 512,
        }
    }

    /// The digest that keys of this size sign with.
    pub(crate) fn digest(self) -> MessageDigest {
        match self {
            RootKeySize::Rsa2048 => MessageDigest::sha256(),
            RootKeySize::Rsa4096 => MessageDigest::sha384(),
        }
    }
}

/// A freshly generated AMD Root Key (ARK) and AMD Signing Key (ASK), with their
/// certificates in AMD's CA format. Not AMD's: a KBS that pins AMD's real ARKs
/// must refuse chains under these, and a KBS started with this ARK as its
/// trust anchor must accept them.
pub struct FakeAmdRoots {
    size: RootKeySize,
    ask_key: PKey<Private>,
    ark_cert: Vec<u8>,
    ask_cert: Vec<u8>,
}

impl std::fmt::Debug for FakeAmdRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAmdRoots")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FakeAmdRoots {
    /// Generates RSA-4096 roots, the size of every AMD generation since Rome
    /// (about a second in a debug build).
    pub fn generate() -> Result<FakeAmdRoots, SimError> {
        FakeAmdRoots::generate_with(RootKeySize::Rsa4096)
    }

    /// Generates roots of the given size.
    pub fn generate_with(size: RootKeySize) -> Result<FakeAmdRoots, SimError> {
        let ark_key = rsa_key(size)?;
        let ask_key = rsa_key(size)?;
        let ark_id = random_id()?;
        let ask_id = random_id()?;
        let ark_cert = ca_certificate(
            "ARK",
            &CaFields {
                key_id: ark_id,
                signing_key_id: ark_id,
                usage: USAGE_ARK,
                size,
            },
            &ark_key,
            &ark_key,
        )?;
        let ask_cert = ca_certificate(
            "ASK",
            &CaFields {
                key_id: ask_id,
                signing_key_id: ark_id,
                usage: USAGE_ASK,
                size,
            },
            &ask_key,
            &ark_key,
        )?;
        Ok(FakeAmdRoots {
            size,
            ask_key,
            ark_cert,
            ask_cert,
        })
    }

    /// The ARK certificate, as `sevctl export` writes an ARK: usable as the
    /// KBS's trust-anchor file.
    pub fn ark_cert(&self) -> Vec<u8> {
        self.ark_cert.clone()
    }

    /// The ASK certificate, signed by the ARK.
    pub fn ask_cert(&self) -> Vec<u8> {
        self.ask_cert.clone()
    }

    /// ASK then ARK, as AMD's `ask_ark_<generation>.cert` downloads hold them.
    pub fn ca_chain(&self) -> Vec<u8> {
        let mut out = self.ask_cert.clone();
        out.extend_from_slice(&self.ark_cert);
        out
    }

    /// The size of the root keys.
    pub fn key_size(&self) -> RootKeySize {
        self.size
    }

    /// The ASK's private key, which signs the platform's CEK.
    pub(crate) fn ask_key(&self) -> &PKey<Private> {
        &self.ask_key
    }
}

/// The preamble fields of one CA certificate.
struct CaFields {
    key_id: [u8; 16],
    signing_key_id: [u8; 16],
    usage: u32,
    size: RootKeySize,
}

fn rsa_key(size: RootKeySize) -> Result<PKey<Private>, SimError> {
    let rsa = Rsa::generate(size.bits()).map_err(crypto("generating an AMD root key"))?;
    PKey::from_rsa(rsa).map_err(crypto("wrapping an AMD root key"))
}

fn random_id() -> Result<[u8; 16], SimError> {
    let mut id = [0u8; 16];
    openssl::rand::rand_bytes(&mut id).map_err(crypto("drawing a key id"))?;
    Ok(id)
}

/// Encodes and signs one CA certificate for `subject`'s public key.
fn ca_certificate(
    name: &'static str,
    fields: &CaFields,
    subject: &PKey<Private>,
    signer: &PKey<Private>,
) -> Result<Vec<u8>, SimError> {
    let width = fields.size.bytes();
    let rsa = subject.rsa().map_err(crypto("reading an AMD root key"))?;
    let too_big = SimError::CertEncoding {
        cert: name,
        reason: "key number wider than the modulus size",
    };
    let pubexp = bn_to_le(rsa.e(), width).ok_or(too_big)?;
    let modulus = bn_to_le(rsa.n(), width).ok_or(SimError::CertEncoding {
        cert: name,
        reason: "modulus wider than the modulus size",
    })?;

    let mut cert = Vec::with_capacity(64 + 3 * width);
    cert.extend_from_slice(&1u32.to_le_bytes());
    cert.extend_from_slice(&fields.key_id);
    cert.extend_from_slice(&fields.signing_key_id);
    cert.extend_from_slice(&fields.usage.to_le_bytes());
    cert.extend_from_slice(&[0u8; 16]);
    cert.extend_from_slice(&fields.size.bits().to_le_bytes());
    cert.extend_from_slice(&fields.size.bits().to_le_bytes());
    cert.extend_from_slice(&pubexp);
    cert.extend_from_slice(&modulus);

    let signature = rsa_pss_sign(signer, fields.size.digest(), &cert)?;
    let signature = be_to_le(&signature, width).ok_or(SimError::CertEncoding {
        cert: name,
        reason: "signature wider than the modulus size",
    })?;
    cert.extend_from_slice(&signature);
    Ok(cert)
}

/// RSA-PSS over `msg` with `digest`, MGF1 with the same digest, salt as long
/// as the digest. Returns the big-endian signature as OpenSSL produces it.
pub(crate) fn rsa_pss_sign(
    key: &PKey<Private>,
    digest: MessageDigest,
    msg: &[u8],
) -> Result<Vec<u8>, SimError> {
    let step = "signing with RSA-PSS";
    let mut signer = Signer::new(digest, key).map_err(crypto(step))?;
    signer
        .set_rsa_padding(Padding::PKCS1_PSS)
        .map_err(crypto(step))?;
    signer
        .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
        .map_err(crypto(step))?;
    signer.set_rsa_mgf1_md(digest).map_err(crypto(step))?;
    signer.update(msg).map_err(crypto(step))?;
    signer.sign_to_vec().map_err(crypto(step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::certs::sev::{ca, Verifiable};
    use sev::parser::Decoder;

    fn decode(bytes: &[u8]) -> ca::Certificate {
        ca::Certificate::decode(&mut &bytes[..], ()).unwrap()
    }

    #[test]
    fn small_roots_have_the_naples_layout_and_verify() {
        let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
        let (ark, ask) = (roots.ark_cert(), roots.ask_cert());
        assert_eq!(ark.len(), 832);
        assert_eq!(ask.len(), 832);
        assert_eq!(&ark[4..20], &ark[20..36], "the ARK is self-signed");
        assert_eq!(&ask[20..36], &ark[4..20], "the ASK names the ARK as signer");
        assert_eq!(&ask[36..40], &0x13u32.to_le_bytes());
        let (ark, ask) = (decode(&ark), decode(&ask));
        (&ark, &ark).verify().unwrap();
        (&ark, &ask).verify().unwrap();
        assert!((&ask, &ark).verify().is_err());
        assert!((&ask, &ask).verify().is_err());
    }

    #[test]
    fn ca_chain_is_ask_then_ark() {
        let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
        let chain = ca::Chain::decode(&mut &roots.ca_chain()[..], ()).unwrap();
        assert_eq!(chain.ark, decode(&roots.ark_cert()));
        (&chain).verify().unwrap();
    }

    #[test]
    fn a_flipped_bit_breaks_the_signature() {
        let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
        let ark = decode(&roots.ark_cert());
        for offset in [70usize, 400, 700] {
            let mut ask = roots.ask_cert();
            ask[offset] ^= 1;
            assert!((&ark, &decode(&ask)).verify().is_err(), "offset {offset}");
        }
    }
}
