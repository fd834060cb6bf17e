//! Pure SEV launch measurement.
//!
//! This crate computes the launch digests the AMD PSP produces for SEV, SEV-ES and
//! SNP guests, from a firmware image in memory, the SHA-256 digests of the kernel,
//! initrd and command line, and the VM's shape. It does no I/O: callers read and
//! hash files however suits them (the host agent streams them in parallel).
//!
//! ```
//! use sev_core::{firmware::Firmware, measure::*, vcpu::VcpuSignature, vmsa::VmmType};
//! let image = vec![0u8; 64 * 1024]; // a firmware image with no SEV footer
//! let fw = Firmware::parse(&image).unwrap();
//! let shape = VmShape { vcpus: 1, vcpu_sig: VcpuSignature(0), guest_features: 0, vmm: VmmType::Qemu, fpu: Default::default() };
//! let digest = launch_digest(&fw, SevMode::Sev, None, &shape).unwrap();
//! assert_eq!(digest.as_bytes().len(), 32);
//! ```

pub mod cert;
pub mod firmware;
pub mod gctx;
pub mod guid;
pub mod hashes;
pub mod host_kernel;
pub mod image;
pub mod measure;
pub mod policy;
pub mod secret_table;
pub mod session;
pub mod svsm;
#[cfg(test)]
mod test_image;
pub mod vcpu;
pub mod vmsa;

pub use firmware::Firmware;
pub use guid::Guid;
pub use hashes::KernelHashes;
pub use image::FirmwareImage;
pub use measure::{launch_digest, LaunchDigest, MeasureError, Measurement, SevMode, VmShape};
pub use svsm::{SvsmError, SvsmLaunch};
pub use vcpu::VcpuSignature;
pub use vmsa::{VmmType, VmsaFpu};
