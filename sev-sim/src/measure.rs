//! Launch digests of artefacts, computed with the `sev` crate 8.0.0 (a second
//! implementation, independent of our host agent's), for SEV and SEV-ES.
//!
//! Known limits of that crate, which these functions guard or inherit:
//! - it trims the kernel command line before hashing, QEMU does not: a
//!   command line with leading or trailing whitespace is refused here rather
//!   than measured wrongly;
//! - it refuses firmware without SEV metadata;
//! - SEV-ES needs a named QEMU CPU model ([`CpuType`]), while Kata runs SEV-ES
//!   guests with `-cpu host`; pick the model whose family/model/stepping
//!   matches the host.

use std::path::Path;

use sev::measurement::sev::{
    sev_calc_launch_digest, seves_calc_launch_digest, SevEsMeasurementArgs, SevMeasurementArgs,
};
pub use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::VMMType;

use crate::error::SimError;

fn check_cmdline(cmdline: &str) -> Result<(), SimError> {
    if cmdline.trim() != cmdline {
        return Err(SimError::CmdlineWhitespace);
    }
    Ok(())
}

/// The SEV launch digest of `ovmf` (an AmdSev build) with `kernel`, `initrd`
/// and `cmdline` measured through its SEV hashes table.
pub fn launch_digest_sev(
    ovmf: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<[u8; 32], SimError> {
    check_cmdline(cmdline)?;
    sev_calc_launch_digest(SevMeasurementArgs {
        ovmf_file: ovmf.to_path_buf(),
        kernel_file: Some(kernel.to_path_buf()),
        initrd_file: initrd.map(Path::to_path_buf),
        append: Some(cmdline),
    })
    .map_err(SimError::Measurement)
}

/// The SEV-ES launch digest: the SEV digest extended with one VMSA page per
/// vCPU, for `vcpus` vCPUs of model `cpu` under QEMU.
pub fn launch_digest_sev_es(
    ovmf: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    vcpus: u32,
    cpu: CpuType,
) -> Result<[u8; 32], SimError> {
    check_cmdline(cmdline)?;
    seves_calc_launch_digest(SevEsMeasurementArgs {
        vcpus,
        vcpu_type: cpu,
        ovmf_file: ovmf.to_path_buf(),
        kernel_file: Some(kernel.to_path_buf()),
        initrd_file: initrd.map(Path::to_path_buf),
        append: Some(cmdline),
        vmm_type: Some(VMMType::QEMU),
    })
    .map_err(SimError::Measurement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The real AmdSev OVMF build of the shared test data.
    fn firmware() -> PathBuf {
        let dir = std::env::var_os("SEV_TESTDATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata")
            });
        let p = dir.join("firmware/OVMF.amdsev.fd");
        assert!(
            p.is_file(),
            "AmdSev firmware not found at {} (set SEV_TESTDATA_DIR to the folder holding \
             firmware/OVMF.amdsev.fd)",
            p.display()
        );
        p
    }

    fn file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn digests_follow_every_input() {
        let dir = tempfile::tempdir().unwrap();
        let ovmf = firmware();
        let kernel = file(dir.path(), "vmlinuz", b"not really a kernel");
        let other = file(dir.path(), "vmlinuz2", b"not really a kernel either");
        let initrd = file(dir.path(), "initrd", b"initrd bytes");

        let base = launch_digest_sev(&ovmf, &kernel, Some(&initrd), "console=hvc0").unwrap();
        assert_eq!(
            base,
            launch_digest_sev(&ovmf, &kernel, Some(&initrd), "console=hvc0").unwrap()
        );
        for changed in [
            launch_digest_sev(&ovmf, &other, Some(&initrd), "console=hvc0").unwrap(),
            launch_digest_sev(&ovmf, &kernel, None, "console=hvc0").unwrap(),
            launch_digest_sev(&ovmf, &kernel, Some(&initrd), "console=hvc1").unwrap(),
        ] {
            assert_ne!(base, changed);
        }

        let es1 = launch_digest_sev_es(
            &ovmf,
            &kernel,
            Some(&initrd),
            "console=hvc0",
            1,
            CpuType::EpycMilan,
        )
        .unwrap();
        let es2 = launch_digest_sev_es(
            &ovmf,
            &kernel,
            Some(&initrd),
            "console=hvc0",
            2,
            CpuType::EpycMilan,
        )
        .unwrap();
        assert_ne!(es1, base);
        assert_ne!(es1, es2);
    }

    #[test]
    fn untrimmed_command_lines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = file(dir.path(), "vmlinuz", b"k");
        for cmdline in [" quiet", "quiet ", "quiet\n"] {
            assert!(matches!(
                launch_digest_sev(&firmware(), &kernel, None, cmdline),
                Err(SimError::CmdlineWhitespace)
            ));
        }
    }

    #[test]
    fn missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            launch_digest_sev(&firmware(), &missing, None, "quiet"),
            Err(SimError::Measurement(_))
        ));
        assert!(launch_digest_sev(&missing, &missing, None, "quiet").is_err());
    }
}
