//! Launch digests for SEV, SEV-ES and SNP guests started by a VMM.
//!
//! The digest is what the PSP computes while the VMM loads the guest: for SEV and
//! SEV-ES a SHA-256 over firmware, hashes table and (SEV-ES) VMSAs; for SNP the GCTX
//! chain over the same pages plus the SEV metadata pages. Measurement starts with
//! the firmware alone ([`Measurement::begin`]), so callers can hash the kernel and
//! initrd concurrently, and ends when their digests are known
//! ([`Measurement::finish`]).

use crate::firmware::{Firmware, FirmwareError, SectionKind};
use crate::gctx::{Gctx, PageType, LD_SIZE};
use crate::hashes::{KernelHashes, PAGE_SIZE};
use crate::vcpu::VcpuSignature;
use crate::vmsa::{vmsa_page, VmmType, VmsaFpu, BSP_EIP};
use sha2::{Digest, Sha256};
use std::fmt;

/// The SEV generation a guest is launched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SevMode {
    /// SEV: memory encryption only.
    Sev,
    /// SEV-ES: encrypted register state too.
    SevEs,
    /// SEV-SNP: integrity protection and the GCTX digest.
    Snp,
}

impl SevMode {
    /// All modes, in generation order.
    pub const ALL: [SevMode; 3] = [SevMode::Sev, SevMode::SevEs, SevMode::Snp];

    /// The short name used on command lines: `sev`, `seves`, `snp`.
    pub fn name(self) -> &'static str {
        match self {
            SevMode::Sev => "sev",
            SevMode::SevEs => "seves",
            SevMode::Snp => "snp",
        }
    }

    /// Parses the names `sev-snp-measure` accepts for these modes.
    pub fn from_name(name: &str) -> Option<SevMode> {
        match name {
            "sev" | "SEV" => Some(SevMode::Sev),
            "seves" | "sev-es" | "SEVES" | "SEV-ES" => Some(SevMode::SevEs),
            "snp" | "sev-snp" | "SNP" | "SEV-SNP" => Some(SevMode::Snp),
            _ => None,
        }
    }
}

impl fmt::Display for SevMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SevMode::Sev => "SEV",
            SevMode::SevEs => "SEV-ES",
            SevMode::Snp => "SEV-SNP",
        })
    }
}

/// The shape of the VM beyond its artefacts: what SEV-ES and SNP VMSAs depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmShape {
    /// Number of vCPUs (QEMU's `-smp`); ignored for SEV.
    pub vcpus: u32,
    /// CPUID signature of the guest vCPUs; ignored for SEV.
    pub vcpu_sig: VcpuSignature,
    /// SNP guest features (the VMSA SEV_FEATURES field); SEV-ES always uses 0.
    pub guest_features: u64,
    /// The VMM building the initial state.
    pub vmm: VmmType,
    /// The x87/SSE state the host kernel puts in the VMSAs (SEV-ES, SNP).
    pub fpu: VmsaFpu,
}

/// A launch digest, tagged with the mode that produced it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaunchDigest {
    /// SHA-256 launch digest of an SEV guest.
    Sev([u8; 32]),
    /// SHA-256 launch digest of an SEV-ES guest.
    SevEs([u8; 32]),
    /// SHA-384 launch digest of an SNP guest.
    Snp([u8; LD_SIZE]),
}

impl LaunchDigest {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            LaunchDigest::Sev(d) | LaunchDigest::SevEs(d) => d,
            LaunchDigest::Snp(d) => d,
        }
    }

    /// The mode that produced it.
    pub fn mode(&self) -> SevMode {
        match self {
            LaunchDigest::Sev(_) => SevMode::Sev,
            LaunchDigest::SevEs(_) => SevMode::SevEs,
            LaunchDigest::Snp(_) => SevMode::Snp,
        }
    }

    /// Lower-case hexadecimal, as `sev-snp-measure` prints it.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        self.as_bytes().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl fmt::Debug for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.mode(), self.to_hex())
    }
}

const AMDSEV_HINT: &str = "use an AmdSev build of OVMF (OvmfPkg/AmdSev/AmdSevX64.dsc; \
     Kata ships it as AMDSEV.fd)";

/// Why a launch digest cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The firmware image is malformed.
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    /// A kernel was given but the firmware reserves no hashes table.
    #[error(
        "firmware has no SEV hashes table (footer entry 7255371f-3a3b-4b04-927b-1da6efa8d454 \
         missing or zero), so QEMU cannot measure a kernel, initrd and command line into it; \
         {AMDSEV_HINT}"
    )]
    NoKernelHashes,
    /// SEV-ES and SNP need the AP reset vector.
    #[error(
        "firmware has no SEV-ES reset block (footer entry 00f771de-1a7e-4fcb-890e-68c77e2fb44e), \
         so {mode} vCPUs cannot start; use OVMF built with SEV-ES support \
         (edk2-stable202011 or later: OvmfPkgX64.dsc or OvmfPkg/AmdSev/AmdSevX64.dsc)"
    )]
    NoResetBlock {
        /// The mode that needs it.
        mode: SevMode,
    },
    /// The reset block is there but holds no vector, and there are APs to start.
    #[error("firmware's SEV-ES reset block holds address 0, so the {vcpus} vCPUs beyond the first cannot start")]
    ZeroResetVector {
        /// Number of application processors.
        vcpus: u32,
    },
    /// SNP needs the SEV metadata.
    #[error(
        "firmware has no SEV metadata (footer entry dc886566-984a-4798-a75e-5585a7bf67cc), \
         so QEMU cannot launch it as an SNP guest; use OVMF from edk2-stable202205 or later \
         (OvmfPkgX64.dsc or OvmfPkg/AmdSev/AmdSevX64.dsc)"
    )]
    NoSevMetadata,
    /// SNP with a kernel needs a metadata section for the hashes page.
    #[error(
        "firmware's SEV metadata has no SNP_KERNEL_HASHES section, so an SNP guest cannot \
         measure a kernel, initrd and command line; {AMDSEV_HINT}"
    )]
    NoSnpKernelHashesSection,
    /// SNP measures whole pages.
    #[error(
        "firmware is {len} bytes, not a whole number of 4 KiB pages, so SNP cannot measure it"
    )]
    UnalignedFirmware {
        /// Image length.
        len: usize,
    },
    /// A metadata section that is not whole pages.
    #[error(
        "firmware SEV metadata section at {gpa:#x} has size {size:#x}, not a whole number of pages"
    )]
    UnalignedSection {
        /// Start address.
        gpa: u32,
        /// Size.
        size: u32,
    },
    /// The hashes-table page is not one page, or the table does not fit in it.
    #[error("firmware places the SEV hashes table at {table_gpa:#x} in a section of {size:#x} bytes; it must fit in one 4 KiB page")]
    BadHashesPage {
        /// Table address.
        table_gpa: u32,
        /// Section size.
        size: u32,
    },
    /// A section type this implementation does not know.
    #[error("firmware SEV metadata has a section of unknown type {0:#x}")]
    UnknownSection(u32),
    /// SEV-ES and SNP guests need at least one vCPU.
    #[error("a {mode} guest needs at least one vCPU")]
    NoVcpus {
        /// The mode.
        mode: SevMode,
    },
}

#[derive(Clone)]
enum State {
    Sha256(Sha256),
    Gctx(Gctx),
}

/// A launch measurement in progress: the firmware is measured, the kernel hashes and
/// VMSAs are not yet.
///
/// It holds no reference to the firmware, so it can be handed between threads; pass
/// the same image again to [`Measurement::finish`].
#[derive(Clone)]
pub struct Measurement {
    mode: SevMode,
    state: State,
}

/// Checks everything about the firmware that a launch in `mode` needs, before any
/// hashing, so that a useless image fails fast.
pub fn check_firmware(
    fw: &Firmware<'_>,
    mode: SevMode,
    with_kernel: bool,
) -> Result<(), MeasureError> {
    if with_kernel && !fw.supports_kernel_hashes()? {
        return Err(MeasureError::NoKernelHashes);
    }
    if mode != SevMode::Sev && fw.sev_es_reset_eip()?.is_none() {
        return Err(MeasureError::NoResetBlock { mode });
    }
    if mode == SevMode::Snp {
        if fw.data().len() % PAGE_SIZE != 0 {
            return Err(MeasureError::UnalignedFirmware {
                len: fw.data().len(),
            });
        }
        let sections = fw.metadata_sections()?.ok_or(MeasureError::NoSevMetadata)?;
        for s in &sections {
            match s.kind {
                SectionKind::Unknown(t) => return Err(MeasureError::UnknownSection(t)),
                SectionKind::SecMem | SectionKind::SvsmCaa | SectionKind::KernelHashes
                    if s.size as usize % PAGE_SIZE != 0 =>
                {
                    return Err(MeasureError::UnalignedSection {
                        gpa: s.gpa,
                        size: s.size,
                    })
                }
                _ => {}
            }
        }
        if with_kernel && !sections.iter().any(|s| s.kind == SectionKind::KernelHashes) {
            return Err(MeasureError::NoSnpKernelHashesSection);
        }
    }
    Ok(())
}

impl Measurement {
    /// Checks the firmware for `mode` and measures it.
    pub fn begin(
        fw: &Firmware<'_>,
        mode: SevMode,
        with_kernel: bool,
    ) -> Result<Self, MeasureError> {
        check_firmware(fw, mode, with_kernel)?;
        let state = match mode {
            SevMode::Sev | SevMode::SevEs => State::Sha256(Sha256::new_with_prefix(fw.data())),
            SevMode::Snp => {
                let mut g = Gctx::new();
                g.update_normal_pages(fw.gpa(), fw.data());
                State::Gctx(g)
            }
        };
        Ok(Measurement { mode, state })
    }

    /// Adds the kernel hashes (if a kernel is booted) and the VMSAs, and returns
    /// the launch digest. `fw` must be the image given to [`Measurement::begin`].
    pub fn finish(
        self,
        fw: &Firmware<'_>,
        hashes: Option<&KernelHashes>,
        shape: &VmShape,
    ) -> Result<LaunchDigest, MeasureError> {
        check_firmware(fw, self.mode, hashes.is_some())?;
        if self.mode != SevMode::Sev && shape.vcpus == 0 {
            return Err(MeasureError::NoVcpus { mode: self.mode });
        }
        match self.state {
            State::Sha256(mut h) => {
                if let Some(k) = hashes {
                    h.update(k.table());
                }
                if self.mode == SevMode::Sev {
                    return Ok(LaunchDigest::Sev(h.finalize().into()));
                }
                for page in vmsa_pages(fw, self.mode, shape, 0)? {
                    h.update(page);
                }
                Ok(LaunchDigest::SevEs(h.finalize().into()))
            }
            State::Gctx(mut g) => {
                snp_metadata_pages(&mut g, fw, hashes, shape.vmm)?;
                for page in vmsa_pages(fw, self.mode, shape, shape.guest_features)? {
                    g.update_vmsa(&page);
                }
                Ok(LaunchDigest::Snp(g.launch_digest()))
            }
        }
    }
}

/// Computes a launch digest in one call.
pub fn launch_digest(
    fw: &Firmware<'_>,
    mode: SevMode,
    hashes: Option<&KernelHashes>,
    shape: &VmShape,
) -> Result<LaunchDigest, MeasureError> {
    Measurement::begin(fw, mode, hashes.is_some())?.finish(fw, hashes, shape)
}

/// The VMSA pages of all vCPUs: the bootstrap processor, then the others, whose
/// state differs only in the start address.
fn vmsa_pages(
    fw: &Firmware<'_>,
    mode: SevMode,
    shape: &VmShape,
    sev_features: u64,
) -> Result<impl Iterator<Item = [u8; PAGE_SIZE]>, MeasureError> {
    let ap_eip = fw
        .sev_es_reset_eip()?
        .ok_or(MeasureError::NoResetBlock { mode })?;
    if ap_eip == 0 && shape.vcpus > 1 {
        return Err(MeasureError::ZeroResetVector {
            vcpus: shape.vcpus - 1,
        });
    }
    let bsp = vmsa_page(BSP_EIP, sev_features, shape.vcpu_sig, shape.vmm, shape.fpu);
    let ap = vmsa_page(ap_eip, sev_features, shape.vcpu_sig, shape.vmm, shape.fpu);
    Ok((0..shape.vcpus).map(move |i| if i == 0 { bsp } else { ap }))
}

/// Extends the GCTX with the pages the SEV metadata asks the VMM to add, in the
/// metadata's order, the way QEMU (or EC2 and GCE) populate them.
fn snp_metadata_pages(
    g: &mut Gctx,
    fw: &Firmware<'_>,
    hashes: Option<&KernelHashes>,
    vmm: VmmType,
) -> Result<(), MeasureError> {
    let sections = fw.metadata_sections()?.ok_or(MeasureError::NoSevMetadata)?;
    for s in &sections {
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        match s.kind {
            SectionKind::SecMem if vmm == VmmType::Gce => {
                g.update_empty_pages(PageType::Unmeasured, gpa, size)
            }
            SectionKind::SecMem | SectionKind::SvsmCaa => {
                g.update_empty_pages(PageType::Zero, gpa, size)
            }
            SectionKind::Secrets => g.update(PageType::Secrets, gpa, &[0; LD_SIZE]),
            SectionKind::Cpuid if vmm != VmmType::Ec2 => {
                g.update(PageType::Cpuid, gpa, &[0; LD_SIZE])
            }
            SectionKind::Cpuid => {}
            SectionKind::KernelHashes => match hashes {
                Some(k) => {
                    let table_gpa = fw.sev_hashes_table_gpa()?.unwrap_or(0);
                    let bad = MeasureError::BadHashesPage {
                        table_gpa,
                        size: s.size,
                    };
                    if s.size as usize != PAGE_SIZE {
                        return Err(bad);
                    }
                    let page = k.page(table_gpa as usize & (PAGE_SIZE - 1)).ok_or(bad)?;
                    g.update_normal_pages(gpa, &page);
                }
                None => g.update_empty_pages(PageType::Zero, gpa, size),
            },
            SectionKind::Unknown(t) => return Err(MeasureError::UnknownSection(t)),
        }
    }
    // EC2 adds the CPUID pages last.
    if vmm == VmmType::Ec2 {
        for s in sections.iter().filter(|s| s.kind == SectionKind::Cpuid) {
            g.update(PageType::Cpuid, u64::from(s.gpa), &[0; LD_SIZE]);
        }
    }
    Ok(())
}
