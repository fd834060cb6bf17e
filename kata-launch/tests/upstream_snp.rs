//! The SEV-SNP launch of the upstream Kata Go runtime (3.19.0 to 4.1.0) for the two
//! shipped SNP configurations (`snp/configuration-qemu-snp.4.1.0.toml`, an `image`
//! guest with `kernel_verity_params`, and `snp/configuration-qemu-snp.3.19.0.toml`,
//! an `initrd` guest), checked against strings derived by hand from Kata's
//! `src/runtime` at each tag.
//!
//! Every expected `-append` string below is written out from literal pieces, in the
//! order `qemu.kernelParameters()` (virtcontainers/qemu.go) emits them:
//!
//! 1. `q.arch.kernelParameters(debug)` (qemu_arch_base.go) returns `q.kernelParams`
//!    followed by `q.kernelParamsNonDebug` or `q.kernelParamsDebug`. `q.kernelParams`
//!    is, in order: the package-global amd64 `kernelParams` list (qemu_amd64.go);
//!    for an `image` guest the root parameters `handleImagePath` appends
//!    (`GetKernelRootParams`, hypervisor.go; `newQemuArch` calls `handleImagePath`
//!    after it forced `disableNvdimm = true` for a confidential guest, so the disk
//!    is `/dev/vda1` and there is no DAX); then `console=hvc0 console=hvc1` from
//!    `appendConsole`, which runs in `buildDevices` before `CreateVM` calls
//!    `kernelParameters()`. `kernelParamsNonDebug` is `quiet` (plus
//!    `systemd.show_status=false` for an image); `kernelParamsDebug` is `debug` (plus
//!    `systemd.show_status=true systemd.log_level=debug` for an image).
//! 2. `defaultKernelParameters`: `panic=1`.
//! 3. `nr_cpus=<DefaultMaxVCPUs>`: unconditional up to 3.31.0; from 3.32.0 only
//!    `if !q.config.ConfidentialGuest`, so never for SNP.
//! 4. `selinux=0` (`disable_guest_selinux = true` in both files).
//! 5. `q.config.KernelParams`, filled by `katautils.SetKernelParams`
//!    (pkg/katautils/config.go): `getKernelParams(needSystemd)` (create.go; the three
//!    `systemd.unit`/`systemd.mask` parameters when `ImagePath != ""`), then
//!    `scsi_mod.scan=none` (`block_device_driver = "virtio-scsi"`), then
//!    `vc.KataAgentKernelParams` (kata_agent.go), then the file's `kernel_params`
//!    (`DeserializeParams(KernelParamFields(..))` in `newQemuHypervisorConfig`).
//!    After that `oci.SandboxConfig` applies the pod's `kernel_params` annotation
//!    (`addHypervisorConfigOverrides`, pkg/oci/utils.go) and `CreateSandbox` appends
//!    `fips=1` (`checkForFIPS`, create.go) on a FIPS host.
//! 6. From 4.0.0 one `kata.extension.<name>.verity_params` per extension image;
//!    neither file has one.
//!
//! The list goes through `SerializeParams(params, "=")` (an empty value is written
//! as the bare key) and is joined with single spaces.
//!
//! vCPUs: `defaultVCPUs()` (katautils/config.go) keeps a positive float32
//! `default_vcpus` and turns 0 into 1; with `static_sandbox_resource_mgmt = true`
//! (both files) `oci.SandboxConfig` does `NumVCPUsF += WorkloadCPUs` and
//! `DefaultMaxVCPUs = NumVCPUs()` = `ceil(NumVCPUsF)` (4.0.0 on: 0 becomes 1);
//! `validateHypervisorConfig` then turns `NumVCPUsF == 0` into 1 and
//! `DefaultMaxVCPUs == 0` into 240. `-smp` is govmm `appendCPUs` of `cpuTopology`:
//! `N,cores=1,threads=1,sockets=M,maxcpus=M` up to 3.31.0 and, from 3.32.0 (Sockets
//! and MaxCPUs zeroed for a confidential guest), `N,cores=1,threads=1`. `-cpu` is
//! `cpuModel()` (`EPYC-v4` for an SNP guest on an SNP host) + "," + `cpu_features`.

#![cfg(test)]

mod common;

use common::{edit, real};
use kata_launch::{
    plan, CpuModel, KataConfig, KataRelease, LaunchContext, LaunchPlan, PlanError, SevMode,
};
use std::path::{Path, PathBuf};

const FILE_41: &str = "snp/configuration-qemu-snp.4.1.0.toml";
const FILE_319: &str = "snp/configuration-qemu-snp.3.19.0.toml";

/// `var kernelParams` in virtcontainers/qemu_amd64.go (identical at 3.19.0 and
/// 4.1.0), as the tokens `SerializeParams` writes (`{"no_timer_check", ""}` is the
/// bare key, `{"pci", "lastbus=0"}` is `pci=lastbus=0`).
const AMD64: [&str; 12] = [
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

/// The placeholder dm-verity values of the 4.1.0 file.
const ROOT_HASH: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const SALT: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const VERITY_LINE: &str = "kernel_verity_params = \"root_hash=1111111111111111111111111111111111111111111111111111111111111111,salt=2222222222222222222222222222222222222222222222222222222222222222,data_blocks=131072,data_block_size=4096,hash_block_size=4096\"";

/// `GetKernelRootParams` without verity for ext4 on virtio-blk (no DAX):
/// `{"root", "/dev/vda1"}`, `{"rootflags", "data=ordered,errors=remount-ro ro"}`,
/// `{"rootfstype", "ext4"}` (the rootflags value holds a space).
const PLAIN_ROOT: &str =
    "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4";
/// `appendConsole` with `use_legacy_serial = false`.
const CONSOLE: &str = "console=hvc0 console=hvc1";
/// `systemdKernelParam` (katautils/create.go), `systemdUnitName` =
/// `kata-containers.target` (config-settings.go.in).
const SYSTEMD: &str = "systemd.unit=kata-containers.target systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket";
/// `SetKernelParams` for `block_device_driver = "virtio-scsi"`.
const SCSI: &str = "scsi_mod.scan=none";
/// `KataAgentKernelParams` for `launch_process_timeout = 6` (3.29.0 on).
const TIMEOUT: &str = "agent.launch_process_timeout=6";
/// The `kernel_params` of both shipped files.
const FILE_PARAMS: &str = "cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1";
/// Non-debug: `kernelParamsNonDebug` plus, for an image, `kernelParamsSystemdNonDebug`.
const QUIET_IMAGE: &str = "quiet systemd.show_status=false";
/// Debug: `kernelParamsDebug` plus, for an image, `kernelParamsSystemdDebug`.
const DEBUG_IMAGE: &str = "debug systemd.show_status=true systemd.log_level=debug";

fn amd64() -> String {
    AMD64.join(" ")
}

/// `GetKernelRootParams` with the 4.1.0 file's `kernel_verity_params` (3.27.0 on):
/// `dm-mod.create="dm-verity,,,ro,0 <S> verity 1 /dev/vda1 /dev/vda2 <dbs> <hbs>
/// <db> 0 sha256 <hash> <salt>"` with S = (4096 / 512) * 131072 = 1048576, then
/// `root=/dev/dm-0`, `rootflags=` (`kernelVerityRootFlags("ext4")`), `rootfstype=ext4`.
fn verity_root() -> String {
    format!(
        "dm-mod.create=\"dm-verity,,,ro,0 1048576 verity 1 /dev/vda1 /dev/vda2 4096 4096 131072 0 sha256 {ROOT_HASH} {SALT}\" \
         root=/dev/dm-0 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
    )
}

fn nr_cpus(m: u32) -> String {
    format!("nr_cpus={m}")
}

/// The pieces joined by single spaces (`strings.Join(paramsStr, " ")`).
fn line(pieces: &[&str]) -> String {
    pieces.join(" ")
}

fn release(name: &str) -> KataRelease {
    name.parse()
        .unwrap_or_else(|e| panic!("{name} should be a known release: {e}"))
}

fn ctx(rel: &str, pod_cpus: u32) -> LaunchContext {
    LaunchContext {
        pod_cpus,
        release: release(rel),
        ..LaunchContext::default()
    }
}

fn launch(path: &Path, text: &str, ctx: &LaunchContext) -> LaunchPlan {
    let config = KataConfig::parse(path, text).unwrap_or_else(|e| panic!("{e}"));
    plan(&config, ctx).unwrap_or_else(|e| panic!("{} at {}: {e}", path.display(), ctx.release))
}

fn launch_err(path: &Path, text: &str, ctx: &LaunchContext) -> PlanError {
    let config = KataConfig::parse(path, text).unwrap_or_else(|e| panic!("{e}"));
    match plan(&config, ctx) {
        Ok(p) => panic!("expected an error, got {}", p.cmdline),
        Err(e) => e,
    }
}

/// The 1-based line of the first line of `text` starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

/// `-smp` up to 3.31.0: `cpuTopology` gives `{CPUs: N, Sockets: M, Cores: 1,
/// Threads: 1, MaxCPUs: M}`, written by `appendCPUs` in that order.
fn smp_sockets(n: u32, m: u32) -> String {
    format!("{n},cores=1,threads=1,sockets={m},maxcpus={m}")
}

/// `-smp` from 3.32.0 for a confidential guest: Sockets and MaxCPUs are 0 and are
/// not written.
fn smp_plain(n: u32) -> String {
    format!("{n},cores=1,threads=1")
}

const HYP_DEBUG_41: (&str, &str) = (
    "# Default false\nenable_debug = false",
    "# Default false\nenable_debug = true",
);
const AGENT_DEBUG_41: (&str, &str) = (
    "display debug-level messages.\n# (default: disabled)\nenable_debug = false",
    "display debug-level messages.\n# (default: disabled)\nenable_debug = true",
);
const HYP_DEBUG_319: (&str, &str) = (
    "# Default false\n#enable_debug = true",
    "# Default false\nenable_debug = true",
);
const AGENT_DEBUG_319: (&str, &str) = (
    "display debug-level messages.\n# (default: disabled)\n#enable_debug = true",
    "display debug-level messages.\n# (default: disabled)\nenable_debug = true",
);
const IMAGE_41: &str =
    "image = \"/opt/kata/share/kata-containers/kata-containers-confidential.img\"";
const INITRD_319: &str =
    "initrd = \"/opt/kata/share/kata-containers/kata-containers-initrd-confidential.img\"";
const PARAMS_LINE: &str = "kernel_params = \"cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1\"";

// ---------------------------------------------------------------------------------
// Case 1: the files as shipped, pod CPU limits 0 to 4.
// ---------------------------------------------------------------------------------

/// 4.1.0 file, release 4.1.0. Pieces in order: amd64 `kernelParams`;
/// `handleImagePath` → `GetKernelRootParams(ext4, disableNvdimm=true, dax=false,
/// kernel_verity_params)` → the four verity parameters; `appendConsole`;
/// `kernelParamsNonDebug` = `quiet` + `systemd.show_status=false`; `panic=1`; no
/// `nr_cpus` (qemu.go 4.1.0: only `if !q.config.ConfidentialGuest`); `selinux=0`;
/// `SetKernelParams`: systemd (image) + `scsi_mod.scan=none` +
/// `agent.launch_process_timeout=6` (`KataAgentKernelParams`, `LaunchProcessTimeout
/// > 0`) + the file's `kernel_params`. vCPUs: 1 + pod CPUs; `-smp N,cores=1,threads=1`.
#[test]
fn shipped_4_1_0_every_pod_size() {
    let (path, text) = real(FILE_41);
    let expected = line(&[
        &amd64(),
        &verity_root(),
        CONSOLE,
        QUIET_IMAGE,
        "panic=1",
        "selinux=0",
        SYSTEMD,
        SCSI,
        TIMEOUT,
        FILE_PARAMS,
    ]);
    for pod in 0..=4u32 {
        let p = launch(&path, &text, &ctx("4.1.0", pod));
        let n = 1 + pod;
        assert_eq!(p.cmdline, expected, "pod {pod}");
        assert_eq!(p.vcpus, n, "pod {pod}");
        assert_eq!(p.max_vcpus, n, "pod {pod}");
        assert_eq!(p.smp_arg(), smp_plain(n), "pod {pod}");
        assert_eq!(p.cpu_arg(), "EPYC-v4,pmu=off");
        assert_eq!(p.cpu_model, CpuModel::Named("EPYC-v4".to_string()));
        assert_eq!(p.cpu_features, "pmu=off");
        assert!(p.kernel_hashes);
        assert_eq!(p.mode, SevMode::Snp);
        assert_eq!(p.release, release("4.1.0"));
        assert_eq!(p.firmware, PathBuf::from("/opt/kata/share/ovmf/AMDSEV.fd"));
        assert_eq!(
            p.kernel,
            PathBuf::from("/opt/kata/share/kata-containers/vmlinuz.container")
        );
        assert_eq!(p.initrd, None);
        assert_eq!(
            p.image,
            Some(PathBuf::from(
                "/opt/kata/share/kata-containers/kata-containers-confidential.img"
            ))
        );
    }
}

/// 3.19.0 file, release 3.19.0. Pieces in order: amd64 `kernelParams`; no root
/// parameters (`handleImagePath` only acts when `ImagePath != ""`); `appendConsole`;
/// `quiet` (no systemd token for an initrd); `panic=1`; `nr_cpus=M` (qemu.go 3.19.0:
/// unconditional, M = `DefaultMaxVCPUs` = ceil(1 + pod)); `selinux=0`;
/// `SetKernelParams`: no systemd (`needSystemd` false), `scsi_mod.scan=none`, no
/// agent token (debug, tracing, debug console off; no `cdh_api_timeout`; 3.19.0's
/// `KataAgentKernelParams` has no launch_process_timeout), the file's
/// `kernel_params`. `-smp N,cores=1,threads=1,sockets=N,maxcpus=N`.
#[test]
fn shipped_3_19_0_every_pod_size() {
    let (path, text) = real(FILE_319);
    for pod in 0..=4u32 {
        let p = launch(&path, &text, &ctx("3.19.0", pod));
        let n = 1 + pod;
        let expected = line(&[
            &amd64(),
            CONSOLE,
            "quiet",
            "panic=1",
            &nr_cpus(n),
            "selinux=0",
            SCSI,
            FILE_PARAMS,
        ]);
        assert_eq!(p.cmdline, expected, "pod {pod}");
        assert_eq!(p.vcpus, n, "pod {pod}");
        assert_eq!(p.max_vcpus, n, "pod {pod}");
        assert_eq!(p.smp_arg(), smp_sockets(n, n), "pod {pod}");
        assert_eq!(p.cpu_arg(), "EPYC-v4,pmu=off");
        assert!(p.kernel_hashes);
        assert_eq!(p.mode, SevMode::Snp);
        assert_eq!(p.firmware, PathBuf::from("/opt/kata/share/ovmf/AMDSEV.fd"));
        assert_eq!(
            p.kernel,
            PathBuf::from("/opt/kata/share/kata-containers/vmlinuz-confidential.container")
        );
        assert_eq!(
            p.initrd,
            Some(PathBuf::from(
                "/opt/kata/share/kata-containers/kata-containers-initrd-confidential.img"
            ))
        );
        assert_eq!(p.image, None);
    }
}

// ---------------------------------------------------------------------------------
// Case 2: the 4.1.0 file with an initrd instead of the image.
// ---------------------------------------------------------------------------------

/// With `initrd` and no `image`, `handleImagePath` adds nothing (so
/// `kernel_verity_params` is never parsed) and `needSystemd` is false: amd64 list,
/// console, `quiet`, `panic=1`, `selinux=0`, `scsi_mod.scan=none`,
/// `agent.launch_process_timeout=6`, the file's `kernel_params`.
#[test]
fn initrd_instead_of_image_at_4_1_0() {
    let (path, text) = real(FILE_41);
    let text = edit(&text, IMAGE_41, INITRD_319);
    let expected = line(&[
        &amd64(),
        CONSOLE,
        "quiet",
        "panic=1",
        "selinux=0",
        SCSI,
        TIMEOUT,
        FILE_PARAMS,
    ]);
    for pod in [0u32, 2] {
        let p = launch(&path, &text, &ctx("4.1.0", pod));
        assert_eq!(p.cmdline, expected, "pod {pod}");
        assert_eq!(p.vcpus, 1 + pod);
        assert_eq!(p.smp_arg(), smp_plain(1 + pod));
        assert_eq!(p.image, None);
        assert!(p.initrd.is_some());
        assert!(p.kernel_hashes);
    }
    // A malformed kernel_verity_params is not looked at for an initrd guest.
    let text = edit(&text, VERITY_LINE, "kernel_verity_params = \"nonsense\"");
    assert_eq!(launch(&path, &text, &ctx("4.1.0", 0)).cmdline, expected);
}

// ---------------------------------------------------------------------------------
// Case 3: the 3.19.0 file switched to an image, with kernel_verity_params set.
// ---------------------------------------------------------------------------------

/// At 3.19.0 (and up to 3.26.0) `handleImagePath` calls the three-argument
/// `GetKernelRootParams(rootfstype, disableNvdimm, dax)` and katautils has no
/// `kernel_verity_params` key, so the value is ignored: `root=/dev/vda1
/// rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4` after the amd64
/// list; `quiet systemd.show_status=false`; `nr_cpus`; the three systemd
/// parameters (`needSystemd`) before `scsi_mod.scan=none`. From 3.27.0 the same
/// file gives the dm-verity parameters instead.
#[test]
fn image_with_verity_params_at_3_19_0_ignores_them() {
    let (path, text) = real(FILE_319);
    let text = edit(&text, INITRD_319, &format!("{IMAGE_41}\n{VERITY_LINE}"));
    for rel in ["3.19.0", "3.26.0"] {
        for pod in [0u32, 3] {
            let n = 1 + pod;
            let p = launch(&path, &text, &ctx(rel, pod));
            assert_eq!(
                p.cmdline,
                line(&[
                    &amd64(),
                    PLAIN_ROOT,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    &nr_cpus(n),
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    FILE_PARAMS,
                ]),
                "{rel} pod {pod}"
            );
            assert_eq!(p.smp_arg(), smp_sockets(n, n));
            assert_eq!(p.initrd, None);
            assert!(p.image.is_some());
        }
    }
    // 3.27.0: `GetKernelRootParams(..., config.KernelVerityParams)` parses it.
    let p = launch(&path, &text, &ctx("3.27.0", 0));
    assert_eq!(
        p.cmdline,
        line(&[
            &amd64(),
            &verity_root(),
            CONSOLE,
            QUIET_IMAGE,
            "panic=1",
            &nr_cpus(1),
            "selinux=0",
            SYSTEMD,
            SCSI,
            FILE_PARAMS,
        ])
    );
    // A malformed value is not an error before 3.27.0 either: nothing reads it.
    let bad = edit(&text, VERITY_LINE, "kernel_verity_params = \"nonsense\"");
    assert_eq!(
        launch(&path, &bad, &ctx("3.19.0", 0)).cmdline,
        launch(&path, &text, &ctx("3.19.0", 0)).cmdline
    );
}

// ---------------------------------------------------------------------------------
// Case 4: an image with an empty kernel_verity_params at 4.1.0.
// ---------------------------------------------------------------------------------

/// `ParseKernelVerityParams` returns `nil, nil` when `strings.TrimSpace(params) ==
/// ""`, so `GetKernelRootParams` falls through to `root=/dev/vda1 rootflags=...
/// rootfstype=ext4`; everything else is as shipped.
#[test]
fn image_with_empty_verity_params_at_4_1_0() {
    let (path, text) = real(FILE_41);
    let expected = line(&[
        &amd64(),
        PLAIN_ROOT,
        CONSOLE,
        QUIET_IMAGE,
        "panic=1",
        "selinux=0",
        SYSTEMD,
        SCSI,
        TIMEOUT,
        FILE_PARAMS,
    ]);
    for empty in [
        "kernel_verity_params = \"\"",
        "kernel_verity_params = \"   \"",
    ] {
        let text = edit(&text, VERITY_LINE, empty);
        for pod in [0u32, 1] {
            let p = launch(&path, &text, &ctx("4.1.0", pod));
            assert_eq!(p.cmdline, expected, "{empty} pod {pod}");
            assert_eq!(p.smp_arg(), smp_plain(1 + pod));
        }
    }
}

/// The `kernel_verity_params` annotation (3.27.0 on, allowed by the 4.1.0 file's
/// `enable_annotations`): `addHypervisorPathOverrides` validates a non-empty value
/// and sets `KernelVerityParams`, which `handleImagePath` then uses. S = (4096 /
/// 512) * 8 = 64.
#[test]
fn verity_params_annotation_at_4_1_0() {
    let (path, text) = real(FILE_41);
    let text = edit(&text, VERITY_LINE, "kernel_verity_params = \"\"");
    let mut c = ctx("4.1.0", 0);
    c.kernel_verity_params_annotation =
        Some("root_hash=ab,salt=cd,data_blocks=8,data_block_size=4096,hash_block_size=4096".into());
    assert_eq!(
        launch(&path, &text, &c).cmdline,
        line(&[
            &amd64(),
            "dm-mod.create=\"dm-verity,,,ro,0 64 verity 1 /dev/vda1 /dev/vda2 4096 4096 8 0 sha256 ab cd\"",
            "root=/dev/dm-0 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4",
            CONSOLE,
            QUIET_IMAGE,
            "panic=1",
            "selinux=0",
            SYSTEMD,
            SCSI,
            TIMEOUT,
            FILE_PARAMS,
        ])
    );
    // A malformed annotation: `invalid kernel_verity_params in annotation: %w`.
    c.kernel_verity_params_annotation = Some("root_hash=ab".into());
    let e = launch_err(&path, &text, &c).to_string();
    assert!(
        e.contains(
            "invalid kernel_verity_params in annotation: missing kernel_verity_params data_blocks"
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------
// Case 5: edited kernel_params.
// ---------------------------------------------------------------------------------

/// The file value `  cgroup_no_v1=all key= flag a=b=c agent.log=debug
/// agent.log=debug foo="a b" console=ttyS0 systemd.unified_cgroup_hierarchy=1  `
/// goes through `KernelParamFields` (split on ' ' outside double quotes, pieces
/// trimmed, empty pieces dropped; the quotes stay) and `DeserializeParams` (split
/// at the first '='), then `SerializeParams`: `key=` becomes `{key, ""}` and is
/// written `key`; `a=b=c` is `{a, b=c}` and round-trips; `foo="a b"` is one
/// parameter; repeats stay (`AddKernelParam` never de-duplicates); `console=ttyS0`
/// does not replace the arch-level console tokens. They come last, after the agent
/// tokens, in file order. Same `KernelParamFields` at 3.19.0 (hypervisor.go) and
/// 4.1.0.
#[test]
fn edited_kernel_params() {
    let value = "kernel_params = \"  cgroup_no_v1=all key= flag a=b=c agent.log=debug agent.log=debug foo=\\\"a b\\\" console=ttyS0 systemd.unified_cgroup_hierarchy=1  \"";
    let user = "cgroup_no_v1=all key flag a=b=c agent.log=debug agent.log=debug foo=\"a b\" console=ttyS0 systemd.unified_cgroup_hierarchy=1";

    let (path, text) = real(FILE_41);
    let text = edit(&text, PARAMS_LINE, value);
    assert_eq!(
        launch(&path, &text, &ctx("4.1.0", 1)).cmdline,
        line(&[
            &amd64(),
            &verity_root(),
            CONSOLE,
            QUIET_IMAGE,
            "panic=1",
            "selinux=0",
            SYSTEMD,
            SCSI,
            TIMEOUT,
            user,
        ])
    );

    let (path, text) = real(FILE_319);
    let text = edit(&text, PARAMS_LINE, value);
    assert_eq!(
        launch(&path, &text, &ctx("3.19.0", 1)).cmdline,
        line(&[
            &amd64(),
            CONSOLE,
            "quiet",
            "panic=1",
            &nr_cpus(2),
            "selinux=0",
            SCSI,
            user,
        ])
    );
}

/// An empty `kernel_params` contributes nothing (`h.kernelParams()` falls back to
/// `defaultKernelParams` = "", and `KernelParamFields("")` is empty).
#[test]
fn empty_kernel_params() {
    let (path, text) = real(FILE_41);
    let text = edit(&text, PARAMS_LINE, "kernel_params = \"\"");
    assert_eq!(
        launch(&path, &text, &ctx("4.1.0", 0)).cmdline,
        line(&[
            &amd64(),
            &verity_root(),
            CONSOLE,
            QUIET_IMAGE,
            "panic=1",
            "selinux=0",
            SYSTEMD,
            SCSI,
            TIMEOUT,
        ])
    );
    let (path, text) = real(FILE_319);
    let text = edit(&text, PARAMS_LINE, "kernel_params = \"\"");
    assert_eq!(
        launch(&path, &text, &ctx("3.19.0", 0)).cmdline,
        line(&[
            &amd64(),
            CONSOLE,
            "quiet",
            "panic=1",
            &nr_cpus(1),
            "selinux=0",
            SCSI
        ])
    );
}

/// A quoted value holding " =": `KernelParamFields` keeps `foo="a =b"` as one
/// piece, `DeserializeParams` makes it `{foo, "\"a =b\""}`, `AddKernelParam`
/// accepts it (the key is not empty) and it is written back unchanged. Kata loads
/// this file; the library refuses it at parse time because `check_params`
/// (parse.rs) splits `kernel_params` with `split_whitespace`, which sees a token
/// `=b"` with an empty key.
#[test]
fn quoted_kernel_param_with_space_before_equals() {
    let (path, text) = real(FILE_41);
    let text = edit(&text, PARAMS_LINE, "kernel_params = \"foo=\\\"a =b\\\"\"");
    assert_eq!(
        launch(&path, &text, &ctx("4.1.0", 0)).cmdline,
        line(&[
            &amd64(),
            &verity_root(),
            CONSOLE,
            QUIET_IMAGE,
            "panic=1",
            "selinux=0",
            SYSTEMD,
            SCSI,
            TIMEOUT,
            "foo=\"a =b\"",
        ])
    );
}

/// A token starting with '=' has an empty key: `AddKernelParam` returns "Empty
/// kernel parameter" in `SetKernelParams` and the configuration does not load.
#[test]
fn kernel_param_with_empty_key_is_refused() {
    let (path, text) = real(FILE_41);
    let text = edit(&text, PARAMS_LINE, "kernel_params = \"a=1 =x\"");
    let refused = match KataConfig::parse(&path, &text) {
        Err(e) => e.to_string(),
        Ok(config) => match plan(&config, &ctx("4.1.0", 0)) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("accepted: {}", p.cmdline),
        },
    };
    assert!(
        refused.contains("hypervisor.qemu.kernel_params"),
        "{refused}"
    );
    assert!(refused.contains("Empty kernel parameter"), "{refused}");
}

// ---------------------------------------------------------------------------------
// Case 6: agent and hypervisor debug.
// ---------------------------------------------------------------------------------

/// Hypervisor `enable_debug = true`: `q.arch.kernelParameters(true)` appends
/// `kernelParamsDebug` (`debug`, and for an image the `kernelParamsSystemdDebug`
/// that `handleImagePath` added: `systemd.show_status=true systemd.log_level=debug`)
/// instead of `quiet ...`. Agent `enable_debug = true`: `KataAgentKernelParams`
/// emits `agent.log=debug` first, i.e. right after `scsi_mod.scan=none` and before
/// `agent.launch_process_timeout=6`.
#[test]
fn debug_4_1_0() {
    let (path, shipped) = real(FILE_41);
    let hyp = edit(&shipped, HYP_DEBUG_41.0, HYP_DEBUG_41.1);
    let agent = edit(&shipped, AGENT_DEBUG_41.0, AGENT_DEBUG_41.1);
    let both = edit(&hyp, AGENT_DEBUG_41.0, AGENT_DEBUG_41.1);
    let c = ctx("4.1.0", 2);
    let head = |mode: &str| {
        vec![
            amd64(),
            verity_root(),
            CONSOLE.to_string(),
            mode.to_string(),
            "panic=1".to_string(),
            "selinux=0".to_string(),
            SYSTEMD.to_string(),
            SCSI.to_string(),
        ]
    };
    let with = |mut v: Vec<String>, tail: &[&str]| {
        v.extend(tail.iter().map(|s| s.to_string()));
        v.join(" ")
    };
    assert_eq!(
        launch(&path, &hyp, &c).cmdline,
        with(head(DEBUG_IMAGE), &[TIMEOUT, FILE_PARAMS])
    );
    assert_eq!(
        launch(&path, &agent, &c).cmdline,
        with(
            head(QUIET_IMAGE),
            &["agent.log=debug", TIMEOUT, FILE_PARAMS]
        )
    );
    assert_eq!(
        launch(&path, &both, &c).cmdline,
        with(
            head(DEBUG_IMAGE),
            &["agent.log=debug", TIMEOUT, FILE_PARAMS]
        )
    );
    assert_eq!(launch(&path, &both, &c).smp_arg(), smp_plain(3));
}

/// The 3.19.0 file (initrd): hypervisor debug gives just `debug` in place of
/// `quiet` (no systemd tokens, `handleImagePath` did nothing); agent debug gives
/// `agent.log=debug` after `scsi_mod.scan=none`.
#[test]
fn debug_3_19_0() {
    let (path, shipped) = real(FILE_319);
    let hyp = edit(&shipped, HYP_DEBUG_319.0, HYP_DEBUG_319.1);
    let agent = edit(&shipped, AGENT_DEBUG_319.0, AGENT_DEBUG_319.1);
    let both = edit(&hyp, AGENT_DEBUG_319.0, AGENT_DEBUG_319.1);
    let c = ctx("3.19.0", 2);
    let nr = nr_cpus(3);
    assert_eq!(
        launch(&path, &hyp, &c).cmdline,
        line(&[
            &amd64(),
            CONSOLE,
            "debug",
            "panic=1",
            &nr,
            "selinux=0",
            SCSI,
            FILE_PARAMS
        ])
    );
    assert_eq!(
        launch(&path, &agent, &c).cmdline,
        line(&[
            &amd64(),
            CONSOLE,
            "quiet",
            "panic=1",
            &nr,
            "selinux=0",
            SCSI,
            "agent.log=debug",
            FILE_PARAMS,
        ])
    );
    assert_eq!(
        launch(&path, &both, &c).cmdline,
        line(&[
            &amd64(),
            CONSOLE,
            "debug",
            "panic=1",
            &nr,
            "selinux=0",
            SCSI,
            "agent.log=debug",
            FILE_PARAMS,
        ])
    );
    assert_eq!(launch(&path, &both, &c).smp_arg(), smp_sockets(3, 3));
}

/// Every agent token `KataAgentKernelParams` writes, in its order: `agent.log=debug`
/// (`Debug`), `agent.trace=true` (`Trace`), `agent.debug_console
/// agent.debug_console_vport=1026` (`EnableDebugConsole`), `agent.cdh_api_timeout=N`
/// (`CdhApiTimeout > 0`), `agent.launch_process_timeout=N` (3.29.0 on),
/// `agent.visible_cdi_devices=true` (3.32.0 on). Before a release reads a key
/// (`launch_process_timeout` before 3.29.0, `visible_cdi_devices` before 3.32.0) the
/// token is absent. They sit between `scsi_mod.scan=none` and the file's
/// `kernel_params`.
#[test]
fn every_agent_token_4_1_0_file() {
    let (path, text) = real(FILE_41);
    let text = edit(&text, AGENT_DEBUG_41.0, AGENT_DEBUG_41.1);
    let text = edit(
        &text,
        "# (default: disabled)\nenable_tracing = false\n\n# Comma separated",
        "# (default: disabled)\nenable_tracing = true\n\n# Comma separated",
    );
    let text = edit(
        &text,
        "debug_console_enabled = false",
        "debug_console_enabled = true",
    );
    let text = edit(
        &text,
        "launch_process_timeout = 6",
        "launch_process_timeout = 6\ncdh_api_timeout = 50\nvisible_cdi_devices = true",
    );
    let v = verity_root();
    let a = amd64();
    let agent_old = "agent.log=debug agent.trace=true agent.debug_console agent.debug_console_vport=1026 agent.cdh_api_timeout=50";
    for (rel, pieces) in [
        (
            "3.28.0",
            vec![
                &a,
                &v,
                CONSOLE,
                QUIET_IMAGE,
                "panic=1",
                "nr_cpus=1",
                "selinux=0",
                SYSTEMD,
                SCSI,
                agent_old,
                FILE_PARAMS,
            ],
        ),
        (
            "3.31.0",
            vec![
                &a,
                &v,
                CONSOLE,
                QUIET_IMAGE,
                "panic=1",
                "nr_cpus=1",
                "selinux=0",
                SYSTEMD,
                SCSI,
                agent_old,
                TIMEOUT,
                FILE_PARAMS,
            ],
        ),
        (
            "3.32.0",
            vec![
                &a,
                &v,
                CONSOLE,
                QUIET_IMAGE,
                "panic=1",
                "selinux=0",
                SYSTEMD,
                SCSI,
                agent_old,
                TIMEOUT,
                "agent.visible_cdi_devices=true",
                FILE_PARAMS,
            ],
        ),
        (
            "4.1.0",
            vec![
                &a,
                &v,
                CONSOLE,
                QUIET_IMAGE,
                "panic=1",
                "selinux=0",
                SYSTEMD,
                SCSI,
                agent_old,
                TIMEOUT,
                "agent.visible_cdi_devices=true",
                FILE_PARAMS,
            ],
        ),
    ] {
        assert_eq!(
            launch(&path, &text, &ctx(rel, 0)).cmdline,
            line(&pieces),
            "{rel}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Case 7: the 4.1.0 file under intermediate releases.
// ---------------------------------------------------------------------------------

/// The 4.1.0 file read by older shims:
/// - 3.26.0: no verity support yet (`GetKernelRootParams` has three arguments) →
///   `root=/dev/vda1 ...`; no `launch_process_timeout` key (katautils has none
///   before 3.29.0, and BurntSushi TOML ignores unknown keys); `nr_cpus`; sockets.
/// - 3.28.0: verity (3.27.0 on) but still no `launch_process_timeout`; `nr_cpus`;
///   `cpuTopology(vcpus, maxvcpus)` → sockets/maxcpus.
/// - 3.29.0, 3.31.0: `agent.launch_process_timeout=6` (3.29.0 `agent.LaunchProcessTimeout`
///   and `KataAgentKernelParams`), still `nr_cpus` and sockets.
/// - 3.32.0, 4.0.0: `nr_cpus` only for non-confidential guests; `cpuTopology(...,
///   confidentialGuest)` zeroes Sockets/MaxCPUs → `N,cores=1,threads=1`.
///   (`agent.visible_cdi_devices` is new in 3.32.0, but the file does not set it.)
#[test]
fn intermediate_releases_with_the_4_1_0_file() {
    let (path, text) = real(FILE_41);
    let a = amd64();
    let v = verity_root();
    for pod in [0u32, 2] {
        let n = 1 + pod;
        let nr = nr_cpus(n);
        let cases: [(&str, Vec<&str>, String); 7] = [
            (
                "3.26.0",
                vec![
                    &a,
                    PLAIN_ROOT,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    &nr,
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    FILE_PARAMS,
                ],
                smp_sockets(n, n),
            ),
            (
                "3.28.0",
                vec![
                    &a,
                    &v,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    &nr,
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    FILE_PARAMS,
                ],
                smp_sockets(n, n),
            ),
            (
                "3.29.0",
                vec![
                    &a,
                    &v,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    &nr,
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    TIMEOUT,
                    FILE_PARAMS,
                ],
                smp_sockets(n, n),
            ),
            (
                "3.31.0",
                vec![
                    &a,
                    &v,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    &nr,
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    TIMEOUT,
                    FILE_PARAMS,
                ],
                smp_sockets(n, n),
            ),
            (
                "3.32.0",
                vec![
                    &a,
                    &v,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    TIMEOUT,
                    FILE_PARAMS,
                ],
                smp_plain(n),
            ),
            (
                "4.0.0",
                vec![
                    &a,
                    &v,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    TIMEOUT,
                    FILE_PARAMS,
                ],
                smp_plain(n),
            ),
            (
                "4.1.0",
                vec![
                    &a,
                    &v,
                    CONSOLE,
                    QUIET_IMAGE,
                    "panic=1",
                    "selinux=0",
                    SYSTEMD,
                    SCSI,
                    TIMEOUT,
                    FILE_PARAMS,
                ],
                smp_plain(n),
            ),
        ];
        for (rel, pieces, smp) in cases {
            let p = launch(&path, &text, &ctx(rel, pod));
            assert_eq!(p.cmdline, line(&pieces), "{rel} pod {pod}");
            assert_eq!(p.smp_arg(), smp, "{rel} pod {pod}");
            assert_eq!((p.vcpus, p.max_vcpus), (n, n), "{rel} pod {pod}");
            assert_eq!(p.cpu_arg(), "EPYC-v4,pmu=off");
            assert!(p.kernel_hashes);
            assert_eq!(p.mode, SevMode::Snp);
        }
    }
}

// ---------------------------------------------------------------------------------
// Case 8: the kernel_params annotation, and FIPS.
// ---------------------------------------------------------------------------------

const ANNOTATION: &str = "systemd.unified_cgroup_hierarchy=0 agent.log=debug";

/// 3.19.0 to 3.23.0 (`addHypervisorConfigOverrides`): each annotation parameter
/// (`DeserializeParams(strings.Fields(value))`) is `AddKernelParam`ed, i.e.
/// appended after the file's `kernel_params`. From 3.24.0 every existing entry of
/// `HypervisorConfig.KernelParams` with the same key is removed first, then the
/// parameter is appended: `systemd.unified_cgroup_hierarchy=1` disappears and the
/// `=0` comes after `cgroup_no_v1=all`; `agent.log` matches nothing and is appended.
/// `fips=1` (`checkForFIPS`, after `oci.SandboxConfig`) comes last.
#[test]
fn kernel_params_annotation_append_then_replace_3_19_0_file() {
    let (path, text) = real(FILE_319);
    let head = |n: u32| {
        vec![
            amd64(),
            CONSOLE.to_string(),
            "quiet".to_string(),
            "panic=1".to_string(),
            nr_cpus(n),
            "selinux=0".to_string(),
            SCSI.to_string(),
        ]
    };
    let with = |mut v: Vec<String>, tail: &[&str]| {
        v.extend(tail.iter().map(|s| s.to_string()));
        v.join(" ")
    };
    for (rel, tail) in [
        (
            "3.19.0",
            vec![
                FILE_PARAMS,
                "systemd.unified_cgroup_hierarchy=0",
                "agent.log=debug",
            ],
        ),
        (
            "3.23.0",
            vec![
                FILE_PARAMS,
                "systemd.unified_cgroup_hierarchy=0",
                "agent.log=debug",
            ],
        ),
        (
            "3.24.0",
            vec![
                "cgroup_no_v1=all",
                "systemd.unified_cgroup_hierarchy=0",
                "agent.log=debug",
            ],
        ),
    ] {
        let mut c = ctx(rel, 1);
        c.kernel_params_annotation = Some(ANNOTATION.into());
        assert_eq!(
            launch(&path, &text, &c).cmdline,
            with(head(2), &tail),
            "{rel}"
        );
        c.fips = true;
        let mut fips_tail = tail.clone();
        fips_tail.push("fips=1");
        assert_eq!(
            launch(&path, &text, &c).cmdline,
            with(head(2), &fips_tail),
            "{rel} fips"
        );
    }
    // FIPS alone: `fips=1` after the file's `kernel_params`.
    let mut c = ctx("3.19.0", 0);
    c.fips = true;
    assert_eq!(
        launch(&path, &text, &c).cmdline,
        with(head(1), &[FILE_PARAMS, "fips=1"])
    );
}

/// 4.1.0 file at 4.1.0: the same replace-by-key rule over the list
/// systemd/scsi/agent/file parameters; FIPS last.
#[test]
fn kernel_params_annotation_replace_4_1_0() {
    let (path, text) = real(FILE_41);
    let head = [
        &amd64(),
        &verity_root(),
        CONSOLE,
        QUIET_IMAGE,
        "panic=1",
        "selinux=0",
        SYSTEMD,
        SCSI,
        TIMEOUT,
    ]
    .join(" ");
    let mut c = ctx("4.1.0", 0);
    c.kernel_params_annotation = Some(ANNOTATION.into());
    assert_eq!(
        launch(&path, &text, &c).cmdline,
        format!("{head} cgroup_no_v1=all systemd.unified_cgroup_hierarchy=0 agent.log=debug")
    );
    c.fips = true;
    assert_eq!(
        launch(&path, &text, &c).cmdline,
        format!(
            "{head} cgroup_no_v1=all systemd.unified_cgroup_hierarchy=0 agent.log=debug fips=1"
        )
    );
    let mut c = ctx("4.1.0", 0);
    c.fips = true;
    assert_eq!(
        launch(&path, &text, &c).cmdline,
        format!("{head} {FILE_PARAMS} fips=1")
    );
}

/// The replace rule in more detail (3.24.0 on), with the 4.1.0 file:
/// annotation `systemd.mask=foo.service console=ttyS0 x=1 x=2 agent.launch_process_timeout=9 fips=1`:
/// - `systemd.mask=foo.service` removes both `systemd.mask` entries of the list and
///   is appended;
/// - `console=ttyS0` matches nothing in `HypervisorConfig.KernelParams` (the
///   console tokens are arch-level, `q.kernelParams`) and is appended;
/// - `x=1` is appended, then `x=2` removes it and is appended;
/// - `agent.launch_process_timeout=9` replaces the agent's `=6`;
/// - `fips=1` from the annotation, then `checkForFIPS` appends another `fips=1`
///   (no de-duplication).
///
/// At 3.23.0 the same annotation is appended as is.
#[test]
fn kernel_params_annotation_replace_rules() {
    let (path, text) = real(FILE_41);
    let annotation =
        "systemd.mask=foo.service console=ttyS0 x=1 x=2 agent.launch_process_timeout=9 fips=1";
    let arch = [&amd64(), &verity_root(), CONSOLE, QUIET_IMAGE, "panic=1"].join(" ");
    let mut c = ctx("4.1.0", 0);
    c.kernel_params_annotation = Some(annotation.into());
    c.fips = true;
    assert_eq!(
        launch(&path, &text, &c).cmdline,
        format!(
            "{arch} selinux=0 systemd.unit=kata-containers.target {SCSI} {FILE_PARAMS} \
             systemd.mask=foo.service console=ttyS0 x=2 agent.launch_process_timeout=9 fips=1 fips=1"
        )
    );
    // 3.23.0 (verity supported only from 3.27.0, so plain root; nr_cpus; no
    // launch_process_timeout before 3.29.0): appended unchanged.
    let mut c = ctx("3.23.0", 0);
    c.kernel_params_annotation = Some(annotation.into());
    c.fips = true;
    assert_eq!(
        launch(&path, &text, &c).cmdline,
        line(&[
            &amd64(),
            PLAIN_ROOT,
            CONSOLE,
            QUIET_IMAGE,
            "panic=1",
            "nr_cpus=1",
            "selinux=0",
            SYSTEMD,
            SCSI,
            FILE_PARAMS,
            annotation,
            "fips=1",
        ])
    );
}

// ---------------------------------------------------------------------------------
// Case 9: errors.
// ---------------------------------------------------------------------------------

/// A malformed `kernel_verity_params` in the 4.1.0 file: `handleImagePath` →
/// `GetKernelRootParams` → `ParseKernelVerityParams` returns the error and
/// `newQemuArch` (so `CreateVM`) fails. The messages are Kata's, in its check
/// order (hypervisor.go `ParseKernelVerityParams`).
#[test]
fn malformed_verity_params_at_4_1_0() {
    let (path, text) = real(FILE_41);
    let line_no = line_of(&text, "kernel_verity_params = ");
    for (value, message) in [
        (
            "nonsense",
            "invalid kernel_verity_params entry: \"nonsense\"",
        ),
        (
            "salt=cd,data_blocks=8,data_block_size=4096,hash_block_size=4096",
            "missing kernel_verity_params root_hash",
        ),
        (
            "root_hash=ab,salt=cd,data_block_size=4096,hash_block_size=4096",
            "missing kernel_verity_params data_blocks",
        ),
        (
            "root_hash=ab,salt=cd,data_blocks=8,data_block_size=4096",
            "missing kernel_verity_params hash_block_size",
        ),
        (
            "root_hash=ab,data_blocks=8,data_block_size=4096,hash_block_size=4096",
            "missing kernel_verity_params salt",
        ),
        (
            "root_hash=ab,salt=cd,data_blocks=0,data_block_size=4096,hash_block_size=4096",
            "invalid kernel_verity_params data_blocks: must be non-zero",
        ),
        (
            "root_hash=ab,salt=cd,data_blocks=8,data_block_size=1000,hash_block_size=4096",
            "invalid kernel_verity_params data_block_size: must be multiple of 512",
        ),
        (
            "root_hash=ab,salt=cd,data_blocks=8,data_block_size=4096,hash_block_size=0",
            "invalid kernel_verity_params hash_block_size: must be non-zero",
        ),
    ] {
        let bad = edit(
            &text,
            VERITY_LINE,
            &format!("kernel_verity_params = \"{value}\""),
        );
        match launch_err(&path, &bad, &ctx("4.1.0", 0)) {
            PlanError::Unusable { at, reason } => {
                assert_eq!(
                    at.key.as_deref(),
                    Some("hypervisor.qemu.kernel_verity_params"),
                    "{value}"
                );
                assert_eq!(at.line, Some(line_no), "{value}");
                assert_eq!(at.path, path);
                assert_eq!(reason, message, "{value}");
            }
            other => panic!("{value}: unexpected error {other}"),
        }
        let shown = launch_err(&path, &bad, &ctx("4.1.0", 0)).to_string();
        assert!(
            shown.contains("key hypervisor.qemu.kernel_verity_params"),
            "{shown}"
        );
    }
}

/// A non-decimal number: `parseUintField` returns `fmt.Errorf("invalid
/// kernel_verity_params %s %q: %w", name, value, err)`, so Kata's message ends with
/// the wrapped `strconv.ParseUint` error.
#[test]
fn verity_number_error_keeps_the_wrapped_parse_error() {
    let (path, text) = real(FILE_41);
    let bad = edit(
        &text,
        VERITY_LINE,
        "kernel_verity_params = \"root_hash=ab,salt=cd,data_blocks=-1,data_block_size=4096,hash_block_size=4096\"",
    );
    match launch_err(&path, &bad, &ctx("4.1.0", 0)) {
        PlanError::Unusable { at, reason } => {
            assert_eq!(
                at.key.as_deref(),
                Some("hypervisor.qemu.kernel_verity_params")
            );
            assert_eq!(
                reason,
                "invalid kernel_verity_params data_blocks \"-1\": strconv.ParseUint: parsing \"-1\": invalid syntax"
            );
        }
        other => panic!("unexpected error {other}"),
    }
}

/// Same shape as above, but only the part the library does produce: the key, and
/// Kata's message up to the wrapped error.
#[test]
fn verity_number_error_names_the_key() {
    let (path, text) = real(FILE_41);
    let bad = edit(
        &text,
        VERITY_LINE,
        "kernel_verity_params = \"root_hash=ab,salt=cd,data_blocks=-1,data_block_size=4096,hash_block_size=4096\"",
    );
    let e = launch_err(&path, &bad, &ctx("4.1.0", 0)).to_string();
    assert!(
        e.contains("key hypervisor.qemu.kernel_verity_params"),
        "{e}"
    );
    assert!(
        e.contains("invalid kernel_verity_params data_blocks \"-1\""),
        "{e}"
    );
}

/// Releases the library does not model are refused, and the message lists the
/// known ones: CC-0.7.0, CC-0.8.0 and every upstream minor from 3.19 to 4.1 (the
/// tags 3.19.0 ... 3.32.0, 4.0.0, 4.1.0 of the Kata repository).
#[test]
fn unknown_release_lists_known_releases() {
    let minors = [
        "3.19.x", "3.20.x", "3.21.x", "3.22.x", "3.23.x", "3.24.x", "3.25.x", "3.26.x", "3.27.x",
        "3.28.x", "3.29.x", "3.30.x", "3.31.x", "3.32.x", "4.0.x", "4.1.x",
    ];
    for bad in ["3.18.0", "3.33.0", "4.2.0", "5.0.0", "4.1", "latest"] {
        let e = bad
            .parse::<KataRelease>()
            .map(|r| panic!("{bad} parsed as {r}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad), "{e}");
        assert!(e.contains("known releases"), "{e}");
        assert!(e.contains("CC-0.7.0") && e.contains("CC-0.8.0"), "{e}");
        for m in minors {
            assert!(e.contains(m), "{bad}: {m} missing from {e}");
        }
    }
    // Patch releases of a known minor are accepted.
    for good in ["3.19.1", "4.1.0", "3.32.0", "4.0.0"] {
        assert_eq!(release(good).to_string(), good);
    }
}

// ---------------------------------------------------------------------------------
// Case 10: fractional and zero default_vcpus.
// ---------------------------------------------------------------------------------

/// `default_vcpus = 0.5`: `defaultVCPUs()` keeps it (not < 0, not above the host's
/// CPUs, not 0); static sizing adds the pod's 1 CPU → 1.5 (float32) and
/// `DefaultMaxVCPUs = ceil(1.5) = 2`; `NumVCPUs() = ceil(1.5) = 2`. With no pod
/// limit, ceil(0.5) = 1. The command line is unchanged at 4.1.0 (no `nr_cpus`); at
/// 3.19.0 it carries `nr_cpus=2` and `-smp 2,...,sockets=2,maxcpus=2`.
///
/// `default_vcpus = 0`: `defaultVCPUs()` returns `defaultVCPUCount` = 1, so a pod
/// without a limit gets 1 vCPU (and 1 + 2 with a limit of 2).
#[test]
fn fractional_and_zero_default_vcpus() {
    let (path, text) = real(FILE_41);
    let shipped_41 = line(&[
        &amd64(),
        &verity_root(),
        CONSOLE,
        QUIET_IMAGE,
        "panic=1",
        "selinux=0",
        SYSTEMD,
        SCSI,
        TIMEOUT,
        FILE_PARAMS,
    ]);
    let cases: [(&str, u32, u32); 4] = [
        ("default_vcpus = 0.5", 1, 2),
        ("default_vcpus = 0.5", 0, 1),
        ("default_vcpus = 0", 0, 1),
        ("default_vcpus = 0", 2, 3),
    ];
    for (value, pod, n) in cases {
        let t = edit(&text, "default_vcpus = 1", value);
        let p = launch(&path, &t, &ctx("4.1.0", pod));
        assert_eq!((p.vcpus, p.max_vcpus), (n, n), "{value} pod {pod}");
        assert_eq!(p.smp_arg(), smp_plain(n), "{value} pod {pod}");
        assert_eq!(p.cmdline, shipped_41, "{value} pod {pod}");
    }

    let (path, text) = real(FILE_319);
    for (value, pod, n) in cases {
        let t = edit(&text, "default_vcpus = 1", value);
        let p = launch(&path, &t, &ctx("3.19.0", pod));
        assert_eq!((p.vcpus, p.max_vcpus), (n, n), "{value} pod {pod}");
        assert_eq!(p.smp_arg(), smp_sockets(n, n), "{value} pod {pod}");
        assert_eq!(
            p.cmdline,
            line(&[
                &amd64(),
                CONSOLE,
                "quiet",
                "panic=1",
                &nr_cpus(n),
                "selinux=0",
                SCSI,
                FILE_PARAMS,
            ]),
            "{value} pod {pod}"
        );
    }
}

/// The `default_vcpus` annotation (allowed by the 4.1.0 file) replaces
/// `NumVCPUsF` before static sizing (`addHypervisorCPUOverrides`; 0 is accepted).
/// With 0 and no pod limit: `NumVCPUsF = 0`, `DefaultMaxVCPUs = ceil(0) = 0`.
/// Up to 3.32.0 nothing floors that, so `validateHypervisorConfig` makes vCPUs 1
/// and the maximum 240 (`defaultMaxVCPUs` = `govmm.MaxVCPUs()` on amd64):
/// `nr_cpus=240` (3.29.0) and `-smp 1,cores=1,threads=1,sockets=240,maxcpus=240`.
/// 4.0.0 floors the maximum at 1 in `oci.SandboxConfig`. With 0.5 and a pod limit
/// of 1: ceil(1.5) = 2.
#[test]
fn default_vcpus_annotation() {
    let (path, text) = real(FILE_41);
    let mut c = ctx("3.29.0", 0);
    c.default_vcpus_annotation = Some(0.0);
    let p = launch(&path, &text, &c);
    assert_eq!((p.vcpus, p.max_vcpus), (1, 240));
    assert_eq!(p.smp_arg(), smp_sockets(1, 240));
    assert_eq!(
        p.cmdline,
        line(&[
            &amd64(),
            &verity_root(),
            CONSOLE,
            QUIET_IMAGE,
            "panic=1",
            "nr_cpus=240",
            "selinux=0",
            SYSTEMD,
            SCSI,
            TIMEOUT,
            FILE_PARAMS,
        ])
    );

    for rel in ["4.0.0", "4.1.0"] {
        let mut c = ctx(rel, 0);
        c.default_vcpus_annotation = Some(0.0);
        let p = launch(&path, &text, &c);
        assert_eq!((p.vcpus, p.max_vcpus), (1, 1), "{rel}");
        assert_eq!(p.smp_arg(), smp_plain(1), "{rel}");
    }

    let mut c = ctx("4.1.0", 1);
    c.default_vcpus_annotation = Some(0.5);
    let p = launch(&path, &text, &c);
    assert_eq!((p.vcpus, p.smp_arg()), (2, smp_plain(2)));
}
