//! What the host's Linux kernel puts into an SEV-ES or SNP guest's initial VMSAs.
//!
//! QEMU asks KVM to create the vCPUs, and KVM, not QEMU, fills two things the PSP
//! measures: the SEV features word (`SEV_FEATURES`) and the x87/SSE area. Both
//! changed across kernel releases, so the same launch measures differently on
//! hosts with different kernels (sev-snp-measure's `--guest-features` and its
//! 0.0.10 VMSA change follow the same history):
//!
//! - SEV features for SNP: `SNP_ACTIVE` (0x1) before Linux 6.6; 6.6 and 6.7 turn
//!   on DebugSwap (0x20) by default where the CPU has it, giving 0x21; 6.8 turns
//!   it off by default again (0x1).
//! - x87/SSE state: from 6.10 KVM writes the vCPU's reset FPU state (FCW 0x37f,
//!   MXCSR 0x1f80) into the VMSA; earlier kernels leave it zero.

use crate::vmsa::VmsaFpu;
use std::fmt;

/// The SNP_ACTIVE bit of the VMSA's SEV features.
pub const SNP_ACTIVE: u64 = 0x1;
/// The DebugSwap bit of the VMSA's SEV features.
pub const DEBUG_SWAP: u64 = 0x20;

/// A Linux kernel release, major and minor, as `uname -r` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRelease {
    /// Major version (6 in 6.8.0-45-generic).
    pub major: u32,
    /// Minor version (8 in 6.8.0-45-generic).
    pub minor: u32,
}

impl KernelRelease {
    /// Reads the leading `MAJOR.MINOR` of a release string such as
    /// `6.8.0-45-generic` or `6.12.9+bpo-amd64`; `None` when it does not start so.
    pub fn parse(release: &str) -> Option<KernelRelease> {
        let mut parts = release.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor_text = parts.next()?;
        let digits: String = minor_text
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let minor = digits.parse().ok()?;
        Some(KernelRelease { major, minor })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// The SEV features KVM gives an SNP guest's vCPUs by default.
    pub fn snp_guest_features(self) -> u64 {
        if self.at_least(6, 6) && !self.at_least(6, 8) {
            SNP_ACTIVE | DEBUG_SWAP
        } else {
            SNP_ACTIVE
        }
    }

    /// The x87/SSE state KVM writes into the VMSAs.
    pub fn vmsa_fpu(self) -> VmsaFpu {
        if self.at_least(6, 10) {
            VmsaFpu::Reset
        } else {
            VmsaFpu::Zero
        }
    }
}

impl fmt::Display for KernelRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> KernelRelease {
        KernelRelease::parse(s).unwrap()
    }

    #[test]
    fn parses_distribution_release_strings() {
        assert_eq!(k("6.8.0-45-generic"), KernelRelease { major: 6, minor: 8 });
        assert_eq!(
            k("6.12.9+bpo-amd64"),
            KernelRelease {
                major: 6,
                minor: 12
            }
        );
        assert_eq!(
            k("6.10"),
            KernelRelease {
                major: 6,
                minor: 10
            }
        );
        assert_eq!(
            k("5.19rc1"),
            KernelRelease {
                major: 5,
                minor: 19
            }
        );
        assert_eq!(KernelRelease::parse("linux"), None);
        assert_eq!(KernelRelease::parse("6"), None);
        assert_eq!(KernelRelease::parse("6.x"), None);
        assert_eq!(KernelRelease::parse(""), None);
    }

    #[test]
    fn guest_features_follow_the_debug_swap_default() {
        assert_eq!(k("6.5.0").snp_guest_features(), 0x1);
        assert_eq!(k("6.6.0").snp_guest_features(), 0x21);
        assert_eq!(k("6.7.12").snp_guest_features(), 0x21);
        assert_eq!(k("6.8.0").snp_guest_features(), 0x1);
        assert_eq!(k("6.16.0").snp_guest_features(), 0x1);
    }

    #[test]
    fn fpu_state_from_6_10() {
        assert_eq!(k("6.9.12").vmsa_fpu(), VmsaFpu::Zero);
        assert_eq!(k("6.10.0").vmsa_fpu(), VmsaFpu::Reset);
        assert_eq!(k("7.0.0").vmsa_fpu(), VmsaFpu::Reset);
        assert_eq!(k("5.19.0").vmsa_fpu(), VmsaFpu::Zero);
    }
}
