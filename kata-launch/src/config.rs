//! The model of a Kata `configuration-*.toml` (Kata tag CC-0.8.0, unchanged from
//! CC-0.7.0 for every key modelled here): the `[hypervisor.qemu]`, `[agent.kata]`
//! and `[runtime]` keys that decide the QEMU launch of an SEV guest, each with the
//! line it was set on and, when absent, the value Kata's Go runtime uses.
//!
//! Defaults are those of `pkg/katautils/config.go`, where an absent key gets the Go
//! zero value unless a helper substitutes another. They are *not* the values of the
//! shipped template: an absent `sev_guest_policy` is `0` in Kata, not the template's
//! `3`; an absent `sev_cert_chain` is empty, not `/opt/sev/cert_chain.cert`; an
//! absent `guest_pre_attestation_kbs_mode` is empty (neither online nor offline).

use crate::location::{Located, Location};
use crate::params::kata_param;
use std::fmt;
use std::path::PathBuf;

/// The block device drivers Kata accepts for `block_device_driver`.
pub const BLOCK_DEVICE_DRIVERS: [&str; 5] = [
    "virtio-scsi",
    "virtio-blk",
    "virtio-mmio",
    "nvdimm",
    "virtio-blk-ccw",
];

/// Kata's default `block_device_driver` (`defaultBlockDeviceDriver`).
pub const DEFAULT_BLOCK_DEVICE_DRIVER: &str = "virtio-scsi";

/// Kata's `snp_guest_policy` when absent or 0 (`defaultSNPGuestPolicy`).
pub const DEFAULT_SNP_GUEST_POLICY: u64 = 0x30000;

/// The runtime class name from a config file name.
///
/// `configuration-qemu-sev.toml` gives `kata-qemu-sev`; extra dotted suffixes are
/// dropped (`configuration-qemu-sev.CC-0.8.0-opt-kata.toml` gives `kata-qemu-sev`:
/// everything from the first `.` after the `configuration-` prefix). Anything else,
/// including a bare `configuration.toml`, gives `None`.
pub fn runtime_class_from_file_name(file_name: &str) -> Option<String> {
    let rest = file_name.strip_prefix("configuration-")?;
    let stem = rest.strip_suffix(".toml")?;
    let name = stem.split('.').next().unwrap_or("");
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| format!("kata-{name}"))
}

/// Why a configuration file could not be read into a [`KataConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not valid TOML (or a table is not a table).
    #[error("{at}: invalid TOML: {message}")]
    Syntax {
        /// File, line and column of the error, from the TOML parser's span.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A key has a value of the wrong type.
    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        /// File, line and dotted key.
        at: Location,
        /// The type Kata decodes the key into.
        expected: &'static str,
        /// The type found in the file.
        found: &'static str,
    },
    /// A table the launch depends on is absent.
    #[error("{at}: missing section [{section}]")]
    MissingSection {
        /// The file.
        at: Location,
        /// The dotted table name.
        section: &'static str,
    },
    /// A required key is absent.
    #[error("{at}: missing required key")]
    MissingKey {
        /// File, dotted key and the line of its table header if known.
        at: Location,
    },
    /// A key has the right type but a value Kata rejects.
    #[error("{at}: {reason}")]
    InvalidValue {
        /// File, line and dotted key.
        at: Location,
        /// What is wrong with it.
        reason: String,
    },
    /// The file name does not name a runtime class.
    #[error("{at}: cannot derive a runtime class from the file name (expected configuration-<name>.toml)")]
    RuntimeClass {
        /// The file.
        at: Location,
    },
}

/// How the guest gets its secrets with pre-attestation (`guest_pre_attestation_kbs_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KbsMode {
    /// `online`: a connection key is injected and the guest's `online_sev_kbc`
    /// fetches secrets itself; the command line gets `agent.aa_kbc_params`.
    Online,
    /// `offline`: the secret bundle of the keyset is injected at launch.
    Offline,
}

impl KbsMode {
    /// The configuration spelling, `online` or `offline`.
    pub fn as_str(self) -> &'static str {
        match self {
            KbsMode::Online => "online",
            KbsMode::Offline => "offline",
        }
    }

    /// Parses Kata's exact (case-sensitive) spelling.
    pub fn from_name(name: &str) -> Option<KbsMode> {
        match name {
            "online" => Some(KbsMode::Online),
            "offline" => Some(KbsMode::Offline),
            _ => None,
        }
    }
}

impl fmt::Display for KbsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[hypervisor.qemu]`: the keys that shape the launch, with Kata's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuConfig {
    /// 1-based line of the `[hypervisor.qemu]` header, if written as a header.
    pub section_line: Option<usize>,
    /// `path`: the QEMU binary.
    pub qemu_path: Located<String>,
    /// `firmware`: `None` when absent or empty. SEV guests need an AmdSev OVMF.
    pub firmware: Located<Option<PathBuf>>,
    /// `kernel` (required here; Kata would fall back to a build-time default).
    pub kernel: Located<PathBuf>,
    /// `initrd`: `None` when absent or empty.
    pub initrd: Located<Option<PathBuf>>,
    /// `image`: `None` when absent or empty.
    pub image: Located<Option<PathBuf>>,
    /// `rootfs_type` of an `image` guest; default `ext4` (also when empty).
    pub rootfs_type: Located<String>,
    /// `kernel_params`, the raw string; see [`QemuConfig::kernel_param_tokens`].
    pub kernel_params: Located<String>,
    /// `kernel_verity_params` (upstream 3.27 and later): the dm-verity parameters
    /// of an `image` guest's root filesystem, `root_hash=..,salt=..,...`; empty
    /// means the root filesystem is not verified.
    pub kernel_verity_params: Located<String>,
    /// `guest_extension_images` (upstream 4.0 and later): extra disk images, each
    /// announced to the guest on the command line.
    pub guest_extension_images: Located<Vec<ExtensionImage>>,
    /// `default_vcpus` as written: an integer in the CC builds (Go `int32`), a
    /// `float32` upstream; 0 means 1, negative or more than the host has means
    /// the host's CPU count. Default 0.
    pub default_vcpus: Located<f32>,
    /// `default_maxvcpus` as written; ignored for confidential guests, whose
    /// maximum is forced to the vCPU count. Default 0.
    pub default_maxvcpus: Located<u32>,
    /// `machine_type`; default `q35`.
    pub machine_type: Located<String>,
    /// `cpu_features` as written; see [`QemuConfig::cpu_features_normalized`].
    pub cpu_features: Located<String>,
    /// `confidential_guest`; default false.
    pub confidential_guest: Located<bool>,
    /// `sev_snp_guest`; default false.
    pub sev_snp_guest: Located<bool>,
    /// `snp_guest_policy` (Go `uint64`); absent or 0 means 0x30000.
    pub snp_guest_policy: Located<u64>,
    /// `enable_iommu`; default false.
    pub enable_iommu: Located<bool>,
    /// `use_legacy_serial`; default false.
    pub use_legacy_serial: Located<bool>,
    /// `block_device_driver`, one of [`BLOCK_DEVICE_DRIVERS`]; default `virtio-scsi`
    /// (also when empty).
    pub block_device_driver: Located<String>,
    /// `disable_image_nvdimm`; default false (forced true for confidential guests).
    pub disable_image_nvdimm: Located<bool>,
    /// `enable_debug` of the hypervisor (`debug` instead of `quiet`); default false.
    pub enable_debug: Located<bool>,
    /// `guest_pre_attestation`; default false.
    pub guest_pre_attestation: Located<bool>,
    /// `guest_pre_attestation_kbs_uri`, verbatim (e.g. `10.0.0.1:44444`); default empty.
    pub guest_pre_attestation_kbs_uri: Located<String>,
    /// `guest_pre_attestation_kbs_mode`; `None` when absent or empty (Kata then
    /// fails the pre-attestation of an SEV guest).
    pub guest_pre_attestation_kbs_mode: Located<Option<KbsMode>>,
    /// `guest_pre_attestation_keyset`; default empty.
    pub guest_pre_attestation_keyset: Located<String>,
    /// `sev_cert_chain`; `None` when absent or empty.
    pub sev_cert_chain: Located<Option<PathBuf>>,
    /// `sev_guest_policy` (Go `uint32`); default 0.
    pub sev_guest_policy: Located<u32>,
    /// `disable_guest_selinux`: `selinux=0` when true, `selinux=1` otherwise; default false.
    pub disable_guest_selinux: Located<bool>,
    /// `enable_annotations`: the annotation names pods may override; default empty.
    pub enable_annotations: Located<Vec<String>>,
}

impl QemuConfig {
    /// `kernel_params` as Kata passes it on: split on whitespace, in file order,
    /// never de-duplicated; a `key=` token loses its `=` (Kata's param round trip).
    pub fn kernel_param_tokens(&self) -> Vec<String> {
        self.kernel_params
            .value
            .split_whitespace()
            .filter_map(|token| kata_param(token).ok())
            .collect()
    }

    /// `cpu_features` as Kata normalises it: split on `,`, each non-empty item
    /// trimmed of whitespace, re-joined with `,`, outer commas trimmed.
    pub fn cpu_features_normalized(&self) -> String {
        let mut joined = String::new();
        for feature in self.cpu_features.value.split(',') {
            if !feature.is_empty() {
                joined.push_str(feature.trim());
                joined.push(',');
            }
        }
        joined.trim_matches(',').to_string()
    }

    /// The effective SNP policy: `snp_guest_policy`, or 0x30000 when 0.
    pub fn snp_policy(&self) -> u64 {
        match self.snp_guest_policy.value {
            0 => DEFAULT_SNP_GUEST_POLICY,
            p => p,
        }
    }

    /// Whether the guest boots a disk `image` (rather than an `initrd`).
    pub fn is_image_guest(&self) -> bool {
        self.image.value.is_some()
    }
}

/// One `[[hypervisor.qemu.guest_extension_images]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionImage {
    /// `name`: the extension's name in `kata.extension.<name>.verity_params`.
    pub name: String,
    /// `path`: the disk image.
    pub path: String,
    /// `verity_params`: its dm-verity parameters, possibly empty.
    pub verity_params: String,
}

/// `[agent.kata]`: the agent keys that add kernel parameters.
///
/// There is no `container_pipe_size` key: Kata's TOML agent table has none, and the
/// pipe-size annotation is applied after the command line is fixed, so at CC-0.8.0
/// `agent.container_pipe_size=` never reaches the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The table's name (`kata` for `[agent.kata]`); empty when there is no agent table.
    pub name: String,
    /// `enable_debug`: `agent.log=debug`; default false.
    pub enable_debug: Located<bool>,
    /// `enable_tracing`: `agent.trace=true`; default false.
    pub enable_tracing: Located<bool>,
    /// `debug_console_enabled`: `agent.debug_console agent.debug_console_vport=1026`; default false.
    pub debug_console_enabled: Located<bool>,
    /// `cdh_api_timeout` (upstream): `agent.cdh_api_timeout=N` when non-zero; default 0.
    pub cdh_api_timeout: Located<u32>,
    /// `launch_process_timeout` (upstream 3.29 and later):
    /// `agent.launch_process_timeout=N` when non-zero; default 0.
    pub launch_process_timeout: Located<u32>,
    /// `visible_cdi_devices` (upstream 3.32 and later): `agent.visible_cdi_devices=true`.
    pub visible_cdi_devices: Located<bool>,
}

/// `[runtime]`: the keys that change the launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `static_sandbox_resource_mgmt`: the pod's CPU limit is added to the boot
    /// vCPUs (the SEV template sets it true); default false.
    pub static_sandbox_resource_mgmt: Located<bool>,
}

/// An artefact the configuration names, for the caller to check on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtefactRef {
    /// The key in `[hypervisor.qemu]`: `firmware`, `kernel`, `initrd` or `image`.
    pub key: &'static str,
    /// The path as written.
    pub path: PathBuf,
    /// 1-based line of the key.
    pub line: Option<usize>,
}

/// A parsed Kata configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct KataConfig {
    /// The file, for messages only.
    pub path: PathBuf,
    /// The runtime class whose pods use this file, e.g. `kata-qemu-sev`.
    pub runtime_class: String,
    /// `[hypervisor.qemu]`.
    pub qemu: QemuConfig,
    /// `[agent.kata]`.
    pub agent: AgentConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
}

impl KataConfig {
    /// The artefact paths the config names, with their key names and lines:
    /// `firmware`, `kernel`, then `initrd` or `image` (whichever are set).
    pub fn artefacts(&self) -> Vec<ArtefactRef> {
        let q = &self.qemu;
        let mut out = Vec::with_capacity(4);
        if let Some(p) = &q.firmware.value {
            out.push(ArtefactRef {
                key: "firmware",
                path: p.clone(),
                line: q.firmware.line,
            });
        }
        out.push(ArtefactRef {
            key: "kernel",
            path: q.kernel.value.clone(),
            line: q.kernel.line,
        });
        for (key, field) in [("initrd", &q.initrd), ("image", &q.image)] {
            if let Some(p) = &field.value {
                out.push(ArtefactRef {
                    key,
                    path: p.clone(),
                    line: field.line,
                });
            }
        }
        out
    }

    /// The location of a `[hypervisor.qemu]` key, for messages about it.
    pub fn qemu_key(&self, key: &str, line: Option<usize>) -> Location {
        Location::key(&self.path, format!("hypervisor.qemu.{key}"), line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn runtime_class_names() {
        assert_eq!(
            runtime_class_from_file_name("configuration-qemu-sev.toml").as_deref(),
            Some("kata-qemu-sev")
        );
        assert_eq!(
            runtime_class_from_file_name("configuration-qemu-sev.CC-0.8.0-opt-kata.toml")
                .as_deref(),
            Some("kata-qemu-sev")
        );
        assert_eq!(
            runtime_class_from_file_name("configuration-qemu-snp.toml").as_deref(),
            Some("kata-qemu-snp")
        );
        assert_eq!(runtime_class_from_file_name("configuration.toml"), None);
        assert_eq!(runtime_class_from_file_name("configuration-.toml"), None);
        assert_eq!(
            runtime_class_from_file_name("configuration-qemu-sev.yaml"),
            None
        );
        assert_eq!(runtime_class_from_file_name("qemu-sev.toml"), None);
        assert_eq!(runtime_class_from_file_name(""), None);
        assert_eq!(runtime_class_from_file_name("configuration-a b.toml"), None);
    }

    #[test]
    fn cpu_features_are_normalised_like_kata() {
        let mut q = minimal();
        for (raw, want) in [
            ("pmu=off", "pmu=off"),
            ("", ""),
            (" pmu=off , +x2apic ,", "pmu=off,+x2apic"),
            (",,a,,", "a"),
        ] {
            q.cpu_features.value = raw.to_string();
            assert_eq!(q.cpu_features_normalized(), want, "{raw:?}");
        }
    }

    fn minimal() -> QemuConfig {
        let text = "[hypervisor.qemu]\nkernel = \"/k\"\n";
        KataConfig::parse(Path::new("configuration-t.toml"), text)
            .unwrap()
            .qemu
    }

    #[test]
    fn absent_keys_take_katas_defaults() {
        let q = minimal();
        assert_eq!(q.section_line, Some(1));
        assert_eq!(q.kernel.line, Some(2));
        assert_eq!(q.sev_guest_policy, Located::default_value(0));
        assert_eq!(q.snp_policy(), 0x30000);
        assert_eq!(q.block_device_driver.value, "virtio-scsi");
        assert_eq!(q.machine_type.value, "q35");
        assert_eq!(q.rootfs_type.value, "ext4");
        assert_eq!(q.guest_pre_attestation_kbs_mode.value, None);
        assert_eq!(q.sev_cert_chain.value, None);
        assert_eq!(q.default_vcpus.value, 0.0);
        assert_eq!(q.kernel_verity_params.value, "");
        assert!(q.guest_extension_images.value.is_empty());
        assert!(!q.disable_guest_selinux.value);
        assert!(q.kernel_param_tokens().is_empty());
    }

    #[test]
    fn kernel_param_tokens_follow_katas_round_trip() {
        let mut q = minimal();
        q.kernel_params.value = "  a=b=c\tflag  key= x=1 x=1 \n".to_string();
        assert_eq!(
            q.kernel_param_tokens(),
            ["a=b=c", "flag", "key", "x=1", "x=1"]
        );
    }
}
