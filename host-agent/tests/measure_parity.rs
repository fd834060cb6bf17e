//! `host-agent measure` against `sev-snp-measure` 0.0.13, process against
//! process: every mode and option the two share, over the real AmdSev OVMF, a
//! real kernel, the sample artefacts and generated images. Each pair of runs
//! must agree on the exit code and on standard output byte for byte, and with
//! `--dump-vmsa` on the VMSA files they leave in their working directories.
//!
//! `snp:svsm` needs an SVSM binary. `sev-snp-measure` reads one exactly as it
//! reads OVMF: the GUIDed footer table that ends 32 bytes before the end of the
//! file, the SVSM information entry (a789a612-0597-4c4b-a49f-cbb1fe9d1ddd) whose
//! first four bytes are the entry point's offset in the image, and optionally
//! SEV metadata (entry dc886566-984a-4798-a75e-5585a7bf67cc) listing the pages
//! to pre-populate. Nothing else of a COCONUT-SVSM build enters the digest, so
//! [`svsm_image`] builds minimal valid ones here; nothing is downloaded.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use sample_artefacts::{section, FirmwareSpec, SplitMix};
use sev_core::svsm::SVSM_INFO_GUID;
use sev_core::vcpu::VCPU_TYPES;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What one run left behind.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    /// Files the run wrote in its (fresh, otherwise empty) working directory.
    files: BTreeMap<String, Vec<u8>>,
}

fn run_in_fresh_dir(program: &Path, pre: &[&str], args: &[&str]) -> (Outcome, String) {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(program)
        .args(pre)
        .args(args)
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(cwd.path()).unwrap() {
        let entry = entry.unwrap();
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path()).unwrap(),
        );
    }
    let outcome = Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        files,
    };
    (outcome, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Splits `spec` at spaces into arguments, replacing each `{}` with the next of
/// `vals`, whole (paths and command lines may hold spaces).
fn argv(spec: &str, vals: &[&str]) -> Vec<String> {
    let mut vals = vals.iter();
    let args: Vec<String> = spec
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|w| match w {
            "{}" => vals.next().expect("a value for every {}").to_string(),
            w => w.to_string(),
        })
        .collect();
    assert!(vals.next().is_none(), "more values than {{}} in {spec:?}");
    args
}

/// Runs both tools with `args`, asserts that they agree, and returns the outcome.
fn agree(args: &[String]) -> Outcome {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let args = args.as_slice();
    let (ours, our_err) = run_in_fresh_dir(
        Path::new(env!("CARGO_BIN_EXE_host-agent")),
        &["measure"],
        args,
    );
    let (theirs, their_err) = run_in_fresh_dir(&common::oracle_cli(), &[], args);
    assert_eq!(
        ours, theirs,
        "{args:?}\nhost-agent stderr: {our_err}\nsev-snp-measure stderr: {their_err}"
    );
    if ours.code == Some(0) {
        assert!(!ours.stdout.is_empty(), "{args:?}: no digest");
    } else {
        assert!(ours.stdout.is_empty(), "{args:?}: output on failure");
        assert!(!our_err.contains("panicked"), "{args:?}: {our_err}");
    }
    ours
}

/// [`agree`], and both must exit with `code`.
fn agree_exit(code: i32, args: &[String]) -> Outcome {
    let o = agree(args);
    assert_eq!(o.code, Some(code), "{args:?}");
    o
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    s(&p)
}

/// A minimal SVSM binary of `pages` pages: filler, the footer table with the
/// SVSM information entry (entry point at `entry` bytes into the image) and,
/// with `sections` (gpa, size, type), SEV metadata 8 KiB from the end.
fn svsm_image(
    pages: usize,
    seed: u64,
    entry: u32,
    sections: Option<&[(u32, u32, u32)]>,
) -> Vec<u8> {
    let mut data = SplitMix::new(seed).bytes(pages * 4096);
    sample_artefacts::lay_out_footer(
        &mut data,
        vec![(SVSM_INFO_GUID, entry.to_le_bytes().to_vec())],
        sections,
    );
    data
}

/// SEV metadata like a COCONUT-SVSM build's: validated memory, secrets, CPUID,
/// the calling area and an (unused) kernel hashes page.
const SVSM_SECTIONS: &[(u32, u32, u32)] = &[
    (0x00c0_0000, 0x4000, section::SNP_SEC_MEM),
    (0x00c0_4000, 0x1000, section::SNP_SECRETS),
    (0x00c0_5000, 0x1000, section::CPUID),
    (0x00c0_6000, 0x1000, section::SVSM_CAA),
    (0x00c0_7000, 0x1000, section::SNP_KERNEL_HASHES),
];

/// `base` followed by `more`.
fn plus(base: &[String], more: Vec<String>) -> Vec<String> {
    [base, more.as_slice()].concat()
}

#[test]
fn launch_digests_agree_for_every_vcpu_option_and_vmm() {
    let fw = s(&common::real_firmware());
    for mode in ["sev", "seves", "snp"] {
        let base = argv("--mode {} --ovmf {}", &[mode, &fw]);
        for vcpus in ["1", "2", "7", "64", "0", "-1", "+3", "010"] {
            agree_exit(
                0,
                &plus(&base, argv("--vcpu-type EPYC-v4 --vcpus {}", &[vcpus])),
            );
        }
        for (name, ..) in VCPU_TYPES {
            agree_exit(0, &plus(&base, argv("--vcpus 2 --vcpu-type {}", &[name])));
        }
        for sig in [
            "0xa00f11",
            "0XA10F10",
            "10489617",
            "0b1",
            "0o17",
            "0x_80_0f12",
            " 0x800f12 ",
        ] {
            agree_exit(0, &plus(&base, argv("--vcpus 3 --vcpu-sig {}", &[sig])));
        }
        for fms in [
            "25 1 1",
            "23 49 0",
            "26 0 0",
            "15 255 15",
            "6 300 -1",
            "300 17 2",
        ] {
            let v: Vec<&str> = fms.split(' ').collect();
            let args = argv(
                "--vcpus 2 --vcpu-family {} --vcpu-model {} --vcpu-stepping {}",
                &v,
            );
            agree_exit(0, &plus(&base, args));
        }
        // Precedence: family over signature over type; a zero family or
        // signature counts as absent.
        for more in [
            "--vcpu-family 25 --vcpu-model 17 --vcpu-stepping 0 --vcpu-sig 0x800f12 --vcpu-type EPYC-Rome",
            "--vcpu-sig 0x800f12 --vcpu-type EPYC-Rome",
            "--vcpu-family 0 --vcpu-sig 0 --vcpu-type EPYC-Milan",
        ] {
            agree_exit(0, &plus(&base, argv(&format!("--vcpus 2 {more}"), &[])));
        }
        for vmm in ["QEMU", "ec2", "gce"] {
            let args = argv("--vcpus 4 --vcpu-type EPYC-Genoa --vmm-type {}", &[vmm]);
            agree_exit(0, &plus(&base, args));
            // EC2 and GCE need no vCPU signature.
            if vmm != "QEMU" {
                agree_exit(0, &plus(&base, argv("--vcpus 4 --vmm-type {}", &[vmm])));
            }
        }
        for features in [
            "0x1",
            "0x21",
            "0",
            "0x3f",
            "1_0",
            "0b101",
            "-1",
            "0xffffffffffffffff",
            "0x10000000000000001",
        ] {
            let args = argv(
                "--vcpus 2 --vcpu-type EPYC-Milan --guest-features {}",
                &[features],
            );
            agree_exit(0, &plus(&base, args));
        }
    }
}

#[test]
fn kernel_initrd_and_append_agree() {
    let dir = tempfile::tempdir().unwrap();
    let fw = s(&common::real_firmware());
    let kernel = s(&common::real_kernel());
    let mut rng = SplitMix::new(0x9a41_0001);
    let initrd = write(dir.path(), "initrd.img", &rng.bytes(3 << 20));
    let empty = write(dir.path(), "empty.img", b"");
    let sample = sample_artefacts::write_sample(&dir.path().join("sample")).unwrap();
    let (sfw, skernel, sinitrd) = (s(&sample.firmware), s(&sample.kernel), s(&sample.initrd));
    let appends = [
        "",
        " ",
        "console=hvc0",
        "  tsc=reliable  no_timer_check\trcupdate.rcu_expedited=1 ",
        "agent.aa_kbc_params=online_sev_kbc::192.0.2.10:44444 名前=値 🔐",
    ];
    for (fw, kernel, initrd) in [(&fw, &kernel, &initrd), (&sfw, &skernel, &sinitrd)] {
        for mode in ["sev", "seves", "snp"] {
            let base = argv(
                "--mode {} --ovmf {} --vcpus 2 --vcpu-type EPYC-v4",
                &[mode, fw],
            );
            agree_exit(0, &plus(&base, argv("--kernel {}", &[kernel])));
            agree_exit(
                0,
                &plus(&base, argv("--kernel {} --initrd {}", &[kernel, initrd])),
            );
            agree_exit(
                0,
                &plus(&base, argv("--kernel {} --initrd {}", &[kernel, &empty])),
            );
            for append in appends {
                let args = argv(
                    "--kernel {} --initrd {} --append {}",
                    &[kernel, initrd, append],
                );
                agree_exit(0, &plus(&base, args));
            }
            for vmm in ["ec2", "gce"] {
                let args = argv("--kernel {} --append quiet --vmm-type {}", &[kernel, vmm]);
                agree_exit(0, &plus(&base, args));
            }
            // An empty value counts as absent where sev-snp-measure tests an
            // option's truth: no kernel is measured, yet --initrd is allowed.
            agree_exit(
                0,
                &plus(
                    &base,
                    argv("--kernel {} --initrd {} --append x", &["", initrd]),
                ),
            );
            agree_exit(
                0,
                &plus(&base, argv("--kernel {} --initrd {}", &[kernel, ""])),
            );
            agree_exit(0, &plus(&base, argv("--initrd {} --append {}", &["", ""])));
        }
    }
}

#[test]
fn output_format_and_verbose_agree() {
    let fw = s(&common::real_firmware());
    let kernel = s(&common::real_kernel());
    for mode in ["sev", "seves", "snp"] {
        let base = argv(
            "--mode {} --ovmf {} --vcpus 2 --vcpu-type EPYC-Milan --kernel {}",
            &[mode, &fw, &kernel],
        );
        for format in ["", "--output-format hex", "--output-format base64"] {
            for verbose in ["", "-v", "--verbose"] {
                let o = agree_exit(0, &plus(&base, argv(&format!("{format} {verbose}"), &[])));
                assert_eq!(o.stdout.starts_with("Calculated "), !verbose.is_empty());
            }
        }
    }
    // Unambiguous prefixes of long options, as argparse allows.
    let args = argv(
        "--mode snp --ovmf {} --vcpus 1 --vcpu-t EPYC --out base64 --verb",
        &[&fw],
    );
    agree_exit(0, &args);
}

#[test]
fn snp_ovmf_hash_mode_and_flag_agree() {
    let dir = tempfile::tempdir().unwrap();
    let real = s(&common::real_firmware());
    let kernel = s(&common::real_kernel());
    let mut rng = SplitMix::new(0x9a41_0002);
    let mut firmwares = vec![real.clone()];
    for i in 0..3 {
        let spec = FirmwareSpec::random(&mut rng);
        firmwares.push(write(dir.path(), &format!("fw{i}.fd"), &spec.build()));
    }
    for fw in &firmwares {
        let hash = agree_exit(0, &argv("--mode snp:ovmf-hash --ovmf {}", &[fw])).stdout;
        let hash = hash.trim();
        assert_eq!(hash.len(), 96);
        // The mode answers before any other option is looked at: format, verbose,
        // VMM and kernel options are ignored, and no VMSA is written.
        let o = agree_exit(
            0,
            &argv(
                "--mode snp:ovmf-hash --ovmf {} --output-format base64 -v --dump-vmsa \
                 --vmm-type nonsense --initrd no-such-file",
                &[fw],
            ),
        );
        assert_eq!(o.stdout.trim(), hash);
        // Fed back, it gives the digest the whole firmware gives.
        let upper = hash.to_ascii_uppercase();
        let spaced: String = hash
            .as_bytes()
            .chunks(2)
            .map(|p| format!("{} ", std::str::from_utf8(p).unwrap()))
            .collect();
        for more in [
            argv("--vcpus 4 --vcpu-type EPYC-v4", &[]),
            argv(
                "--vcpus 1 --vcpu-sig 0xa10f10 --kernel {} --append x",
                &[&kernel],
            ),
            argv(
                "--vcpus 2 --vcpu-type EPYC --vmm-type ec2 --guest-features 0x21",
                &[],
            ),
        ] {
            let base = plus(&argv("--mode snp --ovmf {}", &[fw]), more);
            let whole = agree_exit(0, &base);
            for h in [hash, upper.as_str(), spaced.as_str()] {
                let resumed = agree_exit(0, &plus(&base, argv("--snp-ovmf-hash {}", &[h])));
                assert_eq!(resumed.stdout, whole.stdout);
            }
            // Another firmware's hash gives another digest.
            let other = "00".repeat(48);
            let o = agree_exit(0, &plus(&base, argv("--snp-ovmf-hash {}", &[&other])));
            assert_ne!(o.stdout, whole.stdout);
            // An empty hash counts as absent.
            agree_exit(0, &plus(&base, argv("--snp-ovmf-hash {}", &[""])));
        }
    }
    // Refusals: not hex, not 48 bytes, or a mode other than snp.
    let base = argv("--mode snp --ovmf {} --vcpus 2 --vcpu-type EPYC", &[&real]);
    for bad in ["zz", "abcd", "a", &"ab".repeat(49)] {
        agree_exit(1, &plus(&base, argv("--snp-ovmf-hash {}", &[bad])));
    }
    for mode in ["sev", "seves"] {
        let args = argv(
            "--mode {} --ovmf {} --vcpus 2 --vcpu-type EPYC --snp-ovmf-hash {}",
            &[mode, &real, &"ab".repeat(48)],
        );
        agree_exit(1, &args);
    }
    // An image that is not whole pages has no SNP hash.
    let odd = write(dir.path(), "odd.fd", &vec![0u8; 4096 * 3 + 100]);
    agree_exit(1, &argv("--mode snp:ovmf-hash --ovmf {}", &[&odd]));
}

#[test]
fn snp_svsm_mode_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let real = s(&common::real_firmware());
    let svsm = write(
        dir.path(),
        "svsm.bin",
        &svsm_image(64, 1, 0x1000, Some(SVSM_SECTIONS)),
    );
    let bare = write(dir.path(), "svsm-bare.bin", &svsm_image(16, 2, 0x40, None));
    let vars = write(dir.path(), "OVMF_VARS.fd", &vec![0u8; 540 * 1024]);
    let mut rng = SplitMix::new(0x9a41_0003);
    let generated = write(dir.path(), "fw.fd", &FirmwareSpec::random(&mut rng).build());
    for fw in [&real, &generated] {
        for image in [&svsm, &bare] {
            let base = argv("--mode snp:svsm --ovmf {} --svsm {}", &[fw, image]);
            for vars_opt in [
                argv("--vars-size 540672", &[]),
                argv("--vars-file {}", &[&vars]),
            ] {
                for cpu in [
                    "--vcpus 1 --vcpu-type EPYC-Milan",
                    "--vcpus 4 --vcpu-sig 0xa10f10",
                    "--vcpus 0 --vcpu-type EPYC",
                ] {
                    let args = plus(&plus(&base, argv(cpu, &[])), vars_opt.clone());
                    agree_exit(0, &args);
                    // Guest features and kernel options play no part in this mode.
                    let more = argv("--guest-features 0x21 --kernel no-such-file", &[]);
                    agree_exit(0, &plus(&args, more));
                    let v = agree_exit(0, &plus(&args, argv("-v --output-format base64", &[])));
                    assert!(v
                        .stdout
                        .starts_with("Calculated SEV_SNP_SVSM guest measurement: "));
                }
            }
            // --vars-size is decimal only, as Python's int().
            let args = argv("--vcpus 1 --vcpu-type EPYC --vars-size 0x4000", &[]);
            agree_exit(2, &plus(&base, args));
        }
    }
    let base = argv(
        "--mode snp:svsm --ovmf {} --vcpus 2 --vcpu-type EPYC",
        &[&real],
    );
    // Usage errors: no variable store size, a zero one, both ways of giving it,
    // no vCPU count.
    agree_exit(2, &plus(&base, argv("--svsm {}", &[&svsm])));
    agree_exit(2, &plus(&base, argv("--svsm {} --vars-size 0", &[&svsm])));
    let both = argv("--svsm {} --vars-size 4096 --vars-file {}", &[&svsm, &vars]);
    agree_exit(2, &plus(&base, both));
    let args = argv(
        "--mode snp:svsm --ovmf {} --svsm {} --vars-size 4096 --vcpu-type EPYC",
        &[&real, &svsm],
    );
    agree_exit(2, &args);
    // Failures: no --svsm, a missing variable store file, a VMM other than QEMU,
    // an SVSM without its information entry or not whole pages.
    agree_exit(1, &plus(&base, argv("--vars-size 4096", &[])));
    let missing = argv("--svsm {} --vars-file /nonexistent/OVMF_VARS.fd", &[&svsm]);
    agree_exit(1, &plus(&base, missing));
    let ec2 = argv("--svsm {} --vars-size 4096 --vmm-type ec2", &[&svsm]);
    agree_exit(1, &plus(&base, ec2));
    let no_info = write(dir.path(), "no-info.bin", &SplitMix::new(3).bytes(8 * 4096));
    agree_exit(
        1,
        &plus(&base, argv("--svsm {} --vars-size 4096", &[&no_info])),
    );
    let mut odd = svsm_image(8, 4, 0, None);
    odd.splice(0..0, [0u8; 16]);
    let odd = write(dir.path(), "odd.bin", &odd);
    agree_exit(1, &plus(&base, argv("--svsm {} --vars-size 4096", &[&odd])));
}

#[test]
fn dump_vmsa_writes_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let fw = s(&common::real_firmware());
    let kernel = s(&common::real_kernel());
    let svsm = write(
        dir.path(),
        "svsm.bin",
        &svsm_image(32, 5, 0x2000, Some(SVSM_SECTIONS)),
    );
    let cases = [
        (
            3,
            argv(
                "--mode seves --ovmf {} --vcpus 3 --vcpu-type EPYC-Rome",
                &[&fw],
            ),
        ),
        (
            2,
            argv(
                "--mode seves --ovmf {} --vcpus 2 --vcpu-sig 0xa00f11 --vmm-type ec2",
                &[&fw],
            ),
        ),
        (
            4,
            argv(
                "--mode snp --ovmf {} --vcpus 4 --vcpu-type EPYC-Genoa --guest-features 0x21 \
                 --kernel {}",
                &[&fw, &kernel],
            ),
        ),
        (
            1,
            argv(
                "--mode snp --ovmf {} --vcpus 1 --vcpu-type EPYC --vmm-type gce",
                &[&fw],
            ),
        ),
        (
            2,
            argv(
                "--mode snp:svsm --ovmf {} --svsm {} --vars-size 540672 --vcpus 2 \
                 --vcpu-type EPYC-Milan",
                &[&fw, &svsm],
            ),
        ),
    ];
    for (vcpus, args) in cases {
        let plain = agree_exit(0, &args);
        let dumped = agree_exit(0, &plus(&args, argv("--dump-vmsa", &[])));
        assert_eq!(dumped.stdout, plain.stdout, "{args:?}");
        let names: Vec<String> = (0..vcpus).map(|i| format!("vmsa{i}.bin")).collect();
        let written: Vec<String> = dumped.files.keys().cloned().collect();
        assert_eq!(written, names, "{args:?}");
        assert!(dumped.files.values().all(|f| f.len() == 4096));
    }
    // No vCPUs, no files; SEV has no VMSA to dump.
    let none = argv(
        "--mode snp --ovmf {} --vcpus 0 --vcpu-type EPYC --dump-vmsa",
        &[&fw],
    );
    assert!(agree_exit(0, &none).files.is_empty());
    agree_exit(2, &argv("--mode sev --ovmf {} --dump-vmsa", &[&fw]));
}

#[test]
fn usage_errors_exit_2_on_both() {
    let fw = s(&common::real_firmware());
    let kernel = s(&common::real_kernel());
    let cases = [
        "",
        "--ovmf {fw}",
        "--mode sev",
        "--mode tdx --ovmf {fw}",
        "--mode snp:ovmf-hash",
        "--mode seves --ovmf {fw} --vcpu-type EPYC",
        "--mode snp --ovmf {fw} --vcpu-type EPYC",
        "--mode snp:svsm --ovmf {fw} --vcpu-type EPYC --vars-size 4096",
        "--mode snp --ovmf {fw} --vcpus 2",
        "--mode seves --ovmf {fw} --vcpus 2 --vcpu-sig 0",
        "--mode snp --ovmf {fw} --vcpus 2 --vcpu-family 0",
        "--mode snp --ovmf {fw} --vcpus 2 --vcpu-type EPYC-v9",
        "--mode snp --ovmf {fw} --vcpus 2 --vcpu-type epyc",
        "--mode sev --ovmf {fw} --vmm-type qemu",
        "--mode sev --ovmf {fw} --output-format HEX",
        "--mode snp --ovmf {fw} --vcpus x --vcpu-type EPYC",
        "--mode snp --ovmf {fw} --vcpus 0x4 --vcpu-type EPYC",
        "--mode snp --ovmf {fw} --vcpus 1.0 --vcpu-type EPYC",
        "--mode snp --ovmf {fw} --vcpus 2 --vcpu-sig 0xzz",
        "--mode snp --ovmf {fw} --vcpus 2 --vcpu-sig 0100",
        "--mode snp --ovmf {fw} --vcpus 2 --vcpu-type EPYC --guest-features 1__0",
        "--mode snp --ovmf {fw} --vcpus 2 --vcpu-family 0x19",
        "--mode sev --ovmf {fw} --initrd {kernel}",
        "--mode sev --ovmf {fw} --append console=hvc0",
        "--mode sev --ovmf {fw} --dump-vmsa",
        "--mode sev --ovmf {fw} --vcpu 2",
        "--mode sev --ovmf {fw} --no-such-option",
        "--mode sev --ovmf {fw} stray",
        "--mode sev --ovmf {fw} --vars-size 1 --vars-file {fw}",
        "--mode sev --ovmf {fw} --dump-vmsa=yes",
        "--mode sev --ovmf",
    ];
    for spec in cases {
        let mut vals = Vec::new();
        let words: Vec<&str> = spec
            .split(' ')
            .map(|w| match w {
                "{fw}" => {
                    vals.push(fw.as_str());
                    "{}"
                }
                "{kernel}" => {
                    vals.push(kernel.as_str());
                    "{}"
                }
                w => w,
            })
            .collect();
        agree_exit(2, &argv(&words.join(" "), &vals));
    }
    // An empty VMM name is an unknown one.
    let args = argv(
        "--mode snp --ovmf {} --vcpus 2 --vcpu-type EPYC --vmm-type {}",
        &[&fw, ""],
    );
    agree_exit(2, &args);
}

#[test]
fn measurement_failures_exit_1_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let fw = s(&common::real_firmware());
    let kernel = s(&common::real_kernel());
    let mut no_reset = FirmwareSpec::amdsev(1 << 20, 11, 0, false);
    no_reset.reset_eip = None;
    let no_reset = write(dir.path(), "no-reset.fd", &no_reset.build());
    let mut no_table = FirmwareSpec::amdsev(1 << 20, 12, 0, false);
    no_table.hashes_table_gpa = None;
    let no_table = write(dir.path(), "no-table.fd", &no_table.build());
    let mut no_meta = FirmwareSpec::amdsev(1 << 20, 13, 0, false);
    no_meta.sections = None;
    let no_meta = write(dir.path(), "no-meta.fd", &no_meta.build());
    let one = "--vcpus 1 --vcpu-type EPYC";
    let cases = [
        // sev-snp-measure fails at run time on a family without model and stepping.
        argv("--mode snp --ovmf {} --vcpus 2 --vcpu-family 25", &[&fw]),
        argv(
            "--mode snp --ovmf {} --vcpus 2 --vcpu-family 25 --vcpu-model 1",
            &[&fw],
        ),
        argv("--mode sev --ovmf /nonexistent/OVMF.fd", &[]),
        argv(&format!("--mode seves --ovmf {{}} {one}"), &[""]),
        argv("--mode snp:ovmf-hash --ovmf /nonexistent/OVMF.fd", &[]),
        argv("--mode sev --ovmf {} --kernel /nonexistent/vmlinuz", &[&fw]),
        argv(
            "--mode sev --ovmf {} --kernel {} --initrd /nonexistent/initrd",
            &[&fw, &kernel],
        ),
        argv(&format!("--mode seves --ovmf {{}} {one}"), &[&no_reset]),
        argv(&format!("--mode snp --ovmf {{}} {one}"), &[&no_reset]),
        argv("--mode sev --ovmf {} --kernel {}", &[&no_table, &kernel]),
        argv(
            &format!("--mode seves --ovmf {{}} --kernel {{}} {one}"),
            &[&no_table, &kernel],
        ),
        argv(
            &format!("--mode snp --ovmf {{}} --kernel {{}} {one}"),
            &[&no_table, &kernel],
        ),
        argv(
            &format!("--mode snp --ovmf {{}} --kernel {{}} {one}"),
            &[&no_meta, &kernel],
        ),
    ];
    for args in cases {
        agree_exit(1, &args);
    }
    // What still measures on the same images.
    agree_exit(0, &argv("--mode sev --ovmf {}", &[&no_reset]));
    agree_exit(
        0,
        &argv(&format!("--mode snp --ovmf {{}} {one}"), &[&no_table]),
    );
    agree_exit(
        0,
        &argv(&format!("--mode seves --ovmf {{}} {one}"), &[&no_meta]),
    );
}

/// Where the two differ on purpose; each case pins both answers, so that a change
/// on either side is noticed.
#[test]
fn deliberate_differences_are_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let fw = s(&common::real_firmware());
    let kernel = s(&common::real_kernel());
    let mut no_meta = FirmwareSpec::amdsev(1 << 20, 13, 0, false);
    no_meta.sections = None;
    let no_meta = write(dir.path(), "no-meta.fd", &no_meta.build());
    let mut zero_table = FirmwareSpec::amdsev(1 << 20, 14, 0, false);
    zero_table.hashes_table_gpa = Some(0);
    let zero_table = write(dir.path(), "zero-table.fd", &zero_table.build());
    let snp = "--mode snp --ovmf {} --vcpus 1";
    let cases = [
        // QEMU refuses these SNP launches (no SEV metadata; a kernel with no
        // hashes table), so there is no digest to expect; sev-snp-measure
        // computes one.
        (argv(&format!("{snp} --vcpu-type EPYC"), &[&no_meta]), 1, 0),
        (
            argv(
                &format!("{snp} --vcpu-type EPYC --kernel {{}}"),
                &[&zero_table, &kernel],
            ),
            1,
            0,
        ),
        // A CPUID signature is 32 bits; sev-snp-measure puts any integer in the
        // 64-bit RDX.
        (argv(&format!("{snp} --vcpu-sig -1"), &[&fw]), 2, 0),
        (argv(&format!("{snp} --vcpu-sig 0x100000000"), &[&fw]), 2, 0),
        (
            argv(
                &format!("{snp} --vcpu-family -1 --vcpu-model 0 --vcpu-stepping 0"),
                &[&fw],
            ),
            2,
            0,
        ),
        // The mode aliases sev-snp-measure's SevMode knows and its argparse
        // refuses.
        (
            argv(
                "--mode SEV-SNP --ovmf {} --vcpus 1 --vcpu-type EPYC",
                &[&fw],
            ),
            0,
            2,
        ),
        (
            argv("--mode sev-es --ovmf {} --vcpus 1 --vcpu-type EPYC", &[&fw]),
            0,
            2,
        ),
    ];
    for (args, ours, theirs) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host_agent = Path::new(env!("CARGO_BIN_EXE_host-agent"));
        let (o, err) = run_in_fresh_dir(host_agent, &["measure"], &args);
        assert_eq!(o.code, Some(ours), "{args:?}: {err}");
        let (t, err) = run_in_fresh_dir(&common::oracle_cli(), &[], &args);
        assert_eq!(t.code, Some(theirs), "{args:?}: {err}");
    }
}

#[test]
fn generated_firmware_agrees_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SplitMix::new(0x9a41_0004);
    let kernel = write(dir.path(), "vmlinuz", &rng.bytes(1 << 20));
    let initrd = write(dir.path(), "initrd", &rng.bytes(2 << 20));
    let mut firmwares: Vec<PathBuf> = Vec::new();
    for i in 0..4 {
        let p = dir.path().join(format!("fw{i}.fd"));
        std::fs::write(&p, FirmwareSpec::random(&mut rng).build()).unwrap();
        firmwares.push(p);
    }
    for fw in &firmwares {
        let fw = s(fw);
        agree_exit(0, &argv("--mode snp:ovmf-hash --ovmf {}", &[&fw]));
        for mode in ["sev", "seves", "snp"] {
            for vmm in ["QEMU", "ec2", "gce"] {
                let args = argv(
                    "--mode {} --ovmf {} --vcpus 3 --vcpu-type EPYC-Turin --vmm-type {} \
                     --kernel {} --initrd {} --append {}",
                    &[mode, &fw, vmm, &kernel, &initrd, "console=hvc0 quiet"],
                );
                agree_exit(0, &args);
            }
        }
    }
}
