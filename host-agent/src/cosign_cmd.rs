//! `host-agent cosign`: image signing compatible with cosign's key and signature
//! formats.

use clap::{Args, Subcommand};
use std::io::Write;

/// Options of `host-agent cosign`.
#[derive(Debug, Args)]
pub struct CosignArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CosignCommand,
}

/// Subcommands of `host-agent cosign`.
#[derive(Debug, Subcommand)]
pub enum CosignCommand {}

/// Runs `host-agent cosign`.
pub fn run(a: &CosignArgs, _out: &mut dyn Write) -> anyhow::Result<()> {
    match a.command {}
}
