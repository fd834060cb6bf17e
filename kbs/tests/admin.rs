//! The admin API against the real `kbs` binary on loopback and a Unix socket in
//! a temporary directory: authentication (token file rules, bearer token, peer
//! credentials), every RPC, `kbs admin ... --json`, restarts and shutdown, and
//! the TCP listener over TLS with certificates made at test time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use kbs::admin_cli::{connect_tcp, connect_unix, Client};
use kbs_proto::kbsadmin::admin_client::AdminClient;
use kbs_proto::kbsadmin::{
    DeleteRequest, Digest, ListDigestsRequest, ListInventoryRequest, ListRecordsRequest,
    ReplaceDigestsRequest, SetKeysetRequest, SetResourceRequest, SetSecretRequest,
};
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::BundleRequest;
use sev_sim::tls_files::TlsFiles;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tonic::Code;

const TOKEN: &str = "kbs-admin-test-token-0123456789abcdefghijklmnop";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A running `kbs` and the addresses it printed.
struct Kbs {
    child: Child,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    socket: PathBuf,
    data_dir: PathBuf,
    args: Vec<String>,
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kbs with `args`; with a token file and no --admin-listen among them,
/// the TCP admin listener on a free loopback port.
fn command(data_dir: &Path, socket: &Path, args: &[String]) -> Command {
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let listen = if has("--admin-token-file") && !has("--admin-listen") {
        "127.0.0.1:0"
    } else {
        ""
    };
    command_admin_at(data_dir, socket, listen, args)
}

/// As [`command`], the TCP admin listener at `admin_listen` (none if empty).
fn command_admin_at(
    data_dir: &Path,
    socket: &Path,
    admin_listen: &str,
    args: &[String],
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kbs"));
    c.args(["--listen", "127.0.0.1:0"]);
    if !admin_listen.is_empty() {
        c.args(["--admin-listen", admin_listen]);
    }
    c.args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--admin-socket")
        .arg(socket)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

impl Kbs {
    /// Starts the kbs with the socket at `socket`, and waits until every
    /// listener has printed its line (the metrics one comes last).
    fn start_at(data_dir: &Path, socket: &Path, args: &[String]) -> Kbs {
        let mut child = command(data_dir, socket, args).spawn().expect("start kbs");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        let addr_after = |lines: &[String], prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|a| a.trim().parse::<SocketAddr>().unwrap())
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with("kbs: metrics on ");
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("kbs did not start:\n{}", lines.join("\n"));
                }
            }
        }
        std::thread::spawn(move || for _ in rx {});
        Kbs {
            addr: addr_after(&lines, "kbs: listening on ").unwrap(),
            admin_addr: addr_after(&lines, "kbs: admin listening on "),
            metrics_addr: addr_after(&lines, "kbs: metrics on "),
            child,
            socket: socket.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            args: args.to_vec(),
        }
    }

    fn start(dir: &Path, args: &[String]) -> Kbs {
        Kbs::start_at(&dir.join("data"), &dir.join("admin.sock"), args)
    }

    fn restart(mut self) -> Kbs {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Kbs::start_at(
            &self.data_dir.clone(),
            &self.socket.clone(),
            &self.args.clone(),
        )
    }

    async fn unix(&self) -> Client {
        connect_unix(&self.socket, TIMEOUT).await.unwrap()
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.admin_addr.expect("admin TCP listener"))
    }

    async fn tcp(&self) -> Client {
        connect_tcp(&self.endpoint(), TOKEN, None, TIMEOUT)
            .await
            .unwrap()
    }

    /// Runs `kbs admin --socket SOCKET ARGS...`.
    fn admin(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kbs"))
            .arg("admin")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn write_token(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let p = dir.join("admin.token");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn token_args(dir: &Path) -> Vec<String> {
    let p = write_token(dir, &format!("{TOKEN}\n"), 0o600);
    vec![
        "--admin-token-file".into(),
        p.to_string_lossy().into_owned(),
    ]
}

fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kbs did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn digest(mode: &str, byte: u8, vcpus: u32) -> Digest {
    Digest {
        mode: mode.into(),
        digest: vec![byte; if mode == "snp" { 48 } else { 32 }],
        vcpus,
        vcpu_type: "EPYC-v4".into(),
        config: "configuration-qemu-sev.toml".into(),
    }
}

async fn replace(
    c: &mut Client,
    node: &str,
    class: &str,
    digests: Vec<Digest>,
) -> Result<u32, tonic::Status> {
    c.replace_digests(ReplaceDigestsRequest {
        node: node.into(),
        runtime_class: class.into(),
        digests,
    })
    .await
    .map(|r| r.into_inner().count)
}

/// (node, class, mode, first byte, vcpus) of every registered digest.
async fn listed(c: &mut Client, node: &str) -> Vec<(String, String, String, u8, u32)> {
    let r = c
        .list_digests(ListDigestsRequest {
            node: node.into(),
            runtime_class: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out: Vec<_> = r
        .digests
        .into_iter()
        .map(|g| {
            let d = g.digest.unwrap();
            (g.node, g.runtime_class, d.mode, d.digest[0], d.vcpus)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_token_file_that_does_not_qualify_stops_the_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("readable by others", format!("{TOKEN}\n"), Some(0o644)),
        ("writable by group", format!("{TOKEN}\n"), Some(0o620)),
        ("too short", "short-secret-token\n".to_string(), Some(0o600)),
        ("missing", String::new(), None),
    ];
    for (what, text, mode) in cases {
        let path = match mode {
            Some(m) => write_token(dir.path(), &text, m),
            None => dir.path().join("no-such-token"),
        };
        let stderr = exits_64(command(
            &dir.path().join("data"),
            &dir.path().join("admin.sock"),
            &[
                "--admin-token-file".into(),
                path.to_string_lossy().into_owned(),
            ],
        ));
        assert!(
            stderr.contains(&format!("kbs: error: admin token file {}", path.display())),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("listening on"), "{what}: {stderr}");
        assert!(
            !stderr.contains(TOKEN) && !stderr.contains("short-secret"),
            "{what}: {stderr}"
        );
    }
}

#[tokio::test]
async fn tcp_admin_refuses_callers_without_the_token_and_says_nothing_about_it() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &token_args(dir.path()));

    let mut anonymous = AdminClient::connect(kbs.endpoint()).await.unwrap();
    let none = anonymous
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);

    let almost = &TOKEN[..TOKEN.len() - 1];
    for wrong in [almost, "x", &format!("{TOKEN}x")] {
        let mut c = connect_tcp(&kbs.endpoint(), wrong, None, TIMEOUT)
            .await
            .unwrap();
        let e = c
            .set_secret(SetSecretRequest {
                id: "a".into(),
                payload: b"v".to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(e.message(), none.message(), "every refusal reads the same");
        assert!(!e.message().contains(wrong) && !e.message().contains("token"));
    }
    // The refused calls changed nothing.
    let mut c = kbs.tcp().await;
    let inv = c
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(inv.secrets.is_empty());
}

#[test]
fn without_admin_listen_or_a_token_file_there_is_no_tcp_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &[]);
    assert!(kbs.admin_addr.is_none());
}

#[tokio::test]
async fn replacing_digests_swaps_exactly_one_node_and_class() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &token_args(dir.path()));
    let mut c = kbs.tcp().await;
    let class = "kata-qemu-sev";
    assert_eq!(
        replace(
            &mut c,
            "n1",
            class,
            vec![digest("sev", 1, 1), digest("snp", 2, 2)]
        )
        .await
        .unwrap(),
        2
    );
    replace(&mut c, "n1", "kata-qemu-snp", vec![digest("snp", 3, 1)])
        .await
        .unwrap();
    replace(&mut c, "n2", class, vec![digest("seves", 4, 1)])
        .await
        .unwrap();

    // A duplicate counts once.
    let count = replace(
        &mut c,
        "n1",
        class,
        vec![digest("seves", 5, 4), digest("seves", 5, 4)],
    )
    .await
    .unwrap();
    assert_eq!(count, 1);
    assert_eq!(
        listed(&mut c, "n1").await,
        vec![
            ("n1".into(), class.into(), "seves".into(), 5, 4),
            ("n1".into(), "kata-qemu-snp".into(), "snp".into(), 3, 1),
        ]
    );
    assert_eq!(
        listed(&mut c, "n2").await,
        vec![("n2".into(), class.into(), "seves".into(), 4, 1)]
    );
    assert_eq!(listed(&mut c, "").await.len(), 3);
    // The listed digest is the registered one, byte for byte.
    let all = c
        .list_digests(ListDigestsRequest {
            node: "n2".into(),
            runtime_class: class.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.digests.len(), 1);
    assert_eq!(
        all.digests[0].digest.as_ref().unwrap(),
        &digest("seves", 4, 1)
    );

    // A bad entry anywhere fails the whole call and keeps the old set.
    let bad = [
        (
            vec![digest("sev", 6, 1), digest("snp", 7, 1).with_len(32)],
            "digests[1].digest",
        ),
        (
            vec![Digest {
                mode: "sev-snp".into(),
                ..digest("snp", 7, 1)
            }],
            "digests[0].mode",
        ),
        (vec![digest("seves", 7, 0)], "digests[0].vcpus"),
        (
            vec![Digest {
                config: "x\u{7}".into(),
                ..digest("sev", 7, 1)
            }],
            "digests[0].config",
        ),
    ];
    for (digests, field) in bad {
        let e = replace(&mut c, "n2", class, digests).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    for (node, field) in [
        ("", "node"),
        ("a b", "node"),
        (&"n".repeat(257) as &str, "node"),
    ] {
        let e = replace(&mut c, node, class, vec![]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    assert_eq!(listed(&mut c, "n2").await.len(), 1);

    // An empty set removes the node's digests for that class only.
    assert_eq!(replace(&mut c, "n1", class, vec![]).await.unwrap(), 0);
    assert_eq!(listed(&mut c, "n1").await.len(), 1);
}

trait WithLen {
    fn with_len(self, len: usize) -> Self;
}

impl WithLen for Digest {
    fn with_len(mut self, len: usize) -> Self {
        self.digest.resize(len, 0);
        self
    }
}

#[tokio::test]
async fn secrets_keysets_and_resources_are_managed_and_values_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &[]);
    let mut c = kbs.unix().await;
    let value = b"s3cr3t-VALUE-that-must-not-leak".to_vec();
    let resource = b"resource-BYTES-that-must-not-leak".to_vec();
    c.set_secret(SetSecretRequest {
        id: "disk-key".into(),
        payload: value.clone(),
    })
    .await
    .unwrap();
    c.set_secret(SetSecretRequest {
        id: "api-key".into(),
        payload: b"other".to_vec(),
    })
    .await
    .unwrap();
    c.set_keyset(SetKeysetRequest {
        id: "pod-keys".into(),
        secret_ids: vec!["disk-key".into(), "api-key".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    c.set_resource(SetResourceRequest {
        id: "default/policy".into(),
        data: resource.clone(),
    })
    .await
    .unwrap();

    let inv = c
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.secrets, vec!["api-key", "disk-key"]);
    assert_eq!(inv.keysets.len(), 1);
    assert_eq!(inv.keysets[0].id, "pod-keys");
    assert_eq!(inv.keysets[0].secret_ids, vec!["disk-key", "api-key"]);
    assert_eq!(inv.resources, vec!["default/policy"]);
    let shown = format!("{inv:?}");
    assert!(!shown.contains("s3cr3t") && !shown.contains("resource-BYTES"));
    // Nor in the command's output.
    let out = kbs.admin(&["--json", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("disk-key") && !text.contains("s3cr3t"));

    // Replacing keeps one entry.
    c.set_secret(SetSecretRequest {
        id: "disk-key".into(),
        payload: b"new".to_vec(),
    })
    .await
    .unwrap();
    // Invalid input names the field.
    for (req, field) in [
        (
            SetSecretRequest {
                id: String::new(),
                payload: b"v".to_vec(),
            },
            "id",
        ),
        (
            SetSecretRequest {
                id: "k".into(),
                payload: vec![],
            },
            "payload",
        ),
        (
            SetSecretRequest {
                id: "k".into(),
                payload: vec![0; 64 * 1024 + 1],
            },
            "payload",
        ),
        (
            SetSecretRequest {
                id: "k\n".into(),
                payload: b"v".to_vec(),
            },
            "id",
        ),
    ] {
        let e = c.set_secret(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    let e = c
        .set_keyset(SetKeysetRequest {
            id: "ks".into(),
            secret_ids: vec!["ok".into(), String::new()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("secret_ids[1]"), "{}", e.message());

    c.delete_secret(DeleteRequest {
        id: "disk-key".into(),
    })
    .await
    .unwrap();
    c.delete_keyset(DeleteRequest {
        id: "pod-keys".into(),
    })
    .await
    .unwrap();
    c.delete_resource(DeleteRequest {
        id: "default/policy".into(),
    })
    .await
    .unwrap();
    for e in [
        c.delete_secret(DeleteRequest {
            id: "disk-key".into(),
        })
        .await
        .unwrap_err(),
        c.delete_keyset(DeleteRequest {
            id: "pod-keys".into(),
        })
        .await
        .unwrap_err(),
        c.delete_resource(DeleteRequest {
            id: "default/policy".into(),
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound);
    }
    let inv = c
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.secrets, vec!["api-key"]);
    assert!(inv.keysets.is_empty() && inv.resources.is_empty());
}

#[tokio::test]
async fn attestation_records_are_readable_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &[]);
    let mut kb = KeyBrokerServiceClient::connect(format!("http://{}", kbs.addr))
        .await
        .unwrap();
    // Garbage chain (NODBG policy), then a policy that allows debugging.
    let e = kb
        .get_bundle(BundleRequest {
            certificate_chain: "Z2FyYmFnZQ==".into(),
            policy: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = kb
        .get_bundle(BundleRequest {
            certificate_chain: "Z2FyYmFnZQ==".into(),
            policy: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let mut c = kbs.unix().await;
    let all = c
        .list_records(ListRecordsRequest {
            after_id: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .all(|r| r.rpc == "GetBundle" && r.outcome == "refused" && r.at > 0));
    assert_eq!(all[1].policy, 0);
    assert!(all[1].reason.contains("debugging"), "{}", all[1].reason);
    let page = c
        .list_records(ListRecordsRequest {
            after_id: all[0].id,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(page, all[1..].to_vec());
    let first = c
        .list_records(ListRecordsRequest {
            after_id: 0,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(first, all[..1].to_vec());
    for bad in [
        ListRecordsRequest {
            after_id: -1,
            limit: 1,
        },
        ListRecordsRequest {
            after_id: 0,
            limit: 1001,
        },
    ] {
        assert_eq!(
            c.list_records(bad).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let out = kbs.admin(&["records", "--json", "--after", &all[0].id.to_string()]);
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["rpc"], "GetBundle");
}

#[tokio::test]
async fn the_socket_is_private_and_admits_root() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &[]);
    let mode = std::fs::metadata(&kbs.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut c = kbs.unix().await;
    c.list_inventory(ListInventoryRequest {}).await.unwrap();
}

/// Runs `kbs admin --socket SOCKET list` as uid and gid 65534 (nobody).
fn admin_as_nobody(socket: &Path) -> Option<Output> {
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_kbs"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()
    };
    // Can nobody run the binary at all here (setpriv present, path readable)?
    if !run(&["--version".as_ref()])?.status.success() {
        return None;
    }
    run(&[
        "admin".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "list".as_ref(),
    ])
}

#[test]
fn the_socket_refuses_uids_that_are_not_allowed_by_peer_credentials() {
    if kbs::admin::own_uid() != 0 {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Let nobody reach the socket file, so that only the peer credentials stop it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("admin.sock");
    let kbs = Kbs::start_at(&dir.path().join("data"), &socket, &[]);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let Some(out) = admin_as_nobody(&socket) else {
        eprintln!("skipped: cannot run the kbs binary as uid 65534 here (setpriv or permissions)");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("kbs: error: ListInventory: "),
        "{stderr}"
    );
    assert!(stderr.contains("(Unauthenticated)"), "{stderr}");
    drop(kbs);

    // Allowed with --admin-uid.
    let kbs = Kbs::start_at(
        &dir.path().join("data"),
        &socket,
        &["--admin-uid".into(), "65534".into()],
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = admin_as_nobody(&socket).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(kbs);

    // Mapped to a node: admitted, but as that node, which lists no inventory.
    let kbs = Kbs::start_at(
        &dir.path().join("data"),
        &socket,
        &["--admin-uid".into(), "65534:node=node-7".into()],
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = admin_as_nobody(&socket).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(PermissionDenied)"), "{stderr}");
    assert!(stderr.contains("node \"node-7\""), "{stderr}");
    drop(kbs);
}

#[tokio::test]
async fn admin_commands_round_trip_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &token_args(dir.path()));
    let value = dir.path().join("value");
    std::fs::write(&value, b"from-a-file").unwrap();
    let json = |out: Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let set = json(kbs.admin(&[
        "--json",
        "secret",
        "set",
        "disk",
        "--value-file",
        value.to_str().unwrap(),
    ]));
    assert_eq!(
        set,
        serde_json::json!({"kind": "secret", "id": "disk", "action": "set"})
    );
    json(kbs.admin(&["secret", "set", "inline", "--value", "v", "--json"]));
    json(kbs.admin(&[
        "--json",
        "keyset",
        "set",
        "ks",
        "disk",
        "inline",
        "--resource",
        "r1",
    ]));
    let res = dir.path().join("res");
    std::fs::write(&res, b"resource").unwrap();
    json(kbs.admin(&[
        "--json",
        "resource",
        "set",
        "r1",
        "--file",
        res.to_str().unwrap(),
    ]));
    let sev = format!("sev:{}:1", "ab".repeat(32));
    let snp = format!("snp:{}:2:EPYC-v4", "cd".repeat(48));
    let r = json(kbs.admin(&[
        "--json",
        "digests",
        "replace",
        "--node",
        "n1",
        "--runtime-class",
        "kata-qemu-sev",
        "--digest",
        &sev,
        "--digest",
        &snp,
        "--config",
        "configuration-qemu-sev.toml",
    ]));
    assert_eq!(r["count"], 2);

    let inv = json(kbs.admin(&["list", "--json"]));
    assert_eq!(
        inv,
        serde_json::json!({
            "secrets": ["disk", "inline"],
            "keysets": [{"id": "ks", "secret_ids": ["disk", "inline"], "resource_ids": ["r1"]}],
            "resources": ["r1"],
        })
    );
    let digests = json(kbs.admin(&["digests", "list", "--json", "--node", "n1"]));
    let digests = digests.as_array().unwrap();
    assert_eq!(digests.len(), 2);
    assert_eq!(digests[0]["mode"], "sev");
    assert_eq!(digests[0]["digest"], "ab".repeat(32));
    assert_eq!(digests[0]["vcpus"], 1);
    assert_eq!(digests[1]["vcpu_type"], "EPYC-v4");
    assert_eq!(digests[1]["config"], "configuration-qemu-sev.toml");

    // The same over TCP with the token file.
    let token_file = dir.path().join("admin.token");
    let out = Command::new(env!("CARGO_BIN_EXE_kbs"))
        .args([
            "admin",
            "--json",
            "--endpoint",
            &kbs.endpoint(),
            "--token-file",
        ])
        .arg(&token_file)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(json(out), inv);

    // Deletes, then errors: message and code, status 1.
    json(kbs.admin(&["--json", "secret", "delete", "inline"]));
    json(kbs.admin(&["--json", "keyset", "delete", "ks"]));
    json(kbs.admin(&["--json", "resource", "delete", "r1"]));
    let out = kbs.admin(&["secret", "delete", "inline"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "kbs: error: DeleteSecret: secret \"inline\" does not exist (NotFound)\n"
    );
    let out = kbs.admin(&[
        "digests",
        "replace",
        "--node",
        "n1",
        "--runtime-class",
        "c",
        "--digest",
        "snp:00",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("kbs: error: ReplaceDigests: digests[0].digest"));
    let out = Command::new(env!("CARGO_BIN_EXE_kbs"))
        .args(["admin", "--socket"])
        .arg(dir.path().join("no.sock"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("kbs: error: cannot connect to the admin socket"));
}

#[tokio::test]
async fn state_survives_a_restart_on_the_same_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &[]);
    {
        let mut c = kbs.unix().await;
        c.set_secret(SetSecretRequest {
            id: "kept".into(),
            payload: b"v".to_vec(),
        })
        .await
        .unwrap();
        replace(&mut c, "n1", "kata-qemu-sev", vec![digest("sev", 9, 1)])
            .await
            .unwrap();
    }
    // Killed hard: the stale socket stays behind and is replaced at start.
    let kbs = kbs.restart();
    let mut c = kbs.unix().await;
    let inv = c
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inv.secrets, vec!["kept"]);
    assert_eq!(
        listed(&mut c, "n1").await,
        vec![("n1".into(), "kata-qemu-sev".into(), "sev".into(), 9, 1)]
    );
}

#[test]
fn sigterm_stops_every_listener_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut kbs = Kbs::start(dir.path(), &token_args(dir.path()));
    let status = Command::new("kill")
        .args(["-TERM", &kbs.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_exit(&mut kbs.child, Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(!kbs.socket.exists());
    for addr in [Some(kbs.addr), kbs.admin_addr, kbs.metrics_addr]
        .into_iter()
        .flatten()
    {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still open"
        );
    }
}

/// Fresh TLS material for one test, in `dir`.
fn tls_files(dir: &Path) -> TlsFiles {
    TlsFiles::write(dir).unwrap()
}

/// The token file and the TLS certificate and key of the admin listener.
fn tls_args(dir: &Path, tls: &TlsFiles) -> Vec<String> {
    let mut args = token_args(dir);
    for (flag, path) in [
        ("--admin-tls-cert", &tls.cert),
        ("--admin-tls-key", &tls.key),
    ] {
        args.push(flag.into());
        args.push(path.to_string_lossy().into_owned());
    }
    args
}

/// Runs `kbs admin --endpoint ENDPOINT --token-file TOKEN [--ca-file CA] ARGS`.
fn admin_tcp(dir: &Path, endpoint: &str, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kbs"));
    c.args(["admin", "--endpoint", endpoint, "--token-file"])
        .arg(dir.join("admin.token"));
    if let Some(ca) = ca {
        c.arg("--ca-file").arg(ca);
    }
    c.args(args).stdin(Stdio::null()).output().unwrap()
}

/// Starts a kbs whose TCP admin listener (if any) is at `admin_listen` and
/// that must refuse its configuration, and returns its stderr.
fn refused_start(dir: &Path, admin_listen: &str, args: &[String]) -> String {
    exits_64(command_admin_at(
        &dir.join("data"),
        &dir.join("admin.sock"),
        admin_listen,
        args,
    ))
}

/// Runs the kbs command `cmd`, which must refuse its configuration (exit
/// 64, no listener started), and returns its stderr.
fn exits_64(mut cmd: Command) -> String {
    let mut child = cmd.spawn().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    stderr
}

#[test]
fn a_data_directory_is_private_to_one_kbs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kbs = Kbs::start(dir.path(), &[]);
    // The database and its WAL are the kbs's alone.
    for name in ["kbs.sqlite3", "kbs.sqlite3-wal"] {
        let mode = std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // A second kbs on the same directory is refused, naming the first.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let stderr = exits_64(command(&data, &other.join("admin.sock"), &[]));
    assert!(
        stderr.contains(&format!("in use by another kbs (pid {})", kbs.child.id())),
        "{stderr}"
    );
    drop(kbs);

    // A directory others can write is refused; database files others can
    // read are narrowed at start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stderr = refused_start(dir.path(), "", &[]);
    assert!(stderr.contains("writable by other users"), "{stderr}");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = data.join("kbs.sqlite3");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let kbs = Kbs::start(dir.path(), &[]);
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(kbs);
}

/// Whether any file of `dir` holds `needle`.
fn any_file_holds(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        std::fs::read(e.unwrap().path())
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn secrets_are_sealed_under_a_key_from_outside_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let key_file = creds.join("kbs-at-rest-key");
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    let key_args = vec![
        "--at-rest-key-file".to_string(),
        key_file.to_string_lossy().into_owned(),
    ];
    let secret = b"sealed-secret-value-4711";
    let kbs = Kbs::start(dir.path(), &key_args);
    {
        let mut c = kbs.unix().await;
        c.set_secret(SetSecretRequest {
            id: "disk-key".into(),
            payload: secret.to_vec(),
        })
        .await
        .unwrap();
        c.set_resource(SetResourceRequest {
            id: "res".into(),
            data: b"sealed-resource-value-0815".to_vec(),
        })
        .await
        .unwrap();
    }
    // Nothing in the data directory reveals them, and no key is kept there.
    assert!(!any_file_holds(&data, secret));
    assert!(!any_file_holds(&data, b"sealed-resource-value-0815"));
    assert!(!data.join("at-rest.key").exists());
    drop(kbs);

    // Without the key, or with another, the kbs does not start, and says why.
    let stderr = refused_start(dir.path(), "", &[]);
    assert!(stderr.contains("sealed under the at-rest key"), "{stderr}");
    let wrong = creds.join("wrong");
    std::fs::write(&wrong, [9u8; 32]).unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stderr = refused_start(
        dir.path(),
        "",
        &[
            "--at-rest-key-file".into(),
            wrong.to_string_lossy().into_owned(),
        ],
    );
    assert!(stderr.contains("sealed under the at-rest key"), "{stderr}");
    // A key file others can read is refused, naming it.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refused_start(
        dir.path(),
        "",
        &[
            "--at-rest-key-file".into(),
            wrong.to_string_lossy().into_owned(),
        ],
    );
    assert!(
        stderr.contains("wrong") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    // A refused start leaves no key of its own behind.
    assert!(!data.join("at-rest.key").exists());

    // As systemd's credentials give it: found in $CREDENTIALS_DIRECTORY.
    let mut cmd = command(&data, &dir.path().join("admin.sock"), &[]);
    cmd.env("CREDENTIALS_DIRECTORY", &creds);
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.starts_with("kbs: metrics on ") {
            break;
        }
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("kbs: metrics on "), "{seen}");
    assert!(!seen.contains("kept beside the database"), "{seen}");
}

#[tokio::test]
async fn the_tcp_admin_listener_serves_tls_to_clients_that_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_files(dir.path());
    let kbs = Kbs::start(dir.path(), &tls_args(dir.path(), &tls));
    let port = kbs.admin_addr.expect("admin TCP listener").port();

    // `kbs admin` by host name, as an operator would.
    let https = format!("https://localhost:{port}");
    let out = admin_tcp(dir.path(), &https, Some(&tls.ca), &["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inv["secrets"], serde_json::json!([]));

    // The library client by address (the certificate names 127.0.0.1 too).
    let mut c = connect_tcp(
        &format!("https://127.0.0.1:{port}"),
        TOKEN,
        Some(&tls.ca),
        TIMEOUT,
    )
    .await
    .unwrap();
    c.set_secret(SetSecretRequest {
        id: "over-tls".into(),
        payload: b"v".to_vec(),
    })
    .await
    .unwrap();
    let out = admin_tcp(dir.path(), &https, Some(&tls.ca), &["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("over-tls"));

    // TLS does not replace the token.
    let mut wrong = connect_tcp(&https, "not-the-token", Some(&tls.ca), TIMEOUT)
        .await
        .unwrap();
    let e = wrong
        .list_inventory(ListInventoryRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // No clear-text gRPC on the TLS port.
    let plain = connect_tcp(&kbs.endpoint(), TOKEN, None, TIMEOUT).await;
    if let Ok(mut plain) = plain {
        assert!(plain.list_inventory(ListInventoryRequest {}).await.is_err());
    }
}

#[test]
fn a_client_that_does_not_trust_the_listeners_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_files(dir.path());
    let kbs = Kbs::start(dir.path(), &tls_args(dir.path(), &tls));
    let https = format!("https://localhost:{}", kbs.admin_addr.unwrap().port());

    let out = admin_tcp(dir.path(), &https, Some(&tls.other_ca), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("kbs: error: cannot connect to {https}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(out.stdout.is_empty());

    // https without a CA file, and http with one, are refused before connecting.
    let out = admin_tcp(dir.path(), &https, None, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no CA certificate file"), "{stderr}");
    let http = format!("http://localhost:{}", kbs.admin_addr.unwrap().port());
    let out = admin_tcp(dir.path(), &http, Some(&tls.ca), &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&tls.ca.display().to_string()) && stderr.contains("must be https://"),
        "{stderr}"
    );
}

#[test]
fn a_tcp_admin_listener_beyond_loopback_needs_tls() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(dir.path(), "0.0.0.0:0", &token_args(dir.path()));
    assert!(
        stderr.contains("kbs: error: --admin-listen 0.0.0.0:0: not a loopback address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--admin-tls-cert and --admin-tls-key, or a loopback address"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");

    // With TLS the same address is served.
    let tls = tls_files(dir.path());
    let mut child = command_admin_at(
        &dir.path().join("data"),
        &dir.path().join("admin.sock"),
        "0.0.0.0:0",
        &tls_args(dir.path(), &tls),
    )
    .spawn()
    .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let admin = stderr.lines().map_while(Result::ok).find_map(|l| {
        l.strip_prefix("kbs: admin listening on ")
            .map(str::to_string)
    });
    let _ = child.kill();
    let _ = child.wait();
    let admin: SocketAddr = admin.expect("the admin listener started").parse().unwrap();
    assert!(admin.ip().is_unspecified(), "{admin}");
}

#[test]
fn admin_tls_files_that_cannot_be_used_stop_the_start_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_files(dir.path());
    let key_text = std::fs::read_to_string(&tls.key).unwrap();
    let missing = dir.path().join("no-such-key.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    // The key of another certificate.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let other_key = tls_files(&elsewhere).key;
    let cases: [(&str, &Path, &Path, String); 5] = [
        (
            "missing key",
            &tls.cert,
            &missing,
            format!("admin TLS key file {}: cannot read", missing.display()),
        ),
        (
            "key not PEM",
            &tls.cert,
            &garbage,
            format!(
                "admin TLS key file {}: no PEM private key",
                garbage.display()
            ),
        ),
        (
            "certificate not PEM",
            &garbage,
            &tls.key,
            format!(
                "admin TLS certificate file {}: no PEM certificate",
                garbage.display()
            ),
        ),
        (
            "a key as certificate",
            &tls.key,
            &tls.key,
            format!(
                "admin TLS certificate file {}: no PEM certificate",
                tls.key.display()
            ),
        ),
        (
            "another certificate's key",
            &tls.cert,
            &other_key,
            format!(
                "admin TLS key file {} is not the key of certificate file {}",
                other_key.display(),
                tls.cert.display()
            ),
        ),
    ];
    for (what, cert, key, expected) in cases {
        let mut args = token_args(dir.path());
        for (flag, path) in [("--admin-tls-cert", cert), ("--admin-tls-key", key)] {
            args.push(flag.into());
            args.push(path.to_string_lossy().into_owned());
        }
        let stderr = refused_start(dir.path(), "127.0.0.1:0", &args);
        assert!(
            stderr.contains(&format!("kbs: error: {expected}")),
            "{what}: {stderr}"
        );
        // Never a line of the key in the output.
        for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!stderr.contains(line), "{what}: {stderr}");
        }
    }
}
