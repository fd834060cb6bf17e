//! Measuring a launch from files: hash the artefacts in parallel, then compute the
//! digest for each mode and VM shape asked for.
//!
//! The kernel and initrd are independent, so each is hashed on its own thread
//! while the firmware is read and measured on the caller's; this keeps the wall
//! time close to that of hashing the largest file alone.

use crate::artefacts::{read_firmware, sha256_file, ArtefactError, ArtefactKind};
use sev_core::hashes::{cmdline_digest, empty_digest};
use sev_core::{Firmware, KernelHashes, LaunchDigest, MeasureError, Measurement, SevMode, VmShape};
use std::path::{Path, PathBuf};
use std::thread;

/// The files and command line of one launch, as QEMU gets them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaunchArtefacts {
    /// OVMF image (`-drive if=pflash` or `-bios`).
    pub firmware: PathBuf,
    /// Kernel (`-kernel`); without it only the firmware is measured.
    pub kernel: Option<PathBuf>,
    /// Initrd (`-initrd`).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (`-append`), bytes exactly as passed.
    pub cmdline: Option<Vec<u8>>,
}

/// Why a launch could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// An artefact could not be read.
    #[error(transparent)]
    Artefact(#[from] ArtefactError),
    /// The firmware cannot be measured for the mode asked for.
    #[error("{}: {cause}", firmware.display())]
    Measure {
        /// The firmware path.
        firmware: PathBuf,
        /// What is wrong (in the message, not a source, so it prints once).
        cause: MeasureError,
    },
    /// An initrd or command line was given without a kernel.
    #[error("an initrd or command line needs a kernel: QEMU measures them only with -kernel")]
    NoKernel,
}

/// Artefacts read and hashed, ready to be measured for any mode, shape and
/// command line: a configuration yields many launches over the same files.
pub struct LoadedLaunch {
    firmware_path: PathBuf,
    firmware: Vec<u8>,
    hashes: Option<KernelHashes>,
    /// The firmware's measurement per mode, started once: for SNP it is 1,024
    /// page hashes, the same for every vCPU count and command line.
    begun: std::cell::RefCell<std::collections::HashMap<SevMode, Measurement>>,
}

fn hash_optional(kind: ArtefactKind, path: Option<&Path>) -> Result<[u8; 32], ArtefactError> {
    match path {
        Some(p) => sha256_file(kind, p),
        None => Ok(empty_digest()),
    }
}

/// Hashes kernel and initrd while `on_firmware` runs. The larger of the two is
/// hashed on a second thread and the smaller one on this thread before the
/// firmware: two busy threads, one per core of a small node, rather than three
/// contending for two.
fn with_kernel_hashes<T>(
    art: &LaunchArtefacts,
    on_firmware: impl FnOnce() -> Result<T, LaunchError>,
) -> Result<(T, Option<KernelHashes>), LaunchError> {
    let Some(kernel) = art.kernel.as_deref() else {
        if art.initrd.is_some() || art.cmdline.is_some() {
            return Err(LaunchError::NoKernel);
        }
        return Ok((on_firmware()?, None));
    };
    let size = |p: Option<&Path>| {
        p.and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    };
    let initrd_is_larger = size(art.initrd.as_deref()) > size(Some(kernel));
    let hash_kernel = || sha256_file(ArtefactKind::Kernel, kernel);
    let hash_initrd = || hash_optional(ArtefactKind::Initrd, art.initrd.as_deref());
    thread::scope(|s| {
        let (kernel, initrd, fw) = if initrd_is_larger {
            let initrd = s.spawn(hash_initrd);
            let kernel = hash_kernel();
            let fw = on_firmware();
            (kernel, join(initrd), fw)
        } else {
            let kernel = s.spawn(hash_kernel);
            let initrd = hash_initrd();
            let fw = on_firmware();
            (join(kernel), initrd, fw)
        };
        let hashes = KernelHashes {
            kernel: kernel?,
            initrd: initrd?,
            cmdline: cmdline_digest(art.cmdline.as_deref().unwrap_or_default()),
        };
        Ok((fw?, Some(hashes)))
    })
}

fn join<T>(h: thread::ScopedJoinHandle<'_, Result<T, ArtefactError>>) -> Result<T, ArtefactError> {
    // A hashing thread only panics on a bug; re-raise it rather than invent an error.
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl LoadedLaunch {
    /// Reads the firmware and hashes kernel and initrd.
    pub fn load(art: &LaunchArtefacts) -> Result<LoadedLaunch, LaunchError> {
        let (firmware, hashes) = with_kernel_hashes(art, || Ok(read_firmware(&art.firmware)?))?;
        Ok(LoadedLaunch {
            firmware_path: art.firmware.clone(),
            firmware,
            hashes,
            begun: Default::default(),
        })
    }

    /// The kernel hashes, if a kernel is booted.
    pub fn kernel_hashes(&self) -> Option<&KernelHashes> {
        self.hashes.as_ref()
    }

    /// The launch digest for one mode and VM shape, with the command line the
    /// artefacts were loaded with, or `cmdline` in its place.
    pub fn digest(
        &self,
        mode: SevMode,
        shape: &VmShape,
        cmdline: Option<&[u8]>,
    ) -> Result<LaunchDigest, LaunchError> {
        let err = |cause| LaunchError::Measure {
            firmware: self.firmware_path.clone(),
            cause,
        };
        let hashes = match (self.hashes, cmdline) {
            (Some(h), Some(c)) => Some(KernelHashes {
                cmdline: cmdline_digest(c),
                ..h
            }),
            (h, _) => h,
        };
        let fw = Firmware::parse(&self.firmware).map_err(|e| err(e.into()))?;
        let started = match self.begun.borrow().get(&mode) {
            Some(m) => m.clone(),
            None => Measurement::begin(&fw, mode, hashes.is_some()).map_err(err)?,
        };
        self.begun
            .borrow_mut()
            .entry(mode)
            .or_insert_with(|| started.clone());
        started.finish(&fw, hashes.as_ref(), shape).map_err(err)
    }
}

/// Measures one launch, overlapping the firmware's measurement with the hashing of
/// kernel and initrd.
pub fn measure(
    art: &LaunchArtefacts,
    mode: SevMode,
    shape: &VmShape,
) -> Result<LaunchDigest, LaunchError> {
    let err = |cause| LaunchError::Measure {
        firmware: art.firmware.clone(),
        cause,
    };
    let with_kernel = art.kernel.is_some();
    let ((data, started), hashes) = with_kernel_hashes(art, || {
        let data = read_firmware(&art.firmware)?;
        let fw = Firmware::parse(&data).map_err(|e| err(e.into()))?;
        let started = Measurement::begin(&fw, mode, with_kernel).map_err(err)?;
        Ok((data, started))
    })?;
    let fw = Firmware::parse(&data).map_err(|e| err(e.into()))?;
    started.finish(&fw, hashes.as_ref(), shape).map_err(err)
}
