//! Synthetic launch artefacts: firmware images laid out like an AmdSev OVMF build,
//! random kernels and initrds, and a Kata configuration that names them.
//!
//! They exist so that the demo and the tests can exercise every path of launch
//! measurement without shipping other projects' binaries. The firmware is not
//! bootable; it only carries what QEMU and the PSP read from an OVMF image: the
//! GUIDed footer table, the SEV hashes table reservation, the SEV-ES reset block and
//! the SEV metadata sections. Every knob can be turned off to make broken images.

// Builders index and size fixed, self-sized buffers of a few megabytes.
#![allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use sev_core::firmware::{
    FOOTER_TABLE_GUID, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_RV_GUID, SEV_METADATA_GUID,
};
use sev_core::Guid;
use std::path::{Path, PathBuf};

/// A small deterministic generator (splitmix64): reproducible artefacts from a seed
/// without pulling a random-number crate into the product's build.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// SEV metadata section types, as OVMF's reset vector declares them.
pub mod section {
    /// Early validated memory.
    pub const SNP_SEC_MEM: u32 = 1;
    /// The secrets page.
    pub const SNP_SECRETS: u32 = 2;
    /// The CPUID page.
    pub const CPUID: u32 = 3;
    /// The SVSM calling area.
    pub const SVSM_CAA: u32 = 4;
    /// The kernel hashes page.
    pub const SNP_KERNEL_HASHES: u32 = 0x10;
}

/// What to put in a synthetic firmware image.
#[derive(Debug, Clone)]
pub struct FirmwareSpec {
    /// Image size in bytes.
    pub size: usize,
    /// Seed for the image's filler bytes.
    pub seed: u64,
    /// Write the footer table at all.
    pub footer: bool,
    /// Guest-physical address of the SEV hashes table (`Some(0)` writes a zero one,
    /// as generic OVMF builds do); `None` omits the entry.
    pub hashes_table_gpa: Option<u32>,
    /// SEV-ES AP reset vector; `None` omits the entry.
    pub reset_eip: Option<u32>,
    /// SEV metadata sections (gpa, size, type); `None` omits the metadata.
    pub sections: Option<Vec<(u32, u32, u32)>>,
}

impl FirmwareSpec {
    /// An AmdSev-shaped image of `size` bytes with the section layout of edk2's
    /// AmdSev build and the hashes table at `table_offset` within its page.
    pub fn amdsev(size: usize, seed: u64, table_offset: u32, with_svsm_caa: bool) -> FirmwareSpec {
        let mut sections = vec![
            (0x80_0000, 0x9000, section::SNP_SEC_MEM),
            (0x80_a000, 0x3000, section::SNP_SEC_MEM),
            (0x80_d000, 0x1000, section::SNP_SECRETS),
            (0x80_e000, 0x1000, section::CPUID),
        ];
        if with_svsm_caa {
            sections.push((0x80_f000, 0x1000, section::SVSM_CAA));
        }
        sections.push((0x81_1000, 0xf000, section::SNP_SEC_MEM));
        sections.push((0x81_0000, 0x1000, section::SNP_KERNEL_HASHES));
        FirmwareSpec {
            size,
            seed,
            footer: true,
            hashes_table_gpa: Some(0x81_0000 + table_offset),
            reset_eip: Some(0x80_b004),
            sections: Some(sections),
        }
    }

    /// A random AmdSev-shaped image: size, filler, table offset and layout vary.
    pub fn random(rng: &mut SplitMix) -> FirmwareSpec {
        let pages = 64 + rng.below(1024) as usize;
        let table_offset = (rng.below((4096 - 176) / 16) * 16) as u32;
        let mut spec = FirmwareSpec::amdsev(
            pages * 4096,
            rng.next_u64(),
            table_offset,
            rng.below(2) == 0,
        );
        spec.reset_eip = Some(0x80_0000 + (rng.below(0x1_0000) as u32) * 4);
        spec
    }

    /// Builds the image.
    pub fn build(&self) -> Vec<u8> {
        let mut rng = SplitMix::new(self.seed);
        let mut data = rng.bytes(self.size);
        if !self.footer || self.size < 0x3000 {
            return data;
        }
        let mut entries: Vec<(Guid, Vec<u8>)> = Vec::new();
        if let Some(gpa) = self.hashes_table_gpa {
            let mut v = gpa.to_le_bytes().to_vec();
            v.extend_from_slice(&0x400u32.to_le_bytes());
            entries.push((SEV_HASH_TABLE_RV_GUID, v));
        }
        if let Some(eip) = self.reset_eip {
            entries.push((SEV_ES_RESET_BLOCK_GUID, eip.to_le_bytes().to_vec()));
        }
        lay_out_footer(&mut data, entries, self.sections.as_deref());
        data
    }
}

/// Paths of a sample set written by [`write_sample`].
#[derive(Debug, Clone)]
pub struct Sample {
    /// The Kata configuration.
    pub config: PathBuf,
    /// The firmware.
    pub firmware: PathBuf,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: PathBuf,
}

/// Lays out, in `data`, what QEMU reads at the end of a firmware or SVSM
/// image: SEV metadata describing `sections` (gpa, size, type) 8 KiB from the
/// end, when given, and the footer table holding `entries` (the first listed
/// nearest the footer) plus the metadata's entry, ending 32 bytes from the
/// end. Images under 12 KiB are left as they are.
pub fn lay_out_footer(
    data: &mut [u8],
    mut entries: Vec<(Guid, Vec<u8>)>,
    sections: Option<&[(u32, u32, u32)]>,
) {
    let size = data.len();
    if size < 0x3000 {
        return;
    }
    if let Some(sections) = sections {
        // The metadata sits 8 KiB from the end, clear of the footer table.
        let offset = 0x2000usize;
        let start = size - offset;
        let len = 16 + 12 * sections.len();
        let mut meta = Vec::with_capacity(len);
        meta.extend_from_slice(b"ASEV");
        meta.extend_from_slice(&(len as u32).to_le_bytes());
        meta.extend_from_slice(&1u32.to_le_bytes());
        meta.extend_from_slice(&(sections.len() as u32).to_le_bytes());
        for (gpa, size, kind) in sections {
            meta.extend_from_slice(&gpa.to_le_bytes());
            meta.extend_from_slice(&size.to_le_bytes());
            meta.extend_from_slice(&kind.to_le_bytes());
        }
        if len < offset - 0x400 {
            data[start..start + len].copy_from_slice(&meta);
            entries.push((SEV_METADATA_GUID, (offset as u32).to_le_bytes().to_vec()));
        }
    }
    // Entries grow backwards from the footer: the first listed sits nearest it.
    let mut table = Vec::new();
    for (guid, value) in entries.iter().rev() {
        table.extend_from_slice(value);
        table.extend_from_slice(&((value.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&guid.efi_bytes());
    }
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(&FOOTER_TABLE_GUID.efi_bytes());
    let end = size - 32;
    data[end - table.len()..end].copy_from_slice(&table);
}

/// A Kata SEV configuration in the shape CoCo ships, naming `firmware`, `kernel`
/// and `initrd`. Written here; only the keys the launch depends on are set.
pub fn sample_config(firmware: &Path, kernel: &Path, initrd: &Path) -> String {
    format!(
        r#"# Sample Kata Containers configuration for an SEV confidential guest.
# It has the keys of CoCo's configuration-qemu-sev.toml that decide the launch;
# the artefacts it names are synthetic (see the sample-artefacts crate).

[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"
kernel = "{kernel}"
initrd = "{initrd}"
firmware = "{firmware}"
machine_type = "q35"
confidential_guest = true
sev_snp_guest = false
# Kernel parameters appended after those the runtime adds.
kernel_params = "agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false"
cpu_features = "pmu=off"
default_vcpus = 1
default_maxvcpus = 0
block_device_driver = "virtio-scsi"
disable_guest_selinux = true
# Pre-attestation with the key broker before the guest boots.
guest_pre_attestation = true
guest_pre_attestation_kbs_uri = "192.0.2.10:44444"
guest_pre_attestation_kbs_mode = "online"
guest_pre_attestation_keyset = "KEYSET-1"
sev_cert_chain = "/opt/sev/cert_chain.cert"
sev_guest_policy = 3

[agent.kata]

[runtime]
static_sandbox_resource_mgmt = true
"#,
        firmware = firmware.display(),
        kernel = kernel.display(),
        initrd = initrd.display(),
    )
}

/// Writes a synthetic firmware, kernel, initrd and a Kata configuration naming
/// them into `dir`, reproducibly.
pub fn write_sample(dir: &Path) -> std::io::Result<Sample> {
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let mut rng = SplitMix::new(0x5ee_d5e7);
    let s = Sample {
        config: dir.join("configuration-qemu-sev.toml"),
        firmware: dir.join("AMDSEV.fd"),
        kernel: dir.join("vmlinuz-sev.container"),
        initrd: dir.join("kata-containers-initrd-sev.img"),
    };
    std::fs::write(
        &s.firmware,
        FirmwareSpec::amdsev(4 << 20, 1, 0xc00, true).build(),
    )?;
    std::fs::write(&s.kernel, rng.bytes(6 << 20))?;
    std::fs::write(&s.initrd, rng.bytes(12 << 20))?;
    std::fs::write(&s.config, sample_config(&s.firmware, &s.kernel, &s.initrd))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev_core::Firmware;

    #[test]
    fn amdsev_image_parses_like_the_real_one() {
        let data = FirmwareSpec::amdsev(4 << 20, 7, 0xc00, true).build();
        let fw = Firmware::parse(&data).unwrap();
        assert_eq!(fw.sev_hashes_table_gpa().unwrap(), Some(0x81_0c00));
        assert_eq!(fw.sev_es_reset_eip().unwrap(), Some(0x80_b004));
        assert_eq!(fw.metadata_sections().unwrap().unwrap().len(), 7);
    }

    #[test]
    fn knobs_remove_what_they_say() {
        let mut spec = FirmwareSpec::amdsev(1 << 20, 7, 0, false);
        spec.reset_eip = None;
        spec.sections = None;
        let data = spec.build();
        let fw = Firmware::parse(&data).unwrap();
        assert!(fw.sev_es_reset_eip().unwrap().is_none());
        assert!(fw.metadata_sections().unwrap().is_none());
        assert!(fw.supports_kernel_hashes().unwrap());
    }
}
