//! The guest client end to end: a real `kbs` process on loopback, a launch
//! pre-attested through the simulated PSP and shim, the injected table written
//! out as `efi_secret` shows it, then `guest-client verify` inside that view:
//! it passes, reports, and the broker records the launch as guest-confirmed.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use guest_client::entries::{BUNDLE_GUID, REPORT_KEY_GUID};
use kbs_proto::admin_client;
use kbs_proto::kbsadmin::{
    Digest, ListRecordsRequest, ReplaceDigestsRequest, SetKeysetRequest, SetResourceRequest,
    SetSecretRequest,
};
use sev_sim::shim::{pre_attest, ShimLaunch};
use sev_sim::{FakeAmdRoots, SimPlatform};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const DIGEST: [u8; 32] = [0x42; 32];

type Kbs = sev_sim::kbs_process::KbsProcess;

fn start_kbs(dir: &Path, ark: &Path) -> Kbs {
    let bin = sev_sim::kbs_process::kbs_beside_current_exe().unwrap();
    Kbs::start(&bin, &dir.join("kbs-data"), &dir.join("admin.sock"), ark).unwrap()
}

/// A guest's view of `table`, as efi_secret shows it.
fn guest_view(dir: &Path, table: &[u8]) -> PathBuf {
    let root = dir.join("guest");
    let sfs = root.join("security");
    sev_sim::efi_secret::write_dir(table, &sfs.join("secrets/coco")).unwrap();
    std::fs::create_dir_all(root.join("module")).unwrap();
    std::fs::write(
        root.join("mounts"),
        format!("securityfs {} securityfs rw 0 0\n", sfs.display()),
    )
    .unwrap();
    root
}

fn verify(root: &Path, kbs: &str, mode: &str) -> (i32, serde_json::Value) {
    std::fs::write(root.join("cmdline"), "quiet\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_guest-client"))
        .arg("verify")
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
        .args(["--kbs", kbs, "--mode", mode, "--json"])
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

async fn setup(kbs: &Kbs) {
    let mut c = admin_client::connect_unix(&kbs.socket, Duration::from_secs(5))
        .await
        .unwrap();
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
    c.set_secret(SetSecretRequest {
        id: "image-key".into(),
        payload: b"secret bytes".to_vec(),
    })
    .await
    .unwrap();
    c.set_keyset(SetKeysetRequest {
        id: "KEYSET-1".into(),
        secret_ids: vec!["image-key".into()],
    })
    .await
    .unwrap();
    c.set_resource(SetResourceRequest {
        id: "default/security-policy/test".into(),
        data: br#"{"default":[{"type":"reject"}],"transports":{"docker":{"reg/app":[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}]}}}"#.to_vec(),
    })
    .await
    .unwrap();
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
    let roots = FakeAmdRoots::generate().unwrap();
    let platform = SimPlatform::new(&roots).unwrap();
    let ark = dir.path().join("ark.cert");
    std::fs::write(&ark, roots.ark_cert()).unwrap();
    let kbs = start_kbs(dir.path(), &ark);
    setup(&kbs).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_reports_in_the_background_after_the_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let roots = FakeAmdRoots::generate().unwrap();
    let platform = SimPlatform::new(&roots).unwrap();
    let ark = dir.path().join("ark.cert");
    std::fs::write(&ark, roots.ark_cert()).unwrap();
    let kbs = start_kbs(dir.path(), &ark);
    setup(&kbs).await;
    let launched = pre_attest(
        &platform,
        &ShimLaunch::online(format!("http://{}", kbs.addr), 0x3, DIGEST),
    )
    .await
    .unwrap();
    let root = guest_view(dir.path(), &launched.secret_table);
    std::fs::write(root.join("cmdline"), "quiet\n").unwrap();
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
