//! Trustee benchmark: from a node's SNP registration at the broker to the new
//! measurement readable in Trustee, on loopback; beside it, in the same run,
//! the manual way one value reaches Trustee today (one `kbs-client config
//! set-sample-reference-value` call).
//!
//! It starts a real Trustee KBS (built-in RVPS) and a release-built `kbs`
//! writing to it, then, run after run, registers one more SNP launch for a
//! node (as its host agent does) and polls Trustee's admin API until the
//! measurement list holds it.

use anyhow::{bail, Context};
use clap::Parser;
use kbs_load::percentile;
use kbs_proto::kbsadmin::{Digest, LaunchInputs, NodeLaunch, RegisterLaunchesRequest};
use sev_sim::trustee_process::{TrusteeOptions, TrusteeProcess};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Times registrations reaching Trustee.
#[derive(Debug, Parser)]
struct Args {
    /// The kbs binary.
    #[arg(long, default_value = "target/release/kbs")]
    kbs_bin: PathBuf,
    /// Registrations to time.
    #[arg(long, default_value_t = 50)]
    runs: usize,
}

fn summary(name: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&ms, 50.0), percentile(&ms, 99.0));
    println!(
        "{name}: {} runs, p50 {p50:.1} ms, p99 {p99:.1} ms",
        ms.len()
    );
    (p50, p99)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let opts = TrusteeOptions {
        rust_log: "warn".into(),
        ..TrusteeOptions::default()
    };
    let trustee = TrusteeProcess::start(opts).context("cannot start Trustee")?;
    let roots = sev_sim::FakeAmdRoots::generate()?;
    let ark = dir.path().join("ark.cert");
    std::fs::write(&ark, roots.ark_cert())?;
    let socket = dir.path().join("admin.sock");
    let kbs_args: Vec<std::ffi::OsString> = vec![
        "--registration".into(),
        "open".into(),
        "--trustee-url".into(),
        trustee.url().into(),
        "--trustee-admin-key".into(),
        trustee.admin_key_path().into(),
        "--trustee-admin-issuer".into(),
        trustee.issuer().into(),
    ];
    let _kbs = sev_sim::kbs_process::KbsProcess::start_with(
        &args.kbs_bin,
        &dir.path().join("kbs-data"),
        &socket,
        &ark,
        &kbs_args,
    )
    .with_context(|| format!("cannot start {}", args.kbs_bin.display()))?;
    let mut admin = kbs_proto::admin_client::connect_unix(&socket, Duration::from_secs(5)).await?;
    let token = trustee.admin_token()?;
    let holds = |hex: &str| -> anyhow::Result<bool> {
        let r = trustee.admin_request(
            "GET",
            "/kbs/v0/reference-value/snp_launch_measurement",
            Some(&token),
            None,
        )?;
        Ok(r.status == 200 && r.body.contains(hex))
    };

    let mut ours = Vec::new();
    let mut launches = Vec::new();
    for run in 0..args.runs {
        let mut digest = [0u8; 48];
        digest[..8].copy_from_slice(&(u64::try_from(run)? + 1).to_be_bytes());
        let hex = hex::encode(digest);
        launches.push(NodeLaunch {
            pod_cpus: u32::try_from(run)?,
            digest: Some(Digest {
                mode: "snp".into(),
                digest: digest.to_vec(),
                vcpus: 1,
                vcpu_type: "EPYC-v4".into(),
                config: format!("bench launch {run}"),
            }),
            ..NodeLaunch::default()
        });
        let started = Instant::now();
        admin
            .register_launches(RegisterLaunchesRequest {
                node: "node-1".into(),
                inputs: Some(LaunchInputs {
                    runtime_class: "kata-qemu-snp".into(),
                    ..LaunchInputs::default()
                }),
                launches: launches.clone(),
                platform: None,
            })
            .await?;
        loop {
            if holds(&hex)? {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("run {run}: the measurement did not reach Trustee within 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        ours.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    // The manual way: one kbs-client call per value, timed to its exit.
    let mut manual = Vec::new();
    for run in 0u8..20 {
        let value = hex::encode([run; 48]);
        let started = Instant::now();
        trustee.set_sample_reference_value("bench_manual", &serde_json::Value::String(value))?;
        manual.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "machine: {} cores; the broker's list grows to {} measurements",
        std::thread::available_parallelism().map_or(0, usize::from),
        args.runs
    );
    let (p50, p99) = summary("registration to readable in Trustee (broker)", ours);
    let (m50, m99) = summary("one kbs-client set-sample-reference-value call", manual);
    println!(
        "ratio broker/kbs-client: p50 {:.2}, p99 {:.2}",
        p50 / m50,
        p99 / m99
    );
    Ok(())
}
