//! Drift: what the QEMU processes Kata started really measure, against what
//! this node registered.
//!
//! The agent registers with the key broker the digests of the launches it derives
//! from Kata's configuration. If a running SEV guest measures something else (its
//! command line, firmware, vCPUs or files differ from the derivation, or a file was
//! replaced after registration), the broker refuses it, or worse, the derivation is
//! wrong for every pod. This module reads the launch back from the running QEMU's
//! command line ([`scan`], [`parse_qemu_args`]), measures it from the files now on
//! disk ([`measure_observed`]) and names what differs from the closest registered
//! launch ([`check`]).
//!
//! What QEMU gets from Kata (tag CC-0.8.0: `src/runtime/pkg/govmm/qemu/qemu.go`,
//! `src/runtime/virtcontainers/qemu.go`, `qemu_amd64.go`, `qemu_arch_base.go`):
//! - `-machine q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=sev`
//!   (`=snp` for SNP), and a second `-machine memory-backend=dimm1` only on
//!   machines without NUMA; QEMU merges repeated `-machine` options.
//! - `-cpu host,<cpu_features>` (`EPYC-v4,<cpu_features>` for SNP on an SNP host).
//! - `-object sev-guest,id=sev,cbitpos=C,reduced-phys-bits=R,policy=P` with `P`
//!   in decimal, then `dh-cert-file=...,session-file=...` with pre-attestation,
//!   then `kernel-hashes=on`; SEV-ES is the same object with policy bit 2.
//!   SNP: `-object sev-snp-guest,id=snp,cbitpos=C,reduced-phys-bits=1,policy=0x..`
//!   with the policy in hexadecimal and no `kernel-hashes`.
//! - The firmware right after the object as
//!   `-drive if=pflash,format=raw,readonly=on,file=<firmware>`, never `-bios`
//!   for SEV and SNP (`-bios` only for guests without protection); the path is
//!   written unescaped. The configuration's `pflashes` follow as `-pflash FILE`.
//! - `-kernel`, `-initrd` and `-append` as single arguments (no escaping), the
//!   `-S` flag just before them when the guest waits for pre-attestation.
//! - `-smp N,cores=1,threads=1,sockets=M,maxcpus=M`, last on the command line.
//!
//! What QEMU measures: with `kernel-hashes=on` (QEMU 7.1, which Kata ships for SEV)
//! the SHA-256 of kernel, initrd and the `-append` bytes enter the digest;
//! without it only the firmware does. The SNP QEMU Kata CC-0.8.0 pins
//! (AMDESE/qemu 3b6a2b6b, based on 6.1.50) has no `kernel-hashes` property and
//! never adds the hashes table for SNP guests, so Kata's SNP guests measure their
//! firmware alone; [`Part::KernelHashes`] names that difference.

use crate::artefacts::{sha256_file, ArtefactKind};
use crate::launch::{measure, LaunchArtefacts, LaunchError};
use serde::{Serialize, Serializer};
use sev_core::vcpu::vcpu_type_signature;
use sev_core::{LaunchDigest, SevMode, VcpuSignature, VmShape, VmmType};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// SEV guest policy bit 2: the guest runs with SEV-ES (QEMU enables it from the policy).
const POLICY_ES: u64 = 0x4;
/// QEMU's `sev-guest` policy when none is given (no debugging).
const DEFAULT_SEV_POLICY: u64 = 0x1;
/// QEMU's `sev-snp-guest` policy when none is given (SMT allowed, bit 17 set).
const DEFAULT_SNP_POLICY: u64 = 0x3_0000;
/// The x86-64 CPU model QEMU uses without `-cpu`.
const DEFAULT_CPU: &str = "qemu64";
/// SNP guest features the digest is measured with, as the agent registers them.
const SNP_GUEST_FEATURES: u64 = 0x1;
/// Longest value quoted in a finding's detail.
const MAX_QUOTE: usize = 96;

/// The launch a running QEMU performs, as its command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuLaunch {
    /// The firmware QEMU maps at the reset vector: pflash unit 0, else `-bios`.
    pub firmware: PathBuf,
    /// `-kernel` (or `-machine kernel=`).
    pub kernel: Option<PathBuf>,
    /// `-initrd`.
    pub initrd: Option<PathBuf>,
    /// `-append`, exactly as passed.
    pub cmdline: Option<String>,
    /// vCPUs at boot, from `-smp` (1 without it).
    pub vcpus: u32,
    /// The `-cpu` argument, model and features (QEMU's default `qemu64` without it).
    pub cpu: String,
    /// SNP for `sev-snp-guest`; SEV-ES for `sev-guest` with policy bit 2; else SEV.
    pub mode: SevMode,
    /// The object's `policy` (QEMU's default when absent: 0x1 SEV, 0x30000 SNP).
    pub policy: u64,
    /// The object has `kernel-hashes=on`: kernel, initrd and command line are
    /// measured. Without it QEMU measures the firmware alone.
    pub kernel_hashes: bool,
}

/// Why a process's launch could not be read or measured.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// An option QEMU needs a value for ends the command line.
    #[error("{option} has no value (it ends the command line)")]
    MissingValue {
        /// The option, e.g. `-kernel`.
        option: String,
    },
    /// An option's value is not what QEMU accepts.
    #[error("{option}: {reason}")]
    BadValue {
        /// The option, e.g. `-smp`.
        option: String,
        /// What is wrong, quoting the value.
        reason: String,
    },
    /// A value that must be text is not UTF-8 (Kata never writes such a value).
    #[error("{option} is not UTF-8: {}", lossy_quote(value))]
    NotUtf8 {
        /// The option.
        option: String,
        /// The value, as it was.
        value: OsString,
    },
    /// The SEV guest has no firmware the agent can find.
    #[error("no firmware: neither a pflash drive with a file at unit 0 nor -bios, so QEMU would load its built-in BIOS, which the agent cannot measure")]
    NoFirmware,
    /// A path QEMU resolved against its working directory, which is not known.
    #[error("{kind} path {} is relative and QEMU's working directory is unknown", path.display())]
    RelativePath {
        /// Which file.
        kind: ArtefactKind,
        /// The path as given.
        path: PathBuf,
    },
    /// `-cpu host` (or `max`) for SEV-ES or SNP, and the host's signature is unknown.
    #[error("{mode} guest with -cpu {cpu}: its VMSAs carry the host's CPU signature, which is not known (not an AMD host?)")]
    NoHostSignature {
        /// The mode.
        mode: SevMode,
        /// The `-cpu` argument.
        cpu: String,
    },
    /// A named vCPU model with no known signature.
    #[error("unknown vCPU model {model:?}: its signature for the {mode} VMSAs is not known")]
    UnknownCpuModel {
        /// The model name.
        model: String,
        /// The mode.
        mode: SevMode,
    },
    /// The process looks like QEMU but its command line cannot be read.
    #[error("cannot read the command line of process {pid}: {cause}")]
    Read {
        /// The process.
        pid: u32,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The files could not be measured.
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// One running QEMU that is an SEV guest, and its launch or why it cannot be read.
#[derive(Debug)]
pub struct Observed {
    /// The process id.
    pub pid: u32,
    /// The launch from its command line.
    pub result: Result<QemuLaunch, DriftError>,
}

/// A launch the agent registered, with what it was derived from.
///
/// The content hashes are optional: with them, [`check`] can tell which file's
/// contents changed since registration when the paths are unchanged; without
/// them it can only say that some file's contents must have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedLaunch {
    /// The runtime class, e.g. `kata-qemu-sev`.
    pub runtime_class: String,
    /// SEV, SEV-ES or SNP.
    pub mode: SevMode,
    /// The firmware path.
    pub firmware: PathBuf,
    /// The kernel path.
    pub kernel: PathBuf,
    /// The initrd path, for an initrd guest.
    pub initrd: Option<PathBuf>,
    /// The exact kernel command line.
    pub cmdline: String,
    /// vCPUs at boot.
    pub vcpus: u32,
    /// The `-cpu` argument (`host,pmu=off`).
    pub cpu: String,
    /// The registered launch digest.
    pub digest: Vec<u8>,
    /// SHA-256 of the firmware file when the digest was computed, if known.
    pub firmware_sha256: Option<[u8; 32]>,
    /// SHA-256 of the kernel file when the digest was computed, if known.
    pub kernel_sha256: Option<[u8; 32]>,
    /// SHA-256 of the initrd file when the digest was computed, if known.
    pub initrd_sha256: Option<[u8; 32]>,
}

/// A part of a launch that enters its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// The firmware path or contents.
    Firmware,
    /// The kernel path or contents.
    Kernel,
    /// The initrd path or contents.
    Initrd,
    /// The kernel command line.
    CommandLine,
    /// The number of vCPUs (SEV-ES and SNP only: SEV does not measure it).
    Vcpus,
    /// The vCPU model (SEV-ES and SNP only).
    CpuType,
    /// SEV, SEV-ES or SNP.
    Mode,
    /// Whether kernel, initrd and command line are measured at all
    /// (`kernel-hashes=on`); registrations always measure them.
    KernelHashes,
}

impl Part {
    /// The name used in findings and in the JSON status.
    pub fn name(self) -> &'static str {
        match self {
            Part::Firmware => "firmware",
            Part::Kernel => "kernel",
            Part::Initrd => "initrd",
            Part::CommandLine => "command line",
            Part::Vcpus => "vCPUs",
            Part::CpuType => "vCPU type",
            Part::Mode => "mode",
            Part::KernelHashes => "kernel hashes",
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Part {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The verdict on one running guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftFinding {
    /// The QEMU process.
    pub pid: u32,
    /// The runtime class whose registered launch it matches or is closest to.
    pub runtime_class: Option<String>,
    /// The digest the guest measures, hexadecimal.
    pub digest_hex: String,
    /// The digest matches no registered launch.
    pub drifted: bool,
    /// What differs from the closest registered launch (empty without drift).
    pub differing: Vec<Part>,
    /// One line for people: what differs, with both values.
    pub detail: String,
}

// ---------------------------------------------------------------------------
// Reading QEMU's command line
// ---------------------------------------------------------------------------

/// Options that take no value, so the next argument is an option of its own.
/// QEMU refuses unknown options, so anything else takes a value in the QEMU
/// that accepted it; see [`parse_qemu_args`] for options this list lacks.
const FLAGS: &[&str] = &[
    "S",
    "s",
    "h",
    "help",
    "version",
    "nographic",
    "no-user-config",
    "nodefaults",
    "nodefconfig",
    "no-reboot",
    "no-shutdown",
    "daemonize",
    "enable-kvm",
    "no-kvm",
    "snapshot",
    "no-acpi",
    "no-hpet",
    "no-fd-bootchk",
    "no-quit",
    "no-frame",
    "alt-grab",
    "ctrl-grab",
    "sdl",
    "curses",
    "full-screen",
    "portrait",
    "localtime",
    "win2k-hack",
    "rtc-td-hack",
    "usb",
    "singlestep",
    "one-insn-per-tb",
    "only-migratable",
    "preconfig",
    "enable-fips",
    "enable-sync-profile",
    "semihosting",
    "old-param",
    "mem-prealloc",
    "no-kvm-irqchip",
    "no-kvm-pit",
    "no-kvm-pit-reinjection",
    "tdf",
    "show-cursor",
    "xen-attach",
    "xen-domid-restrict",
    "async-teardown",
    "perfmap",
    "jitdump",
];

/// The options this module reads; each always takes the next argument.
const READ: &[&str] = &[
    "machine", "M", "cpu", "smp", "kernel", "initrd", "append", "bios", "drive", "pflash", "object",
];

/// The name of an option argument (`-name` or `--name`), if it is one.
fn option_name(arg: &OsStr) -> Option<&[u8]> {
    let rest = arg.as_bytes().strip_prefix(b"-")?;
    let name = rest.strip_prefix(b"-").unwrap_or(rest);
    (!name.is_empty()).then_some(name)
}

/// Splits a QEMU option list `a=1,b=2`: a comma is written `,,` inside values;
/// a first element without `=` is the value of `implied` (`-smp 2`, `-machine q35`);
/// any other element without `=` is a flag set to `on` (QemuOpts' shorthand).
fn split_options(s: &[u8], implied: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut first = true;
    while !rest.is_empty() {
        // Keys are never escaped: they end at the first `=` or `,`.
        let key_end = rest
            .iter()
            .position(|&b| b == b'=' || b == b',')
            .unwrap_or(rest.len());
        let (key, after) = rest.split_at(key_end);
        let has_value = after.first() == Some(&b'=');
        let (key, value_src) = match (has_value, first.then_some(implied).flatten()) {
            (true, _) => (key.to_vec(), after.get(1..).unwrap_or_default()),
            // The whole element, escapes and all, is the implied key's value.
            (false, Some(name)) => (name.as_bytes().to_vec(), rest),
            (false, None) => {
                if !key.is_empty() {
                    out.push((key.to_vec(), b"on".to_vec()));
                }
                rest = after.get(1..).unwrap_or_default();
                first = false;
                continue;
            }
        };
        let mut value = Vec::new();
        let mut i = 0;
        loop {
            match (value_src.get(i), value_src.get(i + 1)) {
                (None, _) => break,
                (Some(b','), Some(b',')) => {
                    value.push(b',');
                    i += 2;
                }
                (Some(b','), _) => break,
                (Some(&b), _) => {
                    value.push(b);
                    i += 1;
                }
            }
        }
        if !key.is_empty() {
            out.push((key, value));
        }
        rest = value_src.get(i + 1..).unwrap_or_default();
        first = false;
    }
    out
}

/// The last value of `key` in merged option lists (QEMU lets the last one win).
fn last<'a>(opts: &'a [(Vec<u8>, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    opts.iter()
        .rev()
        .find(|(k, _)| k.as_slice() == key.as_bytes())
        .map(|(_, v)| v.as_slice())
}

/// An unsigned number as QEMU reads one: decimal, `0x` hexadecimal, or octal with
/// a leading zero.
fn parse_number(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = s.strip_prefix('0').filter(|o| !o.is_empty()) {
        u64::from_str_radix(oct, 8).ok()
    } else {
        s.parse().ok()
    }
}

fn bad(option: &str, reason: String) -> DriftError {
    DriftError::BadValue {
        option: option.to_string(),
        reason,
    }
}

fn number(option: &str, key: &str, value: &[u8]) -> Result<u64, DriftError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(parse_number)
        .ok_or_else(|| {
            bad(
                option,
                format!(
                    "{key}={} is not a number",
                    lossy_quote(OsStr::from_bytes(value))
                ),
            )
        })
}

/// QEMU's boolean spellings.
fn boolean(option: &str, key: &str, value: &[u8]) -> Result<bool, DriftError> {
    match value {
        b"on" | b"yes" | b"true" | b"y" => Ok(true),
        b"off" | b"no" | b"false" | b"n" => Ok(false),
        _ => Err(bad(
            option,
            format!(
                "{key}={} is not on or off",
                lossy_quote(OsStr::from_bytes(value))
            ),
        )),
    }
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// A `-drive if=pflash` or `-pflash`: its unit and file.
struct Pflash {
    unit: Option<u64>,
    file: Option<OsString>,
}

/// An `sev-guest` or `sev-snp-guest` object.
struct SevObject {
    snp: bool,
    id: Vec<u8>,
    props: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads the options of a `-object` argument, in either of QEMU's two syntaxes
/// (`type,key=value` or JSON); `None` for objects other than SEV guests.
fn sev_object(value: &OsStr) -> Result<Option<SevObject>, DriftError> {
    let bytes = value.as_bytes();
    let props = if bytes.first() == Some(&b'{') {
        let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)
            .map_err(|e| bad("-object", format!("not a JSON object: {e}")))?;
        json.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.into_bytes(),
                    serde_json::Value::Bool(b) => if b { "on" } else { "off" }.into(),
                    other => other.to_string().into_bytes(),
                };
                (k.into_bytes(), v)
            })
            .collect()
    } else {
        split_options(bytes, Some("qom-type"))
    };
    let snp = match last(&props, "qom-type") {
        Some(b"sev-guest") => false,
        Some(b"sev-snp-guest") => true,
        _ => return Ok(None),
    };
    let id = last(&props, "id").unwrap_or_default().to_vec();
    Ok(Some(SevObject { snp, id, props }))
}

/// The vCPUs at boot from merged `-smp` options, as QEMU 7 computes them: `cpus`
/// if set (0 means unset), else `maxcpus`, else the product of the topology.
fn smp_vcpus(opts: &[(Vec<u8>, Vec<u8>)]) -> Result<u32, DriftError> {
    let get = |key: &str| -> Result<Option<u64>, DriftError> {
        last(opts, key)
            .map(|v| number("-smp", key, v))
            .transpose()
            .map(|n| n.filter(|&n| n > 0))
    };
    let n = match (get("cpus")?, get("maxcpus")?) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => {
            let mut product: u64 = 1;
            for key in ["sockets", "dies", "clusters", "cores", "threads"] {
                product = product.saturating_mul(get(key)?.unwrap_or(1));
            }
            product
        }
    };
    u32::try_from(n).map_err(|_| bad("-smp", format!("{n} vCPUs is more than QEMU allows")))
}

/// Reads the SEV launch from a QEMU process's arguments, `argv[0]` first (as in
/// `/proc/<pid>/cmdline`).
///
/// `Ok(None)` when the process is not an SEV guest: no `sev-guest` or
/// `sev-snp-guest` object is named by the machine's `confidential-guest-support`
/// (or its older alias `memory-encryption`); without that reference QEMU starts a
/// plain VM even if the object exists.
///
/// QEMU's syntax is followed where it matters: `-opt` and `--opt` are the same;
/// repeated `-machine` and `-smp` options merge, later keys winning; `-kernel`,
/// `-initrd`, `-append` and `-bios` are the machine's `kernel`, `initrd`, `append`
/// and `firmware` keys; `,,` is a comma inside values; `-kernel`, `-initrd`,
/// `-append`, `-bios` and `-pflash` take their argument literally; `-object`
/// accepts JSON too. Options this module does not read are skipped: those known to
/// take no value alone, any other with the next argument unless that starts with
/// `-` (QEMU itself rejects options it does not know, so this guess only matters
/// for options newer than this list). Arguments that are not options (QEMU's
/// disk-image shorthand) are skipped. `-readconfig` files are not read.
pub fn parse_qemu_args(args: &[OsString]) -> Result<Option<QemuLaunch>, DriftError> {
    let mut machine: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut smp: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut cpu: Option<&OsStr> = None;
    let mut pflash: Vec<Pflash> = Vec::new();
    let mut objects: Vec<SevObject> = Vec::new();

    let mut it = args.iter().skip(1).peekable();
    while let Some(arg) = it.next() {
        let Some(name) = option_name(arg) else {
            continue;
        };
        let name_str = std::str::from_utf8(name).unwrap_or_default();
        if FLAGS.contains(&name_str) {
            continue;
        }
        if !READ.contains(&name_str) {
            // Unknown to this list: take the next argument as its value unless it
            // looks like an option.
            if it.peek().is_some_and(|next| option_name(next).is_none()) {
                it.next();
            }
            continue;
        }
        let option = format!("-{name_str}");
        let value = it.next().ok_or(DriftError::MissingValue {
            option: option.clone(),
        })?;
        let raw = value.as_bytes();
        match name_str {
            "machine" | "M" => machine.extend(split_options(raw, Some("type"))),
            "kernel" | "initrd" | "append" => machine.push((name.to_vec(), raw.to_vec())),
            "bios" => machine.push((b"firmware".to_vec(), raw.to_vec())),
            "smp" => smp.extend(split_options(raw, Some("cpus"))),
            "cpu" => cpu = Some(value.as_os_str()),
            "pflash" => pflash.push(Pflash {
                unit: None,
                file: Some(value.clone()),
            }),
            "drive" => {
                let opts = split_options(raw, None);
                if last(&opts, "if") == Some(b"pflash") {
                    let unit = match last(&opts, "unit").or_else(|| last(&opts, "index")) {
                        Some(v) => Some(number(&option, "unit", v)?),
                        None => None,
                    };
                    pflash.push(Pflash {
                        unit,
                        file: last(&opts, "file").map(os),
                    });
                }
            }
            "object" => {
                if let Some(obj) = sev_object(value)? {
                    objects.push(obj);
                }
            }
            _ => {}
        }
    }

    let Some(cgs) = last(&machine, "confidential-guest-support")
        .or_else(|| last(&machine, "memory-encryption"))
    else {
        return Ok(None);
    };
    let Some(obj) = objects.iter().find(|o| o.id.as_slice() == cgs) else {
        return Ok(None);
    };
    let kind = if obj.snp {
        "sev-snp-guest"
    } else {
        "sev-guest"
    };
    let policy = match last(&obj.props, "policy") {
        Some(v) => number(&format!("-object {kind}"), "policy", v)?,
        None if obj.snp => DEFAULT_SNP_POLICY,
        None => DEFAULT_SEV_POLICY,
    };
    if !obj.snp && policy > u64::from(u32::MAX) {
        return Err(bad(
            "-object sev-guest",
            format!("policy={policy:#x} does not fit the 32-bit SEV policy"),
        ));
    }
    let kernel_hashes = match last(&obj.props, "kernel-hashes") {
        Some(v) => boolean(&format!("-object {kind}"), "kernel-hashes", v)?,
        None => false,
    };
    let mode = if obj.snp {
        SevMode::Snp
    } else if policy & POLICY_ES != 0 {
        SevMode::SevEs
    } else {
        SevMode::Sev
    };

    // QEMU gives each pflash drive without a unit the lowest free one, in
    // command-line order; unit 0 is the code QEMU maps at the reset vector.
    let mut used: Vec<u64> = Vec::new();
    let mut firmware = None;
    for p in &pflash {
        let unit = match p.unit {
            Some(u) => u,
            None => (0..).find(|u| !used.contains(u)).unwrap_or(u64::MAX),
        };
        if used.contains(&unit) {
            return Err(bad(
                "-drive if=pflash",
                format!("pflash unit {unit} is given twice"),
            ));
        }
        used.push(unit);
        if unit == 0 {
            firmware = p.file.clone();
        }
    }
    let firmware = firmware
        .or_else(|| last(&machine, "firmware").map(os))
        .filter(|f| !f.is_empty())
        .ok_or(DriftError::NoFirmware)?;

    let path = |key: &str| {
        last(&machine, key)
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(os(v)))
    };
    let cmdline = match last(&machine, "append") {
        Some(v) => Some(
            String::from_utf8(v.to_vec()).map_err(|_| DriftError::NotUtf8 {
                option: "-append".into(),
                value: os(v),
            })?,
        ),
        None => None,
    };
    let cpu = match cpu {
        Some(c) => c
            .to_str()
            .ok_or_else(|| DriftError::NotUtf8 {
                option: "-cpu".into(),
                value: c.to_os_string(),
            })?
            .to_string(),
        None => DEFAULT_CPU.to_string(),
    };

    Ok(Some(QemuLaunch {
        firmware: PathBuf::from(firmware),
        kernel: path("kernel"),
        initrd: path("initrd"),
        cmdline,
        vcpus: smp_vcpus(&smp)?,
        cpu,
        mode,
        policy,
        kernel_hashes,
    }))
}

/// Splits `/proc/<pid>/cmdline`: arguments end in NUL, so the text ends in one,
/// and an empty argument is two NULs in a row.
fn split_cmdline(bytes: &[u8]) -> Vec<OsString> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let body = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    body.split(|&b| b == 0).map(os).collect()
}

fn is_qemu_name(path: &OsStr) -> bool {
    Path::new(path)
        .file_name()
        .is_some_and(|n| n.as_bytes().starts_with(b"qemu-system"))
}

/// Makes a relative artefact path absolute against QEMU's working directory.
fn resolve(path: &mut PathBuf, cwd: Option<&Path>) {
    if let (true, Some(cwd)) = (path.is_relative(), cwd) {
        *path = cwd.join(&*path);
    }
}

/// Finds the QEMU processes under a procfs root that are SEV guests and reads
/// their launches, in pid order.
///
/// A process is QEMU when its `argv[0]` or its executable's file name starts
/// with `qemu-system`. Processes that vanish while being read, whose command
/// line cannot be read and that are not SEV guests are left out; a QEMU whose
/// command line is unreadable only when its executable shows it is QEMU is
/// reported with the error. Relative paths are resolved against the process's
/// current working directory (QEMU resolved them against its starting one; Kata
/// passes absolute paths). Paths are read in the agent's own mount namespace.
/// A process caught inside `execve` still shows an empty command line and is
/// left out until the next scan.
pub fn scan(proc_root: &Path) -> Vec<Observed> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let exe_is_qemu =
            || std::fs::read_link(dir.join("exe")).is_ok_and(|exe| is_qemu_name(exe.as_os_str()));
        let args = match std::fs::read(dir.join("cmdline")) {
            Ok(bytes) => split_cmdline(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(cause) => {
                if exe_is_qemu() {
                    found.push(Observed {
                        pid,
                        result: Err(DriftError::Read { pid, cause }),
                    });
                }
                continue;
            }
        };
        let named_qemu = args.first().is_some_and(|a| is_qemu_name(a));
        if !named_qemu && !exe_is_qemu() {
            continue;
        }
        let result = match parse_qemu_args(&args) {
            Ok(Some(mut q)) => {
                let cwd = std::fs::read_link(dir.join("cwd")).ok();
                resolve(&mut q.firmware, cwd.as_deref());
                for p in [&mut q.kernel, &mut q.initrd].into_iter().flatten() {
                    resolve(p, cwd.as_deref());
                }
                Ok(q)
            }
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        found.push(Observed { pid, result });
    }
    found.sort_by_key(|o| o.pid);
    found
}

// ---------------------------------------------------------------------------
// Measuring and comparing
// ---------------------------------------------------------------------------

/// The model name of a `-cpu` argument: what comes before the first comma.
fn cpu_model(cpu: &str) -> &str {
    cpu.split(',').next().unwrap_or_default()
}

/// `-cpu host` and, under KVM, `-cpu max` pass the host's CPUID through.
fn is_host_model(model: &str) -> bool {
    model == "host" || model == "max"
}

/// The vCPU signature the VMSAs of this launch carry (`None` for SEV, which has
/// no VMSAs in its digest).
fn vcpu_signature(
    q: &QemuLaunch,
    host_sig: Option<VcpuSignature>,
) -> Result<Option<VcpuSignature>, DriftError> {
    if q.mode == SevMode::Sev {
        return Ok(None);
    }
    let model = cpu_model(&q.cpu);
    if is_host_model(model) {
        return host_sig
            .map(Some)
            .ok_or_else(|| DriftError::NoHostSignature {
                mode: q.mode,
                cpu: q.cpu.clone(),
            });
    }
    vcpu_type_signature(model)
        .map(Some)
        .ok_or_else(|| DriftError::UnknownCpuModel {
            model: model.to_string(),
            mode: q.mode,
        })
}

/// What this QEMU measures, computed from the files now on disk.
///
/// The vCPU signature is the host's (`host_sig`) for `-cpu host` or `max`, else
/// that of the named model; SEV needs none. Kernel, initrd and command line are
/// measured only with `kernel-hashes=on` and a kernel, as QEMU does; a missing
/// `-append` measures as the empty command line. SNP and SEV-ES are measured with
/// what this host's kernel puts into the VMSAs (`vmsa`). Relative paths are refused: they would be
/// resolved against the agent's directory, not QEMU's.
pub fn measure_observed(
    q: &QemuLaunch,
    host_sig: Option<VcpuSignature>,
    vmsa: HostVmsa,
) -> Result<LaunchDigest, DriftError> {
    let relative = |kind, path: &Path| {
        if path.is_relative() {
            Err(DriftError::RelativePath {
                kind,
                path: path.to_path_buf(),
            })
        } else {
            Ok(())
        }
    };
    relative(ArtefactKind::Firmware, &q.firmware)?;
    let art = match (&q.kernel, q.kernel_hashes) {
        (Some(kernel), true) => {
            relative(ArtefactKind::Kernel, kernel)?;
            if let Some(initrd) = &q.initrd {
                relative(ArtefactKind::Initrd, initrd)?;
            }
            LaunchArtefacts {
                firmware: q.firmware.clone(),
                kernel: Some(kernel.clone()),
                initrd: q.initrd.clone(),
                cmdline: Some(q.cmdline.clone().unwrap_or_default().into_bytes()),
            }
        }
        _ => LaunchArtefacts {
            firmware: q.firmware.clone(),
            kernel: None,
            initrd: None,
            cmdline: None,
        },
    };
    let shape = VmShape {
        vcpus: q.vcpus,
        vcpu_sig: vcpu_signature(q, host_sig)?.unwrap_or(VcpuSignature(0)),
        guest_features: vmsa.guest_features,
        vmm: VmmType::Qemu,
        fpu: vmsa.fpu,
    };
    Ok(measure(&art, q.mode, &shape)?)
}

/// What the host kernel puts into the VMSAs of the guests it runs: the SEV
/// features of SNP guests and the x87/SSE state (see `sev_core::host_kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVmsa {
    /// The SNP guests' SEV features.
    pub guest_features: u64,
    /// The x87/SSE state.
    pub fpu: sev_core::VmsaFpu,
}

impl Default for HostVmsa {
    /// A host kernel of 6.10 or later with KVM's defaults: 0x1 and the reset state.
    fn default() -> Self {
        HostVmsa {
            guest_features: SNP_GUEST_FEATURES,
            fpu: sev_core::VmsaFpu::Reset,
        }
    }
}

/// Whether two `-cpu` arguments give the same VMSAs: the same model name, or
/// named models with the same signature (`EPYC` and `EPYC-v4`).
fn same_cpu_type(a: &str, b: &str) -> bool {
    let (a, b) = (cpu_model(a), cpu_model(b));
    a == b
        || matches!(
            (vcpu_type_signature(a), vcpu_type_signature(b)),
            (Some(x), Some(y)) if x == y
        )
}

/// The launch parameters (not file contents) in which `q` differs from `e`,
/// counting only what enters the digest of the modes involved.
fn differing_parameters(q: &QemuLaunch, e: &ExpectedLaunch) -> Vec<Part> {
    let mut parts = Vec::new();
    if q.mode != e.mode {
        parts.push(Part::Mode);
    }
    if q.firmware != e.firmware {
        parts.push(Part::Firmware);
    }
    if q.kernel.as_deref() != Some(e.kernel.as_path()) {
        parts.push(Part::Kernel);
    }
    if q.initrd != e.initrd {
        parts.push(Part::Initrd);
    }
    // QEMU passes the kernel an empty command line when there is no -append.
    if q.cmdline.as_deref().unwrap_or_default() != e.cmdline {
        parts.push(Part::CommandLine);
    }
    if q.kernel.is_some() && !q.kernel_hashes {
        parts.push(Part::KernelHashes);
    }
    // SEV measures no VMSAs: vCPU count and model enter SEV-ES and SNP digests only.
    let vmsas = q.mode != SevMode::Sev || e.mode != SevMode::Sev;
    if vmsas && q.vcpus != e.vcpus {
        parts.push(Part::Vcpus);
    }
    if vmsas && !same_cpu_type(&q.cpu, &e.cpu) {
        parts.push(Part::CpuType);
    }
    parts
}

/// Quotes a value for a detail line, cut to [`MAX_QUOTE`] characters.
fn quote(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTE {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(MAX_QUOTE).collect();
    format!("{:?}", format!("{head}…"))
}

fn lossy_quote(s: &OsStr) -> String {
    quote(&s.to_string_lossy())
}

/// Quotes a path; a long one keeps its end, where the file name is.
fn quote_path(p: Option<&Path>) -> String {
    let Some(p) = p else {
        return "(none)".into();
    };
    let s = p.to_string_lossy();
    let n = s.chars().count();
    if n <= MAX_QUOTE {
        return format!("{s:?}");
    }
    let tail: String = s.chars().skip(n - MAX_QUOTE).collect();
    format!("{:?}", format!("…{tail}"))
}

/// Both values around their first difference, each cut to [`MAX_QUOTE`]
/// characters: long command lines differ in one token, which must stay visible.
fn quote_difference(registered: &str, running: &str) -> (String, String) {
    let (a, b): (Vec<char>, Vec<char>) = (registered.chars().collect(), running.chars().collect());
    if a.len() <= MAX_QUOTE && b.len() <= MAX_QUOTE {
        return (format!("{registered:?}"), format!("{running:?}"));
    }
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    // Some context before the difference, so the token it is in can be read.
    let start = common.saturating_sub(MAX_QUOTE / 4);
    let cut = |chars: &[char]| {
        let body: String = chars.iter().skip(start).take(MAX_QUOTE).collect();
        let pre = if start > 0 { "…" } else { "" };
        let post = if start + MAX_QUOTE < chars.len() {
            "…"
        } else {
            ""
        };
        format!("{:?}", format!("{pre}{body}{post}"))
    };
    (cut(&a), cut(&b))
}

fn short_hex(h: &[u8; 32]) -> String {
    let mut s = hex::encode(h);
    s.truncate(16);
    s.push('…');
    s
}

/// One clause of a finding's detail for a differing parameter.
fn explain(part: Part, q: &QemuLaunch, e: &ExpectedLaunch) -> String {
    match part {
        Part::Mode => format!(
            "mode differs: registered {}, running {} (policy {:#x})",
            e.mode, q.mode, q.policy
        ),
        Part::Firmware => format!(
            "firmware differs: registered {}, running {}",
            quote_path(Some(&e.firmware)),
            quote_path(Some(&q.firmware))
        ),
        Part::Kernel => format!(
            "kernel differs: registered {}, running {}",
            quote_path(Some(&e.kernel)),
            quote_path(q.kernel.as_deref())
        ),
        Part::Initrd => format!(
            "initrd differs: registered {}, running {}",
            quote_path(e.initrd.as_deref()),
            quote_path(q.initrd.as_deref())
        ),
        Part::CommandLine => {
            let (reg, run) = quote_difference(&e.cmdline, q.cmdline.as_deref().unwrap_or_default());
            format!("kernel command line differs: registered {reg}, running {run}")
        }
        Part::Vcpus => format!(
            "vCPUs differ: registered {}, running {}",
            e.vcpus, q.vcpus
        ),
        Part::CpuType => format!(
            "vCPU type differs: registered {}, running {}",
            quote(&e.cpu),
            quote(&q.cpu)
        ),
        Part::KernelHashes => format!(
            "kernel, initrd and command line are not measured: the {} object lacks kernel-hashes=on",
            if q.mode == SevMode::Snp {
                "sev-snp-guest"
            } else {
                "sev-guest"
            }
        ),
    }
}

/// Decides whether a running guest drifted from what was registered, and names
/// what differs.
///
/// No drift when `digest` equals a registered digest of the same mode. Otherwise
/// the closest registered launch is the one with the fewest differing parameters
/// (ties: the same firmware path, then the same mode, then the first listed), and
/// the finding names them. When no parameter differs, the files' contents must
/// have changed since registration: the files with a registered content hash are
/// hashed again (the only file reads here, and only in that case) and those
/// whose hash changed are named; if none did, the files without a registered
/// hash are named as the ones that may have changed, and with none left the
/// digest difference comes from the vCPU signature or guest features used at
/// registration.
pub fn check(
    pid: u32,
    q: &QemuLaunch,
    digest: &LaunchDigest,
    expected: &[ExpectedLaunch],
) -> DriftFinding {
    check_with(pid, q, digest, expected, &mut |kind, path| {
        sha256_file(kind, path).ok()
    })
}

/// [`check`] with the content hashing supplied, so that the decision can be
/// tested without files.
fn check_with(
    pid: u32,
    q: &QemuLaunch,
    digest: &LaunchDigest,
    expected: &[ExpectedLaunch],
    hash_now: &mut dyn FnMut(ArtefactKind, &Path) -> Option<[u8; 32]>,
) -> DriftFinding {
    let digest_hex = digest.to_hex();
    if let Some(e) = expected
        .iter()
        .find(|e| e.mode == digest.mode() && e.digest.as_slice() == digest.as_bytes())
    {
        return DriftFinding {
            pid,
            runtime_class: Some(e.runtime_class.clone()),
            digest_hex,
            drifted: false,
            differing: Vec::new(),
            detail: format!(
                "measures the launch registered for {} ({}, {} vCPU{})",
                e.runtime_class,
                e.mode,
                e.vcpus,
                if e.vcpus == 1 { "" } else { "s" }
            ),
        };
    }
    let closest = expected
        .iter()
        .map(|e| (differing_parameters(q, e), e))
        .min_by_key(|(parts, _)| {
            (
                parts.len(),
                parts.contains(&Part::Firmware),
                parts.contains(&Part::Mode),
            )
        });
    let Some((parts, e)) = closest else {
        return DriftFinding {
            pid,
            runtime_class: None,
            digest_hex,
            drifted: true,
            differing: Vec::new(),
            detail: format!(
                "{} guest measures {}, and no launch is registered on this node",
                q.mode,
                digest.to_hex()
            ),
        };
    };
    let (differing, clauses) = if parts.is_empty() {
        content_changes(q, e, hash_now)
    } else {
        let clauses = parts.iter().map(|&p| explain(p, q, e)).collect();
        (parts, clauses)
    };
    DriftFinding {
        pid,
        runtime_class: Some(e.runtime_class.clone()),
        digest_hex,
        drifted: true,
        differing,
        detail: format!(
            "closest registered launch is {}: {}",
            e.runtime_class,
            clauses.join("; ")
        ),
    }
}

/// Same parameters, different digest: which files' contents changed.
fn content_changes(
    q: &QemuLaunch,
    e: &ExpectedLaunch,
    hash_now: &mut dyn FnMut(ArtefactKind, &Path) -> Option<[u8; 32]>,
) -> (Vec<Part>, Vec<String>) {
    let mut files: Vec<(Part, ArtefactKind, &Path, Option<[u8; 32]>)> = vec![
        (
            Part::Firmware,
            ArtefactKind::Firmware,
            e.firmware.as_path(),
            e.firmware_sha256,
        ),
        (
            Part::Kernel,
            ArtefactKind::Kernel,
            e.kernel.as_path(),
            e.kernel_sha256,
        ),
    ];
    if let Some(initrd) = &e.initrd {
        files.push((
            Part::Initrd,
            ArtefactKind::Initrd,
            initrd.as_path(),
            e.initrd_sha256,
        ));
    }
    // Without kernel hashes only the firmware is measured.
    if !q.kernel_hashes {
        files.truncate(1);
    }
    let mut changed = Vec::new();
    let mut clauses = Vec::new();
    let mut unknown = Vec::new();
    for (part, kind, path, registered) in files {
        match (registered, registered.and_then(|_| hash_now(kind, path))) {
            (Some(then), Some(now)) if then != now => {
                changed.push(part);
                clauses.push(format!(
                    "{kind} contents changed since registration: {} (sha256 registered {}, now {})",
                    quote_path(Some(path)),
                    short_hex(&then),
                    short_hex(&now)
                ));
            }
            (Some(_), Some(_)) => {}
            // Unreadable now, or never hashed: it may be the one.
            _ => unknown.push(part),
        }
    }
    if !changed.is_empty() {
        return (changed, clauses);
    }
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|p| p.name()).collect();
        let clause = format!(
            "same launch parameters, different digest: the contents of the {} must have \
             changed since registration (no content hash to compare with)",
            names.join(", ")
        );
        return (unknown, vec![clause]);
    }
    let clause = if q.mode == SevMode::Sev {
        "same launch parameters and file contents as registered, yet a different digest".into()
    } else {
        format!(
            "same launch parameters and file contents as registered, yet a different digest: \
             the vCPU signature or guest features used at registration differ from this {} guest's \
             ({})",
            q.mode,
            quote(&q.cpu)
        )
    };
    (Vec::new(), vec![clause])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KATA_CMDLINE: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 \
        i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k \
        cryptomgr.notests net.ifnames=0 pci=lastbus=0 console=hvc0 console=hvc1 quiet panic=1 \
        nr_cpus=1 selinux=0 agent.aa_kbc_params=online_sev_kbc::192.0.2.10:44444 \
        scsi_mod.scan=none agent.config_file=/etc/agent-config.toml \
        agent.enable_signature_verification=true";
    const FW: &str = "/opt/kata/share/ovmf/AMDSEV.fd";
    const KERNEL: &str = "/opt/kata/share/kata-containers/vmlinuz-sev.container";
    const INITRD: &str = "/opt/kata/share/kata-containers/kata-containers-initrd-sev.img";
    const SANDBOX: &str = "6f0c1f4ba1d5c1a5e0b2c8b1f3a7d9e4f2c6b8a0d1e3f5a7b9c1d3e5f7a9b1c3";

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// A command line in the order govmm's `LaunchQemu` writes it for an SEV or
    /// SEV-ES guest with online pre-attestation (paused with `-S`).
    fn kata_sev(policy: u32, smp: &str, cmdline: &str) -> Vec<OsString> {
        let vm = format!("/run/vc/vm/{SANDBOX}");
        let launch = "/tmp/sev/4c7a6c52-97c4-4e5b-8f41-0d6ae1b0c7f2";
        let mut a: Vec<String> = [
            "/opt/kata/bin/qemu-system-x86_64",
            "-name",
            &format!("sandbox-{SANDBOX}"),
            "-uuid",
            "2b5f9a04-5d0b-4e1a-9a43-6c1e8b7d2f10",
            "-machine",
            "q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=sev",
            "-cpu",
            "host,pmu=off",
            "-qmp",
            &format!("unix:path={vm}/qmp.sock,server=on,wait=off"),
            "-m",
            "2048M,slots=10,maxmem=257720M",
            "-device",
            "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=off,addr=2,io-reserve=4k,mem-reserve=1m,pref64-reserve=1m",
            "-device",
            "virtio-serial-pci,disable-modern=false,id=serial0",
            "-device",
            "virtconsole,chardev=charconsole0,id=console0",
            "-chardev",
            &format!("socket,id=charconsole0,path={vm}/console.sock,server=on,wait=off"),
            "-device",
            "virtio-scsi-pci,id=scsi0,disable-modern=false",
            "-object",
            &format!(
                "sev-guest,id=sev,cbitpos=51,reduced-phys-bits=1,policy={policy},\
                 dh-cert-file={launch}/godh.b64,session-file={launch}/session_file.b64,kernel-hashes=on"
            ),
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={FW}"),
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-pci,rng=rng0",
            "-device",
            "virtio-9p-pci,disable-modern=false,fsdev=extra-9p-kataShared,mount_tag=kataShared,romfile=",
            "-fsdev",
            &format!("local,id=extra-9p-kataShared,path=/run/kata-containers/shared/sandboxes/{SANDBOX}/shared,security_model=none,multidevs=remap"),
            "-rtc",
            "base=utc,driftfix=slew,clock=host",
            "-global",
            "kvm-pit.lost_tick_policy=discard",
            "-vga",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "--no-reboot",
            "-object",
            "memory-backend-ram,id=dimm1,size=2048M",
            "-numa",
            "node,memdev=dimm1",
            "-S",
            "-kernel",
            KERNEL,
            "-initrd",
            INITRD,
            "-append",
            cmdline,
            "-pidfile",
            &format!("{vm}/pid"),
            "-smp",
            smp,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.drain(..).map(OsString::from).collect()
    }

    /// An SNP guest as CC-0.8.0 starts it: `EPYC-v4`, policy in hex, no
    /// kernel-hashes, no pre-attestation (so no `-S`).
    fn kata_snp() -> Vec<OsString> {
        argv(&[
            "/opt/kata/bin/qemu-system-x86_64",
            "-name",
            "sandbox-abc",
            "-machine",
            "q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=snp",
            "-cpu",
            "EPYC-v4,pmu=off",
            "-qmp",
            "unix:path=/run/vc/vm/abc/qmp.sock,server=on,wait=off",
            "-m",
            "2048M,slots=10,maxmem=257720M",
            "-device",
            "virtio-scsi-pci,id=scsi0,disable-modern=false",
            "-object",
            "sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,policy=0x30000",
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={FW}"),
            "-rtc",
            "base=utc,driftfix=slew,clock=host",
            "-global",
            "kvm-pit.lost_tick_policy=discard",
            "-vga",
            "none",
            "-no-user-config",
            "-nodefaults",
            "-nographic",
            "--no-reboot",
            "-object",
            "memory-backend-ram,id=dimm1,size=2048M",
            "-numa",
            "node,memdev=dimm1",
            "-kernel",
            KERNEL,
            "-initrd",
            INITRD,
            "-append",
            "tsc=reliable quiet panic=1 nr_cpus=2 selinux=0",
            "-pidfile",
            "/run/vc/vm/abc/pid",
            "-fw_cfg",
            "name=opt/ovmf/X-PciMmio64Mb,string=262144",
            "-smp",
            "2,cores=1,threads=1,sockets=2,maxcpus=2",
        ])
    }

    fn parse(args: &[OsString]) -> QemuLaunch {
        parse_qemu_args(args).unwrap().unwrap()
    }

    #[test]
    fn reads_kata_sev_launch() {
        let q = parse(&kata_sev(
            3,
            "1,cores=1,threads=1,sockets=1,maxcpus=1",
            KATA_CMDLINE,
        ));
        assert_eq!(
            q,
            QemuLaunch {
                firmware: FW.into(),
                kernel: Some(KERNEL.into()),
                initrd: Some(INITRD.into()),
                cmdline: Some(KATA_CMDLINE.into()),
                vcpus: 1,
                cpu: "host,pmu=off".into(),
                mode: SevMode::Sev,
                policy: 3,
                kernel_hashes: true,
            }
        );
    }

    #[test]
    fn reads_kata_sev_es_launch() {
        let q = parse(&kata_sev(
            7,
            "4,cores=1,threads=1,sockets=4,maxcpus=4",
            KATA_CMDLINE,
        ));
        assert_eq!(q.mode, SevMode::SevEs);
        assert_eq!(q.policy, 7);
        assert_eq!(q.vcpus, 4);
    }

    /// An SNP guest as Kata 3.32 to 4.1 starts it (govmm's argument order): the
    /// firmware as `-bios`, `kernel-hashes=on` with a decimal policy, and `-smp`
    /// without sockets or maxcpus.
    #[test]
    fn reads_kata_4_1_snp_launch() {
        let cmdline = "tsc=reliable console=hvc0 console=hvc1 quiet panic=1 selinux=0";
        let q = parse(&argv(&[
            "/opt/kata/bin/qemu-system-x86_64",
            "-name",
            "sandbox-abc",
            "-machine",
            "q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=snp",
            "-cpu",
            "EPYC-v4,pmu=off",
            "-m",
            "2048M",
            "-object",
            "sev-snp-guest,id=snp,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=196608",
            "-bios",
            FW,
            "-kernel",
            KERNEL,
            "-append",
            cmdline,
            "-smp",
            "3,cores=1,threads=1",
        ]));
        assert_eq!(q.mode, SevMode::Snp);
        assert_eq!(q.firmware, Path::new(FW));
        assert!(q.kernel_hashes);
        assert_eq!(q.policy, 0x30000);
        assert_eq!(q.vcpus, 3);
        assert_eq!(q.initrd, None);
        assert_eq!(q.cmdline.as_deref(), Some(cmdline));
    }

    #[test]
    fn reads_kata_snp_launch() {
        let q = parse(&kata_snp());
        assert_eq!(q.mode, SevMode::Snp);
        assert_eq!(q.policy, 0x30000);
        assert_eq!(q.cpu, "EPYC-v4,pmu=off");
        assert_eq!(q.vcpus, 2);
        assert!(!q.kernel_hashes, "CC-0.8.0 sets no kernel-hashes for SNP");
        assert_eq!(q.firmware, Path::new(FW));
    }

    #[test]
    fn plain_vms_and_unreferenced_objects_are_not_sev_guests() {
        let plain = argv(&[
            "qemu-system-x86_64",
            "-machine",
            "q35,accel=kvm",
            "-bios",
            "/usr/share/ovmf/OVMF.fd",
            "-kernel",
            "/k",
        ]);
        assert!(parse_qemu_args(&plain).unwrap().is_none());
        // The object exists but the machine does not use it: QEMU starts a plain VM.
        let unused = argv(&[
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-object",
            "sev-guest,id=sev0,policy=3",
            "-bios",
            "/fw",
        ]);
        assert!(parse_qemu_args(&unused).unwrap().is_none());
        // The machine names another object (TDX).
        let tdx = argv(&[
            "qemu-system-x86_64",
            "-machine",
            "q35,confidential-guest-support=tdx",
            "-object",
            "tdx-guest,id=tdx",
            "-object",
            "sev-guest,id=sev,policy=3",
        ]);
        assert!(parse_qemu_args(&tdx).unwrap().is_none());
        assert!(parse_qemu_args(&[]).unwrap().is_none());
    }

    #[test]
    fn options_escape_commas_and_merge() {
        let q = parse(&argv(&[
            "qemu-system-x86_64",
            "--machine",
            "type=q35,confidential-guest-support=sev,,x",
            "-M",
            "confidential-guest-support=my,,sev",
            "-object",
            "sev-guest,id=my,,sev,policy=0x5,kernel-hashes=yes",
            "-drive",
            "file=/fw/a,,b.fd,if=pflash,readonly=on",
            "--kernel",
            "/boot/a,,b",
            "-smp",
            "cpus=2",
            "-smp",
            "3",
        ]));
        assert_eq!(q.firmware, Path::new("/fw/a,b.fd"));
        // -kernel takes its argument literally.
        assert_eq!(q.kernel.as_deref(), Some(Path::new("/boot/a,,b")));
        assert_eq!(q.mode, SevMode::SevEs);
        assert!(q.kernel_hashes);
        assert_eq!(q.vcpus, 3);
        assert_eq!(q.cpu, DEFAULT_CPU);
        assert_eq!(q.cmdline, None);
    }

    #[test]
    fn split_options_follows_qemu() {
        let kv = |s: &str, implied| {
            split_options(s.as_bytes(), implied)
                .into_iter()
                .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
                .collect::<Vec<_>>()
        };
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            kv("q35,accel=kvm", Some("type")),
            [p("type", "q35"), p("accel", "kvm")]
        );
        assert_eq!(kv("a,,b,c=d", Some("x")), [p("x", "a,b"), p("c", "d")]);
        assert_eq!(
            kv("a=,b=1,,,c", None),
            [p("a", ""), p("b", "1,"), p("c", "on")]
        );
        assert_eq!(kv("flag,k=v,", None), [p("flag", "on"), p("k", "v")]);
        assert_eq!(kv(",,,=x,,", None), Vec::<(String, String)>::new());
        assert_eq!(kv("", Some("t")), Vec::<(String, String)>::new());
        assert_eq!(kv("k=a,,", None), [p("k", "a,")]);
    }

    #[test]
    fn json_objects_are_read() {
        let q = parse(&argv(&[
            "qemu-system-x86_64",
            "-machine",
            "q35,confidential-guest-support=sev0",
            "-object",
            r#"{"qom-type":"sev-guest","id":"sev0","cbitpos":51,"reduced-phys-bits":1,"policy":7,"kernel-hashes":true}"#,
            "-bios",
            "/fw.fd",
        ]));
        assert_eq!(
            (q.mode, q.policy, q.kernel_hashes),
            (SevMode::SevEs, 7, true)
        );
        assert_eq!(q.firmware, Path::new("/fw.fd"));
        let broken = argv(&["qemu", "-object", "{\"qom-type\":"]);
        assert!(matches!(
            parse_qemu_args(&broken),
            Err(DriftError::BadValue { .. })
        ));
    }

    #[test]
    fn pflash_units_pick_the_code_image() {
        let base = [
            "qemu-system-x86_64",
            "-machine",
            "q35,confidential-guest-support=s",
            "-object",
            "sev-snp-guest,id=s",
        ];
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            parse_qemu_args(&argv(&a))
        };
        // Vars at unit 1 first, code gets the lowest free unit (0).
        let q = with(&["-drive", "if=pflash,unit=1,file=/vars", "-pflash", "/code"])
            .unwrap()
            .unwrap();
        assert_eq!(q.firmware, Path::new("/code"));
        assert_eq!(q.policy, DEFAULT_SNP_POLICY);
        // pflash wins over -bios.
        let q = with(&["-bios", "/bios", "-pflash", "/code"])
            .unwrap()
            .unwrap();
        assert_eq!(q.firmware, Path::new("/code"));
        assert!(matches!(
            with(&["-pflash", "/a", "-drive", "if=pflash,index=0,file=/b"]),
            Err(DriftError::BadValue { .. })
        ));
        assert!(matches!(with(&[]), Err(DriftError::NoFirmware)));
        assert!(matches!(
            with(&["-drive", "if=pflash,format=raw"]),
            Err(DriftError::NoFirmware)
        ));
        assert!(matches!(
            with(&["-drive", "if=pflash,unit=x,file=/a"]),
            Err(DriftError::BadValue { .. })
        ));
    }

    #[test]
    fn smp_forms() {
        let vcpus = |smp: &[&str]| {
            let mut a = vec![
                "qemu",
                "-machine",
                "q35,confidential-guest-support=s",
                "-object",
                "sev-guest,id=s",
                "-bios",
                "/fw",
            ];
            for s in smp {
                a.push("-smp");
                a.push(s);
            }
            parse_qemu_args(&argv(&a)).map(|q| q.unwrap().vcpus)
        };
        assert_eq!(vcpus(&[]).unwrap(), 1);
        assert_eq!(vcpus(&["0x10"]).unwrap(), 16);
        assert_eq!(vcpus(&["010"]).unwrap(), 8);
        assert_eq!(vcpus(&["sockets=2,cores=3,threads=2"]).unwrap(), 12);
        assert_eq!(vcpus(&["0,maxcpus=4"]).unwrap(), 4);
        assert_eq!(vcpus(&["2", "cpus=5"]).unwrap(), 5);
        assert!(vcpus(&["two"]).is_err());
        assert!(vcpus(&["-1"]).is_err());
        assert!(vcpus(&["99999999999"]).is_err());
        assert!(vcpus(&["sockets=4294967296,cores=4294967296"]).is_err());
    }

    #[test]
    fn missing_values_are_errors_for_options_that_matter() {
        let mut a = kata_sev(3, "1", "x");
        a.push("-kernel".into());
        assert!(matches!(
            parse_qemu_args(&a),
            Err(DriftError::MissingValue { option }) if option == "-kernel"
        ));
        // Other options at the end are skipped.
        let mut a = kata_sev(3, "1", "x");
        a.push("-name".into());
        assert!(parse_qemu_args(&a).unwrap().is_some());
        // A flag does not swallow the next option.
        let a = kata_sev(3, "1", "x");
        assert_eq!(parse(&a).kernel.as_deref(), Some(Path::new(KERNEL)));
    }

    #[test]
    fn bad_object_values_are_errors() {
        let with = |obj: &str| {
            parse_qemu_args(&argv(&[
                "qemu",
                "-machine",
                "q35,confidential-guest-support=s",
                "-object",
                obj,
                "-bios",
                "/fw",
            ]))
        };
        assert!(with("sev-guest,id=s,policy=three").is_err());
        assert!(with("sev-guest,id=s,policy=0x100000000").is_err());
        assert!(with("sev-guest,id=s,kernel-hashes=maybe").is_err());
        assert_eq!(
            with("sev-snp-guest,id=s,policy=0x100030000")
                .unwrap()
                .unwrap()
                .policy,
            0x1_0003_0000
        );
        let q = with("sev-guest,id=s").unwrap().unwrap();
        assert_eq!(
            (q.policy, q.mode, q.kernel_hashes),
            (1, SevMode::Sev, false)
        );
    }

    #[test]
    fn unknown_options_and_positionals_are_skipped() {
        let mut a = argv(&[
            "qemu-system-x86_64",
            "disk.img",
            "-future-flag",
            "-future-option",
            "value",
            "-",
            "--",
        ]);
        a.extend(kata_sev(3, "2", "quiet").into_iter().skip(1));
        let q = parse(&a);
        assert_eq!(q.vcpus, 2);
        assert_eq!(q.cmdline.as_deref(), Some("quiet"));
        // The shell trick the integration test uses: `-c "read x"` before QEMU's options.
        let mut a = argv(&["/opt/bin/qemu-system-x86_64", "-c", "read x"]);
        a.extend(kata_sev(3, "1", "").into_iter().skip(1));
        assert_eq!(parse(&a).cmdline.as_deref(), Some(""));
    }

    #[test]
    fn non_utf8_arguments() {
        let bytes = |b: &[u8]| OsString::from_vec(b.to_vec());
        // A non-UTF-8 firmware path is fine: paths are bytes.
        let mut a = argv(&[
            "qemu",
            "-machine",
            "q35,confidential-guest-support=s",
            "-object",
            "sev-guest,id=s,kernel-hashes=on",
            "-drive",
        ]);
        a.push(bytes(b"if=pflash,file=/fw/\xff\xfe.fd"));
        a.push("-kernel".into());
        a.push(bytes(b"/k\x80"));
        a.push(bytes(b"-\xff"));
        a.push(bytes(b"\xc3\x28"));
        let q = parse(&a);
        assert_eq!(q.firmware.as_os_str().as_bytes(), b"/fw/\xff\xfe.fd");
        assert_eq!(q.kernel.unwrap().as_os_str().as_bytes(), b"/k\x80");
        // A non-UTF-8 command line cannot be Kata's.
        let mut b = a.clone();
        b.push("-append".into());
        b.push(bytes(b"quiet \xff"));
        assert!(matches!(
            parse_qemu_args(&b),
            Err(DriftError::NotUtf8 { option, .. }) if option == "-append"
        ));
        let mut c = a.clone();
        c.push("-cpu".into());
        c.push(bytes(b"host,\xff"));
        assert!(matches!(
            parse_qemu_args(&c),
            Err(DriftError::NotUtf8 { option, .. }) if option == "-cpu"
        ));
        // Non-UTF-8 in options the parser does not read is ignored.
        let mut d = a;
        d.push("-name".into());
        d.push(bytes(b"\xff"));
        d.push(bytes(b"-object"));
        d.push(bytes(b"iothread,id=\xff"));
        assert!(parse_qemu_args(&d).unwrap().is_some());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = sample_artefacts::SplitMix::new(42);
        let words: [&[u8]; 16] = [
            b"-machine",
            b"q35,confidential-guest-support=s",
            b"-object",
            b"sev-guest,id=s,policy=7,kernel-hashes=on",
            b"sev-snp-guest,id=s,policy=",
            b"-smp",
            b",,,=,",
            b"-drive",
            b"if=pflash,unit=0,file=",
            b"-pflash",
            b"{",
            b"-kernel",
            b"-append",
            b"\xff\x00\xfe",
            b"-",
            b"--",
        ];
        for _ in 0..20_000 {
            let n = usize::try_from(rng.below(12)).unwrap();
            let args: Vec<OsString> = (0..n)
                .map(|_| {
                    if rng.below(4) == 0 {
                        let len = usize::try_from(rng.below(12)).unwrap();
                        OsString::from_vec(rng.bytes(len))
                    } else {
                        OsString::from_vec(words[usize::try_from(rng.below(16)).unwrap()].to_vec())
                    }
                })
                .collect();
            let _ = parse_qemu_args(&args);
        }
    }

    #[test]
    fn splits_proc_cmdline() {
        assert_eq!(split_cmdline(b""), Vec::<OsString>::new());
        assert_eq!(split_cmdline(b"a\0b\0"), argv(&["a", "b"]));
        assert_eq!(split_cmdline(b"a\0\0b\0"), argv(&["a", "", "b"]));
        assert_eq!(
            split_cmdline(b"a\0-append\0\0"),
            argv(&["a", "-append", ""])
        );
        assert_eq!(split_cmdline(b"no nul"), argv(&["no nul"]));
        assert!(is_qemu_name(OsStr::new("/usr/bin/qemu-system-x86_64")));
        assert!(is_qemu_name(OsStr::new("qemu-system-x86_64 (deleted)")));
        assert!(!is_qemu_name(OsStr::new("/usr/bin/qemu-img")));
        assert!(!is_qemu_name(OsStr::new("")));
    }

    #[test]
    fn scan_of_a_missing_root_is_empty() {
        assert!(scan(Path::new("/nonexistent-proc-root")).is_empty());
    }

    // --- check -----------------------------------------------------------

    fn running() -> QemuLaunch {
        parse(&kata_sev(
            3,
            "1,cores=1,threads=1,sockets=1,maxcpus=1",
            KATA_CMDLINE,
        ))
    }

    fn expected(class: &str, digest: u8) -> ExpectedLaunch {
        ExpectedLaunch {
            runtime_class: class.into(),
            mode: SevMode::Sev,
            firmware: FW.into(),
            kernel: KERNEL.into(),
            initrd: Some(INITRD.into()),
            cmdline: KATA_CMDLINE.into(),
            vcpus: 1,
            cpu: "host,pmu=off".into(),
            digest: vec![digest; 32],
            firmware_sha256: None,
            kernel_sha256: Some([1; 32]),
            initrd_sha256: Some([2; 32]),
        }
    }

    fn no_files(_: ArtefactKind, _: &Path) -> Option<[u8; 32]> {
        None
    }

    #[test]
    fn a_registered_digest_is_no_drift() {
        let f = check_with(
            7,
            &running(),
            &LaunchDigest::Sev([9; 32]),
            &[expected("a", 1), expected("kata-qemu-sev", 9)],
            &mut no_files,
        );
        assert!(!f.drifted);
        assert_eq!(f.runtime_class.as_deref(), Some("kata-qemu-sev"));
        assert!(f.differing.is_empty());
        // Same bytes, other mode: not the registered launch.
        let f = check_with(
            7,
            &running(),
            &LaunchDigest::SevEs([9; 32]),
            &[expected("kata-qemu-sev", 9)],
            &mut no_files,
        );
        assert!(f.drifted);
    }

    #[test]
    fn names_the_command_line_with_both_values_around_the_difference() {
        let mut q = running();
        q.cmdline = Some(KATA_CMDLINE.replace("nr_cpus=1", "nr_cpus=2"));
        let f = check_with(
            1,
            &q,
            &LaunchDigest::Sev([3; 32]),
            &[expected("kata-qemu-sev", 9)],
            &mut no_files,
        );
        assert!(f.drifted);
        assert_eq!(f.differing, [Part::CommandLine]);
        assert!(
            f.detail.contains("kernel command line differs"),
            "{}",
            f.detail
        );
        assert!(
            f.detail.contains("nr_cpus=1") && f.detail.contains("nr_cpus=2"),
            "{}",
            f.detail
        );
        assert!(!f.detail.contains('\n'));
        assert!(f.detail.chars().count() < 400, "{}", f.detail);
    }

    #[test]
    fn picks_the_closest_launch_preferring_the_same_firmware() {
        let mut q = running();
        q.vcpus = 2;
        q.mode = SevMode::SevEs;
        let mut other_fw = expected("other-fw", 1);
        other_fw.firmware = "/other/OVMF.fd".into();
        other_fw.mode = SevMode::SevEs;
        let mut same_fw = expected("same-fw", 2);
        same_fw.cmdline = "quiet".into();
        same_fw.mode = SevMode::SevEs;
        let mut far = expected("far", 3);
        far.kernel = "/k".into();
        far.initrd = None;
        let f = check_with(
            1,
            &q,
            &LaunchDigest::SevEs([0; 32]),
            &[far, other_fw, same_fw],
            &mut no_files,
        );
        assert_eq!(f.runtime_class.as_deref(), Some("same-fw"));
        assert_eq!(f.differing, [Part::CommandLine, Part::Vcpus]);
        assert!(
            f.detail.contains("vCPUs differ: registered 1, running 2"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn vcpus_and_cpu_type_matter_only_beyond_sev() {
        let mut q = running();
        q.vcpus = 4;
        q.cpu = "EPYC-Milan".into();
        let f = check_with(
            1,
            &q,
            &LaunchDigest::Sev([0; 32]),
            &[expected("c", 9)],
            &mut no_files,
        );
        // Nothing SEV measures differs in the parameters: file contents are suspected.
        assert!(!f.differing.contains(&Part::Vcpus));
        assert!(!f.differing.contains(&Part::CpuType));
        q.mode = SevMode::Snp;
        q.kernel_hashes = false;
        let f = check_with(
            1,
            &q,
            &LaunchDigest::Snp([0; 48]),
            &[expected("c", 9)],
            &mut no_files,
        );
        assert_eq!(
            f.differing,
            [Part::Mode, Part::KernelHashes, Part::Vcpus, Part::CpuType]
        );
        assert!(
            f.detail
                .contains("sev-snp-guest object lacks kernel-hashes=on"),
            "{}",
            f.detail
        );
        // EPYC and EPYC-v4 have one signature: the same vCPU type.
        assert!(same_cpu_type("EPYC,pmu=off", "EPYC-v4"));
        assert!(!same_cpu_type("host", "EPYC-v4"));
    }

    #[test]
    fn changed_contents_are_named_by_their_hash() {
        let q = running();
        let e = expected("kata-qemu-sev", 9);
        let mut hashed = Vec::new();
        let f = check_with(
            1,
            &q,
            &LaunchDigest::Sev([0; 32]),
            std::slice::from_ref(&e),
            &mut |kind, path| {
                hashed.push(path.to_path_buf());
                Some(if kind == ArtefactKind::Initrd {
                    [7; 32]
                } else {
                    [1; 32]
                })
            },
        );
        assert_eq!(f.differing, [Part::Initrd]);
        assert!(
            f.detail
                .contains("initrd contents changed since registration"),
            "{}",
            f.detail
        );
        // The firmware has no registered hash, so it is not read.
        assert_eq!(hashed, [PathBuf::from(KERNEL), PathBuf::from(INITRD)]);

        // Kernel and initrd unchanged: the firmware, which has no registered hash.
        let f = check_with(
            1,
            &q,
            &LaunchDigest::Sev([0; 32]),
            std::slice::from_ref(&e),
            &mut |kind, _| {
                Some(if kind == ArtefactKind::Initrd {
                    [2; 32]
                } else {
                    [1; 32]
                })
            },
        );
        assert_eq!(f.differing, [Part::Firmware]);
        assert!(f.detail.contains("must have changed"), "{}", f.detail);

        // Everything verified unchanged (SEV-ES): the signature is left.
        let mut q = q;
        q.mode = SevMode::SevEs;
        let mut e = e;
        e.mode = SevMode::SevEs;
        e.firmware_sha256 = Some([0; 32]);
        let f = check_with(
            1,
            &q,
            &LaunchDigest::SevEs([0; 32]),
            &[e],
            &mut |kind, _| {
                Some(match kind {
                    ArtefactKind::Firmware => [0; 32],
                    ArtefactKind::Kernel => [1; 32],
                    ArtefactKind::Initrd => [2; 32],
                })
            },
        );
        assert!(f.drifted);
        assert!(f.differing.is_empty());
        assert!(f.detail.contains("vCPU signature"), "{}", f.detail);
    }

    #[test]
    fn nothing_registered_is_drift_without_a_class() {
        let f = check_with(
            5,
            &running(),
            &LaunchDigest::Sev([0; 32]),
            &[],
            &mut no_files,
        );
        assert!(f.drifted);
        assert_eq!(f.runtime_class, None);
        assert!(f.detail.contains("no launch is registered"));
    }

    #[test]
    fn findings_serialise_with_part_names() {
        let f = DriftFinding {
            pid: 1,
            runtime_class: Some("c".into()),
            digest_hex: "ab".into(),
            drifted: true,
            differing: vec![Part::CommandLine, Part::Vcpus, Part::CpuType],
            detail: "d".into(),
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            v["differing"],
            serde_json::json!(["command line", "vCPUs", "vCPU type"])
        );
        let names: Vec<String> = [
            Part::Firmware,
            Part::Kernel,
            Part::Initrd,
            Part::Mode,
            Part::KernelHashes,
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        assert_eq!(
            names,
            ["firmware", "kernel", "initrd", "mode", "kernel hashes"]
        );
    }

    #[test]
    fn quoting_is_bounded_and_char_safe() {
        let long_a = "é".repeat(300) + "x" + &"ü".repeat(300);
        let long_b = "é".repeat(300) + "y" + &"ü".repeat(300);
        let (a, b) = quote_difference(&long_a, &long_b);
        assert!(a.contains('x') && b.contains('y'));
        assert!(a.chars().count() < MAX_QUOTE + 10);
        assert!(quote(&"a".repeat(500)).chars().count() < MAX_QUOTE + 10);
        let p = PathBuf::from(format!("/{}/file.fd", "d".repeat(300)));
        assert!(quote_path(Some(&p)).ends_with("file.fd\""));
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
    }

    #[test]
    fn measuring_refuses_relative_paths_and_unknown_cpus() {
        let mut q = running();
        q.firmware = "AMDSEV.fd".into();
        assert!(matches!(
            measure_observed(&q, None, HostVmsa::default()),
            Err(DriftError::RelativePath { .. })
        ));
        let mut q = running();
        q.mode = SevMode::SevEs;
        assert!(matches!(
            measure_observed(&q, None, HostVmsa::default()),
            Err(DriftError::NoHostSignature { .. })
        ));
        q.cpu = "Skylake-Server".into();
        assert!(matches!(
            measure_observed(&q, None, HostVmsa::default()),
            Err(DriftError::UnknownCpuModel { .. })
        ));
    }
}
