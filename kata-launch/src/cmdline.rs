//! The guest kernel command line (QEMU `-append`) exactly as the Kata shim of
//! CoCo 0.7/0.8 builds it for an amd64 QEMU guest.
//!
//! Order, from Kata CC-0.8.0 (`virtcontainers/qemu.go` `kernelParameters`,
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

use crate::config::KataConfig;
use crate::plan::LaunchContext;

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

/// Why Kata rejects a kernel parameter token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamError {
    /// `=value`: Kata's `AddKernelParam` refuses an empty key.
    EmptyKey,
}

/// One whitespace-free token after Kata's `DeserializeParams` / `SerializeParams`
/// round trip: split at the first `=`; an empty value drops the `=`.
pub(crate) fn kata_param(token: &str) -> Result<String, ParamError> {
    match token.split_once('=') {
        None => Ok(token.to_string()),
        Some(("", _)) => Err(ParamError::EmptyKey),
        Some((key, "")) => Ok(key.to_string()),
        Some(_) => Ok(token.to_string()),
    }
}

/// Splits a parameter string the way Kata does (`strings.Fields`), dropping
/// tokens Kata would refuse (callers that must fail on them check first).
fn split_params(params: &str) -> impl Iterator<Item = String> + '_ {
    params.split_whitespace().filter_map(|t| kata_param(t).ok())
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
/// Pure and infallible: it assumes `config` passed [`crate::plan()`]'s checks; for a
/// configuration `plan()` rejects (e.g. an unsupported `rootfs_type`) the string is
/// best effort. Use [`crate::plan()`] to get the vCPU count Kata would use.
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

    if crate::plan::online_kbc(config) {
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
    fn kata_param_round_trip() {
        assert_eq!(kata_param("quiet"), Ok("quiet".to_string()));
        assert_eq!(kata_param("a=b"), Ok("a=b".to_string()));
        assert_eq!(kata_param("a=b=c"), Ok("a=b=c".to_string()));
        assert_eq!(kata_param("key="), Ok("key".to_string()));
        assert_eq!(kata_param("=x"), Err(ParamError::EmptyKey));
        assert_eq!(kata_param("="), Err(ParamError::EmptyKey));
    }

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
