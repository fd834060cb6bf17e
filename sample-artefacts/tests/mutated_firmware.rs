//! The firmware parser and measurement on damaged images: every mutation of a
//! valid AmdSev-shaped image either measures or gives an error, never a panic.
//! (The fuzz target `firmware` explores the same code with coverage guidance.)

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use sample_artefacts::{FirmwareSpec, SplitMix};
use sev_core::hashes::KernelHashes;
use sev_core::{launch_digest, Firmware, SevMode, VcpuSignature, VmShape, VmmType};

#[test]
fn damaged_images_never_panic() {
    let mut rng = SplitMix::new(0xbad_f00d);
    let hashes = KernelHashes {
        kernel: [1; 32],
        initrd: [2; 32],
        cmdline: [3; 32],
    };
    let (mut measured, mut refused) = (0, 0);
    for round in 0..400 {
        let mut image = FirmwareSpec::random(&mut rng).build();
        // Damage the tail, where the footer table and the metadata live, or cut it.
        let len = image.len();
        match round % 4 {
            0 => image.truncate(rng.below(len as u64) as usize),
            _ => {
                for _ in 0..1 + rng.below(8) {
                    let at = len - 1 - rng.below(0x2100) as usize;
                    image[at] = rng.next_u64() as u8;
                }
            }
        }
        let Ok(fw) = Firmware::parse(&image) else {
            refused += 1;
            continue;
        };
        let shape = VmShape {
            vcpus: 1 + rng.below(4) as u32,
            vcpu_sig: VcpuSignature(0x00a0_0f11),
            guest_features: 1,
            vmm: [VmmType::Qemu, VmmType::Ec2, VmmType::Gce][rng.below(3) as usize],
            fpu: sev_core::vmsa::VmsaFpu::Reset,
        };
        for mode in SevMode::ALL {
            for h in [None, Some(&hashes)] {
                match launch_digest(&fw, mode, h, &shape) {
                    Ok(_) => measured += 1,
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        refused += 1;
                    }
                }
            }
        }
    }
    assert!(
        measured > 100 && refused > 100,
        "{measured} measured, {refused} refused"
    );
}
