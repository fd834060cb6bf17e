//! Replicas of the real `kbs` binary on one real PostgreSQL database, behind a
//! round-robin TCP proxy as a Kubernetes Service puts them: the Kata shim's
//! GetBundle and GetSecret of one launch land on different replicas, a burst
//! of GetSecret for one launch across both releases once, and a replica
//! killed mid-load loses no acknowledged registration and no launch whose
//! GetBundle completed. Needs the test PostgreSQL server (`scripts/test`
//! starts it); without it these tests say so and pass, except under CI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine as _;
use kbs::store::{AtRestKey, DigestRecord, KeysetMembers, Origin, PgOptions, Store};
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::SecretRequest;
use sev_sim::kbs_process::KbsProcess;
use sev_sim::shim::{self, ShimError, ShimLaunch};
use sev_sim::{FakeAmdRoots, SimLaunch, SimPlatform};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tonic::Code;

const BUNDLE_GUID: &str = "e6f5a162-d67f-4750-a67c-5d065f2a9910";
/// NODBG | NOKS.
const POLICY: u32 = 0x3;
const CMDLINE: &str = "console=hvc0 quiet panic=1 nr_cpus=1 selinux=0";

/// A round-robin TCP proxy: each new connection goes to the next backend
/// that accepts it (a dead one is skipped, as a Service drops an unready
/// endpoint), and which one it went to is kept.
struct Proxy {
    addr: SocketAddr,
    routed: Arc<Mutex<Vec<usize>>>,
}

impl Proxy {
    async fn start(backends: Vec<SocketAddr>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routed = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let log = Arc::clone(&routed);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let first = next.fetch_add(1, Ordering::SeqCst);
                let backends = backends.clone();
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    for k in 0..backends.len() {
                        let i = (first + k) % backends.len();
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(backends[i]).await
                        {
                            log.lock().unwrap().push(i);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Proxy { addr, routed }
    }

    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn routed(&self) -> Vec<usize> {
        self.routed.lock().unwrap().clone()
    }
}

/// Two replicas on one fresh PostgreSQL database, with a registered digest
/// and a keyset, and the simulated platform whose launches they serve.
struct Fleet {
    dir: tempfile::TempDir,
    options: PgOptions,
    key: [u8; 32],
    platform: SimPlatform,
    digest: [u8; 32],
    sample: sample_artefacts::Sample,
}

impl Fleet {
    /// The fleet and its two running replicas.
    fn start(test: &str) -> Option<(Fleet, Vec<KbsProcess>)> {
        let fleet = Fleet::prepare(test)?;
        fleet.seed(&fleet.store());
        let replicas = (0..2).map(|i| fleet.start_replica(i)).collect();
        Some((fleet, replicas))
    }

    /// The fleet's files and its fresh database, holding nothing yet.
    fn prepare(test: &str) -> Option<Fleet> {
        let options = kbs::store::testing::fresh_postgres(test)?;
        let dir = tempfile::tempdir().unwrap();
        let sample = sample_artefacts::write_sample(&dir.path().join("kata")).unwrap();
        let digest: [u8; 32] = sev_sim::launch_digest_sev(
            &sample.firmware,
            &sample.kernel,
            Some(&sample.initrd),
            CMDLINE,
        )
        .unwrap();
        let roots = FakeAmdRoots::generate().unwrap();
        let platform = SimPlatform::new(&roots).unwrap();
        std::fs::write(dir.path().join("ark.cert"), roots.ark_cert()).unwrap();
        let key_bytes = [0x5a; 32];
        write_private(&dir.path().join("at-rest.key"), &hex::encode(key_bytes));
        if let Some(p) = &options.password {
            write_private(&dir.path().join("db-password"), p);
        }
        Some(Fleet {
            dir,
            options,
            key: key_bytes,
            platform,
            digest,
            sample,
        })
    }

    /// Registers the sample's digest and a keyset of one secret in `store`.
    fn seed(&self, store: &Store) {
        store
            .replace_digests(
                "launch-host",
                "kata-qemu-sev",
                &[(
                    self.digest.to_vec(),
                    DigestRecord {
                        mode: "sev".into(),
                        digest: kbs::store::hex(&self.digest),
                        vcpus: 1,
                        vcpu_type: "host".into(),
                        config: "sample".into(),
                    },
                )],
                Origin::Operator,
                &[],
            )
            .unwrap();
        store.set_secret("key-a", b"image key A").unwrap();
        store
            .set_keyset_members(
                "KEYSET-1",
                &KeysetMembers {
                    secrets: vec!["key-a".into()],
                    resources: vec![],
                },
            )
            .unwrap();
    }

    /// The options that put a kbs on the fleet's database, under its key.
    fn database_args(&self) -> Vec<OsString> {
        let d = self.dir.path();
        let mut args: Vec<OsString> = vec![
            "--database".into(),
            self.options.url.clone().into(),
            "--at-rest-key-file".into(),
            d.join("at-rest.key").into(),
        ];
        if self.options.password.is_some() {
            args.extend([
                "--database-password-file".into(),
                d.join("db-password").into(),
            ]);
        }
        if let Some(ca) = &self.options.ca_file {
            args.extend(["--database-ca".into(), ca.clone().into()]);
        }
        args
    }

    fn start_replica(&self, i: usize) -> KbsProcess {
        let d = self.dir.path();
        let mut args = self.database_args();
        args.extend(["--admin-listen".into(), "127.0.0.1:0".into()]);
        KbsProcess::start_with(
            Path::new(env!("CARGO_BIN_EXE_kbs")),
            &d.join(format!("replica-{i}")),
            &d.join(format!("admin-{i}.sock")),
            &d.join("ark.cert"),
            &args,
        )
        .unwrap()
    }

    fn addrs(replicas: &[KbsProcess]) -> Vec<SocketAddr> {
        replicas.iter().map(|r| r.addr.parse().unwrap()).collect()
    }

    fn store(&self) -> Store {
        Store::open_postgres(&self.options, AtRestKey::parse(&self.key).unwrap()).unwrap()
    }

    /// GetBundle through `uri` (a new connection, as the shim makes) and
    /// LAUNCH_START on the simulated PSP.
    async fn bundle(&self, uri: &str) -> Result<(String, SimLaunch), ShimError> {
        let b = shim::get_bundle(uri, &self.platform.cert_chain(), POLICY).await?;
        let launch = self.platform.launch_start(&b.godh, &b.blob, POLICY)?;
        Ok((b.launch_id, launch))
    }

    /// The shim's GetSecret for the keyset's bundle.
    fn secret_request(&self, launch_id: &str, measurement: &[u8; 48]) -> SecretRequest {
        let launch = ShimLaunch::offline(String::new(), POLICY, self.digest, "KEYSET-1");
        shim::secret_request(&self.platform, &launch, launch_id, measurement)
    }

    /// GetSecret through `uri`; the secret table the guest would see.
    async fn secret(
        &self,
        uri: &str,
        id: &str,
        launch: &mut SimLaunch,
    ) -> Result<Vec<u8>, ShimError> {
        let m = launch.measure(&self.digest);
        let packet = shim::get_secret(uri, self.secret_request(id, &m)).await?;
        Ok(launch.inject_secret(&packet.header, &packet.data).unwrap())
    }
}

/// `kbs admin ARGS...` against `kbs`, which must succeed; its output.
fn admin(kbs: &KbsProcess, args: &[&str]) -> String {
    kbs.admin_ok(args).unwrap()
}

/// Approves the sample's inputs, alternating between the replicas.
fn approve_sample(replicas: &[KbsProcess], s: &sample_artefacts::Sample) {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let socket = |i: usize| &replicas[i % replicas.len()];
    admin(socket(0), &["approve", "firmware", &path(&s.firmware)]);
    admin(socket(1), &["approve", "kernel", &path(&s.kernel)]);
    admin(socket(0), &["approve", "initrd", &path(&s.initrd)]);
    admin(
        socket(1),
        &[
            "approve",
            "kata-config",
            &path(&s.config),
            "--runtime-class",
            "kata-qemu-sev",
            "--pod-cpus",
            "0-2",
        ],
    );
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    writeln!(f, "{text}").unwrap();
}

fn holds_key_a(table: &[u8]) -> bool {
    let entries = sev_sim::efi_secret::parse_table(table).unwrap();
    entries.first().is_some_and(|(guid, value)| {
        guid == BUNDLE_GUID
            && serde_json::from_slice::<serde_json::Value>(value)
                .ok()
                .and_then(|v| v["key-a"].as_str().map(str::to_owned))
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                .is_some_and(|k| k == b"image key A")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_launch_begun_on_one_replica_is_finished_on_the_other() {
    let Some((fleet, replicas)) = Fleet::start("launch_across_replicas") else {
        return;
    };
    let proxy = Proxy::start(Fleet::addrs(&replicas)).await;
    for _ in 0..6 {
        let (id, mut launch) = fleet.bundle(&proxy.uri()).await.unwrap();
        let table = fleet.secret(&proxy.uri(), &id, &mut launch).await.unwrap();
        assert!(holds_key_a(&table));
        let routed = proxy.routed();
        let [.., bundle, secret] = routed.as_slice() else {
            panic!("{routed:?}")
        };
        assert_ne!(bundle, secret, "GetBundle and GetSecret on one replica");
        // Replayed, on either replica: refused.
        for r in &replicas {
            let e = fleet.secret(&r.uri(), &id, &mut launch).await.unwrap_err();
            assert_eq!(
                e.status().map(tonic::Status::code),
                Some(Code::NotFound),
                "{e:?}"
            );
        }
    }
    let records = fleet.store().records(0, 1000).unwrap();
    let released = records
        .iter()
        .filter(|r| r.rpc == "GetSecret" && r.outcome == "ok")
        .count();
    assert_eq!(
        released, 6,
        "every release recorded once, whichever replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_get_secrets_of_one_launch_across_replicas_release_once() {
    let Some((fleet, replicas)) = Fleet::start("get_secret_once") else {
        return;
    };
    let proxy = Proxy::start(Fleet::addrs(&replicas)).await;
    let fleet = Arc::new(fleet);
    for _ in 0..3 {
        let (id, mut launch) = fleet.bundle(&proxy.uri()).await.unwrap();
        let m = launch.measure(&fleet.digest);
        let before = proxy.routed().len();
        let attempts: Vec<_> = (0..32)
            .map(|_| {
                let request = fleet.secret_request(&id, &m);
                let uri = proxy.uri();
                tokio::spawn(async move {
                    KeyBrokerServiceClient::connect(uri)
                        .await
                        .unwrap()
                        .get_secret(request)
                        .await
                })
            })
            .collect();
        let mut released = 0;
        for a in attempts {
            match a.await.unwrap() {
                Ok(_) => released += 1,
                Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
            }
        }
        assert_eq!(released, 1);
        let routed = proxy.routed();
        let to = &routed[before..];
        assert!(to.contains(&0) && to.contains(&1), "{to:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_load_loses_nothing_acknowledged() {
    let Some((fleet, mut replicas)) = Fleet::start("killed_mid_load") else {
        return;
    };
    let proxy = Proxy::start(Fleet::addrs(&replicas)).await;
    let proxy_uri = proxy.uri();
    // Nodes register through the approved-inputs flow, each through one of
    // the two replicas' admin listeners.
    approve_sample(&replicas, &fleet.sample);
    const NODES: usize = 24;
    let tokens: Vec<String> = (0..NODES)
        .map(|n| {
            admin(
                &replicas[n % 2],
                &["token", "create", "--node", &format!("node-{n}")],
            )
            .trim()
            .to_string()
        })
        .collect();
    let registration = sample_registration(&fleet.sample);
    let admin_addrs: Vec<String> = replicas
        .iter()
        .map(|r| r.admin_addr.clone().unwrap())
        .collect();

    // Four clients at once, each a node registering and a launch's
    // GetBundle; replica 0 is killed (SIGKILL) once a third of them are done.
    // What completed is kept: launches past GetBundle, acknowledged
    // registrations.
    let bundled = Arc::new(Mutex::new(Vec::new()));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let fleet = Arc::new(fleet);
    let proxy = Arc::new(proxy);
    let tokens = Arc::new(tokens);
    let admin_addrs = Arc::new(admin_addrs);
    let registration = Arc::new(registration);
    let victim = replicas[0].pid();
    let killer = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < NODES / 3 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &victim.to_string()])
                .status();
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (fleet, proxy, tokens, admin_addrs, registration) = (
                Arc::clone(&fleet),
                Arc::clone(&proxy),
                Arc::clone(&tokens),
                Arc::clone(&admin_addrs),
                Arc::clone(&registration),
            );
            let (bundled, acknowledged, done) = (
                Arc::clone(&bundled),
                Arc::clone(&acknowledged),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                for n in (c..NODES).step_by(4) {
                    if let Ok(b) = fleet.bundle(&proxy.uri()).await {
                        bundled.lock().unwrap().push(b);
                    }
                    let addr = &admin_addrs[n % 2];
                    if let Ok(mut node) = kbs::admin_cli::connect_tcp(
                        &format!("http://{addr}"),
                        &tokens[n],
                        None,
                        std::time::Duration::from_secs(5),
                    )
                    .await
                    {
                        let request = kbs_proto::kbsadmin::RegisterLaunchesRequest {
                            node: String::new(),
                            inputs: registration.inputs.clone(),
                            launches: registration.launches.clone(),
                            platform: registration.platform.clone(),
                        };
                        if node.register_launches(request).await.is_ok() {
                            acknowledged.lock().unwrap().push(format!("node-{n}"));
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    killer.await.unwrap();
    let bundled = std::mem::take(&mut *bundled.lock().unwrap());
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let Ok(fleet) = Arc::try_unwrap(fleet) else {
        panic!("the fleet is still shared")
    };
    assert!(acknowledged.len() >= NODES / 3, "{acknowledged:?}");
    assert!(bundled.len() >= NODES / 3, "{}", bundled.len());
    // Every launch whose GetBundle completed, on whichever replica, is
    // finished by the survivor.
    for (id, mut launch) in bundled {
        let table = fleet.secret(&proxy_uri, &id, &mut launch).await.unwrap();
        assert!(holds_key_a(&table));
    }
    // Every acknowledged registration is there, as the survivor and a fresh
    // replica see it.
    replicas[0] = fleet.start_replica(0);
    let digests = fleet.store().list_digests().unwrap();
    for node in &acknowledged {
        let n = digests.iter().filter(|(d, ..)| d == node).count();
        assert_eq!(n, registration.digests.len(), "{node}");
    }
    let mut op =
        kbs::admin_cli::connect_unix(&replicas[0].socket, std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let listed = op
        .list_digests(kbs_proto::kbsadmin::ListDigestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .digests;
    for node in &acknowledged {
        assert!(listed.iter().any(|d| &d.node == node), "{node}");
    }
}

/// What the host agent sends for the sample configuration on an SEV host.
fn sample_registration(
    sample: &sample_artefacts::Sample,
) -> host_agent::agent::inputs::ClassRegistration {
    use host_agent::agent::derive::{derive_file, Derived, HostFacts};
    let host = HostFacts {
        host_sig: Some(sev_core::VcpuSignature(0x00a0_0f11)),
        fips: false,
        host_cpus: Some(2),
        ..HostFacts::for_kernel(None, None)
    };
    let (_, derived) = derive_file(
        &sample.config,
        &host_agent::agent::config::AgentConfig::default(),
        &host,
        &mut host_agent::agent::cache::ArtefactCache::new(),
    )
    .unwrap();
    let Derived::Launches(c) = derived else {
        panic!("the sample is an SEV launch: {derived:?}")
    };
    host_agent::agent::inputs::registration_of(&c, &host, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_or_revoked_through_one_replica_counts_on_the_other_at_once() {
    let Some((_fleet, replicas)) = Fleet::start("tokens_across_replicas") else {
        return;
    };
    let admin = |args: &[&str]| admin(&replicas[0], args);
    let token = admin(&["token", "create", "--node", "node-7"])
        .trim()
        .to_string();
    let other = replicas[1].admin_addr.clone().unwrap();
    let whoami = || async {
        let mut c = kbs::admin_cli::connect_tcp(
            &format!("http://{other}"),
            &token,
            None,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        c.who_am_i(kbs_proto::kbsadmin::WhoAmIRequest {}).await
    };
    let me = whoami().await.unwrap().into_inner();
    assert!(format!("{me:?}").contains("node-7"), "{me:?}");
    let id = admin(&["token", "list"])
        .lines()
        .find(|l| l.contains("node-7"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    admin(&["token", "revoke", &id]);
    let e = whoami().await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_revoked_through_one_replica_is_refused_by_the_other() {
    let Some((fleet, replicas)) = Fleet::start("firmware_revoked_across_replicas") else {
        return;
    };
    approve_sample(&replicas, &fleet.sample);
    let admin = |args: &[&str]| admin(&replicas[0], args);
    let token = admin(&["token", "create", "--node", "node-f"])
        .trim()
        .to_string();
    let registration = sample_registration(&fleet.sample);
    let register = || async {
        kbs::admin_cli::connect_tcp(
            &format!("http://{}", replicas[1].admin_addr.clone().unwrap()),
            &token,
            None,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap()
        .register_launches(kbs_proto::kbsadmin::RegisterLaunchesRequest {
            node: String::new(),
            inputs: registration.inputs.clone(),
            launches: registration.launches.clone(),
            platform: registration.platform.clone(),
        })
        .await
    };
    // Through replica 1, which now holds the parsed firmware.
    register().await.unwrap();
    let firmware = registration
        .inputs
        .as_ref()
        .unwrap()
        .firmware_sha256
        .clone();
    admin(&["revoke", "firmware", &firmware]);
    let e = register().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&firmware), "{e:?}");
    assert!(fleet
        .store()
        .list_digests()
        .unwrap()
        .iter()
        .all(|(node, ..)| node != "node-f"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_broker_moved_by_import_embedded_finishes_its_launch_on_the_replicas() {
    let Some(fleet) = Fleet::prepare("import_embedded_cli") else {
        return;
    };
    let d = fleet.dir.path();
    let bin = Path::new(env!("CARGO_BIN_EXE_kbs"));
    let single = d.join("single");
    std::fs::create_dir_all(&single).unwrap();
    fleet.seed(&Store::open_with_key(&single, AtRestKey::parse(&fleet.key).unwrap()).unwrap());
    let mut broker = KbsProcess::start_with(
        bin,
        &single,
        &d.join("single.sock"),
        &d.join("ark.cert"),
        &["--at-rest-key-file".into(), d.join("at-rest.key").into()],
    )
    .unwrap();
    admin(&broker, &["token", "create", "--node", "node-7"]);
    // A launch in flight across the move: GetBundle on the single broker.
    let (id, mut launch) = fleet.bundle(&broker.uri()).await.unwrap();

    let import = || {
        std::process::Command::new(bin)
            .arg("import-embedded")
            .arg("--data-dir")
            .arg(&single)
            .args(fleet.database_args())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // While the broker runs, its directory is locked and nothing is copied.
    let out = import();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another kbs"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fleet.store().count_records().unwrap(), 0);

    broker.kill();
    let out = import();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("copied ") && printed.contains("sessions"),
        "{printed}"
    );
    assert!(printed.contains("marked as moved"), "{printed}");
    // The old broker does not come back on the copied state (a launch's
    // session could be used once there and once on the replicas), and a
    // second run copies nothing.
    let restarted = std::process::Command::new(bin)
        .arg("--data-dir")
        .arg(&single)
        .args([
            "--at-rest-key-file".as_ref(),
            d.join("at-rest.key").as_os_str(),
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "none",
            "--admin-socket",
        ])
        .arg(d.join("again.sock"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!restarted.status.success());
    assert!(
        stderr(&restarted).contains("moved into"),
        "{}",
        stderr(&restarted)
    );
    let out = import();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("moved into"), "{}", stderr(&out));

    let replicas: Vec<KbsProcess> = (0..2).map(|i| fleet.start_replica(i)).collect();
    let table = fleet
        .secret(&replicas[1].uri(), &id, &mut launch)
        .await
        .unwrap();
    assert!(
        holds_key_a(&table),
        "the launch begun before the move gets its secret"
    );
    let e = fleet
        .secret(&replicas[0].uri(), &id, &mut launch)
        .await
        .unwrap_err();
    assert_eq!(
        e.status().map(tonic::Status::code),
        Some(Code::NotFound),
        "{e:?}"
    );
    assert!(admin(&replicas[0], &["token", "list"]).contains("node-7"));
    let records = fleet.store().records(0, 100).unwrap();
    let of_launch: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r.launch_id == id)
        .map(|r| (r.rpc.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        of_launch,
        [
            ("GetBundle", "ok"),
            ("GetSecret", "ok"),
            ("GetSecret", "refused")
        ],
        "in id order: ids go on after the moved ones"
    );
}
