//! A simulated SEV platform: the keys and certificate chain its PSP holds
//! (CEK signed by the ASK, self-signed OCA, PEK signed by the OCA and the CEK,
//! PDH signed by the PEK) and the firmware version it reports.
//!
//! The chain comes out as `sevctl export --full` writes it and as the Kata
//! shim sends it to the KBS: PDH, PEK, OCA, CEK, then ASK, ARK.

use crate::error::SimError;
use crate::roots::FakeAmdRoots;
use crate::sevcert::{certificate, SevKey, SlotSigner, USAGE_CEK, USAGE_OCA, USAGE_PDH, USAGE_PEK};

/// Firmware API major version of a new platform.
pub const DEFAULT_API_MAJOR: u8 = 1;
/// Firmware API minor version of a new platform.
pub const DEFAULT_API_MINOR: u8 = 55;
/// Firmware build of a new platform.
pub const DEFAULT_BUILD: u8 = 21;

/// A simulated PSP: its certificate chain under some [`FakeAmdRoots`], the
/// PDH private key it answers LAUNCH_START with, and its firmware version.
/// Start launches with [`SimPlatform::launch_start`].
pub struct SimPlatform {
    pub(crate) api_major: u8,
    pub(crate) api_minor: u8,
    pub(crate) build: u8,
    /// The PDH private key, for AWS-LC's ECDH: several times faster than
    /// OpenSSL's generic P-384 here, and the load generator runs one per launch.
    pub(crate) pdh_agreement: std::sync::Arc<aws_lc_rs::agreement::PrivateKey>,
    pdh_cert: Vec<u8>,
    chain: Vec<u8>,
}

impl std::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatform")
            .field("api_major", &self.api_major)
            .field("api_minor", &self.api_minor)
            .field("build", &self.build)
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// A new platform under `roots`, firmware API 1.55 build 21.
    pub fn new(roots: &FakeAmdRoots) -> Result<SimPlatform, SimError> {
        SimPlatform::new_with_firmware_version(
            roots,
            DEFAULT_API_MAJOR,
            DEFAULT_API_MINOR,
            DEFAULT_BUILD,
        )
    }

    /// A new platform whose certificates were issued by firmware
    /// `api_major.api_minor` and which reports that version and `build`.
    pub fn new_with_firmware_version(
        roots: &FakeAmdRoots,
        api_major: u8,
        api_minor: u8,
        build: u8,
    ) -> Result<SimPlatform, SimError> {
        let version = (api_major, api_minor);
        let cek = SevKey::generate(USAGE_CEK)?;
        let oca = SevKey::generate(USAGE_OCA)?;
        let pek = SevKey::generate(USAGE_PEK)?;
        let pdh = SevKey::generate(USAGE_PDH)?;

        let cek_cert = certificate(
            "CEK",
            version,
            &cek,
            &[SlotSigner::Ask(roots.ask_key(), roots.key_size())],
        )?;
        let oca_cert = certificate("OCA", version, &oca, &[SlotSigner::Sev(&oca)])?;
        let pek_cert = certificate(
            "PEK",
            version,
            &pek,
            &[SlotSigner::Sev(&oca), SlotSigner::Sev(&cek)],
        )?;
        let pdh_cert = certificate("PDH", version, &pdh, &[SlotSigner::Sev(&pek)])?;

        let mut chain = Vec::new();
        for part in [&pdh_cert, &pek_cert, &oca_cert, &cek_cert] {
            chain.extend_from_slice(part);
        }
        chain.extend_from_slice(&roots.ca_chain());

        Ok(SimPlatform {
            api_major,
            api_minor,
            build,
            pdh_agreement: std::sync::Arc::new(pdh.agreement_key()?),
            pdh_cert,
            chain,
        })
    }

    /// The same platform after a firmware update to `api_major.api_minor`
    /// build `build`. Its certificates keep the version that issued them, as
    /// on a real platform whose PEK and PDH were not regenerated.
    pub fn with_firmware_version(self, api_major: u8, api_minor: u8, build: u8) -> SimPlatform {
        SimPlatform {
            api_major,
            api_minor,
            build,
            ..self
        }
    }

    /// The whole chain as `sevctl export --full` writes it: PDH, PEK, OCA,
    /// CEK (SEV format, 0x824 bytes each), then ASK, ARK (AMD CA format).
    pub fn cert_chain(&self) -> Vec<u8> {
        self.chain.clone()
    }

    /// The PDH certificate alone.
    pub fn pdh_cert(&self) -> Vec<u8> {
        self.pdh_cert.clone()
    }

    /// Firmware API major version.
    pub fn api_major(&self) -> u8 {
        self.api_major
    }

    /// Firmware API minor version.
    pub fn api_minor(&self) -> u8 {
        self.api_minor
    }

    /// Firmware build id.
    pub fn build(&self) -> u8 {
        self.build
    }
}
