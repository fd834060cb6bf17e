//! The guest client end to end: a real `kbs` process on loopback, a launch
//! pre-attested through the simulated PSP and shim, the injected table written
//! out as `efi_secret` shows it, then `guest-client verify` inside that view:
//! it passes, reports, and the broker records the launch as guest-confirmed.
//!
//! The broker is provisioned through the admin API the way `host-agent
//! provision --signature-policy verify --image ... --cosign-key ...
//! --image-encryption-key ...` does (its own tests check that it does), so
//! that what the guest reports can be compared with what was provisioned.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use guest_client::entries::{BUNDLE_GUID, IMAGE_KEY_ID, REPORT_KEY_GUID};
use kbs_proto::admin_client;
use kbs_proto::kbsadmin::{
    DeleteRequest, Digest, ListRecordsRequest, ReplaceDigestsRequest, SetKeysetRequest,
    SetResourceRequest, SetSecretRequest,
};
use sev_sim::guest_view::GuestView;
use sev_sim::shim::{pre_attest, ShimLaunch};
use sev_sim::{FakeAmdRoots, SimPlatform};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const DIGEST: [u8; 32] = [0x42; 32];
const POLICY_RESOURCE: &str = "default/security-policy/test";
const COSIGN_KEY_RESOURCE: &str = "default/cosign-key/1";
const KEY_PATH: &str = "kbs:///default/cosign-key/1";
const REPOS: [&str; 2] = ["reg.example:5000/apps/hello", "docker.io/library/nginx"];
/// Used when no `openssl` command is installed: a P-256 public key made by
/// `openssl genpkey`, and the SHA-256 of its DER that `openssl pkey -pubin
/// -outform DER | sha256sum` gives.
const FALLBACK_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEptwYPIvgufFmmSoRyOy4150fng39
v9MYEg2s3Miv7oGfD4FNdVaHjXEaGwROEFo8ThePADtwjm5m1mvEH/P27w==
-----END PUBLIC KEY-----
";
const FALLBACK_FINGERPRINT: &str =
    "4daf8c41617a6f806dbc52b702070a3a955c3d72e100eac526d80811fac472f4";

type Kbs = sev_sim::kbs_process::KbsProcess;

fn start_kbs(dir: &Path, ark: &Path) -> Kbs {
    let bin = sev_sim::kbs_process::kbs_beside_current_exe().unwrap();
    Kbs::start(&bin, &dir.join("kbs-data"), &dir.join("admin.sock"), ark).unwrap()
}

/// A guest's view of `table`, as efi_secret shows it.
fn guest_view(dir: &Path, table: &[u8]) -> PathBuf {
    GuestView::write(&dir.join("guest"), table, "quiet")
        .unwrap()
        .root()
        .to_path_buf()
}

fn verify(root: &Path, kbs: &str, mode: &str) -> (i32, serde_json::Value) {
    let out = GuestView::at(root)
        .verify_command(Path::new(env!("CARGO_BIN_EXE_guest-client")), kbs, mode)
        .arg("--json")
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

/// What the broker was provisioned with, to compare the guest's view with.
struct Provisioned {
    /// The cosign public key's PEM.
    cosign_pem: Vec<u8>,
    /// SHA-256 of its DER SubjectPublicKeyInfo, as `openssl` computes it.
    fingerprint: String,
    /// The image key's bytes.
    image_key: Vec<u8>,
}

/// A cosign-style public key and its fingerprint, both from the `openssl`
/// tool when it is installed (independent of the guest client's parser).
fn cosign_public_key(dir: &Path) -> (Vec<u8>, String) {
    let private = dir.join("cosign.key");
    let public = dir.join("cosign.pub");
    let der = dir.join("cosign.der");
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let made = run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p(&private),
    ]) && run(&["pkey", "-in", &p(&private), "-pubout", "-out", &p(&public)])
        && run(&[
            "pkey",
            "-pubin",
            "-in",
            &p(&public),
            "-outform",
            "DER",
            "-out",
            &p(&der),
        ]);
    if !made {
        return (
            FALLBACK_PUBLIC_PEM.as_bytes().to_vec(),
            FALLBACK_FINGERPRINT.into(),
        );
    }
    let digest = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(&der)
        .output()
        .unwrap();
    assert!(digest.status.success());
    let fingerprint = String::from_utf8(digest.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    (std::fs::read(&public).unwrap(), fingerprint)
}

/// 32 bytes that differ from run to run.
fn random_key() -> Vec<u8> {
    use std::hash::{BuildHasher as _, Hasher as _};
    (0..4)
        .flat_map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(i);
            h.finish().to_le_bytes()
        })
        .collect()
}

/// The signature policy `host-agent provision --signature-policy verify`
/// writes for `REPOS`.
fn verify_policy() -> Vec<u8> {
    let docker: serde_json::Map<String, serde_json::Value> = REPOS
        .iter()
        .map(|r| {
            (
                (*r).to_string(),
                serde_json::json!([{"type": "sigstoreSigned", "keyPath": KEY_PATH}]),
            )
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": docker}
    }))
    .unwrap()
}

async fn admin(kbs: &Kbs) -> admin_client::Client {
    admin_client::connect_unix(&kbs.socket, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Registers the launch digest and provisions what `host-agent provision`
/// sets: the policy, the cosign key, and the image key in KEYSET-1 beside an
/// operator's secret.
async fn setup(kbs: &Kbs, dir: &Path) -> Provisioned {
    let mut c = admin(kbs).await;
    c.replace_digests(ReplaceDigestsRequest {
        node: "node-1".into(),
        runtime_class: "kata-qemu-sev".into(),
        digests: vec![Digest {
            mode: "sev".into(),
            digest: DIGEST.to_vec(),
            vcpus: 1,
            vcpu_type: String::new(),
            config: "test".into(),
        }],
    })
    .await
    .unwrap();
    let (cosign_pem, fingerprint) = cosign_public_key(dir);
    let image_key = random_key();
    for (id, payload) in [
        ("image-key", b"secret bytes".to_vec()),
        (IMAGE_KEY_ID, image_key.clone()),
    ] {
        c.set_secret(SetSecretRequest {
            id: id.into(),
            payload,
        })
        .await
        .unwrap();
    }
    c.set_keyset(SetKeysetRequest {
        id: "KEYSET-1".into(),
        secret_ids: vec!["image-key".into(), IMAGE_KEY_ID.into()],
        // What online guests may fetch besides the keyset's secrets.
        resource_ids: vec![POLICY_RESOURCE.into(), COSIGN_KEY_RESOURCE.into()],
    })
    .await
    .unwrap();
    for (id, data) in [
        (POLICY_RESOURCE, verify_policy()),
        (COSIGN_KEY_RESOURCE, cosign_pem.clone()),
    ] {
        c.set_resource(SetResourceRequest {
            id: id.into(),
            data,
        })
        .await
        .unwrap();
    }
    Provisioned {
        cosign_pem,
        fingerprint,
        image_key,
    }
}

/// A simulated platform whose fake AMD root (written to `ark.cert` in
/// `dir`) a started kbs trusts, the kbs provisioned as [`setup`] does.
async fn provisioned_broker(dir: &Path) -> (SimPlatform, PathBuf, Kbs, Provisioned) {
    let roots = FakeAmdRoots::generate().unwrap();
    let platform = SimPlatform::new(&roots).unwrap();
    let ark = dir.join("ark.cert");
    std::fs::write(&ark, roots.ark_cert()).unwrap();
    let kbs = start_kbs(dir, &ark);
    let provisioned = setup(&kbs, dir).await;
    (platform, ark, kbs, provisioned)
}

/// Asserts that `out` (the whole JSON text) shows no form of `key`.
#[track_caller]
fn assert_not_shown(out: &serde_json::Value, key: &[u8]) {
    use base64::Engine as _;
    let text = out.to_string();
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !text.contains(&b64) && !text.contains(&hex),
        "the key is shown: {text}"
    );
}

/// The check named `name`.
#[track_caller]
fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v:#}"))
}

async fn guest_status_of(kbs: &Kbs, launch_id: &str) -> String {
    let mut c = admin_client::connect_unix(&kbs.socket, Duration::from_secs(5))
        .await
        .unwrap();
    let records = c
        .list_records(ListRecordsRequest {
            after_id: 0,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    records
        .iter()
        .filter(|r| r.launch_id == launch_id && r.rpc == "GetSecret")
        .map(|r| r.guest_status.clone())
        .next_back()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_guests_verify_and_are_confirmed_at_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (platform, _, kbs, provisioned) = provisioned_broker(dir.path()).await;
    let uri = format!("http://{}", kbs.addr);

    // Online: connection entry, the policy over GetOnlineSecret, the report.
    let launched = pre_attest(&platform, &ShimLaunch::online(uri.clone(), 0x3, DIGEST))
        .await
        .unwrap();
    assert_eq!(guest_status_of(&kbs, &launched.launch_id).await, "awaiting");
    let online = dir.path().join("online");
    let root = guest_view(&online, &launched.secret_table);
    let (code, v) = verify(&root, &kbs.addr, "online");
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["path_works"], true);
    assert_eq!(v["signature_policy"]["enforced"], true, "{v:#}");
    assert_eq!(v["report"]["state"], "recorded", "{v:#}");
    // What was delivered: the policy as provisioned, the cosign key that was
    // provisioned (by its fingerprint), the image key (by its length only).
    let policy = &v["signature_policy"];
    assert_eq!(policy["policy"], "verify", "{v:#}");
    let mut repos: Vec<&str> = policy["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["transport"], "docker");
            assert_eq!(r["sigstore_signed"], true);
            assert_eq!(
                r["requirements"],
                serde_json::json!([{"type": "sigstoreSigned", "key_path": KEY_PATH}])
            );
            r["repository"].as_str().unwrap()
        })
        .collect();
    repos.sort_unstable();
    let mut want = REPOS.to_vec();
    want.sort_unstable();
    assert_eq!(repos, want);
    assert_eq!(
        v["cosign_key"],
        serde_json::json!({
            "id": COSIGN_KEY_RESOURCE,
            "required_by_policy": true,
            "state": "present",
            "algorithm": "ecdsa-p256",
            "fingerprint_sha256": provisioned.fingerprint,
        }),
        "{v:#}"
    );
    assert_eq!(
        v["image_encryption_key"],
        serde_json::json!({"id": IMAGE_KEY_ID, "source": "online", "state": "present", "length": 32}),
        "{v:#}"
    );
    for name in ["online secret", "cosign key", "image key"] {
        assert_eq!(check(&v, name)["passed"], true, "{v:#}");
    }
    assert_not_shown(&v, &provisioned.image_key);
    assert!(
        !v.to_string().contains(
            std::str::from_utf8(&provisioned.cosign_pem)
                .unwrap()
                .lines()
                .nth(1)
                .unwrap()
        ),
        "the key itself is not printed, only its fingerprint"
    );
    assert_eq!(
        guest_status_of(&kbs, &launched.launch_id).await,
        "confirmed"
    );
    // The report key was used and wiped; nothing else was removed.
    let secrets = root.join("security/secrets/coco");
    assert!(!secrets.join(REPORT_KEY_GUID).exists());
    assert!(secrets
        .join(guest_client::entries::CONNECTION_GUID)
        .exists());
    // Run again: the key is gone, so the launch cannot be spoken for twice.
    let (code, v) = verify(&root, &kbs.addr, "online");
    assert_eq!(code, 1);
    assert_eq!(v["report"]["state"], "not_sent", "{v:#}");

    // Offline: the keyset bundle, the report.
    let launched = pre_attest(
        &platform,
        &ShimLaunch::offline(uri.clone(), 0x3, DIGEST, "KEYSET-1"),
    )
    .await
    .unwrap();
    let root = guest_view(&dir.path().join("offline"), &launched.secret_table);
    let (code, v) = verify(&root, &kbs.addr, "offline");
    assert_eq!(code, 0, "{v:#}");
    // The image key came in the bundle; the policy and the cosign key cannot
    // come at all, since the offline KBC fetches no resources.
    assert_eq!(
        v["image_encryption_key"],
        serde_json::json!({"id": IMAGE_KEY_ID, "source": "bundle", "state": "present", "length": 32}),
        "{v:#}"
    );
    assert_eq!(check(&v, "image key")["passed"], true, "{v:#}");
    assert_eq!(v["signature_policy"], serde_json::Value::Null, "{v:#}");
    assert_eq!(v["cosign_key"]["state"], "not_fetched", "{v:#}");
    assert_not_shown(&v, &provisioned.image_key);
    assert!(root
        .join("security/secrets/coco")
        .join(BUNDLE_GUID)
        .exists());
    assert_eq!(
        guest_status_of(&kbs, &launched.launch_id).await,
        "confirmed"
    );

    // A broken path is reported as such: the bundle consumed before the check.
    let launched = pre_attest(
        &platform,
        &ShimLaunch::offline(uri, 0x3, DIGEST, "KEYSET-1"),
    )
    .await
    .unwrap();
    let root = guest_view(&dir.path().join("broken"), &launched.secret_table);
    std::fs::remove_file(root.join("security/secrets/coco").join(BUNDLE_GUID)).unwrap();
    let (code, v) = verify(&root, &kbs.addr, "offline");
    assert_eq!(code, 1);
    assert_eq!(v["report"]["state"], "recorded", "{v:#}");
    assert_eq!(
        guest_status_of(&kbs, &launched.launch_id).await,
        "path_broken"
    );
}

/// One online and one offline launch of the registered digest, verified:
/// (online outcome, offline outcome), each with its exit status.
async fn both_paths(
    platform: &SimPlatform,
    kbs: &Kbs,
    dir: &Path,
) -> ((i32, serde_json::Value), (i32, serde_json::Value)) {
    let uri = format!("http://{}", kbs.addr);
    let online = pre_attest(platform, &ShimLaunch::online(uri.clone(), 0x3, DIGEST))
        .await
        .unwrap();
    let online = verify(
        &guest_view(&dir.join("online"), &online.secret_table),
        &kbs.addr,
        "online",
    );
    let offline = pre_attest(platform, &ShimLaunch::offline(uri, 0x3, DIGEST, "KEYSET-1"))
        .await
        .unwrap();
    let offline = verify(
        &guest_view(&dir.join("offline"), &offline.secret_table),
        &kbs.addr,
        "offline",
    );
    (online, offline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_are_not_provisioned_and_malformed_ones_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (platform, _, kbs, _) = provisioned_broker(dir.path()).await;
    let mut c = admin(&kbs).await;

    // An image key of the wrong length and a cosign "key" that is none.
    let short = vec![7u8; 16];
    c.set_secret(SetSecretRequest {
        id: IMAGE_KEY_ID.into(),
        payload: short.clone(),
    })
    .await
    .unwrap();
    c.set_resource(SetResourceRequest {
        id: COSIGN_KEY_RESOURCE.into(),
        data: b"not a key".to_vec(),
    })
    .await
    .unwrap();
    let ((code, on), (off_code, off)) = both_paths(&platform, &kbs, &dir.path().join("bad")).await;
    assert_eq!(code, 1, "{on:#}");
    assert_eq!(on["path_works"], false);
    assert_eq!(on["report"]["state"], "recorded", "{on:#}");
    let image = check(&on, "image key");
    assert_eq!(image["passed"], false);
    assert!(
        image["reason"].as_str().unwrap().contains("16 bytes"),
        "{on:#}"
    );
    assert_eq!(on["image_encryption_key"]["state"], "malformed");
    assert_eq!(on["image_encryption_key"]["length"], 16);
    let cosign = check(&on, "cosign key");
    assert_eq!(cosign["passed"], false);
    assert!(cosign["reason"].as_str().unwrap().contains("PEM"), "{on:#}");
    assert_eq!(on["cosign_key"]["state"], "malformed");
    assert_not_shown(&on, &short);
    assert_eq!(off_code, 1, "{off:#}");
    assert_eq!(check(&off, "image key")["passed"], false, "{off:#}");
    assert_eq!(off["image_encryption_key"]["source"], "bundle");
    assert_eq!(off["image_encryption_key"]["length"], 16);
    assert_not_shown(&off, &short);

    // The policy verifies with the cosign key, which the broker lacks.
    c.delete_resource(DeleteRequest {
        id: COSIGN_KEY_RESOURCE.into(),
    })
    .await
    .unwrap();
    let ((code, on), _) = both_paths(&platform, &kbs, &dir.path().join("nokey")).await;
    assert_eq!(code, 1, "{on:#}");
    let cosign = check(&on, "cosign key");
    assert_eq!(cosign["passed"], false);
    assert!(
        cosign["reason"].as_str().unwrap().contains("rejected"),
        "{on:#}"
    );
    assert_eq!(on["cosign_key"]["state"], "not_provisioned");
    assert_eq!(on["cosign_key"]["required_by_policy"], true);

    // A deployment without signatures or encrypted images: nothing is
    // missing, the path works.
    c.set_resource(SetResourceRequest {
        id: POLICY_RESOURCE.into(),
        data: br#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}"#.to_vec(),
    })
    .await
    .unwrap();
    c.set_keyset(SetKeysetRequest {
        id: "KEYSET-1".into(),
        secret_ids: vec!["image-key".into()],
        resource_ids: vec![POLICY_RESOURCE.into()],
    })
    .await
    .unwrap();
    c.delete_secret(DeleteRequest {
        id: IMAGE_KEY_ID.into(),
    })
    .await
    .unwrap();
    let ((code, on), (off_code, off)) = both_paths(&platform, &kbs, &dir.path().join("none")).await;
    assert_eq!(code, 0, "{on:#}");
    assert_eq!(on["signature_policy"]["policy"], "none");
    assert_eq!(on["cosign_key"]["state"], "not_provisioned");
    assert_eq!(on["cosign_key"]["required_by_policy"], false);
    assert_eq!(on["image_encryption_key"]["state"], "not_provisioned");
    assert!(check(&on, "image key")["reason"]
        .as_str()
        .unwrap()
        .contains("not provisioned"));
    assert_eq!(off_code, 0, "{off:#}");
    assert_eq!(off["image_encryption_key"]["state"], "not_provisioned");
    assert_eq!(off["image_encryption_key"]["source"], "bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_reports_in_the_background_after_the_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let (platform, _, kbs, _) = provisioned_broker(dir.path()).await;
    let launched = pre_attest(
        &platform,
        &ShimLaunch::online(format!("http://{}", kbs.addr), 0x3, DIGEST),
    )
    .await
    .unwrap();
    let root = guest_view(dir.path(), &launched.secret_table);
    let status = Command::new(env!("CARGO_BIN_EXE_guest-client"))
        .arg("init")
        .args(["--exec", "/bin/true"])
        .arg("--secrets-dir")
        .arg(root.join("security/secrets/coco"))
        .arg("--securityfs")
        .arg(root.join("security"))
        .arg("--mounts")
        .arg(root.join("mounts"))
        .arg("--module-dir")
        .arg(root.join("module"))
        .arg("--cmdline")
        .arg(root.join("cmdline"))
        .args(["--kbs", &kbs.addr, "--mode", "online"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if guest_status_of(&kbs, &launched.launch_id).await == "confirmed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the background report never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `verify --json EXTRA...` against `kbs`; (exit status, outcome, seconds taken).
fn verify_with(
    root: &Path,
    kbs: &str,
    mode: &str,
    extra: &[&str],
) -> (i32, serde_json::Value, f64) {
    let started = std::time::Instant::now();
    let out = GuestView::at(root)
        .verify_command(Path::new(env!("CARGO_BIN_EXE_guest-client")), kbs, mode)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap();
    (
        out.status.code().unwrap(),
        v,
        started.elapsed().as_secs_f64(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_confirmed_refused_and_undelivered_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (platform, ark, kbs, _) = provisioned_broker(dir.path()).await;
    let uri = format!("http://{}", kbs.addr);
    let launch = || async {
        pre_attest(
            &platform,
            &ShimLaunch::offline(uri.clone(), 0x3, DIGEST, "KEYSET-1"),
        )
        .await
        .unwrap()
    };

    // Reported to a broker that did not inject these secrets: it refuses
    // the report (no report key of its own for the launch), exit 1.
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = start_kbs(&other_dir, &ark);
    let root = guest_view(&dir.path().join("refused"), &launch().await.secret_table);
    let (code, v, _) = verify_with(&root, &other.addr, "offline", &[]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["path_works"], true, "{v:#}");
    assert_eq!(v["report"]["state"], "failed", "{v:#}");

    // No broker listening: the checks pass, the report is undelivered, exit 2.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let root = guest_view(
        &dir.path().join("unreachable"),
        &launch().await.secret_table,
    );
    let (code, v, _) = verify_with(&root, &closed_addr, "offline", &[]);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["report"]["state"], "undelivered", "{v:#}");

    // A broker that accepts and never answers: --timeout bounds the whole run.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let root = guest_view(&dir.path().join("silent"), &launch().await.secret_table);
    let (code, v, took) = verify_with(&root, &silent_addr, "offline", &["--timeout", "2"]);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["report"]["state"], "undelivered", "{v:#}");
    assert!(
        v["report"]["reason"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{v:#}"
    );
    assert!(took < 6.0, "verify took {took} s with --timeout 2");

    // The same guest reported to the broker that launched it: exit 0.
    let (code, v, _) = verify_with(&root, &kbs.addr, "offline", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["report"]["state"], "recorded", "{v:#}");
}
