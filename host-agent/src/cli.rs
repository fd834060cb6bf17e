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
    }
}
