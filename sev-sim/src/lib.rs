//! A simulated AMD SEV platform for tests and the demo: it runs the whole
//! pre-attestation flow with real cryptography on machines without SEV.
//!
//! It plays
//! - AMD's root CA ([`FakeAmdRoots`]: an ARK and an ASK in AMD's CA format);
//! - a platform and its PSP ([`SimPlatform`], [`SimLaunch`]): the CEK, OCA,
//!   PEK and PDH chain, and LAUNCH_START, LAUNCH_MEASURE and LAUNCH_SECRET;
//! - the Kata shim's pre-attestation as a gRPC client of the KBS ([`shim`]);
//! - the guest's view of the injected secrets ([`efi_secret`], [`guest_view`]);
//! - an SEV-SNP chip for guests ([`snp_guest`]): fake AMD roots, a VCEK,
//!   signed attestation reports and a simulated `/dev/sev-guest` on a socket.
//!
//! The PSP side is written here against OpenSSL and shares no code with the
//! key broker's session cryptography, so the two check each other; launch
//! digests come from the `sev` crate ([`launch_digest_sev`]), a second
//! implementation beside the host agent's.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sev_sim::{shim, FakeAmdRoots, SimPlatform};
//! let roots = FakeAmdRoots::generate()?;
//! std::fs::write("ark.cert", roots.ark_cert())?; // the KBS's trust anchor
//! let platform = SimPlatform::new(&roots)?;
//! let launch = shim::ShimLaunch::offline("http://127.0.0.1:44444", 3, [0; 32], "KEYSET-1");
//! let outcome = shim::pre_attest(&platform, &launch).await?;
//! for (guid, data) in sev_sim::efi_secret::parse_table(&outcome.secret_table)? {
//!     println!("{guid}: {} bytes", data.len());
//! }
//! # Ok(()) }
//! ```

mod bytes;
pub mod efi_secret;
mod error;
pub mod guest_components;
pub mod guest_view;
pub mod kbs_process;
mod kdf;
mod measure;
mod platform;
mod psp;
mod roots;
mod sevcert;
pub mod shim;
pub mod snp_guest;
pub mod snp_platform;
pub mod tls_files;
pub mod trustee_process;

pub use error::SimError;
pub use measure::{launch_digest_sev, launch_digest_sev_es, CpuType};
pub use platform::{SimPlatform, DEFAULT_API_MAJOR, DEFAULT_API_MINOR, DEFAULT_BUILD};
pub use psp::{SessionBlob, SimLaunch, MAX_SECRET_LEN, SECRET_HEADER_LEN, SESSION_BLOB_LEN};
pub use roots::{FakeAmdRoots, RootKeySize};
