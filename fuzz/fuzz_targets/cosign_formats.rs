//! The parsers of cosign's formats, fed what files and registries can hand
//! them: encrypted private keys (PEM and the JSON envelope), public keys,
//! simple-signing payloads, image references, signature manifests,
//! `WWW-Authenticate` challenges and docker config files. None may panic, and
//! what parses must come back unchanged from writing and parsing it again:
//! - an encrypted key's PEM, a public key's PEM, a payload's JSON and a
//!   manifest's JSON re-parse to the same value;
//! - an image reference's display re-parses to the same (normalised) reference.
//!
//! Keys with cheap scrypt parameters are also decrypted, which must fail or
//! succeed without panicking.
#![no_main]

use image_signature::attachment::SignatureManifest;
use image_signature::keys::EncryptedPrivateKey;
use image_signature::registry::{credentials_from_docker_config, parse_challenges};
use image_signature::verify::{check_layer, verify_layer};
use image_signature::{Digest, ImageReference, PublicKey, SigningKey, SimpleSigningPayload};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn fixed_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(SigningKey::generate)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(k) = EncryptedPrivateKey::parse_pem(&text) {
        assert_eq!(
            EncryptedPrivateKey::parse_pem(&k.to_pem()).ok(),
            Some(k.clone())
        );
        let cost = k.params.n() * u64::from(k.params.r) * u64::from(k.params.p);
        if cost <= 4096 {
            let _ = k.decrypt(b"");
        }
    }
    if let Ok(k) = EncryptedPrivateKey::parse_json(data) {
        assert_eq!(EncryptedPrivateKey::parse_json(&k.to_json()).ok(), Some(k));
    }
    if let Ok(p) = PublicKey::from_pem(&text) {
        let pem = p.to_pem().expect("a parsed key encodes");
        assert_eq!(PublicKey::from_pem(&pem).ok(), Some(p));
    }

    if let Ok(p) = SimpleSigningPayload::parse(data) {
        assert_eq!(SimpleSigningPayload::parse(&p.to_bytes()).ok(), Some(p));
    }

    if let Ok(r) = ImageReference::parse(&text) {
        let again = ImageReference::parse(&r.to_string()).expect("display re-parses");
        assert_eq!(again, r);
        let _ = r.is_loopback_registry();
        let _ = ImageReference::parse(&r.repository_name()).expect("repository re-parses");
        if let Some(d) = r.digest() {
            let _ = r.with_tag(&d.signature_tag());
        }
    }
    let _ = Digest::parse(&text);

    if let Ok(m) = SignatureManifest::parse(data) {
        let again = SignatureManifest::parse(&m.to_bytes()).expect("written manifest re-parses");
        assert_eq!(again, m);
        let _ = m.config_blob(None).expect("config for parsed layers");
        let image = ImageReference::parse(&format!("r.io/demo/app@{}", Digest::of(b"image")))
            .expect("fixed reference");
        let digest = Digest::of(b"image");
        for layer in &m.layers {
            if check_layer(layer).is_ok() {
                let _ = verify_layer(&fixed_key().public_key(), &image, &digest, layer, data);
            }
        }
    }

    let _ = parse_challenges(&text);
    let _ = credentials_from_docker_config(data, "r.io");
});
