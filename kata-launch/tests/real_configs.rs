//! The real Kata configurations CoCo 0.7 and 0.8 ship, read from
//! `../shared/testdata/kata/`, and the command line captured on a real CoCo 0.7
//! SEV node.

#![cfg(test)]

mod common;

use common::{edit, real, FIXED};
use kata_launch::{plan, CpuModel, KataConfig, KbsMode, LaunchContext, SevMode};
use std::path::PathBuf;

/// Captured on a CoCo 0.7 SEV node (`<node ip>` in place of the address), with
/// signature verification on and the KBS address set.
const CAPTURED: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 \
    i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests net.ifnames=0 pci=lastbus=0 \
    console=hvc0 console=hvc1 quiet panic=1 nr_cpus=1 selinux=0 \
    agent.aa_kbc_params=online_sev_kbc::<node ip>:44444 scsi_mod.scan=none \
    agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=true";

const REAL: [&str; 3] = [
    "configuration-qemu-sev.toml",
    "configuration-qemu-sev.CC-0.7.0.toml",
    "configuration-qemu-sev.CC-0.8.0-opt-kata.toml",
];

/// The 1-based line of the first line of `text` starting with `prefix`.
fn line_starting(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .expect("line present")
        + 1
}

#[test]
fn captured_command_line_comes_out_of_the_shipped_configuration() {
    let (path, text) = real("configuration-qemu-sev.toml");
    // What `coco.signature-verification --mode on` and `coco.guest-attestation
    // --mode on` do to the shipped file.
    let text = edit(
        &text,
        "agent.enable_signature_verification=false",
        "agent.enable_signature_verification=true",
    );
    let text = edit(
        &text,
        "guest_pre_attestation = true",
        "guest_pre_attestation = true",
    );
    let text = edit(
        &text,
        "guest_pre_attestation_kbs_uri = \"localhost:44444\"",
        "guest_pre_attestation_kbs_uri = \"<node ip>:44444\"",
    );
    let config = KataConfig::parse(&path, &text).unwrap();
    // A pod without a CPU limit.
    let launch = plan(&config, &LaunchContext::new(0)).unwrap();
    assert_eq!(launch.cmdline, CAPTURED);
    assert_eq!(
        kata_launch::kernel_cmdline(&config, 1, &LaunchContext::default()),
        CAPTURED
    );
}

#[test]
fn every_real_configuration_parses_and_plans() {
    for name in REAL {
        let (path, text) = real(name);
        let config = KataConfig::parse(&path, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.runtime_class, "kata-qemu-sev", "{name}");
        let prefix = if name.contains("CC-0.8.0") {
            "/opt/kata"
        } else {
            "/opt/confidential-containers"
        };
        let q = &config.qemu;
        assert_eq!(
            q.section_line,
            Some(line_starting(&text, "[hypervisor.qemu]")),
            "{name}"
        );
        assert_eq!(
            q.kernel_params.line,
            Some(line_starting(&text, "kernel_params = ")),
            "{name}"
        );
        assert_eq!(q.default_vcpus.value, 1.0);
        assert_eq!(q.default_maxvcpus.value, 0);
        assert_eq!(q.sev_guest_policy.value, 3);
        assert_eq!(
            q.guest_pre_attestation_kbs_mode.value,
            Some(KbsMode::Online)
        );
        assert_eq!(q.guest_pre_attestation_keyset.value, "KEYSET-1");
        assert_eq!(
            q.sev_cert_chain.value,
            Some(PathBuf::from("/opt/sev/cert_chain.cert"))
        );
        assert_eq!(q.enable_annotations.value, ["enable_iommu"]);
        assert!(q.disable_guest_selinux.value);
        assert!(config.runtime.static_sandbox_resource_mgmt.value);
        assert_eq!(config.agent.name, "kata");
        assert_eq!(config.agent.enable_debug.line, None);

        let arts = config.artefacts();
        let keys: Vec<_> = arts.iter().map(|a| a.key).collect();
        assert_eq!(keys, ["firmware", "kernel", "initrd"], "{name}");
        assert_eq!(
            arts[0].path,
            PathBuf::from(format!("{prefix}/share/ovmf/AMDSEV.fd"))
        );
        assert_eq!(
            arts[1].path,
            PathBuf::from(format!(
                "{prefix}/share/kata-containers/vmlinuz-sev.container"
            ))
        );
        assert_eq!(
            arts[2].path,
            PathBuf::from(format!(
                "{prefix}/share/kata-containers/kata-containers-initrd-sev.img"
            ))
        );
        for a in &arts {
            let line = a.line.expect("artefact line");
            let at = text.lines().nth(line - 1).unwrap();
            assert!(
                at.starts_with(a.key),
                "{name}: line {line} is {at:?}, not key {}",
                a.key
            );
        }

        for pod_cpus in [0, 1, 3] {
            let launch = plan(&config, &LaunchContext::new(pod_cpus))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let n = 1 + pod_cpus;
            assert_eq!(launch.mode, SevMode::Sev);
            assert_eq!(launch.vcpus, n);
            assert_eq!(launch.policy, 3);
            assert_eq!(launch.cpu_model, CpuModel::Host);
            assert_eq!(launch.cpu_arg(), "host,pmu=off");
            assert_eq!(
                launch.smp_arg(),
                format!("{n},cores=1,threads=1,sockets={n},maxcpus={n}")
            );
            assert_eq!(launch.initrd.as_ref(), Some(&arts[2].path));
            assert_eq!(launch.image, None);
            assert_eq!(
                launch.cmdline,
                format!(
                    "{FIXED} console=hvc0 console=hvc1 quiet panic=1 nr_cpus={n} selinux=0 \
                     agent.aa_kbc_params=online_sev_kbc::localhost:44444 scsi_mod.scan=none \
                     agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false"
                ),
                "{name}"
            );
        }
    }
}

#[test]
fn shipped_kernel_params_trailing_space_does_not_leak() {
    let (path, text) = real("configuration-qemu-sev.CC-0.7.0.toml");
    let config = KataConfig::parse(&path, &text).unwrap();
    assert!(config.qemu.kernel_params.value.ends_with(' '));
    let line = plan(&config, &LaunchContext::default()).unwrap().cmdline;
    assert!(!line.ends_with(' ') && !line.contains("  "), "{line:?}");
}

#[test]
fn fips_host_appends_fips_last() {
    let (path, text) = real("configuration-qemu-sev.toml");
    let config = KataConfig::parse(&path, &text).unwrap();
    let ctx = LaunchContext {
        fips: true,
        ..LaunchContext::default()
    };
    let line = plan(&config, &ctx).unwrap().cmdline;
    assert!(
        line.ends_with("agent.enable_signature_verification=false fips=1"),
        "{line}"
    );
}
