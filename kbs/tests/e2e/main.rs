//! End to end on loopback: the real `kbs` binary, the simulated SEV platform
//! playing PSP and Kata shim with real cryptography, and launch digests from the
//! host agent's measurement checked against the simulator's (the `sev` crate).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod harness;
mod report;

use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine as _;
use harness::Kbs;
use kbs::store::{DigestRecord, KeysetMembers, Store};
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::{BundleRequest, OnlineSecretRequest, RequestDetails, SecretRequest};
use sev_sim::{FakeAmdRoots, SimLaunch, SimPlatform};
use std::path::Path;
use tonic::Code;

const BUNDLE_GUID: &str = "e6f5a162-d67f-4750-a67c-5d065f2a9910";
const CONNECTION_GUID: &str = "1ee27366-0c87-43a6-af48-28543eaf7cb0";
/// NODBG | NOKS, as Kata's SEV template sets.
const POLICY: u32 = 0x3;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// A test rig: fake AMD roots trusted through --insecure-trust-anchor, a
/// simulated platform under them, a kbs with a registered digest and a keyset.
struct Rig {
    _dir: tempfile::TempDir,
    roots: FakeAmdRoots,
    platform: SimPlatform,
    kbs: Kbs,
    /// The launch digest the host agent computed for the sample artefacts.
    digest: [u8; 32],
}

fn sample_digest(dir: &Path) -> ([u8; 32], [u8; 32]) {
    let s = sample_artefacts::write_sample(&dir.join("artefacts")).unwrap();
    let cmdline = "console=hvc0 quiet panic=1 nr_cpus=1 selinux=0";
    let art = host_agent::launch::LaunchArtefacts {
        firmware: s.firmware.clone(),
        kernel: Some(s.kernel.clone()),
        initrd: Some(s.initrd.clone()),
        cmdline: Some(cmdline.as_bytes().to_vec()),
    };
    let shape = sev_core::VmShape {
        vcpus: 1,
        vcpu_sig: sev_core::VcpuSignature(0),
        guest_features: 0,
        vmm: sev_core::VmmType::Qemu,
        fpu: sev_core::vmsa::VmsaFpu::Reset,
    };
    let ours = host_agent::launch::measure(&art, sev_core::SevMode::Sev, &shape).unwrap();
    let theirs =
        sev_sim::launch_digest_sev(&s.firmware, &s.kernel, Some(&s.initrd), cmdline).unwrap();
    (ours.as_bytes().try_into().unwrap(), theirs)
}

impl Rig {
    /// A whole online launch: the secret table the guest would see.
    async fn online_launch(&self) -> Vec<u8> {
        let (id, mut launch) = self.bundle(&self.platform, POLICY).await.unwrap();
        let m = launch.measure(&self.digest);
        let conn = RequestDetails {
            guid: CONNECTION_GUID.into(),
            format: "JSON".into(),
            secret_type: "connection".into(),
            id: "KEYSET-1".into(),
        };
        let r = self
            .client()
            .await
            .get_secret(self.secret_request(&id, &m, POLICY, &self.digest, vec![conn]))
            .await
            .unwrap()
            .into_inner();
        launch
            .inject_secret(
                &unb64(&r.launch_secret_header),
                &unb64(&r.launch_secret_data),
            )
            .unwrap()
    }

    fn start(extra: &[&str]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (digest, sim_digest) = sample_digest(dir.path());
        assert_eq!(
            digest, sim_digest,
            "host agent and the sev crate disagree on the launch digest"
        );
        let roots = FakeAmdRoots::generate().unwrap();
        let platform = SimPlatform::new(&roots).unwrap();
        let ark = dir.path().join("fake-ark.cert");
        std::fs::write(&ark, roots.ark_cert()).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        {
            let store = Store::open(&data).unwrap();
            let rec = DigestRecord {
                mode: "sev".into(),
                digest: kbs::store::hex(&digest),
                vcpus: 1,
                vcpu_type: "host".into(),
                config: "sample configuration-qemu-sev.toml".into(),
            };
            store
                .replace_digests(
                    "node-1",
                    "kata-qemu-sev",
                    &[(digest.to_vec(), rec)],
                    kbs::store::Origin::Operator,
                    &[],
                )
                .unwrap();
            store.set_secret("key-a", b"image key A").unwrap();
            store.set_secret("key-b", &[0u8, 1, 2, 255]).unwrap();
            store
                .set_keyset_members(
                    "KEYSET-1",
                    &KeysetMembers {
                        secrets: vec!["key-a".into(), "key-b".into()],
                        resources: vec!["default/security-policy/test".into()],
                    },
                )
                .unwrap();
            store
                .set_resource(
                    "default/security-policy/test",
                    br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
                )
                .unwrap();
        }
        let mut args = vec![
            "--insecure-trust-anchor".to_string(),
            ark.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let kbs = Kbs::start(&data, &args);
        Rig {
            _dir: dir,
            roots,
            platform,
            kbs,
            digest,
        }
    }

    /// A launch asking for `keyset`'s bundle, measured as registered.
    async fn keyset_launch(
        &self,
        keyset: &str,
    ) -> Result<tonic::Response<kbs_proto::keybroker::SecretResponse>, tonic::Status> {
        let (id, mut launch) = self.bundle(&self.platform, POLICY).await?;
        let m = launch.measure(&self.digest);
        self.client()
            .await
            .get_secret(self.secret_request(
                &id,
                &m,
                POLICY,
                &self.digest,
                vec![bundle_request(keyset)],
            ))
            .await
    }

    async fn client(&self) -> KeyBrokerServiceClient<tonic::transport::Channel> {
        // A new connection per call, as the Kata shim makes.
        KeyBrokerServiceClient::connect(self.kbs.uri())
            .await
            .unwrap()
    }

    fn store(&self) -> Store {
        Store::open(&self.kbs.data_dir).unwrap()
    }

    /// GetBundle and LAUNCH_START on the simulated PSP.
    async fn bundle(
        &self,
        platform: &SimPlatform,
        policy: u32,
    ) -> Result<(String, SimLaunch), tonic::Status> {
        let r = self
            .client()
            .await
            .get_bundle(BundleRequest {
                certificate_chain: b64(&platform.cert_chain()),
                policy,
            })
            .await?
            .into_inner();
        let launch = platform
            .launch_start(
                &unb64(&r.guest_owner_public_key),
                &unb64(&r.launch_blob),
                policy,
            )
            .expect("the simulated PSP accepts the broker's session");
        Ok((r.launch_id, launch))
    }

    fn secret_request(
        &self,
        launch_id: &str,
        measurement: &[u8],
        policy: u32,
        digest: &[u8],
        requests: Vec<RequestDetails>,
    ) -> SecretRequest {
        SecretRequest {
            launch_measurement: b64(measurement),
            launch_id: launch_id.to_string(),
            policy,
            api_major: u32::from(self.platform.api_major()),
            api_minor: u32::from(self.platform.api_minor()),
            build_id: u32::from(self.platform.build()),
            fw_digest: b64(digest),
            launch_description: "shim launch".into(),
            secret_requests: requests,
        }
    }

    /// A whole offline launch: the secret table the guest would see, or the refusal.
    async fn offline_launch(
        &self,
        policy: u32,
        measured: &[u8; 32],
        claimed: &[u8; 32],
    ) -> Result<Vec<u8>, tonic::Status> {
        let (id, mut launch) = self.bundle(&self.platform, policy).await?;
        let m = launch.measure(measured);
        let r = self
            .client()
            .await
            .get_secret(self.secret_request(
                &id,
                &m,
                policy,
                claimed,
                vec![bundle_request("KEYSET-1")],
            ))
            .await?
            .into_inner();
        Ok(launch
            .inject_secret(
                &unb64(&r.launch_secret_header),
                &unb64(&r.launch_secret_data),
            )
            .unwrap())
    }
}

fn bundle_request(keyset: &str) -> RequestDetails {
    RequestDetails {
        guid: BUNDLE_GUID.into(),
        format: "JSON".into(),
        secret_type: "bundle".into(),
        id: keyset.into(),
    }
}

fn last_refusal(store: &Store) -> String {
    let records = store.records(0, 10_000).unwrap();
    let r = records
        .iter()
        .rev()
        .find(|r| r.outcome == "refused")
        .expect("a refusal is recorded");
    r.reason.clone()
}

#[tokio::test]
async fn a_good_launch_gets_the_keysets_secrets_in_the_guest() {
    let rig = Rig::start(&[]);
    let table = rig
        .offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap();
    let entries = sev_sim::efi_secret::parse_table(&table).unwrap();
    // The keyset's bundle, then the broker's report key.
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].0, BUNDLE_GUID);
    assert_eq!(entries[1].0, report::REPORT_KEY_GUID);
    let bundle: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
    assert_eq!(bundle["key-a"], b64(b"image key A"));
    assert_eq!(bundle["key-b"], b64(&[0, 1, 2, 255]));
    // What the guest's efi_secret module would expose.
    let efi = rig._dir.path().join("efi");
    sev_sim::efi_secret::write_dir(&table, &efi).unwrap();
    assert_eq!(std::fs::read(efi.join(BUNDLE_GUID)).unwrap(), entries[0].1);
    let records = rig.store().records(0, 100).unwrap();
    assert!(records
        .iter()
        .any(|r| r.rpc == "GetSecret" && r.outcome == "ok"));
}

#[tokio::test]
async fn the_whole_shim_flow_through_the_simulator() {
    let rig = Rig::start(&[]);
    let launch = sev_sim::shim::ShimLaunch::offline(rig.kbs.uri(), POLICY, rig.digest, "KEYSET-1");
    let outcome = sev_sim::shim::pre_attest(&rig.platform, &launch)
        .await
        .unwrap();
    let entries = sev_sim::efi_secret::parse_table(&outcome.secret_table).unwrap();
    assert_eq!(entries[0].0, BUNDLE_GUID);
}

#[tokio::test]
async fn the_online_connection_serves_resources() {
    let rig = Rig::start(&[]);
    let conn = rig.online_connection().await;
    assert_eq!(conn.1.len(), 32);
    let policy = rig
        .online_get(&conn, "resource", "default/security-policy/test")
        .await
        .unwrap();
    assert_eq!(
        policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#
    );
    // An unknown client gets nothing.
    let err = rig
        .client()
        .await
        .get_online_secret(OnlineSecretRequest {
            client_id: uuid::Uuid::new_v4().to_string(),
            secret_requests: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

impl Rig {
    /// An online launch's connection: its client id and key.
    async fn online_connection(&self) -> (String, Vec<u8>) {
        let table = self.online_launch().await;
        let entries = sev_sim::efi_secret::parse_table(&table).unwrap();
        let c: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
        (
            c["client_id"].as_str().unwrap().to_string(),
            unb64(c["key"].as_str().unwrap()),
        )
    }

    /// One secret over an online connection, decrypted.
    async fn online_get(
        &self,
        (client_id, key): &(String, Vec<u8>),
        kind: &str,
        id: &str,
    ) -> Result<Vec<u8>, tonic::Status> {
        let guid = "0b1c2d3e-4f50-4617-8899-aabbccddeeff";
        let resp = self
            .client()
            .await
            .get_online_secret(OnlineSecretRequest {
                client_id: client_id.clone(),
                secret_requests: vec![RequestDetails {
                    guid: guid.into(),
                    format: "binary".into(),
                    secret_type: kind.into(),
                    id: id.into(),
                }],
            })
            .await?
            .into_inner();
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(key).unwrap();
        let iv = unb64(&resp.iv);
        let plain = cipher
            .decrypt(iv.as_slice().into(), unb64(&resp.payload).as_slice())
            .unwrap();
        // A bincode map of one entry: u64 count, then the u64-length-prefixed
        // GUID and value.
        assert_eq!(&plain[..8], &1u64.to_le_bytes());
        assert_eq!(&plain[16..16 + guid.len()], guid.as_bytes());
        Ok(plain[8 + 8 + guid.len() + 8..].to_vec())
    }
}

#[tokio::test]
async fn an_online_connection_reaches_only_its_keyset_while_its_digest_is_registered() {
    let rig = Rig::start(&[]);
    {
        let store = rig.store();
        store.set_secret("other-key", b"not for KEYSET-1").unwrap();
        store.set_keyset("KEYSET-2", &["other-key".into()]).unwrap();
        store
            .set_resource("other/resource/1", b"not attached")
            .unwrap();
    }
    let conn = rig.online_connection().await;
    // What the launch's keyset names: its secrets, its bundle, its resources.
    assert_eq!(
        rig.online_get(&conn, "key", "key-a").await.unwrap(),
        b"image key A"
    );
    let bundle = rig.online_get(&conn, "bundle", "KEYSET-1").await.unwrap();
    let bundle: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    assert_eq!(bundle["key-a"], b64(b"image key A"));
    rig.online_get(&conn, "resource", "default/security-policy/test")
        .await
        .unwrap();
    // Anything else is refused, existing or not, without saying which.
    for (kind, id) in [
        ("key", "other-key"),
        ("bundle", "KEYSET-2"),
        ("resource", "other/resource/1"),
        ("resource", "no/such/resource"),
    ] {
        let e = rig.online_get(&conn, kind, id).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{kind} {id}: {e:?}");
        assert!(
            e.message().contains("not in this connection's keyset"),
            "{e:?}"
        );
        assert_eq!(
            last_refusal(&rig.store()),
            "request outside the connection's keyset"
        );
    }
    // An operator attaching a resource to the keyset widens the scope of
    // live connections.
    rig.store()
        .set_keyset_members(
            "KEYSET-1",
            &KeysetMembers {
                secrets: vec!["key-a".into(), "key-b".into()],
                resources: vec![
                    "default/security-policy/test".into(),
                    "other/resource/1".into(),
                ],
            },
        )
        .unwrap();
    assert_eq!(
        rig.online_get(&conn, "resource", "other/resource/1")
            .await
            .unwrap(),
        b"not attached"
    );

    // The launch's digest is revoked: its connections end at once, for good.
    let rec = rig.store().list_digests().unwrap().remove(0).2;
    rig.store()
        .replace_digests(
            "node-1",
            "kata-qemu-sev",
            &[],
            kbs::store::Origin::Operator,
            &[],
        )
        .unwrap();
    assert!(rig.store().connection(&conn.0).unwrap().is_none());
    let e = rig.online_get(&conn, "key", "key-a").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    rig.store()
        .replace_digests(
            "node-1",
            "kata-qemu-sev",
            &[(rig.digest.to_vec(), rec)],
            kbs::store::Origin::Operator,
            &[],
        )
        .unwrap();
    let e = rig.online_get(&conn, "key", "key-a").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A new launch of the registered digest gets a new connection.
    let fresh = rig.online_connection().await;
    rig.online_get(&fresh, "key", "key-a").await.unwrap();
}

#[tokio::test]
async fn an_online_connection_lives_as_long_as_connection_ttl() {
    let rig = Rig::start(&["--connection-ttl", "1"]);
    let conn = rig.online_connection().await;
    rig.online_get(&conn, "key", "key-a").await.unwrap();
    // Expiry is kept in whole seconds: past 2 s it has certainly gone.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let e = rig.online_get(&conn, "key", "key-a").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(last_refusal(&rig.store()), "client id unknown or expired");
}

#[tokio::test]
async fn responses_over_their_limit_are_refused_before_values_are_read() {
    let rig = Rig::start(&["--max-online-response-bytes", "65536"]);
    {
        let store = rig.store();
        store.set_resource("big", &vec![7u8; 100 * 1024]).unwrap();
        store.set_resource("small", &[7u8; 1024]).unwrap();
        store.set_secret("large-key", &[1u8; 5000]).unwrap();
        store
            .set_keyset("KEYSET-BIG", &["large-key".into()])
            .unwrap();
        store
            .set_keyset_members(
                "KEYSET-1",
                &KeysetMembers {
                    secrets: vec!["key-a".into()],
                    resources: vec!["big".into(), "small".into()],
                },
            )
            .unwrap();
    }
    // Online: over --max-online-response-bytes, by one resource or by many.
    let table = rig.online_launch().await;
    let entries = sev_sim::efi_secret::parse_table(&table).unwrap();
    let c: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
    let client_id = c["client_id"].as_str().unwrap().to_string();
    let resource = |id: &str| RequestDetails {
        guid: "0b1c2d3e-4f50-4617-8899-aabbccddeeff".into(),
        format: "binary".into(),
        secret_type: "resource".into(),
        id: id.into(),
    };
    for requests in [vec![resource("big")], vec![resource("small"); 64]] {
        let e = rig
            .client()
            .await
            .get_online_secret(OnlineSecretRequest {
                client_id: client_id.clone(),
                secret_requests: requests,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message()
                .contains("limit of 65536 bytes (--max-online-response-bytes)"),
            "{e:?}"
        );
    }
    // Under the limit, served.
    rig.client()
        .await
        .get_online_secret(OnlineSecretRequest {
            client_id,
            secret_requests: vec![resource("small"); 8],
        })
        .await
        .unwrap();

    // GetSecret: a keyset too large for the guest's 4 KiB secret area.
    let e = rig.keyset_launch("KEYSET-BIG").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains("limit of 4096 bytes (the guest's secret area)"),
        "{e:?}"
    );
    assert_eq!(
        last_refusal(&rig.store()),
        "requested secrets too large for the secret area"
    );
}

/// Makes the kbs's writes of `table` fail, as a full disk would, from a
/// connection of the test's own (`false` lifts it).
fn fail_writes(rig: &Rig, table: &str, on: bool) {
    let db = rusqlite::Connection::open(rig.kbs.data_dir.join("kbs.sqlite3")).unwrap();
    let sql = if on {
        format!(
            "CREATE TRIGGER full_{table}_i BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;\
             CREATE TRIGGER full_{table}_u BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;"
        )
    } else {
        format!("DROP TRIGGER full_{table}_i; DROP TRIGGER full_{table}_u;")
    };
    db.execute_batch(&sql).unwrap();
}

async fn keybroker_health(rig: &Rig) -> i32 {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel = tonic::transport::Endpoint::from_shared(rig.kbs.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "keybroker.KeyBrokerService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn nothing_is_released_unrecorded_and_health_says_so() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let rig = Rig::start(&[]);
    // Records cannot be written: the launch gets an internal error, not its
    // secrets, and the guest never sees a table.
    fail_writes(&rig, "records", true);
    let e = rig
        .offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    fail_writes(&rig, "records", false);
    rig.offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap();
    let records = rig.store().records(0, 100).unwrap();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.rpc == "GetSecret" && r.outcome == "ok")
            .count(),
        1,
        "only the release that went out is recorded: {records:?}"
    );

    // While the database cannot be written, health says NOT_SERVING.
    assert_eq!(keybroker_health(&rig).await, ServingStatus::Serving as i32);
    fail_writes(&rig, "write_probe", true);
    health_becomes(&rig, ServingStatus::NotServing).await;
    fail_writes(&rig, "write_probe", false);
    health_becomes(&rig, ServingStatus::Serving).await;
}

async fn health_becomes(rig: &Rig, want: tonic_health::pb::health_check_response::ServingStatus) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while keybroker_health(rig).await != want as i32 {
        assert!(
            std::time::Instant::now() < deadline,
            "health never {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_calls_adds_a_bounded_number_of_records() {
    let mut rig = Rig::start(&["--refusal-records-per-minute", "50"]);
    let before = rig.store().records(0, 100_000).unwrap().len();
    // 20,001 GetOnlineSecret calls with client ids nobody issued, 20,000 of
    // them from 8 clients at once.
    let channel = tonic::transport::Endpoint::from_shared(rig.kbs.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // One call first, so that the client has the broker's HTTP/2 settings
    // (4 streams a connection) before 8 callers share the connection: a
    // stream opened beyond the limit before they arrive is refused, which
    // tonic reports as Unavailable.
    let e = KeyBrokerServiceClient::new(channel.clone())
        .get_online_secret(OnlineSecretRequest {
            client_id: uuid::Uuid::new_v4().to_string(),
            secret_requests: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut c = KeyBrokerServiceClient::new(channel.clone());
        calls.spawn(async move {
            for _ in 0..2500 {
                let e = c
                    .get_online_secret(OnlineSecretRequest {
                        client_id: uuid::Uuid::new_v4().to_string(),
                        secret_requests: vec![],
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::NotFound);
            }
        });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap();
    }
    let during = rig.store().records(0, 100_000).unwrap();
    assert_eq!(during.len() - before, 50, "one minute's share of that kind");
    // At shutdown, one summary says how many more there were.
    assert!(rig.kbs.terminate().success());
    let after = rig.store().records(0, 100_000).unwrap();
    assert_eq!(after.len() - before, 51);
    let summary = after.last().unwrap();
    assert_eq!(summary.rpc, "GetOnlineSecret");
    assert!(
        summary
            .reason
            .starts_with("client id unknown or expired (and 19951 more like it in "),
        "{summary:?}"
    );
}

#[tokio::test]
async fn refusals_carry_the_right_code_and_are_recorded() {
    let rig = Rig::start(&[]);
    // A digest nobody registered, honestly claimed.
    let other = [0x5a; 32];
    let e = rig
        .offline_launch(POLICY, &other, &other)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not registered"), "{e:?}");
    assert_eq!(last_refusal(&rig.store()), "launch digest not registered");
    // A launch of an unregistered digest that claims the registered one.
    let e = rig
        .offline_launch(POLICY, &other, &rig.digest)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        last_refusal(&rig.store()),
        "launch measurement does not verify"
    );
    // A policy that allows debugging.
    let e = rig.bundle(&rig.platform, 0x2).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(last_refusal(&rig.store()), "policy allows debugging");
    // SEV-ES policy: the digest is registered for SEV only.
    let e = rig
        .offline_launch(POLICY | 0x4, &rig.digest, &rig.digest)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A different policy in GetSecret than at GetBundle.
    let (id, mut launch) = rig.bundle(&rig.platform, POLICY).await.unwrap();
    let m = launch.measure(&rig.digest);
    let e = rig
        .client()
        .await
        .get_secret(rig.secret_request(&id, &m, 0x7, &rig.digest, vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A keyset that does not exist: refused without naming it.
    let e = rig.keyset_launch("NO-SUCH-KEYSET").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(!e.message().contains("NO-SUCH-KEYSET"));
}

#[tokio::test]
async fn a_forged_chain_is_refused() {
    let rig = Rig::start(&[]);
    // A host playing the PSP with its own self-made AMD roots.
    let forger = SimPlatform::new(&FakeAmdRoots::generate().unwrap()).unwrap();
    let e = rig.bundle(&forger, POLICY).await.map(|_| ()).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("trusted AMD root"), "{e:?}");
    // The real roots still work, and the log says the anchor is insecure.
    rig.bundle(&rig.platform, POLICY).await.unwrap();
    let _ = &rig.roots;
    assert!(rig.kbs.logged().iter().any(|l| l.contains("INSECURE")));
}

#[tokio::test]
async fn old_firmware_is_refused() {
    let rig = Rig::start(&["--min-fw-api", "1.56"]);
    let e = rig
        .offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("older than the minimum"), "{e:?}");
}

#[tokio::test]
async fn the_firmware_minimum_is_one_version() {
    // The simulated platform runs 1.55 build 21: newer than 1.51 build 30,
    // older than 1.55 build 22.
    let rig = Rig::start(&["--min-fw-api", "1.51", "--min-fw-build", "30"]);
    rig.offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap();
    let rig = Rig::start(&["--min-fw-api", "1.55", "--min-fw-build", "22"]);
    let e = rig
        .offline_launch(POLICY, &rig.digest, &rig.digest)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("older than the minimum 1.55 build 22"),
        "{e:?}"
    );
}

#[tokio::test]
async fn guest_policies_must_meet_the_requirement() {
    // POLICY is NODBG and NOKS.
    for (required, refusal) in [
        ("NODBG,ES", Some("lacks ES")),
        ("!NOKS", Some("has NOKS")),
        ("NODBG,NOKS,!DOMAIN,!SEV", None),
    ] {
        let rig = Rig::start(&["--require-policy", required]);
        let r = rig.offline_launch(POLICY, &rig.digest, &rig.digest).await;
        match refusal {
            None => {
                r.unwrap();
            }
            Some(what) => {
                let e = r.unwrap_err();
                assert_eq!(e.code(), Code::PermissionDenied, "{required}: {e:?}");
                assert!(e.message().contains(what), "{required}: {e:?}");
                assert!(e.message().contains("--require-policy"), "{e:?}");
                assert_eq!(
                    last_refusal(&rig.store()),
                    "policy does not meet --require-policy"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_launch_id_is_single_use_and_expires() {
    let rig = Rig::start(&["--session-ttl", "1"]);
    let (id, mut launch) = rig.bundle(&rig.platform, POLICY).await.unwrap();
    let m = launch.measure(&rig.digest);
    let req = rig.secret_request(
        &id,
        &m,
        POLICY,
        &rig.digest,
        vec![bundle_request("KEYSET-1")],
    );
    rig.client().await.get_secret(req.clone()).await.unwrap();
    let e = rig.client().await.get_secret(req).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(last_refusal(&rig.store()), "launch id replayed");

    let (id, mut launch) = rig.bundle(&rig.platform, POLICY).await.unwrap();
    let m = launch.measure(&rig.digest);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let e = rig
        .client()
        .await
        .get_secret(rig.secret_request(&id, &m, POLICY, &rig.digest, vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(last_refusal(&rig.store()), "launch id expired");
}

#[tokio::test]
async fn a_launch_in_flight_survives_a_broker_crash() {
    let mut rig = Rig::start(&[]);
    let (id, mut launch) = rig.bundle(&rig.platform, POLICY).await.unwrap();
    let m = launch.measure(&rig.digest);
    rig.kbs = rig.kbs.crash_and_restart();
    let r = rig
        .client()
        .await
        .get_secret(rig.secret_request(
            &id,
            &m,
            POLICY,
            &rig.digest,
            vec![bundle_request("KEYSET-1")],
        ))
        .await
        .unwrap()
        .into_inner();
    let table = launch
        .inject_secret(
            &unb64(&r.launch_secret_header),
            &unb64(&r.launch_secret_data),
        )
        .unwrap();
    assert_eq!(sev_sim::efi_secret::parse_table(&table).unwrap().len(), 2);
}

#[tokio::test]
async fn malformed_fields_get_invalid_argument_naming_the_field() {
    let rig = Rig::start(&[]);
    let mut c = rig.client().await;
    let e = c
        .get_bundle(BundleRequest {
            certificate_chain: "@@@".into(),
            policy: POLICY,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("CertificateChain")),
        (Code::InvalidArgument, true),
        "{e:?}"
    );
    let e = c
        .get_bundle(BundleRequest {
            certificate_chain: b64(b"short"),
            policy: POLICY,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("CertificateChain")),
        (Code::InvalidArgument, true),
        "{e:?}"
    );
    let e = c
        .get_bundle(BundleRequest {
            certificate_chain: b64(&rig.platform.cert_chain()),
            policy: 0x43,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("Policy")),
        (Code::InvalidArgument, true),
        "{e:?}"
    );

    let (id, mut launch) = rig.bundle(&rig.platform, POLICY).await.unwrap();
    let m = launch.measure(&rig.digest);
    let good = rig.secret_request(
        &id,
        &m,
        POLICY,
        &rig.digest,
        vec![bundle_request("KEYSET-1")],
    );
    type Edit = Box<dyn Fn(&mut SecretRequest)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("LaunchId", Box::new(|r| r.launch_id = "not-a-uuid".into())),
        (
            "LaunchMeasurement",
            Box::new(|r| r.launch_measurement = "%%%".into()),
        ),
        (
            "LaunchMeasurement",
            Box::new(|r| r.launch_measurement = b64(&[0; 47])),
        ),
        ("FwDigest", Box::new(|r| r.fw_digest = b64(&[0; 48]))),
        ("ApiMajor", Box::new(|r| r.api_major = 256)),
        ("BuildId", Box::new(|r| r.build_id = u32::MAX)),
        (
            "SecretRequests.Guid",
            Box::new(|r| r.secret_requests[0].guid = "e6f5a162".into()),
        ),
        (
            "SecretRequests.SecretType",
            Box::new(|r| r.secret_requests[0].secret_type = "everything".into()),
        ),
        (
            "SecretRequests.Format",
            Box::new(|r| r.secret_requests[0].format = "xml".into()),
        ),
    ];
    for (field, edit) in cases {
        let mut r = good.clone();
        edit(&mut r);
        let e = c.get_secret(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }
    // Malformed requests did not consume the launch.
    c.get_secret(good).await.unwrap();
    let mut unknown = rig.secret_request(
        &uuid::Uuid::new_v4().to_string(),
        &m,
        POLICY,
        &rig.digest,
        vec![],
    );
    unknown.launch_description = "x".repeat(10_000);
    assert_eq!(
        c.get_secret(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let e = c
        .get_online_secret(OnlineSecretRequest {
            client_id: "nope".into(),
            secret_requests: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("ClientId")),
        (Code::InvalidArgument, true)
    );
}
