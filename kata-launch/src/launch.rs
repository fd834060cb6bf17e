//! What every modelled release shares about a launch: the facts from outside the
//! file ([`LaunchContext`]), the result ([`LaunchPlan`]), the errors, and the
//! pieces of the command line and vCPU count that no release changed.
//!
//! The release-specific builders (`cc08` for the Confidential Containers builds,
//! `upstream` for 3.19 to 4.1) depend on this module and on the configuration
//! model; nothing here depends on them.

use crate::config::KataConfig;
use crate::location::Location;
use crate::params::kata_param;
use crate::release::KataRelease;
use sev_core::SevMode;
use std::fmt;
use std::path::PathBuf;

/// The most vCPUs Kata's QEMU driver allows on amd64 (`govmm.MaxVCPUs()`).
pub const MAX_VCPUS: u32 = 240;

/// SEV guest policy bit 2: the guest runs with SEV-ES.
pub const POLICY_ES: u32 = 0x4;

/// The machine types Kata's amd64 QEMU driver accepts.
pub const MACHINE_TYPES: [&str; 3] = ["q35", "virt", "microvm"];

/// Facts about the host and pod that the launch depends on but the file does not hold.
///
/// Guest SELinux is not here: Kata reads it from `disable_guest_selinux`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchContext {
    /// The pod's CPU limit rounded up to whole CPUs; 0 = no limit.
    pub pod_cpus: u32,
    /// The host runs in FIPS mode (`/proc/sys/crypto/fips_enabled` is 1): `fips=1`.
    pub fips: bool,
    /// The host's CPU count, needed only when `default_vcpus` is negative or larger
    /// than the host; `None` = unknown (then `default_vcpus` is taken as written).
    pub host_cpus: Option<u32>,
    /// The pod's `io.katacontainers.config.hypervisor.kernel_params` annotation,
    /// only when the configuration's `enable_annotations` lets it through (the
    /// caller checks that); appended after the configuration's `kernel_params`.
    pub kernel_params_annotation: Option<String>,
    /// The pod's `io.katacontainers.config.hypervisor.default_vcpus` annotation
    /// (upstream releases that allow it), which replaces the file's value.
    pub default_vcpus_annotation: Option<f32>,
    /// The pod's `kernel_verity_params` annotation (upstream 3.27 and later): a
    /// non-empty value replaces the file's.
    pub kernel_verity_params_annotation: Option<String>,
    /// The Kata release that builds the launch (CC-0.8.0 unless said otherwise).
    pub release: KataRelease,
}

impl LaunchContext {
    /// A context for a pod with a CPU limit of `pod_cpus` on a non-FIPS host.
    pub fn new(pod_cpus: u32) -> LaunchContext {
        LaunchContext {
            pod_cpus,
            ..LaunchContext::default()
        }
    }
}

/// The QEMU CPU model (`-cpu`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CpuModel {
    /// `-cpu host,<features>`: SEV and SEV-ES; VMSAs carry the host's CPUID signature.
    Host,
    /// A named model, e.g. `EPYC-v4` for SNP.
    Named(String),
}

impl fmt::Display for CpuModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuModel::Host => f.write_str("host"),
            CpuModel::Named(name) => f.write_str(name),
        }
    }
}

/// Everything QEMU gets that the launch digest depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The runtime class, e.g. `kata-qemu-sev`.
    pub runtime_class: String,
    /// SEV, SEV-ES or SNP.
    pub mode: SevMode,
    /// The firmware: a pflash drive for SEV and SEV-ES, `-bios` for SNP.
    pub firmware: PathBuf,
    /// `-kernel`.
    pub kernel: PathBuf,
    /// `-initrd`, for an initrd guest.
    pub initrd: Option<PathBuf>,
    /// The root disk, for an image guest (not measured).
    pub image: Option<PathBuf>,
    /// vCPUs at boot (`-smp N,...`).
    pub vcpus: u32,
    /// The maximum vCPUs (`maxcpus=`, and `nr_cpus=` where the release writes it).
    pub max_vcpus: u32,
    /// `-smp` names `sockets=` and `maxcpus=` (all but upstream 3.32 and later).
    pub smp_sockets: bool,
    /// `-cpu` model.
    pub cpu_model: CpuModel,
    /// `cpu_features` as Kata normalises them (after the model and a comma).
    pub cpu_features: String,
    /// `sev_guest_policy`, the `policy=` of the `sev-guest` object (SEV, SEV-ES).
    pub policy: u32,
    /// The SNP policy (`snp_guest_policy`, 0x30000 when 0); used only for SNP.
    pub snp_policy: u64,
    /// `machine_type` (q35 unless set).
    pub machine_type: String,
    /// The exact `-append` string.
    pub cmdline: String,
    /// The Kata release the launch was derived for.
    pub release: KataRelease,
    /// QEMU measures kernel, initrd and command line into the launch digest:
    /// always upstream and for SEV and SEV-ES; a CC-0.8.0 SNP guest measures its
    /// firmware only.
    pub kernel_hashes: bool,
}

impl LaunchPlan {
    /// The `-cpu` argument: model, comma, features (`host,pmu=off`; `host,` with none).
    pub fn cpu_arg(&self) -> String {
        format!("{},{}", self.cpu_model, self.cpu_features)
    }

    /// The `-smp` argument: `N,cores=1,threads=1,sockets=M,maxcpus=M`, or
    /// `N,cores=1,threads=1` from Kata 3.32.
    pub fn smp_arg(&self) -> String {
        let (n, m) = (self.vcpus, self.max_vcpus);
        if self.smp_sockets {
            format!("{n},cores=1,threads=1,sockets={m},maxcpus={m}")
        } else {
            format!("{n},cores=1,threads=1")
        }
    }
}

/// Why a configuration does not yield an SEV launch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `confidential_guest` is false (or absent): Kata launches a plain VM.
    #[error("{at}: not a confidential guest (confidential_guest is false), so Kata launches no SEV guest")]
    NotConfidential {
        /// File, line and key.
        at: Location,
    },
    /// A confidential guest that the release does not start as SEV-SNP (from Kata
    /// 3.19 only SNP guests are attested on AMD; TDX configurations land here too).
    #[error("{at}: not an SEV-SNP guest (sev_snp_guest is false); Kata {release} attests AMD guests only as SEV-SNP, since it removed SEV pre-attestation")]
    NotSnp {
        /// File, line and key.
        at: Location,
        /// The release.
        release: KataRelease,
    },
    /// No `firmware`: an SEV guest needs an (AmdSev) OVMF as pflash.
    #[error("{at}: no firmware set; an SEV guest needs an AmdSev OVMF")]
    NoFirmware {
        /// File, line and key.
        at: Location,
    },
    /// Something else makes the launch fail or not an SEV launch.
    #[error("{at}: {reason}")]
    Unusable {
        /// File, line and key.
        at: Location,
        /// What Kata would do or refuse.
        reason: String,
    },
}

/// The fixed amd64 parameters (`qemu_amd64.go` `kernelParams`).
pub const FIXED_PARAMS: [&str; 12] = [
    "tsc=reliable",
    "no_timer_check",
    "rcupdate.rcu_expedited=1",
    "i8042.direct=1",
    "i8042.dumbkbd=1",
    "i8042.nopnp=1",
    "i8042.noaux=1",
    "noreplace-smp",
    "reboot=k",
    "cryptomgr.notests",
    "net.ifnames=0",
    "pci=lastbus=0",
];

/// `confidential_guest` must be on: otherwise Kata launches a plain VM.
pub(crate) fn check_confidential(config: &KataConfig) -> Result<(), PlanError> {
    let q = &config.qemu;
    if q.confidential_guest.value {
        return Ok(());
    }
    Err(PlanError::NotConfidential {
        at: config.qemu_key(
            "confidential_guest",
            q.confidential_guest.line.or(q.section_line),
        ),
    })
}

/// The checks every release makes of the guest's files and machine, in Kata's
/// order: a firmware, exactly one of initrd and image, a known machine type.
/// Returns the firmware.
pub(crate) fn check_guest_files(config: &KataConfig) -> Result<PathBuf, PlanError> {
    let q = &config.qemu;
    let unusable = |key: &str, line: Option<usize>, reason: String| PlanError::Unusable {
        at: config.qemu_key(key, line),
        reason,
    };
    let Some(firmware) = q.firmware.value.clone() else {
        return Err(PlanError::NoFirmware {
            at: config.qemu_key("firmware", q.firmware.line.or(q.section_line)),
        });
    };
    match (&q.initrd.value, &q.image.value) {
        (None, None) => {
            return Err(unusable(
                "initrd",
                q.section_line,
                "neither initrd nor image is set (Kata: \"Missing image and initrd path\")".into(),
            ))
        }
        (Some(_), Some(_)) => return Err(unusable(
            "image",
            q.image.line,
            "both initrd and image are set (Kata: \"Image and initrd path cannot be both set\")"
                .into(),
        )),
        _ => {}
    }
    if !MACHINE_TYPES.contains(&q.machine_type.value.as_str()) {
        return Err(unusable(
            "machine_type",
            q.machine_type.line,
            format!(
                "unrecognised machine type {:?} (Kata accepts {})",
                q.machine_type.value,
                MACHINE_TYPES.join(", ")
            ),
        ));
    }
    Ok(firmware)
}

/// Kata refuses a `kernel_params` annotation with a parameter that has an empty
/// name (`=value`).
pub(crate) fn check_annotation(config: &KataConfig, ctx: &LaunchContext) -> Result<(), PlanError> {
    if let Some(annotation) = &ctx.kernel_params_annotation {
        if let Some(bad) = annotation
            .split_whitespace()
            .find(|t| kata_param(t).is_err())
        {
            return Err(PlanError::Unusable {
                at: Location::file(&config.path),
                reason: format!(
                    "the kernel_params annotation has a parameter with an empty name: {bad:?}"
                ),
            });
        }
    }
    Ok(())
}

/// Kata refuses a configuration whose `kernel_params` has a parameter with an
/// empty name (`=value`); `tokens` is the file's value split as the release
/// splits it.
pub(crate) fn check_kernel_params<'a>(
    config: &KataConfig,
    mut tokens: impl Iterator<Item = &'a str>,
) -> Result<(), PlanError> {
    let q = &config.qemu;
    match tokens.find(|t| kata_param(t).is_err()) {
        None => Ok(()),
        Some(bad) => Err(PlanError::Unusable {
            at: config.qemu_key("kernel_params", q.kernel_params.line),
            reason: format!(
                "kernel parameter {bad:?} has an empty name (Kata: \"Empty kernel parameter\")"
            ),
        }),
    }
}
