//! `host-agent provision` against a real kbs process: the real binary run as a
//! child, the broker checked through its admin socket, and what a guest gets
//! checked through launches on the simulated PSP and shim: online (resources
//! and secrets over GetOnlineSecret) and offline (the keyset bundle the shim
//! asks for, as injected into the secret table).

use crate::rig::{Rig, CLASS, NODE, POLICY};
use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine as _;
use kbs_proto::admin_client::{self, Client};
use kbs_proto::kbsadmin::{
    Digest, ListDigestsRequest, ListInventoryRequest, RegisteredDigest, ReplaceDigestsRequest,
    SetKeysetRequest, SetResourceRequest, SetSecretRequest,
};
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::{OnlineSecretRequest, RequestDetails};
use sev_sim::shim::{pre_attest, ShimError, ShimLaunch, OFFLINE_GUID, ONLINE_GUID};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const POLICY_RESOURCE: &str = "default/security-policy/test";
const COSIGN_KEY_RESOURCE: &str = "default/cosign-key/1";
const KEY_PATH: &str = "kbs:///default/cosign-key/1";
const OTHER_NODE: &str = "node-2";
const OTHER_RESOURCE: &str = "other/resource/1";
const IMAGE_KEY: &str = "default/image-encryption-key/1";
const OPERATOR_SECRET: &str = "operator/key/1";
const REPOS: [&str; 2] = [
    "registry.example:5000/apps/hello",
    "docker.io/library/nginx",
];

/// Used when no `openssl` command is installed: a P-256 SubjectPublicKeyInfo.
const FALLBACK_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEt//wVnFpbKOygbWvZ9LlGTIWFCVB\n\
AQA0c2/CgC635PplmELUrw2F0cdF+Km6Eqi9kb0JrUlA9Qvwi/ERBbeF9A==\n\
-----END PUBLIC KEY-----\n";
/// Used when no `openssl` command is installed: what `cosign generate-key-pair`
/// writes as cosign.key (the body is not a real key; only the header matters).
const FALLBACK_PRIVATE_PEM: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n\
eyJrZGYiOnsibmFtZSI6InNjcnlwdCJ9fQ==\n\
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n";

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Runs `host-agent provision --config <rig's> ARGS...`.
fn provision(rig: &Rig, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .arg("provision")
        .arg("--config")
        .arg(&rig.agent_config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a run succeeded; returns its stdout.
#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "provision failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Asserts a run failed; returns its stderr.
#[track_caller]
fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "provision succeeded where it should fail\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    assert_ne!(o.status.code(), Some(0));
    stderr(o)
}

async fn admin(rig: &Rig) -> Client {
    admin_client::connect_unix(&rig.socket, Duration::from_secs(5))
        .await
        .unwrap()
}

/// Every digest the broker holds (all nodes, all classes), in a fixed order.
async fn all_digests(rig: &Rig) -> Vec<RegisteredDigest> {
    digests_of(rig, "").await
}

/// The digests of one node (every node when empty), in a fixed order.
async fn digests_of(rig: &Rig, node: &str) -> Vec<RegisteredDigest> {
    let mut v = admin(rig)
        .await
        .list_digests(ListDigestsRequest {
            node: node.into(),
            runtime_class: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .digests;
    v.sort_by_key(|d| {
        (
            d.node.clone(),
            d.runtime_class.clone(),
            d.digest.as_ref().map(|d| d.digest.clone()),
        )
    });
    v
}

/// The broker's inventory: (secrets, keysets, resources), each sorted.
async fn inventory(rig: &Rig) -> (Vec<String>, Vec<String>, Vec<String>) {
    let inv = admin(rig)
        .await
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut secrets = inv.secrets;
    let mut keysets: Vec<String> = inv
        .keysets
        .iter()
        .map(|k| format!("{}={}", k.id, k.secret_ids.join(",")))
        .collect();
    let mut resources = inv.resources;
    secrets.sort();
    keysets.sort();
    resources.sort();
    (secrets, keysets, resources)
}

async fn resources(rig: &Rig) -> Vec<String> {
    inventory(rig).await.2
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_string()).collect();
    v.sort();
    v
}

/// What this node recorded as provisioned, if anything.
fn state(rig: &Rig) -> Option<serde_json::Value> {
    let p = rig.dir.path().join("state").join("provisioned.json");
    std::fs::read(p)
        .ok()
        .map(|d| serde_json::from_slice(&d).unwrap())
}

/// FIPS mode as the agent reads it when its configuration does not say.
fn host_fips() -> bool {
    std::fs::read_to_string("/proc/sys/crypto/fips_enabled").is_ok_and(|s| s.trim() == "1")
}

/// `host-agent digests --json` over the sample configuration, with the agent
/// configuration's host facts: the launches the agent derives.
fn digests_json(rig: &Rig, pod_cpus: &str) -> Vec<serde_json::Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .arg("digests")
        .arg("--kata-config")
        .arg(&rig.sample.config)
        .args([
            "--json",
            "--pod-cpus",
            pod_cpus,
            "--host-cpu-sig",
            "0xa00f11",
            "--fips",
            if host_fips() { "true" } else { "false" },
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The kernel command line of the launch for pod CPUs 0.
fn cmdline0(rig: &Rig) -> String {
    let launches = digests_json(rig, "0");
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert_eq!(launches[0]["runtime_class"], CLASS);
    launches[0]["cmdline"].as_str().unwrap().to_string()
}

/// Writes a cosign-style key pair: (public key file, private key file). Real
/// P-256 keys from the `openssl` tool when it is installed.
fn key_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("cosign.key");
    let public = dir.join("cosign.pub");
    let generated = Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .arg("-out")
        .arg(&private)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !generated {
        std::fs::write(&private, FALLBACK_PRIVATE_PEM).unwrap();
        std::fs::write(&public, FALLBACK_PUBLIC_PEM).unwrap();
    }
    let text = std::fs::read_to_string(&public).unwrap();
    assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"), "{text}");
    assert!(std::fs::read_to_string(&private)
        .unwrap()
        .contains("PRIVATE KEY"));
    (public, private)
}

/// The online payload: a bincode map of GUID text to bytes (u64 LE count, then
/// u64 LE length-prefixed key and value).
fn decode_online_payload(plain: &[u8]) -> Vec<(String, Vec<u8>)> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (a, b) = rest.split_at(n);
        *rest = b;
        a
    }
    fn len(rest: &mut &[u8]) -> usize {
        usize::try_from(u64::from_le_bytes(take(rest, 8).try_into().unwrap())).unwrap()
    }
    let mut rest = plain;
    let count = len(&mut rest);
    let mut out = Vec::new();
    for _ in 0..count {
        let k = len(&mut rest);
        let key = String::from_utf8(take(&mut rest, k).to_vec()).unwrap();
        let v = len(&mut rest);
        out.push((key, take(&mut rest, v).to_vec()));
    }
    assert!(rest.is_empty(), "trailing bytes in the online payload");
    out
}

/// A guest measuring `digest` launches online through the simulated PSP and
/// shim, takes the connection secret from its secret table, and asks for the
/// resources `ids` over GetOnlineSecret; returns their bytes, decrypted.
async fn online_resources(rig: &Rig, digest: [u8; 32], ids: &[&str]) -> Vec<Vec<u8>> {
    let wanted: Vec<(&str, &str)> = ids.iter().map(|id| ("resource", *id)).collect();
    online_secrets(rig, digest, &wanted).await.unwrap()
}

/// As [`online_resources`], for (SecretType, Id) pairs; the broker's refusal
/// of the GetOnlineSecret call is returned.
async fn online_secrets(
    rig: &Rig,
    digest: [u8; 32],
    wanted: &[(&str, &str)],
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let launch = ShimLaunch::online(rig.kbs_uri(), POLICY, digest);
    let outcome = pre_attest(&rig.platform, &launch)
        .await
        .unwrap_or_else(|e| panic!("the online launch is refused: {e}"));
    let entries = sev_sim::efi_secret::parse_table(&outcome.secret_table).unwrap();
    let conn = entries
        .iter()
        .find(|(g, _)| g == ONLINE_GUID)
        .expect("the connection entry in the secret table");
    let c: serde_json::Value = serde_json::from_slice(&conn.1).unwrap();
    let client_id = c["client_id"].as_str().unwrap().to_string();
    let key = unb64(c["key"].as_str().unwrap());
    assert_eq!(key.len(), 32);
    let guids: Vec<String> = (0..wanted.len())
        .map(|i| format!("0b1c2d3e-4f50-4617-8899-aabbccddee{i:02x}"))
        .collect();
    let resp = KeyBrokerServiceClient::connect(rig.kbs_uri())
        .await
        .unwrap()
        .get_online_secret(OnlineSecretRequest {
            client_id,
            secret_requests: wanted
                .iter()
                .zip(&guids)
                .map(|((kind, id), guid)| RequestDetails {
                    guid: guid.clone(),
                    // What the guest's online_sev_kbc sends.
                    format: "binary".into(),
                    secret_type: (*kind).to_string(),
                    id: (*id).to_string(),
                })
                .collect(),
        })
        .await?
        .into_inner();
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
    let iv = unb64(&resp.iv);
    assert_eq!(iv.len(), 12);
    let plain = cipher
        .decrypt(iv.as_slice().into(), unb64(&resp.payload).as_slice())
        .expect("the payload decrypts under the connection key");
    let map = decode_online_payload(&plain);
    Ok(guids
        .iter()
        .map(|g| {
            map.iter()
                .find(|(k, _)| k == g)
                .unwrap_or_else(|| panic!("{g} not in the online payload"))
                .1
                .clone()
        })
        .collect())
}

/// A guest measuring `digest` launches offline, the shim asking for the bundle
/// of `keyset` as Kata does; returns the bundle entry of the injected secret
/// table, secret id to decoded bytes, as the guest's offline KBC reads it.
async fn offline_bundle(
    rig: &Rig,
    digest: [u8; 32],
    keyset: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, ShimError> {
    let launch = ShimLaunch::offline(rig.kbs_uri(), POLICY, digest, keyset);
    let outcome = pre_attest(&rig.platform, &launch).await?;
    let entries = sev_sim::efi_secret::parse_table(&outcome.secret_table).unwrap();
    let bundle = entries
        .iter()
        .find(|(g, _)| g == OFFLINE_GUID)
        .expect("the bundle entry in the secret table");
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&bundle.1).unwrap();
    Ok(map.into_iter().map(|(k, v)| (k, unb64(&v))).collect())
}

/// Writes a key file of `len` random bytes; returns its path and bytes.
fn key_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let key: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    let p = dir.join(name);
    std::fs::write(&p, &key).unwrap();
    (p, key)
}

/// Asserts that `text` shows no form of `key`.
#[track_caller]
fn assert_not_shown(text: &str, key: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    assert!(
        !text.contains(&b64) && !text.contains(&hex::encode(key)),
        "the key is shown: {text}"
    );
}

/// The sev crate's digest of the pod-CPUs-0 launch, which must be registered.
async fn registered_digest(rig: &Rig) -> [u8; 32] {
    let d = rig.sev_digest(&rig.sample.initrd, &cmdline0(rig));
    assert!(
        rig.registered().await.contains(&hex::encode(d)),
        "the sev crate's digest of the pod-CPUs-0 launch is registered"
    );
    d
}

fn assert_none_policy(policy: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(policy).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"default": [{"type": "insecureAcceptAnything"}], "transports": {}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_registers_the_nodes_digests_and_the_policy_idempotently() {
    let rig = Rig::new("");
    assert!(all_digests(&rig).await.is_empty());

    let out = ok(&provision(&rig, &["--signature-policy", "none"]));
    assert!(
        out.contains(&format!("registered 2 digests of {CLASS} (node {NODE})")),
        "{out}"
    );
    assert!(
        out.contains(&format!("set       resource {POLICY_RESOURCE}")),
        "{out}"
    );
    assert!(out.contains("signature policy none"), "{out}");

    // The digests the agent derives for pod CPUs 0 and 1 (max_pod_cpus = 1),
    // as the daemon registers them, and nothing else.
    let mut expected: Vec<String> = digests_json(&rig, "0,1")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(expected.len(), 2);
    let registered = rig.registered().await;
    assert_eq!(registered, expected);
    let digest = registered_digest(&rig).await;
    let first = all_digests(&rig).await;
    assert_eq!(first.len(), 2, "{first:?}");
    for d in &first {
        assert_eq!((d.node.as_str(), d.runtime_class.as_str()), (NODE, CLASS));
        let d = d.digest.as_ref().unwrap();
        assert_eq!(d.mode, "sev");
        assert!(d.config.contains("configuration-qemu-sev.toml"), "{d:?}");
    }
    let inv = inventory(&rig).await;
    assert_eq!(inv.2, sorted(&[POLICY_RESOURCE]));
    assert_eq!(
        state(&rig).unwrap(),
        serde_json::json!({"node": NODE, "classes": [CLASS], "resources": [POLICY_RESOURCE]})
    );

    // A guest of the registered launch gets the "none" policy.
    let got = online_resources(&rig, digest, &[POLICY_RESOURCE]).await;
    assert_none_policy(&got[0]);

    // Again: same state.
    ok(&provision(&rig, &["--signature-policy", "none"]));
    assert_eq!(all_digests(&rig).await, first);
    assert_eq!(inventory(&rig).await, inv);
    // With --json, what was done.
    let out = ok(&provision(&rig, &["--signature-policy", "none", "--json"]));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["node"], NODE);
    assert_eq!(j["registered"][CLASS], 2);
    assert_eq!(j["resources"], serde_json::json!([POLICY_RESOURCE]));
    assert_eq!(j["signature_policy"], "none");
    assert_eq!(all_digests(&rig).await, first);
    assert_eq!(inventory(&rig).await, inv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_serves_the_policy_and_the_key_to_an_attested_guest() {
    let rig = Rig::new("");
    let (public, private) = key_pair(rig.dir.path());
    let public_s = public.to_str().unwrap();
    let private_s = private.to_str().unwrap();

    // Refusals, before anything is set.
    let base = ["--signature-policy", "verify"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| (*s).to_string()).collect()
    };
    let refusals: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            with(&["--image", REPOS[0]]),
            vec!["verify needs --cosign-key"],
        ),
        (
            with(&["--cosign-key", public_s]),
            vec!["at least one --image"],
        ),
        (
            with(&[
                "--image",
                REPOS[0],
                "--image",
                "nginx:latest",
                "--cosign-key",
                public_s,
            ]),
            vec!["nginx:latest", "without tag or digest"],
        ),
        (
            with(&[
                "--image",
                "docker.io/library/nginx@sha256:00",
                "--cosign-key",
                public_s,
            ]),
            vec!["nginx@sha256:00", "without tag or digest"],
        ),
        (
            with(&["--image", REPOS[0], "--cosign-key", private_s]),
            vec!["cosign.key", "is a private key"],
        ),
    ];
    let check_refusals = |phase: &str| {
        for (args, words) in &refusals {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let err = failed(&provision(&rig, &args));
            for w in words {
                assert!(err.contains(w), "{phase}: {args:?}: {w:?} not in {err}");
            }
        }
    };
    check_refusals("on an empty broker");
    assert!(all_digests(&rig).await.is_empty(), "nothing registered");
    assert!(resources(&rig).await.is_empty(), "no resource set");
    assert_eq!(state(&rig), None);

    // With a "none" provisioning in place, refusals change nothing either.
    ok(&provision(&rig, &["--signature-policy", "none"]));
    let digests = all_digests(&rig).await;
    let inv = inventory(&rig).await;
    let st = state(&rig);
    check_refusals("after provisioning none");
    assert_eq!(all_digests(&rig).await, digests);
    assert_eq!(inventory(&rig).await, inv);
    assert_eq!(state(&rig), st);
    let digest = registered_digest(&rig).await;
    let got = online_resources(&rig, digest, &[POLICY_RESOURCE]).await;
    assert_none_policy(&got[0]);

    // verify: both resources.
    let out = ok(&provision(
        &rig,
        &[
            "--signature-policy",
            "verify",
            "--image",
            REPOS[0],
            "--image",
            REPOS[1],
            "--cosign-key",
            public_s,
        ],
    ));
    assert!(
        out.contains(&format!(
            "signature policy verify ({}, {})",
            REPOS[0], REPOS[1]
        )),
        "{out}"
    );
    assert_eq!(
        resources(&rig).await,
        sorted(&[POLICY_RESOURCE, COSIGN_KEY_RESOURCE])
    );
    assert_eq!(all_digests(&rig).await, digests, "same digests");
    assert_eq!(
        state(&rig).unwrap()["resources"],
        serde_json::json!([POLICY_RESOURCE, COSIGN_KEY_RESOURCE])
    );

    // What an attested guest reads.
    let got = online_resources(&rig, digest, &[POLICY_RESOURCE, COSIGN_KEY_RESOURCE]).await;
    let policy: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
    assert_eq!(policy["default"], serde_json::json!([{"type": "reject"}]));
    let docker = policy["transports"]["docker"].as_object().unwrap();
    assert_eq!(docker.len(), 2, "{policy}");
    for repo in REPOS {
        assert_eq!(
            docker[repo],
            serde_json::json!([{"type": "sigstoreSigned", "keyPath": KEY_PATH}]),
            "{repo}: {policy}"
        );
    }
    assert_eq!(
        got[1],
        std::fs::read(&public).unwrap(),
        "the key, byte for byte"
    );

    // A launch nobody registered gets nothing.
    let e = pre_attest(
        &rig.platform,
        &ShimLaunch::online(rig.kbs_uri(), POLICY, [0x5a; 32]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_removes_only_what_this_node_set() {
    let rig = Rig::new("");
    let (public, _) = key_pair(rig.dir.path());
    let public_s = public.to_str().unwrap();
    let verify = [
        "--signature-policy",
        "verify",
        "--image",
        REPOS[1],
        "--cosign-key",
        public_s,
    ];

    // Another node's digests and an operator's resource.
    let mut c = admin(&rig).await;
    c.replace_digests(ReplaceDigestsRequest {
        node: OTHER_NODE.into(),
        runtime_class: CLASS.into(),
        digests: vec![Digest {
            mode: "sev".into(),
            digest: vec![0x42; 32],
            vcpus: 1,
            vcpu_type: String::new(),
            config: "another node's configuration".into(),
        }],
    })
    .await
    .unwrap();
    c.set_resource(SetResourceRequest {
        id: OTHER_RESOURCE.into(),
        data: b"operator data".to_vec(),
    })
    .await
    .unwrap();
    let other = digests_of(&rig, OTHER_NODE).await;
    assert_eq!(other.len(), 1);

    // verify, then none without --clean: the key this node set goes.
    ok(&provision(&rig, &verify));
    assert_eq!(
        resources(&rig).await,
        sorted(&[POLICY_RESOURCE, COSIGN_KEY_RESOURCE, OTHER_RESOURCE])
    );
    let ours = digests_of(&rig, NODE).await;
    assert_eq!(ours.len(), 2);
    let out = ok(&provision(&rig, &["--signature-policy", "none"]));
    assert!(
        out.contains(&format!("removed   resource {COSIGN_KEY_RESOURCE}")),
        "{out}"
    );
    assert_eq!(
        resources(&rig).await,
        sorted(&[POLICY_RESOURCE, OTHER_RESOURCE])
    );
    assert_eq!(digests_of(&rig, NODE).await, ours);
    assert_eq!(digests_of(&rig, OTHER_NODE).await, other);
    // The operator's resource reaches online guests once attached to the
    // keyset their shim names; this node's are attached by provision.
    c.set_keyset(SetKeysetRequest {
        id: "KEYSET-1".into(),
        secret_ids: vec![],
        resource_ids: vec![POLICY_RESOURCE.into(), OTHER_RESOURCE.into()],
    })
    .await
    .unwrap();
    let digest = registered_digest(&rig).await;
    let got = online_resources(&rig, digest, &[POLICY_RESOURCE, OTHER_RESOURCE]).await;
    assert_none_policy(&got[0]);
    assert_eq!(got[1], b"operator data");

    // --clean without --clean-only: removed, then provisioned afresh.
    ok(&provision(&rig, &verify));
    let before = (all_digests(&rig).await, inventory(&rig).await);
    let out = ok(&provision(&rig, &[&verify[..], &["--clean"]].concat()));
    assert!(
        out.contains(&format!("removed   digests of {CLASS} (node {NODE})")),
        "{out}"
    );
    assert_eq!((all_digests(&rig).await, inventory(&rig).await), before);

    // --clean --clean-only: this node's digests and resources go, the rest stays.
    let out = ok(&provision(
        &rig,
        &["--signature-policy", "none", "--clean", "--clean-only"],
    ));
    assert!(
        out.contains(&format!("removed   digests of {CLASS} (node {NODE})")),
        "{out}"
    );
    for r in [POLICY_RESOURCE, COSIGN_KEY_RESOURCE] {
        assert!(out.contains(&format!("removed   resource {r}")), "{out}");
    }
    assert!(!out.contains("registered"), "{out}");
    assert!(digests_of(&rig, NODE).await.is_empty());
    assert!(rig.registered().await.is_empty());
    assert_eq!(
        all_digests(&rig).await,
        other,
        "the other node's digests stay"
    );
    assert_eq!(resources(&rig).await, sorted(&[OTHER_RESOURCE]));
    assert_eq!(
        state(&rig).unwrap(),
        serde_json::json!({"node": NODE, "classes": [], "resources": []})
    );
    // The guest of this node is refused now.
    let e = pre_attest(
        &rig.platform,
        &ShimLaunch::online(rig.kbs_uri(), POLICY, digest),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");

    // Cleaning again is a no-op that succeeds.
    let out = ok(&provision(
        &rig,
        &["--signature-policy", "none", "--clean", "--clean-only"],
    ));
    assert!(!out.contains("removed"), "{out}");
    assert_eq!(all_digests(&rig).await, other);
    assert_eq!(resources(&rig).await, sorted(&[OTHER_RESOURCE]));

    // --clean-only needs --clean.
    let err = failed(&provision(
        &rig,
        &["--signature-policy", "none", "--clean-only"],
    ));
    assert!(err.contains("--clean"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_broker_provision_fails_naming_the_admin_socket() {
    let mut rig = Rig::new("");
    rig.stop_kbs();
    let started = std::time::Instant::now();
    let o = provision(&rig, &["--signature-policy", "none"]);
    let err = failed(&o);
    assert!(err.contains("admin socket"), "{err}");
    assert!(err.contains(rig.socket.to_str().unwrap()), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(state(&rig), None, "nothing recorded as provisioned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_key_reaches_attested_guests_in_the_bundle_and_online() {
    let rig = Rig::new("");
    let dir = rig.dir.path();
    let (key_path, key) = key_file(dir, "image.key", 32);
    let key_s = key_path.to_str().unwrap();
    let none_with_key = [
        "--signature-policy",
        "none",
        "--image-encryption-key",
        key_s,
    ];

    // The operator's keyset KEYSET-1, with a secret of its own.
    let mut c = admin(&rig).await;
    c.set_secret(SetSecretRequest {
        id: OPERATOR_SECRET.into(),
        payload: b"operator secret".to_vec(),
    })
    .await
    .unwrap();
    c.set_keyset(SetKeysetRequest {
        id: "KEYSET-1".into(),
        secret_ids: vec![OPERATOR_SECRET.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let operator_only = inventory(&rig).await;

    // Bad key files are refused, naming the file and the length, before
    // anything is set (5).
    let (short, _) = key_file(dir, "short.key", 31);
    let (long, _) = key_file(dir, "long.key", 33);
    let text = dir.join("base64.key");
    std::fs::write(
        &text,
        base64::engine::general_purpose::STANDARD.encode(&key),
    )
    .unwrap();
    let missing = dir.join("missing.key");
    let bad: [(&Path, &[&str]); 4] = [
        (&short, &["short.key", "is 31 bytes", "exactly 32"]),
        (&long, &["long.key", "is 33 bytes"]),
        (&text, &["base64.key", "is 44 bytes", "not base64 or hex"]),
        (&missing, &["missing.key", "cannot read"]),
    ];
    let check_refusals = |phase: &str| {
        for (file, words) in &bad {
            let err = failed(&provision(
                &rig,
                &[
                    "--signature-policy",
                    "none",
                    "--image-encryption-key",
                    file.to_str().unwrap(),
                ],
            ));
            for w in *words {
                assert!(err.contains(w), "{phase}: {w:?} not in {err}");
            }
            assert_not_shown(&err, &key);
        }
    };
    check_refusals("on a fresh broker");
    assert!(all_digests(&rig).await.is_empty());
    assert_eq!(inventory(&rig).await, operator_only);
    assert_eq!(state(&rig), None);

    // Provisioned: the secret, in KEYSET-1 beside the operator's.
    let out = ok(&provision(&rig, &none_with_key));
    assert!(
        out.contains(&format!("set       secret {IMAGE_KEY}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("keyset    KEYSET-1 holds {IMAGE_KEY}")),
        "{out}"
    );
    assert_not_shown(&out, &key);
    let inv = inventory(&rig).await;
    assert_eq!(inv.0, sorted(&[IMAGE_KEY, OPERATOR_SECRET]));
    assert_eq!(
        inv.1,
        [format!("KEYSET-1={OPERATOR_SECRET},{IMAGE_KEY}")],
        "the operator's secret stays in the keyset"
    );
    let membership =
        serde_json::json!([{"keyset": "KEYSET-1", "secret": IMAGE_KEY, "created": false}]);
    let st = state(&rig).unwrap();
    assert_eq!(st["secrets"], serde_json::json!([IMAGE_KEY]));
    assert_eq!(st["keysets"], membership);
    let digest = registered_digest(&rig).await;

    // (1) Offline: the bundle of KEYSET-1 holds exactly the key's bytes.
    let bundle = offline_bundle(&rig, digest, "KEYSET-1").await.unwrap();
    assert_eq!(bundle.len(), 2, "{:?}", bundle.keys());
    assert_eq!(bundle[IMAGE_KEY], key);
    assert_eq!(bundle[OPERATOR_SECRET], b"operator secret");
    // (2) Online: the key asked for as online_sev_kbc does.
    let got = online_secrets(&rig, digest, &[("key", IMAGE_KEY)])
        .await
        .unwrap();
    assert_eq!(got[0], key);
    // (3) A launch of a digest nobody registered gets nothing, either way.
    for launch in [
        ShimLaunch::offline(rig.kbs_uri(), POLICY, [0x5a; 32], "KEYSET-1"),
        ShimLaunch::online(rig.kbs_uri(), POLICY, [0x5a; 32]),
    ] {
        let e = pre_attest(&rig.platform, &launch).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    }

    // Again: the same state, the key in the keyset once.
    ok(&provision(&rig, &none_with_key));
    assert_eq!(inventory(&rig).await, inv);
    assert_eq!(state(&rig).unwrap(), st);
    let out = ok(&provision(
        &rig,
        &[&none_with_key[..], &["--json"]].concat(),
    ));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["secrets"], serde_json::json!([IMAGE_KEY]));
    assert_eq!(j["keyset_members"], membership);
    assert_not_shown(&out, &key);
    assert_eq!(inventory(&rig).await, inv);

    // (5) Bad key files change nothing now either: same ids, same bytes.
    check_refusals("after provisioning");
    assert_eq!(inventory(&rig).await, inv);
    assert_eq!(state(&rig).unwrap(), st);
    assert_eq!(
        offline_bundle(&rig, digest, "KEYSET-1").await.unwrap()[IMAGE_KEY],
        key
    );

    // Without the option the key stays, and stays recorded for --clean.
    let out = ok(&provision(&rig, &["--signature-policy", "none"]));
    assert!(out.contains("kept from an earlier run"), "{out}");
    assert_eq!(inventory(&rig).await, inv);
    assert_eq!(state(&rig).unwrap(), st);

    // (4) --clean takes the key out of the keyset it did not create and
    // deletes the secret; the operator's secret and keyset stay.
    let out = ok(&provision(&rig, &["--signature-policy", "none", "--clean"]));
    assert!(
        out.contains(&format!("removed   {IMAGE_KEY} from keyset KEYSET-1")),
        "{out}"
    );
    assert!(
        out.contains(&format!("removed   secret {IMAGE_KEY}")),
        "{out}"
    );
    assert!(!out.contains("removed   keyset"), "{out}");
    let after = inventory(&rig).await;
    assert_eq!(after.0, sorted(&[OPERATOR_SECRET]));
    assert_eq!(after.1, [format!("KEYSET-1={OPERATOR_SECRET}")]);
    assert_eq!(
        state(&rig).unwrap(),
        serde_json::json!({"node": NODE, "classes": [CLASS], "resources": [POLICY_RESOURCE]})
    );
    let bundle = offline_bundle(&rig, digest, "KEYSET-1").await.unwrap();
    assert_eq!(bundle.keys().collect::<Vec<_>>(), [OPERATOR_SECRET]);
    // Out of the keyset, out of the online guest's reach.
    let refused = online_secrets(&rig, digest, &[("key", IMAGE_KEY)])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyset_this_node_created_is_removed_only_when_nothing_else_is_in_it() {
    let rig = Rig::new("");
    let (key_path, key) = key_file(rig.dir.path(), "image.key", 32);
    let key_s = key_path.to_str().unwrap();
    let with_keyset = |keyset: &'static str| {
        vec![
            "--signature-policy",
            "none",
            "--image-encryption-key",
            key_s,
            "--keyset",
            keyset,
        ]
    };

    // --keyset alone, or a keyset id the broker would refuse: refused here,
    // before anything is set.
    let err = failed(&provision(
        &rig,
        &["--signature-policy", "none", "--keyset", "KEYSET-9"],
    ));
    assert!(err.contains("--image-encryption-key"), "{err}");
    let err = failed(&provision(
        &rig,
        &[
            "--signature-policy",
            "none",
            "--image-encryption-key",
            key_s,
            "--keyset",
            "KEY SET",
        ],
    ));
    assert!(err.contains("--keyset"), "{err}");
    assert_eq!(inventory(&rig).await, (vec![], vec![], vec![]));
    assert_eq!(state(&rig), None);

    // A keyset that did not exist: created, and recorded as created.
    ok(&provision(&rig, &with_keyset("KEYSET-9")));
    assert_eq!(inventory(&rig).await.1, [format!("KEYSET-9={IMAGE_KEY}")]);
    let created = serde_json::json!([{"keyset": "KEYSET-9", "secret": IMAGE_KEY, "created": true}]);
    assert_eq!(state(&rig).unwrap()["keysets"], created);
    let digest = registered_digest(&rig).await;
    assert_eq!(
        offline_bundle(&rig, digest, "KEYSET-9").await.unwrap()[IMAGE_KEY],
        key
    );
    // Again: still recorded as this node's.
    ok(&provision(&rig, &with_keyset("KEYSET-9")));
    assert_eq!(state(&rig).unwrap()["keysets"], created);

    // Moved to another keyset: the one it created and left empty goes.
    let out = ok(&provision(&rig, &with_keyset("KEYSET-2")));
    assert!(out.contains("removed   keyset KEYSET-9"), "{out}");
    assert_eq!(inventory(&rig).await.1, [format!("KEYSET-2={IMAGE_KEY}")]);
    assert_eq!(
        state(&rig).unwrap()["keysets"],
        serde_json::json!([{"keyset": "KEYSET-2", "secret": IMAGE_KEY, "created": true}])
    );
    let refused = offline_bundle(&rig, digest, "KEYSET-9").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(tonic::Code::FailedPrecondition),
        "{refused}"
    );

    // The operator puts a secret of theirs in that keyset: --clean takes only
    // this node's id out and keeps the keyset.
    let mut c = admin(&rig).await;
    c.set_secret(SetSecretRequest {
        id: OPERATOR_SECRET.into(),
        payload: b"operator secret".to_vec(),
    })
    .await
    .unwrap();
    c.set_keyset(SetKeysetRequest {
        id: "KEYSET-2".into(),
        secret_ids: vec![IMAGE_KEY.into(), OPERATOR_SECRET.into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let out = ok(&provision(
        &rig,
        &["--signature-policy", "none", "--clean", "--clean-only"],
    ));
    assert!(
        out.contains(&format!("removed   {IMAGE_KEY} from keyset KEYSET-2")),
        "{out}"
    );
    let inv = inventory(&rig).await;
    assert_eq!(inv.0, sorted(&[OPERATOR_SECRET]));
    assert_eq!(inv.1, [format!("KEYSET-2={OPERATOR_SECRET}")]);

    // Created and alone in it: --clean deletes the keyset.
    ok(&provision(&rig, &with_keyset("KEYSET-9")));
    let out = ok(&provision(
        &rig,
        &["--signature-policy", "none", "--clean", "--clean-only"],
    ));
    assert!(out.contains("removed   keyset KEYSET-9"), "{out}");
    let inv = inventory(&rig).await;
    assert_eq!(inv.0, sorted(&[OPERATOR_SECRET]));
    assert_eq!(inv.1, [format!("KEYSET-2={OPERATOR_SECRET}")]);
    assert!(inv.2.is_empty(), "{inv:?}");
}

#[test]
fn help_explains_the_image_key() {
    let o = Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["provision", "--help"])
        .output()
        .unwrap();
    let help = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for w in [
        "--image-encryption-key <FILE>",
        "32 raw bytes",
        "--keyset <ID>",
        "[default: KEYSET-1]",
        IMAGE_KEY,
        "guest_pre_attestation_keyset",
    ] {
        assert!(help.contains(w), "{w:?} not in {help}");
    }
}
