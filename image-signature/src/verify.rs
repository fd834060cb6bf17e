//! Checking one signature layer: the payload's digest, the signature against
//! the public key, then the claims (image digest and repository) against the
//! image being verified. Pure: the caller fetches the bytes.
//!
//! The order is cosign's: nothing in a payload is looked at before its
//! signature verifies, so an unsigned claim never shows up in a message as if
//! it were the signer's.

use crate::attachment::{Descriptor, SIGNATURE_ANNOTATION};
use crate::keys::{PublicKey, SignatureError};
use crate::payload::{
    PayloadError, SimpleSigningPayload, MAX_PAYLOAD_LEN, SIMPLE_SIGNING_MEDIA_TYPE,
};
use crate::reference::{Digest, ImageReference};
use base64::Engine as _;
use thiserror::Error;

/// Why one signature layer did not verify.
#[derive(Debug, Error)]
pub enum LayerFailure {
    /// The layer is another kind of attachment.
    #[error("layer media type is {0:?}, not a simple-signing payload")]
    NotSimpleSigning(String),
    /// The layer has no signature annotation.
    #[error("layer has no {SIGNATURE_ANNOTATION} annotation")]
    NoSignature,
    /// The annotation is not base64.
    #[error("signature annotation is not standard base64: {0}")]
    SignatureEncoding(String),
    /// The layer's digest is not a sha256 digest.
    #[error("layer digest {0:?} is not a sha256 digest")]
    LayerDigest(String),
    /// The payload blob is larger than any payload.
    #[error("payload is {0} bytes, more than the 1 MiB limit")]
    PayloadTooLarge(u64),
    /// Fetching the payload failed.
    #[error("fetching the payload failed: {0}")]
    Fetch(String),
    /// The payload's bytes do not hash to the layer's digest.
    #[error("payload bytes hash to {actual}, but the layer says {declared}")]
    PayloadDigest {
        /// The layer's digest.
        declared: String,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The signature does not verify with this key.
    #[error(
        "signature does not verify with the public key {key} (signed with another key, or altered)"
    )]
    WrongKey {
        /// The key's fingerprint.
        key: String,
    },
    /// The signature is not DER.
    #[error("signature is not an ASN.1 DER ECDSA signature")]
    SignatureFormat,
    /// The signed payload does not parse.
    #[error("{0}")]
    Payload(PayloadError),
    /// The signature is over another image.
    #[error("signature is for image {signed}, not {expected}")]
    OtherDigest {
        /// The signed digest.
        signed: Digest,
        /// The image's digest.
        expected: Digest,
    },
    /// The signature is for another repository.
    #[error("signature is for repository {signed}, not {expected}")]
    OtherRepository {
        /// The signed docker-reference.
        signed: String,
        /// The image's repository.
        expected: String,
    },
}

/// A signature that verified.
#[derive(Debug, Clone)]
pub struct VerifiedSignature {
    /// The layer's (payload's) digest.
    pub layer_digest: Digest,
    /// The signed payload.
    pub payload: SimpleSigningPayload,
}

/// What can be checked of a layer before fetching its payload: media type,
/// signature annotation and digest. Returns the payload digest and the DER
/// signature.
pub fn check_layer(layer: &Descriptor) -> Result<(Digest, Vec<u8>), LayerFailure> {
    if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
        return Err(LayerFailure::NotSimpleSigning(
            layer.media_type.chars().take(200).collect(),
        ));
    }
    let sig = layer
        .annotations
        .get(SIGNATURE_ANNOTATION)
        .ok_or(LayerFailure::NoSignature)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.as_bytes())
        .map_err(|e| LayerFailure::SignatureEncoding(e.to_string()))?;
    let digest = Digest::parse(&layer.digest)
        .map_err(|_| LayerFailure::LayerDigest(layer.digest.chars().take(200).collect()))?;
    if layer.size > MAX_PAYLOAD_LEN as u64 {
        return Err(LayerFailure::PayloadTooLarge(layer.size));
    }
    Ok((digest, sig))
}

/// Verifies one layer whose payload bytes have been fetched, for the image
/// `image` (which must carry its digest) and the key `key`.
///
/// The payload's `docker-reference` may carry a tag or digest (skopeo signs
/// `repo:tag`); only its repository is compared, with docker's normalisation
/// (`index.docker.io` is `docker.io`).
pub fn verify_layer(
    key: &PublicKey,
    image: &ImageReference,
    image_digest: &Digest,
    layer: &Descriptor,
    payload: &[u8],
) -> Result<VerifiedSignature, LayerFailure> {
    let (layer_digest, signature) = check_layer(layer)?;
    let actual = Digest::of(payload);
    if actual != layer_digest {
        return Err(LayerFailure::PayloadDigest {
            declared: layer.digest.clone(),
            actual,
        });
    }
    key.verify(payload, &signature).map_err(|e| match e {
        SignatureError::NotDer => LayerFailure::SignatureFormat,
        SignatureError::Mismatch => LayerFailure::WrongKey {
            key: key.fingerprint(),
        },
    })?;
    let parsed = SimpleSigningPayload::parse(payload).map_err(LayerFailure::Payload)?;
    if &parsed.manifest_digest != image_digest {
        return Err(LayerFailure::OtherDigest {
            signed: parsed.manifest_digest,
            expected: image_digest.clone(),
        });
    }
    let same_repo = ImageReference::parse(&parsed.docker_reference)
        .map(|signed| signed.same_repository(image))
        .unwrap_or(false);
    if !same_repo {
        return Err(LayerFailure::OtherRepository {
            signed: parsed.docker_reference.chars().take(300).collect(),
            expected: image.repository_name(),
        });
    }
    Ok(VerifiedSignature {
        layer_digest,
        payload: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::signature_layer;
    use crate::keys::SigningKey;

    fn image(s: &str) -> (ImageReference, Digest) {
        let r = ImageReference::parse(s).unwrap();
        let d = r.require_digest().unwrap().clone();
        (r, d)
    }

    fn signed(key: &SigningKey, reference: &str, digest: &Digest) -> (Descriptor, Vec<u8>) {
        let payload = SimpleSigningPayload::new(reference.to_string(), digest.clone()).to_bytes();
        let sig = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
        (signature_layer(&payload, &sig), payload)
    }

    #[test]
    fn each_failure_is_told_apart() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let da = Digest::of(b"image a");
        let db = Digest::of(b"image b");
        let (img, d) = image(&format!("r.io/demo/app@{da}"));
        let (layer, payload) = signed(&key, "r.io/demo/app", &da);
        let ok = verify_layer(&key.public_key(), &img, &d, &layer, &payload).unwrap();
        assert_eq!(ok.payload.manifest_digest, da);

        let e = verify_layer(&other.public_key(), &img, &d, &layer, &payload).unwrap_err();
        assert!(matches!(e, LayerFailure::WrongKey { .. }), "{e}");

        let (layer_b, payload_b) = signed(&key, "r.io/demo/app", &db);
        let e = verify_layer(&key.public_key(), &img, &d, &layer_b, &payload_b).unwrap_err();
        assert!(matches!(e, LayerFailure::OtherDigest { .. }), "{e}");

        let (layer_r, payload_r) = signed(&key, "r.io/demo/other", &da);
        let e = verify_layer(&key.public_key(), &img, &d, &layer_r, &payload_r).unwrap_err();
        assert!(e.to_string().contains("repository r.io/demo/other"), "{e}");

        let e = verify_layer(&key.public_key(), &img, &d, &layer, b"tampered").unwrap_err();
        assert!(matches!(e, LayerFailure::PayloadDigest { .. }), "{e}");

        let mut l = layer.clone();
        l.annotations.clear();
        let e = verify_layer(&key.public_key(), &img, &d, &l, &payload).unwrap_err();
        assert!(matches!(e, LayerFailure::NoSignature), "{e}");
        l.annotations
            .insert(SIGNATURE_ANNOTATION.into(), "***".into());
        let e = verify_layer(&key.public_key(), &img, &d, &l, &payload).unwrap_err();
        assert!(matches!(e, LayerFailure::SignatureEncoding(_)), "{e}");
        l.annotations
            .insert(SIGNATURE_ANNOTATION.into(), "AAAA".into());
        let e = verify_layer(&key.public_key(), &img, &d, &l, &payload).unwrap_err();
        assert!(matches!(e, LayerFailure::SignatureFormat), "{e}");
        let mut l = layer.clone();
        l.media_type = "application/vnd.dsse.envelope.v1+json".into();
        let e = verify_layer(&key.public_key(), &img, &d, &l, &payload).unwrap_err();
        assert!(matches!(e, LayerFailure::NotSimpleSigning(_)), "{e}");
        let mut l = layer;
        l.size = 2 << 20;
        assert!(matches!(
            check_layer(&l),
            Err(LayerFailure::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn repository_comparison_normalises() {
        let key = SigningKey::generate();
        let da = Digest::of(b"a");
        let (img, d) = image(&format!("busybox@{da}"));
        for signed_ref in [
            "docker.io/library/busybox",
            "index.docker.io/library/busybox",
            "busybox:latest",
            "docker.io/library/busybox:1.36",
        ] {
            let (layer, payload) = signed(&key, signed_ref, &da);
            verify_layer(&key.public_key(), &img, &d, &layer, &payload)
                .unwrap_or_else(|e| panic!("{signed_ref}: {e}"));
        }
        for signed_ref in [
            "docker.io/other/busybox",
            "quay.io/library/busybox",
            "not a ref",
        ] {
            let (layer, payload) = signed(&key, signed_ref, &da);
            assert!(
                verify_layer(&key.public_key(), &img, &d, &layer, &payload).is_err(),
                "{signed_ref}"
            );
        }
    }
}
