//! `kbs` binary: parse, validate, then serve or run an admin command.

use clap::Parser;
use kbs::cli::{Cli, Command, ConfigError};
use std::process::ExitCode;

/// Exit status for a configuration the kbs refuses (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("kbs: error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Admin(args)) = cli.command {
        let runtime = match runtime() {
            Ok(r) => r,
            Err(code) => return code,
        };
        return match runtime.block_on(kbs::admin_cli::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kbs: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let outcome = if let Some(Command::ImportEmbedded(storage)) = cli.command {
        // The copy runs on this thread; the database pool needs no runtime.
        kbs::cli::import_embedded(&storage)
    } else {
        match runtime() {
            Ok(r) => r.block_on(kbs::cli::serve(cli.serve)),
            Err(code) => return code,
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kbs: error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
