//! Differential tests against the `sev` crate's measurement code, a second
//! independent implementation, where that crate is right; and pins of the places
//! where it is known to be wrong, so that we notice when it changes.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use host_agent::launch::{measure, LaunchArtefacts};
use sample_artefacts::SplitMix;
use sev::measurement::sev::{
    sev_calc_launch_digest, seves_calc_launch_digest, SevEsMeasurementArgs, SevMeasurementArgs,
};
use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};
use sev_core::vcpu::{vcpu_type_signature, VCPU_TYPES};
use sev_core::{SevMode, VmShape, VmmType};
use std::path::{Path, PathBuf};

/// One launch, described the way both implementations take it.
#[derive(Clone, Copy)]
struct Launch<'a> {
    mode: SevMode,
    fw: &'a Path,
    kernel: &'a Path,
    initrd: Option<&'a Path>,
    append: &'a str,
    vcpus: u32,
    cpu: &'a str,
    features: u64,
}

fn ours(l: &Launch<'_>) -> String {
    let Launch {
        mode,
        fw,
        kernel,
        initrd,
        append,
        vcpus,
        cpu,
        features,
    } = *l;
    let art = LaunchArtefacts {
        firmware: fw.to_path_buf(),
        kernel: Some(kernel.to_path_buf()),
        initrd: initrd.map(Path::to_path_buf),
        cmdline: Some(append.as_bytes().to_vec()),
    };
    let shape = VmShape {
        vcpus,
        vcpu_sig: vcpu_type_signature(cpu).unwrap(),
        guest_features: features,
        vmm: VmmType::Qemu,
        fpu: sev_core::vmsa::VmsaFpu::Reset,
    };
    measure(&art, mode, &shape).unwrap().to_hex()
}

fn theirs(l: &Launch<'_>) -> String {
    let Launch {
        mode,
        fw,
        kernel,
        initrd,
        append,
        vcpus,
        cpu,
        features,
    } = *l;
    let cpu_type = CpuType::try_from(cpu).unwrap();
    match mode {
        SevMode::Sev => hex::encode(
            sev_calc_launch_digest(SevMeasurementArgs {
                ovmf_file: fw.to_path_buf(),
                kernel_file: Some(kernel.to_path_buf()),
                initrd_file: initrd.map(Path::to_path_buf),
                append: Some(append),
            })
            .unwrap(),
        ),
        SevMode::SevEs => hex::encode(
            seves_calc_launch_digest(SevEsMeasurementArgs {
                vcpus,
                vcpu_type: cpu_type,
                ovmf_file: fw.to_path_buf(),
                kernel_file: Some(kernel.to_path_buf()),
                initrd_file: initrd.map(Path::to_path_buf),
                append: Some(append),
                vmm_type: Some(VMMType::QEMU),
            })
            .unwrap(),
        ),
        SevMode::Snp => snp_calc_launch_digest(SnpMeasurementArgs {
            vcpus,
            vcpu_type: cpu_type,
            ovmf_file: fw.to_path_buf(),
            guest_features: GuestFeatures(features),
            kernel_file: Some(kernel.to_path_buf()),
            initrd_file: initrd.map(Path::to_path_buf),
            append: Some(append),
            ovmf_hash_str: None,
            vmm_type: Some(VMMType::QEMU),
        })
        .unwrap()
        .get_hex_ld(),
    }
}

fn write_random(dir: &Path, name: &str, len: usize, rng: &mut SplitMix) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, rng.bytes(len)).unwrap();
    p
}

#[test]
fn agrees_with_the_sev_crate_on_the_real_amdsev_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix::new(0x5e7_c7a7e);
    let fw = common::real_firmware();
    let kernel = common::real_kernel();
    let initrd = write_random(dir.path(), "initrd", 3 << 20, &mut rng);
    let lines = [
        "console=hvc0 quiet panic=1 nr_cpus=2 selinux=0",
        "a",
        "agent.aa_kbc_params=online_sev_kbc::192.0.2.10:44444 clé=valeur",
    ];
    let mut compared = 0;
    for (i, append) in lines.iter().enumerate() {
        for mode in SevMode::ALL {
            let (name, ..) = VCPU_TYPES[(i * 5 + compared) % VCPU_TYPES.len()];
            let vcpus = 1 + (compared as u32 % 7);
            let initrd = (i % 2 == 0).then_some(initrd.as_path());
            let launch = Launch {
                mode,
                fw: &fw,
                kernel: &kernel,
                initrd,
                append,
                vcpus,
                cpu: name,
                features: 1,
            };
            assert_eq!(
                ours(&launch),
                theirs(&launch),
                "{mode} {name} x{vcpus} {append:?}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 9);
}

/// The `sev` crate trims the command line before hashing it; QEMU hashes it as
/// given. So for a command line with outer spaces the crate computes the digest of
/// a different launch, and ours agrees with sev-snp-measure instead.
#[test]
fn the_sev_crate_trims_the_command_line_and_we_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix::new(7);
    let fw = common::real_firmware();
    let kernel = write_random(dir.path(), "k", 1 << 16, &mut rng);
    let padded = " quiet panic=1 ";
    let trimmed = padded.trim();
    let padded_launch = Launch {
        mode: SevMode::Sev,
        fw: &fw,
        kernel: &kernel,
        initrd: None,
        append: padded,
        vcpus: 1,
        cpu: "EPYC",
        features: 1,
    };
    let trimmed_launch = Launch {
        append: trimmed,
        ..padded_launch
    };
    let crate_padded = theirs(&padded_launch);
    let ours_padded = ours(&padded_launch);
    let ours_trimmed = ours(&trimmed_launch);
    assert_eq!(
        crate_padded, ours_trimmed,
        "the crate no longer trims: revisit this pin"
    );
    assert_ne!(ours_padded, ours_trimmed);
    let oracle = common::oracle_batch(&[serde_json::json!({
        "mode": "sev", "ovmf": fw, "kernel": kernel, "initrd": null, "append": padded,
    })]);
    assert_eq!(oracle[0], ours_padded);
}
