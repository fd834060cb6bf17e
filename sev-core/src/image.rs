//! A firmware image held in memory with the measurements already started over
//! it, so that the many launches of one image (every vCPU count, command line
//! and mode) each pay only for what differs: the kernel hashes and the VMSAs.
//! For SNP the shared part is the 1,024 page hashes of the firmware itself.

use crate::firmware::{Firmware, FirmwareError};
use crate::hashes::KernelHashes;
use crate::measure::{LaunchDigest, MeasureError, Measurement, SevMode, VmShape};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// An owned firmware image and its started measurements.
pub struct FirmwareImage {
    bytes: Vec<u8>,
    sha256: [u8; 32],
    /// Started measurement per mode and "boots a kernel".
    begun: Mutex<HashMap<(SevMode, bool), Measurement>>,
}

impl std::fmt::Debug for FirmwareImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareImage")
            .field("len", &self.bytes.len())
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl FirmwareImage {
    /// Takes the image, checking that it is firmware at all (its footer, if
    /// any, parses); what a mode needs is checked when it is measured.
    pub fn new(bytes: Vec<u8>) -> Result<FirmwareImage, FirmwareError> {
        Firmware::parse(&bytes)?;
        let sha256 = Sha256::digest(&bytes).into();
        Ok(FirmwareImage {
            bytes,
            sha256,
            begun: Mutex::default(),
        })
    }

    /// The image's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the image, the name an operator approves it by.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The launch digest for `mode` and `shape` with `hashes` (None: the
    /// firmware boots no kernel of QEMU's).
    pub fn digest(
        &self,
        mode: SevMode,
        hashes: Option<&KernelHashes>,
        shape: &VmShape,
    ) -> Result<LaunchDigest, MeasureError> {
        let fw = Firmware::parse(&self.bytes)?;
        let key = (mode, hashes.is_some());
        // A poisoned lock only loses the cache, never a result.
        let cached = self.begun.lock().ok().and_then(|m| m.get(&key).cloned());
        let started = match cached {
            Some(m) => m,
            None => {
                let m = Measurement::begin(&fw, mode, hashes.is_some())?;
                if let Ok(mut map) = self.begun.lock() {
                    map.insert(key, m.clone());
                }
                m
            }
        };
        started.finish(&fw, hashes, shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::launch_digest;
    use crate::vcpu::VcpuSignature;
    use crate::vmsa::VmmType;

    #[test]
    fn a_started_measurement_gives_what_a_fresh_one_does() {
        let image = vec![0u8; 64 * 1024];
        let fw = FirmwareImage::new(image.clone()).unwrap();
        assert_eq!(fw.sha256(), <[u8; 32]>::from(Sha256::digest(&image)));
        let shape = VmShape {
            vcpus: 1,
            vcpu_sig: VcpuSignature(0),
            guest_features: 0,
            vmm: VmmType::Qemu,
            fpu: Default::default(),
        };
        let want = launch_digest(
            &Firmware::parse(&image).unwrap(),
            SevMode::Sev,
            None,
            &shape,
        )
        .unwrap();
        assert_eq!(fw.digest(SevMode::Sev, None, &shape).unwrap(), want);
        assert_eq!(fw.digest(SevMode::Sev, None, &shape).unwrap(), want);
        assert!(fw.digest(SevMode::Snp, None, &shape).is_err());
    }
}
