//! The command line of `guest-image`.

use crate::add::AddSpec;
use crate::digests::{self, HostOptions};
use crate::{epoch, initrd, rootfs};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// Puts files (the guest client and its unit) into a Kata guest initrd or rootfs,
/// reproducibly, and prints the launch digests the new initrd measures to.
#[derive(Debug, Parser)]
#[command(name = "guest-image", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a new gzip'd newc cpio initrd: the input's entries byte for byte, plus the added files.
    Initrd(InitrdArgs),
    /// Copy files into a rootfs directory (for guests that boot a disk image; not measured).
    Rootfs(RootfsArgs),
}

/// Options of `guest-image initrd`.
#[derive(Debug, Args)]
pub struct InitrdArgs {
    /// The initrd to start from (gzip'd or plain newc cpio).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// The new initrd to write (replaced atomically).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// A file to add: SRC:DEST[:MODE], MODE in octal. Without MODE a replaced file
    /// keeps its permissions; a new one gets 0755 if SRC is executable, else 0644.
    #[arg(long = "add", value_name = "SRC:DEST[:MODE]", required = true, value_parser = parse_add)]
    pub adds: Vec<AddSpec>,
    /// A Kata configuration: print the launches and digests it yields with its
    /// initrd replaced by the new one.
    #[arg(long, value_name = "FILE")]
    pub kata_config: Option<PathBuf>,
    /// Pod CPU limits to derive launches for (as `host-agent digests`), comma-separated.
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "0",
        requires = "kata_config"
    )]
    pub pod_cpus: Vec<u32>,
    /// Host CPU signature (CPUID 1 EAX) for SEV-ES guests; read from /proc/cpuinfo when not given.
    #[arg(long, value_name = "VALUE", value_parser = host_agent::measure_cmd::parse_auto_base, requires = "kata_config")]
    pub host_cpu_sig: Option<u64>,
    /// The host runs in FIPS mode; read from /proc/sys/crypto/fips_enabled when not given.
    #[arg(long, requires = "kata_config")]
    pub fips: Option<bool>,
    /// Print the launches as JSON.
    #[arg(long, requires = "kata_config")]
    pub json: bool,
}

/// Options of `guest-image rootfs`.
#[derive(Debug, Args)]
pub struct RootfsArgs {
    /// The rootfs directory.
    #[arg(long, value_name = "ROOTFS")]
    pub dir: PathBuf,
    /// A file to add: SRC:DEST[:MODE], as for `initrd`.
    #[arg(long = "add", value_name = "SRC:DEST[:MODE]", required = true, value_parser = parse_add)]
    pub adds: Vec<AddSpec>,
}

fn parse_add(s: &str) -> Result<AddSpec, String> {
    AddSpec::parse(s).map_err(|e| e.to_string())
}

/// Runs the command; what was done goes to `log`, digests to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write, log: &mut dyn Write) -> anyhow::Result<()> {
    let mtime = epoch::mtime_from_env()?;
    match &cli.command {
        Command::Initrd(a) => {
            let built = initrd::build(&a.input, &a.output, &a.adds, mtime)?;
            for c in &built.changes {
                writeln!(log, "{c}")?;
            }
            writeln!(
                log,
                "wrote {} ({} entries, {} bytes uncompressed)",
                a.output.display(),
                built.entries,
                built.archive_bytes
            )?;
            if let Some(config) = &a.kata_config {
                let host = HostOptions {
                    pod_cpus: a.pod_cpus.clone(),
                    host_cpu_sig: a.host_cpu_sig,
                    fips: a.fips,
                };
                let reports = digests::reports_with_initrd(config, &a.output, &host)?;
                host_agent::digests_cmd::print_reports(&reports, a.json, out)?;
            }
        }
        Command::Rootfs(a) => {
            for c in rootfs::add(&a.dir, &a.adds, mtime)? {
                writeln!(log, "{c}")?;
            }
        }
    }
    Ok(())
}
