//! `host-agent digests`: from Kata configuration files to the launches they yield
//! and the digests the KBS must expect for them.

use crate::host_cpu;
use crate::launch::{LaunchArtefacts, LaunchError, LoadedLaunch};
use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Args;
use kata_launch::{plan, CpuModel, KataConfig, LaunchContext, LaunchPlan};
use serde::Serialize;
use sev_core::vcpu::vcpu_type_signature;
use sev_core::{SevMode, VcpuSignature, VmShape, VmmType};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of `host-agent digests`.
#[derive(Debug, Args)]
pub struct DigestsArgs {
    /// Kata configuration files (configuration-*.toml); the runtime class is named
    /// after each file (configuration-qemu-sev.toml gives kata-qemu-sev).
    #[arg(long = "kata-config", value_name = "FILE", required = true, num_args = 1..)]
    pub kata_configs: Vec<PathBuf>,
    /// Pod CPU limits (rounded up) to derive launches for; Kata adds them to
    /// default_vcpus, which changes -smp, nr_cpus and so the digest. Comma-separated.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "0")]
    pub pod_cpus: Vec<u32>,
    /// Signature (CPUID 1 EAX) of the host CPU, which SEV-ES guests see through
    /// `-cpu host`; read from /proc/cpuinfo when not given.
    #[arg(long, value_name = "VALUE", value_parser = crate::measure_cmd::parse_auto_base)]
    pub host_cpu_sig: Option<u64>,
    /// The host runs in FIPS mode (Kata then appends fips=1); read from
    /// /proc/sys/crypto/fips_enabled when not given.
    #[arg(long)]
    pub fips: Option<bool>,
    /// Print JSON (one array of launches) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One derived launch and its digest, as printed.
#[derive(Debug, Serialize)]
pub struct LaunchReport {
    /// Kubernetes runtime class.
    pub runtime_class: String,
    /// The configuration file it came from.
    pub config: PathBuf,
    /// `sev`, `seves` or `snp`.
    pub mode: &'static str,
    /// SEV guest policy.
    pub policy: u32,
    /// Firmware path.
    pub firmware: PathBuf,
    /// Kernel path.
    pub kernel: PathBuf,
    /// Initrd path.
    pub initrd: Option<PathBuf>,
    /// The exact kernel command line.
    pub cmdline: String,
    /// Pod CPU limit this launch is for.
    pub pod_cpus: u32,
    /// vCPUs QEMU starts.
    pub vcpus: u32,
    /// QEMU -cpu argument (model and features).
    pub cpu_model: String,
    /// vCPU signature in the VMSAs (SEV-ES and SNP).
    pub vcpu_sig: Option<String>,
    /// Kernel, initrd and command line are measured (SEV, SEV-ES); an SNP guest
    /// as Kata launches it measures its firmware only.
    pub kernel_hashes: bool,
    /// Launch digest, hexadecimal.
    pub digest: String,
    /// Launch digest, base64 (as the KBS stores it).
    pub digest_base64: String,
}

fn fips_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/crypto/fips_enabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// Reads and parses one configuration, and checks every artefact it names.
pub fn load_config(path: &Path) -> anyhow::Result<KataConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read Kata configuration {}", path.display()))?;
    let config = KataConfig::parse(path, &text)?;
    for a in config.artefacts() {
        let at = config.qemu_key(a.key, a.line);
        let shown = a.path.display();
        match std::fs::metadata(&a.path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => bail!("{at}: {shown} is not a regular file"),
            Err(e) => bail!("{at}: {shown}: {e}"),
        }
        if let Err(e) = std::fs::File::open(&a.path) {
            bail!("{at}: {shown} cannot be read: {e}");
        }
    }
    Ok(config)
}

fn vcpu_sig_for(
    plan: &LaunchPlan,
    host: Option<VcpuSignature>,
) -> anyhow::Result<Option<VcpuSignature>> {
    if plan.mode == SevMode::Sev {
        return Ok(None);
    }
    match &plan.cpu_model {
        CpuModel::Host => host.map(Some).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: an {} guest runs with -cpu host, so its digest depends on the host CPU; \
                 this is not an AMD CPU, give --host-cpu-sig",
                plan.runtime_class,
                plan.mode
            )
        }),
        CpuModel::Named(name) => vcpu_type_signature(name)
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("{}: unknown vCPU model {name:?}", plan.runtime_class)),
    }
}

/// Derives every launch the configurations yield and measures each.
pub fn reports(a: &DigestsArgs) -> anyhow::Result<Vec<LaunchReport>> {
    let host_sig = match a.host_cpu_sig {
        Some(v) => Some(VcpuSignature(
            u32::try_from(v).context("--host-cpu-sig does not fit in 32 bits")?,
        )),
        None => host_cpu::detect(),
    };
    let fips = a.fips.unwrap_or_else(fips_enabled);
    let mut loaded: HashMap<LaunchArtefacts, LoadedLaunch> = HashMap::new();
    let host_cpus = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok());
    let mut out = Vec::new();
    for path in &a.kata_configs {
        let config = load_config(path)?;
        for &pod_cpus in &a.pod_cpus {
            let ctx = LaunchContext {
                pod_cpus,
                fips,
                host_cpus,
                kernel_params_annotation: None,
                ..LaunchContext::default()
            };
            let plan = plan(&config, &ctx)?;
            // Files are hashed once per set; the command line differs per launch.
            let art = if plan.kernel_hashes {
                LaunchArtefacts {
                    firmware: plan.firmware.clone(),
                    kernel: Some(plan.kernel.clone()),
                    initrd: plan.initrd.clone(),
                    cmdline: None,
                }
            } else {
                LaunchArtefacts {
                    firmware: plan.firmware.clone(),
                    kernel: None,
                    initrd: None,
                    cmdline: None,
                }
            };
            let sig = vcpu_sig_for(&plan, host_sig)?;
            let shape = VmShape {
                vcpus: plan.vcpus,
                vcpu_sig: sig.unwrap_or(VcpuSignature(0)),
                guest_features: 0x1,
                vmm: VmmType::Qemu,
                fpu: sev_core::vmsa::VmsaFpu::Reset,
            };
            let launch = match loaded.entry(art.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(LoadedLaunch::load(&art)?),
            };
            let digest = launch
                .digest(
                    plan.mode,
                    &shape,
                    plan.kernel_hashes.then_some(plan.cmdline.as_bytes()),
                )
                .map_err(|e: LaunchError| anyhow::anyhow!("{}: {e}", path.display()))?;
            out.push(LaunchReport {
                runtime_class: plan.runtime_class.clone(),
                config: path.clone(),
                mode: plan.mode.name(),
                policy: plan.policy,
                firmware: plan.firmware.clone(),
                kernel: plan.kernel.clone(),
                initrd: plan.initrd.clone(),
                cmdline: plan.cmdline.clone(),
                pod_cpus,
                vcpus: plan.vcpus,
                cpu_model: plan.cpu_arg(),
                vcpu_sig: sig.map(|s| s.to_string()),
                kernel_hashes: plan.kernel_hashes,
                digest: digest.to_hex(),
                digest_base64: base64::engine::general_purpose::STANDARD.encode(digest.as_bytes()),
            });
        }
    }
    Ok(out)
}

/// Runs `digests`.
pub fn run(a: &DigestsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    print_reports(&reports(a)?, a.json, out)
}

/// Prints launch reports as `host-agent digests` does: text, or JSON with `json`.
pub fn print_reports(
    reports: &[LaunchReport],
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, reports).context("writing JSON")?;
        writeln!(out)?;
        return Ok(());
    }
    for r in reports {
        writeln!(
            out,
            "{} ({}, pod CPUs {})",
            r.runtime_class,
            r.config.display(),
            r.pod_cpus
        )?;
        writeln!(out, "  mode      {} (policy {:#x})", r.mode, r.policy)?;
        writeln!(out, "  firmware  {}", r.firmware.display())?;
        writeln!(out, "  kernel    {}", r.kernel.display())?;
        if let Some(i) = &r.initrd {
            writeln!(out, "  initrd    {}", i.display())?;
        }
        writeln!(out, "  cmdline   {}", r.cmdline)?;
        match &r.vcpu_sig {
            Some(s) => writeln!(
                out,
                "  vcpus     {} (-cpu {}, signature {s})",
                r.vcpus, r.cpu_model
            )?,
            None => writeln!(out, "  vcpus     {} (-cpu {})", r.vcpus, r.cpu_model)?,
        }
        if !r.kernel_hashes {
            writeln!(
                out,
                "  measures  the firmware only (Kata starts SNP guests without kernel hashes)"
            )?;
        }
        writeln!(out, "  digest    {}", r.digest)?;
        writeln!(out, "  base64    {}", r.digest_base64)?;
    }
    Ok(())
}
