//! Guest client benchmark: from starting `guest-client verify` to the key
//! broker's acknowledgement of its report, on loopback.
//!
//! It starts a release-built `kbs`, pre-attests launches through the simulated
//! PSP and shim (online mode, so the run includes a GetOnlineSecret round trip
//! and the report), writes each guest's secrets as `efi_secret` shows them, and
//! times the whole `guest-client verify` process, start to exit, once per launch.

use anyhow::{bail, Context};
use clap::Parser;
use kbs_load::percentile;
use kbs_proto::admin_client;
use kbs_proto::kbsadmin::{Digest, ReplaceDigestsRequest, SetResourceRequest};
use sev_sim::guest_view::GuestView;
use sev_sim::shim::{pre_attest, ShimLaunch};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Times guest-client runs.
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
    /// Launches to verify.
    #[arg(long, default_value_t = 50)]
    runs: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let roots = sev_sim::FakeAmdRoots::generate()?;
    let platform = sev_sim::SimPlatform::new(&roots)?;
    let ark = dir.path().join("ark.cert");
    std::fs::write(&ark, roots.ark_cert())?;
    let socket = dir.path().join("admin.sock");
    let kbs = sev_sim::kbs_process::KbsProcess::start(
        &args.kbs_bin,
        &dir.path().join("kbs-data"),
        &socket,
        &ark,
    )
    .with_context(|| format!("cannot start {}", args.kbs_bin.display()))?;
    let addr = kbs.addr.clone();

    let digest = [0x42u8; 32];
    let mut admin = admin_client::connect_unix(&socket, Duration::from_secs(5)).await?;
    admin
        .replace_digests(ReplaceDigestsRequest {
            node: "bench".into(),
            runtime_class: "kata-qemu-sev".into(),
            digests: vec![Digest {
                mode: "sev".into(),
                digest: digest.to_vec(),
                vcpus: 1,
                vcpu_type: String::new(),
                config: "bench".into(),
            }],
        })
        .await?;
    admin
        .set_resource(SetResourceRequest {
            id: "default/security-policy/test".into(),
            data: br#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}"#.to_vec(),
        })
        .await?;

    let size = std::fs::metadata(&args.client_bin)
        .with_context(|| format!("{}", args.client_bin.display()))?
        .len();
    let mut times = Vec::with_capacity(args.runs);
    for i in 0..args.runs {
        let launch = ShimLaunch::online(format!("http://{addr}"), 0x3, digest);
        let out = pre_attest(&platform, &launch).await?;
        let root = dir.path().join(format!("guest-{i}"));
        let view = GuestView::write(&root, &out.secret_table, "quiet")?;
        let start = Instant::now();
        let status = view
            .verify_command(&args.client_bin, &addr, "online")
            .stdout(Stdio::null())
            .status()?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !status.success() {
            bail!("guest-client verify failed on launch {i}");
        }
        if root
            .join("security/secrets/coco")
            .join(guest_client_report_key())
            .exists()
        {
            bail!("launch {i}: the report was not acknowledged (report key not wiped)");
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
        "verify + online round trip + report acknowledged, n={}: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 90.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// The report key entry's GUID: wiped once the broker acknowledged the report.
fn guest_client_report_key() -> &'static str {
    "6c8e2b4a-3f1d-4e7a-9b5c-0d2f8a1e7c93"
}
