//! Differential tests: our launch digests against `sev-snp-measure` 0.0.13, the
//! independent implementation operators use today, over many generated launches
//! on generated firmware and on the real AmdSev build.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use host_agent::launch::{measure, LaunchArtefacts};
use sample_artefacts::{FirmwareSpec, SplitMix};
use serde_json::json;
use sev_core::vcpu::{vcpu_type_signature, VCPU_TYPES};
use sev_core::{SevMode, VcpuSignature, VmShape, VmmType};
use std::path::{Path, PathBuf};

/// One launch to measure both ways.
#[derive(Debug, Clone)]
struct Case {
    mode: SevMode,
    ovmf: PathBuf,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    vcpus: u32,
    sig: u32,
    guest_features: u64,
    vmm: VmmType,
}

impl Case {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "mode": self.mode.name(),
            "ovmf": self.ovmf,
            "kernel": self.kernel,
            "initrd": self.initrd,
            "append": self.append,
            "vcpus": self.vcpus,
            "vcpu_sig": self.sig,
            "guest_features": self.guest_features,
            "vmm_type": self.vmm.name(),
        })
    }

    fn ours(&self) -> Result<String, String> {
        let art = LaunchArtefacts {
            firmware: self.ovmf.clone(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.append.as_ref().map(|s| s.as_bytes().to_vec()),
        };
        let shape = VmShape {
            vcpus: self.vcpus,
            vcpu_sig: VcpuSignature(self.sig),
            guest_features: self.guest_features,
            vmm: self.vmm,
            fpu: sev_core::vmsa::VmsaFpu::Reset,
        };
        measure(&art, self.mode, &shape)
            .map(|d| d.to_hex())
            .map_err(|e| e.to_string())
    }
}

/// Command lines that stress what QEMU hashes: leading, trailing and repeated
/// spaces, tabs, non-ASCII text, empty strings.
fn random_cmdline(rng: &mut SplitMix) -> Option<String> {
    const TOKENS: &[&str] = &[
        "tsc=reliable",
        "no_timer_check",
        "console=hvc0",
        "console=hvc1",
        "quiet",
        "debug",
        "panic=1",
        "nr_cpus=4",
        "selinux=0",
        "agent.aa_kbc_params=online_sev_kbc::192.0.2.10:44444",
        "agent.config_file=/etc/agent-config.toml",
        "agent.enable_signature_verification=true",
        "clé=valeur",
        "名前=値",
        "emoji=🔐",
        "a=\"quoted value\"",
    ];
    const SEPS: &[&str] = &[" ", " ", " ", "  ", "   ", "\t"];
    match rng.below(12) {
        0 => return None,
        1 => return Some(String::new()),
        2 => return Some(" ".to_string()),
        _ => {}
    }
    let mut s = String::new();
    if rng.below(3) == 0 {
        s.push_str(SEPS[rng.below(SEPS.len() as u64) as usize]);
    }
    let n = 1 + rng.below(20);
    for i in 0..n {
        if i > 0 {
            s.push_str(SEPS[rng.below(SEPS.len() as u64) as usize]);
        }
        s.push_str(TOKENS[rng.below(TOKENS.len() as u64) as usize]);
    }
    if rng.below(3) == 0 {
        s.push_str(SEPS[rng.below(SEPS.len() as u64) as usize]);
    }
    Some(s)
}

fn random_signature(rng: &mut SplitMix) -> u32 {
    if rng.below(2) == 0 {
        let (name, ..) = VCPU_TYPES[rng.below(VCPU_TYPES.len() as u64) as usize];
        vcpu_type_signature(name).map(|s| s.0).unwrap_or(0)
    } else {
        // -cpu host on some family 0x17..0x1a part
        let family = 0x17 + rng.below(4) as u32;
        VcpuSignature::from_family_model_stepping(
            family,
            rng.below(256) as u32,
            rng.below(16) as u32,
        )
        .0
    }
}

/// Writes `count` random files of sizes in `min..max` and returns their paths.
fn random_files(
    dir: &Path,
    prefix: &str,
    count: usize,
    min: usize,
    max: usize,
    rng: &mut SplitMix,
) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let p = dir.join(format!("{prefix}{i}"));
            let len = min + rng.below((max - min) as u64) as usize;
            std::fs::write(&p, rng.bytes(len)).unwrap();
            p
        })
        .collect()
}

fn random_cases(
    firmwares: &[PathBuf],
    kernels: &[PathBuf],
    initrds: &[PathBuf],
    n: usize,
    rng: &mut SplitMix,
) -> Vec<Case> {
    (0..n)
        .map(|_| {
            let mode = SevMode::ALL[rng.below(3) as usize];
            let kernel = (rng.below(6) != 0)
                .then(|| kernels[rng.below(kernels.len() as u64) as usize].clone());
            let initrd = kernel.as_ref().and_then(|_| {
                (rng.below(4) != 0)
                    .then(|| initrds[rng.below(initrds.len() as u64) as usize].clone())
            });
            let append = kernel.as_ref().and_then(|_| random_cmdline(rng));
            let vmm = match rng.below(10) {
                0 => VmmType::Ec2,
                1 => VmmType::Gce,
                _ => VmmType::Qemu,
            };
            let guest_features = match rng.below(5) {
                0 => 0,
                1 => 0x21,
                2 => rng.next_u64() & 0xffff,
                _ => 1,
            };
            Case {
                mode,
                ovmf: firmwares[rng.below(firmwares.len() as u64) as usize].clone(),
                kernel,
                initrd,
                append,
                vcpus: {
                    let max = if rng.below(4) == 0 { 128 } else { 8 };
                    1 + rng.below(max) as u32
                },
                sig: random_signature(rng),
                guest_features,
                vmm,
            }
        })
        .collect()
}

/// Compares ours and the oracle's answer for every case; both must give the same
/// digest, or both must refuse.
fn assert_agree(cases: &[Case]) -> (usize, usize) {
    let answers = common::oracle_batch(&cases.iter().map(Case::to_json).collect::<Vec<_>>());
    let (mut digests, mut errors) = (0, 0);
    for (case, theirs) in cases.iter().zip(&answers) {
        match (case.ours(), theirs.strip_prefix("error: ")) {
            (Ok(ours), None) => {
                assert_eq!(&ours, theirs, "digest differs for {case:#?}");
                digests += 1;
            }
            (Err(_), Some(_)) => errors += 1,
            (ours, _) => {
                panic!("outcomes differ for {case:#?}: ours {ours:?}, sev-snp-measure {theirs:?}")
            }
        }
    }
    (digests, errors)
}

#[test]
fn agrees_with_sev_snp_measure_on_generated_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix::new(0xd1ff_0001);
    let mut firmwares = Vec::new();
    for i in 0..6 {
        let p = dir.path().join(format!("fw{i}.fd"));
        std::fs::write(&p, FirmwareSpec::random(&mut rng).build()).unwrap();
        firmwares.push(p);
    }
    let kernels = random_files(dir.path(), "vmlinuz", 4, 1, 3 << 20, &mut rng);
    let initrds = random_files(dir.path(), "initrd", 4, 0, 5 << 20, &mut rng);
    let cases = random_cases(&firmwares, &kernels, &initrds, 400, &mut rng);
    let (digests, _) = assert_agree(&cases);
    assert!(digests >= 350, "only {digests} cases produced digests");
}

#[test]
fn agrees_with_sev_snp_measure_on_real_amdsev_firmware_and_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix::new(0xd1ff_0002);
    let firmwares = vec![common::real_firmware()];
    let mut kernels = vec![common::real_kernel()];
    kernels.extend(random_files(
        dir.path(),
        "vmlinuz",
        2,
        1 << 10,
        2 << 20,
        &mut rng,
    ));
    let initrds = random_files(dir.path(), "initrd", 3, 0, 8 << 20, &mut rng);
    let cases = random_cases(&firmwares, &kernels, &initrds, 200, &mut rng);
    let (digests, errors) = assert_agree(&cases);
    assert_eq!(errors, 0, "the real AmdSev build supports every mode");
    assert_eq!(digests, 200);
}

#[test]
fn refuses_what_sev_snp_measure_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix::new(0xd1ff_0003);
    let kernels = random_files(dir.path(), "vmlinuz", 1, 1 << 10, 1 << 16, &mut rng);
    let mut specs = Vec::new();
    // A generic OVMF: no hashes table, or a zero one.
    let mut s = FirmwareSpec::amdsev(1 << 20, 1, 0, false);
    s.hashes_table_gpa = None;
    specs.push(s);
    let mut s = FirmwareSpec::amdsev(1 << 20, 2, 0, false);
    s.hashes_table_gpa = Some(0);
    specs.push(s);
    // No SEV-ES reset block.
    let mut s = FirmwareSpec::amdsev(1 << 20, 3, 0, false);
    s.reset_eip = None;
    specs.push(s);
    // SNP metadata without a kernel hashes section.
    let mut s = FirmwareSpec::amdsev(1 << 20, 4, 0, false);
    if let Some(sections) = s.sections.as_mut() {
        sections.retain(|&(_, _, kind)| kind != sample_artefacts::section::SNP_KERNEL_HASHES);
    }
    specs.push(s);
    let mut cases = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let p = dir.path().join(format!("fw{i}.fd"));
        std::fs::write(&p, spec.build()).unwrap();
        for mode in SevMode::ALL {
            for kernel in [None, Some(kernels[0].clone())] {
                cases.push(Case {
                    mode,
                    ovmf: p.clone(),
                    kernel,
                    initrd: None,
                    append: None,
                    vcpus: 2,
                    sig: 0x00a0_0f11,
                    guest_features: 1,
                    vmm: VmmType::Qemu,
                });
            }
        }
    }
    // QEMU refuses a kernel when the hashes-table entry holds address 0, in every
    // mode; sev-snp-measure still computes an SNP digest for that launch. We follow
    // QEMU: there is no such launch to expect a digest for.
    let zero_table = dir.path().join("fw1.fd");
    let (diverging, cases): (Vec<Case>, Vec<Case>) = cases
        .into_iter()
        .partition(|c| c.ovmf == zero_table && c.mode == SevMode::Snp && c.kernel.is_some());
    let (digests, errors) = assert_agree(&cases);
    assert!(
        errors >= 8 && digests >= 8,
        "{digests} digests, {errors} refusals"
    );
    assert_eq!(diverging.len(), 1);
    let err = diverging[0].ours().unwrap_err();
    assert!(
        err.contains("no SEV hashes table") && err.contains("AmdSev"),
        "{err}"
    );
    let theirs = common::oracle_batch(&[diverging[0].to_json()]);
    assert!(
        !theirs[0].starts_with("error"),
        "sev-snp-measure now refuses it too: {theirs:?}"
    );
}
