//! `host-agent` binary: the command line over the library.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = host_agent::cli::run(std::env::args_os(), &mut out);
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<clap::Error>() {
            // --help and --version come back as "errors" that print to stdout.
            Some(c) => {
                let _ = c.print();
                ExitCode::from(u8::try_from(c.exit_code()).unwrap_or(2))
            }
            None => {
                eprintln!("host-agent: error: {e:#}");
                // EX_USAGE for a configuration the agent refuses, so that systemd
                // stops restarting it (RestartPreventExitStatus=64).
                if e.downcast_ref::<host_agent::agent::config::ConfigError>()
                    .is_some()
                {
                    ExitCode::from(64)
                } else {
                    ExitCode::FAILURE
                }
            }
        },
    }
}
