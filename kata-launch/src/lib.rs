//! Kata Containers configuration model and the exact QEMU launch it yields for SEV
//! guests.
//!
//! A pure library: it takes the text of a Kata `configuration-*.toml` and returns
//! values; it reads no files and opens no connections. [`KataConfig::parse`] models
//! the keys that matter, each with the line it was set on; [`plan()`] derives what
//! the Kata shim of CoCo 0.7/0.8 (Kata tag CC-0.8.0) hands QEMU for an SEV, SEV-ES
//! or SNP guest, including the exact kernel command line ([`kernel_cmdline`]),
//! which the launch digest hashes byte for byte.
//!
//! ```
//! use kata_launch::{plan, KataConfig, LaunchContext};
//! use std::path::Path;
//!
//! let text = r#"
//! [hypervisor.qemu]
//! kernel = "/opt/kata/share/kata-containers/vmlinuz-sev.container"
//! initrd = "/opt/kata/share/kata-containers/kata-containers-initrd-sev.img"
//! firmware = "/opt/kata/share/ovmf/AMDSEV.fd"
//! confidential_guest = true
//! sev_guest_policy = 3
//! disable_guest_selinux = true
//! [runtime]
//! static_sandbox_resource_mgmt = true
//! "#;
//! let config = KataConfig::parse(Path::new("configuration-qemu-sev.toml"), text).unwrap();
//! let launch = plan(&config, &LaunchContext::new(2)).unwrap();
//! assert_eq!(launch.runtime_class, "kata-qemu-sev");
//! assert_eq!(launch.vcpus, 3);
//! assert!(launch.cmdline.ends_with("quiet panic=1 nr_cpus=3 selinux=0 scsi_mod.scan=none"));
//! ```

mod cmdline;
mod config;
mod location;
mod parse;
mod plan;
mod toml_read;

pub use cmdline::{kernel_cmdline, kernel_params, FIXED_PARAMS};
pub use config::{
    runtime_class_from_file_name, AgentConfig, ArtefactRef, ConfigError, KataConfig, KbsMode,
    QemuConfig, RuntimeConfig, BLOCK_DEVICE_DRIVERS, DEFAULT_BLOCK_DEVICE_DRIVER,
    DEFAULT_SNP_GUEST_POLICY,
};
pub use location::{Located, Location};
pub use plan::{
    online_kbc, plan, vcpu_count, CpuModel, LaunchContext, LaunchPlan, PlanError, MACHINE_TYPES,
    MAX_VCPUS, POLICY_ES,
};
pub use sev_core::SevMode;
