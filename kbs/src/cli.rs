//! The `kbs` command line: serve the key broker.

use crate::broker::{Broker, BrokerPolicy};
use crate::grpc::KeyBroker;
use crate::store::Store;
use crate::trust::TrustAnchors;
use anyhow::{bail, Context};
use clap::Parser;
use kbs_proto::keybroker::key_broker_service_server::KeyBrokerServiceServer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// Key broker for SEV pre-attestation of Kata confidential guests.
///
/// Speaks the simple-kbs `keybroker` gRPC protocol that the Kata shim and the
/// guest's attestation agent use. Platform certificate chains must end in one of
/// AMD's root keys; launch measurements are verified before any policy is
/// consulted; launch sessions and every attestation outcome are kept on disk.
#[derive(Debug, Parser)]
#[command(name = "kbs", version)]
pub struct Args {
    /// Address to serve the keybroker protocol on. Guests and the Kata shim must
    /// reach it: Kata's guest_pre_attestation_kbs_uri names it.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:44444")]
    pub listen: SocketAddr,
    /// Directory of the broker's database (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kbs")]
    pub data_dir: PathBuf,
    /// INSECURE, for test rigs and the simulator: also trust this root key (an ARK
    /// in AMD's CA certificate format, as `sevctl export` writes it). Anyone with
    /// its private key can impersonate a PSP and receive secrets. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub insecure_trust_anchor: Vec<PathBuf>,
    /// Accept guests whose policy allows debugging (NODBG clear); their memory is
    /// readable by the host.
    #[arg(long)]
    pub allow_debug: bool,
    /// Oldest SEV firmware API version accepted, MAJOR.MINOR.
    #[arg(long, value_name = "MAJOR.MINOR", default_value = "0.0", value_parser = parse_api)]
    pub min_fw_api: (u8, u8),
    /// Oldest SEV firmware build accepted.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_fw_build: u8,
    /// Seconds a launch id stays usable after GetBundle.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub session_ttl: u32,
}

fn parse_api(text: &str) -> Result<(u8, u8), String> {
    let (a, b) = text
        .split_once('.')
        .ok_or_else(|| format!("{text:?}: expected MAJOR.MINOR"))?;
    let num = |s: &str| s.parse::<u8>().map_err(|e| format!("{text:?}: {e}"));
    Ok((num(a)?, num(b)?))
}

fn prepare_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("data directory {} is not a directory", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(dir = %dir.display(), "data directory is accessible to other users; it holds session keys and secrets");
    }
    Ok(())
}

/// Builds the broker from the arguments: everything that can fail on bad
/// configuration fails here, before any port is bound.
pub fn broker(args: &Args) -> anyhow::Result<Broker> {
    prepare_data_dir(&args.data_dir)?;
    let store = Store::open(&args.data_dir)?;
    let mut trust = TrustAnchors::amd();
    for path in &args.insecure_trust_anchor {
        trust.add_insecure_anchor(path)?;
        warn!(
            anchor = %path.display(),
            "INSECURE: trusting an extra root key; whoever holds its private key can obtain every secret"
        );
    }
    info!(anchors = ?trust.names(), db = %store.path().display(), "trust anchors loaded");
    let policy = BrokerPolicy {
        session_ttl_secs: i64::from(args.session_ttl),
        allow_debug: args.allow_debug,
        min_api: args.min_fw_api,
        min_build: args.min_fw_build,
        ..BrokerPolicy::default()
    };
    Ok(Broker::new(store, trust, policy))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let broker = Arc::new(broker(&args)?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The line tests and scripts wait for; the address is the one really bound.
    eprintln!("kbs: listening on {addr}");
    info!(%addr, "serving keybroker");
    tonic::transport::Server::builder()
        .add_service(KeyBrokerServiceServer::new(KeyBroker::new(broker)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown_signal(),
        )
        .await?;
    info!("stopped");
    Ok(())
}
