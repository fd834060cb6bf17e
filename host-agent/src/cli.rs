//! The command line: parse, dispatch, report errors.

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;

/// Keeps the key broker in step with the Kata configuration of an SEV node: derives
/// the exact launch QEMU performs for each Kata runtime class and computes its
/// SEV, SEV-ES or SNP launch digest.
#[derive(Debug, Parser)]
#[command(name = "host-agent", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute one launch digest from firmware, kernel, initrd and command line.
    ///
    /// A drop-in for `sev-snp-measure`: the same options, and only the digest on
    /// standard output.
    Measure(crate::measure_cmd::MeasureArgs),
    /// Derive the launches that Kata configuration files yield (artefacts, kernel
    /// command line, vCPUs) and print their launch digests.
    Digests(crate::digests_cmd::DigestsArgs),
    /// Run the daemon: follow the Kata configuration files and the artefacts
    /// they name, and keep the key broker's digests for this node in step.
    ///
    /// Under systemd (Type=notify) it reports READY after the first full
    /// registration, STATUS lines saying what it does, and pings the watchdog;
    /// it logs to the journal there and readable lines on a terminal otherwise.
    /// SIGTERM or SIGINT stops it cleanly.
    Run(crate::agent::RunArgs),
    /// Register this node's digests, the image signature policy, the cosign key
    /// and the key of encrypted images with the key broker, once. Safe to run
    /// again.
    Provision(crate::provision::ProvisionArgs),
    /// Show what the running agent derived and registered, errors and drift.
    Status(crate::status_cmd::StatusArgs),
    /// Edit Kata configuration files in place: guest pre-attestation and image
    /// signature verification on or off.
    Kata(crate::kata_cmd::KataArgs),
    /// Sign container images and verify their signatures, in cosign's formats
    /// (key pairs, simple-signing payloads under the `sha256-<digest>.sig` tag).
    Cosign(crate::cosign_cmd::CosignArgs),
    /// Knative settings for confidential services (the queue-proxy sidecar
    /// image by digest).
    Knative(crate::knative_cmd::KnativeArgs),
}

/// Parses `args` (including the program name) and runs the command, writing its
/// output to `out`. Usage errors come back as `clap::Error`, others as anyhow.
pub fn run<I, T>(args: I, out: &mut dyn Write) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    match &cli.command {
        Command::Measure(a) => crate::measure_cmd::run(a, out),
        Command::Digests(a) => crate::digests_cmd::run(a, out),
        Command::Kata(a) => crate::kata_cmd::run(a, out),
        Command::Run(a) => crate::agent::run(a),
        Command::Provision(a) => crate::provision::run(a, out),
        Command::Status(a) => crate::status_cmd::run(a, out),
        Command::Cosign(a) => crate::cosign_cmd::run(a, out),
        Command::Knative(a) => crate::knative_cmd::run(a, out),
    }
}
