//! A simulated SEV-SNP platform's answer to SNP_PLATFORM_STATUS: the exact
//! 32 bytes the firmware writes for a given processor generation, firmware and
//! TCB, so that tests can check the host agent's decoding against a buffer
//! encoded independently of it.
//!
//! The two 8-byte TCBs are encoded by the `sev` crate's `TcbVersion` encoder,
//! whose layout depends on the generation (Milan and Genoa: boot loader, TEE,
//! four reserved bytes, SNP, microcode; Turin and Venice: FMC, boot loader,
//! TEE, SNP, three reserved bytes, microcode). The rest is laid out here by
//! hand from the SNP ABI's table, because the crate's encoder of the whole
//! status (8.0.0) leaves out the state byte and fails:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 1 | API major version |
//! | 0x01 | 1 | API minor version |
//! | 0x02 | 1 | state (0 UNINIT, 1 INIT) |
//! | 0x03 | 1 | RMP flags (bit 0: RMP initialised) |
//! | 0x04 | 4 | build id, little-endian |
//! | 0x08 | 4 | platform policy (bit 0 MASK_CHIP_ID, ...) |
//! | 0x0C | 4 | guest count |
//! | 0x10 | 8 | current (installed) TCB |
//! | 0x18 | 8 | reported TCB |
//!
//! ```
//! use sev_sim::snp_platform::{SimSnpPlatform, SnpProduct, SnpTcb};
//! let tcb = SnpTcb { fmc: None, bootloader: 7, tee: 0, snp: 21, microcode: 0xd1 };
//! let raw = SimSnpPlatform::new(SnpProduct::Genoa, tcb).snp_platform_status()?;
//! assert_eq!(raw[0x18], 7); // the reported TCB's boot loader SVN
//! # Ok::<(), sev_sim::snp_platform::SnpSimError>(())
//! ```

use crate::platform::{DEFAULT_API_MAJOR, DEFAULT_API_MINOR, DEFAULT_BUILD};
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser;
use sev::Generation;

/// Length of the SNP_PLATFORM_STATUS answer.
pub const SNP_STATUS_LEN: usize = 32;

/// An AMD EPYC generation with SEV-SNP; it decides the TCB layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnpProduct {
    /// Third generation EPYC (no FMC in the TCB).
    Milan,
    /// Fourth generation EPYC, Bergamo and Siena included (no FMC in the TCB).
    Genoa,
    /// Fifth generation EPYC (the TCB carries an FMC SVN).
    Turin,
    /// Sixth generation EPYC (Turin's TCB layout).
    Venice,
}

impl SnpProduct {
    /// Every product, oldest first.
    pub const ALL: [SnpProduct; 4] = [
        SnpProduct::Milan,
        SnpProduct::Genoa,
        SnpProduct::Turin,
        SnpProduct::Venice,
    ];

    /// The product's name as AMD writes it ("Milan", "Genoa", ...).
    pub fn name(self) -> &'static str {
        match self {
            SnpProduct::Milan => "Milan",
            SnpProduct::Genoa => "Genoa",
            SnpProduct::Turin => "Turin",
            SnpProduct::Venice => "Venice",
        }
    }

    /// Whether this product's TCB has an FMC SVN (Turin and later).
    pub fn has_fmc(self) -> bool {
        matches!(self, SnpProduct::Turin | SnpProduct::Venice)
    }

    /// The `sev` crate's name for the generation.
    fn generation(self) -> Generation {
        match self {
            SnpProduct::Milan => Generation::Milan,
            SnpProduct::Genoa => Generation::Genoa,
            SnpProduct::Turin => Generation::Turin,
            SnpProduct::Venice => Generation::Venice,
        }
    }
}

/// A TCB version: the security version numbers of the platform's firmware
/// components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnpTcb {
    /// SVN of the FMC firmware: `Some` exactly on Turin and later.
    pub fmc: Option<u8>,
    /// SVN of the PSP boot loader.
    pub bootloader: u8,
    /// SVN of the PSP operating system.
    pub tee: u8,
    /// SVN of the SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
}

/// Why a status could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnpSimError {
    /// The TCB has an FMC SVN on a product whose layout has none, or lacks it
    /// on one whose layout has it.
    #[error(
        "the {tcb} TCB {} an FMC SVN, but a {} TCB {} one",
        if *has_fmc { "has" } else { "lacks" },
        product.name(),
        if product.has_fmc() { "needs" } else { "has no room for" }
    )]
    Fmc {
        /// Which TCB: "current", "reported" or "given" (to [`encode_tcb`]).
        tcb: &'static str,
        /// Whether the TCB had an FMC SVN.
        has_fmc: bool,
        /// The product.
        product: SnpProduct,
    },

    /// The `sev` crate's TCB encoder failed.
    #[error("the sev crate cannot encode a {} TCB: {source}", product.name())]
    Encode {
        /// The product.
        product: SnpProduct,
        /// The crate's error.
        #[source]
        source: std::io::Error,
    },
}

/// A simulated SEV-SNP platform's firmware state, as SNP_PLATFORM_STATUS
/// reports it. Every field is public: set what a test needs, then call
/// [`SimSnpPlatform::snp_platform_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSnpPlatform {
    /// The processor generation.
    pub product: SnpProduct,
    /// Firmware API major version (byte 0x00).
    pub api_major: u8,
    /// Firmware API minor version (byte 0x01).
    pub api_minor: u8,
    /// Platform state (byte 0x02): 0 UNINIT, 1 INIT.
    pub state: u8,
    /// RMP flags (byte 0x03): bit 0 RMP initialised, bit 1 alias check
    /// complete, bit 3 TIO enabled.
    pub rmp_flags: u8,
    /// Firmware build id (0x04).
    pub build_id: u32,
    /// Platform policy bits (0x08): bit 0 MASK_CHIP_ID, bit 1 MASK_CHIP_KEY,
    /// bit 2 VLEK_EN, ...
    pub policy: u32,
    /// Number of running SNP guests (0x0C).
    pub guest_count: u32,
    /// The installed TCB (0x10).
    pub current_tcb: SnpTcb,
    /// The TCB the firmware puts in attestation reports (0x18).
    pub reported_tcb: SnpTcb,
}

impl SimSnpPlatform {
    /// An initialised `product` platform whose installed and reported TCBs
    /// are both `tcb`: firmware API 1.55, build 21, RMP initialised, no policy
    /// bits, no guests.
    pub fn new(product: SnpProduct, tcb: SnpTcb) -> SimSnpPlatform {
        SimSnpPlatform {
            product,
            api_major: DEFAULT_API_MAJOR,
            api_minor: DEFAULT_API_MINOR,
            state: 1,
            rmp_flags: 1,
            build_id: u32::from(DEFAULT_BUILD),
            policy: 0,
            guest_count: 0,
            current_tcb: tcb,
            reported_tcb: tcb,
        }
    }

    /// The 32 bytes the firmware answers SNP_PLATFORM_STATUS with.
    pub fn snp_platform_status(&self) -> Result<[u8; SNP_STATUS_LEN], SnpSimError> {
        let current = encode_named(self.product, &self.current_tcb, "current")?;
        let reported = encode_named(self.product, &self.reported_tcb, "reported")?;
        let mut raw = [0u8; SNP_STATUS_LEN];
        let fields: [(usize, &[u8]); 9] = [
            (0x00, &[self.api_major]),
            (0x01, &[self.api_minor]),
            (0x02, &[self.state]),
            (0x03, &[self.rmp_flags]),
            (0x04, &self.build_id.to_le_bytes()),
            (0x08, &self.policy.to_le_bytes()),
            (0x0C, &self.guest_count.to_le_bytes()),
            (0x10, &current),
            (0x18, &reported),
        ];
        for (offset, bytes) in fields {
            for (slot, byte) in raw.iter_mut().skip(offset).zip(bytes) {
                *slot = *byte;
            }
        }
        Ok(raw)
    }
}

/// Encodes `tcb` in `product`'s 8-byte layout with the `sev` crate, after
/// checking that it has an FMC SVN exactly when the layout has one (the
/// crate would silently drop or zero it).
pub fn encode_tcb(product: SnpProduct, tcb: &SnpTcb) -> Result<[u8; 8], SnpSimError> {
    encode_named(product, tcb, "given")
}

/// [`encode_tcb`], naming the TCB as `which` in errors.
fn encode_named(
    product: SnpProduct,
    tcb: &SnpTcb,
    which: &'static str,
) -> Result<[u8; 8], SnpSimError> {
    if tcb.fmc.is_some() != product.has_fmc() {
        return Err(SnpSimError::Fmc {
            tcb: which,
            has_fmc: tcb.fmc.is_some(),
            product,
        });
    }
    TcbVersion::new(tcb.fmc, tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode)
        .to_bytes_with(product.generation())
        .map_err(|source| SnpSimError::Encode { product, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcb(fmc: Option<u8>) -> SnpTcb {
        SnpTcb {
            fmc,
            bootloader: 0x11,
            tee: 0x22,
            snp: 0x33,
            microcode: 0x44,
        }
    }

    #[test]
    fn the_crate_encodes_tcbs_in_the_abi_layouts() {
        for product in [SnpProduct::Milan, SnpProduct::Genoa] {
            assert_eq!(
                encode_tcb(product, &tcb(None)).unwrap(),
                [0x11, 0x22, 0, 0, 0, 0, 0x33, 0x44]
            );
        }
        for product in [SnpProduct::Turin, SnpProduct::Venice] {
            assert_eq!(
                encode_tcb(product, &tcb(Some(0x55))).unwrap(),
                [0x55, 0x11, 0x22, 0x33, 0, 0, 0, 0x44]
            );
        }
    }

    #[test]
    fn the_status_has_every_field_at_its_offset() {
        let mut platform = SimSnpPlatform::new(SnpProduct::Turin, tcb(Some(0x55)));
        platform.api_minor = 58;
        platform.state = 1;
        platform.rmp_flags = 0b11;
        platform.build_id = 0x0403_0201;
        platform.policy = 0x8765_4321;
        platform.guest_count = 0x0c0b_0a09;
        platform.current_tcb.microcode = 0x66;
        let raw = platform.snp_platform_status().unwrap();
        assert_eq!(
            raw,
            [
                1, 58, 1, 0b11, // version, state, RMP flags
                0x01, 0x02, 0x03, 0x04, // build id
                0x21, 0x43, 0x65, 0x87, // policy
                0x09, 0x0a, 0x0b, 0x0c, // guest count
                0x55, 0x11, 0x22, 0x33, 0, 0, 0, 0x66, // current TCB
                0x55, 0x11, 0x22, 0x33, 0, 0, 0, 0x44, // reported TCB
            ]
        );
    }

    #[test]
    fn the_sev_crate_decodes_what_it_encodes() {
        use sev::firmware::host::SnpPlatformStatus;
        for product in SnpProduct::ALL {
            let fmc = product.has_fmc().then_some(9);
            let raw = SimSnpPlatform::new(product, tcb(fmc))
                .snp_platform_status()
                .unwrap();
            let status = SnpPlatformStatus::from_bytes_with(&raw, product.generation()).unwrap();
            assert_eq!(status.version, (DEFAULT_API_MAJOR, DEFAULT_API_MINOR));
            assert_eq!(status.state, 1);
            assert_eq!(status.build_id, u32::from(DEFAULT_BUILD));
            assert!(status.is_rmp_init.is_rmp_init());
            assert_eq!(
                status.reported_tcb_version,
                TcbVersion::new(fmc, 0x11, 0x22, 0x33, 0x44)
            );
        }
    }

    #[test]
    fn an_fmc_must_match_the_layout() {
        let err = SimSnpPlatform::new(SnpProduct::Genoa, tcb(Some(1)))
            .snp_platform_status()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the current TCB has an FMC SVN, but a Genoa TCB has no room for one"
        );
        let mut platform = SimSnpPlatform::new(SnpProduct::Turin, tcb(Some(1)));
        platform.reported_tcb.fmc = None;
        let err = platform.snp_platform_status().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the reported TCB lacks an FMC SVN, but a Turin TCB needs one"
        );
    }
}
