//! Smoke tests of the Trustee harness against the real Trustee v0.21.0
//! binaries: both RVPS modes register, read back, survive a restart on the
//! same storage and vanish on empty storage; the admin API refuses tokens
//! the KBS must not accept.
//!
//! Missing binaries fail these tests with how to build them, unless
//! `TRUSTEE_OPTIONAL=1` is set, in which case they are skipped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use serde_json::{json, Value};
use sev_sim::trustee_process::{
    AdminKey, RvpsMode, TrusteeBinaries, TrusteeOptions, TrusteeProcess,
};

/// The binaries, `None` to skip, or a failed test naming how to build them.
fn binaries() -> Option<TrusteeBinaries> {
    TrusteeBinaries::find_for_tests().unwrap_or_else(|e| panic!("{e}"))
}

fn start(bins: TrusteeBinaries, opts: TrusteeOptions) -> TrusteeProcess {
    TrusteeProcess::start_with(bins, opts).unwrap_or_else(|e| panic!("{e}"))
}

fn get(trustee: &TrusteeProcess, name: &str) -> Option<Value> {
    trustee
        .get_reference_value(name)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn round_trip(mode: RvpsMode) {
    let Some(bins) = binaries() else { return };
    let mut trustee = start(
        bins,
        TrusteeOptions {
            rvps: mode,
            ..TrusteeOptions::default()
        },
    );
    assert_eq!(trustee.rvps_addr().is_some(), mode == RvpsMode::Grpc);
    let measurement_a = "a".repeat(96);
    let measurement_b = "b".repeat(96);

    assert_eq!(get(&trustee, "snp_launch_measurement"), None);

    // kbs-client's own registration: one value in a list.
    trustee
        .set_sample_reference_value("snp_bootloader", &json!(3))
        .unwrap();
    assert_eq!(get(&trustee, "snp_bootloader"), Some(json!([3])));

    // A raw sample provenance message with several names and values.
    trustee
        .set_reference_values(&json!({
            "snp_launch_measurement": [measurement_a, measurement_b],
            "snp_tee_svn": [0],
        }))
        .unwrap();
    assert_eq!(
        get(&trustee, "snp_launch_measurement"),
        Some(json!([measurement_a, measurement_b]))
    );

    // A second registration replaces the named value only.
    trustee
        .set_reference_values(&json!({ "snp_launch_measurement": [measurement_b] }))
        .unwrap();
    assert_eq!(
        get(&trustee, "snp_launch_measurement"),
        Some(json!([measurement_b]))
    );
    assert_eq!(get(&trustee, "snp_tee_svn"), Some(json!([0])));
    assert_eq!(get(&trustee, "snp_bootloader"), Some(json!([3])));

    if mode == RvpsMode::Grpc {
        // The standalone RVPS holds what went through the KBS, and the KBS
        // sees what was registered with the RVPS directly.
        assert_eq!(
            trustee.rvps_query("snp_launch_measurement").unwrap(),
            Some(json!([measurement_b]))
        );
        assert_eq!(trustee.rvps_query("snp_microcode").unwrap(), None);
        trustee
            .rvps_register(&json!({ "snp_microcode": [209] }))
            .unwrap();
        assert_eq!(get(&trustee, "snp_microcode"), Some(json!([209])));
    } else {
        assert!(trustee.rvps_query("snp_microcode").is_err());
    }

    // Resource policies through kbs-client, as stored by the KBS.
    trustee.set_affirming_resource_policy().unwrap();
    let affirming = trustee.stored_resource_policy().unwrap().unwrap();
    assert!(affirming.contains("affirming"), "{affirming}");

    // A restart on the same storage keeps everything, on the same URL.
    let url = trustee.url();
    trustee.restart().unwrap();
    assert_eq!(trustee.url(), url);
    assert_eq!(
        get(&trustee, "snp_launch_measurement"),
        Some(json!([measurement_b]))
    );
    assert_eq!(
        trustee.stored_resource_policy().unwrap(),
        Some(affirming.clone())
    );

    trustee.set_default_resource_policy().unwrap();
    let default = trustee.stored_resource_policy().unwrap().unwrap();
    assert_ne!(default, affirming);

    // An empty storage forgets the values and the policy.
    trustee.restart_empty().unwrap();
    assert_eq!(trustee.url(), url);
    assert_eq!(get(&trustee, "snp_launch_measurement"), None);
    assert_eq!(get(&trustee, "snp_bootloader"), None);
    if mode == RvpsMode::Grpc {
        assert_eq!(trustee.rvps_query("snp_microcode").unwrap(), None);
    }
    let fresh = trustee.stored_resource_policy().unwrap().unwrap();
    assert_ne!(fresh, affirming);
    assert!(trustee.is_running());
}

#[test]
fn builtin_rvps_round_trip() {
    round_trip(RvpsMode::BuiltIn);
}

#[test]
fn grpc_rvps_round_trip() {
    round_trip(RvpsMode::Grpc);
}

#[test]
fn admin_api_refuses_tokens_it_must_not_accept() {
    let Some(bins) = binaries() else { return };
    let trustee = start(bins, TrusteeOptions::default());
    let path = "/kbs/v0/resource-policy";
    let status = |token: Option<&str>| {
        trustee
            .admin_request("GET", path, token, None)
            .unwrap_or_else(|e| panic!("{e}"))
            .status
    };
    let ttl = Duration::from_secs(300);
    let key = trustee.admin_key();

    // The harness's own token works.
    let own = trustee.admin_token().unwrap();
    assert_eq!(status(Some(&own)), 200);

    // A token signed by another key.
    let other_dir = tempfile::tempdir().unwrap();
    let other = AdminKey::generate(other_dir.path()).unwrap();
    let foreign = other
        .token(trustee.issuer(), trustee.audience(), trustee.role(), ttl)
        .unwrap();
    assert_eq!(status(Some(&foreign)), 401);

    // No token, another issuer, another audience, a role outside the ACL,
    // no role, an expired token (beyond the 60 s leeway), garbage.
    assert_eq!(status(None), 401);
    let wrong_issuer = key.token("someone-else", trustee.audience(), trustee.role(), ttl);
    assert_eq!(status(Some(&wrong_issuer.unwrap())), 401);
    let wrong_audience = key.token(trustee.issuer(), "not-kbs", trustee.role(), ttl);
    assert_eq!(status(Some(&wrong_audience.unwrap())), 401);
    let wrong_role = key.token(trustee.issuer(), trustee.audience(), "reader", ttl);
    assert_eq!(status(Some(&wrong_role.unwrap())), 401);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let no_role = key.token_with_claims(&json!({
        "iss": trustee.issuer(), "aud": [trustee.audience()], "iat": now, "exp": now + 300,
    }));
    assert_eq!(status(Some(&no_role.unwrap())), 401);
    let expired = key.token_with_claims(&json!({
        "iss": trustee.issuer(), "aud": [trustee.audience()], "role": trustee.role(),
        "iat": now - 600, "exp": now - 120,
    }));
    assert_eq!(status(Some(&expired.unwrap())), 401);
    assert_eq!(status(Some("not.a.token")), 401);

    // The reference value API answers the same way.
    let reply = trustee
        .admin_request(
            "GET",
            "/kbs/v0/reference-value/snp_bootloader",
            Some(&foreign),
            None,
        )
        .unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(status(Some(&own)), 200);
}
