//! Shared test inputs: the real Kata configurations under `../shared/testdata/kata/`
//! (read, never copied) and a small configuration written here after the shape of
//! Kata's `configuration-qemu-sev.toml.in` template.

#![cfg(test)]
#![allow(dead_code)]

use kata_launch::{plan, KataConfig, LaunchContext, LaunchPlan};
use std::path::{Path, PathBuf};

/// The folder holding the real Kata configurations shipped by CoCo 0.7 and 0.8.
pub fn kata_testdata() -> PathBuf {
    let dir = std::env::var_os("SEV_TESTDATA_DIR")
        .map(|d| PathBuf::from(d).join("kata"))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/kata")
        });
    assert!(
        dir.join("configuration-qemu-sev.toml").is_file(),
        "the real Kata configurations are missing: expected configuration-qemu-sev*.toml in {} \
         (the shared/ folder beside the repository, or set SEV_TESTDATA_DIR to the folder holding kata/)",
        dir.display()
    );
    dir
}

/// Reads one real configuration by file name.
pub fn real(name: &str) -> (PathBuf, String) {
    let path = kata_testdata().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (see kata_testdata())", path.display()));
    (path, text)
}

/// Replaces `from` (which must occur exactly once) by `to`.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in the configuration"
    );
    text.replacen(from, to, 1)
}

/// A configuration after Kata's SEV template, with CoCo 0.8's paths.
pub const TEMPLATE: &str = r#"# Written for these tests after the shape of Kata's configuration-qemu-sev.toml.in
[hypervisor.qemu]
path = "/opt/kata/bin/qemu-system-x86_64"
kernel = "/opt/kata/share/kata-containers/vmlinuz-sev.container"
initrd = "/opt/kata/share/kata-containers/kata-containers-initrd-sev.img"
machine_type = "q35"
confidential_guest = true
guest_pre_attestation = true
guest_pre_attestation_kbs_uri = "localhost:44444"
guest_pre_attestation_kbs_mode="online"
guest_pre_attestation_keyset = "KEYSET-1"
sev_guest_policy = 3
sev_cert_chain = "/opt/sev/cert_chain.cert"
enable_annotations = ["enable_iommu"]
kernel_params = "agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false"
firmware = "/opt/kata/share/ovmf/AMDSEV.fd"
cpu_features="pmu=off"
default_vcpus = 1
default_maxvcpus = 0
block_device_driver = "virtio-scsi"
#enable_debug = true
#enable_iommu = true
#use_legacy_serial = true
disable_guest_selinux=true

[agent.kata]
#enable_debug = true
#enable_tracing = true
#debug_console_enabled = true
kernel_modules=[]
dial_timeout = 90

[runtime]
static_sandbox_resource_mgmt=true
"#;

/// The template with `edits` applied in order.
pub fn template(edits: &[(&str, &str)]) -> String {
    edits
        .iter()
        .fold(TEMPLATE.to_string(), |t, (from, to)| edit(&t, from, to))
}

/// Parses `text` as `configuration-qemu-sev.toml`.
pub fn parse(text: &str) -> KataConfig {
    KataConfig::parse(
        Path::new("/opt/kata/share/defaults/kata-containers/configuration-qemu-sev.toml"),
        text,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Parses and plans `text` for a pod with `pod_cpus` CPUs.
pub fn plan_of(text: &str, pod_cpus: u32) -> LaunchPlan {
    plan(&parse(text), &LaunchContext::new(pod_cpus)).unwrap_or_else(|e| panic!("{e}"))
}

/// The fixed head of every amd64 command line.
pub const FIXED: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 i8042.direct=1 i8042.dumbkbd=1 \
                         i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k cryptomgr.notests net.ifnames=0 \
                         pci=lastbus=0";
