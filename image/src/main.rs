//! `guest-image`: see the crate's README.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = guest_image::cli::Cli::parse();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    match guest_image::cli::run(&cli, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-image: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
