//! The signature attachment: the OCI image manifest cosign pushes under the tag
//! `sha256-<image digest hex>.sig` in the image's repository.
//!
//! Each signature is one layer: the payload blob (media type
//! `application/vnd.dev.cosign.simplesigning.v1+json`) with the base64 DER
//! signature in the layer annotation `dev.cosignproject.cosign/signature`. The
//! config is an OCI image config whose `rootfs.diff_ids` list the layer
//! digests, as cosign and containers/image write it.
//!
//! Adding a signature keeps every existing layer as it was read (fields we do not
//! know included, such as cosign's certificate or bundle annotations), and does
//! not add a layer that is already there.

use crate::payload::SIMPLE_SIGNING_MEDIA_TYPE;
use crate::reference::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// OCI image manifest media type (what we write).
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest media type (read too).
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Largest manifest read from a registry.
pub const MAX_MANIFEST_LEN: usize = 4 * 1024 * 1024;
/// Largest config blob of a signature manifest read from a registry.
pub const MAX_CONFIG_LEN: usize = 1024 * 1024;
/// More signature layers than this is not a signature manifest we read.
pub const MAX_LAYERS: usize = 1000;

/// Why a signature manifest or config was refused.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Not JSON of an image manifest's shape.
    #[error("signature manifest: {0}")]
    Json(String),
    /// `schemaVersion` is not 2.
    #[error("signature manifest: schemaVersion is {0}, expected 2")]
    SchemaVersion(u64),
    /// `mediaType` is not an image manifest.
    #[error("signature manifest: mediaType {0:?} is not an image manifest")]
    MediaType(String),
    /// Too many layers.
    #[error("signature manifest has {0} layers, more than the {MAX_LAYERS} we read")]
    TooManyLayers(usize),
    /// Larger than any manifest.
    #[error("signature manifest is {0} bytes, more than the 4 MiB limit")]
    TooLarge(usize),
    /// The existing config is not a JSON object.
    #[error("signature manifest config: {0}")]
    Config(String),
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    pub media_type: String,
    /// Digest of the content, as written (checked where used).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Any other field, kept as read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Descriptor {
    /// The descriptor of `bytes` with a media type.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(bytes).to_string(),
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// The signature annotation, if any.
    pub fn signature(&self) -> Option<&str> {
        self.annotations
            .get(SIGNATURE_ANNOTATION)
            .map(String::as_str)
    }
}

/// The layer of one signature: the payload's descriptor plus the signature.
pub fn signature_layer(payload: &[u8], signature_base64: &str) -> Descriptor {
    let mut d = Descriptor::of(SIMPLE_SIGNING_MEDIA_TYPE, payload);
    d.annotations.insert(
        SIGNATURE_ANNOTATION.to_string(),
        signature_base64.to_string(),
    );
    d
}

/// A signature manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureManifest {
    /// Always 2.
    pub schema_version: u64,
    /// The manifest media type; cosign writes the OCI one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// One layer per signature.
    pub layers: Vec<Descriptor>,
    /// Any other field (annotations, subject), kept as read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl SignatureManifest {
    /// A manifest with no signature yet; its config descriptor is set by
    /// [`SignatureManifest::set_config`].
    pub fn empty() -> SignatureManifest {
        SignatureManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST_MEDIA_TYPE.to_string()),
            config: Descriptor::of(OCI_CONFIG_MEDIA_TYPE, b"{}"),
            layers: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// Parses and checks a manifest read from a registry.
    pub fn parse(bytes: &[u8]) -> Result<SignatureManifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let m: SignatureManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if m.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(m.schema_version));
        }
        if let Some(mt) = &m.media_type {
            if mt != OCI_MANIFEST_MEDIA_TYPE && mt != DOCKER_MANIFEST_MEDIA_TYPE {
                return Err(ManifestError::MediaType(mt.chars().take(200).collect()));
            }
        }
        if m.layers.len() > MAX_LAYERS {
            return Err(ManifestError::TooManyLayers(m.layers.len()));
        }
        Ok(m)
    }

    /// The manifest's media type for the `Content-Type` of a push.
    pub fn content_type(&self) -> &str {
        self.media_type
            .as_deref()
            .unwrap_or(OCI_MANIFEST_MEDIA_TYPE)
    }

    /// The JSON bytes to push.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether a layer with the same media type, digest, size and annotations
    /// is already there.
    pub fn contains(&self, layer: &Descriptor) -> bool {
        self.layers.iter().any(|l| {
            l.media_type == layer.media_type
                && l.digest == layer.digest
                && l.size == layer.size
                && l.annotations == layer.annotations
        })
    }

    /// Adds `layer` unless it is already there; tells whether it was added.
    pub fn add_layer(&mut self, layer: Descriptor) -> Result<bool, ManifestError> {
        if self.contains(&layer) {
            return Ok(false);
        }
        if self.layers.len() >= MAX_LAYERS {
            return Err(ManifestError::TooManyLayers(self.layers.len() + 1));
        }
        self.layers.push(layer);
        Ok(true)
    }

    /// The config blob for the current layers: `existing` (the config already
    /// pushed, if any) with `rootfs` set to the layer digests, or a new minimal
    /// OCI image config.
    pub fn config_blob(&self, existing: Option<&[u8]>) -> Result<Vec<u8>, ManifestError> {
        let mut config = match existing {
            Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(serde_json::Value::Object(o)) => o,
                Ok(_) => return Err(ManifestError::Config("not a JSON object".to_string())),
                Err(e) => return Err(ManifestError::Config(e.to_string())),
            },
            None => {
                let mut o = serde_json::Map::new();
                o.insert("architecture".into(), "".into());
                o.insert("os".into(), "".into());
                o.insert("config".into(), serde_json::json!({}));
                o
            }
        };
        let diff_ids: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| serde_json::Value::String(l.digest.clone()))
            .collect();
        config.insert(
            "rootfs".into(),
            serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
        );
        Ok(serde_json::to_vec(&config).unwrap_or_default())
    }

    /// Points the manifest at a config blob.
    pub fn set_config(&mut self, config_blob: &[u8]) {
        self.config = Descriptor::of(OCI_CONFIG_MEDIA_TYPE, config_blob);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_manifest_shape() {
        let mut m = SignatureManifest::empty();
        assert!(m.add_layer(signature_layer(b"payload", "c2ln")).unwrap());
        assert!(!m.add_layer(signature_layer(b"payload", "c2ln")).unwrap());
        assert!(m
            .add_layer(signature_layer(b"payload", "b3RoZXI="))
            .unwrap());
        let config = m.config_blob(None).unwrap();
        m.set_config(&config);
        let v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], OCI_MANIFEST_MEDIA_TYPE);
        assert_eq!(v["config"]["mediaType"], OCI_CONFIG_MEDIA_TYPE);
        assert_eq!(v["config"]["digest"], Digest::of(&config).to_string());
        assert_eq!(v["layers"][0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["size"], 7);
        assert_eq!(v["layers"][0]["digest"], Digest::of(b"payload").to_string());
        assert_eq!(v["layers"][0]["annotations"][SIGNATURE_ANNOTATION], "c2ln");
        let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["rootfs"]["type"], "layers");
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let text = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:aa","size":2},
            "layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:bb","size":3,
              "annotations":{"dev.cosignproject.cosign/signature":"x","dev.sigstore.cosign/bundle":"{}"},"urls":["u"]}],
            "annotations":{"k":"v"}}"#;
        let m = SignatureManifest::parse(text.as_bytes()).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        let orig: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig);
        let config = m
            .config_blob(Some(
                br#"{"created":"x","rootfs":{"type":"layers","diff_ids":[]}}"#,
            ))
            .unwrap();
        let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["created"], "x");
        assert_eq!(c["rootfs"]["diff_ids"][0], "sha256:bb");
    }

    #[test]
    fn malformed_manifests_are_named() {
        let cases = [
            ("{", "EOF"),
            (
                r#"{"schemaVersion":1,"config":{"mediaType":"a","digest":"b","size":1},"layers":[]}"#,
                "schemaVersion is 1",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":{"mediaType":"a","digest":"b","size":1},"layers":[]}"#,
                "not an image manifest",
            ),
            (
                r#"{"schemaVersion":2,"layers":[]}"#,
                "missing field `config`",
            ),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"b","size":-1},"layers":[]}"#,
                "invalid value",
            ),
        ];
        for (text, needle) in cases {
            let e = SignatureManifest::parse(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
        let m = SignatureManifest::empty();
        assert!(m.config_blob(Some(b"[]")).is_err());
        assert!(m.config_blob(Some(b"{")).is_err());
    }
}
