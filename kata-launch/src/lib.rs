//! Kata Containers configuration model and the exact QEMU launch it yields for SEV
//! and SEV-SNP guests, per Kata release.
//!
//! A pure library: it takes the text of a Kata `configuration-*.toml` and returns
//! values; it reads no files and opens no connections. [`KataConfig::parse`] models
//! the keys that matter, each with the line it was set on; [`plan()`] derives what
//! the Kata shim of the release in [`LaunchContext::release`] hands QEMU, including
//! the exact kernel command line, which the launch digest hashes byte for byte.
//! Two builders sit behind [`plan()`], over the one configuration model: the
//! Confidential Containers builds (CoCo 0.7/0.8, tag CC-0.8.0: SEV, SEV-ES and
//! SNP) and the upstream Go runtime of 3.19.0 to 4.1.x (SNP).
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

mod cc08;
mod config;
mod gaps;
mod launch;
mod location;
mod measure;
mod params;
mod parse;
mod release;
mod toml_read;
mod upstream;

pub use cc08::{online_kbc, vcpu_count};
pub use config::{
    runtime_class_from_file_name, AgentConfig, ArtefactRef, ConfigError, ExtensionImage,
    KataConfig, KbsMode, QemuConfig, RuntimeConfig, BLOCK_DEVICE_DRIVERS,
    DEFAULT_BLOCK_DEVICE_DRIVER, DEFAULT_SNP_GUEST_POLICY,
};
pub use gaps::{annotation_allowed, measured_annotations, unmeasured, MEASURED_ANNOTATIONS};
pub use launch::{
    CpuModel, LaunchContext, LaunchPlan, PlanError, FIXED_PARAMS, MACHINE_TYPES, MAX_VCPUS,
    POLICY_ES,
};
pub use location::{Located, Location};
pub use measure::{
    measure_class, measure_plan, vcpu_signature, Annotation, BootHashes, ClassRequest,
    MeasureLaunchError, MeasuredClass, MeasuredLaunch, NodeFacts,
};
pub use release::{known_releases, CcBuild, KataRelease, UnknownRelease, UPSTREAM_MINORS};
pub use sev_core::SevMode;

/// Derives the launch Kata's release `ctx.release` performs for this
/// configuration and pod, or says why there is none (naming file, key and line).
pub fn plan(config: &KataConfig, ctx: &LaunchContext) -> Result<LaunchPlan, PlanError> {
    match ctx.release {
        KataRelease::Cc(_) => cc08::plan(config, ctx),
        KataRelease::Upstream { .. } => upstream::plan(config, ctx),
    }
}

/// Checks a `kernel_verity_params` value as Kata does (`ParseKernelVerityParams`),
/// returning Kata's message for what is wrong.
pub fn check_verity_params(params: &str) -> Result<(), String> {
    upstream::parse_verity(params).map(|_| ())
}

/// The exact `-append` string of the CC builds for a guest with `vcpus` vCPUs
/// (`nr_cpus=vcpus`); for any release, [`plan()`] gives it as
/// [`LaunchPlan::cmdline`].
pub fn kernel_cmdline(config: &KataConfig, vcpus: u32, ctx: &LaunchContext) -> String {
    cc08::kernel_cmdline(config, vcpus, ctx)
}
