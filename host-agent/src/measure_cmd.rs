//! `host-agent measure`: one launch digest from files, a drop-in for
//! `sev-snp-measure` (same options, same output, same digest).

use crate::launch::{measure, LaunchArtefacts};
use anyhow::{bail, Context};
use base64::Engine as _;
use clap::{Args, ValueEnum};
use sev_core::vcpu::{vcpu_type_signature, VCPU_TYPES};
use sev_core::{SevMode, VcpuSignature, VmShape, VmmType};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// Output encodings of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lower-case hexadecimal.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// Parses an integer the way Python's `int(text, 0)` does for the forms people
/// type: decimal, `0x` hex, `0o` octal, `0b` binary, underscores between digits.
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

fn parse_mode(text: &str) -> Result<SevMode, String> {
    SevMode::from_name(text).ok_or_else(|| format!("{text:?}: expected sev, seves or snp"))
}

fn parse_vmm(text: &str) -> Result<VmmType, String> {
    VmmType::from_name(text)
        .ok_or_else(|| format!("unknown VMM type {text:?}: expected QEMU, ec2 or gce"))
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

fn parse_u32_auto(text: &str) -> Result<u32, String> {
    let v = parse_auto_base(text)?;
    u32::try_from(v).map_err(|_| format!("{text:?} does not fit in 32 bits"))
}

/// Options of `host-agent measure`; the names are `sev-snp-measure`'s.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Guest mode: sev, seves (also sev-es) or snp (also sev-snp).
    #[arg(long, value_parser = parse_mode)]
    pub mode: SevMode,
    /// OVMF firmware image.
    #[arg(long, value_name = "FILE")]
    pub ovmf: PathBuf,
    /// Kernel image (QEMU's -kernel); measured through the firmware's hashes table.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initrd (QEMU's -initrd); needs --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (QEMU's -append), hashed exactly as given, spaces and all;
    /// needs --kernel.
    #[arg(
        long,
        value_name = "TEXT",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub append: Option<OsString>,
    /// Number of vCPUs; required for seves and snp.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Named vCPU model (QEMU -cpu), e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa.
    #[arg(long, value_name = "NAME", value_parser = parse_vcpu_type)]
    pub vcpu_type: Option<String>,
    /// vCPU signature (CPUID 1 EAX), e.g. 0xa00f11; for `-cpu host`.
    #[arg(long, value_name = "VALUE", value_parser = parse_u32_auto)]
    pub vcpu_sig: Option<u32>,
    /// vCPU family, with --vcpu-model and --vcpu-stepping; for `-cpu host`.
    #[arg(long, value_name = "FAMILY", requires_all = ["vcpu_model", "vcpu_stepping"])]
    pub vcpu_family: Option<u32>,
    /// vCPU model number.
    #[arg(long, value_name = "MODEL", requires = "vcpu_family")]
    pub vcpu_model: Option<u32>,
    /// vCPU stepping.
    #[arg(long, value_name = "STEPPING", requires = "vcpu_family")]
    pub vcpu_stepping: Option<u32>,
    /// SNP guest features (VMSA SEV_FEATURES), e.g. 0x1.
    #[arg(long, value_name = "VALUE", value_parser = parse_auto_base, default_value = "0x1")]
    pub guest_features: u64,
    /// VMM that builds the initial vCPU state: QEMU (what Kata uses), ec2 or gce.
    #[arg(long, value_name = "VMMTYPE", value_parser = parse_vmm, default_value = "QEMU")]
    pub vmm_type: VmmType,
    /// How to print the digest.
    #[arg(long, value_enum, default_value = "hex")]
    pub output_format: OutputFormat,
}

/// The vCPU signature the options give, in `sev-snp-measure`'s order of precedence.
fn vcpu_signature(a: &MeasureArgs) -> anyhow::Result<VcpuSignature> {
    if a.mode == SevMode::Sev {
        return Ok(VcpuSignature(0));
    }
    if let (Some(f), Some(m), Some(s)) = (a.vcpu_family, a.vcpu_model, a.vcpu_stepping) {
        return Ok(VcpuSignature::from_family_model_stepping(f, m, s));
    }
    if let Some(sig) = a.vcpu_sig {
        return Ok(VcpuSignature(sig));
    }
    if let Some(sig) = a.vcpu_type.as_deref().and_then(vcpu_type_signature) {
        return Ok(sig);
    }
    if a.vmm_type == VmmType::Qemu {
        bail!(
            "missing --vcpu-type, --vcpu-sig or --vcpu-family in guest mode '{}'",
            a.mode.name()
        );
    }
    // EC2 and GCE put a fixed value in RDX; the signature is not used.
    Ok(VcpuSignature(0))
}

/// Runs `measure` and prints the digest alone.
pub fn run(a: &MeasureArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let vcpus = match (a.mode, a.vcpus) {
        (SevMode::Sev, v) => v.unwrap_or(1),
        (_, Some(v)) => v,
        (mode, None) => bail!("missing --vcpus N in guest mode '{}'", mode.name()),
    };
    let shape = VmShape {
        vcpus,
        vcpu_sig: vcpu_signature(a)?,
        guest_features: a.guest_features,
        vmm: a.vmm_type,
        fpu: sev_core::vmsa::VmsaFpu::Reset,
    };
    let art = LaunchArtefacts {
        firmware: a.ovmf.clone(),
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.append.as_ref().map(|s| os_bytes(s)),
    };
    let digest = measure(&art, a.mode, &shape)?;
    let text = match a.output_format {
        OutputFormat::Hex => digest.to_hex(),
        OutputFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(digest.as_bytes()),
    };
    writeln!(out, "{text}").context("writing the digest")?;
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
}
