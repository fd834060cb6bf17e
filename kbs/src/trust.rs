//! Which platforms the broker talks to: certificate chains that end in AMD's
//! own root keys.
//!
//! A host can hand the broker any chain. Without pinning the root, a malicious
//! host makes its own "ARK", signs its own PDH, plays the PSP and receives every
//! secret. So a chain is accepted only when its ARK is one of AMD's (Naples to
//! Turin, as the `sev` crate ships them) or an anchor the operator added for a
//! test rig, and every signature from that ARK down to the PDH verifies.

use sev::certs::sev::{builtin, ca, Chain, Verifiable};
use sev::parser::{Decoder, Encoder};
use sev_core::cert::{ecdh_public_key, EcdhPublicKey};
use std::path::{Path, PathBuf};

/// A root the broker trusts.
#[derive(Debug)]
struct Anchor {
    name: String,
    ark: ca::Certificate,
    insecure: bool,
}

/// Most verified chains remembered; a node presents the same chain for every
/// launch, so a fleet needs about one entry per host.
const VERIFIED_CACHE_LIMIT: usize = 4096;

/// The set of trusted roots, with the chains already verified against them.
#[derive(Debug)]
pub struct TrustAnchors {
    anchors: Vec<Anchor>,
    /// A chain's canonical key (see [`canonical_key`]) -> its verified
    /// platform. Verification is a pure function of what the signatures cover
    /// and the fixed anchors, so a hit is as good as verifying again, and
    /// saves the RSA and ECDSA checks (most of GetBundle's CPU). Failures are
    /// not remembered; at most [`VERIFIED_CACHE_LIMIT`] entries.
    verified: std::sync::Mutex<VerifiedChains>,
}

/// Verified platforms by the canonical key of their chains.
type VerifiedChains = std::collections::HashMap<[u8; 32], VerifiedPlatform>;

/// A chain that verified, and what the broker needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPlatform {
    /// The PDH's public key.
    pub pdh: EcdhPublicKey,
    /// The anchor it chains to, e.g. `AMD Milan`.
    pub anchor: String,
    /// Whether that anchor is an operator-added insecure one.
    pub insecure: bool,
    /// Identifies the chip: hexadecimal SHA-256 of its encoded CEK.
    pub chip: String,
}

/// Why a chain is refused. Messages are safe to return to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Not a chain in `sevctl export --full` format.
    #[error(
        "CertificateChain is not an SEV certificate chain (PDH, PEK, OCA, CEK, ASK, ARK): {0}"
    )]
    Malformed(String),
    /// The ARK is not a trusted root.
    #[error("CertificateChain does not chain to a trusted AMD root key")]
    UntrustedRoot,
    /// A signature does not verify.
    #[error("CertificateChain signatures do not verify")]
    BadSignature,
    /// The PDH is not a usable key.
    #[error("CertificateChain PDH: {0}")]
    BadPdh(String),
}

/// Why a trust anchor file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("trust anchor {}: {reason}", path.display())]
pub struct AnchorFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

fn decode_ca(bytes: &[u8]) -> std::io::Result<ca::Certificate> {
    ca::Certificate::decode(&mut &bytes[..], ())
}

fn encode<T: Encoder<()>>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = v.encode(&mut out, ());
    out
}

/// Runs third-party decoding and verification of caller-supplied bytes, turning a
/// panic inside it into an error instead of taking the server down.
fn guarded<T>(f: impl FnOnce() -> Result<T, TrustError>) -> Result<T, TrustError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(TrustError::Malformed("undecodable certificate".into())))
}

impl TrustAnchors {
    /// AMD's ARKs for every SEV generation.
    pub fn amd() -> TrustAnchors {
        let builtins: [(&str, &[u8]); 5] = [
            ("AMD Naples", builtin::naples::ARK),
            ("AMD Rome", builtin::rome::ARK),
            ("AMD Milan", builtin::milan::ARK),
            ("AMD Genoa", builtin::genoa::ARK),
            ("AMD Turin", builtin::turin::ARK),
        ];
        let anchors = builtins
            .iter()
            .filter_map(|(name, bytes)| {
                decode_ca(bytes).ok().map(|ark| Anchor {
                    name: (*name).to_string(),
                    ark,
                    insecure: false,
                })
            })
            .collect();
        TrustAnchors {
            anchors,
            verified: std::sync::Mutex::default(),
        }
    }

    /// Adds an ARK from a file in AMD's CA certificate format. It must be a
    /// self-signed root.
    pub fn add_insecure_anchor(&mut self, path: &Path) -> Result<(), AnchorFileError> {
        let err = |reason: String| AnchorFileError {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let ark = guarded(|| decode_ca(&bytes).map_err(|e| TrustError::Malformed(e.to_string())))
            .map_err(|e| err(format!("not an AMD CA certificate: {e}")))?;
        let self_signed =
            guarded(|| (&ark, &ark).verify().map_err(|_| TrustError::BadSignature)).is_ok();
        if !self_signed {
            return Err(err("not a self-signed root key (ARK)".into()));
        }
        self.anchors.push(Anchor {
            name: format!("insecure anchor {}", path.display()),
            ark,
            insecure: true,
        });
        Ok(())
    }

    /// Names of the anchors, for the start-up log.
    pub fn names(&self) -> Vec<String> {
        self.anchors.iter().map(|a| a.name.clone()).collect()
    }

    /// Decodes and verifies a platform chain.
    pub fn verify(&self, chain_bytes: &[u8]) -> Result<VerifiedPlatform, TrustError> {
        let chain = guarded(|| decode_chain(chain_bytes))?;
        let key = canonical_key(&chain);
        if let Some(hit) = self.cache().get(&key) {
            return Ok(hit.clone());
        }
        let verified = guarded(|| self.verify_decoded(&chain))?;
        let mut cache = self.cache();
        if cache.len() >= VERIFIED_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, verified.clone());
        Ok(verified)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, VerifiedChains> {
        // The map holds only complete entries, so a poisoned lock is still usable.
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn verify_decoded(&self, chain: &Chain) -> Result<VerifiedPlatform, TrustError> {
        let anchor = self
            .anchors
            .iter()
            .find(|a| a.ark == chain.ca.ark)
            .ok_or(TrustError::UntrustedRoot)?;
        let pdh = chain.verify().map_err(|_| TrustError::BadSignature)?;
        let pdh = ecdh_public_key(&encode(pdh)).map_err(|e| TrustError::BadPdh(e.to_string()))?;
        let chip = crate::store::hex(&sha256(&encode(&chain.sev.cek)));
        Ok(VerifiedPlatform {
            pdh,
            anchor: anchor.name.clone(),
            insecure: anchor.insecure,
            chip,
        })
    }
}

/// A chain in `sevctl export --full` format, with nothing after the ARK.
fn decode_chain(chain_bytes: &[u8]) -> Result<Chain, TrustError> {
    let mut reader = chain_bytes;
    let chain = Chain::decode(&mut reader, ()).map_err(|e| TrustError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(TrustError::Malformed(format!(
            "{} bytes after the ARK",
            reader.len()
        )));
    }
    Ok(chain)
}

/// Bytes of an SEV-format certificate that its signatures cover: version,
/// API version, usage, algorithm and public key, before the two signature
/// slots.
const SEV_CERT_BODY: usize = 0x414;

/// The cache key of a chain: what its signatures cover. An SEV certificate
/// has two signature slots and most use one; bytes in the other change the
/// encoding but not what verifies, so keying on the exact bytes let a client
/// miss the cache (and fill it) with endless variants of one chain. The
/// certificate bodies decide the answer: a chain whose bodies verified once
/// is the same platform whatever its unused slots hold. The AMD certificates
/// have one signature each and are taken whole.
fn canonical_key(chain: &Chain) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for cert in [
        &chain.sev.pdh,
        &chain.sev.pek,
        &chain.sev.oca,
        &chain.sev.cek,
    ] {
        let bytes = encode(cert);
        h.update(bytes.get(..SEV_CERT_BODY).unwrap_or(&bytes));
    }
    h.update(encode(&chain.ca.ask));
    h.update(encode(&chain.ca.ark));
    h.finalize().into()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_of_one_chain_share_one_cache_entry() {
        let dir = tempfile::tempdir().unwrap();
        let roots = sev_sim::FakeAmdRoots::generate().unwrap();
        let platform = sev_sim::SimPlatform::new(&roots).unwrap();
        let ark = dir.path().join("ark.cert");
        std::fs::write(&ark, roots.ark_cert()).unwrap();
        let mut t = TrustAnchors::amd();
        t.add_insecure_anchor(&ark).unwrap();
        let chain = platform.cert_chain();
        let first = t.verify(&chain).unwrap();
        // The PDH comes first; its second signature slot (0x61c to 0x824) is
        // not the PEK's signature, so any bytes there still verify.
        for i in 0..50u8 {
            let mut variant = chain.clone();
            variant[0x700] ^= i.wrapping_add(1);
            assert_eq!(t.verify(&variant).unwrap(), first);
        }
        assert_eq!(t.cache().len(), 1);
        // A changed body is another chain, and does not verify.
        let mut forged = chain.clone();
        forged[0x20] ^= 1;
        assert!(t.verify(&forged).is_err());
        assert_eq!(t.cache().len(), 1);
    }

    #[test]
    fn amd_roots_load_and_garbage_is_refused() {
        let t = TrustAnchors::amd();
        assert_eq!(t.names().len(), 5);
        assert!(matches!(
            t.verify(b"not a chain"),
            Err(TrustError::Malformed(_))
        ));
        assert!(t.verify(&[0u8; 20000]).is_err());
    }
}
