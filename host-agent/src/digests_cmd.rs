//! `host-agent digests`: from Kata configuration files to the launches they yield
//! and the digests the KBS must expect for them.

use crate::agent::cache::ArtefactCache;
use crate::agent::config::AgentConfig;
use crate::agent::derive::{derive_parsed, Derived, HostFacts, HostOverrides};
use crate::kata_release::{ReleaseProbe, ReleaseSource};
use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Args;
use kata_launch::{KataConfig, KataRelease};
use serde::Serialize;
use sev_core::host_kernel::KernelRelease;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of `host-agent digests`.
#[derive(Debug, Args)]
pub struct DigestsArgs {
    /// Kata configuration files (configuration-*.toml); the runtime class is named
    /// after each file (configuration-qemu-snp.toml gives kata-qemu-snp).
    #[arg(long = "kata-config", value_name = "FILE", required = true, num_args = 1..)]
    pub kata_configs: Vec<PathBuf>,
    /// Pod CPU limits (rounded up) to derive launches for; Kata adds them to
    /// default_vcpus, which changes -smp, nr_cpus and so the digest. Comma-separated.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "0")]
    pub pod_cpus: Vec<u32>,
    /// The Kata release that builds the launch: 3.19.0 to 4.1.x (SEV-SNP) or
    /// CC-0.7.0/CC-0.8.0 (SEV with pre-attestation). When not given it is asked of
    /// the containerd-shim-kata-v2 of the configuration's tree
    /// (<prefix>/bin beside <prefix>/share/defaults/kata-containers), else
    /// CC-0.8.0 is assumed and said.
    #[arg(long, value_name = "X.Y.Z")]
    pub kata_version: Option<KataRelease>,
    /// Signature (CPUID 1 EAX) of the host CPU, which SEV-ES guests see through
    /// `-cpu host`; read from /proc/cpuinfo when not given.
    #[arg(long, value_name = "VALUE", value_parser = crate::measure_cmd::parse_auto_base)]
    pub host_cpu_sig: Option<u64>,
    /// The host kernel release SNP launches of Kata 3.19 and later are measured
    /// for (e.g. 6.8): it decides the VMSA's x87/SSE state (6.10 on) and default
    /// guest features (0x21 on 6.6 and 6.7). This machine's kernel when not
    /// given. (The CC builds' launches keep 0x1 and the reset state.)
    #[arg(long, value_name = "RELEASE", value_parser = parse_kernel_release)]
    pub host_kernel: Option<KernelRelease>,
    /// SNP guest features (the VMSA's SEV features), overriding what the host
    /// kernel implies.
    #[arg(long, value_name = "VALUE", value_parser = crate::measure_cmd::parse_auto_base)]
    pub snp_guest_features: Option<u64>,
    /// The host runs in FIPS mode (Kata then appends fips=1); read from
    /// /proc/sys/crypto/fips_enabled when not given.
    #[arg(long)]
    pub fips: Option<bool>,
    /// Print JSON (one array of launches) instead of text.
    #[arg(long)]
    pub json: bool,
}

impl DigestsArgs {
    /// Arguments for these files and pod CPU counts, everything else detected.
    pub fn new(kata_configs: Vec<PathBuf>, pod_cpus: Vec<u32>) -> DigestsArgs {
        DigestsArgs {
            kata_configs,
            pod_cpus,
            kata_version: None,
            host_cpu_sig: None,
            host_kernel: None,
            snp_guest_features: None,
            fips: None,
            json: false,
        }
    }
}

fn parse_kernel_release(s: &str) -> Result<KernelRelease, String> {
    KernelRelease::parse(s)
        .ok_or_else(|| format!("{s:?} is not a kernel release such as 6.8 or 6.12.9"))
}

/// One derived launch and its digest, as printed.
#[derive(Debug, Serialize)]
pub struct LaunchReport {
    /// Kubernetes runtime class.
    pub runtime_class: String,
    /// The configuration file it came from.
    pub config: PathBuf,
    /// The Kata release the launch was derived for.
    pub kata_release: String,
    /// Where the release came from: configured, the shim's path, or assumed.
    pub kata_release_source: ReleaseSource,
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
    /// The pod annotation this launch is for, if any.
    pub annotation: Option<String>,
    /// vCPUs QEMU starts.
    pub vcpus: u32,
    /// QEMU -smp argument.
    pub smp: String,
    /// QEMU -cpu argument (model and features).
    pub cpu_model: String,
    /// vCPU signature in the VMSAs (SEV-ES and SNP).
    pub vcpu_sig: Option<String>,
    /// SNP guest features in the VMSAs.
    pub guest_features: Option<String>,
    /// Kernel, initrd and command line are measured (all but CC-0.8.0's SNP).
    pub kernel_hashes: bool,
    /// Launch digest, hexadecimal.
    pub digest: String,
    /// Launch digest, base64 (as the KBS stores it).
    pub digest_base64: String,
    /// What the digest does not cover (an unverified root image, annotations).
    pub warnings: Vec<String>,
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

/// The host facts these arguments describe.
pub fn host_facts(a: &DigestsArgs) -> anyhow::Result<HostFacts> {
    Ok(HostFacts::detect_with(HostOverrides {
        host_sig: a
            .host_cpu_sig
            .map(u32::try_from)
            .transpose()
            .context("--host-cpu-sig does not fit in 32 bits")?,
        fips: a.fips,
        host_kernel: a.host_kernel,
        snp_guest_features: a.snp_guest_features,
    }))
}

/// Derives every launch the configurations yield and measures each, exactly as
/// the daemon does (the same derivation, over a cache of this call's own).
pub fn reports(a: &DigestsArgs) -> anyhow::Result<Vec<LaunchReport>> {
    let host = host_facts(a)?;
    let mut agent = AgentConfig::default();
    agent.launches.pod_cpus = Some(a.pod_cpus.clone());
    let mut probe = ReleaseProbe::new(a.kata_version);
    let mut cache = ArtefactCache::new();
    let mut out = Vec::new();
    for path in &a.kata_configs {
        let config = load_config(path)?;
        let release = probe.resolve(path)?;
        let class = match derive_parsed(&config, &agent, &host, &mut cache, &release)? {
            Derived::Launches(c) => c,
            Derived::Skipped { reason, .. } => {
                // The planner's own error names the file, line and key.
                let ctx = kata_launch::LaunchContext {
                    release: release.release,
                    ..kata_launch::LaunchContext::default()
                };
                match kata_launch::plan(&config, &ctx) {
                    Err(e) => bail!("{e}"),
                    Ok(_) => bail!("{}: no launch to measure: {reason}", path.display()),
                }
            }
        };
        for l in class.launches {
            out.push(LaunchReport {
                runtime_class: class.runtime_class.clone(),
                config: path.clone(),
                kata_release: class.release.release.to_string(),
                kata_release_source: class.release.source.clone(),
                mode: l.mode,
                policy: l.policy,
                firmware: l.firmware,
                kernel: l.kernel,
                initrd: l.initrd,
                cmdline: l.cmdline,
                pod_cpus: l.pod_cpus,
                annotation: l.annotation,
                vcpus: l.vcpus,
                smp: l.smp,
                cpu_model: l.cpu,
                vcpu_sig: l.vcpu_sig,
                guest_features: l.guest_features,
                kernel_hashes: l.kernel_hashes,
                digest_base64: base64::engine::general_purpose::STANDARD.encode(&l.digest_bytes),
                digest: l.digest,
                warnings: class.warnings.clone(),
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
    let mut warned = std::collections::BTreeSet::new();
    for r in reports {
        match &r.annotation {
            Some(a) => writeln!(
                out,
                "{} ({}, pod CPUs {}, annotation {a})",
                r.runtime_class,
                r.config.display(),
                r.pod_cpus
            )?,
            None => writeln!(
                out,
                "{} ({}, pod CPUs {})",
                r.runtime_class,
                r.config.display(),
                r.pod_cpus
            )?,
        }
        writeln!(out, "  kata      {}", release_line(r))?;
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
                "  vcpus     {} (-smp {}, -cpu {}, signature {s})",
                r.vcpus, r.smp, r.cpu_model
            )?,
            None => writeln!(
                out,
                "  vcpus     {} (-smp {}, -cpu {})",
                r.vcpus, r.smp, r.cpu_model
            )?,
        }
        if let Some(g) = &r.guest_features {
            writeln!(out, "  features  {g}")?;
        }
        if !r.kernel_hashes {
            writeln!(
                out,
                "  measures  the firmware only (Kata starts SNP guests without kernel hashes)"
            )?;
        }
        writeln!(out, "  digest    {}", r.digest)?;
        writeln!(out, "  base64    {}", r.digest_base64)?;
        // Once per configuration, not once per launch.
        if warned.insert(r.config.clone()) {
            for w in &r.warnings {
                writeln!(out, "  warning   {w}")?;
            }
        }
    }
    Ok(())
}

fn release_line(r: &LaunchReport) -> String {
    match &r.kata_release_source {
        ReleaseSource::Configured => format!("{} (--kata-version)", r.kata_release),
        ReleaseSource::Shim(p) => format!("{} (from {})", r.kata_release, p.display()),
        ReleaseSource::Assumed => format!(
            "{} (assumed: no containerd-shim-kata-v2 beside the configuration; give --kata-version)",
            r.kata_release
        ),
    }
}
