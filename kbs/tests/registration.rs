//! Registration by inputs and node credentials against the real `kbs`
//! binary: an operator approves over the admin socket with `kbs admin`, a node
//! calls the TCP admin listener with a token made for it. What a node sends is
//! what `host-agent` derives from the sample artefacts, so the broker's own
//! derivation is checked against the agent's on a real launch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use host_agent::agent::cache::ArtefactCache;
use host_agent::agent::config::AgentConfig;
use host_agent::agent::derive::{derive_file, Derived, HostFacts};
use host_agent::agent::inputs::{registration_of, ClassRegistration};
use kbs::admin_cli::{connect_tcp, Client};
use kbs_proto::kbsadmin::{
    ApproveRequest, CreateTokenRequest, DeleteRequest, ListApprovalsRequest, ListDigestsRequest,
    ListInventoryRequest, ListRecordsRequest, ListTokensRequest, RegisterLaunchesRequest,
    ReplaceDigestsRequest, RevokeRequest, SetKeysetRequest, SetResourceRequest, SetSecretRequest,
    WhoAmIRequest,
};
use sev_core::VcpuSignature;
use sev_sim::kbs_process::KbsProcess;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(10);
const CLASS: &str = "kata-qemu-sev";

/// A kbs with its admin socket (the operator: this uid) and a plain TCP
/// admin listener on loopback (for node tokens).
struct Broker {
    kbs: KbsProcess,
    dir: tempfile::TempDir,
    sample: sample_artefacts::Sample,
}

impl Broker {
    fn start(extra: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let sample = sample_artefacts::write_sample(&dir.path().join("kata")).unwrap();
        let roots = sev_sim::FakeAmdRoots::generate().unwrap();
        let ark = dir.path().join("ark.cert");
        std::fs::write(&ark, roots.ark_cert()).unwrap();
        let mut args: Vec<OsString> = vec!["--admin-listen".into(), "127.0.0.1:0".into()];
        args.extend(extra.iter().map(OsString::from));
        let kbs = KbsProcess::start_with(
            Path::new(env!("CARGO_BIN_EXE_kbs")),
            &dir.path().join("data"),
            &dir.path().join("admin.sock"),
            &ark,
            &args,
        )
        .unwrap();
        Broker { kbs, dir, sample }
    }

    /// `kbs admin --socket SOCKET ARGS...` as the operator, which must
    /// succeed; its standard output.
    fn admin_ok(&self, args: &[&str]) -> String {
        self.kbs.admin_ok(args).unwrap()
    }

    /// A node token made with `kbs admin token create --node NODE`.
    fn node_token(&self, node: &str) -> String {
        self.admin_ok(&["token", "create", "--node", node])
            .trim()
            .to_string()
    }

    /// A client of the TCP admin listener presenting `token`.
    async fn tcp(&self, token: &str) -> Client {
        let addr = self.kbs.admin_addr.as_deref().unwrap();
        connect_tcp(&format!("http://{addr}"), token, None, TIMEOUT)
            .await
            .unwrap()
    }

    /// The operator's client, over the socket.
    async fn operator(&self) -> Client {
        kbs::admin_cli::connect_unix(&self.kbs.socket, TIMEOUT)
            .await
            .unwrap()
    }

    fn path(&self, p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }
}

/// What the host agent would send for the sample configuration on a host
/// with this CPU: the launches for pod CPU counts 0, 1 and 2.
fn sample_registration(sample: &sample_artefacts::Sample) -> ClassRegistration {
    let host = HostFacts {
        host_sig: Some(VcpuSignature(0x00a0_0f11)),
        fips: false,
        host_cpus: Some(2),
        ..HostFacts::for_kernel(None, None)
    };
    let (_, derived) = derive_file(
        &sample.config,
        &AgentConfig::default(),
        &host,
        &mut ArtefactCache::new(),
    )
    .unwrap();
    let Derived::Launches(c) = derived else {
        panic!("the sample is an SEV launch: {derived:?}")
    };
    registration_of(&c, &host, None)
}

fn request(reg: &ClassRegistration, node: &str) -> RegisterLaunchesRequest {
    RegisterLaunchesRequest {
        node: node.into(),
        inputs: reg.inputs.clone(),
        launches: reg.launches.clone(),
        platform: reg.platform.clone(),
    }
}

/// (node, class, digest hex, origin) of every digest the operator sees.
async fn registered(op: &mut Client) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = op
        .list_digests(ListDigestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .digests
        .into_iter()
        .map(|g| {
            let d = g.digest.unwrap_or_default();
            (g.node, g.runtime_class, hex::encode(d.digest), g.origin)
        })
        .collect();
    v.sort();
    v
}

fn unapproved_kinds(status: &tonic::Status) -> Vec<String> {
    let details: serde_json::Value = serde_json::from_slice(status.details()).unwrap();
    let mut kinds: Vec<String> = details["unapproved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn a_node_credential_acts_only_for_its_own_node_and_reads_nothing_else() {
    let b = Broker::start(&[]);
    let token = b.node_token("node-a");
    let mut node = b.tcp(&token).await;
    let mut op = b.operator().await;

    let me = node.who_am_i(WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!((me.role.as_str(), me.node.as_str()), ("node", "node-a"));

    // Something of another node's to find out about.
    b.admin_ok(&[
        "digests",
        "replace",
        "--node",
        "node-b",
        "--runtime-class",
        CLASS,
        "--digest",
        &format!("sev:{}", "ab".repeat(32)),
    ]);

    // Registering for another node, by inputs or by digests.
    let reg = sample_registration(&b.sample);
    let e = node
        .register_launches(request(&reg, "node-b"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node-b"), "{e:?}");
    let e = node
        .replace_digests(ReplaceDigestsRequest {
            node: "node-b".into(),
            runtime_class: CLASS.into(),
            digests: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nor digests of its own choosing for itself, under approved registration.
    let e = node
        .replace_digests(ReplaceDigestsRequest {
            node: "node-a".into(),
            runtime_class: CLASS.into(),
            digests: vec![kbs_proto::kbsadmin::Digest {
                mode: "sev".into(),
                digest: vec![0xcd; 32],
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Its listing is its own node's only: node-b's digest is not in it.
    let mine = node
        .list_digests(ListDigestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .digests;
    assert!(mine.is_empty(), "{mine:?}");
    let e = node
        .list_digests(ListDigestsRequest {
            node: "node-b".into(),
            runtime_class: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Every operator call is refused, reads and writes alike.
    let denied = |r: Result<(), tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    };
    denied(
        node.list_inventory(ListInventoryRequest {}).await.map(drop),
        "ListInventory",
    );
    denied(
        node.set_secret(SetSecretRequest {
            id: "s".into(),
            payload: b"x".to_vec(),
        })
        .await
        .map(drop),
        "SetSecret",
    );
    denied(
        node.delete_secret(DeleteRequest { id: "s".into() })
            .await
            .map(drop),
        "DeleteSecret",
    );
    denied(
        node.set_keyset(SetKeysetRequest {
            id: "k".into(),
            secret_ids: vec!["s".into()],
            ..Default::default()
        })
        .await
        .map(drop),
        "SetKeyset",
    );
    denied(
        node.set_resource(SetResourceRequest {
            id: "r".into(),
            data: b"x".to_vec(),
        })
        .await
        .map(drop),
        "SetResource",
    );
    denied(
        node.list_records(ListRecordsRequest {
            after_id: 0,
            limit: 10,
        })
        .await
        .map(drop),
        "ListRecords",
    );
    denied(
        node.list_approvals(ListApprovalsRequest {}).await.map(drop),
        "ListApprovals",
    );
    denied(
        node.approve(ApproveRequest {
            kind: "kernel".into(),
            id: "00".repeat(32),
            ..Default::default()
        })
        .await
        .map(drop),
        "Approve",
    );
    denied(
        node.revoke(RevokeRequest {
            kind: "kernel".into(),
            id: "00".repeat(32),
            runtime_class: String::new(),
        })
        .await
        .map(drop),
        "Revoke",
    );
    denied(
        node.create_token(CreateTokenRequest {
            role: "operator".into(),
            node: String::new(),
            note: String::new(),
        })
        .await
        .map(drop),
        "CreateToken",
    );
    denied(
        node.list_tokens(ListTokensRequest {}).await.map(drop),
        "ListTokens",
    );

    // Nothing it tried changed anything.
    assert_eq!(
        registered(&mut op).await,
        [(
            "node-b".to_string(),
            CLASS.to_string(),
            "ab".repeat(32),
            "operator".to_string()
        )]
    );
    let inv = op
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(inv.secrets.is_empty() && inv.keysets.is_empty() && inv.resources.is_empty());

    // A revoked token is refused from its next call on.
    let list = b.admin_ok(&["token", "list", "--json"]);
    let tokens: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = tokens[0]["id"].as_str().unwrap().to_string();
    assert!(!list.contains(&token), "the token itself is never listed");
    b.admin_ok(&["token", "revoke", &id]);
    let e = node
        .list_digests(ListDigestsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut again = b.tcp(&token).await;
    let e = again.who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    drop(b.dir);
}

#[tokio::test]
async fn only_approved_inputs_register_and_the_broker_registers_its_own_digests() {
    let b = Broker::start(&[]);
    let token = b.node_token("node-a");
    let mut node = b.tcp(&token).await;
    let mut op = b.operator().await;
    let reg = sample_registration(&b.sample);
    let inputs = reg.inputs.clone().unwrap();

    // Nothing approved: every input is named, with its hash, and nothing is
    // registered.
    let e = node.register_launches(request(&reg, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        unapproved_kinds(&e),
        ["firmware", "initrd", "kata-config", "kernel"]
    );
    for hash in [
        &inputs.firmware_sha256,
        &inputs.kernel_sha256,
        &inputs.initrd_sha256,
        &inputs.kata_config_sha256,
    ] {
        assert!(e.message().contains(hash.as_str()), "{hash}: {e:?}");
    }
    assert!(registered(&mut op).await.is_empty());

    // Approved one by one: until the last, the rest is still refused by name.
    let steps: [(&[&str], &[&str]); 4] = [
        (
            &["approve", "firmware", &b.path(&b.sample.firmware)],
            &["initrd", "kata-config", "kernel"],
        ),
        (
            &["approve", "kernel", &b.path(&b.sample.kernel)],
            &["initrd", "kata-config"],
        ),
        (
            &["approve", "initrd", "--sha256", &inputs.initrd_sha256],
            &["kata-config"],
        ),
        (
            &[
                "approve",
                "kata-config",
                &b.path(&b.sample.config),
                "--runtime-class",
                CLASS,
                "--pod-cpus",
                "0-2",
            ],
            &[],
        ),
    ];
    for (approve, still) in steps {
        b.admin_ok(approve);
        let r = node.register_launches(request(&reg, "")).await;
        if still.is_empty() {
            let r = r.unwrap().into_inner();
            assert_eq!((r.count, r.origin.as_str()), (3, "derived"));
        } else {
            let e = r.unwrap_err();
            assert_eq!(unapproved_kinds(&e), still, "after {approve:?}");
            assert!(registered(&mut op).await.is_empty());
        }
    }

    // The broker's digests are the agent's, recorded as derived, for node-a.
    let mut want: Vec<_> = reg
        .digests
        .iter()
        .map(|d| {
            (
                "node-a".to_string(),
                CLASS.to_string(),
                hex::encode(&d.digest),
                "derived".to_string(),
            )
        })
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(registered(&mut op).await, want);

    // The approvals list who approved what, and when.
    let list: serde_json::Value =
        serde_json::from_str(&b.admin_ok(&["approvals", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{list:#}");
    for r in rows {
        assert!(
            r["approved_by"].as_str().unwrap().starts_with("uid "),
            "{r}"
        );
        assert!(!r["approved_at"].as_str().unwrap().is_empty(), "{r}");
    }

    // A command line the approved configuration cannot give, a pod shape
    // outside the approved range, and a digest of other artefacts: refused
    // with the part that differs, and what was registered stays.
    let mut tampered = reg.clone();
    tampered.launches[1].cmdline.push_str(" init=/bin/sh");
    let e = node
        .register_launches(request(&tampered, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("command line differs"), "{e:?}");

    let mut tampered = reg.clone();
    if let Some(d) = tampered.launches[0].digest.as_mut() {
        d.digest[0] ^= 1;
    }
    let e = node
        .register_launches(request(&tampered, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("launch digest"), "{e:?}");

    let mut tampered = reg.clone();
    if let Some(i) = tampered.inputs.as_mut() {
        i.pod_cpus.push(3);
    }
    let e = node
        .register_launches(request(&tampered, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(registered(&mut op).await, want);

    // Revoking the kernel takes every digest derived from it away at once, and
    // the node can no longer register with it.
    let out = b.admin_ok(&["revoke", "kernel", &inputs.kernel_sha256, "--json"]);
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["digests_removed"], want.len());
    assert!(registered(&mut op).await.is_empty());
    let e = node.register_launches(request(&reg, "")).await.unwrap_err();
    assert_eq!(unapproved_kinds(&e), ["kernel"]);
}

#[tokio::test]
async fn open_registration_takes_a_nodes_digests_for_its_own_node_only() {
    let b = Broker::start(&["--registration", "open"]);
    let token = b.node_token("node-a");
    let mut node = b.tcp(&token).await;
    let mut op = b.operator().await;
    let reg = sample_registration(&b.sample);

    // Nothing approved, and yet registered: the node's own digests.
    let r = node
        .register_launches(request(&reg, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.count, r.origin.as_str()), (3, "node"));
    let got = registered(&mut op).await;
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(n, _, _, o)| n == "node-a" && o == "node"));
    // Still bound to its own node.
    let e = node
        .register_launches(request(&reg, "node-b"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
}
