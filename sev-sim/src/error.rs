//! The error type shared by the simulated roots, platform, PSP and guest view.
//!
//! Every refusal of the simulated PSP is its own variant, so that tests can
//! tell "the session was forged" from "the table was malformed".

use std::path::PathBuf;

/// Why the simulated SEV platform refused or failed an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// OpenSSL failed in one step (key generation, signing, ECDH, AES).
    #[error("OpenSSL failed while {step}: {source}")]
    Crypto {
        /// The step that failed.
        step: &'static str,
        /// OpenSSL's error queue.
        #[source]
        source: openssl::error::ErrorStack,
    },

    /// A certificate could not be encoded in the SEV or AMD CA format.
    #[error("cannot encode the {cert} certificate: {reason}")]
    CertEncoding {
        /// Which certificate (ARK, ASK, CEK, OCA, PEK, PDH).
        cert: &'static str,
        /// What did not fit.
        reason: &'static str,
    },

    /// LAUNCH_START: the guest owner's Diffie-Hellman certificate is unusable.
    #[error("LAUNCH_START: the guest owner's DH certificate is unusable: {0}")]
    BadGodh(&'static str),

    /// LAUNCH_START: the session blob does not have its 128 bytes.
    #[error("LAUNCH_START: the launch session blob is {0} bytes, expected 128")]
    BlobLength(usize),

    /// LAUNCH_START: the guest policy asks for newer firmware than the platform runs.
    #[error(
        "LAUNCH_START: policy {policy:#010x} requires firmware API {need_major}.{need_minor}, \
         the platform runs {api_major}.{api_minor}"
    )]
    PolicyFirmware {
        /// The guest policy of the launch.
        policy: u32,
        /// Minimum API major version the policy asks for.
        need_major: u8,
        /// Minimum API minor version the policy asks for.
        need_minor: u8,
        /// The platform's API major version.
        api_major: u8,
        /// The platform's API minor version.
        api_minor: u8,
    },

    /// LAUNCH_START: `wrap_mac` does not authenticate `wrap_tk` under the KIK
    /// (another PDH, a changed nonce or wrapped keys, or a forged session).
    #[error("LAUNCH_START: wrap_mac does not authenticate the wrapped TEK/TIK")]
    WrapMac,

    /// LAUNCH_START: `policy_mac` does not authenticate the launch's policy under the TIK.
    #[error("LAUNCH_START: policy_mac does not match policy {policy:#010x}")]
    PolicyMac {
        /// The policy the launch was started with.
        policy: u32,
    },

    /// LAUNCH_SECRET was called before LAUNCH_MEASURE.
    #[error("LAUNCH_SECRET before LAUNCH_MEASURE: there is no measurement to bind the packet to")]
    NotMeasured,

    /// LAUNCH_SECRET: the packet header does not have its 52 bytes.
    #[error("LAUNCH_SECRET: the packet header is {0} bytes, expected 52")]
    SecretHeaderLength(usize),

    /// LAUNCH_SECRET: the ciphertext length is not one the guest's secret area takes.
    #[error("LAUNCH_SECRET: {len} bytes of secret: {reason}")]
    SecretLength {
        /// The ciphertext length.
        len: usize,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// LAUNCH_SECRET: the packet MAC does not match (tampered header or
    /// ciphertext, another TIK, or another measurement).
    #[error("LAUNCH_SECRET: the packet MAC does not match")]
    SecretMac,

    /// LAUNCH_SECRET: header flags the PSP does not support (compression).
    #[error("LAUNCH_SECRET: unsupported header flags {0:#x}")]
    SecretFlags(u32),

    /// The secret table is shorter than its header.
    #[error("secret table is {len} bytes, shorter than its 20-byte header")]
    TableTruncated {
        /// Bytes available.
        len: usize,
    },

    /// The secret table does not start with the table header GUID.
    #[error("secret table starts with GUID {found}, not 1e74f542-71dd-4d66-963e-ef4287ff173b")]
    TableGuid {
        /// The GUID found instead.
        found: String,
    },

    /// The table header's length is smaller than the header or larger than the area.
    #[error(
        "secret table header declares {declared} bytes, but {available} are available (minimum 20)"
    )]
    TableLength {
        /// Length in the header.
        declared: u32,
        /// Bytes of the area.
        available: usize,
    },

    /// An entry's length is smaller than its header or runs past the table.
    #[error(
        "secret table entry {index} declares {declared} bytes, {remaining} remain (minimum 20)"
    )]
    TableEntry {
        /// Entry position, from 0.
        index: usize,
        /// Length in the entry header.
        declared: u32,
        /// Bytes left in the table at that entry.
        remaining: usize,
    },

    /// Bytes inside the declared table length that do not form an entry.
    #[error("secret table has {remaining} stray bytes after entry {index}")]
    TableTrailing {
        /// Number of entries before the stray bytes.
        index: usize,
        /// Stray bytes.
        remaining: usize,
    },

    /// Non-zero bytes after the table's declared length (padding must be zero).
    #[error("secret table has a non-zero byte at offset {offset}, after its declared length")]
    TablePadding {
        /// Offset of the first non-zero padding byte.
        offset: usize,
    },

    /// More entries than the guest's `efi_secret` module exposes.
    #[error("secret table has more than {max} entries")]
    TooManyEntries {
        /// The limit (64).
        max: usize,
    },

    /// Two entries with one GUID (the guest cannot create both files).
    #[error("secret table has two entries with GUID {guid}")]
    DuplicateEntry {
        /// The repeated GUID.
        guid: String,
    },

    /// An entry or table too large for the u32 length fields.
    #[error("secret table entry {guid} is too large")]
    EntryTooLarge {
        /// The entry's GUID.
        guid: String,
    },

    /// Text that is not a GUID.
    #[error("not a GUID: {0:?}")]
    GuidText(String),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The `sev` crate could not compute a launch digest.
    #[error("launch digest: {0}")]
    Measurement(#[source] sev::error::MeasurementError),

    /// The command line has leading or trailing whitespace: the `sev` crate
    /// trims it before hashing, QEMU does not, so its digest would be wrong.
    #[error(
        "the kernel command line has leading or trailing whitespace, which the sev crate \
         trims (QEMU does not): refusing to compute a wrong digest"
    )]
    CmdlineWhitespace,
}

/// Wraps an OpenSSL error with the step that failed.
pub(crate) fn crypto(step: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> SimError {
    move |source| SimError::Crypto { step, source }
}
