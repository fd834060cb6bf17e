//! Admin tokens for Trustee's KBS: short-lived JWTs the broker signs with the
//! private key whose public half Trustee's admin configuration trusts for an
//! issuer, carrying the `role` claim Trustee's ACL matches against the request
//! path; or a ready token read from a file at every use (so that rotating the
//! file needs no restart).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How long a minted token is valid (Trustee allows 60 s of clock skew
/// besides): short, since a token seen on the way can be replayed until then.
const TOKEN_TTL_SECS: u64 = 120;
/// Largest key or token file read.
const MAX_FILE: u64 = 64 * 1024;

/// Why no token can be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("{}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The key file holds no usable private key.
    #[error(
        "{}: {reason} (expected a PKCS#8 PEM private key: Ed25519, ECDSA P-256 or P-384, or RSA)",
        path.display()
    )]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Signing failed.
    #[error("cannot sign an admin token with {}", path.display())]
    Sign {
        /// The key file.
        path: PathBuf,
    },
}

enum Signer {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair, &'static str),
    Rsa(RsaKeyPair),
}

/// A private key tokens are signed with.
pub struct AdminKey {
    path: PathBuf,
    signer: Signer,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKey")
            .field("path", &self.path)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, TokenError> {
    use std::io::Read as _;
    let err = |cause| TokenError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut data = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(err)?;
    if data.len() as u64 > MAX_FILE {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE} bytes"),
        )));
    }
    Ok(data)
}

impl AdminKey {
    /// Loads a PKCS#8 PEM private key (`openssl genpkey` writes one).
    pub fn load(path: &Path) -> Result<AdminKey, TokenError> {
        let bad = |reason: String| TokenError::Key {
            path: path.to_path_buf(),
            reason,
        };
        let data = zeroize::Zeroizing::new(read_small(path)?);
        let pem = pem::parse(&*data).map_err(|e| bad(format!("not PEM: {e}")))?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(bad(format!("a {:?} block", pem.tag())));
        }
        let der = pem.contents();
        let signer = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Signer::Ed25519(k)
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
        {
            Signer::Ecdsa(k, "ES256")
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der)
        {
            Signer::Ecdsa(k, "ES384")
        } else if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            Signer::Rsa(k)
        } else {
            return Err(bad("an unsupported or malformed key".into()));
        };
        Ok(AdminKey {
            path: path.to_path_buf(),
            signer,
        })
    }

    /// The JWS algorithm of the key.
    pub fn alg(&self) -> &'static str {
        match &self.signer {
            Signer::Ed25519(_) => "EdDSA",
            Signer::Ecdsa(_, alg) => alg,
            Signer::Rsa(_) => "RS256",
        }
    }

    /// The raw public key.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.signer {
            Signer::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Signer::Ecdsa(k, _) => k.public_key().as_ref().to_vec(),
            Signer::Rsa(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// A token for `claims`, signed.
    fn sign(&self, claims: &serde_json::Value) -> Result<String, TokenError> {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let header = serde_json::json!({"alg": self.alg(), "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let fail = || TokenError::Sign {
            path: self.path.clone(),
        };
        let sig = match &self.signer {
            Signer::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Ecdsa(k, _) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .map_err(|_| fail())?
                .as_ref()
                .to_vec(),
            Signer::Rsa(k) => {
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut out,
                )
                .map_err(|_| fail())?;
                out
            }
        };
        Ok(format!("{input}.{}", b64(&sig)))
    }
}

/// Where the broker's admin tokens for one Trustee come from.
#[derive(Debug)]
pub enum TokenSource {
    /// Minted for each use with the key.
    Minted {
        /// The key.
        key: AdminKey,
        /// `iss`: the issuer Trustee's admin configuration names for the key.
        issuer: String,
        /// `aud`.
        audience: String,
        /// `role`: what Trustee's ACL grants.
        role: String,
    },
    /// Read from this file at every use.
    File(PathBuf),
}

impl TokenSource {
    /// A token valid now.
    pub fn token(&self) -> Result<String, TokenError> {
        match self {
            TokenSource::Minted {
                key,
                issuer,
                audience,
                role,
            } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                key.sign(&serde_json::json!({
                    "iss": issuer,
                    "sub": "kbs-reference-values",
                    "aud": [audience],
                    "role": role,
                    "iat": now,
                    "exp": now + TOKEN_TTL_SECS,
                }))
            }
            TokenSource::File(path) => {
                let data = read_small(path)?;
                Ok(String::from_utf8_lossy(&data).trim().to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_file(dir: &Path, der: &[u8]) -> PathBuf {
        let p = dir.join("key.pem");
        std::fs::write(&p, pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()))).unwrap();
        p
    }

    #[test]
    fn an_ed25519_token_verifies_and_carries_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let path = pem_file(dir.path(), pkcs8.as_ref());
        let key = AdminKey::load(&path).unwrap();
        assert_eq!(key.alg(), "EdDSA");
        let public = key.public_key_bytes();
        let source = TokenSource::Minted {
            key,
            issuer: "trustee-test".into(),
            audience: "KBS".into(),
            role: "admin".into(),
        };
        let token = source.token().unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let dec = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let claims: serde_json::Value = serde_json::from_slice(&dec(parts[1])).unwrap();
        assert_eq!(claims["iss"], "trustee-test");
        assert_eq!(claims["role"], "admin");
        assert_eq!(claims["aud"][0], "KBS");
        assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
        signature::UnparsedPublicKey::new(&signature::ED25519, public)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &dec(parts[2]),
            )
            .unwrap();
    }

    #[test]
    fn an_ecdsa_key_signs_es256_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        let path = pem_file(dir.path(), pkcs8.as_ref());
        assert_eq!(AdminKey::load(&path).unwrap().alg(), "ES256");
        std::fs::write(&path, "not a key").unwrap();
        let e = AdminKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("key.pem") && e.contains("PEM"), "{e}");
    }
}
