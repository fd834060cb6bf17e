//! The SNP launch digest chain (the PSP's guest context, GCTX).
//!
//! Every page the VMM adds with SNP_LAUNCH_UPDATE extends the digest:
//! `ld = SHA-384(ld || contents || PAGE_INFO fields)` (SNP firmware ABI, "PAGE_INFO
//! structure"), where `contents` is the SHA-384 of the page for normal and VMSA
//! pages and zero for the other page types.

use sha2::{Digest, Sha384};

/// Length of an SNP launch digest.
pub const LD_SIZE: usize = 48;
/// A SHA-384 digest.
pub type Sha384Digest = [u8; LD_SIZE];

const PAGE: u64 = 4096;
const PAGE_BYTES: usize = 4096;
/// VMSA pages are recorded at GPA -1, page-aligned, bits above 51 cleared.
const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Page types of SNP_LAUNCH_UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// Measured contents.
    Normal = 1,
    /// A vCPU's VMSA.
    Vmsa = 2,
    /// A zeroed page.
    Zero = 3,
    /// Contents not measured.
    Unmeasured = 4,
    /// The secrets page.
    Secrets = 5,
    /// The CPUID page.
    Cpuid = 6,
}

/// The running SNP launch digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gctx {
    ld: Sha384Digest,
}

impl Default for Gctx {
    fn default() -> Self {
        Gctx { ld: [0; LD_SIZE] }
    }
}

impl Gctx {
    /// A digest chain starting from zero, as LAUNCH_START leaves it.
    pub fn new() -> Gctx {
        Gctx::default()
    }

    /// A digest chain that continues from `ld`, a launch digest computed earlier
    /// over the first pages of the same launch (for example the firmware's,
    /// precomputed once and reused for every VM shape).
    pub fn resume(ld: Sha384Digest) -> Gctx {
        Gctx { ld }
    }

    /// The current launch digest.
    pub fn launch_digest(&self) -> Sha384Digest {
        self.ld
    }

    /// Extends the chain with one page of the given type.
    pub fn update(&mut self, page_type: PageType, gpa: u64, contents: &Sha384Digest) {
        let mut h = Sha384::new();
        h.update(self.ld);
        h.update(contents);
        h.update(0x70u16.to_le_bytes()); // PAGE_INFO length
        h.update([page_type as u8, 0 /* is_imi */]);
        h.update([0u8; 4]); // vmpl3, vmpl2, vmpl1 permissions, reserved
        h.update(gpa.to_le_bytes());
        self.ld = h.finalize().into();
    }

    /// Extends the chain with normal pages whose SHA-384 digests are already known,
    /// starting at `gpa`.
    pub fn update_normal_digests(&mut self, gpa: u64, page_digests: &[Sha384Digest]) {
        for (i, d) in page_digests.iter().enumerate() {
            self.update(PageType::Normal, gpa + i as u64 * PAGE, d);
        }
    }

    /// Extends the chain with `data`, one normal page per 4 KiB. A trailing partial
    /// page is not measured: callers check alignment first.
    pub fn update_normal_pages(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks_exact(PAGE_BYTES).enumerate() {
            self.update(PageType::Normal, gpa + i as u64 * PAGE, &page_digest(page));
        }
    }

    /// Extends the chain with `len` bytes of pages of a content-less type.
    pub fn update_empty_pages(&mut self, page_type: PageType, gpa: u64, len: u64) {
        let mut off = 0;
        while off < len {
            self.update(page_type, gpa + off, &[0; LD_SIZE]);
            off += PAGE;
        }
    }

    /// Extends the chain with one VMSA page.
    pub fn update_vmsa(&mut self, vmsa: &[u8]) {
        self.update(PageType::Vmsa, VMSA_GPA, &page_digest(vmsa));
    }
}

/// SHA-384 of one page.
pub fn page_digest(page: &[u8]) -> Sha384Digest {
    Sha384::digest(page).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_from_a_digest_continues_the_same_chain() {
        let pages = vec![0x5au8; 3 * PAGE_BYTES];
        let mut whole = Gctx::new();
        whole.update_normal_pages(0x1000, &pages);
        whole.update_empty_pages(PageType::Zero, 0x8000, 2 * PAGE);

        let mut first = Gctx::new();
        first.update_normal_pages(0x1000, &pages);
        let mut resumed = Gctx::resume(first.launch_digest());
        resumed.update_empty_pages(PageType::Zero, 0x8000, 2 * PAGE);
        assert_eq!(resumed, whole);
        assert_ne!(Gctx::new().launch_digest(), whole.launch_digest());
    }
}
