//! Launch digests for SEV, SEV-ES and SNP guests started by a VMM.
//!
//! The digest is what the PSP computes while the VMM loads the guest: for SEV and
//! SEV-ES a SHA-256 over firmware, hashes table and (SEV-ES) VMSAs; for SNP the GCTX
//! chain over the same pages plus the SEV metadata pages. Measurement starts with
//! the firmware alone ([`Measurement::begin`]), so callers can hash the kernel and
//! initrd concurrently, and ends when their digests are known
//! ([`Measurement::finish`]).
//!
//! For SNP the firmware's share of the chain can also be computed once
//! ([`snp_ovmf_hash`]) and resumed from later
//! ([`Measurement::begin_snp_from_ovmf_hash`]), and callers that need the VMSA
//! pages themselves (to write them out) get them from [`launch_vmsa_pages`] and
//! hand the same pages to [`Measurement::finish_with_vmsas`].

use crate::firmware::{Firmware, FirmwareError, MetadataSection, SectionKind};
use crate::gctx::{Gctx, PageType, Sha384Digest, LD_SIZE};
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
    /// Whether the firmware's own pages went into `state` (false when an SNP
    /// measurement resumes from a precomputed firmware digest).
    firmware_pages: bool,
}

/// Checks everything about the firmware that a launch in `mode` needs, before any
/// hashing, so that a useless image fails fast.
pub fn check_firmware(
    fw: &Firmware<'_>,
    mode: SevMode,
    with_kernel: bool,
) -> Result<(), MeasureError> {
    check(fw, mode, with_kernel, true)
}

/// [`check_firmware`], where `firmware_pages` says whether the image's own pages
/// are measured (they must then be whole pages for SNP).
fn check(
    fw: &Firmware<'_>,
    mode: SevMode,
    with_kernel: bool,
    firmware_pages: bool,
) -> Result<(), MeasureError> {
    if with_kernel && !fw.supports_kernel_hashes()? {
        return Err(MeasureError::NoKernelHashes);
    }
    if mode != SevMode::Sev && fw.sev_es_reset_eip()?.is_none() {
        return Err(MeasureError::NoResetBlock { mode });
    }
    if mode == SevMode::Snp {
        if firmware_pages && fw.data().len() % PAGE_SIZE != 0 {
            return Err(MeasureError::UnalignedFirmware {
                len: fw.data().len(),
            });
        }
        let sections = fw.metadata_sections()?.ok_or(MeasureError::NoSevMetadata)?;
        check_sections(&sections)?;
        if with_kernel && !sections.iter().any(|s| s.kind == SectionKind::KernelHashes) {
            return Err(MeasureError::NoSnpKernelHashesSection);
        }
    }
    Ok(())
}

/// Checks that every SEV metadata section has a known type and that the ranges
/// added page by page are whole pages.
pub(crate) fn check_sections(sections: &[MetadataSection]) -> Result<(), MeasureError> {
    for s in sections {
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
    Ok(())
}

/// The SNP launch digest of the firmware's pages alone, the first link of every
/// SNP launch digest with this firmware: what `sev-snp-measure --mode
/// snp:ovmf-hash` prints, and what [`Measurement::begin_snp_from_ovmf_hash`]
/// resumes from.
///
/// Like `sev-snp-measure`, it wants only whole pages and well-formed SEV metadata
/// (if any); it does not ask for the reset block or any section, since those are
/// read when the launch is finished.
pub fn snp_ovmf_hash(fw: &Firmware<'_>) -> Result<Sha384Digest, MeasureError> {
    if fw.data().len() % PAGE_SIZE != 0 {
        return Err(MeasureError::UnalignedFirmware {
            len: fw.data().len(),
        });
    }
    fw.metadata_sections()?;
    let mut g = Gctx::new();
    g.update_normal_pages(fw.gpa(), fw.data());
    Ok(g.launch_digest())
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
        Ok(Measurement {
            mode,
            state,
            firmware_pages: true,
        })
    }

    /// Starts an SNP measurement from the firmware's digest computed earlier by
    /// [`snp_ovmf_hash`], instead of from the firmware's pages. `fw` is still
    /// needed, for its reset block and SEV metadata; its pages are not read.
    pub fn begin_snp_from_ovmf_hash(
        fw: &Firmware<'_>,
        ovmf_hash: Sha384Digest,
        with_kernel: bool,
    ) -> Result<Self, MeasureError> {
        check(fw, SevMode::Snp, with_kernel, false)?;
        Ok(Measurement {
            mode: SevMode::Snp,
            state: State::Gctx(Gctx::resume(ovmf_hash)),
            firmware_pages: false,
        })
    }

    /// Adds the kernel hashes (if a kernel is booted) and the VMSAs, and returns
    /// the launch digest. `fw` must be the image given to [`Measurement::begin`].
    pub fn finish(
        self,
        fw: &Firmware<'_>,
        hashes: Option<&KernelHashes>,
        shape: &VmShape,
    ) -> Result<LaunchDigest, MeasureError> {
        check(fw, self.mode, hashes.is_some(), self.firmware_pages)?;
        if self.mode != SevMode::Sev && shape.vcpus == 0 {
            return Err(MeasureError::NoVcpus { mode: self.mode });
        }
        let vmsas = launch_vmsa_pages(fw, self.mode, shape)?;
        self.finish_with_vmsas(fw, hashes, shape.vmm, vmsas)
    }

    /// Like [`Measurement::finish`], with the VMSA pages given: normally those of
    /// [`launch_vmsa_pages`] for the same firmware, mode and shape, collected by a
    /// caller that also wants to keep them. Any number of pages is accepted,
    /// including none (a launch with no vCPUs, which only `sev-snp-measure`
    /// computes); SEV takes none and ignores them. `vmm` decides how SNP adds the
    /// metadata pages.
    pub fn finish_with_vmsas(
        self,
        fw: &Firmware<'_>,
        hashes: Option<&KernelHashes>,
        vmm: VmmType,
        vmsas: impl IntoIterator<Item = [u8; PAGE_SIZE]>,
    ) -> Result<LaunchDigest, MeasureError> {
        check(fw, self.mode, hashes.is_some(), self.firmware_pages)?;
        match self.state {
            State::Sha256(mut h) => {
                if let Some(k) = hashes {
                    h.update(k.table());
                }
                if self.mode == SevMode::Sev {
                    return Ok(LaunchDigest::Sev(h.finalize().into()));
                }
                for page in vmsas {
                    h.update(page);
                }
                Ok(LaunchDigest::SevEs(h.finalize().into()))
            }
            State::Gctx(mut g) => {
                snp_metadata_pages(&mut g, fw, hashes, vmm)?;
                for page in vmsas {
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

/// The initial VMSA pages of a launch, one per vCPU in order: the bootstrap
/// processor's, then the others', whose state differs only in the start address.
///
/// SEV has none. SEV-ES pages carry no guest features, SNP pages carry
/// `shape.guest_features`. `shape.vcpus` may be 0, giving no pages.
pub fn launch_vmsa_pages(
    fw: &Firmware<'_>,
    mode: SevMode,
    shape: &VmShape,
) -> Result<VmsaPages, MeasureError> {
    let (sev_features, count) = match mode {
        SevMode::Sev => return Ok(VmsaPages::none()),
        SevMode::SevEs => (0, shape.vcpus),
        SevMode::Snp => (shape.guest_features, shape.vcpus),
    };
    let ap_eip = fw
        .sev_es_reset_eip()?
        .ok_or(MeasureError::NoResetBlock { mode })?;
    if ap_eip == 0 && count > 1 {
        return Err(MeasureError::ZeroResetVector { vcpus: count - 1 });
    }
    let bsp = vmsa_page(BSP_EIP, sev_features, shape.vcpu_sig, shape.vmm, shape.fpu);
    let ap = vmsa_page(ap_eip, sev_features, shape.vcpu_sig, shape.vmm, shape.fpu);
    Ok(VmsaPages {
        bsp: Box::new(bsp),
        ap: Box::new(ap),
        next: 0,
        count,
    })
}

/// The VMSA pages of a launch, one per vCPU, made as they are taken (a launch
/// may have hundreds of vCPUs, all but one with the same page).
#[derive(Debug, Clone)]
pub struct VmsaPages {
    bsp: Box<[u8; PAGE_SIZE]>,
    ap: Box<[u8; PAGE_SIZE]>,
    next: u32,
    count: u32,
}

impl VmsaPages {
    fn none() -> VmsaPages {
        VmsaPages {
            bsp: Box::new([0; PAGE_SIZE]),
            ap: Box::new([0; PAGE_SIZE]),
            next: 0,
            count: 0,
        }
    }
}

impl Iterator for VmsaPages {
    type Item = [u8; PAGE_SIZE];

    fn next(&mut self) -> Option<[u8; PAGE_SIZE]> {
        if self.next >= self.count {
            return None;
        }
        let page = if self.next == 0 { *self.bsp } else { *self.ap };
        self.next += 1;
        Some(page)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.count - self.next).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

/// Extends the GCTX with the pages the SEV metadata asks the VMM to add, in the
/// metadata's order, the way QEMU (or EC2 and GCE) populate them.
pub(crate) fn snp_metadata_pages(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::{SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID};
    use crate::test_image::image;

    const SECTIONS: &[(u32, u32, u32)] = &[
        (0x80_0000, 0x2000, 1),
        (0x80_2000, 0x1000, 2),
        (0x80_3000, 0x1000, 3),
        (0x80_4000, 0x1000, 0x10),
    ];

    fn amdsev_like(len: usize) -> Vec<u8> {
        let mut table = 0x80_4c00u32.to_le_bytes().to_vec();
        table.extend_from_slice(&0x400u32.to_le_bytes());
        image(
            len,
            3,
            &[
                (SEV_HASH_TABLE_RV_GUID, table),
                (SEV_ES_RESET_BLOCK_GUID, 0x80_1004u32.to_le_bytes().to_vec()),
            ],
            Some(SECTIONS),
        )
    }

    fn shape(vcpus: u32) -> VmShape {
        VmShape {
            vcpus,
            vcpu_sig: VcpuSignature(0x00a0_0f11),
            guest_features: 0x21,
            vmm: VmmType::Qemu,
            fpu: VmsaFpu::Reset,
        }
    }

    fn hashes() -> KernelHashes {
        KernelHashes {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        }
    }

    #[test]
    fn resuming_from_the_ovmf_hash_gives_the_full_digest() {
        let data = amdsev_like(0x4000);
        let fw = Firmware::parse(&data).unwrap();
        let k = hashes();
        for vmm in [VmmType::Qemu, VmmType::Ec2, VmmType::Gce] {
            let shape = VmShape { vmm, ..shape(3) };
            let full = launch_digest(&fw, SevMode::Snp, Some(&k), &shape).unwrap();
            let seed = snp_ovmf_hash(&fw).unwrap();
            let resumed = Measurement::begin_snp_from_ovmf_hash(&fw, seed, true)
                .unwrap()
                .finish(&fw, Some(&k), &shape)
                .unwrap();
            assert_eq!(resumed, full);
        }
        let mut g = Gctx::new();
        g.update_normal_pages(fw.gpa(), &data);
        assert_eq!(snp_ovmf_hash(&fw).unwrap(), g.launch_digest());
    }

    #[test]
    fn the_ovmf_hash_wants_whole_pages_but_a_resumed_launch_does_not() {
        let mut data = amdsev_like(0x4000);
        data.insert(0, 0);
        let fw = Firmware::parse(&data).unwrap();
        assert_eq!(
            snp_ovmf_hash(&fw),
            Err(MeasureError::UnalignedFirmware { len: 0x4001 })
        );
        let m = Measurement::begin_snp_from_ovmf_hash(&fw, [7; LD_SIZE], false).unwrap();
        assert!(m.finish(&fw, None, &shape(1)).is_ok());
    }

    #[test]
    fn given_vmsa_pages_measure_as_the_computed_ones() {
        let data = amdsev_like(0x4000);
        let fw = Firmware::parse(&data).unwrap();
        for mode in SevMode::ALL {
            let shape = shape(4);
            let pages: Vec<_> = launch_vmsa_pages(&fw, mode, &shape).unwrap().collect();
            let expected = if mode == SevMode::Sev { 0 } else { 4 };
            assert_eq!(pages.len(), expected, "{mode}");
            let begun = Measurement::begin(&fw, mode, false).unwrap();
            let given = begun
                .clone()
                .finish_with_vmsas(&fw, None, shape.vmm, pages.clone())
                .unwrap();
            assert_eq!(given, begun.finish(&fw, None, &shape).unwrap(), "{mode}");
        }
        let pages: Vec<_> = launch_vmsa_pages(&fw, SevMode::Snp, &shape(3))
            .unwrap()
            .collect();
        assert_ne!(pages[0], pages[1]);
        assert_eq!(pages[1], pages[2]);
        let es: Vec<_> = launch_vmsa_pages(&fw, SevMode::SevEs, &shape(1))
            .unwrap()
            .collect();
        assert_ne!(es[0], pages[0], "SEV-ES VMSAs carry no guest features");
    }

    #[test]
    fn no_vcpus_is_refused_by_finish_but_measurable_with_no_vmsas() {
        let data = amdsev_like(0x4000);
        let fw = Firmware::parse(&data).unwrap();
        let begun = Measurement::begin(&fw, SevMode::SevEs, false).unwrap();
        assert_eq!(
            begun.clone().finish(&fw, None, &shape(0)),
            Err(MeasureError::NoVcpus {
                mode: SevMode::SevEs
            })
        );
        assert_eq!(
            launch_vmsa_pages(&fw, SevMode::SevEs, &shape(0))
                .unwrap()
                .count(),
            0
        );
        let none = begun
            .finish_with_vmsas(&fw, None, VmmType::Qemu, [])
            .unwrap();
        let sev = launch_digest(&fw, SevMode::Sev, None, &shape(0)).unwrap();
        assert_eq!(
            none.as_bytes(),
            sev.as_bytes(),
            "SEV-ES with no VMSAs hashes the firmware alone"
        );
    }

    #[test]
    fn a_zero_reset_vector_allows_one_vcpu_only() {
        let data = image(
            0x4000,
            3,
            &[(SEV_ES_RESET_BLOCK_GUID, vec![0; 4])],
            Some(SECTIONS),
        );
        let fw = Firmware::parse(&data).unwrap();
        assert_eq!(
            launch_vmsa_pages(&fw, SevMode::Snp, &shape(1))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(
            launch_vmsa_pages(&fw, SevMode::Snp, &shape(2)).unwrap_err(),
            MeasureError::ZeroResetVector { vcpus: 1 }
        );
    }
}
