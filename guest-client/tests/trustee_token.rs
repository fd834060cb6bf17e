//! The guest client's token check against a token the real Trustee v0.21.0
//! issued (built by the test setup): Trustee's own `kbs-client attest`, as the
//! sample TEE (the only attester it has without SEV hardware), fetches an EAR
//! token from a real KBS and attestation service. The check must read its
//! header, embedded key, signature and claims as Trustee writes them: the
//! signature verifies under the embedded key, and the check fails on what
//! the sample TEE's token says (verdict contraindicated, no SNP measurement).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use guest_client::guest_components::{check_token, SignatureCheck};
use sev_sim::trustee_process::{TrusteeBinaries, TrusteeOptions, TrusteeProcess};
use std::process::Command;

#[test]
fn a_real_trustee_token_is_read_as_trustee_writes_it() {
    let bins = match TrusteeBinaries::find_for_tests() {
        Ok(Some(b)) => b,
        Ok(None) => {
            eprintln!("skipped: Trustee is not built and TRUSTEE_OPTIONAL=1");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let client = bins.kbs_client();
    let trustee = TrusteeProcess::start_with(bins, TrusteeOptions::default()).unwrap();
    let out = Command::new(&client)
        .args(["--url", &trustee.url(), "attest"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kbs-client attest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "not a JWS: {token}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The signature verifies under the key Trustee embeds in the header;
    // the verdict and measurement are read where Trustee puts them (the
    // sample TEE's appraisal is contraindicated, and it has no SNP claims).
    let v = check_token(token, &[0x5a; 48], None, now);
    assert_eq!(v.signature, SignatureCheck::EmbeddedOnly, "{v:?}");
    assert!(!v.passed);
    assert!(v.reason.contains("\"contraindicated\""), "{v:?}");
    assert!(v.reason.contains("no SNP measurement"), "{v:?}");
    // A changed signature no longer verifies.
    let tampered = sev_sim::guest_components::tamper_signature(token);
    let v = check_token(&tampered, &[0x5a; 48], None, now);
    assert_eq!(v.signature, SignatureCheck::Failed, "{v:?}");
}
