//! Cross-checks with sigstore-rs, an independent implementation of cosign's
//! formats and the one the guest's image-rs verifies signatures with:
//!
//! - it opens private keys we write, and we open the ones it writes;
//! - against a real registry on loopback, its cosign client finds and verifies
//!   the signatures we push (and refuses them with another key), and we verify
//!   the signatures it pushes.
//!
//! Debian's skopeo 1.9.3 is built with sigstore support removed, so it cannot
//! serve as this second implementation here.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use image_signature::keys::ScryptParams;
use image_signature::{
    sign_image, verify_image, ClientOptions, ImageReference, OpsError, PublicKey, RegistryClient,
    SigningKey,
};
use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{
    verify_constraints, ClientBuilder, Constraint, CosignCapabilities, SignatureLayer,
};
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::SigningScheme;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sigstore_client() -> sigstore::cosign::Client {
    ClientBuilder::default()
        .with_oci_client_config(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
        .build()
        .unwrap()
}

fn verifier(public_pem: &str) -> VerificationConstraintVec {
    vec![Box::new(
        PublicKeyVerifier::new(
            public_pem.as_bytes(),
            &SigningScheme::ECDSA_P256_SHA256_ASN1,
        )
        .unwrap(),
    )]
}

#[test]
fn sigstore_rs_opens_our_keys_and_we_open_its_keys() {
    // Ours, at a cost sigstore-rs accepts (it takes N of 2^15 or 2^16 only).
    let ours = SigningKey::generate();
    let pem = ours
        .to_encrypted_pem_with(
            b"s3cret",
            ScryptParams {
                log_n: 15,
                r: 8,
                p: 1,
            },
        )
        .unwrap();
    let theirs = SigStoreKeyPair::from_encrypted_pem(pem.as_bytes(), b"s3cret").unwrap();
    assert_eq!(
        PublicKey::from_pem(&theirs.public_key_to_pem().unwrap()).unwrap(),
        ours.public_key()
    );
    assert!(SigStoreKeyPair::from_encrypted_pem(pem.as_bytes(), b"wrong").is_err());

    // Theirs, read by us.
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .unwrap();
    let pair = signer.to_sigstore_keypair().unwrap();
    let their_pem = pair.private_key_to_encrypted_pem(b"pw").unwrap();
    let key = SigningKey::from_encrypted_pem(&their_pem, b"pw").unwrap();
    assert_eq!(
        key.public_key(),
        PublicKey::from_pem(&pair.public_key_to_pem().unwrap()).unwrap()
    );
    // And a signature of ours verifies with their verifier, over the same bytes.
    let sig = key.sign(b"blob");
    let b64 = base64_encode(&sig);
    <sigstore::cosign::Client as CosignCapabilities>::verify_blob_with_public_key(
        &pair.public_key_to_pem().unwrap(),
        &b64,
        b"blob",
    )
    .unwrap();
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn sigstore_rs_verifies_what_we_push_and_we_verify_what_it_pushes() {
    let registry = support::Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image_a = support::write_image(work.path(), "a");
    let image_b = support::write_image(work.path(), "b");
    support::push(&image_a, &registry.host, "demo/hello");
    support::push(&image_b, &registry.host, "demo/hello");
    let ref_a =
        ImageReference::parse(&format!("{}/demo/hello@{}", registry.host, image_a.digest)).unwrap();
    let ref_b =
        ImageReference::parse(&format!("{}/demo/hello@{}", registry.host, image_b.digest)).unwrap();
    let key1 = SigningKey::generate();
    let key2 = SigningKey::generate();
    let pub1 = key1.public_key().to_pem().unwrap();
    let pub2 = key2.public_key().to_pem().unwrap();
    let mut ours = RegistryClient::connect(&ref_a, &ClientOptions::default()).unwrap();
    sign_image(&mut ours, &ref_a, &key1).unwrap();

    let rt = runtime();
    let oci_a: OciReference = ref_a.to_string().parse().unwrap();
    let layers = rt
        .block_on(sigstore_client().trusted_signature_layers(&Auth::Anonymous, &oci_a))
        .unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0].simple_signing.critical.identity.docker_reference,
        format!("{}/demo/hello", registry.host)
    );
    verify_constraints(&layers, verifier(&pub1).iter()).expect("sigstore-rs accepts key 1");
    assert!(
        verify_constraints(&layers, verifier(&pub2).iter()).is_err(),
        "sigstore-rs accepted another key"
    );

    // A second signer adds a layer; sigstore-rs sees both, each key verifies.
    let outcome = sign_image(&mut ours, &ref_a, &key2).unwrap();
    assert!(outcome.added);
    assert_eq!(outcome.layer_count, 2);
    let layers = rt
        .block_on(sigstore_client().trusted_signature_layers(&Auth::Anonymous, &oci_a))
        .unwrap();
    assert_eq!(layers.len(), 2);
    verify_constraints(&layers, verifier(&pub1).iter()).unwrap();
    verify_constraints(&layers, verifier(&pub2).iter()).unwrap();

    // sigstore-rs signs image B with its own key and pushes; we verify.
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .unwrap();
    let their_pub = signer
        .to_sigstore_keypair()
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    let oci_b: OciReference = ref_b.to_string().parse().unwrap();
    let mut layer = SignatureLayer::new_unsigned(&oci_b, &image_b.digest.to_string()).unwrap();
    assert!(PrivateKeySigner::new_with_signer(signer)
        .add_constraint(&mut layer)
        .unwrap());
    let sig_tag: OciReference = ref_b
        .with_tag(&image_b.digest.signature_tag())
        .to_string()
        .parse()
        .unwrap();
    rt.block_on(sigstore_client().push_signature(None, &Auth::Anonymous, &sig_tag, vec![layer]))
        .unwrap();
    let report = verify_image(&mut ours, &ref_b, &PublicKey::from_pem(&their_pub).unwrap())
        .expect("we accept sigstore-rs's signature");
    assert_eq!(report.verified.len(), 1);
    assert_eq!(report.verified[0].payload.manifest_digest, image_b.digest);
    // ... and only with its key.
    let e = verify_image(&mut ours, &ref_b, &key1.public_key()).unwrap_err();
    assert!(matches!(e, OpsError::NoValidSignature { .. }), "{e}");

    // Our signatures of A do not verify for B, even copied to B's tag: the
    // signed digest is A's. sigstore-rs refuses them for B just the same.
    let a_sig = ours
        .manifest(
            "demo/hello",
            &image_a.digest.signature_tag(),
            image_signature::registry::SIGNATURE_MANIFEST_ACCEPT,
            1 << 20,
        )
        .unwrap()
        .unwrap();
    ours.push_manifest(
        "demo/hello",
        &image_b.digest.signature_tag(),
        "application/vnd.oci.image.manifest.v1+json",
        &a_sig.bytes,
    )
    .unwrap();
    let e = verify_image(&mut ours, &ref_b, &key1.public_key()).unwrap_err();
    assert!(e.to_string().contains("signature is for image"), "{e}");
    let layers = rt
        .block_on(sigstore_client().trusted_signature_layers(&Auth::Anonymous, &oci_b))
        .unwrap_or_default();
    assert!(verify_constraints(&layers, verifier(&pub1).iter()).is_err());
}
