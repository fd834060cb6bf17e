//! The ATTESTATION_REPORT structure of the SEV-SNP firmware ABI: its fixed
//! 0x4A0-byte layout, the guest policy and flag words it carries, and the
//! CPUID identification that newer report versions include.

use crate::product::Product;
use crate::tcb::RawTcb;

/// Length in bytes of an attestation report as the firmware returns it.
pub const REPORT_LEN: usize = 0x4A0;

/// Length of the prefix of a report covered by its signature (bytes 0..0x2A0).
pub const SIGNED_LEN: usize = 0x2A0;

/// The oldest report version this crate decodes. Versions 0 and 1 predate the
/// published layout.
pub const MIN_VERSION: u32 = 2;

/// `signature_algo` value for ECDSA P-384 with SHA-384, the only algorithm the
/// firmware uses to sign reports.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Why a byte string is not an attestation report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The input is not exactly [`REPORT_LEN`] bytes.
    #[error("attestation report is {found} bytes, expected {expected}")]
    Length {
        /// Bytes received.
        found: usize,
        /// Bytes required ([`REPORT_LEN`]).
        expected: usize,
    },
    /// The `version` field is older than any published layout.
    #[error("attestation report field `version` is {version}; versions below {MIN_VERSION} are not supported")]
    Version {
        /// The version found.
        version: u32,
    },
}

/// The guest policy word fixed at launch (SNP_LAUNCH_START) and echoed in every
/// report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    fn bit(self, n: u32) -> bool {
        (self.0 >> n) & 1 == 1
    }

    /// Minimum ABI minor version the guest requires (bits 0-7).
    pub fn abi_minor(self) -> u8 {
        (self.0 & 0xFF) as u8
    }

    /// Minimum ABI major version the guest requires (bits 8-15).
    pub fn abi_major(self) -> u8 {
        ((self.0 >> 8) & 0xFF) as u8
    }

    /// SMT may be enabled on the host (bit 16).
    pub fn smt_allowed(self) -> bool {
        self.bit(16)
    }

    /// The reserved bit 17, which the firmware requires to be 1.
    pub fn reserved_bit17(self) -> bool {
        self.bit(17)
    }

    /// A migration agent may be associated with the guest (bit 18).
    pub fn migrate_ma(self) -> bool {
        self.bit(18)
    }

    /// Debugging is allowed: the host can read and write guest memory (bit 19).
    pub fn debug(self) -> bool {
        self.bit(19)
    }

    /// The guest may only run on a single socket (bit 20).
    pub fn single_socket(self) -> bool {
        self.bit(20)
    }

    /// CXL memory may be populated with guest data (bit 21).
    pub fn cxl_allowed(self) -> bool {
        self.bit(21)
    }

    /// AES-256-XTS memory encryption is required (bit 22).
    pub fn mem_aes_256_xts(self) -> bool {
        self.bit(22)
    }

    /// Running Average Power Limit must be disabled (bit 23).
    pub fn rapl_disabled(self) -> bool {
        self.bit(23)
    }

    /// Ciphertext hiding must be enabled (bit 24).
    pub fn ciphertext_hiding(self) -> bool {
        self.bit(24)
    }

    /// Guest page swapping is disabled (bit 25).
    pub fn page_swap_disabled(self) -> bool {
        self.bit(25)
    }
}

/// Which key signed a report (bits 2-4 of the report's flags word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningKey {
    /// The chip's Versioned Chip Endorsement Key.
    Vcek,
    /// A Versioned Loaded Endorsement Key, provisioned by a cloud provider.
    Vlek,
    /// The report is unsigned.
    None,
    /// A value the ABI reserves.
    Reserved(u8),
}

impl std::fmt::Display for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Vcek => f.write_str("VCEK"),
            Self::Vlek => f.write_str("VLEK"),
            Self::None => f.write_str("none"),
            Self::Reserved(v) => write!(f, "reserved value {v}"),
        }
    }
}

/// The report's flags word at offset 0x48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReportFlags(pub u32);

impl ReportFlags {
    /// The digest of the author key is present in `author_key_digest` (bit 0).
    pub fn author_key_en(self) -> bool {
        self.0 & 1 == 1
    }

    /// The platform masks the chip key (bit 1, MASK_CHIP_KEY): the firmware
    /// did not sign the report, whose signature is then zero. (A masked chip
    /// id, MASK_CHIP_ID, shows only as a `chip_id` of zeros.)
    pub fn mask_chip_key(self) -> bool {
        (self.0 >> 1) & 1 == 1
    }

    /// The key that signed the report (bits 2-4).
    pub fn signing_key(self) -> SigningKey {
        match ((self.0 >> 2) & 0b111) as u8 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            other => SigningKey::Reserved(other),
        }
    }
}

/// The CPUID identification of the chip that produced the report (report
/// version 3 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cpuid {
    /// Family: extended family plus base family, as CPUID 0x8000_0001 combines them.
    pub family: u8,
    /// Model: extended model and base model combined.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}

impl Cpuid {
    /// The EPYC generation of this CPU, or `None` for a family or model this
    /// crate does not know.
    pub fn product(&self) -> Option<Product> {
        match (self.family, self.model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }
}

/// The ECDSA signature over the first [`SIGNED_LEN`] bytes of a report, as
/// stored in it: both scalars little-endian and zero-padded to 72 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReportSignature {
    /// The `r` scalar, little-endian.
    pub r: [u8; 72],
    /// The `s` scalar, little-endian.
    pub s: [u8; 72],
}

impl std::fmt::Debug for ReportSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportSignature")
            .field("r", &Hex(&self.r))
            .field("s", &Hex(&self.s))
            .finish()
    }
}

/// Lowercase hexadecimal rendering for `Debug` of long byte arrays.
struct Hex<'a>(&'a [u8]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A decoded SEV-SNP attestation report. Fields are in the order of the ABI
/// table; reserved areas are not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationReport {
    /// Report format version (2, 3 and 5 are in use).
    pub version: u32,
    /// The guest's security version number from its ID block.
    pub guest_svn: u32,
    /// The guest policy fixed at launch.
    pub policy: GuestPolicy,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// The VMPL the report was requested from.
    pub vmpl: u32,
    /// Signature algorithm; 1 is ECDSA P-384 with SHA-384.
    pub signature_algo: u32,
    /// The platform's current TCB.
    pub current_tcb: RawTcb,
    /// Platform information word (SMT enabled, TSME enabled, ...).
    pub platform_info: u64,
    /// Flags: author key, chip-ID masking, signing key.
    pub flags: ReportFlags,
    /// The 64 bytes the guest supplied with its request.
    pub report_data: [u8; 64],
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// Data the host supplied at launch.
    pub host_data: [u8; 32],
    /// SHA-384 of the ID public key that signed the ID block.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author public key that certified the ID key.
    pub author_key_digest: [u8; 48],
    /// The guest's report ID.
    pub report_id: [u8; 32],
    /// The report ID of the guest's migration agent.
    pub report_id_ma: [u8; 32],
    /// The TCB the signing key was derived from.
    pub reported_tcb: RawTcb,
    /// CPUID identification; `Some` only for report version 3 and later.
    pub cpuid: Option<Cpuid>,
    /// The chip's identifier, or zeros when the platform masks it (MASK_CHIP_ID).
    pub chip_id: [u8; 64],
    /// The platform's committed TCB.
    pub committed_tcb: RawTcb,
    /// Current firmware version as (major, minor, build).
    pub current_version: (u8, u8, u8),
    /// Committed firmware version as (major, minor, build).
    pub committed_version: (u8, u8, u8),
    /// The current TCB when the guest was launched or imported.
    pub launch_tcb: RawTcb,
    /// The firmware's signature over bytes 0..[`SIGNED_LEN`].
    pub signature: ReportSignature,
}

/// Reads fixed-size fields out of a buffer already checked to be
/// [`REPORT_LEN`] bytes long; the offsets are constants below that length.
struct Fields<'a>(&'a [u8; REPORT_LEN]);

impl Fields<'_> {
    fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.0.get(offset..offset + N) {
            out.copy_from_slice(src);
        }
        out
    }

    fn u8(&self, offset: usize) -> u8 {
        self.0.get(offset).copied().unwrap_or(0)
    }

    fn u32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.array(offset))
    }

    fn u64(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.array(offset))
    }
}

impl AttestationReport {
    /// Decodes a report. The input must be exactly [`REPORT_LEN`] bytes and
    /// of version 2 or later; no other field is judged here.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReportError> {
        let bytes: &[u8; REPORT_LEN] = bytes.try_into().map_err(|_| ReportError::Length {
            found: bytes.len(),
            expected: REPORT_LEN,
        })?;
        let f = Fields(bytes);
        let version = f.u32(0x00);
        if version < MIN_VERSION {
            return Err(ReportError::Version { version });
        }
        let cpuid = (version >= 3).then(|| Cpuid {
            family: f.u8(0x188),
            model: f.u8(0x189),
            stepping: f.u8(0x18A),
        });
        Ok(Self {
            version,
            guest_svn: f.u32(0x04),
            policy: GuestPolicy(f.u64(0x08)),
            family_id: f.array(0x10),
            image_id: f.array(0x20),
            vmpl: f.u32(0x30),
            signature_algo: f.u32(0x34),
            current_tcb: RawTcb(f.u64(0x38)),
            platform_info: f.u64(0x40),
            flags: ReportFlags(f.u32(0x48)),
            report_data: f.array(0x50),
            measurement: f.array(0x90),
            host_data: f.array(0xC0),
            id_key_digest: f.array(0xE0),
            author_key_digest: f.array(0x110),
            report_id: f.array(0x140),
            report_id_ma: f.array(0x160),
            reported_tcb: RawTcb(f.u64(0x180)),
            cpuid,
            chip_id: f.array(0x1A0),
            committed_tcb: RawTcb(f.u64(0x1E0)),
            // The ABI stores build, minor, major in ascending addresses.
            current_version: (f.u8(0x1EA), f.u8(0x1E9), f.u8(0x1E8)),
            committed_version: (f.u8(0x1EE), f.u8(0x1ED), f.u8(0x1EC)),
            launch_tcb: RawTcb(f.u64(0x1F0)),
            signature: ReportSignature {
                r: f.array(0x2A0),
                s: f.array(0x2E8),
            },
        })
    }

    /// Encodes the report back into the ABI layout, with zeros in every
    /// reserved area (and in the CPUID bytes when `cpuid` is `None`). Meant for
    /// tests and simulators; a report from firmware re-encodes to its own bytes
    /// only if its reserved areas were zero.
    pub fn to_bytes(&self) -> [u8; REPORT_LEN] {
        let mut out = [0u8; REPORT_LEN];
        let mut put = |offset: usize, src: &[u8]| {
            if let Some(dst) = out.get_mut(offset..offset + src.len()) {
                dst.copy_from_slice(src);
            }
        };
        put(0x00, &self.version.to_le_bytes());
        put(0x04, &self.guest_svn.to_le_bytes());
        put(0x08, &self.policy.0.to_le_bytes());
        put(0x10, &self.family_id);
        put(0x20, &self.image_id);
        put(0x30, &self.vmpl.to_le_bytes());
        put(0x34, &self.signature_algo.to_le_bytes());
        put(0x38, &self.current_tcb.0.to_le_bytes());
        put(0x40, &self.platform_info.to_le_bytes());
        put(0x48, &self.flags.0.to_le_bytes());
        put(0x50, &self.report_data);
        put(0x90, &self.measurement);
        put(0xC0, &self.host_data);
        put(0xE0, &self.id_key_digest);
        put(0x110, &self.author_key_digest);
        put(0x140, &self.report_id);
        put(0x160, &self.report_id_ma);
        put(0x180, &self.reported_tcb.0.to_le_bytes());
        if let Some(c) = self.cpuid {
            put(0x188, &[c.family, c.model, c.stepping]);
        }
        put(0x1A0, &self.chip_id);
        put(0x1E0, &self.committed_tcb.0.to_le_bytes());
        let (maj, min, build) = self.current_version;
        put(0x1E8, &[build, min, maj]);
        let (maj, min, build) = self.committed_version;
        put(0x1EC, &[build, min, maj]);
        put(0x1F0, &self.launch_tcb.0.to_le_bytes());
        put(0x2A0, &self.signature.r);
        put(0x2E8, &self.signature.s);
        out
    }

    /// The EPYC generation named by the report's CPUID fields; `None` for
    /// version 2 reports (which carry none) and for unknown models.
    pub fn product(&self) -> Option<Product> {
        self.cpuid.as_ref().and_then(Cpuid::product)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report buffer whose every field holds a distinct recognisable value.
    fn sample(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(0x00, &version.to_le_bytes());
        put(0x04, &7u32.to_le_bytes());
        put(0x08, &0x0003_0000_0000_1F00u64.to_le_bytes());
        put(0x10, &[0x11; 16]);
        put(0x20, &[0x22; 16]);
        put(0x30, &1u32.to_le_bytes());
        put(0x34, &1u32.to_le_bytes());
        put(0x38, &0x0102_0304_0506_0708u64.to_le_bytes());
        put(0x40, &0x3u64.to_le_bytes());
        put(0x48, &0b0000_0110u32.to_le_bytes());
        put(0x50, &[0x50; 64]);
        put(0x90, &[0x90; 48]);
        put(0xC0, &[0xC0; 32]);
        put(0xE0, &[0xE0; 48]);
        put(0x110, &[0x11; 48]);
        put(0x140, &[0x14; 32]);
        put(0x160, &[0x16; 32]);
        put(0x180, &0x1122_3344_5566_7788u64.to_le_bytes());
        put(0x188, &[0x19, 0x11, 0x01]);
        put(0x1A0, &[0x1A; 64]);
        put(0x1E0, &0x99u64.to_le_bytes());
        put(0x1E8, &[22, 55, 1]);
        put(0x1EC, &[21, 54, 1]);
        put(0x1F0, &0xAAu64.to_le_bytes());
        put(0x2A0, &[0x2A; 72]);
        put(0x2E8, &[0x2E; 72]);
        b
    }

    #[test]
    fn decodes_every_field_at_its_offset() {
        let r = AttestationReport::decode(&sample(3)).unwrap();
        assert_eq!(r.version, 3);
        assert_eq!(r.guest_svn, 7);
        assert_eq!(r.policy, GuestPolicy(0x0003_0000_0000_1F00));
        assert_eq!(r.family_id, [0x11; 16]);
        assert_eq!(r.image_id, [0x22; 16]);
        assert_eq!(r.vmpl, 1);
        assert_eq!(r.signature_algo, 1);
        assert_eq!(r.current_tcb, RawTcb(0x0102_0304_0506_0708));
        assert_eq!(r.platform_info, 3);
        assert!(!r.flags.author_key_en());
        assert!(r.flags.mask_chip_key());
        assert_eq!(r.flags.signing_key(), SigningKey::Vlek);
        assert_eq!(r.report_data, [0x50; 64]);
        assert_eq!(r.measurement, [0x90; 48]);
        assert_eq!(r.host_data, [0xC0; 32]);
        assert_eq!(r.id_key_digest, [0xE0; 48]);
        assert_eq!(r.author_key_digest, [0x11; 48]);
        assert_eq!(r.report_id, [0x14; 32]);
        assert_eq!(r.report_id_ma, [0x16; 32]);
        assert_eq!(r.reported_tcb, RawTcb(0x1122_3344_5566_7788));
        assert_eq!(
            r.cpuid,
            Some(Cpuid {
                family: 0x19,
                model: 0x11,
                stepping: 1
            })
        );
        assert_eq!(r.product(), Some(Product::Genoa));
        assert_eq!(r.chip_id, [0x1A; 64]);
        assert_eq!(r.committed_tcb, RawTcb(0x99));
        assert_eq!(r.current_version, (1, 55, 22));
        assert_eq!(r.committed_version, (1, 54, 21));
        assert_eq!(r.launch_tcb, RawTcb(0xAA));
        assert_eq!(r.signature.r, [0x2A; 72]);
        assert_eq!(r.signature.s, [0x2E; 72]);
    }

    #[test]
    fn encodes_back_to_the_same_bytes() {
        let bytes = sample(5);
        let r = AttestationReport::decode(&bytes).unwrap();
        assert_eq!(r.to_bytes().to_vec(), bytes);
    }

    #[test]
    fn version_2_has_no_cpuid() {
        let r = AttestationReport::decode(&sample(2)).unwrap();
        assert_eq!(r.cpuid, None);
        assert_eq!(r.product(), None);
    }

    #[test]
    fn refuses_wrong_length_and_old_versions() {
        let b = sample(3);
        assert_eq!(
            AttestationReport::decode(&b[..REPORT_LEN - 1]),
            Err(ReportError::Length {
                found: REPORT_LEN - 1,
                expected: REPORT_LEN
            })
        );
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            AttestationReport::decode(&longer),
            Err(ReportError::Length { .. })
        ));
        let err = AttestationReport::decode(&sample(1)).unwrap_err();
        assert_eq!(err, ReportError::Version { version: 1 });
        assert!(err.to_string().contains("`version`"));
    }

    #[test]
    fn policy_bits() {
        let p = GuestPolicy(0x0003_0000 | 0x0205);
        assert_eq!(p.abi_minor(), 5);
        assert_eq!(p.abi_major(), 2);
        assert!(p.smt_allowed());
        assert!(p.reserved_bit17());
        assert!(!p.migrate_ma());
        assert!(!p.debug());
        let all = [
            (18, GuestPolicy::migrate_ma as fn(GuestPolicy) -> bool),
            (19, GuestPolicy::debug),
            (20, GuestPolicy::single_socket),
            (21, GuestPolicy::cxl_allowed),
            (22, GuestPolicy::mem_aes_256_xts),
            (23, GuestPolicy::rapl_disabled),
            (24, GuestPolicy::ciphertext_hiding),
            (25, GuestPolicy::page_swap_disabled),
        ];
        for (bit, get) in all {
            assert!(get(GuestPolicy(1 << bit)), "bit {bit}");
            assert!(!get(GuestPolicy(!(1u64 << bit))), "bit {bit} cleared");
        }
    }

    #[test]
    fn signing_key_values() {
        assert_eq!(ReportFlags(0).signing_key(), SigningKey::Vcek);
        assert_eq!(ReportFlags(1 << 2).signing_key(), SigningKey::Vlek);
        assert_eq!(ReportFlags(7 << 2).signing_key(), SigningKey::None);
        assert_eq!(ReportFlags(3 << 2).signing_key(), SigningKey::Reserved(3));
        assert!(ReportFlags(1).author_key_en());
        assert!(!ReportFlags(1).mask_chip_key());
    }

    #[test]
    fn cpuid_products() {
        let p = |family, model| {
            Cpuid {
                family,
                model,
                stepping: 0,
            }
            .product()
        };
        assert_eq!(p(0x19, 0x01), Some(Product::Milan));
        assert_eq!(p(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(p(0x19, 0xA0), Some(Product::Genoa));
        assert_eq!(p(0x1A, 0x02), Some(Product::Turin));
        assert_eq!(p(0x1A, 0x11), Some(Product::Turin));
        assert_eq!(p(0x1A, 0x50), None);
        assert_eq!(p(0x19, 0x20), None);
        assert_eq!(p(0x17, 0x01), None);
    }
}
