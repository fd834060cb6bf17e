//! SNP launches that start in an SVSM rather than in the firmware: the
//! `snp:svsm` mode of `sev-snp-measure` 0.0.13 (COCONUT-SVSM under QEMU).
//!
//! The VMM maps the OVMF image so that it ends at 4 GiB, reserves the OVMF
//! variable store right below it, and maps the SVSM binary right below that. The
//! SVSM binary carries a footer table laid out like OVMF's, with an entry giving
//! its entry point and, optionally, SEV metadata of its own. The launch digest
//! chains, in this order: the OVMF pages, the SVSM pages, the pages the SVSM's
//! metadata lists (zeroed pages, secrets, CPUID; no kernel hashes, as this mode
//! boots no kernel directly), then one VMSA per vCPU, every vCPU starting at the
//! SVSM's entry point.

use crate::firmware::{Firmware, FirmwareError};
use crate::gctx::Gctx;
use crate::guid::Guid;
use crate::hashes::PAGE_SIZE;
use crate::measure::{check_sections, snp_metadata_pages, LaunchDigest, MeasureError};
use crate::vcpu::VcpuSignature;
use crate::vmsa::{svsm_vmsa_page, VmmType, VMSA_SIZE};

/// Footer entry of an SVSM binary whose first four bytes are the offset of its
/// entry point from the start of the image.
pub const SVSM_INFO_GUID: Guid = Guid::from_text("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd");

/// Why an SVSM launch cannot be measured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvsmError {
    /// The OVMF image is not whole pages.
    #[error("OVMF image is {len} bytes, not a whole number of 4 KiB pages")]
    UnalignedOvmf {
        /// Image length.
        len: usize,
    },
    /// The SVSM image is not whole pages.
    #[error("SVSM image is {len} bytes, not a whole number of 4 KiB pages")]
    UnalignedSvsm {
        /// Image length.
        len: usize,
    },
    /// The SVSM image does not say where it starts.
    #[error(
        "SVSM image has no SVSM information entry (footer entry \
         a789a612-0597-4c4b-a49f-cbb1fe9d1ddd), so its entry point is unknown"
    )]
    NoSvsmInfo,
    /// The SVSM image does not fit below the address it must end at.
    #[error("an SVSM image of {len} bytes cannot end at {end:#x}")]
    Placement {
        /// Where the image must end.
        end: u64,
        /// Image length.
        len: usize,
    },
    /// The SVSM image's footer table or SEV metadata is unusable.
    #[error("SVSM image: {0}")]
    Svsm(MeasureError),
}

impl From<FirmwareError> for SvsmError {
    fn from(e: FirmwareError) -> SvsmError {
        SvsmError::Svsm(MeasureError::Firmware(e))
    }
}

/// An SNP launch of OVMF with an SVSM below it, checked and placed.
#[derive(Debug, Clone)]
pub struct SvsmLaunch<'o, 's> {
    ovmf: &'o Firmware<'o>,
    svsm: &'s Firmware<'s>,
    svsm_gpa: u64,
    entry: u64,
}

impl<'o, 's> SvsmLaunch<'o, 's> {
    /// Places `svsm` so that it ends at `svsm_end` (the OVMF's start address less
    /// the size of the OVMF variable store, as QEMU maps them) and checks
    /// everything the launch digest needs from both images.
    pub fn new(
        ovmf: &'o Firmware<'o>,
        svsm: &'s Firmware<'s>,
        svsm_end: u64,
    ) -> Result<Self, SvsmError> {
        if ovmf.data().len() % PAGE_SIZE != 0 {
            return Err(SvsmError::UnalignedOvmf {
                len: ovmf.data().len(),
            });
        }
        let len = svsm.data().len();
        let placement = SvsmError::Placement { end: svsm_end, len };
        let svsm_gpa = u64::try_from(len)
            .ok()
            .and_then(|l| svsm_end.checked_sub(l))
            .ok_or(placement.clone())?;
        let offset = svsm
            .entry_u32(SVSM_INFO_GUID)?
            .ok_or(SvsmError::NoSvsmInfo)?;
        let entry = svsm_gpa.checked_add(u64::from(offset)).ok_or(placement)?;
        if len % PAGE_SIZE != 0 {
            return Err(SvsmError::UnalignedSvsm { len });
        }
        if let Some(sections) = svsm.metadata_sections()? {
            check_sections(&sections).map_err(SvsmError::Svsm)?;
        }
        Ok(SvsmLaunch {
            ovmf,
            svsm,
            svsm_gpa,
            entry,
        })
    }

    /// Guest-physical address of the SVSM image's first byte.
    pub fn svsm_gpa(&self) -> u64 {
        self.svsm_gpa
    }

    /// Where every vCPU starts: the SVSM's entry point.
    pub fn entry_point(&self) -> u64 {
        self.entry
    }

    /// The VMSA pages of `vcpus` vCPUs with CPUID signature `sig`; all the same.
    pub fn vmsa_pages(
        &self,
        vcpus: u32,
        sig: VcpuSignature,
    ) -> impl Iterator<Item = [u8; VMSA_SIZE]> {
        let page = svsm_vmsa_page(self.entry, sig);
        (0..vcpus).map(move |_| page)
    }

    /// The launch digest with the given VMSA pages (normally those of
    /// [`SvsmLaunch::vmsa_pages`]; any number, including none).
    pub fn launch_digest(
        &self,
        vmsas: impl IntoIterator<Item = [u8; VMSA_SIZE]>,
    ) -> Result<LaunchDigest, SvsmError> {
        let mut g = Gctx::new();
        g.update_normal_pages(self.ovmf.gpa(), self.ovmf.data());
        g.update_normal_pages(self.svsm_gpa, self.svsm.data());
        if self.svsm.metadata_sections()?.is_some() {
            snp_metadata_pages(&mut g, self.svsm, None, VmmType::Qemu).map_err(SvsmError::Svsm)?;
        }
        for page in vmsas {
            g.update_vmsa(&page);
        }
        Ok(LaunchDigest::Snp(g.launch_digest()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gctx::{page_digest, PageType, LD_SIZE};
    use crate::test_image::image;

    const SECTIONS: &[(u32, u32, u32)] = &[
        (0x80_0000, 0x2000, 1),
        (0x80_2000, 0x1000, 2),
        (0x80_3000, 0x1000, 3),
        (0x80_4000, 0x1000, 4),
        (0x80_5000, 0x1000, 0x10),
    ];

    fn svsm_image() -> Vec<u8> {
        image(
            0x4000,
            7,
            &[(SVSM_INFO_GUID, 0x1230u32.to_le_bytes().to_vec())],
            Some(SECTIONS),
        )
    }

    #[test]
    fn chains_ovmf_svsm_metadata_and_vmsas_in_order() {
        let ovmf_data = image(0x3000, 1, &[], None);
        let svsm_data = svsm_image();
        let ovmf = Firmware::parse(&ovmf_data).unwrap();
        let svsm = Firmware::parse(&svsm_data).unwrap();
        let end = ovmf.gpa() - 0x2000;
        let launch = SvsmLaunch::new(&ovmf, &svsm, end).unwrap();
        assert_eq!(launch.svsm_gpa(), end - 0x4000);
        assert_eq!(launch.entry_point(), end - 0x4000 + 0x1230);
        let sig = VcpuSignature(0x00a0_0f11);
        let pages: Vec<_> = launch.vmsa_pages(3, sig).collect();
        assert_eq!(pages.len(), 3);
        assert!(pages
            .iter()
            .all(|p| *p == svsm_vmsa_page(launch.entry_point(), sig)));

        let mut g = Gctx::new();
        g.update_normal_pages(ovmf.gpa(), &ovmf_data);
        g.update_normal_pages(end - 0x4000, &svsm_data);
        g.update_empty_pages(PageType::Zero, 0x80_0000, 0x2000);
        g.update(PageType::Secrets, 0x80_2000, &[0; LD_SIZE]);
        g.update(PageType::Cpuid, 0x80_3000, &[0; LD_SIZE]);
        g.update_empty_pages(PageType::Zero, 0x80_4000, 0x1000);
        g.update_empty_pages(PageType::Zero, 0x80_5000, 0x1000);
        for p in &pages {
            g.update(PageType::Vmsa, 0xFFFF_FFFF_F000, &page_digest(p));
        }
        let digest = launch.launch_digest(pages).unwrap();
        assert_eq!(digest, LaunchDigest::Snp(g.launch_digest()));
    }

    /// A known answer from `sev-snp-measure` 0.0.13 for the images above
    /// (written to files, `--mode snp:svsm --vcpus 2 --vcpu-type EPYC-Milan
    /// --vars-size 8192`).
    #[test]
    fn agrees_with_the_reference_implementation() {
        let ovmf_data = image(0x3000, 1, &[], None);
        let svsm_data = svsm_image();
        let ovmf = Firmware::parse(&ovmf_data).unwrap();
        let svsm = Firmware::parse(&svsm_data).unwrap();
        let launch = SvsmLaunch::new(&ovmf, &svsm, ovmf.gpa() - 8192).unwrap();
        let sig = crate::vcpu::vcpu_type_signature("EPYC-Milan").unwrap();
        let digest = launch.launch_digest(launch.vmsa_pages(2, sig)).unwrap();
        assert_eq!(digest.to_hex(), KNOWN_ANSWER);
    }

    const KNOWN_ANSWER: &str = "6fd70a12fa7afe290cfcf6b19541a38cba0ecf815dddc280f6305284e060343d7035b7abfb3efb9c51504f9a9a02afe6";

    #[test]
    fn refuses_images_it_cannot_place_or_enter() {
        let ovmf_data = image(0x3000, 1, &[], None);
        let ovmf = Firmware::parse(&ovmf_data).unwrap();
        let svsm_data = svsm_image();
        let svsm = Firmware::parse(&svsm_data).unwrap();
        assert!(matches!(
            SvsmLaunch::new(&ovmf, &svsm, 0x1000),
            Err(SvsmError::Placement { .. })
        ));
        let no_info = image(0x4000, 7, &[], Some(SECTIONS));
        let no_info = Firmware::parse(&no_info).unwrap();
        assert_eq!(
            SvsmLaunch::new(&ovmf, &no_info, ovmf.gpa()).unwrap_err(),
            SvsmError::NoSvsmInfo
        );
        let mut odd = svsm_data.clone();
        odd.insert(0, 0);
        let odd = Firmware::parse(&odd).unwrap();
        assert!(matches!(
            SvsmLaunch::new(&ovmf, &odd, ovmf.gpa()),
            Err(SvsmError::UnalignedSvsm { len: 0x4001 })
        ));
        let unknown = image(
            0x4000,
            7,
            &[(SVSM_INFO_GUID, vec![0, 0, 0, 0])],
            Some(&[(0x80_0000, 0x1000, 9)]),
        );
        let unknown = Firmware::parse(&unknown).unwrap();
        assert_eq!(
            SvsmLaunch::new(&ovmf, &unknown, ovmf.gpa()).unwrap_err(),
            SvsmError::Svsm(MeasureError::UnknownSection(9))
        );
        let odd_ovmf = image(0x3001, 1, &[], None);
        let odd_ovmf = Firmware::parse(&odd_ovmf).unwrap();
        assert!(matches!(
            SvsmLaunch::new(&odd_ovmf, &svsm, 0x1_0000_0000),
            Err(SvsmError::UnalignedOvmf { len: 0x3001 })
        ));
    }

    #[test]
    fn an_svsm_without_metadata_adds_only_its_pages() {
        let ovmf_data = image(0x3000, 1, &[], None);
        let ovmf = Firmware::parse(&ovmf_data).unwrap();
        let bare = image(
            0x2000,
            9,
            &[(SVSM_INFO_GUID, 0x10u32.to_le_bytes().to_vec())],
            None,
        );
        let svsm = Firmware::parse(&bare).unwrap();
        let launch = SvsmLaunch::new(&ovmf, &svsm, ovmf.gpa()).unwrap();
        let mut g = Gctx::new();
        g.update_normal_pages(ovmf.gpa(), &ovmf_data);
        g.update_normal_pages(ovmf.gpa() - 0x2000, &bare);
        assert_eq!(
            launch.launch_digest([]).unwrap(),
            LaunchDigest::Snp(g.launch_digest())
        );
    }
}
