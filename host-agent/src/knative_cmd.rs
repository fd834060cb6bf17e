//! `host-agent knative`: the Knative side of a confidential service.

use clap::{Args, Subcommand};
use std::io::Write;

/// Options of `host-agent knative`.
#[derive(Debug, Args)]
pub struct KnativeArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KnativeCommand,
}

/// Subcommands of `host-agent knative`.
#[derive(Debug, Subcommand)]
pub enum KnativeCommand {}

/// Runs `host-agent knative`.
pub fn run(a: &KnativeArgs, _out: &mut dyn Write) -> anyhow::Result<()> {
    match a.command {}
}
