//! SNP guest client benchmark: from starting `guest-client verify` in a
//! simulated SEV-SNP guest to the broker's acknowledgement of its status
//! report, on loopback.
//!
//! It starts a release-built `kbs` that trusts the simulator's SNP root, the
//! simulated guest device (fake AMD roots, a Genoa VCEK, signed reports) and
//! a loopback server answering as the guest components' REST API (a resource
//! and an EAR token). Each run times the whole `guest-client verify` process:
//! a report over a fresh nonce and its chain to the root, policy and TCB, the
//! measurement looked up in the broker's registry, the resource through the
//! confidential data hub, the token, a nonce from the broker, a second report
//! bound to the status body, and the broker's verification and record.

use anyhow::{bail, Context};
use clap::Parser;
use kbs_load::percentile;
use kbs_proto::admin_client;
use kbs_proto::kbsadmin::{Digest, ReplaceDigestsRequest};
use sev_sim::guest_components::{
    EarTokenSigner, EarTokenSpec, GuestComponentsConfig, GuestComponentsServer, RestFeatures,
};
use sev_sim::snp_guest::{FakeSnpRoots, SnpDeviceServer, SnpGuest};
use sev_sim::snp_platform::{SnpProduct, SnpTcb};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Times guest-client runs in a simulated SNP guest.
#[derive(Debug, Parser)]
struct Args {
    /// The kbs binary.
    #[arg(long, default_value = "target/release/kbs")]
    kbs_bin: PathBuf,
    /// The guest-client binary (the static build).
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/guest-client"
    )]
    client_bin: PathBuf,
    /// Runs.
    #[arg(long, default_value_t = 50)]
    runs: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let roots = FakeSnpRoots::generate(SnpProduct::Genoa)?;
    let root_file = dir.path().join("snp-root.pem");
    std::fs::write(
        &root_file,
        format!("{}{}", roots.ark_pem(), roots.ask_pem()),
    )?;
    // The harness wants an SEV anchor as well.
    let sev_roots = sev_sim::FakeAmdRoots::generate()?;
    let sev_ark = dir.path().join("ark.cert");
    std::fs::write(&sev_ark, sev_roots.ark_cert())?;
    let socket = dir.path().join("admin.sock");
    let kbs = sev_sim::kbs_process::KbsProcess::start_with(
        &args.kbs_bin,
        &dir.path().join("kbs-data"),
        &socket,
        &sev_ark,
        &["--snp-insecure-root".into(), root_file.clone().into()],
    )
    .with_context(|| format!("cannot start {}", args.kbs_bin.display()))?;
    let measurement = [0x5a; 48];
    let mut admin = admin_client::connect_unix(&socket, Duration::from_secs(5)).await?;
    admin
        .replace_digests(ReplaceDigestsRequest {
            node: "bench".into(),
            runtime_class: "kata-qemu-snp".into(),
            digests: vec![Digest {
                mode: "snp".into(),
                digest: measurement.to_vec(),
                vcpus: 1,
                vcpu_type: "EPYC-v4".into(),
                config: "bench".into(),
            }],
        })
        .await?;
    let tcb = SnpTcb {
        fmc: None,
        bootloader: 9,
        tee: 0,
        snp: 23,
        microcode: 0xd4,
    };
    let signer = EarTokenSigner::generate()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = signer.sign(&EarTokenSpec::affirming(&measurement, i64::try_from(now)?))?;
    let components = GuestComponentsServer::start(
        GuestComponentsConfig::new(RestFeatures::All)
            .with_resource("default/key/1", b"bench resource".to_vec())
            .with_token(token),
    )?;
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "agent.guest_components_rest_api=all\n")?;

    let size = std::fs::metadata(&args.client_bin)
        .with_context(|| format!("{}", args.client_bin.display()))?
        .len();
    let mut times = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        // A chip per run: the broker records at most 30 reports a minute
        // from one chip.
        let mut chip_id = [0u8; 64];
        chip_id[..8].copy_from_slice(&u64::try_from(i)?.to_le_bytes());
        let device = SnpDeviceServer::start(
            &dir.path().join(format!("sev-guest-{i}.sock")),
            roots.issue_chip(chip_id, tcb)?,
            &roots,
            SnpGuest::new(measurement),
        )?;
        let start = Instant::now();
        let status = std::process::Command::new(&args.client_bin)
            .arg("verify")
            .arg("--snp-simulator")
            .arg(device.path())
            .arg("--kbs")
            .arg(&kbs.addr)
            .arg("--snp-insecure-root")
            .arg(&root_file)
            .arg("--cdh")
            .arg(components.url())
            .args(["--resource", "kbs:///default/key/1"])
            .arg("--cmdline")
            .arg(&cmdline)
            .stdout(Stdio::null())
            .status()?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !status.success() {
            bail!("run {i}: guest-client verify exited with {status} (not confirmed)");
        }
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "guest-client {} bytes ({:.2} MiB)",
        size,
        size as f64 / 1048576.0
    );
    println!(
        "SNP verify start to acknowledged, n={}: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 90.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
