//! Initial VMSA pages: the encrypted register state of each vCPU at launch.
//!
//! For SEV-ES and SNP the PSP measures one VMSA page per vCPU. Their contents are
//! the reset state QEMU and KVM give a vCPU (AMD APM vol. 2, table B-4, "VMSA
//! layout"), which differs slightly between VMMs. The bootstrap processor starts at
//! the reset vector 0xfffffff0, the others at the firmware's SEV-ES reset block.

use crate::vcpu::VcpuSignature;

/// Size of a VMSA page.
pub const VMSA_SIZE: usize = 4096;
/// Reset vector of the bootstrap processor.
pub const BSP_EIP: u32 = 0xffff_fff0;

/// The x87 and SSE state in a QEMU guest's initial VMSAs, which the host kernel
/// decides rather than QEMU.
///
/// KVM in Linux 6.10 and later copies the vCPU's reset FPU state into the VMSA
/// (x87 control word 0x37f, MXCSR 0x1f80); earlier kernels leave those fields
/// zero. sev-snp-measure 0.0.10 and later assume the former, 0.0.9 the latter.
/// EC2 and GCE always start with them zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum VmsaFpu {
    /// Host kernel 6.10 or later: FCW 0x37f, MXCSR 0x1f80.
    #[default]
    Reset,
    /// Host kernel before 6.10: both zero.
    Zero,
}

impl VmsaFpu {
    /// A short description for status output.
    pub fn describe(self) -> &'static str {
        match self {
            VmsaFpu::Reset => "x87/SSE reset state (host kernel 6.10 or later)",
            VmsaFpu::Zero => "zero x87/SSE state (host kernel before 6.10)",
        }
    }
}

/// The virtual machine monitor that builds the initial register state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmmType {
    /// QEMU with KVM: what Kata uses.
    Qemu,
    /// Amazon EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

impl VmmType {
    /// Parses the names `sev-snp-measure` takes (`QEMU`, `ec2`, `gce`).
    pub fn from_name(name: &str) -> Option<VmmType> {
        match name {
            "QEMU" => Some(VmmType::Qemu),
            "ec2" => Some(VmmType::Ec2),
            "gce" => Some(VmmType::Gce),
            _ => None,
        }
    }

    /// The name `sev-snp-measure` uses.
    pub fn name(self) -> &'static str {
        match self {
            VmmType::Qemu => "QEMU",
            VmmType::Ec2 => "ec2",
            VmmType::Gce => "gce",
        }
    }
}

// Byte offsets of the fields this module sets (APM table B-4).
const SEG_ES: usize = 0x000;
const SEG_CS: usize = 0x010;
const SEG_SS: usize = 0x020;
const SEG_DS: usize = 0x030;
const SEG_FS: usize = 0x040;
const SEG_GS: usize = 0x050;
const SEG_GDTR: usize = 0x060;
const SEG_LDTR: usize = 0x070;
const SEG_IDTR: usize = 0x080;
const SEG_TR: usize = 0x090;
const EFER: usize = 0x0d0;
const CR4: usize = 0x148;
const CR0: usize = 0x158;
const DR7: usize = 0x160;
const DR6: usize = 0x168;
const RFLAGS: usize = 0x170;
const RIP: usize = 0x178;
const G_PAT: usize = 0x268;
const RDX: usize = 0x310;
const SEV_FEATURES: usize = 0x3b0;
const XCR0: usize = 0x3e8;
const MXCSR: usize = 0x408;
const X87_FCW: usize = 0x410;

/// Writes little-endian values at fixed offsets; every offset is a constant below
/// the page size, so the bounds check never fails.
struct Page([u8; VMSA_SIZE]);

impl Page {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.0.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.put(at, &v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }
    /// A segment register: selector, attributes, limit, base.
    fn seg(&mut self, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.u16(at, selector);
        self.u16(at + 2, attrib);
        self.u32(at + 4, limit);
        self.u64(at + 8, base);
    }
}

/// One initial VMSA page for a vCPU starting at `eip`.
pub fn vmsa_page(
    eip: u32,
    sev_features: u64,
    sig: VcpuSignature,
    vmm: VmmType,
    fpu: VmsaFpu,
) -> [u8; VMSA_SIZE] {
    let mut g_pat = 0x0007_0406_0007_0406u64;
    let (mut cs_flags, mut ss_flags, mut tr_flags) = (0x9b, 0x93, 0x8b);
    let (rdx, mxcsr, fcw) = match vmm {
        VmmType::Qemu => match fpu {
            VmsaFpu::Reset => (u64::from(sig.0), 0x1f80, 0x37f),
            VmsaFpu::Zero => (u64::from(sig.0), 0, 0),
        },
        VmmType::Ec2 => {
            if eip == BSP_EIP {
                cs_flags = 0x9a;
            }
            ss_flags = 0x92;
            tr_flags = 0x83;
            (0x600, 0, 0)
        }
        VmmType::Gce => {
            g_pat = 0x0007_0106;
            (0x600, 0, 0)
        }
    };
    let mut p = Page([0u8; VMSA_SIZE]);
    p.seg(SEG_ES, 0, 0x93, 0xffff, 0);
    p.seg(
        SEG_CS,
        0xf000,
        cs_flags,
        0xffff,
        u64::from(eip & 0xffff_0000),
    );
    p.seg(SEG_SS, 0, ss_flags, 0xffff, 0);
    p.seg(SEG_DS, 0, 0x93, 0xffff, 0);
    p.seg(SEG_FS, 0, 0x93, 0xffff, 0);
    p.seg(SEG_GS, 0, 0x93, 0xffff, 0);
    p.seg(SEG_GDTR, 0, 0, 0xffff, 0);
    p.seg(SEG_IDTR, 0, 0, 0xffff, 0);
    p.seg(SEG_LDTR, 0, 0x82, 0xffff, 0);
    p.seg(SEG_TR, 0, tr_flags, 0xffff, 0);
    p.u64(EFER, 0x1000); // KVM sets EFER.SVME
    p.u64(CR4, 0x40); // KVM sets CR4.MCE
    p.u64(CR0, 0x10);
    p.u64(DR7, 0x400);
    p.u64(DR6, 0xffff_0ff0);
    p.u64(RFLAGS, 0x2);
    p.u64(RIP, u64::from(eip & 0xffff));
    p.u64(G_PAT, g_pat);
    p.u64(RDX, rdx);
    p.u64(SEV_FEATURES, sev_features);
    p.u64(XCR0, 0x1);
    p.u32(MXCSR, mxcsr);
    p.u16(X87_FCW, fcw);
    p.0
}

/// The VMSA page of every vCPU of an SNP guest whose first code is an SVSM
/// (COCONUT-SVSM under QEMU), as `sev-snp-measure` 0.0.13 computes it for its
/// `snp:svsm` mode: all vCPUs start in 32-bit protected mode at `eip` (the
/// SVSM's entry point, an absolute address), with flat segments, SEV_FEATURES
/// 0x1 (SNP active) and the CPUID signature in RDX.
///
/// The x87 control word is left 0 while MXCSR is 0x1f80: that is what the
/// reference implementation produces (its structure has no field by the name it
/// sets the control word through), and digests are compared with it.
pub fn svsm_vmsa_page(eip: u64, sig: VcpuSignature) -> [u8; VMSA_SIZE] {
    let mut p = Page([0u8; VMSA_SIZE]);
    let flat_data = (16, 0xc93, 0xffff_ffff, 0);
    for at in [SEG_ES, SEG_SS, SEG_DS, SEG_FS] {
        p.seg(at, flat_data.0, flat_data.1, flat_data.2, flat_data.3);
    }
    p.seg(SEG_CS, 8, 0xc9b, 0xffff_ffff, 0);
    p.seg(SEG_GS, 0, 0x93, 0xffff, 0);
    p.seg(SEG_GDTR, 0, 0, 0xffff, 0);
    p.seg(SEG_IDTR, 0, 0, 0xffff, 0);
    p.seg(SEG_LDTR, 0, 0x82, 0xffff, 0);
    p.seg(SEG_TR, 0, 0x8b, 0xffff, 0);
    p.u64(EFER, 0x1000);
    p.u64(CR4, 0x40);
    p.u64(CR0, 0x11); // protected mode, extension type
    p.u64(DR7, 0x400);
    p.u64(DR6, 0xffff_0ff0);
    p.u64(RFLAGS, 0x2);
    p.u64(RIP, eip);
    p.u64(G_PAT, 0x0007_0406_0007_0406);
    p.u64(RDX, u64::from(sig.0));
    p.u64(SEV_FEATURES, 0x1);
    p.u64(XCR0, 0x1);
    p.u32(MXCSR, 0x1f80);
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svsm_vcpus_start_flat_in_protected_mode() {
        let p = svsm_vmsa_page(0xffbf_f000 + 0x1234, VcpuSignature(0x00a1_0f10));
        assert_eq!(
            &p[SEG_CS..SEG_CS + 16],
            &[8, 0, 0x9b, 0x0c, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&p[SEG_GS..SEG_GS + 4], &[0, 0, 0x93, 0]);
        assert_eq!(&p[CR0..CR0 + 8], &0x11u64.to_le_bytes());
        assert_eq!(&p[RIP..RIP + 8], &0xffc0_0234u64.to_le_bytes());
        assert_eq!(&p[RDX..RDX + 8], &0x00a1_0f10u64.to_le_bytes());
        assert_eq!(&p[SEV_FEATURES..SEV_FEATURES + 8], &1u64.to_le_bytes());
        assert_eq!(&p[MXCSR..MXCSR + 4], &0x1f80u32.to_le_bytes());
        assert_eq!(&p[X87_FCW..X87_FCW + 2], &[0, 0]);
    }

    #[test]
    fn bsp_state_for_qemu() {
        let p = vmsa_page(
            BSP_EIP,
            1,
            VcpuSignature(0x00a0_0f11),
            VmmType::Qemu,
            VmsaFpu::Reset,
        );
        assert_eq!(
            &p[SEG_CS..SEG_CS + 16],
            &[0x00, 0xf0, 0x9b, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(&p[RIP..RIP + 8], &0xfff0u64.to_le_bytes());
        assert_eq!(&p[RDX..RDX + 8], &0x00a0_0f11u64.to_le_bytes());
        assert_eq!(&p[SEV_FEATURES..SEV_FEATURES + 8], &1u64.to_le_bytes());
        assert_eq!(&p[MXCSR..MXCSR + 4], &0x1f80u32.to_le_bytes());
        assert_eq!(&p[X87_FCW..X87_FCW + 2], &0x37fu16.to_le_bytes());
    }

    #[test]
    fn older_host_kernels_leave_the_fpu_state_zero() {
        let sig = VcpuSignature(0x0080_0f12);
        let new = vmsa_page(BSP_EIP, 1, sig, VmmType::Qemu, VmsaFpu::Reset);
        let old = vmsa_page(BSP_EIP, 1, sig, VmmType::Qemu, VmsaFpu::Zero);
        assert_eq!(&old[MXCSR..MXCSR + 4], &[0; 4]);
        assert_eq!(&old[X87_FCW..X87_FCW + 2], &[0; 2]);
        let differing: Vec<usize> = (0..VMSA_SIZE).filter(|&i| new[i] != old[i]).collect();
        assert_eq!(differing, [MXCSR, MXCSR + 1, X87_FCW, X87_FCW + 1]);
    }

    #[test]
    fn ec2_and_gce_differ_from_qemu() {
        let sig = VcpuSignature(0x00a0_0f11);
        let q = vmsa_page(BSP_EIP, 0, sig, VmmType::Qemu, VmsaFpu::Reset);
        let e = vmsa_page(BSP_EIP, 0, sig, VmmType::Ec2, VmsaFpu::Reset);
        let g = vmsa_page(BSP_EIP, 0, sig, VmmType::Gce, VmsaFpu::Reset);
        assert_eq!(e[SEG_CS + 2], 0x9a);
        assert_eq!(&g[G_PAT..G_PAT + 8], &0x0007_0106u64.to_le_bytes());
        assert_ne!(q, e);
        assert_ne!(q, g);
    }
}
