//! SEV-SNP attestation: the report a guest obtains from its PSP, the
//! certificates that vouch for the chip's signing key, and their verification
//! against AMD's roots. Pure: no I/O, no clock.
//!
//! A verifier typically does:
//!
//! ```no_run
//! # fn demo(report: &[u8], table: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use snp_attestation::{decode_cert_table, verify, CertChain, TrustedRoots};
//! let chain = CertChain::from_table(&decode_cert_table(table)?);
//! let verified = verify(report, &chain, &TrustedRoots::amd())?;
//! println!("{} report, measurement {:02x?}", verified.product, verified.report.measurement);
//! # Ok(()) }
//! ```

mod cert_table;
mod certs;
mod product;
mod report;
mod tcb;
mod verify;
mod x509;

pub use cert_table::{
    decode_cert_table, encode_cert_table, CertEntry, CertKind, CertTableError, MAX_ENTRIES,
    MAX_TABLE_LEN,
};
pub use certs::{der_from_pem_or_der, CertChain, CertError, RootKind, TrustedRoots};
pub use product::Product;
pub use report::{
    AttestationReport, Cpuid, GuestPolicy, ReportError, ReportFlags, ReportSignature, SigningKey,
    MIN_VERSION, REPORT_LEN, SIGNED_LEN, SIG_ALGO_ECDSA_P384_SHA384,
};
pub use tcb::{MinTcb, RawTcb, Tcb};
pub use verify::{verify, Verified, VerifyError};
