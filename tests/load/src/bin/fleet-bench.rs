//! `fleet-bench`: the broker at fleet scale. Simulated nodes (each a host
//! agent with its own node token) register their launches through the
//! approved-inputs flow every few seconds, spread over the replicas' admin
//! listeners, while simulated Kata shims run launches whose GetBundle and
//! GetSecret go to different replicas. Reports registration latency,
//! launches per second and launch latency, and the database's growth,
//! extrapolated to a day.
//!
//! `--backend postgres` runs `--replicas` release brokers on one fresh
//! PostgreSQL database (from `KBS_TEST_POSTGRES*`, as `scripts/bench-fleet`
//! sets them); `--backend sqlite` runs one broker on its embedded database,
//! the same load, for comparison.

#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
// Indexes are taken modulo the lengths of vectors this program built.
#![allow(clippy::indexing_slicing)]

use anyhow::{bail, Context};
use clap::Parser;
use kbs::store::{AtRestKey, DigestRecord, KeysetMembers, Origin, Store};
use kbs_load::percentile;
use kbs_proto::kbsadmin::{CreateTokenRequest, RegisterLaunchesRequest};
use sev_sim::kbs_process::KbsProcess;
use sev_sim::shim::{get_bundle, get_secret, secret_request, ShimLaunch};
use sev_sim::{FakeAmdRoots, SimPlatform};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Load a fleet of brokers with node registrations and launches.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The kbs binary (a release build for figures that mean something).
    #[arg(long, value_name = "FILE", default_value = "target/release/kbs")]
    kbs_bin: PathBuf,
    /// `postgres` (replicas on one PostgreSQL database) or `sqlite` (one
    /// broker on its embedded database).
    #[arg(long, default_value = "postgres")]
    backend: String,
    /// Brokers on the PostgreSQL database.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Seconds between one node's registrations.
    #[arg(long, default_value_t = 5.0)]
    register_every: f64,
    /// Launches in flight at once.
    #[arg(long, default_value_t = 8)]
    launches: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds of warm-up (every node registers once in it), not counted.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{text}")?;
    Ok(())
}

/// What the host agent sends for the sample configuration on an SEV host.
fn sample_registration(
    sample: &sample_artefacts::Sample,
) -> anyhow::Result<host_agent::agent::inputs::ClassRegistration> {
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
    )?;
    let Derived::Launches(c) = derived else {
        bail!("the sample is not an SEV launch");
    };
    Ok(host_agent::agent::inputs::registration_of(&c, &host, None))
}

/// The database's size and the rows of the tables that grow, for the
/// day's extrapolation.
fn db_size(store: &Store, backend: &str, data: &Path) -> anyhow::Result<u64> {
    if backend == "sqlite" {
        let mut total = 0;
        for f in ["kbs.sqlite3", "kbs.sqlite3-wal"] {
            total += std::fs::metadata(data.join(f))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        return Ok(total);
    }
    store
        .database_size()?
        .context("the database does not say its size")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let sample = sample_artefacts::write_sample(&d.join("kata"))?;
    let roots = FakeAmdRoots::generate()?;
    let platform = Arc::new(SimPlatform::new(&roots)?);
    let ark = d.join("ark.cert");
    std::fs::write(&ark, roots.ark_cert())?;
    let key = [0x33u8; 32];
    write_private(&d.join("at-rest.key"), &hex::encode(key))?;
    let digest = [0x42u8; 32];

    let postgres = match args.backend.as_str() {
        "postgres" => Some(
            kbs::store::testing::fresh_postgres("fleet-bench")
                .context("KBS_TEST_POSTGRES is not set: run scripts/bench-fleet")?,
        ),
        "sqlite" => None,
        other => bail!("--backend {other:?}: expected postgres or sqlite"),
    };
    let replicas = if postgres.is_some() {
        args.replicas.max(1)
    } else {
        1
    };
    let data0 = d.join("replica-0");
    std::fs::create_dir_all(&data0)?;
    let store = match &postgres {
        Some(o) => Store::open_postgres(o, at_rest(&key)?)?,
        None => Store::open_with_key(&data0, at_rest(&key)?)?,
    };
    store.replace_digests(
        "launch-host",
        "kata-qemu-sev",
        &[(
            digest.to_vec(),
            DigestRecord {
                mode: "sev".into(),
                digest: kbs::store::hex(&digest),
                vcpus: 1,
                vcpu_type: "host".into(),
                config: "fleet bench".into(),
            },
        )],
        Origin::Operator,
        &[],
    )?;
    store.set_secret("k1", b"0123456789abcdef0123456789abcdef")?;
    store.set_keyset_members(
        "KEYSET-1",
        &KeysetMembers {
            secrets: vec!["k1".into()],
            resources: vec![],
        },
    )?;
    if postgres.is_none() {
        // One process on the file at a time.
        drop(store);
    }

    let mut servers = Vec::new();
    for i in 0..replicas {
        let mut extra: Vec<OsString> = vec![
            "--at-rest-key-file".into(),
            d.join("at-rest.key").into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(o) = &postgres {
            extra.extend(["--database".into(), o.url.clone().into()]);
            if let Some(p) = &o.password {
                let f = d.join("db-password");
                if !f.exists() {
                    write_private(&f, p)?;
                }
                extra.extend(["--database-password-file".into(), f.into()]);
            }
            if let Some(ca) = &o.ca_file {
                extra.extend(["--database-ca".into(), ca.clone().into()]);
            }
        }
        let server = KbsProcess::start_with(
            &args.kbs_bin,
            &d.join(format!("replica-{i}")),
            &d.join(format!("admin-{i}.sock")),
            &ark,
            &extra,
        )
        .with_context(|| format!("cannot start {}", args.kbs_bin.display()))?;
        servers.push(server);
    }
    let uris: Arc<Vec<String>> = Arc::new(servers.iter().map(KbsProcess::uri).collect());
    let admin_addrs: Vec<String> = servers
        .iter()
        .map(|s| s.admin_addr.clone().context("no admin listener"))
        .collect::<anyhow::Result<_>>()?;

    // The operator approves the sample's inputs and makes one token per node.
    let admin = |args_: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new(&args.kbs_bin)
            .arg("admin")
            .arg("--socket")
            .arg(&servers[0].socket)
            .args(args_)
            .output()?;
        if !out.status.success() {
            bail!(
                "kbs admin {args_:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let path = |p: &Path| p.to_string_lossy().into_owned();
    admin(&["approve", "firmware", &path(&sample.firmware)])?;
    admin(&["approve", "kernel", &path(&sample.kernel)])?;
    admin(&["approve", "initrd", &path(&sample.initrd)])?;
    admin(&[
        "approve",
        "kata-config",
        &path(&sample.config),
        "--runtime-class",
        "kata-qemu-sev",
        "--pod-cpus",
        "0-2",
    ])?;
    let mut operator =
        kbs::admin_cli::connect_unix(&servers[0].socket, Duration::from_secs(10)).await?;
    let mut tokens = Vec::with_capacity(args.nodes);
    for n in 0..args.nodes {
        let t = operator
            .create_token(CreateTokenRequest {
                role: "node".into(),
                node: format!("node-{n:04}"),
                note: "fleet bench".into(),
            })
            .await?
            .into_inner();
        tokens.push(t.token);
    }
    let registration = Arc::new(sample_registration(&sample)?);
    let size_at_start = db_size(&store_for(&postgres, &key, &data0)?, &args.backend, &data0)?;
    let records_at_start = store_for(&postgres, &key, &data0)?.count_records()?;
    let appended_at_start = appended(&store_for(&postgres, &key, &data0)?)?;

    let start = Instant::now();
    let warm_end = start + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.duration);
    let period = Duration::from_secs_f64(args.register_every);
    let reg_latencies = Arc::new(Mutex::new(Vec::new()));
    let reg_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (n, token) in tokens.into_iter().enumerate() {
        let addr = admin_addrs[n % admin_addrs.len()].clone();
        let registration = Arc::clone(&registration);
        let latencies = Arc::clone(&reg_latencies);
        let failures = Arc::clone(&reg_failures);
        // Spread over the period, as independent agents are.
        let offset = period.mul_f64(n as f64 / args.nodes as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let Ok(mut client) = kbs::admin_cli::connect_tcp(
                &format!("http://{addr}"),
                &token,
                None,
                Duration::from_secs(30),
            )
            .await
            else {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            };
            let mut next = Instant::now();
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let t0 = Instant::now();
                let r = client
                    .register_launches(RegisterLaunchesRequest {
                        node: String::new(),
                        inputs: registration.inputs.clone(),
                        launches: registration.launches.clone(),
                        platform: registration.platform.clone(),
                    })
                    .await;
                let took = t0.elapsed();
                if r.is_err() {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if t0 >= warm_end && t0 < end {
                    latencies.lock().map(|mut l| l.push(took)).ok();
                }
                next += period;
            }
        }));
    }
    let launch_latencies = Arc::new(Mutex::new(Vec::new()));
    let launch_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for l in 0..args.launches {
        let platform = Arc::clone(&platform);
        let uris = Arc::clone(&uris);
        let latencies = Arc::clone(&launch_latencies);
        let failures = Arc::clone(&launch_failures);
        tasks.push(tokio::spawn(async move {
            let mut i = l;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                // GetBundle on one replica, GetSecret on the next.
                let first = &uris[i % uris.len()];
                let second = &uris[(i + 1) % uris.len()];
                i += 1;
                let launch = ShimLaunch::offline(first.clone(), 0x3, digest, "KEYSET-1");
                let ok = async {
                    let bundle = get_bundle(first, &platform.cert_chain(), 0x3).await.ok()?;
                    let mut psp = platform
                        .launch_start(&bundle.godh, &bundle.blob, 0x3)
                        .ok()?;
                    let m = psp.measure(&digest);
                    let request = secret_request(&platform, &launch, &bundle.launch_id, &m);
                    let packet = get_secret(second, request).await.ok()?;
                    psp.inject_secret(&packet.header, &packet.data).ok()
                }
                .await
                .is_some();
                let took = t0.elapsed();
                if !ok {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else if t0 >= warm_end {
                    latencies.lock().map(|mut v| v.push(took)).ok();
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed_measured = args.duration as f64;
    let run_secs = start.elapsed().as_secs_f64();
    let store = store_for(&postgres, &key, &data0)?;
    let size_at_end = db_size(&store, &args.backend, &data0)?;
    let records_at_end = store.count_records()?;
    let appended_at_end = appended(&store)?;

    // Milliseconds, sorted.
    let sorted_ms = |v: &Mutex<Vec<Duration>>| {
        let mut ms: Vec<f64> = v
            .lock()
            .map(|v| v.iter().map(|d| d.as_secs_f64() * 1000.0).collect())
            .unwrap_or_default();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let regs = sorted_ms(&reg_latencies);
    let launches = sorted_ms(&launch_latencies);
    let growth_per_sec = (size_at_end.saturating_sub(size_at_start)) as f64 / run_secs;
    let records_per_sec = (records_at_end.saturating_sub(records_at_start)) as f64 / run_secs;
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string()))
            .unwrap_or_default()
    );
    println!(
        "backend: {} ({} broker{}), {} nodes registering every {:.1} s, {} launches in flight, {} s measured",
        args.backend,
        replicas,
        if replicas == 1 { "" } else { "s" },
        args.nodes,
        args.register_every,
        args.launches,
        args.duration
    );
    println!(
        "registrations: {} measured ({:.0}/s), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; failed {}",
        regs.len(),
        regs.len() as f64 / elapsed_measured,
        percentile(&regs, 50.0),
        percentile(&regs, 99.0),
        regs.last().copied().unwrap_or_default(),
        reg_failures.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "launches: {:.1}/s, p50 {:.1} ms, p99 {:.1} ms; failed {}",
        launches.len() as f64 / elapsed_measured,
        percentile(&launches, 50.0),
        percentile(&launches, 99.0),
        launch_failures.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "database: {:.1} MiB at start, {:.1} MiB at end, {:.0} records/s ({:.1} M a day)",
        size_at_start as f64 / 1048576.0,
        size_at_end as f64 / 1048576.0,
        records_per_sec,
        records_per_sec * 86400.0 / 1e6
    );
    if postgres.is_some() {
        // The tables a launch appends to (records, sessions, report keys)
        // grow with launches; the registrations' tables are replaced in
        // place, their dead rows reused once autovacuum has run.
        let appended_per_sec = appended_at_end.saturating_sub(appended_at_start) as f64 / run_secs;
        let launched = launches.len().max(1) as f64 / elapsed_measured;
        println!(
            "a day at this rate: records, sessions and report keys +{:.0} MiB ({:.0} bytes a launch); the whole database grew {:.0} MiB a day over this run, dead rows included",
            appended_per_sec * 86400.0 / 1048576.0,
            appended_per_sec / launched,
            growth_per_sec * 86400.0 / 1048576.0
        );
    } else {
        println!(
            "a day at this rate: the database files grow {:.0} MiB",
            growth_per_sec * 86400.0 / 1048576.0
        );
    }
    drop(servers);
    Ok(())
}

/// Bytes of the tables launches append to.
fn appended(store: &Store) -> anyhow::Result<u64> {
    Ok(store
        .table_sizes()?
        .iter()
        .filter(|(t, _)| matches!(t.as_str(), "records" | "sessions" | "launch_reports"))
        .map(|(_, n)| n)
        .sum())
}

fn at_rest(key: &[u8; 32]) -> anyhow::Result<AtRestKey> {
    AtRestKey::parse(key).context("at-rest key")
}

/// A store handle for reading sizes and counts (the embedded one opened
/// read-only would do as well; the broker's WAL lets a second reader in).
fn store_for(
    postgres: &Option<kbs::store::PgOptions>,
    key: &[u8; 32],
    data: &Path,
) -> anyhow::Result<Store> {
    Ok(match postgres {
        Some(o) => Store::open_postgres(o, at_rest(key)?)?,
        None => Store::open_with_key(data, at_rest(key)?)?,
    })
}
