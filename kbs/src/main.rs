//! The key broker (relying party) for SEV pre-attestation.
//!
//! Not built yet: this binary only reserves the name and says so, so that nobody
//! mistakes it for a working broker.

fn main() -> std::process::ExitCode {
    eprintln!("kbs: the key broker is not implemented yet");
    std::process::ExitCode::from(2)
}
