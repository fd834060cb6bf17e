//! A small property test: random bytes, random TOML-ish text and random edits of
//! a real-looking configuration never make parsing, planning or the command-line
//! builder panic. Deterministic (a fixed-seed xorshift), no extra crates.

#![cfg(test)]

mod common;

use kata_launch::{kernel_cmdline, plan, KataConfig, LaunchContext};
use std::path::Path;

/// xorshift64*: deterministic, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const HEADERS: &[&str] = &[
    "[hypervisor.qemu]",
    "[agent.kata]",
    "[runtime]",
    "[hypervisor]",
    "[agent]",
    "[[hypervisor.qemu]]",
    "[hypervisor.qemu.kernel]",
    "[ hypervisor . \"qemu\" ]",
    "[image]",
    "[",
];

const KEYS: &[&str] = &[
    "path",
    "firmware",
    "kernel",
    "initrd",
    "image",
    "rootfs_type",
    "kernel_params",
    "default_vcpus",
    "default_maxvcpus",
    "machine_type",
    "cpu_features",
    "confidential_guest",
    "sev_snp_guest",
    "snp_guest_policy",
    "enable_iommu",
    "use_legacy_serial",
    "block_device_driver",
    "disable_image_nvdimm",
    "enable_debug",
    "guest_pre_attestation",
    "guest_pre_attestation_kbs_uri",
    "guest_pre_attestation_kbs_mode",
    "guest_pre_attestation_keyset",
    "sev_cert_chain",
    "sev_guest_policy",
    "disable_guest_selinux",
    "enable_annotations",
    "enable_tracing",
    "debug_console_enabled",
    "static_sandbox_resource_mgmt",
    "hypervisor.qemu.kernel",
    "agent.kata.enable_debug",
    "qemu",
    "kata",
    "unknown_key",
    "\"quoted key\"",
];

const VALUES: &[&str] = &[
    "true",
    "false",
    "0",
    "1",
    "-1",
    "7",
    "240",
    "2147483647",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "0x30000",
    "1.5",
    "nan",
    "inf",
    "1979-05-27T07:32:00Z",
    "\"\"",
    "\" \"",
    "\"/opt/kata/share/ovmf/AMDSEV.fd\"",
    "\"online\"",
    "\"offline\"",
    "\"Online\"",
    "\"virtio-scsi\"",
    "\"virtio-blk\"",
    "\"erofs\"",
    "\"btrfs\"",
    "\"microvm\"",
    "\"pc\"",
    "\"  a=1   b  =c key= =x \"",
    "\"=\"",
    "\"pmu=off,, ,x\"",
    "\"10.0.0.1:44444\"",
    "\"é ü \\u00e9 \\t\"",
    "[]",
    "[\"enable_iommu\"]",
    "[1, \"a\"]",
    "[[1], [2]]",
    "{}",
    "{ a = 1 }",
    "\"\"\"multi\nline\"\"\"",
    "'literal'",
    "\"unterminated",
    "=",
    "",
    "[",
    "{",
    "\"\\q\"",
];

fn exercise(text: &str, rng: &mut Rng) {
    let Ok(config) = KataConfig::parse(Path::new("/x/configuration-qemu-sev.toml"), text) else {
        return;
    };
    let _ = config.artefacts();
    let _ = config.qemu.kernel_param_tokens();
    let ctx = LaunchContext {
        pod_cpus: [0, 1, 3, u32::MAX][rng.below(4)],
        fips: rng.below(2) == 0,
        host_cpus: [None, Some(0), Some(4), Some(1024)][rng.below(4)],
        kernel_params_annotation: [None, Some(" a  =b "), Some("x=1 y")][rng.below(3)]
            .map(String::from),
        default_vcpus_annotation: [None, Some(0.0), Some(2.5), Some(f32::MAX)][rng.below(4)],
        kernel_verity_params_annotation: [None, Some(" "), Some("root_hash=a,salt=b")]
            [rng.below(3)]
        .map(String::from),
        release: ["CC-0.8.0", "3.19.0", "3.24.0", "3.29.0", "3.32.0", "4.1.0"][rng.below(6)]
            .parse()
            .unwrap(),
    };
    if let Ok(launch) = plan(&config, &ctx) {
        if ctx.release.is_cc() {
            assert_eq!(launch.cmdline, kernel_cmdline(&config, launch.vcpus, &ctx));
        }
        let _ = (launch.cpu_arg(), launch.smp_arg());
    }
    let _ = kernel_cmdline(&config, u32::MAX, &ctx);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
        let text = String::from_utf8_lossy(&bytes);
        exercise(&text, &mut rng);
    }
}

#[test]
fn random_toml_ish_text_never_panics() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut parsed = 0;
    for _ in 0..6000 {
        let mut text = String::new();
        if rng.below(4) != 0 {
            text.push_str("[hypervisor.qemu]\nkernel = \"/k\"\n");
        }
        for _ in 0..rng.below(14) {
            match rng.below(6) {
                0 => text.push_str(rng.pick(HEADERS)),
                1 => text.push_str("# comment = 1"),
                _ => {
                    let sep = rng.pick(&[" = ", "=", " =", " "]);
                    text.push_str(rng.pick(KEYS));
                    text.push_str(sep);
                    text.push_str(rng.pick(VALUES));
                }
            }
            text.push_str(rng.pick(&["\n", "\n\n", " \n", "\r\n", " "]));
        }
        if KataConfig::parse(Path::new("/x/configuration-qemu-sev.toml"), &text).is_ok() {
            parsed += 1;
        }
        exercise(&text, &mut rng);
    }
    // The generator must reach the successful paths too.
    assert!(parsed > 200, "only {parsed} generated texts parsed");
}

#[test]
fn random_edits_of_a_configuration_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let base = common::TEMPLATE.as_bytes();
    for _ in 0..3000 {
        let mut bytes = base.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(3) {
                0 if at < bytes.len() => {
                    bytes.remove(at);
                }
                1 if at < bytes.len() => {
                    bytes[at] = rng
                        .pick(&["=", "\"", "[", "]", "\n", " ", "x", "1", "é"])
                        .as_bytes()[0]
                }
                _ => bytes.insert(at, rng.next().to_le_bytes()[0]),
            }
        }
        exercise(&String::from_utf8_lossy(&bytes), &mut rng);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    for open in ["[", "{a=", "[{a="] {
        let text = format!(
            "[hypervisor.qemu]\nkernel = \"/k\"\nx = {}\n",
            open.repeat(50_000)
        );
        let err =
            KataConfig::parse(Path::new("/x/configuration-qemu-sev.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }
    let text = format!(
        "[hypervisor.qemu]\nkernel = \"/k\"\n{} = 1\n",
        vec!["a"; 50_000].join(".")
    );
    let _ = KataConfig::parse(Path::new("/x/configuration-qemu-sev.toml"), &text);
}
