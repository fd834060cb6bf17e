//! The guest's authenticated report (`kbsstatus.GuestStatus/Report`): the
//! report key arrives in the secret table through the simulated PSP, on the
//! offline and the online path; a report MACed with it is accepted once and
//! shows in the admin records; everything else is refused with the right code.

use super::*;
use hmac::{Hmac, Mac};
use kbs_proto::kbsstatus::guest_status_client::GuestStatusClient;
use kbs_proto::kbsstatus::{Check, ReportBody, SignedReport};
use prost::Message as _;
use std::process::{Command, Stdio};

/// The report-key entry's GUID, as the guest sees it.
pub const REPORT_KEY_GUID: &str = "6c8e2b4a-3f1d-4e7a-9b5c-0d2f8a1e7c93";

/// What the guest finds in its report-key entry.
struct ReportKey {
    launch_id: String,
    key: [u8; 32],
}

/// Reads the report-key entry from the guest's view of the secret table, and
/// checks it is the only entry the broker added.
fn report_key(table: &[u8], requested: &[&str]) -> ReportKey {
    let entries = sev_sim::efi_secret::parse_table(table).unwrap();
    let guids: Vec<&str> = entries.iter().map(|(g, _)| g.as_str()).collect();
    let mut expected = requested.to_vec();
    expected.push(REPORT_KEY_GUID);
    assert_eq!(guids, expected);
    let data = &entries.last().unwrap().1;
    let v: serde_json::Value = serde_json::from_slice(data).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    ReportKey {
        launch_id: v["launch_id"].as_str().unwrap().to_string(),
        key: unb64(v["report_key"].as_str().unwrap()).try_into().unwrap(),
    }
}

fn body(launch_id: &str, path_works: bool) -> Vec<u8> {
    ReportBody {
        launch_id: launch_id.into(),
        checks: vec![
            Check {
                name: "efi_secret".into(),
                passed: true,
                reason: String::new(),
            },
            Check {
                name: "online_round_trip".into(),
                passed: path_works,
                reason: if path_works { "" } else { "timed out" }.into(),
            },
        ],
        path_works,
        client: "e2e-guest 0.1".into(),
    }
    .encode_to_vec()
}

fn sign(key: &[u8], body: Vec<u8>) -> SignedReport {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(&body);
    SignedReport {
        mac: m.finalize().into_bytes().to_vec(),
        body,
    }
}

impl Rig {
    async fn status(&self) -> GuestStatusClient<tonic::transport::Channel> {
        GuestStatusClient::connect(self.kbs.uri()).await.unwrap()
    }

    /// `kbs admin records --json`, parsed.
    fn admin_records(&self) -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_kbs"))
            .arg("admin")
            .arg("--socket")
            .arg(self.kbs.data_dir.join("admin.sock"))
            .args(["records", "--json", "--limit", "1000"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The GetSecret record that released `launch_id`'s secrets, from the admin CLI.
    fn release(&self, launch_id: &str) -> serde_json::Value {
        self.admin_records()
            .into_iter()
            .find(|r| {
                r["rpc"] == "GetSecret" && r["outcome"] == "ok" && r["launch_id"] == launch_id
            })
            .expect("the release is recorded")
    }
}

#[tokio::test]
async fn offline_and_online_launches_deliver_a_report_key_and_reports_are_accepted_once() {
    let rig = Rig::start(&[]);
    let offline = rig
        .offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap();
    let a = report_key(&offline, &[BUNDLE_GUID]);
    // The bundle entry is what it always was.
    let entries = sev_sim::efi_secret::parse_table(&offline).unwrap();
    let bundle: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
    assert_eq!(bundle["key-a"], b64(b"image key A"));
    let online = rig.online_launch().await;
    let b = report_key(&online, &[CONNECTION_GUID]);
    assert_ne!(a.launch_id, b.launch_id);
    assert_ne!(a.key, b.key);
    assert_eq!(rig.release(&a.launch_id)["guest_status"], "awaiting");

    // The offline guest confirms the path.
    let before = kbs::store::now();
    let signed = sign(&a.key, body(&a.launch_id, true));
    let ack = rig
        .status()
        .await
        .report(signed.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(ack.recorded_at >= before && ack.recorded_at <= kbs::store::now());
    let rec = rig.release(&a.launch_id);
    assert_eq!(rec["guest_status"], "confirmed", "{rec}");
    assert_eq!(rec["failed_checks"], serde_json::json!([]));
    assert_eq!(rec["reported_at"], ack.recorded_at);
    assert_eq!(rec["guest_client"], "e2e-guest 0.1");

    // A replay of the same report.
    let e = rig.status().await.report(signed).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // The online guest's report, under the offline guest's key.
    let e = rig
        .status()
        .await
        .report(sign(&a.key, body(&b.launch_id, false)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A key nobody issued.
    let e = rig
        .status()
        .await
        .report(sign(&[0x42; 32], body(&b.launch_id, false)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A launch that never had a key: the same code and message as a bad MAC.
    let unknown = rig
        .status()
        .await
        .report(sign(&b.key, body(&uuid::Uuid::new_v4().to_string(), true)))
        .await
        .unwrap_err();
    assert_eq!((unknown.code(), unknown.message()), (e.code(), e.message()));
    // A body altered after signing.
    let mut tampered = sign(&b.key, body(&b.launch_id, false));
    tampered.body = body(&b.launch_id, true);
    let e = rig.status().await.report(tampered).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(rig.release(&b.launch_id)["guest_status"], "awaiting");

    // The online guest's honest report, path broken: still accepted.
    rig.status()
        .await
        .report(sign(&b.key, body(&b.launch_id, false)))
        .await
        .unwrap();
    let rec = rig.release(&b.launch_id);
    assert_eq!(rec["guest_status"], "path_broken", "{rec}");
    assert_eq!(
        rec["failed_checks"],
        serde_json::json!(["online_round_trip"])
    );

    // Refusals are recorded too, with their reason.
    let reports: Vec<_> = rig
        .admin_records()
        .into_iter()
        .filter(|r| r["rpc"] == "Report")
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(reports.len(), 7, "{reports:?}");
    assert!(reports.contains(&("refused".into(), "report replayed".into())));
    assert!(reports.contains(&("refused".into(), "report MAC does not verify".into())));
    assert_eq!(reports.iter().filter(|r| r.0 == "ok").count(), 2);
}

#[tokio::test]
async fn malformed_reports_get_invalid_argument_naming_the_field() {
    let rig = Rig::start(&[]);
    let table = rig
        .offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap();
    let k = report_key(&table, &[BUNDLE_GUID]);
    let long = "x".repeat(1025);
    let with = |edit: &dyn Fn(&mut ReportBody)| {
        let mut b = ReportBody::decode(body(&k.launch_id, true).as_slice()).unwrap();
        edit(&mut b);
        sign(&k.key, b.encode_to_vec())
    };
    let mut short_mac = sign(&k.key, body(&k.launch_id, true));
    short_mac.mac.truncate(16);
    let cases = vec![
        ("body", sign(&k.key, vec![0xff, 0xff, 0xff])),
        ("body", sign(&k.key, vec![0; (64 << 10) + 1])),
        ("mac", short_mac),
        ("body.launch_id", with(&|b| b.launch_id = "launch-1".into())),
        (
            "body.checks",
            with(&|b| b.checks = vec![b.checks[0].clone(); 65]),
        ),
        (
            "body.checks.name",
            with(&|b| b.checks[0].name = long.clone()),
        ),
        (
            "body.checks.reason",
            with(&|b| b.checks[1].reason = long.clone()),
        ),
        ("body.client", with(&|b| b.client = long.clone())),
    ];
    let mut c = rig.status().await;
    for (field, r) in cases {
        let e = c.report(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "{field}: {e:?}"
        );
    }
    // None of them used up the launch's report.
    c.report(sign(&k.key, body(&k.launch_id, true)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_report_after_a_broker_restart_is_accepted() {
    let mut rig = Rig::start(&[]);
    let table = rig
        .offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap();
    let k = report_key(&table, &[BUNDLE_GUID]);
    rig.kbs = rig.kbs.crash_and_restart();
    let signed = sign(&k.key, body(&k.launch_id, true));
    rig.status().await.report(signed.clone()).await.unwrap();
    assert_eq!(rig.release(&k.launch_id)["guest_status"], "confirmed");
    // The replay guard survives a restart too.
    rig.kbs = rig.kbs.crash_and_restart();
    let e = rig.status().await.report(signed).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn the_report_key_guid_is_reserved_and_the_table_limit_counts_it() {
    let rig = Rig::start(&[]);
    let (id, mut launch) = rig.bundle(&rig.platform, POLICY).await.unwrap();
    let m = launch.measure(&rig.digest);
    let mut c = rig.client().await;
    let mut own = bundle_request("KEYSET-1");
    own.guid = REPORT_KEY_GUID.into();
    let e = c
        .get_secret(rig.secret_request(&id, &m, POLICY, &rig.digest, vec![own]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("SecretRequests.Guid"), "{e:?}");
    // 63 requests plus the report key fill the guest's 64 entries, but not
    // 4 KiB; so a request for 64 is refused.
    let key = |i: usize| RequestDetails {
        guid: format!("0b1c2d3e-4f50-4617-8899-aabbccdd{i:04x}"),
        format: "binary".into(),
        secret_type: "key".into(),
        id: "key-a".into(),
    };
    let e = c
        .get_secret(rig.secret_request(&id, &m, POLICY, &rig.digest, (0..64).map(key).collect()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 63"), "{e:?}");
    // Neither refusal used up the launch: 63 requests go through, and the
    // guest sees all 64 entries.
    let requested: Vec<String> = (0..63).map(|i| key(i).guid).collect();
    let r = c
        .get_secret(rig.secret_request(&id, &m, POLICY, &rig.digest, (0..63).map(key).collect()))
        .await
        .unwrap()
        .into_inner();
    let table = launch
        .inject_secret(
            &unb64(&r.launch_secret_header),
            &unb64(&r.launch_secret_data),
        )
        .unwrap();
    let requested: Vec<&str> = requested.iter().map(String::as_str).collect();
    report_key(&table, &requested);

    // A table that would not fit the guest's 4 KiB secret area is refused
    // without naming anything.
    let (id, mut launch) = rig.bundle(&rig.platform, POLICY).await.unwrap();
    let m = launch.measure(&rig.digest);
    let big = |i: usize| RequestDetails {
        guid: format!("0b1c2d3e-4f50-4617-8899-aabbccdd{i:04x}"),
        format: "JSON".into(),
        secret_type: "resource".into(),
        id: "default/security-policy/test".into(),
    };
    let e = c
        .get_secret(rig.secret_request(&id, &m, POLICY, &rig.digest, (0..40).map(big).collect()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}
