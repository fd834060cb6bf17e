//! Where the private key's passphrase comes from, as with cosign: the
//! `COSIGN_PASSWORD` environment variable when it is set (an empty value is an
//! empty passphrase), else the terminal, asked without echo. Without either
//! there is no passphrase to be had, and the error says how to give one.

use std::io::IsTerminal as _;
use thiserror::Error;
use zeroize::Zeroizing;

/// The environment variable cosign reads the passphrase from.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// Why no passphrase could be had.
#[derive(Debug, Error)]
pub enum PassphraseError {
    /// Neither the environment variable nor a terminal.
    #[error("no passphrase: set {PASSWORD_ENV} (it may be empty) or run on a terminal")]
    NoSource,
    /// The two entries differ.
    #[error("the passphrases entered do not match")]
    Mismatch,
    /// Reading the terminal failed.
    #[error("reading the passphrase from the terminal: {0}")]
    Terminal(std::io::Error),
}

/// The passphrase from [`PASSWORD_ENV`], if set.
pub fn from_env() -> Option<Zeroizing<Vec<u8>>> {
    use std::os::unix::ffi::OsStringExt as _;
    std::env::var_os(PASSWORD_ENV).map(|v| Zeroizing::new(v.into_vec()))
}

fn prompt(text: &str) -> Result<Zeroizing<Vec<u8>>, PassphraseError> {
    rpassword::prompt_password(text)
        .map(|s| Zeroizing::new(s.into_bytes()))
        .map_err(PassphraseError::Terminal)
}

/// The passphrase of a key about to be created: the environment, else asked
/// twice on the terminal.
pub fn for_new_key() -> Result<Zeroizing<Vec<u8>>, PassphraseError> {
    if let Some(p) = from_env() {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(PassphraseError::NoSource);
    }
    let first = prompt("Enter password for private key: ")?;
    let second = prompt("Enter password for private key again: ")?;
    if first != second {
        return Err(PassphraseError::Mismatch);
    }
    Ok(first)
}

/// The passphrase of an existing key: the environment, else asked once on the
/// terminal.
pub fn for_existing_key() -> Result<Zeroizing<Vec<u8>>, PassphraseError> {
    if let Some(p) = from_env() {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(PassphraseError::NoSource);
    }
    prompt("Enter password for private key: ")
}
