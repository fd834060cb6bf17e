//! Trustee as the relying party for SNP guests: the broker is the single
//! writer of the reference values Trustee checks SNP evidence against
//! (`snp_launch_measurement` and the four TCB names), and keeps them equal to
//! what the fleet's nodes registered and the operator pinned.
//!
//! `values` is the pure part (what Trustee should hold, how it differs from
//! what it holds), `token` the admin tokens, `client` the calls to a Trustee
//! KBS or a standalone RVPS, `sync` the writer that runs beside the broker, `lease` which
//! replica of a shared database runs it.

pub mod client;
pub mod lease;
pub mod status;
pub mod sync;
pub mod token;
pub mod values;

pub use sync::Board;
