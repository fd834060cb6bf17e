//! Firmware images come from files an operator or a package names: parse any
//! bytes, and measure them in every mode, without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sev_core::{hashes::KernelHashes, launch_digest, Firmware, SevMode, VcpuSignature, VmShape, VmmType};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, image)) = data.split_first() else { return };
    let Ok(fw) = Firmware::parse(image) else { return };
    let _ = fw.metadata_sections();
    let hashes = KernelHashes { kernel: [1; 32], initrd: [2; 32], cmdline: [3; 32] };
    let shape = VmShape {
        vcpus: u32::from(knobs & 7),
        vcpu_sig: VcpuSignature(0x00a0_0f11),
        guest_features: 1,
        vmm: [VmmType::Qemu, VmmType::Ec2, VmmType::Gce][usize::from(knobs >> 3) % 3],
        fpu: sev_core::vmsa::VmsaFpu::Reset,
    };
    for mode in SevMode::ALL {
        let _ = launch_digest(&fw, mode, None, &shape);
        let _ = launch_digest(&fw, mode, Some(&hashes), &shape);
    }
});
