//! The simple-signing payload: the JSON document a cosign signature is made
//! over (containers/image's `containers-signature(5)` format with cosign's
//! `type`).
//!
//! Written exactly as cosign writes it, so the bytes match what cosign would
//! sign for the same image:
//!
//! ```json
//! {"critical":{"identity":{"docker-reference":"<registry>/<repository>"},
//!  "image":{"docker-manifest-digest":"sha256:<hex>"},
//!  "type":"cosign container image signature"},"optional":null}
//! ```
//!
//! Read strictly, like containers/image: the `critical` part must have exactly
//! these fields (an unknown claim there is one we would silently ignore), and
//! `optional` is null or an object of anything (skopeo puts `creator` and
//! `timestamp` there).

use crate::reference::{Digest, ReferenceError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `critical.type` of cosign signatures.
pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";
/// Media type of the payload blob (the signature layer).
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Largest payload read from a registry.
pub const MAX_PAYLOAD_LEN: usize = 1024 * 1024;

/// Why a payload was refused.
#[derive(Debug, Error)]
pub enum PayloadError {
    /// Not JSON of the simple-signing shape (missing, unknown or duplicate
    /// fields, wrong types).
    #[error("simple-signing payload: {0}")]
    Json(String),
    /// `critical.type` is not cosign's.
    #[error("simple-signing payload: critical.type is {0:?}, expected \"cosign container image signature\"")]
    Type(String),
    /// `critical.image.docker-manifest-digest` is not a sha256 digest.
    #[error("simple-signing payload: critical.image.docker-manifest-digest: {0}")]
    Digest(ReferenceError),
    /// `critical.identity.docker-reference` is empty.
    #[error("simple-signing payload: critical.identity.docker-reference is empty")]
    EmptyReference,
    /// Larger than any payload.
    #[error("simple-signing payload is {0} bytes, more than the 1 MiB limit")]
    TooLarge(usize),
}

/// A simple-signing payload.
#[derive(Debug, Clone, PartialEq)]
pub struct SimpleSigningPayload {
    /// `critical.identity.docker-reference`: the repository the signer meant.
    pub docker_reference: String,
    /// `critical.image.docker-manifest-digest`: the image manifest signed.
    pub manifest_digest: Digest,
    /// `optional`: free-form claims, `None` for JSON null.
    pub optional: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    critical: CriticalWire,
    #[serde(default)]
    optional: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CriticalWire {
    identity: IdentityWire,
    image: ImageWire,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityWire {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageWire {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

impl SimpleSigningPayload {
    /// The payload cosign signs for the image `docker_reference@manifest_digest`.
    pub fn new(docker_reference: String, manifest_digest: Digest) -> SimpleSigningPayload {
        SimpleSigningPayload {
            docker_reference,
            manifest_digest,
            optional: None,
        }
    }

    /// The JSON bytes, in cosign's field order and without whitespace.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            critical: CriticalWire {
                identity: IdentityWire {
                    docker_reference: self.docker_reference.clone(),
                },
                image: ImageWire {
                    docker_manifest_digest: self.manifest_digest.to_string(),
                },
                kind: COSIGN_SIGNATURE_TYPE.to_string(),
            },
            optional: self.optional.clone(),
        };
        // Strings and JSON values always serialize.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses and checks a payload.
    pub fn parse(bytes: &[u8]) -> Result<SimpleSigningPayload, PayloadError> {
        if bytes.len() > MAX_PAYLOAD_LEN {
            return Err(PayloadError::TooLarge(bytes.len()));
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| PayloadError::Json(e.to_string()))?;
        if wire.critical.kind != COSIGN_SIGNATURE_TYPE {
            return Err(PayloadError::Type(
                wire.critical.kind.chars().take(200).collect(),
            ));
        }
        let manifest_digest = Digest::parse(&wire.critical.image.docker_manifest_digest)
            .map_err(PayloadError::Digest)?;
        if wire.critical.identity.docker_reference.is_empty() {
            return Err(PayloadError::EmptyReference);
        }
        Ok(SimpleSigningPayload {
            docker_reference: wire.critical.identity.docker_reference,
            manifest_digest,
            optional: wire.optional,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn exact_bytes_of_cosign() {
        let p = SimpleSigningPayload::new(
            "127.0.0.1:5000/demo/hello".to_string(),
            Digest::parse(&format!("sha256:{HEX}")).unwrap(),
        );
        let expected = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/demo/hello"}},"image":{{"docker-manifest-digest":"sha256:{HEX}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        assert_eq!(String::from_utf8(p.to_bytes()).unwrap(), expected);
        assert_eq!(SimpleSigningPayload::parse(expected.as_bytes()).unwrap(), p);
    }

    #[test]
    fn skopeo_style_optional_is_read() {
        let text = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a:v1"}},"image":{{"docker-manifest-digest":"sha256:{HEX}"}},"type":"cosign container image signature"}},"optional":{{"creator":"containers/image 5.23.1","timestamp":1700000000}}}}"#
        );
        let p = SimpleSigningPayload::parse(text.as_bytes()).unwrap();
        assert_eq!(p.docker_reference, "r.io/a:v1");
        assert_eq!(p.optional.unwrap()["timestamp"], 1_700_000_000);
        // optional may be missing altogether.
        let text = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a"}},"image":{{"docker-manifest-digest":"sha256:{HEX}"}},"type":"cosign container image signature"}}}}"#
        );
        assert!(SimpleSigningPayload::parse(text.as_bytes())
            .unwrap()
            .optional
            .is_none());
    }

    #[test]
    fn malformed_payloads_are_named() {
        let good = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.io/a"}},"image":{{"docker-manifest-digest":"sha256:{HEX}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let cases = [
            (
                good.replace("cosign container", "atomic container"),
                "critical.type",
            ),
            (
                good.replace("sha256:0123", "sha256:XYZ"),
                "docker-manifest-digest",
            ),
            (
                good.replace("\"r.io/a\"", "\"\""),
                "docker-reference is empty",
            ),
            (
                good.replace("\"docker-reference\"", "\"Docker-reference\""),
                "unknown field",
            ),
            (
                good.replace("\"image\"", "\"extra\":1,\"image\""),
                "unknown field",
            ),
            (
                good.replace("\"optional\":null", "\"optional\":[]"),
                "invalid type",
            ),
            (
                good.replace("\"optional\":null", "\"optional\":null,\"optional\":null"),
                "duplicate",
            ),
            ("{".to_string(), "EOF"),
            ("null".to_string(), "invalid type"),
        ];
        for (text, needle) in cases {
            let e = SimpleSigningPayload::parse(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        let big = vec![b' '; MAX_PAYLOAD_LEN + 1];
        assert!(matches!(
            SimpleSigningPayload::parse(&big),
            Err(PayloadError::TooLarge(_))
        ));
    }
}
