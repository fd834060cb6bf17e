//! `guest-client` binary: the command line over the library.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = guest_client::cli::run(std::env::args_os(), &mut out);
    let _ = out.flush();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => match e.downcast_ref::<clap::Error>() {
            Some(c) => {
                let _ = c.print();
                // --help and --version exit 0; a usage error must not read
                // as "report undelivered" (2).
                if c.exit_code() == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(guest_client::cli::exit::USAGE)
                }
            }
            None => {
                eprintln!("guest-client: error: {e:#}");
                ExitCode::from(guest_client::cli::exit::INTERNAL)
            }
        },
    }
}
