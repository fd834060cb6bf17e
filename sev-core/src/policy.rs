//! The SEV guest policy (AMD SEV API specification, "Guest Policy Structure").
//!
//! The policy is fixed at LAUNCH_START, bound into the launch blob's policy MAC and
//! into the launch measurement, and enforced by the firmware for the guest's life.

use std::fmt;

/// The 32-bit SEV guest policy.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GuestPolicy(pub u32);

impl GuestPolicy {
    /// Bit 0: debugging of the guest is disallowed.
    pub const NODBG: u32 = 1 << 0;
    /// Bit 1: sharing keys with other guests is disallowed.
    pub const NOKS: u32 = 1 << 1;
    /// Bit 2: SEV-ES is required.
    pub const ES: u32 = 1 << 2;
    /// Bit 3: sending the guest to another platform is disallowed.
    pub const NOSEND: u32 = 1 << 3;
    /// Bit 4: the guest must not be sent outside the domain.
    pub const DOMAIN: u32 = 1 << 4;
    /// Bit 5: the guest must not be sent to a non-SEV platform.
    pub const SEV: u32 = 1 << 5;
    /// Bits 6 to 15 are reserved and must be zero.
    pub const RESERVED: u32 = 0xffc0;

    /// Whether the guest may be debugged (NODBG clear): its memory can then be
    /// read by the host through the debug commands.
    pub fn debug_allowed(self) -> bool {
        self.0 & Self::NODBG == 0
    }

    /// Whether SEV-ES is required.
    pub fn es(self) -> bool {
        self.0 & Self::ES != 0
    }

    /// Whether any reserved bit is set.
    pub fn has_reserved_bits(self) -> bool {
        self.0 & Self::RESERVED != 0
    }

    /// Minimum firmware API major version the guest may run on (bits 16 to 23).
    pub fn min_api_major(self) -> u8 {
        self.0.to_le_bytes()[2]
    }

    /// Minimum firmware API minor version the guest may run on (bits 24 to 31).
    pub fn min_api_minor(self) -> u8 {
        self.0.to_le_bytes()[3]
    }
}

impl fmt::Debug for GuestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestPolicy({self})")
    }
}

impl fmt::Display for GuestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)?;
        let names = [
            (Self::NODBG, "NODBG"),
            (Self::NOKS, "NOKS"),
            (Self::ES, "ES"),
            (Self::NOSEND, "NOSEND"),
            (Self::DOMAIN, "DOMAIN"),
            (Self::SEV, "SEV"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect();
        if !set.is_empty() {
            write!(f, " ({})", set.join("|"))?;
        }
        if self.min_api_major() != 0 || self.min_api_minor() != 0 {
            write!(f, " api>={}.{}", self.min_api_major(), self.min_api_minor())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bits_and_api_version() {
        let p = GuestPolicy(0x0217_0003);
        assert!(!p.debug_allowed());
        assert!(!p.es());
        assert_eq!((p.min_api_major(), p.min_api_minor()), (0x17, 0x02));
        assert_eq!(p.to_string(), "0x2170003 (NODBG|NOKS) api>=23.2");
        assert!(GuestPolicy(0).debug_allowed());
        assert!(GuestPolicy(0x7).es());
        assert!(GuestPolicy(0x40).has_reserved_bits());
    }
}
