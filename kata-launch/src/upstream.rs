//! The QEMU launch of an SEV-SNP guest as the upstream Go runtime of Kata 3.19.0
//! to 4.1.x builds it from `configuration-qemu-snp.toml`.
//!
//! Read from `src/runtime` at each tag (line references at 4.1.0):
//!
//! The kernel command line, `qemu.kernelParameters()` (`virtcontainers/qemu.go`):
//! 1. the fixed amd64 list (`qemu_amd64.go`), `intel_iommu=on iommu=pt` with
//!    `enable_iommu`;
//! 2. for an `image` guest the root parameters (`GetKernelRootParams`,
//!    `hypervisor.go`): `root=/dev/vda1 rootflags=... rootfstype=T`, or with
//!    `kernel_verity_params` (3.27 and later) `dm-mod.create="dm-verity,..."
//!    root=/dev/dm-0 rootflags=... rootfstype=T`;
//! 3. `console=hvc0 console=hvc1` (or `console=ttyS0`), then `quiet` (or
//!    `debug`), and for an image `systemd.show_status=false` (or
//!    `systemd.show_status=true systemd.log_level=debug`);
//! 4. `panic=1`; `nr_cpus=M` (the maximum vCPUs) up to 3.31 only: 3.32 drops it
//!    for confidential guests; `selinux=0` or `selinux=1`;
//! 5. the hypervisor's parameter list, as `katautils.SetKernelParams` filled it:
//!    for an image `systemd.unit=kata-containers.target
//!    systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket`;
//!    `scsi_mod.scan=none` for virtio-scsi; the agent's (`KataAgentKernelParams`:
//!    `agent.log=debug`, `agent.trace=true`, `agent.debug_console
//!    agent.debug_console_vport=1026`, `agent.cdh_api_timeout=N`,
//!    `agent.launch_process_timeout=N` from 3.29, `agent.visible_cdi_devices=true`
//!    from 3.32); the file's `kernel_params`, split on spaces outside double
//!    quotes (`KernelParamFields`); then the pod's `kernel_params` annotation,
//!    appended up to 3.23 and from 3.24 replacing every entry of the list with
//!    the same key (`oci/utils.go`); then `fips=1` on a FIPS host;
//! 6. from 4.0, `kata.extension.<name>.verity_params=V` per extension image.
//!
//! vCPUs: `default_vcpus` is a `float32`; 0 means 1, negative or more than the
//! host's CPUs means the host's CPU count (at most 240). Under
//! `static_sandbox_resource_mgmt` the pod's CPU limit is added as a float and the
//! maximum is `ceil` of the sum, so N = ceil(default_vcpus + limit). `-smp` is
//! `N,cores=1,threads=1,sockets=M,maxcpus=M` up to 3.31 and `N,cores=1,threads=1`
//! from 3.32.
//!
//! `-cpu EPYC-v4,<cpu_features>` (the comma always); the firmware as `-bios`;
//! `-object sev-snp-guest,...,kernel-hashes=on`, so QEMU measures the kernel, the
//! initrd (or nothing, for an image) and the whole `-append` string.

use crate::config::KataConfig;
use crate::launch::{
    check_annotation, check_confidential, check_guest_files, check_kernel_params, CpuModel,
    LaunchContext, LaunchPlan, PlanError, FIXED_PARAMS, MAX_VCPUS,
};
use crate::location::Location;
use crate::params::kernel_param_fields;
use crate::release::KataRelease;
use sev_core::SevMode;

/// What changed between the upstream releases, for the parts modelled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Traits {
    /// `nr_cpus=M` for confidential guests (up to 3.31).
    nr_cpus: bool,
    /// `-smp` carries `sockets=M,maxcpus=M` (up to 3.31).
    smp_sockets: bool,
    /// The `kernel_params` annotation replaces same-key entries (3.24 on).
    annotation_replaces: bool,
    /// `kernel_verity_params` is read (3.27 on).
    verity: bool,
    /// `agent.launch_process_timeout` (3.29 on).
    launch_process_timeout: bool,
    /// `agent.visible_cdi_devices` (3.32 on).
    visible_cdi_devices: bool,
    /// `kata.extension.*` tokens, and a zero maximum raised to 1 (4.0 on).
    v4: bool,
}

fn traits(release: KataRelease) -> Traits {
    Traits {
        nr_cpus: !release.at_least(3, 32),
        smp_sockets: !release.at_least(3, 32),
        annotation_replaces: release.at_least(3, 24),
        verity: release.at_least(3, 27),
        launch_process_timeout: release.at_least(3, 29),
        visible_cdi_devices: release.at_least(3, 32),
        v4: release.at_least(4, 0),
    }
}

/// One `key[=value]` kernel parameter as Kata keeps it (`vc.Param`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Param {
    key: String,
    value: String,
}

impl Param {
    fn new(key: &str, value: impl Into<String>) -> Param {
        Param {
            key: key.to_string(),
            value: value.into(),
        }
    }

    /// `DeserializeParams`: split at the first `=`.
    fn from_token(token: &str) -> Param {
        match token.split_once('=') {
            Some((key, value)) => Param::new(key, value),
            None => Param::new(token, ""),
        }
    }

    /// `SerializeParams` with `=`: an empty value drops the `=`, an empty pair
    /// is skipped.
    fn push_to(&self, out: &mut Vec<String>) {
        match (self.key.is_empty(), self.value.is_empty()) {
            (true, true) => {}
            (true, false) => out.push(self.value.clone()),
            (false, true) => out.push(self.key.clone()),
            (false, false) => out.push(format!("{}={}", self.key, self.value)),
        }
    }
}

/// Parsed `kernel_verity_params` (`ParseKernelVerityParams`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verity {
    root_hash: String,
    salt: String,
    data_blocks: u64,
    data_block_size: u64,
    hash_block_size: u64,
}

/// Go's `strconv.ParseUint(s, 10, 64)`: decimal digits only, no sign.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `ParseKernelVerityParams`: `None` for an empty or blank string, else the
/// parameters or Kata's own message for what is wrong.
pub(crate) fn parse_verity(params: &str) -> Result<Option<Verity>, String> {
    if params.trim().is_empty() {
        return Ok(None);
    }
    let mut values: Vec<(&str, &str)> = Vec::new();
    for field in params.split(',') {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("invalid kernel_verity_params entry: {field:?}"));
        };
        // A repeated key keeps its last value (a Go map).
        values.retain(|(k, _)| *k != key);
        values.push((key, value));
    }
    let get = |name: &str| {
        values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .unwrap_or("")
    };
    let root_hash = get("root_hash");
    if root_hash.is_empty() {
        return Err("missing kernel_verity_params root_hash".into());
    }
    let number = |name: &str| -> Result<u64, String> {
        let v = get(name);
        if v.is_empty() {
            return Err(format!("missing kernel_verity_params {name}"));
        }
        parse_u64(v).ok_or_else(|| {
            // Kata wraps strconv's error; say the same.
            let why = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                "value out of range"
            } else {
                "invalid syntax"
            };
            format!("invalid kernel_verity_params {name} {v:?}: strconv.ParseUint: parsing {v:?}: {why}")
        })
    };
    let data_blocks = number("data_blocks")?;
    let data_block_size = number("data_block_size")?;
    let hash_block_size = number("hash_block_size")?;
    let salt = get("salt");
    if salt.is_empty() {
        return Err("missing kernel_verity_params salt".into());
    }
    for (name, v) in [
        ("data_blocks", data_blocks),
        ("data_block_size", data_block_size),
        ("hash_block_size", hash_block_size),
    ] {
        if v == 0 {
            return Err(format!(
                "invalid kernel_verity_params {name}: must be non-zero"
            ));
        }
    }
    for (name, v) in [
        ("data_block_size", data_block_size),
        ("hash_block_size", hash_block_size),
    ] {
        if v % 512 != 0 {
            return Err(format!(
                "invalid kernel_verity_params {name}: must be multiple of 512"
            ));
        }
    }
    Ok(Some(Verity {
        root_hash: root_hash.to_string(),
        salt: salt.to_string(),
        data_blocks,
        data_block_size,
        hash_block_size,
    }))
}

/// The `rootflags` value for a root file system type (no DAX: confidential
/// guests never use NVDIMM); `None` for a type Kata refuses.
fn root_flags(rootfs_type: &str) -> Option<&'static str> {
    match rootfs_type {
        "ext4" => Some("data=ordered,errors=remount-ro ro"),
        "xfs" | "erofs" => Some("ro"),
        _ => None,
    }
}

/// `GetKernelRootParams` for a virtio-blk root disk.
fn root_params(rootfs_type: &str, verity: Option<&Verity>) -> Option<Vec<Param>> {
    let flags = root_flags(rootfs_type)?;
    let mut out = Vec::with_capacity(4);
    match verity {
        Some(v) => {
            // Go's uint64 arithmetic wraps; so does this.
            let sectors = (v.data_block_size / 512).wrapping_mul(v.data_blocks);
            out.push(Param::new(
                "dm-mod.create",
                format!(
                    "\"dm-verity,,,ro,0 {sectors} verity 1 /dev/vda1 /dev/vda2 {} {} {} 0 sha256 {} {}\"",
                    v.data_block_size, v.hash_block_size, v.data_blocks, v.root_hash, v.salt
                ),
            ));
            out.push(Param::new("root", "/dev/dm-0"));
        }
        None => out.push(Param::new("root", "/dev/vda1")),
    }
    out.push(Param::new("rootflags", flags));
    out.push(Param::new("rootfstype", rootfs_type));
    Some(out)
}

/// The host's CPU count as Kata caps it (`getCurrentCpuNum`).
fn host_cpus(ctx: &LaunchContext) -> Option<u32> {
    ctx.host_cpus.filter(|&n| n > 0).map(|n| n.min(MAX_VCPUS))
}

/// The boot vCPUs and the maximum (`DefaultMaxVCPUs`), as described in the
/// module documentation.
fn vcpus(config: &KataConfig, ctx: &LaunchContext, t: Traits) -> Result<(u32, u32), PlanError> {
    let q = &config.qemu;
    let unknown_host = |what: &str| PlanError::Unusable {
        at: config.qemu_key("default_vcpus", q.default_vcpus.line),
        reason: format!("{what} means the host's CPU count, which is not known here"),
    };
    let host = host_cpus(ctx);
    let written = q.default_vcpus.value;
    #[allow(clippy::cast_precision_loss)]
    let mut n: f32 = match host {
        _ if written == 0.0 => 1.0,
        Some(h) if written < 0.0 || written > h as f32 => h as f32,
        None if written < 0.0 => return Err(unknown_host(&format!("default_vcpus = {written}"))),
        _ => written,
    };
    if let Some(annotation) = ctx.default_vcpus_annotation {
        // addHypervisorCPUOverrides: 0 up to the host's CPU count (Go's NumCPU).
        #[allow(clippy::cast_precision_loss)]
        let too_many = ctx
            .host_cpus
            .is_some_and(|h| f64::from(annotation) > h as f64);
        if annotation.is_nan() || annotation < 0.0 || too_many {
            return Err(PlanError::Unusable {
                at: Location::file(&config.path),
                reason: format!(
                    "the default_vcpus annotation {annotation} is not between 0 and this host's CPU count, so Kata refuses the pod"
                ),
            });
        }
        n = annotation;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ceil = |f: f32| f64::from(f).ceil().clamp(0.0, f64::from(u32::MAX)) as u32;
    let mut max = if config.runtime.static_sandbox_resource_mgmt.value {
        #[allow(clippy::cast_precision_loss)]
        {
            n += ctx.pod_cpus as f32;
        }
        let m = ceil(n);
        if m == 0 && t.v4 {
            1
        } else {
            m
        }
    } else {
        // defaultMaxVCPUs(): 0 (the template's value) is the host's CPU count.
        let h = host.ok_or_else(|| {
            unknown_host("default_maxvcpus = 0 without static_sandbox_resource_mgmt")
        })?;
        match q.default_maxvcpus.value {
            0 => h,
            m if m >= h => h,
            m => m,
        }
    };
    // validateHypervisorConfig(): zero vCPUs is one, a zero or too large maximum is 240.
    if n == 0.0 {
        n = 1.0;
    }
    if max == 0 || max > MAX_VCPUS {
        max = MAX_VCPUS;
    }
    Ok((ceil(n), max))
}

/// Derives the launch for an upstream release.
pub(crate) fn plan(config: &KataConfig, ctx: &LaunchContext) -> Result<LaunchPlan, PlanError> {
    let q = &config.qemu;
    let release = ctx.release;
    let t = traits(release);
    let unusable = |key: &str, line: Option<usize>, reason: String| PlanError::Unusable {
        at: config.qemu_key(key, line),
        reason,
    };
    check_confidential(config)?;
    if !q.sev_snp_guest.value {
        return Err(PlanError::NotSnp {
            at: config.qemu_key(
                "sev_snp_guest",
                q.sev_snp_guest.line.or(q.confidential_guest.line),
            ),
            release,
        });
    }
    let firmware = check_guest_files(config)?;
    let image = q.is_image_guest();
    let verity_text = ctx
        .kernel_verity_params_annotation
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or(&q.kernel_verity_params.value);
    let verity = if image && t.verity {
        parse_verity(verity_text).map_err(|reason| {
            if ctx.kernel_verity_params_annotation.is_some() {
                PlanError::Unusable {
                    at: Location::file(&config.path),
                    reason: format!("invalid kernel_verity_params in annotation: {reason}"),
                }
            } else {
                unusable("kernel_verity_params", q.kernel_verity_params.line, reason)
            }
        })?
    } else {
        None
    };
    let root = if image {
        Some(
            root_params(&q.rootfs_type.value, verity.as_ref()).ok_or_else(|| {
                unusable(
                    "rootfs_type",
                    q.rootfs_type.line,
                    format!(
                        "unsupported rootfs type {:?} (Kata accepts ext4, xfs, erofs)",
                        q.rootfs_type.value
                    ),
                )
            })?,
        )
    } else {
        None
    };
    check_annotation(config, ctx)?;
    check_kernel_params(
        config,
        kernel_param_fields(&q.kernel_params.value)
            .iter()
            .map(String::as_str),
    )?;

    let (vcpus, max_vcpus) = vcpus(config, ctx, t)?;
    let cmdline = kernel_params(config, ctx, t, root.as_deref(), max_vcpus).join(" ");
    Ok(LaunchPlan {
        runtime_class: config.runtime_class.clone(),
        mode: SevMode::Snp,
        firmware,
        kernel: q.kernel.value.clone(),
        initrd: q.initrd.value.clone(),
        image: q.image.value.clone(),
        vcpus,
        max_vcpus,
        smp_sockets: t.smp_sockets,
        cpu_model: CpuModel::Named("EPYC-v4".into()),
        cpu_features: q.cpu_features_normalized(),
        policy: q.sev_guest_policy.value,
        snp_policy: q.snp_policy(),
        machine_type: q.machine_type.value.clone(),
        cmdline,
        release,
        kernel_hashes: true,
    })
}

/// The `-append` tokens, in order.
fn kernel_params(
    config: &KataConfig,
    ctx: &LaunchContext,
    t: Traits,
    root: Option<&[Param]>,
    max_vcpus: u32,
) -> Vec<String> {
    let q = &config.qemu;
    let a = &config.agent;
    let image = root.is_some();

    // The architecture's list, then panic, nr_cpus and selinux.
    let mut head: Vec<Param> = FIXED_PARAMS.iter().map(|t| Param::from_token(t)).collect();
    if q.enable_iommu.value {
        head.push(Param::new("intel_iommu", "on"));
        head.push(Param::new("iommu", "pt"));
    }
    if let Some(root) = root {
        head.extend(root.iter().cloned());
    }
    if q.use_legacy_serial.value {
        head.push(Param::new("console", "ttyS0"));
    } else {
        head.push(Param::new("console", "hvc0"));
        head.push(Param::new("console", "hvc1"));
    }
    if q.enable_debug.value {
        head.push(Param::new("debug", ""));
        if image {
            head.push(Param::new("systemd.show_status", "true"));
            head.push(Param::new("systemd.log_level", "debug"));
        }
    } else {
        head.push(Param::new("quiet", ""));
        if image {
            head.push(Param::new("systemd.show_status", "false"));
        }
    }
    head.push(Param::new("panic", "1"));
    if t.nr_cpus {
        head.push(Param::new("nr_cpus", max_vcpus.to_string()));
    }
    head.push(Param::new(
        "selinux",
        if q.disable_guest_selinux.value {
            "0"
        } else {
            "1"
        },
    ));

    // The hypervisor's list (SetKernelParams), which annotations edit.
    let mut list: Vec<Param> = Vec::new();
    if image {
        list.push(Param::new("systemd.unit", "kata-containers.target"));
        list.push(Param::new("systemd.mask", "systemd-networkd.service"));
        list.push(Param::new("systemd.mask", "systemd-networkd.socket"));
    }
    if q.block_device_driver.value == "virtio-scsi" {
        list.push(Param::new("scsi_mod.scan", "none"));
    }
    if a.enable_debug.value {
        list.push(Param::new("agent.log", "debug"));
    }
    if a.enable_tracing.value {
        list.push(Param::new("agent.trace", "true"));
    }
    if a.debug_console_enabled.value {
        list.push(Param::new("agent.debug_console", ""));
        list.push(Param::new("agent.debug_console_vport", "1026"));
    }
    if a.cdh_api_timeout.value > 0 {
        list.push(Param::new(
            "agent.cdh_api_timeout",
            a.cdh_api_timeout.value.to_string(),
        ));
    }
    if t.launch_process_timeout && a.launch_process_timeout.value > 0 {
        list.push(Param::new(
            "agent.launch_process_timeout",
            a.launch_process_timeout.value.to_string(),
        ));
    }
    if t.visible_cdi_devices && a.visible_cdi_devices.value {
        list.push(Param::new("agent.visible_cdi_devices", "true"));
    }
    list.extend(
        kernel_param_fields(&q.kernel_params.value)
            .iter()
            .map(|t| Param::from_token(t)),
    );
    if let Some(annotation) = &ctx.kernel_params_annotation {
        for p in annotation.split_whitespace().map(Param::from_token) {
            if t.annotation_replaces {
                list.retain(|e| e.key != p.key);
            }
            list.push(p);
        }
    }
    if ctx.fips {
        list.push(Param::new("fips", "1"));
    }
    if t.v4 {
        for e in &q.guest_extension_images.value {
            list.push(Param::new(
                &format!("kata.extension.{}.verity_params", e.name),
                e.verity_params.clone(),
            ));
        }
    }

    let mut out = Vec::with_capacity(head.len() + list.len());
    for p in head.iter().chain(&list) {
        p.push_to(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "root_hash=ab,salt=cd,data_blocks=8,data_block_size=4096,hash_block_size=4096";

    #[test]
    fn verity_parameters_as_kata_reads_them() {
        let v = parse_verity(GOOD).unwrap().unwrap();
        assert_eq!(v.data_blocks, 8);
        assert_eq!(parse_verity("  ").unwrap(), None);
        // Order, blanks and repeats: the last value of a key wins.
        let v2 = parse_verity(&format!(" ,{GOOD}, data_blocks=9 ,"))
            .unwrap()
            .unwrap();
        assert_eq!(v2.data_blocks, 9);
        for (bad, want) in [
            ("root_hash", "invalid kernel_verity_params entry"),
            (
                "salt=1,data_blocks=1",
                "missing kernel_verity_params root_hash",
            ),
            (
                "root_hash=a,salt=b,data_blocks=+1,data_block_size=512,hash_block_size=512",
                "invalid kernel_verity_params data_blocks",
            ),
            (
                "root_hash=a,data_blocks=1,data_block_size=512,hash_block_size=512",
                "missing kernel_verity_params salt",
            ),
            (
                "root_hash=a,salt=b,data_blocks=0,data_block_size=512,hash_block_size=512",
                "data_blocks: must be non-zero",
            ),
            (
                "root_hash=a,salt=b,data_blocks=1,data_block_size=100,hash_block_size=512",
                "multiple of 512",
            ),
            (
                "root_hash=a,salt=b,data_block_size=512,hash_block_size=512",
                "missing kernel_verity_params data_blocks",
            ),
        ] {
            let e = parse_verity(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn verity_root_parameters() {
        let v = parse_verity(GOOD).unwrap().unwrap();
        let mut out = Vec::new();
        for p in root_params("ext4", Some(&v)).unwrap() {
            p.push_to(&mut out);
        }
        assert_eq!(
            out.join(" "),
            "dm-mod.create=\"dm-verity,,,ro,0 64 verity 1 /dev/vda1 /dev/vda2 4096 4096 8 0 sha256 ab cd\" \
             root=/dev/dm-0 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
        );
        assert!(root_params("btrfs", None).is_none());
    }

    #[test]
    fn params_round_trip_like_kata() {
        let mut out = Vec::new();
        for t in ["a=b=c", "key=", "flag", "=v"] {
            Param::from_token(t).push_to(&mut out);
        }
        assert_eq!(out, ["a=b=c", "key", "flag", "v"]);
    }
}
