//! The SEV hashes table: how QEMU commits kernel, initrd and command line to a launch.
//!
//! With `kernel-hashes=on`, QEMU writes SHA-256 digests of the three into a table
//! inside the firmware's reserved area before LAUNCH_UPDATE_DATA, so they become part
//! of the launch digest. The table must match QEMU's byte for byte: header GUID, u16
//! length, three entries (command line, initrd, kernel) of GUID, u16 length, digest,
//! zero padding to 16 bytes.

use crate::guid::Guid;
use sha2::{Digest, Sha256};

/// Header GUID of the SEV hashes table.
pub const TABLE_GUID: Guid = Guid::from_text("9438d606-4f22-4cc9-b479-a793d411fd21");
/// Entry GUID for the kernel digest.
pub const KERNEL_GUID: Guid = Guid::from_text("4de79437-abd2-427f-b835-d5b172d2045b");
/// Entry GUID for the initrd digest.
pub const INITRD_GUID: Guid = Guid::from_text("44baf731-3a2f-4bd7-9af1-41e29169781d");
/// Entry GUID for the command line digest.
pub const CMDLINE_GUID: Guid = Guid::from_text("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");

const ENTRY_LEN: u16 = 16 + 2 + 32;
const TABLE_LEN: u16 = 16 + 2 + 3 * ENTRY_LEN;
/// Length of the table as QEMU writes it, padded to a multiple of 16.
pub const PADDED_TABLE_LEN: usize = (TABLE_LEN as usize + 15) & !15;
/// Page size of guest memory.
pub const PAGE_SIZE: usize = 4096;

/// A SHA-256 digest of one artefact.
pub type Sha256Digest = [u8; 32];

/// The three digests QEMU puts in the hashes table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelHashes {
    /// SHA-256 of the kernel image file.
    pub kernel: Sha256Digest,
    /// SHA-256 of the initrd file; of no bytes when there is no initrd.
    pub initrd: Sha256Digest,
    /// SHA-256 of the command line plus one NUL byte.
    pub cmdline: Sha256Digest,
}

/// SHA-256 of the command line exactly as QEMU hashes it: the bytes as given,
/// untrimmed and unnormalised, followed by one NUL. No command line hashes as the
/// empty one.
pub fn cmdline_digest(cmdline: &[u8]) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(cmdline);
    h.update([0u8]);
    h.finalize().into()
}

/// SHA-256 of no bytes: the initrd digest when there is no initrd.
pub fn empty_digest() -> Sha256Digest {
    Sha256::digest([]).into()
}

impl KernelHashes {
    /// The padded table exactly as QEMU writes it into guest memory.
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut out = [0u8; PADDED_TABLE_LEN];
        let mut w = Writer {
            buf: &mut out,
            at: 0,
        };
        w.put(&TABLE_GUID.efi_bytes());
        w.put(&TABLE_LEN.to_le_bytes());
        for (guid, digest) in [
            (CMDLINE_GUID, &self.cmdline),
            (INITRD_GUID, &self.initrd),
            (KERNEL_GUID, &self.kernel),
        ] {
            w.put(&guid.efi_bytes());
            w.put(&ENTRY_LEN.to_le_bytes());
            w.put(digest);
        }
        out
    }

    /// A whole page with the table at `offset` and zeros elsewhere, as SNP measures it.
    /// `None` if the table would not fit in the page at that offset.
    pub fn page(&self, offset: usize) -> Option<[u8; PAGE_SIZE]> {
        let mut page = [0u8; PAGE_SIZE];
        page.get_mut(offset..offset.checked_add(PADDED_TABLE_LEN)?)?
            .copy_from_slice(&self.table());
        Some(page)
    }
}

/// Sequential writer over a fixed buffer; writes past the end are dropped, which the
/// constant sizes above rule out.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout_is_qemus() {
        assert_eq!(TABLE_LEN, 168);
        assert_eq!(PADDED_TABLE_LEN, 176);
        let h = KernelHashes {
            kernel: [0xaa; 32],
            initrd: [0xbb; 32],
            cmdline: [0xcc; 32],
        };
        let t = h.table();
        assert_eq!(&t[..16], &TABLE_GUID.efi_bytes());
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        assert_eq!(&t[18..34], &CMDLINE_GUID.efi_bytes());
        assert_eq!(&t[34..36], &50u16.to_le_bytes());
        assert_eq!(&t[36..68], &[0xcc; 32]);
        assert_eq!(&t[68..84], &INITRD_GUID.efi_bytes());
        assert_eq!(&t[118..134], &KERNEL_GUID.efi_bytes());
        assert_eq!(&t[136..168], &[0xaa; 32]);
        assert_eq!(&t[168..], &[0u8; 8]);
    }

    #[test]
    fn cmdline_is_hashed_verbatim_with_one_nul() {
        // sha256(b"\0")
        assert_eq!(
            hex::encode(cmdline_digest(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_ne!(cmdline_digest(b" quiet"), cmdline_digest(b"quiet"));
        assert_ne!(cmdline_digest(b"quiet "), cmdline_digest(b"quiet"));
    }

    #[test]
    fn page_rejects_offsets_that_do_not_fit() {
        let h = KernelHashes {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        };
        assert!(h.page(PAGE_SIZE - PADDED_TABLE_LEN).is_some());
        assert!(h.page(PAGE_SIZE - PADDED_TABLE_LEN + 1).is_none());
        let p = h.page(0xc00).unwrap();
        assert_eq!(&p[0xc00..0xc00 + PADDED_TABLE_LEN], &h.table());
    }
}
