//! The broker as the single writer of a real Trustee's SNP reference values:
//! a real `kbs` process of ours, a real Trustee v0.21.0 (its KBS with the
//! built-in RVPS, or a standalone RVPS over gRPC), and what Trustee holds read
//! back through Trustee's own `kbs-client` and `rvps-tool`, not through the
//! broker's client code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use kbs_proto::kbsadmin::{
    Digest, LaunchInputs, NodeLaunch, PlatformTcb, RegisterLaunchesRequest, ReplaceDigestsRequest,
};
use serde_json::{json, Value};
use sev_sim::kbs_process::{kbs_beside_current_exe, KbsProcess};
use sev_sim::trustee_process::{AdminKey, TrusteeBinaries, TrusteeOptions, TrusteeProcess};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MEASUREMENT: &str = "snp_launch_measurement";
const CLASS: &str = "kata-qemu-snp";

/// The Trustee binaries, or `None` when a run may go without them.
fn binaries() -> Option<TrusteeBinaries> {
    match TrusteeBinaries::find_for_tests() {
        Ok(Some(b)) => Some(b),
        Ok(None) => {
            eprintln!("skipped: Trustee is not built and TRUSTEE_OPTIONAL=1");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Our broker beside a Trustee.
struct Rig {
    dir: tempfile::TempDir,
    ark: PathBuf,
    kbs: Option<KbsProcess>,
    trustee: TrusteeProcess,
}

impl Rig {
    fn new(opts: TrusteeOptions) -> Option<Rig> {
        binaries()?;
        let dir = tempfile::tempdir().unwrap();
        let roots = sev_sim::FakeAmdRoots::generate().unwrap();
        let ark = dir.path().join("ark.cert");
        std::fs::write(&ark, roots.ark_cert()).unwrap();
        let trustee = TrusteeProcess::start(opts).unwrap();
        Some(Rig {
            dir,
            ark,
            kbs: None,
            trustee,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The arguments that make our broker write to the rig's Trustee KBS.
    fn trustee_args(&self, key: &Path) -> Vec<OsString> {
        vec![
            "--trustee-url".into(),
            self.trustee.url().into(),
            "--trustee-admin-key".into(),
            key.into(),
            "--trustee-admin-issuer".into(),
            self.trustee.issuer().into(),
            "--trustee-reconcile-seconds".into(),
            "1".into(),
        ]
    }

    fn start_kbs(&mut self, registration: &str, extra: Vec<OsString>) {
        self.kbs = None;
        let mut args: Vec<OsString> = vec!["--registration".into(), registration.into()];
        args.extend(extra);
        self.kbs = Some(
            KbsProcess::start_with(
                &kbs_beside_current_exe().unwrap(),
                &self.dir.path().join("data"),
                &self.socket(),
                &self.ark,
                &args,
            )
            .unwrap(),
        );
    }

    async fn admin(&self) -> kbs_proto::admin_client::Client {
        kbs_proto::admin_client::connect_unix(&self.socket(), Duration::from_secs(5))
            .await
            .unwrap()
    }

    /// A node's SNP registration, as the host agent sends it (open
    /// registration: the broker takes the node's digests as they are).
    async fn register(&self, node: &str, digests: &[String], tcb: Option<[u32; 4]>) {
        let launches = digests
            .iter()
            .enumerate()
            .map(|(i, d)| NodeLaunch {
                pod_cpus: u32::try_from(i).unwrap(),
                digest: Some(Digest {
                    mode: "snp".into(),
                    digest: hex::decode(d).unwrap(),
                    vcpus: u32::try_from(i).unwrap() + 1,
                    vcpu_type: "EPYC-v4".into(),
                    config: format!("{node} test launch {i}"),
                }),
                ..NodeLaunch::default()
            })
            .collect();
        self.admin()
            .await
            .register_launches(RegisterLaunchesRequest {
                node: node.into(),
                inputs: Some(LaunchInputs {
                    runtime_class: CLASS.into(),
                    ..LaunchInputs::default()
                }),
                launches,
                platform: tcb.map(|[bootloader, tee, snp, microcode]| PlatformTcb {
                    bootloader,
                    tee,
                    snp,
                    microcode,
                    product: "Milan".into(),
                }),
            })
            .await
            .unwrap();
    }

    /// Removes a node's class, as its agent does when the configuration goes.
    async fn remove(&self, node: &str) {
        self.admin()
            .await
            .replace_digests(ReplaceDigestsRequest {
                node: node.into(),
                runtime_class: CLASS.into(),
                digests: Vec::new(),
            })
            .await
            .unwrap();
    }

    /// `kbs admin trustee status --json`.
    fn status(&self) -> Value {
        let kbs = self.kbs.as_ref().expect("the broker runs");
        let out = kbs.admin_ok(&["--json", "trustee", "status"]).unwrap();
        serde_json::from_str(&out).unwrap()
    }

    fn log(&self) -> String {
        self.kbs
            .as_ref()
            .map(|k| k.log.try_iter().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

fn m(byte: u8) -> String {
    hex::encode([byte; 48])
}

/// A list compared as a set.
fn sorted(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.to_string().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Polls `read` until it returns a list equal (as a set) to `want`.
fn wait_for(what: &str, want: &Value, read: impl Fn() -> Option<Value>) -> Duration {
    let started = Instant::now();
    loop {
        let held = read();
        if held.as_ref().map(sorted) == Some(sorted(want)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: want {want}, Trustee holds {held:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn held_by(trustee: &TrusteeProcess, name: &str) -> Option<Value> {
    trustee.get_reference_value(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trustee_holds_the_union_of_the_fleet_and_follows_it() {
    let Some(mut rig) = Rig::new(TrusteeOptions::default()) else {
        return;
    };
    let key = rig.trustee.admin_key_path().to_path_buf();
    rig.start_kbs("open", rig.trustee_args(&key));

    // Two nodes register SNP digests and TCBs: Trustee holds their union.
    rig.register("node-a", &[m(0xa1), m(0xa2)], Some([3, 0, 8, 209]))
        .await;
    rig.register("node-b", &[m(0xb1)], Some([4, 0, 8, 213]))
        .await;
    let t = &rig.trustee;
    wait_for("the union", &json!([m(0xa1), m(0xa2), m(0xb1)]), || {
        held_by(t, MEASUREMENT)
    });
    wait_for("boot loaders", &json!([3, 4]), || {
        held_by(t, "snp_bootloader")
    });
    wait_for("microcode", &json!([209, 213]), || {
        held_by(t, "snp_microcode")
    });
    wait_for("SNP SVN", &json!([8]), || held_by(t, "snp_snp_svn"));
    wait_for("TEE SVN", &json!([0]), || held_by(t, "snp_tee_svn"));

    // A node's class removed: the union shrinks, its TCB with it.
    rig.remove("node-a").await;
    wait_for("node-b alone", &json!([m(0xb1)]), || {
        held_by(t, MEASUREMENT)
    });
    wait_for("node-b's boot loader", &json!([4]), || {
        held_by(t, "snp_bootloader")
    });

    // Overwritten by hand (another writer): corrected within the reconcile
    // period (1 s here).
    t.set_reference_values(&json!({ MEASUREMENT: [m(0xee)] }))
        .unwrap();
    wait_for("the correction", &json!([m(0xb1)]), || {
        held_by(t, MEASUREMENT)
    });

    // The status says what Trustee holds, and what it does not know.
    let s = rig.status();
    let i = &s["instances"][0];
    assert_eq!(i["reachable"], true, "{s}");
    assert!(i["writes"].as_u64().unwrap() >= 3, "{s}");
    let names: Vec<&str> = i["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "{s}");
    let measurement = i["names"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == MEASUREMENT)
        .unwrap();
    assert_eq!(sorted(&measurement["held"]), sorted(&json!([m(0xb1)])));
    // Trustee v0.21 does not let an admin read its resource policy: the
    // broker says it cannot tell, and warns.
    assert!(i["policy"].as_str().unwrap().starts_with("unknown"), "{s}");
    assert!(rig.log().contains("affirming verdict"), "{}", rig.log());
    assert_eq!(s["reported"].as_array().unwrap().len(), 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trustee_restarted_empty_or_down_for_a_while_gets_the_values_back() {
    let Some(mut rig) = Rig::new(TrusteeOptions::default()) else {
        return;
    };
    let key = rig.trustee.admin_key_path().to_path_buf();
    rig.start_kbs("open", rig.trustee_args(&key));
    rig.register("node-a", &[m(0x01)], Some([3, 0, 8, 209]))
        .await;
    wait_for("the first value", &json!([m(0x01)]), || {
        held_by(&rig.trustee, MEASUREMENT)
    });

    // Restarted on empty storage: back within the reconcile period.
    rig.trustee.restart_empty().unwrap();
    wait_for(
        "the values after an empty restart",
        &json!([m(0x01)]),
        || held_by(&rig.trustee, MEASUREMENT),
    );

    // Down while a node registers: caught up once it is back.
    rig.trustee.stop();
    rig.register("node-b", &[m(0x02)], None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = rig.status();
    assert!(
        !s["instances"][0]["last_error"].is_null(),
        "a failure shows while Trustee is down: {s}"
    );
    rig.trustee.restart().unwrap();
    wait_for("the catch-up", &json!([m(0x01), m(0x02)]), || {
        held_by(&rig.trustee, MEASUREMENT)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_admin_key_is_a_clear_error_and_nothing_is_written() {
    let Some(mut rig) = Rig::new(TrusteeOptions::default()) else {
        return;
    };
    let other = AdminKey::generate(&rig.dir.path().join("other-key")).unwrap();
    rig.start_kbs("open", rig.trustee_args(other.private_key_path()));
    rig.register("node-a", &[m(0x01)], None).await;
    let started = Instant::now();
    let error = loop {
        let s = rig.status();
        if let Some(e) = s["instances"][0]["last_error"].as_str() {
            break e.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        error.contains("refused the broker's admin token"),
        "{error}"
    );
    assert!(error.contains("--trustee-admin-key"), "{error}");
    assert_eq!(held_by(&rig.trustee, MEASUREMENT), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_approved_registration_tcb_values_come_from_the_pins() {
    let Some(mut rig) = Rig::new(TrusteeOptions::default()) else {
        return;
    };
    let key = rig.trustee.admin_key_path().to_path_buf();
    rig.start_kbs("approved", rig.trustee_args(&key));
    // An operator's SNP digest counts in every mode.
    rig.admin()
        .await
        .replace_digests(ReplaceDigestsRequest {
            node: "node-a".into(),
            runtime_class: CLASS.into(),
            digests: vec![Digest {
                mode: "snp".into(),
                digest: [0x0c; 48].to_vec(),
                vcpus: 1,
                vcpu_type: "EPYC-v4".into(),
                config: "operator".into(),
            }],
        })
        .await
        .unwrap();
    let t = &rig.trustee;
    wait_for("the operator's digest", &json!([m(0x0c)]), || {
        held_by(t, MEASUREMENT)
    });
    // No pins: no TCB value is affirmed.
    wait_for("no boot loader", &json!([]), || {
        held_by(t, "snp_bootloader")
    });

    let kbs = rig.kbs.as_ref().expect("the broker runs");
    kbs.admin_ok(&["trustee", "tcb", "set", "--snp", "250", "--bootloader", "9"])
        .unwrap();
    wait_for(
        "the pinned minimum",
        &json!([250, 251, 252, 253, 254, 255]),
        || held_by(t, "snp_snp_svn"),
    );
    let bootloader = held_by(t, "snp_bootloader").unwrap();
    assert_eq!(bootloader.as_array().unwrap().len(), 247);
    wait_for("no microcode", &json!([]), || held_by(t, "snp_microcode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_rvps_and_another_trustee_are_written_alike() {
    let Some(mut rig) = Rig::new(TrusteeOptions::grpc()) else {
        return;
    };
    // A second Trustee, with its built-in RVPS, written through its KBS.
    let other = TrusteeProcess::start(TrusteeOptions::default()).unwrap();
    let addr = rig.trustee.rvps_addr().unwrap();
    rig.start_kbs(
        "open",
        vec![
            "--trustee-rvps".into(),
            addr.clone().into(),
            "--trustee-url".into(),
            other.url().into(),
            "--trustee-admin-key".into(),
            other.admin_key_path().into(),
            "--trustee-admin-issuer".into(),
            other.issuer().into(),
            "--trustee-reconcile-seconds".into(),
            "1".into(),
        ],
    );
    rig.register("node-a", &[m(0x0a), m(0x0b)], Some([3, 0, 8, 209]))
        .await;
    let t = &rig.trustee;
    wait_for("the values in the RVPS", &json!([m(0x0a), m(0x0b)]), || {
        t.rvps_query(MEASUREMENT).unwrap()
    });
    // The KBS in front of the RVPS sees them too.
    wait_for(
        "the values through the KBS",
        &json!([m(0x0a), m(0x0b)]),
        || held_by(t, MEASUREMENT),
    );
    // The other Trustee holds the same.
    wait_for(
        "the values in the other Trustee",
        &json!([m(0x0a), m(0x0b)]),
        || held_by(&other, MEASUREMENT),
    );
    // Overwritten in the RVPS: corrected.
    t.rvps_register(&json!({ MEASUREMENT: [m(0xff)] })).unwrap();
    wait_for("the correction", &json!([m(0x0a), m(0x0b)]), || {
        t.rvps_query(MEASUREMENT).unwrap()
    });
    // One down does not hold the other up.
    drop(other);
    rig.register("node-b", &[m(0x0c)], None).await;
    wait_for(
        "the RVPS while the other Trustee is gone",
        &json!([m(0x0a), m(0x0b), m(0x0c)]),
        || t.rvps_query(MEASUREMENT).unwrap(),
    );
    let s = rig.status();
    assert_eq!(s["instances"].as_array().unwrap().len(), 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_only_write_reference_values_is_enough() {
    let opts = TrusteeOptions {
        role: "reference-values".into(),
        allowed_endpoints: "^/kbs/v0/reference-value(/.*)?$".into(),
        ..TrusteeOptions::default()
    };
    let Some(mut rig) = Rig::new(opts) else {
        return;
    };
    let key = rig.trustee.admin_key_path().to_path_buf();
    let mut args = rig.trustee_args(&key);
    args.extend(["--trustee-admin-role".into(), "reference-values".into()]);
    rig.start_kbs("open", args);
    rig.register("node-a", &[m(0x05)], None).await;
    wait_for("the value", &json!([m(0x05)]), || {
        held_by(&rig.trustee, MEASUREMENT)
    });
    let s = rig.status();
    let policy = s["instances"][0]["policy"].as_str().unwrap().to_string();
    assert!(policy.contains("may not read the resource policy"), "{s}");
    assert!(s["instances"][0]["last_error"].is_null(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_trustee_and_another_takes_over_when_it_dies() {
    let Some(rig) = Rig::new(TrusteeOptions::default()) else {
        return;
    };
    let Some(db) = kbs::store::testing::fresh_postgres("trustee_writer_lease") else {
        return;
    };
    let d = rig.dir.path();
    std::fs::write(d.join("at-rest.key"), hex::encode([0x17u8; 32])).unwrap();
    std::fs::write(
        d.join("db-password"),
        db.password.as_deref().map_or("", |p| p.as_str()),
    )
    .unwrap();
    for f in ["at-rest.key", "db-password"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let key = rig.trustee.admin_key_path().to_path_buf();
    let start = |i: usize| {
        let mut args: Vec<OsString> = vec![
            "--registration".into(),
            "open".into(),
            "--database".into(),
            db.url.clone().into(),
            "--at-rest-key-file".into(),
            d.join("at-rest.key").into(),
        ];
        if db.password.is_some() {
            args.extend([
                "--database-password-file".into(),
                d.join("db-password").into(),
            ]);
        }
        if let Some(ca) = &db.ca_file {
            args.extend(["--database-ca".into(), ca.into()]);
        }
        args.extend(rig.trustee_args(&key));
        KbsProcess::start_with(
            &kbs_beside_current_exe().unwrap(),
            &d.join(format!("replica-{i}")),
            &d.join(format!("admin-{i}.sock")),
            &rig.ark,
            &args,
        )
        .unwrap()
    };
    let mut replicas = [start(0), start(1)];
    let store =
        kbs::store::Store::open_postgres(&db, kbs::store::AtRestKey::parse(&[0x17; 32]).unwrap())
            .unwrap();
    let holder_pid = || -> Option<u32> {
        let (holder, _) = store.lease_holder(kbs::store::TRUSTEE_WRITER).unwrap()?;
        holder.split('/').nth(1)?.parse().ok()
    };
    let started = Instant::now();
    let holder = loop {
        if let Some(pid) = holder_pid() {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nobody took the lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (writer, other) = if holder == replicas[0].pid() {
        (0, 1)
    } else {
        (1, 0)
    };
    assert_eq!(holder, replicas[writer].pid());

    // A registration through the replica that does not write reaches Trustee
    // through the one that does.
    let sockets: Vec<PathBuf> = replicas.iter().map(|r| r.socket.clone()).collect();
    let register = |i: usize, node: &str, digest: String| {
        let socket = sockets[i].clone();
        let node = node.to_string();
        async move {
            kbs_proto::admin_client::connect_unix(&socket, Duration::from_secs(5))
                .await
                .unwrap()
                .register_launches(RegisterLaunchesRequest {
                    node,
                    inputs: Some(LaunchInputs {
                        runtime_class: CLASS.into(),
                        ..LaunchInputs::default()
                    }),
                    launches: vec![NodeLaunch {
                        digest: Some(Digest {
                            mode: "snp".into(),
                            digest: hex::decode(digest).unwrap(),
                            vcpus: 1,
                            vcpu_type: "EPYC-v4".into(),
                            config: "lease test".into(),
                        }),
                        ..NodeLaunch::default()
                    }],
                    platform: None,
                })
                .await
                .unwrap();
        }
    };
    register(other, "node-a", m(0x51)).await;
    let t = &rig.trustee;
    wait_for(
        "a value registered through the other replica",
        &json!([m(0x51)]),
        || held_by(t, MEASUREMENT),
    );

    // The writer dies without giving the lease up: the survivor takes it once
    // it lapses and writes what is registered since.
    replicas[writer].kill();
    register(other, "node-b", m(0x52)).await;
    let took = wait_for("the survivor's write", &json!([m(0x51), m(0x52)]), || {
        held_by(t, MEASUREMENT)
    });
    // Not before the dead holder's lease lapsed in the database (10 s after
    // its last renewal, at most 1 s before the kill): one writer at a time.
    assert!(
        took >= Duration::from_secs(5),
        "written before the lease could lapse: {took:?}"
    );
    assert_eq!(holder_pid(), Some(replicas[other].pid()));
}
