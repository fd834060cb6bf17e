//! The QEMU launch of an SEV, SEV-ES or SNP guest as the Kata shim (CoCo 0.7/0.8,
//! Kata CC-0.8.0) performs it: everything the launch digest depends on.
//!
//! Facts from the Kata source at CC-0.8.0:
//! - vCPUs (`-smp N,...,maxcpus=N` and `nr_cpus=N`): `default_vcpus` resolved as in
//!   `pkg/katautils/config.go` (0 means 1; negative or more than the host's CPUs
//!   means the host's CPU count, at most 240), plus the pod's CPU limit when
//!   `[runtime] static_sandbox_resource_mgmt` is true (`pkg/oci/utils.go`); the
//!   maximum is then forced to N for confidential guests
//!   (`hypervisor_config_linux.go`), so `default_maxvcpus` has no effect.
//!   The pod CPUs are added only with `static_sandbox_resource_mgmt`, which the SEV
//!   template sets, not always.
//! - `-cpu host,<cpu_features>` for SEV and SEV-ES; `EPYC-v4,<cpu_features>` for SNP
//!   (on an SNP host). The comma is there even with no features.
//! - Mode: SNP with `sev_snp_guest`; otherwise SEV-ES when the policy has bit 2
//!   (ES), as Kata's own digest code decides (`calculateGuestLaunchDigest`); else SEV.
//! - Kernel hashes: the `sev-guest` object carries `kernel-hashes=on`, so QEMU
//!   measures kernel, initrd and command line for SEV and SEV-ES; the
//!   `sev-snp-guest` object does not (`govmm/qemu/qemu.go`), and the SNP QEMU the
//!   tag pins (AMDESE/qemu, 6.1.50 based) never adds the hashes table for SNP, so
//!   an SNP guest measures its firmware only.

use crate::cmdline::{kata_param, kernel_cmdline};
use crate::config::{KataConfig, KbsMode};
use crate::location::Location;
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The firmware, loaded as a pflash drive.
    pub firmware: PathBuf,
    /// `-kernel`.
    pub kernel: PathBuf,
    /// `-initrd`, for an initrd guest.
    pub initrd: Option<PathBuf>,
    /// The root disk, for an image guest (not measured).
    pub image: Option<PathBuf>,
    /// vCPUs at boot (`-smp N,...,maxcpus=N`).
    pub vcpus: u32,
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
    /// QEMU measures kernel, initrd and command line into the launch digest
    /// (SEV and SEV-ES); an SNP guest measures its firmware only.
    pub kernel_hashes: bool,
}

impl LaunchPlan {
    /// The `-cpu` argument: model, comma, features (`host,pmu=off`; `host,` with none).
    pub fn cpu_arg(&self) -> String {
        format!("{},{}", self.cpu_model, self.cpu_features)
    }

    /// The `-smp` argument: `N,cores=1,threads=1,sockets=N,maxcpus=N`.
    pub fn smp_arg(&self) -> String {
        let n = self.vcpus;
        format!("{n},cores=1,threads=1,sockets={n},maxcpus={n}")
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

/// The vCPUs Kata boots the guest with (`nr_cpus`, `-smp`), as described in the
/// module documentation.
pub fn vcpu_count(config: &KataConfig, ctx: &LaunchContext) -> Result<u32, PlanError> {
    let q = &config.qemu;
    // getCurrentCpuNum(): the host's CPUs, at most MAX_VCPUS.
    let host = ctx.host_cpus.filter(|&n| n > 0).map(|n| n.min(MAX_VCPUS));
    let raw = q.default_vcpus.value;
    let base = match (raw, host) {
        (0, _) => 1,
        (n, Some(h)) if n < 0 || i64::from(n) > i64::from(h) => h,
        (n, None) if n < 0 => {
            return Err(PlanError::Unusable {
                at: config.qemu_key("default_vcpus", q.default_vcpus.line),
                reason: format!(
                    "default_vcpus = {n} means the host's CPU count, which is not known here"
                ),
            })
        }
        (n, _) => u32::try_from(n).unwrap_or(1),
    };
    let pod = if config.runtime.static_sandbox_resource_mgmt.value {
        ctx.pod_cpus
    } else {
        0
    };
    Ok(base.saturating_add(pod))
}

/// Derives the launch.
///
/// Mode: SNP if `sev_snp_guest`, else SEV-ES if policy bit 2 (ES) is set, else SEV.
/// Errors, naming the file, key and line, when the configuration is not a
/// confidential guest, has no firmware, or would make Kata fail or not launch SEV
/// (no or both of initrd and image, unknown machine or rootfs type, pre-attestation
/// without mode, KBS address or certificate chain, a bad annotation).
pub fn plan(config: &KataConfig, ctx: &LaunchContext) -> Result<LaunchPlan, PlanError> {
    let q = &config.qemu;
    let unusable = |key: &str, line: Option<usize>, reason: String| PlanError::Unusable {
        at: config.qemu_key(key, line),
        reason,
    };

    if !q.confidential_guest.value {
        return Err(PlanError::NotConfidential {
            at: config.qemu_key(
                "confidential_guest",
                q.confidential_guest.line.or(q.section_line),
            ),
        });
    }
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
    if q.is_image_guest() && crate::cmdline::root_params(&q.rootfs_type.value, false).is_none() {
        return Err(unusable(
            "rootfs_type",
            q.rootfs_type.line,
            format!(
                "unsupported rootfs type {:?} (Kata accepts ext4, xfs, erofs)",
                q.rootfs_type.value
            ),
        ));
    }

    let mode = if q.sev_snp_guest.value {
        SevMode::Snp
    } else if q.sev_guest_policy.value & POLICY_ES != 0 {
        SevMode::SevEs
    } else {
        SevMode::Sev
    };

    // Pre-attestation runs only for SEV and SEV-ES (Kata's AttestVM skips SNP).
    if mode != SevMode::Snp && q.guest_pre_attestation.value {
        let on = q.guest_pre_attestation.line;
        if q.guest_pre_attestation_kbs_mode.value.is_none() {
            return Err(unusable(
                "guest_pre_attestation_kbs_mode",
                q.guest_pre_attestation_kbs_mode.line.or(on),
                "guest_pre_attestation is on but the mode is unset (Kata: \"Unsupported pre-attestation mode\"); set \"online\" or \"offline\"".into(),
            ));
        }
        if q.guest_pre_attestation_kbs_uri.value.trim().is_empty() {
            return Err(unusable(
                "guest_pre_attestation_kbs_uri",
                q.guest_pre_attestation_kbs_uri.line.or(on),
                "guest_pre_attestation is on but no KBS address is set".into(),
            ));
        }
        if q.sev_cert_chain.value.is_none() {
            return Err(unusable(
                "sev_cert_chain",
                q.sev_cert_chain.line.or(on),
                "guest_pre_attestation is on but no SEV certificate chain is set".into(),
            ));
        }
    }
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

    let vcpus = vcpu_count(config, ctx)?;
    let cmdline = kernel_cmdline(config, vcpus, ctx);
    let cpu_model = if mode == SevMode::Snp {
        CpuModel::Named("EPYC-v4".into())
    } else {
        CpuModel::Host
    };

    Ok(LaunchPlan {
        runtime_class: config.runtime_class.clone(),
        mode,
        firmware,
        kernel: q.kernel.value.clone(),
        initrd: q.initrd.value.clone(),
        image: q.image.value.clone(),
        vcpus,
        cpu_model,
        cpu_features: q.cpu_features_normalized(),
        policy: q.sev_guest_policy.value,
        snp_policy: q.snp_policy(),
        machine_type: q.machine_type.value.clone(),
        cmdline,
        kernel_hashes: mode != SevMode::Snp,
    })
}

/// Whether Kata adds `agent.aa_kbc_params=online_sev_kbc::<uri>` for this config.
pub fn online_kbc(config: &KataConfig) -> bool {
    let q = &config.qemu;
    q.confidential_guest.value
        && !q.sev_snp_guest.value
        && q.guest_pre_attestation.value
        && q.guest_pre_attestation_kbs_mode.value == Some(KbsMode::Online)
}
