//! The guest components client against the simulated REST server: resources
//! through the confidential data hub, the attestation agent's token, and the
//! checks of Trustee's EAR token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guest_client::guest_components::{
    check_token, fetch_resource, fetch_token, parse_resource_uri, SignatureCheck, MAX_BODY_LEN,
};
use sev_sim::guest_components::{
    tamper_signature, EarStatus, EarTokenSigner, EarTokenSpec, Fault, GuestComponentsConfig,
    GuestComponentsServer, RestFeatures,
};

const T: Duration = Duration::from_secs(5);
const MEASUREMENT: [u8; 48] = [0x3c; 48];

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn serve(config: GuestComponentsConfig) -> GuestComponentsServer {
    GuestComponentsServer::start(config).unwrap()
}

/// A server with the attestation API on, handing out a token of `spec`.
fn token_server(signer: &EarTokenSigner, spec: &EarTokenSpec) -> GuestComponentsServer {
    serve(
        GuestComponentsConfig::new(RestFeatures::All)
            .with_token(signer.sign(spec).unwrap())
            .with_tee_keypair_pem(signer.tee_keypair_pem().unwrap()),
    )
}

#[tokio::test]
async fn resource_fetched() {
    let server = serve(
        GuestComponentsConfig::new(RestFeatures::Resource)
            .with_resource("default/key/one", vec![9u8; 1234]),
    );
    let res = parse_resource_uri("kbs:///default/key/one").unwrap();
    let got = fetch_resource(&server.url(), &res, T).await.unwrap();
    assert_eq!(got.len, 1234);
    // The host part of the URI is ignored, as the hub ignores it.
    let res = parse_resource_uri("kbs://kbs.example:8080/default/key/one").unwrap();
    assert_eq!(
        fetch_resource(&server.url(), &res, T).await.unwrap().len,
        1234
    );
}

#[tokio::test]
async fn resource_missing_is_a_clear_reason() {
    let server = serve(
        GuestComponentsConfig::new(RestFeatures::Resource).with_resource("default/key/one", "x"),
    );
    let res = parse_resource_uri("kbs:///default/key/two").unwrap();
    let err = fetch_resource(&server.url(), &res, T).await.unwrap_err();
    assert!(err.starts_with("CDH answered 500"), "{err}");
    assert!(err.contains("Get Resource failed"), "{err}");
    assert!(err.contains("kbs:///default/key/two"), "{err}");
}

#[tokio::test]
async fn resource_api_off_and_attestation_refused() {
    let server =
        serve(GuestComponentsConfig::new(RestFeatures::Attestation).with_resource("a/b/c", "x"));
    let res = parse_resource_uri("kbs:///a/b/c").unwrap();
    let err = fetch_resource(&server.url(), &res, T).await.unwrap_err();
    assert!(
        err.contains("CDH answered 404") && err.contains("Resource Feature Not Enabled"),
        "{err}"
    );

    let server = serve(
        GuestComponentsConfig::new(RestFeatures::All)
            .with_resource("a/b/c", "x")
            .with_token("aGVhZA.Ym9keQ.c2ln")
            .with_fault(Fault::AttestationRefused),
    );
    let err = fetch_resource(&server.url(), &res, T).await.unwrap_err();
    assert!(err.contains("CDH answered 500"), "{err}");
    let err = fetch_token(&server.url(), T).await.unwrap_err();
    assert!(
        err.contains("answered 500") && err.contains("AA-KBC get token failed"),
        "{err}"
    );
}

#[tokio::test]
async fn server_errors_slow_answers_and_silence() {
    let res = parse_resource_uri("kbs:///a/b/c").unwrap();

    let broken = serve(
        GuestComponentsConfig::new(RestFeatures::All)
            .with_resource("a/b/c", "x")
            .with_fault(Fault::ServerError),
    );
    let err = fetch_resource(&broken.url(), &res, T).await.unwrap_err();
    assert!(err.contains("CDH answered 500"), "{err}");

    let slow = serve(
        GuestComponentsConfig::new(RestFeatures::Resource)
            .with_resource("a/b/c", "x")
            .with_fault(Fault::Slow(Duration::from_secs(3))),
    );
    let err = fetch_resource(&slow.url(), &res, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.contains("did not answer within 300 ms"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = fetch_resource(&url, &res, T).await.unwrap_err();
    assert!(
        err.starts_with("cannot reach the confidential data hub at"),
        "{err}"
    );
    let err = fetch_token(&url, T).await.unwrap_err();
    assert!(
        err.starts_with("cannot reach the attestation agent at"),
        "{err}"
    );

    let err = fetch_resource("https://127.0.0.1:8006", &res, T)
        .await
        .unwrap_err();
    assert!(err.contains("not an http:// URL"), "{err}");
}

#[tokio::test]
async fn oversized_resource_is_refused() {
    let server = serve(
        GuestComponentsConfig::new(RestFeatures::Resource)
            .with_resource("a/b/big", vec![0u8; MAX_BODY_LEN + 1])
            .with_resource("a/b/max", vec![0u8; MAX_BODY_LEN]),
    );
    let big = parse_resource_uri("kbs:///a/b/big").unwrap();
    let err = fetch_resource(&server.url(), &big, T).await.unwrap_err();
    assert!(err.contains("refused"), "{err}");
    let max = parse_resource_uri("kbs:///a/b/max").unwrap();
    assert_eq!(
        fetch_resource(&server.url(), &max, T).await.unwrap().len,
        MAX_BODY_LEN
    );
}

#[tokio::test]
async fn affirming_token_with_matching_measurement_passes() {
    let signer = EarTokenSigner::generate().unwrap();
    let spec = EarTokenSpec::affirming(&MEASUREMENT, now());
    let server = token_server(&signer, &spec);
    let jwt = fetch_token(&server.url(), T).await.unwrap();
    // Only the JWT comes back: the TEE key pair beside it is dropped.
    assert_eq!(jwt.split('.').count(), 3);
    assert!(!jwt.contains("PRIVATE KEY"));

    let pem = signer.public_key_pem().unwrap();
    let v = check_token(&jwt, &MEASUREMENT, Some(pem.as_bytes()), now());
    assert!(v.passed, "{}", v.reason);
    assert_eq!(v.signature, SignatureCheck::Pinned);

    let v = check_token(&jwt, &MEASUREMENT, None, now());
    assert!(v.passed, "{}", v.reason);
    assert_eq!(v.signature, SignatureCheck::EmbeddedOnly);
}

#[tokio::test]
async fn token_without_jwk_and_unpinned_passes_on_claims_only() {
    let signer = EarTokenSigner::generate().unwrap();
    let spec = EarTokenSpec::affirming(&MEASUREMENT, now()).with_embedded_jwk(false);
    let server = token_server(&signer, &spec);
    let jwt = fetch_token(&server.url(), T).await.unwrap();
    let v = check_token(&jwt, &MEASUREMENT, None, now());
    assert!(v.passed, "{}", v.reason);
    assert_eq!(v.signature, SignatureCheck::Unchecked);
    assert!(v.reason.contains("NOT verified"), "{}", v.reason);
    let pem = signer.public_key_pem().unwrap();
    let v = check_token(&jwt, &MEASUREMENT, Some(pem.as_bytes()), now());
    assert!(
        v.passed && v.signature == SignatureCheck::Pinned,
        "{}",
        v.reason
    );
}

#[tokio::test]
async fn warning_and_contraindicated_fail() {
    let signer = EarTokenSigner::generate().unwrap();
    let pem = signer.public_key_pem().unwrap();
    for status in [
        EarStatus::Warning,
        EarStatus::Contraindicated,
        EarStatus::None,
    ] {
        let spec = EarTokenSpec::affirming(&MEASUREMENT, now()).with_status(status);
        let server = token_server(&signer, &spec);
        let jwt = fetch_token(&server.url(), T).await.unwrap();
        let v = check_token(&jwt, &MEASUREMENT, Some(pem.as_bytes()), now());
        assert!(!v.passed, "{status:?} passed");
        assert!(v.reason.contains(status.as_str()), "{}", v.reason);
        // The signature itself was fine: the refusal is the verdict's.
        assert_eq!(v.signature, SignatureCheck::Pinned);
    }
}

#[tokio::test]
async fn measurement_differs_fails() {
    let signer = EarTokenSigner::generate().unwrap();
    let spec = EarTokenSpec::affirming(&[0x11; 48], now());
    let server = token_server(&signer, &spec);
    let jwt = fetch_token(&server.url(), T).await.unwrap();
    let pem = signer.public_key_pem().unwrap();
    let v = check_token(&jwt, &MEASUREMENT, Some(pem.as_bytes()), now());
    assert!(!v.passed);
    assert!(v.reason.contains("differs"), "{}", v.reason);
    assert!(
        !v.reason.contains(&hex::encode([0x11u8; 48])),
        "{}",
        v.reason
    );
    assert!(
        !v.reason.contains(&hex::encode(MEASUREMENT)),
        "{}",
        v.reason
    );
}

#[tokio::test]
async fn expired_token_fails() {
    let signer = EarTokenSigner::generate().unwrap();
    let issued = now() - 600;
    let spec = EarTokenSpec::affirming(&MEASUREMENT, issued);
    let server = token_server(&signer, &spec);
    let jwt = fetch_token(&server.url(), T).await.unwrap();
    let v = check_token(&jwt, &MEASUREMENT, None, now());
    assert!(!v.passed);
    assert!(v.reason.contains("expired"), "{}", v.reason);
}

#[tokio::test]
async fn tampered_signature_fails() {
    let signer = EarTokenSigner::generate().unwrap();
    let jwt = signer
        .sign(&EarTokenSpec::affirming(&MEASUREMENT, now()))
        .unwrap();
    let server =
        serve(GuestComponentsConfig::new(RestFeatures::All).with_token(tamper_signature(&jwt)));
    let fetched = fetch_token(&server.url(), T).await.unwrap();
    let pem = signer.public_key_pem().unwrap();
    for pinned in [Some(pem.as_bytes()), None] {
        let v = check_token(&fetched, &MEASUREMENT, pinned, now());
        assert!(!v.passed, "tampered token passed ({pinned:?})");
        assert_eq!(v.signature, SignatureCheck::Failed);
        assert!(v.reason.contains("does not verify"), "{}", v.reason);
    }
    // A token from another attestation service fails against the pinned key.
    let other = EarTokenSigner::generate().unwrap();
    let foreign = other
        .sign(&EarTokenSpec::affirming(&MEASUREMENT, now()))
        .unwrap();
    let v = check_token(&foreign, &MEASUREMENT, Some(pem.as_bytes()), now());
    assert!(!v.passed && v.reason.contains("pinned key"), "{}", v.reason);
}

#[tokio::test]
async fn every_signature_verifies() {
    // ECDSA signatures come with high and low S alike; both must verify.
    let signer = EarTokenSigner::generate().unwrap();
    let pem = signer.public_key_pem().unwrap();
    for _ in 0..16 {
        let jwt = signer
            .sign(&EarTokenSpec::affirming(&MEASUREMENT, now()))
            .unwrap();
        let v = check_token(&jwt, &MEASUREMENT, Some(pem.as_bytes()), now());
        assert!(v.passed, "{}", v.reason);
    }
}

#[tokio::test]
async fn attestation_api_off_refuses_the_token() {
    let signer = EarTokenSigner::generate().unwrap();
    let server = serve(
        GuestComponentsConfig::new(RestFeatures::Resource).with_token(
            signer
                .sign(&EarTokenSpec::affirming(&MEASUREMENT, now()))
                .unwrap(),
        ),
    );
    let err = fetch_token(&server.url(), T).await.unwrap_err();
    assert!(err.contains("answered 404"), "{err}");
    assert!(err.contains("Attestation Feature Not Enabled"), "{err}");
    assert!(err.contains("agent.guest_components_rest_api"), "{err}");
}
