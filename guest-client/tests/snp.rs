//! The guest client in an SEV-SNP guest, end to end with real processes: a
//! real `kbs` on loopback as the status collector, the simulated SNP guest
//! device (fake AMD roots, a VCEK, signed reports) behind its test socket,
//! and a loopback server that answers as the guest components' REST API with
//! a token signed as Trustee's attestation service signs it.
//!
//! Each case runs `guest-client verify` as a child process and reads its
//! JSON, exit status and the broker's records.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use kbs_proto::admin_client;
use kbs_proto::kbsadmin::{Digest, ListRecordsRequest, ReplaceDigestsRequest};
use kbs_proto::kbsstatus::guest_status_client::GuestStatusClient;
use kbs_proto::kbsstatus::{Check, SnpNonceRequest, SnpReportBody, SnpSignedReport};
use prost::Message as _;
use sev_sim::guest_components::{
    EarStatus, EarTokenSigner, EarTokenSpec, GuestComponentsConfig, GuestComponentsServer,
    RestFeatures,
};
use sev_sim::snp_guest::{FakeSnpRoots, SimSnpChip, SnpDeviceServer, SnpFault, SnpGuest};
use sev_sim::snp_platform::{SnpProduct, SnpTcb};
use sha2::{Digest as _, Sha512};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const REGISTERED: [u8; 48] = [0x5a; 48];
const UNREGISTERED: [u8; 48] = [0x6b; 48];
const RESOURCE_VALUE: &[u8] = b"a resource value no output may show";
const TCB: SnpTcb = SnpTcb {
    fmc: None,
    bootloader: 9,
    tee: 0,
    snp: 23,
    microcode: 0xd4,
};

type Kbs = sev_sim::kbs_process::KbsProcess;

/// Everything a case needs: the broker, the chip, the device, the guest
/// components, and the files the client is pointed at.
struct Rig {
    dir: tempfile::TempDir,
    kbs: Kbs,
    device: SnpDeviceServer,
    chip: Arc<SimSnpChip>,
    components: GuestComponentsServer,
    root_file: PathBuf,
    cmdline: PathBuf,
    /// The attestation service's public key, for --token-key.
    token_key: PathBuf,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn roots() -> &'static FakeSnpRoots {
    FakeSnpRoots::shared(SnpProduct::Genoa).unwrap()
}

fn write_root(dir: &Path, roots: &FakeSnpRoots) -> PathBuf {
    let path = dir.join("snp-root.pem");
    std::fs::write(&path, format!("{}{}", roots.ark_pem(), roots.ask_pem())).unwrap();
    path
}

/// A broker that trusts the fake SNP root (and a throwaway SEV one: the
/// harness starts every broker with an SEV anchor), with REGISTERED
/// registered by the operator.
async fn start(guest: SnpGuest, features: RestFeatures, token: EarTokenSpec) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let roots = roots();
    let root_file = write_root(dir.path(), roots);
    let sev_roots = sev_sim::FakeAmdRoots::generate().unwrap();
    let sev_ark = dir.path().join("ark.cert");
    std::fs::write(&sev_ark, sev_roots.ark_cert()).unwrap();
    let bin = sev_sim::kbs_process::kbs_beside_current_exe().unwrap();
    let kbs = Kbs::start_with(
        &bin,
        &dir.path().join("kbs-data"),
        &dir.path().join("admin.sock"),
        &sev_ark,
        &["--snp-insecure-root".into(), root_file.clone().into()],
    )
    .unwrap();
    let mut admin = admin_client::connect_unix(&kbs.socket, Duration::from_secs(5))
        .await
        .unwrap();
    admin
        .replace_digests(ReplaceDigestsRequest {
            node: "node-1".into(),
            runtime_class: "kata-qemu-snp".into(),
            digests: vec![Digest {
                mode: "snp".into(),
                digest: REGISTERED.to_vec(),
                vcpus: 2,
                vcpu_type: "EPYC-v4".into(),
                config: "/opt/kata/share/defaults/kata-containers/configuration-qemu-snp.toml"
                    .into(),
            }],
        })
        .await
        .unwrap();
    let mut chip_id = [0u8; 64];
    chip_id[..8].copy_from_slice(b"chip-one");
    let chip = Arc::new(roots.issue_chip(chip_id, TCB).unwrap());
    let device = SnpDeviceServer::start(
        &dir.path().join("sev-guest.sock"),
        chip.clone(),
        roots,
        guest,
    )
    .unwrap();
    let signer = EarTokenSigner::generate().unwrap();
    let token_key = dir.path().join("as-key.pem");
    std::fs::write(&token_key, signer.public_key_pem().unwrap()).unwrap();
    let components = GuestComponentsServer::start(
        GuestComponentsConfig::new(features)
            .with_resource("default/key/1", RESOURCE_VALUE)
            .with_token(signer.sign(&token).unwrap()),
    )
    .unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "console=hvc0 agent.guest_components_rest_api={}\n",
            features.as_str()
        ),
    )
    .unwrap();
    Rig {
        dir,
        kbs,
        device,
        chip,
        components,
        root_file,
        cmdline,
        token_key,
    }
}

impl Rig {
    /// `guest-client ARGS...` pointed at this rig's device, broker, root,
    /// data hub and command line.
    fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_guest-client"));
        c.args(args)
            .arg("--snp-simulator")
            .arg(self.device.path())
            .arg("--kbs")
            .arg(self.kbs.uri().trim_start_matches("http://"))
            .arg("--snp-insecure-root")
            .arg(&self.root_file)
            .arg("--cdh")
            .arg(self.components.url())
            .arg("--cmdline")
            .arg(&self.cmdline);
        c
    }

    /// `guest-client verify --json` against this rig, fetching the resource
    /// and with the token key pinned, with `extra` arguments.
    fn verify(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        let out = self
            .client(&["verify", "--json"])
            .arg("--resource")
            .arg("kbs:///default/key/1")
            .arg("--token-key")
            .arg(&self.token_key)
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            !text.contains(std::str::from_utf8(RESOURCE_VALUE).unwrap()),
            "the resource value is shown: {text}"
        );
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), v)
    }

    async fn records(&self) -> Vec<kbs_proto::kbsadmin::AttestationRecord> {
        let mut admin = admin_client::connect_unix(&self.kbs.socket, Duration::from_secs(5))
            .await
            .unwrap();
        admin
            .list_records(ListRecordsRequest {
                after_id: 0,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .records
            .into_iter()
            .filter(|r| r.tee == "snp")
            .collect()
    }

    async fn status_client(&self) -> GuestStatusClient<tonic::transport::Channel> {
        GuestStatusClient::connect(self.kbs.uri()).await.unwrap()
    }
}

#[track_caller]
fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?}: {v:#}"))
}

#[track_caller]
fn failed(v: &serde_json::Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn affirming(m: &[u8; 48]) -> EarTokenSpec {
    EarTokenSpec::affirming(m, now())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registered_guest_passes_every_check_and_is_recorded_confirmed() {
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::All,
        affirming(&REGISTERED),
    )
    .await;
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["tee"], "snp");
    assert_eq!(failed(&v), Vec::<String>::new(), "{v:#}");
    for name in [
        "snp device",
        "snp report",
        "snp policy",
        "snp tcb",
        "snp measurement",
        "resource",
        "attestation token",
    ] {
        assert_eq!(check(&v, name)["passed"], true, "{name}: {v:#}");
    }
    let m = check(&v, "snp measurement")["reason"].as_str().unwrap();
    assert!(
        m.contains("2 vCPUs") && m.contains("configuration-qemu-snp.toml"),
        "{m}"
    );
    assert!(check(&v, "snp report")["reason"]
        .as_str()
        .unwrap()
        .contains("INSECURE"));
    assert_eq!(v["report"]["state"], "confirmed", "{v:#}");
    // Two reports: one over the client's nonce, one bound to the status.
    assert_eq!(rig.device.requests(), 2);
    let records = rig.records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!((r.rpc.as_str(), r.outcome.as_str()), ("SnpReport", "ok"));
    assert_eq!(r.guest_status, "confirmed");
    assert_eq!(r.digest, hex::encode(REGISTERED));
    assert!(r.chip_id.starts_with(&hex::encode(b"chip-one")), "{r:?}");
    assert!(r.description.contains("node-1"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unregistered_measurement_fails_and_the_broker_refuses_it() {
    let rig = start(
        SnpGuest::new(UNREGISTERED),
        RestFeatures::Resource,
        affirming(&UNREGISTERED),
    )
    .await;
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(failed(&v), vec!["snp measurement".to_string()], "{v:#}");
    assert_eq!(v["report"]["state"], "refused", "{v:#}");
    assert!(v["report"]["reason"]
        .as_str()
        .unwrap()
        .contains("not registered"));
    // Refused, not stored: any SNP guest anywhere could send one.
    let records = rig.records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].outcome, "refused");
    assert_eq!(records[0].reason, "measurement not registered");
    assert_eq!(records[0].digest, hex::encode(UNREGISTERED));
    // An expected-digests file says the same without asking the broker.
    let expected = rig.dir.path().join("expected");
    std::fs::write(&expected, format!("{}\n", hex::encode(REGISTERED))).unwrap();
    let (code, v) = rig.verify(&["--expected", expected.to_str().unwrap(), "--no-report"]);
    assert_eq!(code, 1);
    assert!(check(&v, "snp measurement")["reason"]
        .as_str()
        .unwrap()
        .contains("not one of the 1 expected"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_checked_no_secret_is_not_confirmed() {
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::All,
        affirming(&REGISTERED),
    )
    .await;
    // The token checks out but no key pins its signer, and no resource is
    // named: nothing shows the secret path works.
    let out = rig.client(&["verify", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(check(&v, "attestation token (unpinned)")["passed"], true);
    assert_eq!(failed(&v), vec!["secret path".to_string()], "{v:#}");
    assert_eq!(v["report"]["state"], "path_broken", "{v:#}");
    let records = rig.records().await;
    assert_eq!(records[0].guest_status, "path_broken");
    assert!(records[0]
        .failed_checks
        .contains(&"broker: secret path checked".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chip_outside_the_trusted_roots_is_refused_by_guest_and_broker() {
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::Resource,
        affirming(&REGISTERED),
    )
    .await;
    // Without the extra root, the guest trusts only AMD's: the fake chain fails.
    let out = Command::new(env!("CARGO_BIN_EXE_guest-client"))
        .args(["verify", "--json", "--no-report", "--snp-simulator"])
        .arg(rig.device.path())
        .arg("--expected")
        .arg({
            let p = rig.dir.path().join("e");
            std::fs::write(&p, hex::encode(REGISTERED)).unwrap();
            p
        })
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(check(&v, "snp report")["passed"], false);
    // A report signed by a chip of another (fake) root: the broker refuses it.
    let other = FakeSnpRoots::generate(SnpProduct::Genoa).unwrap();
    let stranger = other.issue_chip([7; 64], TCB).unwrap();
    let mut client = rig.status_client().await;
    let nonce = client
        .snp_nonce(SnpNonceRequest {})
        .await
        .unwrap()
        .into_inner()
        .nonce;
    let body = body(nonce, true);
    let report = stranger
        .report(&SnpGuest::new(REGISTERED), sha512(&body))
        .unwrap();
    let refused = client
        .snp_report(SnpSignedReport {
            body,
            attestation_report: report,
            cert_table: stranger.cert_table(&other, true),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("does not verify"), "{refused:?}");
    assert!(rig.records().await.iter().all(|r| r.outcome == "refused"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_report_and_a_debug_policy_fail_with_their_own_reasons() {
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::Resource,
        affirming(&REGISTERED),
    )
    .await;
    rig.device.set_fault(Some(SnpFault::TamperReport));
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(check(&v, "snp report")["passed"], false);
    assert!(check(&v, "snp report")["reason"]
        .as_str()
        .unwrap()
        .contains("signature"));
    assert_eq!(v["report"]["state"], "not_sent", "{v:#}");
    rig.device.set_fault(Some(SnpFault::WrongKey));
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 1);
    assert_eq!(check(&v, "snp report")["passed"], false, "{v:#}");
    rig.device.set_fault(None);
    let mut debug = SnpGuest::new(REGISTERED);
    debug.policy |= 1 << 19;
    rig.device.set_guest(debug);
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(failed(&v), vec!["snp policy".to_string()], "{v:#}");
    assert!(check(&v, "snp policy")["reason"]
        .as_str()
        .unwrap()
        .contains("debugging allowed"));
    let records = rig.records().await;
    let last = records.last().unwrap();
    assert_eq!(last.guest_status, "path_broken");
    assert!(last
        .failed_checks
        .contains(&"broker: policy forbids debugging".to_string()));
    // A guest fine by its own checks, on a chip below the operator's TCB pin
    // (the minimum Trustee is told as well), and one whose report comes from
    // VMPL 1: the broker's own checks fail.
    rig.device.set_guest(SnpGuest::new(REGISTERED));
    let mut admin = admin_client::connect_unix(&rig.kbs.socket, Duration::from_secs(5))
        .await
        .unwrap();
    admin
        .set_tcb_pin(kbs_proto::kbsadmin::SetTcbPinRequest {
            pin: Some(kbs_proto::kbsadmin::TcbPin {
                snp: Some(u32::from(TCB.snp) + 1),
                ..Default::default()
            }),
            clear: false,
        })
        .await
        .unwrap();
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(failed(&v), Vec::<String>::new(), "{v:#}");
    assert_eq!(v["report"]["state"], "path_broken", "{v:#}");
    assert_eq!(
        v["report"]["failed_checks"],
        serde_json::json!(["broker: TCB at or above the pin"])
    );
    admin
        .set_tcb_pin(kbs_proto::kbsadmin::SetTcbPinRequest {
            pin: None,
            clear: true,
        })
        .await
        .unwrap();
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 0, "{v:#}");
}

fn body(nonce: Vec<u8>, path_works: bool) -> Vec<u8> {
    SnpReportBody {
        nonce,
        checks: vec![Check {
            name: "resource".into(),
            passed: path_works,
            reason: String::new(),
        }],
        path_works,
        client: "test".into(),
    }
    .encode_to_vec()
}

fn sha512(b: &[u8]) -> [u8; 64] {
    Sha512::digest(b).into()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_or_altered_status_report_is_refused() {
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::Resource,
        affirming(&REGISTERED),
    )
    .await;
    let roots = roots();
    let mut client = rig.status_client().await;
    let nonce = client
        .snp_nonce(SnpNonceRequest {})
        .await
        .unwrap()
        .into_inner()
        .nonce;
    let body = body(nonce.clone(), true);
    let guest = SnpGuest::new(REGISTERED);
    let request = SnpSignedReport {
        body: body.clone(),
        attestation_report: rig.chip.report(&guest, sha512(&body)).unwrap(),
        cert_table: rig.chip.cert_table(roots, false),
    };
    let ack = client
        .snp_report(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.status, "confirmed", "{ack:?}");
    let replay = client.snp_report(request.clone()).await.unwrap_err();
    assert_eq!(replay.code(), tonic::Code::AlreadyExists, "{replay:?}");
    // The body changed under a report bound to the old one.
    let mut altered = request.clone();
    altered.body = self::body(nonce.clone(), false);
    let e = client.snp_report(altered).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("SHA-512"), "{e:?}");
    // A nonce the broker never issued.
    let forged = self::body(vec![1; 41], true);
    let e = client
        .snp_report(SnpSignedReport {
            attestation_report: rig.chip.report(&guest, sha512(&forged)).unwrap(),
            body: forged,
            cert_table: rig.chip.cert_table(roots, false),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("not issued"), "{e:?}");
    // A flipped byte in the report itself.
    let mut tampered = request;
    tampered.attestation_report[0x90] ^= 1;
    let e = client.snp_report(tampered).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let records = rig.records().await;
    assert_eq!(
        records.iter().filter(|r| r.outcome == "ok").count(),
        1,
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_must_affirm_the_reports_measurement_and_the_broker_must_answer() {
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::All,
        affirming(&REGISTERED).with_status(EarStatus::Warning),
    )
    .await;
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(failed(&v), vec!["attestation token".to_string()], "{v:#}");
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::All,
        affirming(&UNREGISTERED),
    )
    .await;
    let (code, v) = rig.verify(&[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(failed(&v), vec!["attestation token".to_string()], "{v:#}");
    // A broker that is not there: every check passes, the report is not
    // delivered (exit 2).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let expected = rig.dir.path().join("expected");
    std::fs::write(&expected, hex::encode(REGISTERED)).unwrap();
    let rig2 = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::Resource,
        affirming(&REGISTERED),
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_guest-client"))
        .args(["verify", "--json", "--snp-simulator"])
        .arg(rig2.device.path())
        .arg("--kbs")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--snp-insecure-root")
        .arg(&rig2.root_file)
        .arg("--expected")
        .arg(&expected)
        .arg("--cdh")
        .arg(rig2.components.url())
        .args(["--resource", "kbs:///default/key/1"])
        .arg("--cmdline")
        .arg(&rig2.cmdline)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{v:#}");
    assert_eq!(v["report"]["state"], "undelivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn init_checks_locally_then_reports_from_the_background() {
    let rig = start(
        SnpGuest::new(REGISTERED),
        RestFeatures::Resource,
        affirming(&REGISTERED),
    )
    .await;
    let out = rig
        .client(&["init", "--exec", "/bin/true"])
        .args(["--resource", "kbs:///default/key/1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // The boot saw the local checks (device, chain, policy, TCB) at once.
    let console = String::from_utf8_lossy(&out.stdout);
    for name in ["snp device", "snp report", "snp policy", "snp tcb"] {
        assert!(
            console.contains(&format!("guest-client: ok {name}:")),
            "{console}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = rig.records().await;
        if let Some(r) = records.iter().find(|r| r.outcome == "ok") {
            assert_eq!(r.guest_status, "confirmed", "{r:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the background report never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
