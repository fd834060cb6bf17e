//! Values at rest: the key the broker seals its secrets under, and the
//! sealed format.
//!
//! Secret payloads, resource data and the keys of launch sessions, online
//! connections and guest reports are stored sealed with AES-256-GCM under a
//! key that does not live in the database: a copy of the database file alone
//! reveals none of them. Each value is bound to the row it belongs to (the
//! associated data names its table, column and id), so sealed values cannot
//! be swapped between rows by someone who can write the file.
//!
//! Sealed value: version 0x01 || nonce (12 bytes) || ciphertext || tag (16).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The first byte of every sealed value.
const VERSION: u8 = 1;
/// Bytes a sealed value has over its plaintext.
pub const OVERHEAD: usize = 1 + 12 + 16;

/// Why the at-rest key cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read or created.
    #[error("at-rest key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error(
        "at-rest key {path}: expected 32 bytes, or 64 hexadecimal digits, or the base64 of 32 \
         bytes (for example `head -c 32 /dev/urandom > {}`)",
        path.display()
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// Other users can read the key file.
    #[error(
        "at-rest key {path}: mode {mode:04o} lets other users read the key to every secret; \
         chmod 600 {}",
        path.display()
    )]
    Readable {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The key values are sealed under at rest. A clone is wiped on drop too.
#[derive(Clone)]
pub struct AtRestKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AtRestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtRestKey({})", self.fingerprint())
    }
}

impl AtRestKey {
    /// A fresh random key.
    pub fn generate() -> AtRestKey {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        AtRestKey { key }
    }

    /// A key from the contents of a key file: 32 raw bytes, 64 hexadecimal
    /// digits, or the base64 of 32 bytes (surrounding whitespace ignored in
    /// the text forms). `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<AtRestKey> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(bytes);
            return Some(AtRestKey { key });
        }
        let text = std::str::from_utf8(bytes).ok()?.trim();
        if text.len() == 64 {
            let decoded = Zeroizing::new(hex::decode(text).ok()?);
            key.copy_from_slice(decoded.get(..32)?);
            return Some(AtRestKey { key });
        }
        use base64::Engine;
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
        );
        if decoded.len() != 32 {
            return None;
        }
        key.copy_from_slice(&decoded);
        Some(AtRestKey { key })
    }

    /// Reads the key file at `path`, refusing one other users can read.
    pub fn load(path: &Path) -> Result<AtRestKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o044 != 0 {
            return Err(KeyError::Readable {
                path: path.to_path_buf(),
                mode,
            });
        }
        // A key file is tiny: anything larger is not one (and is not read).
        if meta.len() > 1024 {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
            });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
        AtRestKey::parse(&bytes).ok_or_else(|| KeyError::Malformed {
            path: path.to_path_buf(),
        })
    }

    /// Reads the key file at `path`, or creates it (0600, 32 random bytes)
    /// when there is none; whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(AtRestKey, bool), KeyError> {
        let key = AtRestKey::generate();
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(&key.key[..])
                    .and_then(|()| file.sync_all())
                    .map_err(|source| KeyError::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                Ok((key, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((AtRestKey::load(path)?, false))
            }
            Err(source) => Err(KeyError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Names the key without revealing it, for logs and errors: the first
    /// 8 bytes of a SHA-256 over a label and the key, hexadecimal.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"kbs at-rest key fingerprint");
        h.update(&self.key[..]);
        hex::encode(h.finalize().get(..8).unwrap_or_default())
    }

    fn cipher(&self) -> aes_gcm::Aes256Gcm {
        aes_gcm::Aes256Gcm::new((&*self.key).into())
    }

    /// Seals `plain`, bound to `row` (what the value is and whose).
    pub fn seal(&self, row: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plain,
                    aad: row.as_bytes(),
                },
            )
            // AES-GCM fails only on inputs of about 64 GiB; values here are
            // at most a few MiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `row`; `None` if it was sealed under another
    /// key, for another row, or altered.
    pub fn open(&self, row: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at_checked(12)?;
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        self.cipher()
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: row.as_bytes(),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_for_its_row_under_its_key() {
        let key = AtRestKey::generate();
        let sealed = key.seal("secret:a", b"value");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(key.open("secret:a", &sealed).unwrap().as_slice(), b"value");
        assert!(key.open("secret:b", &sealed).is_none());
        assert!(AtRestKey::generate().open("secret:a", &sealed).is_none());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(key.open("secret:a", &altered).is_none());
        assert!(key.open("secret:a", &sealed[..10]).is_none());
        assert!(key.open("secret:a", b"").is_none());
        // Fresh nonces: the same value seals differently.
        assert_ne!(key.seal("secret:a", b"value"), sealed);
    }

    #[test]
    fn key_files_take_raw_hex_and_base64_and_nothing_else() {
        let raw = [7u8; 32];
        let from_raw = AtRestKey::parse(&raw).unwrap();
        let hex_text = format!("{}\n", hex::encode(raw));
        let from_hex = AtRestKey::parse(hex_text.as_bytes()).unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let from_b64 = AtRestKey::parse(b64.as_bytes()).unwrap();
        assert_eq!(from_raw.fingerprint(), from_hex.fingerprint());
        assert_eq!(from_raw.fingerprint(), from_b64.fingerprint());
        for bad in [&b""[..], b"short", &[1u8; 31], &[1u8; 33], &[b'z'; 64]] {
            assert!(AtRestKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_file_is_created_private_and_refused_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("at-rest.key");
        let (created, fresh) = AtRestKey::load_or_create(&path).unwrap();
        assert!(fresh);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, fresh) = AtRestKey::load_or_create(&path).unwrap();
        assert!(!fresh);
        assert_eq!(created.fingerprint(), again.fingerprint());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AtRestKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, b"not a key").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = AtRestKey::load(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.key") && e.contains("32 bytes"), "{e}");
    }
}
