//! Writes the sample artefacts and Kata configuration used by the quick start.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

/// Write a synthetic AmdSev-shaped firmware, kernel and initrd and a Kata SEV
/// configuration naming them, for trying the host agent on any machine.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Directory to write into (created if missing).
    #[arg(long, default_value = "target/sample")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let s = sample_artefacts::write_sample(&args.out)
        .with_context(|| format!("writing sample artefacts to {}", args.out.display()))?;
    println!("{}", s.config.display());
    Ok(())
}
