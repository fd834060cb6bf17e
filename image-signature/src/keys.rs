//! ECDSA P-256 key pairs in cosign's file formats.
//!
//! The private key file is a PEM block labelled `ENCRYPTED SIGSTORE PRIVATE KEY`
//! (cosign before 2.0 wrote `ENCRYPTED COSIGN PRIVATE KEY`; both are read) whose
//! body is the JSON envelope of go-securesystemslib's `encrypted` package:
//!
//! ```json
//! {"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"<base64>"},
//!  "cipher":{"name":"nacl/secretbox","nonce":"<base64>"},
//!  "ciphertext":"<base64>"}
//! ```
//!
//! The secretbox key is scrypt(passphrase, salt, N, r, p) cut to 32 bytes, the
//! nonce is 24 random bytes, and the sealed plaintext is the PKCS#8 DER of the
//! private key. Byte fields are standard padded base64 (Go's encoding of
//! `[]byte`). The public key file is an SPKI `PUBLIC KEY` PEM block.
//!
//! Reading takes any scrypt parameters within [`ScryptParams::validate`]'s
//! bounds, so that a planted key file cannot make us allocate gigabytes.

use crate::pem;
use base64::Engine as _;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use thiserror::Error;
use zeroize::Zeroizing;

/// PEM label of the private keys cosign 2 writes (and we write).
pub const SIGSTORE_PRIVATE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// PEM label of the private keys cosign 1 wrote; still read.
pub const COSIGN_PRIVATE_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// PEM label of public keys (SubjectPublicKeyInfo).
pub const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

const KDF_NAME: &str = "scrypt";
const CIPHER_NAME: &str = "nacl/secretbox";
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const BOX_KEY_LEN: usize = 32;
/// Poly1305 tag in front of the ciphertext.
const TAG_LEN: usize = 16;
/// A PKCS#8 P-256 key is about 140 bytes; anything far beyond is not a key.
const MAX_CIPHERTEXT_LEN: usize = 64 * 1024;
const MAX_SALT_LEN: usize = 1024;
/// Largest key file accepted, PEM text included.
pub const MAX_KEY_FILE_LEN: usize = 256 * 1024;
/// scrypt needs 128·r·N bytes; beyond this a key file is refused before deriving.
pub const MAX_SCRYPT_MEMORY: u64 = 256 * 1024 * 1024;

/// Why a key could not be read, written or used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The PEM armour is broken.
    #[error("{0}")]
    Pem(#[from] pem::PemError),
    /// The PEM block is of another kind.
    #[error("PEM block is \"{found}\", expected \"{expected}\"")]
    WrongPemLabel {
        /// The label found.
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The key file is larger than any key file.
    #[error("key file is {len} bytes, more than the {max} a key file can be")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The encrypted key's JSON envelope is malformed.
    #[error("encrypted private key: malformed JSON envelope: {0}")]
    Envelope(String),
    /// A field of the envelope names an algorithm we do not implement.
    #[error("encrypted private key: {field} is \"{found}\", only \"{supported}\" is supported")]
    UnsupportedAlgorithm {
        /// `kdf.name` or `cipher.name`.
        field: &'static str,
        /// The name found.
        found: String,
        /// The one we support.
        supported: &'static str,
    },
    /// A base64 field does not decode.
    #[error("encrypted private key: field {field} is not standard base64: {reason}")]
    Base64 {
        /// The JSON field.
        field: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// A field has an impossible length.
    #[error("encrypted private key: field {field} is {found} bytes, expected {expected}")]
    FieldLength {
        /// The JSON field.
        field: &'static str,
        /// Its decoded length.
        found: usize,
        /// The length or range it must have.
        expected: &'static str,
    },
    /// The scrypt parameters are outside the bounds we accept.
    #[error("encrypted private key: scrypt parameters N={n}, r={r}, p={p} refused: {reason}")]
    ScryptParams {
        /// N.
        n: u64,
        /// r.
        r: u64,
        /// p.
        p: u64,
        /// Which bound they break.
        reason: &'static str,
    },
    /// Authenticated decryption failed.
    #[error("wrong password or not a cosign key (decryption failed)")]
    WrongPassphrase,
    /// The decrypted key is not a P-256 PKCS#8 key.
    #[error("the private key is not a PKCS#8 ECDSA P-256 key (only cosign's default key type is supported): {0}")]
    NotP256PrivateKey(String),
    /// The public key is not a P-256 SPKI key.
    #[error("not an ECDSA P-256 public key (SubjectPublicKeyInfo): {0}")]
    NotP256PublicKey(String),
    /// Encoding a key failed (should not happen for a valid key).
    #[error("encoding the key failed: {0}")]
    Encode(String),
    /// The random generator or the key derivation failed.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Why a signature did not verify.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The bytes are not an ASN.1 DER ECDSA signature.
    #[error("not an ASN.1 DER ECDSA signature")]
    NotDer,
    /// The signature is well formed but was not made by this key over this payload.
    #[error("signature does not match the public key and payload")]
    Mismatch,
}

/// scrypt cost parameters as they appear in the envelope (N is stored as its
/// base-2 logarithm here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScryptParams {
    /// log2(N).
    pub log_n: u8,
    /// Block size r.
    pub r: u32,
    /// Parallelism p.
    pub p: u32,
}

impl ScryptParams {
    /// What cosign 2 writes: N = 65536, r = 8, p = 1.
    pub const COSIGN_DEFAULT: ScryptParams = ScryptParams {
        log_n: 16,
        r: 8,
        p: 1,
    };

    /// Checks the envelope's raw N, r, p: N a power of two, and the memory
    /// (128·r·N) and work within bounds, so that a key file cannot exhaust the
    /// machine. go-securesystemslib accepts N of 2^15, 2^16 and 2^17 with r = 8,
    /// p = 1; we accept those and anything of no greater cost class.
    pub fn validate(n: u64, r: u64, p: u64) -> Result<ScryptParams, KeyError> {
        let refuse = |reason| KeyError::ScryptParams { n, r, p, reason };
        if n < 2 || !n.is_power_of_two() {
            return Err(refuse("N must be a power of two of at least 2"));
        }
        if !(1..=32).contains(&r) {
            return Err(refuse("r must be between 1 and 32"));
        }
        if !(1..=16).contains(&p) {
            return Err(refuse("p must be between 1 and 16"));
        }
        let memory = n.checked_mul(r).and_then(|x| x.checked_mul(128));
        match memory {
            Some(m) if m <= MAX_SCRYPT_MEMORY => {}
            _ => return Err(refuse("128*r*N exceeds 256 MiB")),
        }
        if n.saturating_mul(r).saturating_mul(p) > (1 << 22) {
            return Err(refuse("N*r*p exceeds 2^22 (too slow to derive)"));
        }
        let log_n = u8::try_from(n.trailing_zeros()).map_err(|_| refuse("N too large"))?;
        let r = u32::try_from(r).map_err(|_| refuse("r too large"))?;
        let p = u32::try_from(p).map_err(|_| refuse("p too large"))?;
        Ok(ScryptParams { log_n, r, p })
    }

    /// N itself.
    pub fn n(&self) -> u64 {
        1u64 << self.log_n
    }
}

/// The private half of a P-256 key pair. Its `Debug` output hides the key.
#[derive(Clone)]
pub struct SigningKey(p256::ecdsa::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_key().fingerprint())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> SigningKey {
        SigningKey(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// ECDSA over SHA-256 of `message`, as ASN.1 DER: what cosign puts (base64)
    /// in the signature annotation. Deterministic (RFC 6979), so signing the
    /// same payload twice gives the same layer.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: p256::ecdsa::Signature = self.0.sign(message);
        sig.to_der().as_bytes().to_vec()
    }

    /// The PKCS#8 DER of the key (secret: zeroed when dropped).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let doc = self
            .0
            .to_pkcs8_der()
            .map_err(|e| KeyError::Encode(e.to_string()))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// Reads a PKCS#8 DER P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        p256::ecdsa::SigningKey::from_pkcs8_der(der)
            .map(SigningKey)
            .map_err(|e| KeyError::NotP256PrivateKey(e.to_string()))
    }

    /// Encrypts the key under `passphrase` (may be empty) with cosign's default
    /// scrypt parameters, as an `ENCRYPTED SIGSTORE PRIVATE KEY` PEM block.
    pub fn to_encrypted_pem(&self, passphrase: &[u8]) -> Result<String, KeyError> {
        self.to_encrypted_pem_with(passphrase, ScryptParams::COSIGN_DEFAULT)
    }

    /// Like [`SigningKey::to_encrypted_pem`] with chosen scrypt parameters.
    pub fn to_encrypted_pem_with(
        &self,
        passphrase: &[u8],
        params: ScryptParams,
    ) -> Result<String, KeyError> {
        let enc = EncryptedPrivateKey::seal(&self.to_pkcs8_der()?, passphrase, params)?;
        Ok(enc.to_pem())
    }

    /// Reads and decrypts a cosign private key file.
    pub fn from_encrypted_pem(text: &str, passphrase: &[u8]) -> Result<SigningKey, KeyError> {
        EncryptedPrivateKey::parse_pem(text)?.decrypt(passphrase)
    }
}

/// The public half of a P-256 key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(p256::ecdsa::VerifyingKey);

impl PublicKey {
    /// Reads a `PUBLIC KEY` PEM block (SPKI), as cosign writes it.
    pub fn from_pem(text: &str) -> Result<PublicKey, KeyError> {
        if text.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::TooLarge {
                len: text.len(),
                max: MAX_KEY_FILE_LEN,
            });
        }
        let block = pem::decode_first(text)?;
        if block.label != PUBLIC_KEY_LABEL {
            return Err(KeyError::WrongPemLabel {
                found: block.label,
                expected: PUBLIC_KEY_LABEL,
            });
        }
        PublicKey::from_spki_der(&block.body)
    }

    /// Reads an SPKI DER P-256 key.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        p256::ecdsa::VerifyingKey::from_public_key_der(der)
            .map(PublicKey)
            .map_err(|e| KeyError::NotP256PublicKey(e.to_string()))
    }

    /// The SPKI DER encoding.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, KeyError> {
        self.0
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The `PUBLIC KEY` PEM block.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        Ok(pem::encode(PUBLIC_KEY_LABEL, &self.to_spki_der()?))
    }

    /// `sha256:<hex>` of the SPKI DER, to tell keys apart in messages.
    pub fn fingerprint(&self) -> String {
        match self.to_spki_der() {
            Ok(der) => format!("sha256:{}", hex::encode(sha2::Sha256::digest(&der))),
            Err(_) => "sha256:?".to_string(),
        }
    }

    /// Checks an ASN.1 DER ECDSA signature over SHA-256 of `message`.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> Result<(), SignatureError> {
        let sig =
            p256::ecdsa::Signature::from_der(der_signature).map_err(|_| SignatureError::NotDer)?;
        self.0
            .verify(message, &sig)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// The envelope as serde sees it; field order is the order Go writes.
#[derive(Serialize, Deserialize)]
struct EnvelopeJson {
    kdf: KdfJson,
    cipher: CipherJson,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct KdfJson {
    name: String,
    params: KdfParamsJson,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct KdfParamsJson {
    #[serde(rename = "N")]
    n: u64,
    r: u64,
    p: u64,
}

#[derive(Serialize, Deserialize)]
struct CipherJson {
    name: String,
    nonce: String,
}

/// A parsed, still encrypted, cosign private key: reading the file and checking
/// its envelope is separate from the (expensive) key derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedPrivateKey {
    /// The PEM label it was read with (or will be written with).
    pub label: String,
    /// scrypt parameters.
    pub params: ScryptParams,
    /// scrypt salt.
    pub salt: Vec<u8>,
    /// secretbox nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Poly1305 tag followed by the encrypted PKCS#8 DER.
    pub ciphertext: Vec<u8>,
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, KeyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|e| KeyError::Base64 {
            field,
            reason: e.to_string(),
        })
}

fn derive_box_key(
    passphrase: &[u8],
    salt: &[u8],
    params: ScryptParams,
) -> Result<Zeroizing<[u8; BOX_KEY_LEN]>, KeyError> {
    let p = scrypt::Params::new(params.log_n, params.r, params.p, BOX_KEY_LEN)
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; BOX_KEY_LEN]);
    scrypt::scrypt(passphrase, salt, &p, key.as_mut_slice())
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(key)
}

impl EncryptedPrivateKey {
    /// Encrypts `plaintext` (a PKCS#8 DER key) under `passphrase` with a fresh
    /// salt and nonce.
    pub fn seal(
        plaintext: &[u8],
        passphrase: &[u8],
        params: ScryptParams,
    ) -> Result<EncryptedPrivateKey, KeyError> {
        // The same bounds as reading: never write a key we would refuse.
        ScryptParams::validate(params.n(), u64::from(params.r), u64::from(params.p))?;
        let mut salt = vec![0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut salt)
            .and_then(|()| rand::rngs::OsRng.try_fill_bytes(&mut nonce))
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let key = derive_box_key(passphrase, &salt, params)?;
        let cipher = XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(key.as_slice()));
        let ciphertext = cipher
            .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| KeyError::Encode("secretbox sealing failed".to_string()))?;
        Ok(EncryptedPrivateKey {
            label: SIGSTORE_PRIVATE_KEY_LABEL.to_string(),
            params,
            salt,
            nonce,
            ciphertext,
        })
    }

    /// Reads the PEM file: either label, then the JSON envelope.
    pub fn parse_pem(text: &str) -> Result<EncryptedPrivateKey, KeyError> {
        if text.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::TooLarge {
                len: text.len(),
                max: MAX_KEY_FILE_LEN,
            });
        }
        let block = pem::decode_first(text)?;
        if block.label != SIGSTORE_PRIVATE_KEY_LABEL && block.label != COSIGN_PRIVATE_KEY_LABEL {
            return Err(KeyError::WrongPemLabel {
                found: block.label,
                expected: SIGSTORE_PRIVATE_KEY_LABEL,
            });
        }
        let mut key = EncryptedPrivateKey::parse_json(&block.body)?;
        key.label = block.label;
        Ok(key)
    }

    /// Reads the JSON envelope (the PEM body) and checks every field.
    pub fn parse_json(json: &[u8]) -> Result<EncryptedPrivateKey, KeyError> {
        let env: EnvelopeJson =
            serde_json::from_slice(json).map_err(|e| KeyError::Envelope(e.to_string()))?;
        if env.kdf.name != KDF_NAME {
            return Err(KeyError::UnsupportedAlgorithm {
                field: "kdf.name",
                found: env.kdf.name,
                supported: KDF_NAME,
            });
        }
        if env.cipher.name != CIPHER_NAME {
            return Err(KeyError::UnsupportedAlgorithm {
                field: "cipher.name",
                found: env.cipher.name,
                supported: CIPHER_NAME,
            });
        }
        let params = ScryptParams::validate(env.kdf.params.n, env.kdf.params.r, env.kdf.params.p)?;
        let salt = b64("kdf.salt", &env.kdf.salt)?;
        if salt.len() > MAX_SALT_LEN {
            return Err(KeyError::FieldLength {
                field: "kdf.salt",
                found: salt.len(),
                expected: "at most 1024",
            });
        }
        let nonce_bytes = b64("cipher.nonce", &env.cipher.nonce)?;
        let nonce: [u8; NONCE_LEN] =
            nonce_bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::FieldLength {
                    field: "cipher.nonce",
                    found: nonce_bytes.len(),
                    expected: "24",
                })?;
        let ciphertext = b64("ciphertext", &env.ciphertext)?;
        if ciphertext.len() < TAG_LEN || ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(KeyError::FieldLength {
                field: "ciphertext",
                found: ciphertext.len(),
                expected: "between 16 and 65536",
            });
        }
        Ok(EncryptedPrivateKey {
            label: SIGSTORE_PRIVATE_KEY_LABEL.to_string(),
            params,
            salt,
            nonce,
            ciphertext,
        })
    }

    /// The JSON envelope, byte for byte in Go's field order.
    pub fn to_json(&self) -> Vec<u8> {
        let e = base64::engine::general_purpose::STANDARD;
        let env = EnvelopeJson {
            kdf: KdfJson {
                name: KDF_NAME.to_string(),
                params: KdfParamsJson {
                    n: self.params.n(),
                    r: u64::from(self.params.r),
                    p: u64::from(self.params.p),
                },
                salt: e.encode(&self.salt),
            },
            cipher: CipherJson {
                name: CIPHER_NAME.to_string(),
                nonce: e.encode(self.nonce),
            },
            ciphertext: e.encode(&self.ciphertext),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(&env).unwrap_or_default()
    }

    /// The PEM file, under [`EncryptedPrivateKey::label`].
    pub fn to_pem(&self) -> String {
        pem::encode(&self.label, &self.to_json())
    }

    /// Derives the box key and opens the box. A wrong passphrase and a
    /// tampered file both fail authentication and are not told apart.
    pub fn decrypt_pkcs8(&self, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = derive_box_key(passphrase, &self.salt, self.params)?;
        let cipher = XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(key.as_slice()));
        cipher
            .decrypt(
                crypto_secretbox::Nonce::from_slice(&self.nonce),
                self.ciphertext.as_slice(),
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyError::WrongPassphrase)
    }

    /// Decrypts and reads the P-256 key.
    pub fn decrypt(&self, passphrase: &[u8]) -> Result<SigningKey, KeyError> {
        SigningKey::from_pkcs8_der(&self.decrypt_pkcs8(passphrase)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so that unit tests do not spend seconds in scrypt.
    const FAST: ScryptParams = ScryptParams {
        log_n: 4,
        r: 8,
        p: 1,
    };

    #[test]
    fn round_trip_with_empty_passphrase() {
        let key = SigningKey::generate();
        let pem = key.to_encrypted_pem_with(b"", FAST).unwrap();
        let back = SigningKey::from_encrypted_pem(&pem, b"").unwrap();
        assert_eq!(back.public_key(), key.public_key());
    }

    #[test]
    fn default_envelope_has_cosign_shape() {
        // One derivation with cosign's real cost (slow without optimisation);
        // decrypting at this cost is covered by the integration tests.
        let key = SigningKey::generate();
        let pem = key.to_encrypted_pem(b"").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let enc = EncryptedPrivateKey::parse_pem(&pem).unwrap();
        assert_eq!(enc.params, ScryptParams::COSIGN_DEFAULT);
        assert_eq!(enc.salt.len(), 32);
        // The envelope has exactly cosign's shape.
        let v: serde_json::Value = serde_json::from_slice(&enc.to_json()).unwrap();
        assert_eq!(v["kdf"]["name"], "scrypt");
        assert_eq!(v["kdf"]["params"]["N"], 65536);
        assert_eq!(v["kdf"]["params"]["r"], 8);
        assert_eq!(v["kdf"]["params"]["p"], 1);
        assert_eq!(v["cipher"]["name"], "nacl/secretbox");
        let text = String::from_utf8(enc.to_json()).unwrap();
        assert!(text
            .starts_with(r#"{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":""#));
    }

    #[test]
    fn wrong_passphrase_is_an_error_not_a_panic() {
        let key = SigningKey::generate();
        let pem = key.to_encrypted_pem_with(b"right", FAST).unwrap();
        let e = SigningKey::from_encrypted_pem(&pem, b"wrong").unwrap_err();
        assert!(matches!(e, KeyError::WrongPassphrase));
        assert_eq!(
            e.to_string(),
            "wrong password or not a cosign key (decryption failed)"
        );
        // A flipped ciphertext byte fails the same way.
        let mut enc = EncryptedPrivateKey::parse_pem(&pem).unwrap();
        if let Some(b) = enc.ciphertext.last_mut() {
            *b ^= 1;
        }
        assert!(matches!(
            enc.decrypt(b"right"),
            Err(KeyError::WrongPassphrase)
        ));
    }

    #[test]
    fn old_cosign_label_is_read() {
        let key = SigningKey::generate();
        let mut enc = EncryptedPrivateKey::seal(&key.to_pkcs8_der().unwrap(), b"pw", FAST).unwrap();
        enc.label = COSIGN_PRIVATE_KEY_LABEL.to_string();
        let pem = enc.to_pem();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----"));
        let back = SigningKey::from_encrypted_pem(&pem, b"pw").unwrap();
        assert_eq!(back.public_key(), key.public_key());
    }

    #[test]
    fn other_pem_labels_are_refused() {
        let key = SigningKey::generate();
        let pub_pem = key.public_key().to_pem().unwrap();
        let e = SigningKey::from_encrypted_pem(&pub_pem, b"").unwrap_err();
        assert!(e.to_string().contains("\"PUBLIC KEY\""), "{e}");
        let priv_as_pub = key.to_encrypted_pem_with(b"", FAST).unwrap();
        let e = PublicKey::from_pem(&priv_as_pub).unwrap_err();
        assert!(matches!(e, KeyError::WrongPemLabel { .. }), "{e}");
    }

    fn envelope_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let key = SigningKey::generate();
        let enc = EncryptedPrivateKey::seal(&key.to_pkcs8_der().unwrap(), b"", FAST).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&enc.to_json()).unwrap();
        edit(&mut v);
        pem::encode(
            SIGSTORE_PRIVATE_KEY_LABEL,
            serde_json::to_string(&v).unwrap().as_bytes(),
        )
    }

    #[test]
    fn malformed_envelopes_name_the_field() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|v| v["kdf"]["name"] = "pbkdf2".into()), "kdf.name"),
            (
                Box::new(|v| v["cipher"]["name"] = "aes".into()),
                "cipher.name",
            ),
            (Box::new(|v| v["kdf"]["salt"] = "@@".into()), "kdf.salt"),
            (
                Box::new(|v| v["cipher"]["nonce"] = "AAAA".into()),
                "cipher.nonce",
            ),
            (Box::new(|v| v["ciphertext"] = "AAAA".into()), "ciphertext"),
            (Box::new(|v| v["ciphertext"] = "!".into()), "ciphertext"),
            (
                Box::new(|v| v["kdf"]["params"]["N"] = 3.into()),
                "power of two",
            ),
            (
                Box::new(|v| v["kdf"]["params"]["N"] = (1u64 << 40).into()),
                "256 MiB",
            ),
            (Box::new(|v| v["kdf"]["params"]["r"] = 0.into()), "r must"),
            (
                Box::new(|v| v["kdf"]["params"]["p"] = 1000.into()),
                "p must",
            ),
            (
                Box::new(|v| {
                    v["kdf"]["params"]["N"] = (1u64 << 18).into();
                    v["kdf"]["params"]["p"] = 16.into();
                }),
                "too slow",
            ),
            (Box::new(|v| v["kdf"]["params"]["N"] = "big".into()), "JSON"),
            (Box::new(|v| *v = serde_json::json!({"kdf": 1})), "JSON"),
        ];
        for (edit, needle) in cases {
            let pem = envelope_with(edit);
            let e = EncryptedPrivateKey::parse_pem(&pem).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        let e = EncryptedPrivateKey::parse_pem(&pem::encode(SIGSTORE_PRIVATE_KEY_LABEL, b"{"))
            .unwrap_err();
        assert!(matches!(e, KeyError::Envelope(_)), "{e}");
        let e = EncryptedPrivateKey::parse_pem("no pem here").unwrap_err();
        assert!(e.to_string().contains("not PEM"), "{e}");
    }

    #[test]
    fn go_bounds_are_accepted() {
        for n in [1u64 << 15, 1 << 16, 1 << 17] {
            ScryptParams::validate(n, 8, 1).unwrap();
        }
    }

    #[test]
    fn decrypted_non_p256_key_is_named() {
        let enc = EncryptedPrivateKey::seal(b"not a pkcs8 key", b"", FAST).unwrap();
        let e = enc.decrypt(b"").unwrap_err();
        assert!(matches!(e, KeyError::NotP256PrivateKey(_)), "{e}");
    }

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let sig = key.sign(b"payload");
        assert_eq!(sig, key.sign(b"payload"), "RFC 6979 signatures repeat");
        let pubk = PublicKey::from_pem(&key.public_key().to_pem().unwrap()).unwrap();
        pubk.verify(b"payload", &sig).unwrap();
        assert_eq!(pubk.verify(b"payloaD", &sig), Err(SignatureError::Mismatch));
        assert_eq!(
            other.public_key().verify(b"payload", &sig),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            pubk.verify(b"payload", b"\x30\x00"),
            Err(SignatureError::NotDer)
        );
        assert!(format!("{key:?}").contains("sha256:"));
        assert!(!format!("{key:?}").contains("SigningKey { inner"));
    }

    #[test]
    fn public_key_pem_is_spki() {
        let key = SigningKey::generate();
        let pem = key.public_key().to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let der = pem::decode_first(&pem).unwrap().body;
        // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (65 bytes) }
        assert_eq!(der.len(), 91);
        let e = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .unwrap_err();
        assert!(matches!(e, KeyError::NotP256PublicKey(_)), "{e}");
    }
}
