//! Signing and verifying an image in a registry: the pure parts
//! ([`crate::payload`], [`crate::attachment`], [`crate::verify`]) driven over a
//! [`RegistryClient`].

use crate::attachment::{
    signature_layer, ManifestError, SignatureManifest, MAX_CONFIG_LEN, MAX_MANIFEST_LEN,
};
use crate::keys::{PublicKey, SigningKey};
use crate::payload::{SimpleSigningPayload, MAX_PAYLOAD_LEN};
use crate::reference::{Digest, ImageReference, ReferenceError};
use crate::registry::{
    RegistryClient, RegistryError, IMAGE_MANIFEST_ACCEPT, SIGNATURE_MANIFEST_ACCEPT,
};
use crate::verify::{check_layer, verify_layer, LayerFailure, VerifiedSignature};
use base64::Engine as _;
use thiserror::Error;

/// Why signing or verifying failed as a whole.
#[derive(Debug, Error)]
pub enum OpsError {
    /// The reference is unusable (tag only, malformed).
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry has no manifest at the image's digest.
    #[error("{image}: no such image manifest in the registry")]
    ImageNotFound {
        /// The image.
        image: String,
    },
    /// The existing signature manifest is unreadable.
    #[error("{reference}: {source}")]
    Manifest {
        /// The signature tag reference.
        reference: String,
        /// What is wrong with it.
        source: ManifestError,
    },
    /// There is no signature tag for the image.
    #[error("{image} has no signatures: no manifest at {signature_reference}")]
    NoSignatures {
        /// The image.
        image: String,
        /// Where cosign's signatures would be.
        signature_reference: String,
    },
    /// There are signatures, but none verifies.
    #[error("no signature of {image} verifies ({} in {signature_reference}){}", failures.len(),
        failures.iter().map(|(l, f)| format!("\n  layer {l}: {f}")).collect::<String>())]
    NoValidSignature {
        /// The image.
        image: String,
        /// The signature tag reference.
        signature_reference: String,
        /// Each layer and why it failed.
        failures: Vec<(String, LayerFailure)>,
    },
}

/// What signing did.
#[derive(Debug, Clone)]
pub struct SignOutcome {
    /// `registry/repository:sha256-<hex>.sig`.
    pub signature_reference: String,
    /// Digest of the signature manifest now under that tag.
    pub manifest_digest: Digest,
    /// Whether a layer was added (false: the same signature was already there
    /// and nothing was pushed).
    pub added: bool,
    /// How many layers the signature manifest has.
    pub layer_count: usize,
    /// The payload signed.
    pub payload: SimpleSigningPayload,
}

/// What verification found.
#[derive(Debug)]
pub struct VerifyReport {
    /// `registry/repository:sha256-<hex>.sig`.
    pub signature_reference: String,
    /// Signatures that verified (at least one).
    pub verified: Vec<VerifiedSignature>,
    /// Layers that did not verify, with the reason.
    pub failures: Vec<(String, LayerFailure)>,
}

/// Signs `image` (which must name its digest) with `key` and pushes the
/// signature to its `sha256-<hex>.sig` tag, keeping the signatures already
/// there.
///
/// The image manifest must exist at that digest (and hash to it): a signature
/// for an image the registry does not have is refused.
pub fn sign_image(
    client: &mut RegistryClient,
    image: &ImageReference,
    key: &SigningKey,
) -> Result<SignOutcome, OpsError> {
    let digest = image.require_digest()?.clone();
    let repo = image.repository();
    if client
        .manifest(
            repo,
            &digest.to_string(),
            IMAGE_MANIFEST_ACCEPT,
            MAX_MANIFEST_LEN,
        )?
        .is_none()
    {
        return Err(OpsError::ImageNotFound {
            image: image.to_string(),
        });
    }
    let payload = SimpleSigningPayload::new(image.repository_name(), digest.clone());
    let payload_bytes = payload.to_bytes();
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload_bytes));

    let tag = digest.signature_tag();
    let signature_reference = image.with_tag(&tag).to_string();
    let manifest_error = |source| OpsError::Manifest {
        reference: signature_reference.clone(),
        source,
    };
    let (mut manifest, old_config) =
        match client.manifest(repo, &tag, SIGNATURE_MANIFEST_ACCEPT, MAX_MANIFEST_LEN)? {
            Some(m) => {
                let manifest = SignatureManifest::parse(&m.bytes).map_err(manifest_error)?;
                let config_digest = Digest::parse(&manifest.config.digest).map_err(|_| {
                    manifest_error(ManifestError::Config(format!(
                        "config digest {:?} is not a sha256 digest",
                        manifest.config.digest
                    )))
                })?;
                let config = client.blob(repo, &config_digest, MAX_CONFIG_LEN)?;
                (manifest, Some(config))
            }
            None => (SignatureManifest::empty(), None),
        };
    let added = manifest
        .add_layer(signature_layer(&payload_bytes, &signature))
        .map_err(manifest_error)?;
    if !added {
        let current = client
            .manifest(repo, &tag, SIGNATURE_MANIFEST_ACCEPT, MAX_MANIFEST_LEN)?
            .map(|m| m.digest)
            .unwrap_or_else(|| Digest::of(&manifest.to_bytes()));
        return Ok(SignOutcome {
            signature_reference,
            manifest_digest: current,
            added: false,
            layer_count: manifest.layers.len(),
            payload,
        });
    }
    client.push_blob(repo, &payload_bytes)?;
    let config = manifest
        .config_blob(old_config.as_deref())
        .map_err(manifest_error)?;
    client.push_blob(repo, &config)?;
    manifest.set_config(&config);
    let manifest_digest =
        client.push_manifest(repo, &tag, manifest.content_type(), &manifest.to_bytes())?;
    Ok(SignOutcome {
        signature_reference,
        manifest_digest,
        added: true,
        layer_count: manifest.layers.len(),
        payload,
    })
}

/// Verifies the signatures of `image` (which must name its digest) against
/// `key`: succeeds if at least one layer of its `sha256-<hex>.sig` manifest
/// verifies, and reports why each other layer did not.
pub fn verify_image(
    client: &mut RegistryClient,
    image: &ImageReference,
    key: &PublicKey,
) -> Result<VerifyReport, OpsError> {
    let digest = image.require_digest()?.clone();
    let repo = image.repository();
    if !client.manifest_exists(repo, &digest.to_string(), IMAGE_MANIFEST_ACCEPT)? {
        return Err(OpsError::ImageNotFound {
            image: image.to_string(),
        });
    }
    let tag = digest.signature_tag();
    let signature_reference = image.with_tag(&tag).to_string();
    let Some(fetched) = client.manifest(repo, &tag, SIGNATURE_MANIFEST_ACCEPT, MAX_MANIFEST_LEN)?
    else {
        return Err(OpsError::NoSignatures {
            image: image.to_string(),
            signature_reference,
        });
    };
    let manifest =
        SignatureManifest::parse(&fetched.bytes).map_err(|source| OpsError::Manifest {
            reference: signature_reference.clone(),
            source,
        })?;
    let mut verified = Vec::new();
    let mut failures = Vec::new();
    for layer in &manifest.layers {
        let outcome = check_layer(layer).and_then(|(payload_digest, _)| {
            let payload = client
                .blob(repo, &payload_digest, MAX_PAYLOAD_LEN)
                .map_err(|e| LayerFailure::Fetch(e.to_string()))?;
            verify_layer(key, image, &digest, layer, &payload)
        });
        match outcome {
            Ok(v) => verified.push(v),
            Err(f) => failures.push((layer.digest.chars().take(100).collect(), f)),
        }
    }
    if verified.is_empty() {
        return Err(OpsError::NoValidSignature {
            image: image.to_string(),
            signature_reference,
            failures,
        });
    }
    Ok(VerifyReport {
        signature_reference,
        verified,
        failures,
    })
}
