//! `host-agent measure`: one launch digest from files, a drop-in for
//! `sev-snp-measure` 0.0.13 (same options, same output, same digest, same exit
//! codes).
//!
//! The options are checked in the order `sev-snp-measure` checks them, so that a
//! command line with several faults fails the same way: usage errors exit 2 (as
//! Python's argparse does) before any file is read, and files that cannot be
//! measured exit 1. Numbers are read as Python's `int` reads them.

use crate::artefacts::{read_firmware, sha256_file, ArtefactKind};
use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, ValueEnum};
use sev_core::gctx::{Sha384Digest, LD_SIZE};
use sev_core::hashes::{cmdline_digest, empty_digest, PAGE_SIZE};
use sev_core::measure::{launch_vmsa_pages, snp_ovmf_hash};
use sev_core::vcpu::{vcpu_type_signature, VCPU_TYPES};
use sev_core::{
    Firmware, KernelHashes, LaunchDigest, MeasureError, Measurement, SevMode, SvsmLaunch,
    VcpuSignature, VmShape, VmmType,
};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Output encodings of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lower-case hexadecimal.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// What `--mode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureMode {
    /// A launch digest of an SEV, SEV-ES or SNP guest.
    Launch(SevMode),
    /// The SNP digest of the firmware pages alone (`snp:ovmf-hash`), for
    /// `--snp-ovmf-hash`.
    SnpOvmfHash,
    /// An SNP guest started through an SVSM below the firmware (`snp:svsm`).
    SnpSvsm,
}

impl MeasureMode {
    /// The name `sev-snp-measure` uses in its messages.
    fn cli_name(self) -> &'static str {
        match self {
            MeasureMode::Launch(m) => m.name(),
            MeasureMode::SnpOvmfHash => "snp:ovmf-hash",
            MeasureMode::SnpSvsm => "snp:svsm",
        }
    }

    /// The name verbose output gives (`sev-snp-measure`'s `SevMode` names).
    fn verbose_name(self) -> &'static str {
        match self {
            MeasureMode::Launch(SevMode::Sev) => "SEV",
            MeasureMode::Launch(SevMode::SevEs) => "SEV_ES",
            MeasureMode::Launch(SevMode::Snp) | MeasureMode::SnpOvmfHash => "SEV_SNP",
            MeasureMode::SnpSvsm => "SEV_SNP_SVSM",
        }
    }
}

/// Parses an integer the way Python's `int(text, 0)` does for the forms people
/// type: decimal, `0x` hex, `0o` octal, `0b` binary, underscores between digits.
/// Negative numbers are refused.
pub fn parse_auto_base(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let lower = t.to_ascii_lowercase();
    let (digits, radix) = if let Some(h) = lower.strip_prefix("0x") {
        (h, 16)
    } else if let Some(o) = lower.strip_prefix("0o") {
        (o, 8)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (b, 2)
    } else if lower.len() > 1 && lower.starts_with('0') && lower.chars().any(|c| c != '0') {
        return Err(format!(
            "{text:?}: a decimal number may not start with 0 (use 0x for hex)"
        ));
    } else {
        (lower.as_str(), 10)
    };
    u64::from_str_radix(digits, radix).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses an integer exactly as Python's `int(text)` (`auto_base` false) or
/// `int(text, 0)` (`auto_base` true) does for ASCII text: surrounding white
/// space, a sign, single underscores between digits; with `auto_base`, the
/// prefixes `0x`, `0o` and `0b` and no leading zeros in decimal.
pub fn parse_python_int(text: &str, auto_base: bool) -> Result<i128, String> {
    let invalid = || {
        let base = if auto_base { 0 } else { 10 };
        format!("invalid int value: {text:?} (not an integer in base {base})")
    };
    let t = text.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let lower = body.to_ascii_lowercase();
    let prefixed = |p: &str| {
        lower
            .strip_prefix(p)
            .map(|r| r.strip_prefix('_').unwrap_or(r).to_string())
    };
    let (digits, radix) = match (auto_base, prefixed("0x"), prefixed("0o"), prefixed("0b")) {
        (true, Some(h), _, _) => (h, 16),
        (true, _, Some(o), _) => (o, 8),
        (true, _, _, Some(b)) => (b, 2),
        _ => (lower.clone(), 10),
    };
    // Underscores only singly, between digits.
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c == '_' || c.is_digit(radix))
    {
        return Err(invalid());
    }
    let plain: String = digits.chars().filter(|&c| c != '_').collect();
    if auto_base && radix == 10 && plain.starts_with('0') && plain.chars().any(|c| c != '0') {
        return Err(invalid());
    }
    let magnitude =
        i128::from_str_radix(&plain, radix).map_err(|_| format!("{text:?} is too large"))?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// Python's `int(text)`, within 64 bits (larger counts and CPUID fields mean nothing).
fn parse_int(text: &str) -> Result<i64, String> {
    let v = parse_python_int(text, false)?;
    i64::try_from(v).map_err(|_| format!("{text:?} is out of range"))
}

/// Python's `int(text, 0)`, within 64 bits.
fn parse_int_auto(text: &str) -> Result<i64, String> {
    let v = parse_python_int(text, true)?;
    i64::try_from(v).map_err(|_| format!("{text:?} is out of range"))
}

/// Guest features: Python's `int(text, 0)`, kept modulo 2^64 as the 64-bit VMSA
/// field keeps it.
fn parse_guest_features(text: &str) -> Result<u64, String> {
    let v = parse_python_int(text, true)?;
    u64::try_from(v.rem_euclid(1 << 64)).map_err(|_| format!("{text:?} is out of range"))
}

fn parse_mode(text: &str) -> Result<MeasureMode, String> {
    match text {
        "snp:ovmf-hash" => Ok(MeasureMode::SnpOvmfHash),
        "snp:svsm" => Ok(MeasureMode::SnpSvsm),
        _ => SevMode::from_name(text)
            .map(MeasureMode::Launch)
            .ok_or_else(|| {
                format!("{text:?}: expected sev, seves or snp (or snp:ovmf-hash, snp:svsm)")
            }),
    }
}

fn parse_vcpu_type(text: &str) -> Result<String, String> {
    match vcpu_type_signature(text) {
        Some(_) => Ok(text.to_string()),
        None => Err(format!(
            "unknown vCPU type {text:?}; known types: {}",
            VCPU_TYPES
                .iter()
                .map(|t| t.0)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Options of `host-agent measure`; the names are `sev-snp-measure`'s, and like
/// there an unambiguous prefix of a long option will do.
#[derive(Debug, Args)]
#[command(infer_long_args = true)]
pub struct MeasureArgs {
    /// Print "Calculated <MODE> guest measurement: <digest>" rather than the
    /// digest alone.
    #[arg(short, long)]
    pub verbose: bool,
    /// Guest mode: sev, seves (also sev-es) or snp (also sev-snp); snp:ovmf-hash
    /// prints the SNP digest of the firmware alone, for --snp-ovmf-hash;
    /// snp:svsm measures an SNP guest started through an SVSM.
    #[arg(long, value_parser = parse_mode)]
    pub mode: MeasureMode,
    /// Number of vCPUs; required for seves, snp and snp:svsm.
    #[arg(long, value_name = "N", value_parser = parse_int, allow_negative_numbers = true)]
    pub vcpus: Option<i64>,
    /// Named vCPU model (QEMU -cpu), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long, value_name = "NAME", value_parser = parse_vcpu_type)]
    pub vcpu_type: Option<String>,
    /// vCPU signature (CPUID 1 EAX), e.g. 0xa00f11; for `-cpu host`.
    #[arg(long, value_name = "VALUE", value_parser = parse_int_auto, allow_negative_numbers = true)]
    pub vcpu_sig: Option<i64>,
    /// vCPU family, with --vcpu-model and --vcpu-stepping; for `-cpu host`.
    #[arg(long, value_name = "FAMILY", value_parser = parse_int, allow_negative_numbers = true)]
    pub vcpu_family: Option<i64>,
    /// vCPU model number (with --vcpu-family).
    #[arg(long, value_name = "MODEL", value_parser = parse_int, allow_negative_numbers = true)]
    pub vcpu_model: Option<i64>,
    /// vCPU stepping (with --vcpu-family).
    #[arg(long, value_name = "STEPPING", value_parser = parse_int, allow_negative_numbers = true)]
    pub vcpu_stepping: Option<i64>,
    /// VMM that builds the initial vCPU state: QEMU (what Kata uses), ec2 or gce.
    #[arg(long, value_name = "VMMTYPE", default_value = "QEMU")]
    pub vmm_type: String,
    /// OVMF firmware image.
    #[arg(long, value_name = "FILE")]
    pub ovmf: OsString,
    /// Kernel image (QEMU's -kernel); measured through the firmware's hashes table.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<OsString>,
    /// Initrd (QEMU's -initrd); needs --kernel.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<OsString>,
    /// Kernel command line (QEMU's -append), hashed exactly as given, spaces and all;
    /// needs --kernel.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    pub append: Option<OsString>,
    /// SNP guest features (VMSA SEV_FEATURES), e.g. 0x1.
    #[arg(long, value_name = "VALUE", value_parser = parse_guest_features, default_value = "0x1", allow_negative_numbers = true)]
    pub guest_features: u64,
    /// How to print the digest.
    #[arg(long, value_enum, default_value = "hex")]
    pub output_format: OutputFormat,
    /// The firmware's SNP digest as snp:ovmf-hash printed it (96 hex digits): the
    /// snp measurement starts from it instead of hashing the firmware's pages.
    #[arg(long, value_name = "HEX")]
    pub snp_ovmf_hash: Option<String>,
    /// Also write each vCPU's VMSA page to vmsa<N>.bin in the current directory
    /// (seves, snp and snp:svsm).
    #[arg(long)]
    pub dump_vmsa: bool,
    /// SVSM binary, mapped below the OVMF variable store.
    #[arg(long, value_name = "FILE", help_heading = "snp:svsm mode")]
    pub svsm: Option<OsString>,
    /// Size of the OVMF variable store in bytes (or give --vars-file).
    #[arg(long, value_name = "SIZE", value_parser = parse_int, allow_negative_numbers = true,
          conflicts_with = "vars_file", help_heading = "snp:svsm mode")]
    pub vars_size: Option<i64>,
    /// OVMF variable store file, whose size is used (or give --vars-size).
    #[arg(long, value_name = "FILE", help_heading = "snp:svsm mode")]
    pub vars_file: Option<OsString>,
}

/// A usage error: printed with the usage of `host-agent measure`, exit code 2.
fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    let mut cmd = crate::cli::Cli::command();
    cmd.build();
    let err = match cmd.find_subcommand_mut("measure") {
        Some(measure) => measure.error(ErrorKind::ArgumentConflict, message),
        None => clap::Error::raw(ErrorKind::ArgumentConflict, format!("{message}\n")),
    };
    err.into()
}

/// A present, non-empty option: `sev-snp-measure` treats an empty value as absent
/// wherever it tests an option's truth.
fn given(v: &Option<OsString>) -> Option<&OsStr> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Everything the checks of the options yield, before any file is read.
struct Plan {
    vcpus: u32,
    sig: VcpuSignature,
    vmm: VmmType,
    guest_features: u64,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Vec<u8>,
    ovmf_hash: Option<String>,
    vars_size: i64,
}

/// The CPUID signature `sev-snp-measure` derives from family, model and stepping,
/// with Python's integer semantics; only values that fit in 32 bits are taken.
fn python_cpu_sig(family: i64, model: i64, stepping: i64) -> anyhow::Result<VcpuSignature> {
    let (low, high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    let sig = (high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf);
    u32::try_from(sig).map(VcpuSignature).map_err(|_| {
        usage(format!(
            "--vcpu-family {family} gives the vCPU signature {sig}, which is not a 32-bit CPUID value"
        ))
    })
}

/// The vCPU signature the options give, in `sev-snp-measure`'s order of
/// precedence (a zero family or signature counts as absent, as there).
fn vcpu_signature(a: &MeasureArgs, vmm: VmmType) -> anyhow::Result<VcpuSignature> {
    if a.mode == MeasureMode::Launch(SevMode::Sev) {
        return Ok(VcpuSignature(0));
    }
    if let Some(family) = a.vcpu_family.filter(|&f| f != 0) {
        let (Some(model), Some(stepping)) = (a.vcpu_model, a.vcpu_stepping) else {
            // sev-snp-measure fails here at run time (exit 1), not as a usage error.
            bail!("--vcpu-family needs --vcpu-model and --vcpu-stepping");
        };
        return python_cpu_sig(family, model, stepping);
    }
    if let Some(sig) = a.vcpu_sig.filter(|&s| s != 0) {
        return u32::try_from(sig)
            .map(VcpuSignature)
            .map_err(|_| usage(format!("--vcpu-sig {sig} is not a 32-bit CPUID value")));
    }
    if let Some(sig) = a.vcpu_type.as_deref().and_then(vcpu_type_signature) {
        return Ok(sig);
    }
    if vmm == VmmType::Qemu {
        return Err(usage(format!(
            "missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode '{}'",
            a.mode.cli_name()
        )));
    }
    // EC2 and GCE put a fixed value in RDX; the signature is not used.
    Ok(VcpuSignature(0))
}

impl Plan {
    /// Checks the options as `sev-snp-measure` does after parsing them, in its order.
    fn new(a: &MeasureArgs) -> anyhow::Result<Plan> {
        // `--kernel ""` counts as given for these checks but measures no kernel.
        if given(&a.initrd).is_some() && a.kernel.is_none() {
            return Err(usage("--kernel required when using --initrd"));
        }
        if given(&a.append).is_some() && a.kernel.is_none() {
            return Err(usage("--kernel required when using --append"));
        }
        let vcpus = match (a.mode, a.vcpus) {
            (MeasureMode::Launch(SevMode::Sev), _) => 0,
            (mode, None) => {
                return Err(usage(format!(
                    "missing --vcpus N in guest mode '{}'",
                    mode.cli_name()
                )))
            }
            // Fewer than one vCPU measures no VMSA, as in sev-snp-measure.
            (_, Some(n)) => u32::try_from(n.max(0))
                .map_err(|_| usage(format!("--vcpus {n}: too many vCPUs")))?,
        };
        let vmm = VmmType::from_name(&a.vmm_type)
            .ok_or_else(|| usage(format!("unknown VMM type '{}'", a.vmm_type)))?;
        let sig = vcpu_signature(a, vmm)?;
        let mut vars_size = 0;
        if a.mode == MeasureMode::SnpSvsm {
            if let Some(file) = given(&a.vars_file) {
                let len = std::fs::metadata(file)
                    .with_context(|| format!("OVMF variable store {}", Path::new(file).display()))?
                    .len();
                vars_size = i64::try_from(len).context("OVMF variable store size")?;
            } else if let Some(size) = a.vars_size.filter(|&s| s != 0) {
                vars_size = size;
            } else {
                return Err(usage("snp:svsm mode requires --vars-size or --vars-file"));
            }
        }
        if a.dump_vmsa && a.mode == MeasureMode::Launch(SevMode::Sev) {
            return Err(usage("--dump-vmsa is not available in the selected mode"));
        }
        let ovmf_hash = a.snp_ovmf_hash.clone().filter(|h| !h.is_empty());
        if ovmf_hash.is_some() && a.mode != MeasureMode::Launch(SevMode::Snp) {
            bail!("--snp-ovmf-hash only works with --mode snp");
        }
        if a.mode == MeasureMode::SnpSvsm && vmm != VmmType::Qemu {
            bail!("snp:svsm mode is only implemented for QEMU");
        }
        let kernel = given(&a.kernel).map(PathBuf::from);
        Ok(Plan {
            vcpus,
            sig,
            vmm,
            guest_features: a.guest_features,
            initrd: kernel.as_ref().and(given(&a.initrd)).map(PathBuf::from),
            cmdline: kernel
                .as_ref()
                .and(given(&a.append))
                .map(os_bytes)
                .unwrap_or_default(),
            kernel,
            ovmf_hash,
            vars_size,
        })
    }
}

/// The firmware's SNP digest from `--snp-ovmf-hash`: hex digit pairs, white
/// space allowed between pairs (Python's `bytes.fromhex`), 48 bytes.
fn parse_ovmf_hash(text: &str) -> anyhow::Result<Sha384Digest> {
    let mut bytes = Vec::with_capacity(LD_SIZE);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c.is_ascii_whitespace() {
            continue;
        }
        let hi = c.to_digit(16);
        let lo = chars.next().and_then(|c| c.to_digit(16));
        match (hi, lo) {
            (Some(h), Some(l)) => bytes.push(u8::try_from(h * 16 + l).unwrap_or(0)),
            _ => bail!("--snp-ovmf-hash {text:?} is not hexadecimal"),
        }
    }
    Sha384Digest::try_from(bytes.as_slice()).map_err(|_| {
        anyhow!(
            "--snp-ovmf-hash holds {} bytes; an SNP digest is {LD_SIZE} (96 hex digits)",
            bytes.len()
        )
    })
}

/// Names the firmware file in a measurement error.
fn in_file(path: &Path, cause: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}: {cause}", path.display())
}

fn parse_firmware<'a>(path: &Path, data: &'a [u8]) -> anyhow::Result<Firmware<'a>> {
    let fw = Firmware::parse(data).map_err(|e| in_file(path, e))?;
    // sev-snp-measure reads the SEV metadata of every image, in every mode.
    fw.metadata_sections()
        .map_err(|e| in_file(path, MeasureError::from(e)))?;
    Ok(fw)
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    // A hashing thread only panics on a bug; re-raise it rather than invent an error.
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Reads the firmware while the kernel and initrd are hashed on other threads.
fn load(plan: &Plan, ovmf: &Path) -> anyhow::Result<(Vec<u8>, Option<KernelHashes>)> {
    std::thread::scope(|s| {
        let kernel = plan
            .kernel
            .as_deref()
            .map(|k| s.spawn(move || sha256_file(ArtefactKind::Kernel, k)));
        let initrd = plan
            .initrd
            .as_deref()
            .map(|i| s.spawn(move || sha256_file(ArtefactKind::Initrd, i)));
        let firmware = read_firmware(ovmf);
        let hashes = match kernel {
            None => None,
            Some(k) => Some(KernelHashes {
                kernel: join(k)?,
                initrd: match initrd {
                    Some(i) => join(i)?,
                    None => empty_digest(),
                },
                cmdline: cmdline_digest(&plan.cmdline),
            }),
        };
        Ok((firmware?, hashes))
    })
}

/// Passes VMSA pages through, writing each to `vmsa<N>.bin` when `dump` is set;
/// the first write error stops the pages and is left in `failed`.
fn dumping<'e>(
    pages: impl Iterator<Item = [u8; PAGE_SIZE]> + 'e,
    dump: bool,
    failed: &'e mut Option<anyhow::Error>,
) -> impl Iterator<Item = [u8; PAGE_SIZE]> + 'e {
    pages.enumerate().map_while(move |(i, page)| {
        if dump {
            let name = format!("vmsa{i}.bin");
            if let Err(e) = std::fs::write(&name, page) {
                *failed = Some(anyhow!("writing {name}: {e}"));
                return None;
            }
        }
        Some(page)
    })
}

/// The digest of a SEV, SEV-ES or SNP launch.
fn launch_digest(a: &MeasureArgs, plan: &Plan, mode: SevMode) -> anyhow::Result<LaunchDigest> {
    let ovmf = Path::new(&a.ovmf);
    let (data, hashes) = load(plan, ovmf)?;
    let fw = parse_firmware(ovmf, &data)?;
    let with_kernel = hashes.is_some();
    let begun = match &plan.ovmf_hash {
        Some(hex) => {
            let seed = parse_ovmf_hash(hex)?;
            Measurement::begin_snp_from_ovmf_hash(&fw, seed, with_kernel)
        }
        None => Measurement::begin(&fw, mode, with_kernel),
    }
    .map_err(|e| in_file(ovmf, e))?;
    let shape = VmShape {
        vcpus: plan.vcpus,
        vcpu_sig: plan.sig,
        guest_features: plan.guest_features,
        vmm: plan.vmm,
        fpu: sev_core::vmsa::VmsaFpu::Reset,
    };
    let pages = launch_vmsa_pages(&fw, mode, &shape).map_err(|e| in_file(ovmf, e))?;
    let mut failed = None;
    let digest = begun
        .finish_with_vmsas(
            &fw,
            hashes.as_ref(),
            plan.vmm,
            dumping(pages, a.dump_vmsa, &mut failed),
        )
        .map_err(|e| in_file(ovmf, e))?;
    failed.map_or(Ok(digest), Err)
}

/// The digest of an SNP launch through an SVSM.
fn svsm_digest(a: &MeasureArgs, plan: &Plan) -> anyhow::Result<LaunchDigest> {
    let ovmf = Path::new(&a.ovmf);
    let ovmf_data = read_firmware(ovmf)?;
    let ovmf_fw = parse_firmware(ovmf, &ovmf_data)?;
    let svsm = a
        .svsm
        .as_deref()
        .map(Path::new)
        .ok_or_else(|| anyhow!("snp:svsm mode needs --svsm FILE"))?;
    let svsm_data = read_firmware(svsm).context("reading the SVSM binary")?;
    let svsm_fw = parse_firmware(svsm, &svsm_data)?;
    let end = i128::from(ovmf_fw.gpa()) - i128::from(plan.vars_size);
    let end = u64::try_from(end).map_err(|_| {
        anyhow!(
            "an OVMF variable store of {} bytes leaves no room for the SVSM",
            plan.vars_size
        )
    })?;
    let launch = SvsmLaunch::new(&ovmf_fw, &svsm_fw, end)
        .with_context(|| format!("{} with SVSM {}", ovmf.display(), svsm.display()))?;
    let mut failed = None;
    let pages = launch.vmsa_pages(plan.vcpus, plan.sig);
    let digest = launch
        .launch_digest(dumping(pages, a.dump_vmsa, &mut failed))
        .with_context(|| format!("{} with SVSM {}", ovmf.display(), svsm.display()))?;
    failed.map_or(Ok(digest), Err)
}

/// Runs `measure` and prints the digest (or, with `-v`, a sentence holding it).
pub fn run(a: &MeasureArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let digest = match a.mode {
        MeasureMode::SnpOvmfHash => {
            // sev-snp-measure answers this before looking at any other option, and
            // always in hex.
            let ovmf = Path::new(&a.ovmf);
            let data = read_firmware(ovmf)?;
            let fw = parse_firmware(ovmf, &data)?;
            let hash = snp_ovmf_hash(&fw).map_err(|e| in_file(ovmf, e))?;
            writeln!(out, "{}", hex::encode(hash)).context("writing the digest")?;
            return Ok(());
        }
        MeasureMode::Launch(mode) => launch_digest(a, &Plan::new(a)?, mode)?,
        MeasureMode::SnpSvsm => svsm_digest(a, &Plan::new(a)?)?,
    };
    let text = match a.output_format {
        OutputFormat::Hex => digest.to_hex(),
        OutputFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(digest.as_bytes()),
    };
    if a.verbose {
        writeln!(
            out,
            "Calculated {} guest measurement: {text}",
            a.mode.verbose_name()
        )
    } else {
        writeln!(out, "{text}")
    }
    .context("writing the digest")?;
    Ok(())
}

/// The bytes of an OS string: on Unix exactly what the process was given, so that a
/// command line in any encoding hashes as QEMU would hash it.
pub fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_base_follows_python_int_base_zero() {
        assert_eq!(parse_auto_base("0x1"), Ok(1));
        assert_eq!(parse_auto_base("0X21"), Ok(0x21));
        assert_eq!(parse_auto_base("33"), Ok(33));
        assert_eq!(parse_auto_base("0"), Ok(0));
        assert_eq!(parse_auto_base("00"), Ok(0));
        assert_eq!(parse_auto_base("0b101"), Ok(5));
        assert_eq!(parse_auto_base("0o17"), Ok(15));
        assert_eq!(parse_auto_base("1_000"), Ok(1000));
        assert!(parse_auto_base("010").is_err());
        assert!(parse_auto_base("-1").is_err());
        assert!(parse_auto_base("0xg").is_err());
        assert!(parse_auto_base("").is_err());
    }

    #[test]
    fn python_int_parsing() {
        let auto = |t| parse_python_int(t, true);
        let dec = |t| parse_python_int(t, false);
        assert_eq!(auto("0x1"), Ok(1));
        assert_eq!(auto(" -0X_ff "), Ok(-255));
        assert_eq!(auto("+0b1_0"), Ok(2));
        assert_eq!(auto("0_0"), Ok(0));
        assert_eq!(auto("1_000"), Ok(1000));
        for bad in [
            "010", "0x", "0x__1", "1_", "_1", "1__0", "", "-", "0xg", "1.0",
        ] {
            assert!(auto(bad).is_err(), "{bad:?}");
        }
        assert_eq!(dec("010"), Ok(10));
        assert_eq!(dec(" +4 "), Ok(4));
        assert_eq!(dec("-1"), Ok(-1));
        assert!(dec("0x10").is_err());
        assert!(dec("4.0").is_err());
    }

    #[test]
    fn family_model_stepping_as_python_computes_them() {
        let sig = |f, m, s| python_cpu_sig(f, m, s).map(|v| v.0).ok();
        assert_eq!(sig(25, 1, 1), Some(0x00a0_0f11));
        assert_eq!(sig(23, 49, 0), Some(0x0083_0f10));
        // Only low bits of model and stepping count, in two's complement.
        assert_eq!(sig(25, 1 + 256, 1 - 16), Some(0x00a0_0f11));
        assert_eq!(sig(25 + 256, 1, 1), Some(0x00a0_0f11));
        assert_eq!(sig(-1, 0, 0), None);
    }

    #[test]
    fn ovmf_hash_parses_like_bytes_fromhex() {
        let hex = "ab".repeat(48);
        assert_eq!(parse_ovmf_hash(&hex).unwrap(), [0xab; 48]);
        let spaced = "AB ".repeat(48);
        assert_eq!(parse_ovmf_hash(&spaced).unwrap(), [0xab; 48]);
        assert!(parse_ovmf_hash("abcd").is_err());
        assert!(parse_ovmf_hash(&"zz".repeat(48)).is_err());
        assert!(parse_ovmf_hash(&format!("a {}", "b".repeat(95))).is_err());
    }
}
