//! vCPU identities that enter SEV-ES and SNP launch digests.
//!
//! QEMU puts the guest CPUID signature (family, model, stepping) in RDX of every
//! initial VMSA, so the digest depends on the CPU model the VM is started with: a
//! named model for SNP, and the host's own signature for `-cpu host`.

use std::fmt;

/// The 32-bit CPUID Fn0000_0001 EAX value (family, model, stepping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VcpuSignature(pub u32);

impl VcpuSignature {
    /// Encodes family, model and stepping as CPUID does: families above 0xf put the
    /// excess in the extended-family field, models split into low and high nibbles.
    pub fn from_family_model_stepping(family: u32, model: u32, stepping: u32) -> VcpuSignature {
        let (family_low, family_high) = if family > 0xf {
            (0xf, (family - 0xf) & 0xff)
        } else {
            (family, 0)
        };
        VcpuSignature(
            (family_high << 20)
                | (((model >> 4) & 0xf) << 16)
                | ((family_low & 0xf) << 8)
                | ((model & 0xf) << 4)
                | (stepping & 0xf),
        )
    }

    /// The family, model and stepping this signature encodes.
    pub fn family_model_stepping(self) -> (u32, u32, u32) {
        let s = self.0;
        let base_family = (s >> 8) & 0xf;
        let family = if base_family == 0xf {
            base_family + ((s >> 20) & 0xff)
        } else {
            base_family
        };
        let model = (((s >> 16) & 0xf) << 4) | ((s >> 4) & 0xf);
        (family, model, s & 0xf)
    }
}

impl fmt::Display for VcpuSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// QEMU's named AMD EPYC models and their signatures: the set `sev-snp-measure`
/// 0.0.13 accepts for `--vcpu-type`.
pub const VCPU_TYPES: &[(&str, u32, u32, u32)] = &[
    ("EPYC", 23, 1, 2),
    ("EPYC-v1", 23, 1, 2),
    ("EPYC-v2", 23, 1, 2),
    ("EPYC-IBPB", 23, 1, 2),
    ("EPYC-v3", 23, 1, 2),
    ("EPYC-v4", 23, 1, 2),
    ("EPYC-Rome", 23, 49, 0),
    ("EPYC-Rome-v1", 23, 49, 0),
    ("EPYC-Rome-v2", 23, 49, 0),
    ("EPYC-Rome-v3", 23, 49, 0),
    ("EPYC-Milan", 25, 1, 1),
    ("EPYC-Milan-v1", 25, 1, 1),
    ("EPYC-Milan-v2", 25, 1, 1),
    ("EPYC-Genoa", 25, 17, 0),
    ("EPYC-Genoa-v1", 25, 17, 0),
    ("EPYC-Turin", 26, 0, 0),
];

/// The signature of a named vCPU type (exact, case-sensitive name, as QEMU's `-cpu`).
pub fn vcpu_type_signature(name: &str) -> Option<VcpuSignature> {
    VCPU_TYPES
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, f, m, s)| VcpuSignature::from_family_model_stepping(*f, *m, *s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_signatures() {
        // EPYC (Naples): family 0x17 -> extended family 8, base 0xf.
        assert_eq!(
            vcpu_type_signature("EPYC-v4"),
            Some(VcpuSignature(0x0080_0f12))
        );
        assert_eq!(
            vcpu_type_signature("EPYC-Milan"),
            Some(VcpuSignature(0x00a0_0f11))
        );
        assert_eq!(
            vcpu_type_signature("EPYC-Genoa"),
            Some(VcpuSignature(0x00a1_0f10))
        );
        assert_eq!(
            vcpu_type_signature("EPYC-Turin"),
            Some(VcpuSignature(0x00b0_0f00))
        );
        assert_eq!(vcpu_type_signature("epyc-v4"), None);
    }

    #[test]
    fn round_trips_family_model_stepping() {
        for &(_, f, m, s) in VCPU_TYPES {
            let sig = VcpuSignature::from_family_model_stepping(f, m, s);
            assert_eq!(sig.family_model_stepping(), (f, m, s));
        }
    }
}
