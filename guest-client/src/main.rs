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
                ExitCode::from(u8::try_from(c.exit_code()).unwrap_or(2))
            }
            None => {
                eprintln!("guest-client: error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
