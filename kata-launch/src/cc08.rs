//! The QEMU launch of an SEV, SEV-ES or SNP guest as the Kata shim of the
//! Confidential Containers builds (CoCo 0.7/0.8, Kata tags CC-0.7.0 and CC-0.8.0)
//! performs it: everything the launch digest depends on.
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
//!
//! The kernel command line (QEMU `-append`), in order, from Kata CC-0.8.0 (`virtcontainers/qemu.go` `kernelParameters`,
//! `qemu_amd64.go`, `qemu_arch_base.go`, `pkg/katautils/config.go`
//! `SetKernelParams`, `pkg/oci/utils.go`, `pkg/katautils/create.go`):
//!
//! 1. the fixed amd64 list (`tsc=reliable` … `pci=lastbus=0`);
//! 2. `intel_iommu=on iommu=pt` with `enable_iommu`;
//! 3. for an `image` guest the root parameters (`root=/dev/vda1
//!    rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4`);
//! 4. `console=hvc0 console=hvc1`, or `console=ttyS0` with `use_legacy_serial`;
//! 5. `debug` or `quiet`, and for an `image` guest right after it
//!    `systemd.show_status=true systemd.log_level=debug` or `systemd.show_status=false`.
//!    (Kata appends it to the non-debug list, after the console, so it follows
//!    `quiet` rather than the root parameters.)
//! 6. `panic=1`, `nr_cpus=N`, then `selinux=0` when `disable_guest_selinux` is true,
//!    else `selinux=1` (always one of the two);
//! 7. `agent.aa_kbc_params=online_sev_kbc::<uri>` for an SEV (not SNP) guest with
//!    pre-attestation on and mode `online`;
//! 8. for an `image` guest `systemd.unit=kata-containers.target
//!    systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket`;
//!    `scsi_mod.scan=none` for `virtio-scsi`; `agent.log=debug`, `agent.trace=true`,
//!    `agent.debug_console agent.debug_console_vport=1026` from `[agent.kata]`;
//! 9. the configuration's `kernel_params`, split on whitespace, in file order;
//! 10. the pod's `kernel_params` annotation, likewise;
//! 11. `fips=1` on a FIPS host.
//!
//! Nothing is ever de-duplicated or reordered. Each token goes through Kata's
//! key/value round trip: `key=` comes out as `key`, `a=b=c` unchanged.

use crate::config::{KataConfig, KbsMode};
use crate::launch::{
    check_annotation, check_confidential, check_guest_files, check_kernel_params, CpuModel,
    LaunchContext, LaunchPlan, PlanError, FIXED_PARAMS, MAX_VCPUS, POLICY_ES,
};
use crate::params::split_params;
use sev_core::SevMode;

/// The vCPUs Kata boots the guest with (`nr_cpus`, `-smp`), as described in the
/// module documentation.
pub fn vcpu_count(config: &KataConfig, ctx: &LaunchContext) -> Result<u32, PlanError> {
    let q = &config.qemu;
    // getCurrentCpuNum(): the host's CPUs, at most MAX_VCPUS.
    let host = ctx.host_cpus.filter(|&n| n > 0).map(|n| n.min(MAX_VCPUS));
    // These builds decode default_vcpus into a Go int32.
    let written = q.default_vcpus.value;
    #[allow(clippy::cast_possible_truncation)]
    let raw = if written.fract() == 0.0 && (-2_147_483_648.0..2_147_483_648.0).contains(&written) {
        written as i32
    } else {
        return Err(PlanError::Unusable {
            at: config.qemu_key("default_vcpus", q.default_vcpus.line),
            reason: format!(
                "{written} is not a 32-bit integer, which is what Kata {} reads default_vcpus as",
                ctx.release
            ),
        });
    };
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

    check_confidential(config)?;
    let firmware = check_guest_files(config)?;
    if q.is_image_guest() && root_params(&q.rootfs_type.value, false).is_none() {
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
    check_annotation(config, ctx)?;

    // These builds split kernel_params on any whitespace (strings.Fields).
    check_kernel_params(config, q.kernel_params.value.split_whitespace())?;
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
        max_vcpus: vcpus,
        smp_sockets: true,
        cpu_model,
        cpu_features: q.cpu_features_normalized(),
        policy: q.sev_guest_policy.value,
        snp_policy: q.snp_policy(),
        machine_type: q.machine_type.value.clone(),
        cmdline,
        release: ctx.release,
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

/// The root parameters of an `image` guest (`GetKernelRootParams`), as tokens.
/// Confidential guests never use NVDIMM, so they always get `/dev/vda1`.
/// `None` for a `rootfs_type` Kata does not support.
pub(crate) fn root_params(rootfs_type: &str, nvdimm: bool) -> Option<Vec<String>> {
    let root = if nvdimm {
        "root=/dev/pmem0p1"
    } else {
        "root=/dev/vda1"
    };
    let flags: &[&str] = match (rootfs_type, nvdimm) {
        ("erofs", false) => &["rootflags=ro"],
        ("erofs", true) => &["rootflags=dax", "ro"],
        ("ext4" | "xfs", false) => &["rootflags=data=ordered,errors=remount-ro", "ro"],
        ("ext4" | "xfs", true) => &["rootflags=dax,data=ordered,errors=remount-ro", "ro"],
        _ => return None,
    };
    let mut out = vec![root.to_string()];
    out.extend(flags.iter().map(|s| (*s).to_string()));
    out.push(format!("rootfstype={rootfs_type}"));
    Some(out)
}

/// The exact `-append` string for a guest with `vcpus` vCPUs (`nr_cpus=vcpus`).
///
/// Pure and infallible: it assumes `config` passed [`plan()`]'s checks; for a
/// configuration `plan()` rejects (e.g. an unsupported `rootfs_type`) the string is
/// best effort. Use [`plan()`] to get the vCPU count Kata would use.
pub fn kernel_cmdline(config: &KataConfig, vcpus: u32, ctx: &LaunchContext) -> String {
    kernel_params(config, vcpus, ctx).join(" ")
}

/// The tokens of [`kernel_cmdline`], in order.
pub fn kernel_params(config: &KataConfig, vcpus: u32, ctx: &LaunchContext) -> Vec<String> {
    let q = &config.qemu;
    let a = &config.agent;
    let image = q.is_image_guest();
    let mut t: Vec<String> = FIXED_PARAMS.iter().map(|s| (*s).to_string()).collect();

    if q.enable_iommu.value {
        t.push("intel_iommu=on".into());
        t.push("iommu=pt".into());
    }
    if image {
        // NVDIMM is forced off for confidential guests and for microvm.
        let nvdimm = !(q.disable_image_nvdimm.value
            || q.confidential_guest.value
            || q.machine_type.value == "microvm");
        t.extend(root_params(&q.rootfs_type.value, nvdimm).unwrap_or_default());
    }
    if q.use_legacy_serial.value {
        t.push("console=ttyS0".into());
    } else {
        t.push("console=hvc0".into());
        t.push("console=hvc1".into());
    }
    if q.enable_debug.value {
        t.push("debug".into());
        if image {
            t.push("systemd.show_status=true".into());
            t.push("systemd.log_level=debug".into());
        }
    } else {
        t.push("quiet".into());
        if image {
            t.push("systemd.show_status=false".into());
        }
    }
    t.push("panic=1".into());
    t.push(format!("nr_cpus={vcpus}"));
    t.push(
        if q.disable_guest_selinux.value {
            "selinux=0"
        } else {
            "selinux=1"
        }
        .into(),
    );

    if online_kbc(config) {
        t.push(format!(
            "agent.aa_kbc_params=online_sev_kbc::{}",
            q.guest_pre_attestation_kbs_uri.value
        ));
    }

    if image {
        t.push("systemd.unit=kata-containers.target".into());
        t.push("systemd.mask=systemd-networkd.service".into());
        t.push("systemd.mask=systemd-networkd.socket".into());
    }
    if q.block_device_driver.value == "virtio-scsi" {
        t.push("scsi_mod.scan=none".into());
    }
    if a.enable_debug.value {
        t.push("agent.log=debug".into());
    }
    if a.enable_tracing.value {
        t.push("agent.trace=true".into());
    }
    if a.debug_console_enabled.value {
        t.push("agent.debug_console".into());
        t.push("agent.debug_console_vport=1026".into());
    }

    t.extend(split_params(&q.kernel_params.value));
    if let Some(annotation) = &ctx.kernel_params_annotation {
        t.extend(split_params(annotation));
    }
    if ctx.fips {
        t.push("fips=1".into());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_params_by_type() {
        assert_eq!(
            root_params("ext4", false).unwrap().join(" "),
            "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
        );
        assert_eq!(
            root_params("xfs", true).unwrap().join(" "),
            "root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=xfs"
        );
        assert_eq!(
            root_params("erofs", false).unwrap().join(" "),
            "root=/dev/vda1 rootflags=ro rootfstype=erofs"
        );
        assert_eq!(root_params("btrfs", false), None);
    }
}
