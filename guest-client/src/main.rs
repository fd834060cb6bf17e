//! The in-guest attestation client.
//!
//! Not built yet: this binary only reserves the name and says so.

fn main() -> std::process::ExitCode {
    eprintln!("guest-client: not implemented yet");
    std::process::ExitCode::from(2)
}
