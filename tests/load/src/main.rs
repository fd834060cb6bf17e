//! `kbs-load`: runs N concurrent simulated launches (GetBundle, LAUNCH_START on
//! the simulated PSP, LAUNCH_MEASURE, GetSecret, LAUNCH_SECRET), each over new
//! gRPC connections as the Kata shim makes them, against a real `kbs` process it
//! starts, for T seconds; reports launches per second, latency percentiles and
//! the server's CPU time per launch (from /proc).

#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use anyhow::{bail, Context};
use clap::Parser;
use kbs::store::{DigestRecord, Store};
use sev_sim::kbs_process::KbsProcess;
use sev_sim::shim::{pre_attest, ShimLaunch};
use sev_sim::{FakeAmdRoots, SimPlatform};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Load-test a key broker with simulated SEV launches.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The kbs binary to start (a release build for figures that mean something).
    #[arg(long, value_name = "FILE", default_value = "target/release/kbs")]
    kbs_bin: PathBuf,
    /// Launches in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to run after warm-up.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i.min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let roots = FakeAmdRoots::generate()?;
    let platform = Arc::new(SimPlatform::new(&roots)?);
    let ark = dir.path().join("ark.cert");
    std::fs::write(&ark, roots.ark_cert())?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let digest = [0x42u8; 32];
    {
        let store = Store::open(&data)?;
        let rec = DigestRecord {
            mode: "sev".into(),
            digest: kbs::store::hex(&digest),
            vcpus: 1,
            vcpu_type: "host".into(),
            config: "load test".into(),
        };
        store.replace_digests(
            "load",
            "kata-qemu-sev",
            &[(digest.to_vec(), rec)],
            kbs::store::Origin::Operator,
            &[],
        )?;
        store.set_secret("k1", b"0123456789abcdef0123456789abcdef")?;
        store.set_keyset("KEYSET-1", &["k1".to_string()])?;
    }
    let server = KbsProcess::start(&args.kbs_bin, &data, &data.join("admin.sock"), &ark)
        .with_context(|| format!("cannot start {}", args.kbs_bin.display()))?;
    let launch = Arc::new(ShimLaunch::offline(
        format!("http://{}", server.addr),
        0x3,
        digest,
        "KEYSET-1",
    ));

    let warm_end = Instant::now() + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.duration);
    let mut cpu_start = None;
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let platform = Arc::clone(&platform);
        let launch = Arc::clone(&launch);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ok = pre_attest(&platform, &launch).await.is_ok();
                if t0 >= warm_end {
                    if ok {
                        latencies.push(t0.elapsed());
                    } else {
                        failures += 1;
                    }
                }
            }
            (latencies, failures)
        }));
    }
    tokio::time::sleep_until(warm_end.into()).await;
    cpu_start.get_or_insert(cpu_seconds(server.pid())?);
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = cpu_seconds(server.pid())?;
    let mut latencies = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await?;
        latencies.extend(l);
        failures += f;
    }
    latencies.sort();
    let n = latencies.len();
    let secs = args.duration as f64;
    let cpu = cpu_end - cpu_start.unwrap_or(cpu_end);
    let rate = n as f64 / secs;
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    let cpu_per_launch_ms = if n > 0 {
        cpu * 1000.0 / n as f64
    } else {
        f64::NAN
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "concurrency": args.concurrency, "seconds": args.duration, "launches": n, "failures": failures,
                "launches_per_second": rate, "p50_ms": p50.as_secs_f64() * 1000.0,
                "p99_ms": p99.as_secs_f64() * 1000.0, "server_cpu_ms_per_launch": cpu_per_launch_ms,
            })
        );
    } else {
        println!(
            "{n} launches in {secs:.0} s at concurrency {}: {rate:.1} launches/s, p50 {:.1} ms, p99 {:.1} ms, \
             server CPU {cpu_per_launch_ms:.2} ms/launch, {failures} failed",
            args.concurrency,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
        );
    }
    if failures > 0 {
        bail!("{failures} launches failed");
    }
    Ok(())
}
