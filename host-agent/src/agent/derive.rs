//! From one Kata configuration file to the launches it yields on this node and
//! their digests: every pod CPU count Kata can boot the guest with, each
//! measured over artefacts hashed at most once per version of the file.

use super::cache::{hash_uncached, ArtefactCache, CacheError};
use super::config::AgentConfig;
use crate::artefacts::{ArtefactError, ArtefactKind};
use crate::kata_release::{ReleaseError, ResolvedRelease};
use kata_launch::{
    measure_class, plan, Annotation, BootHashes, ClassRequest, ConfigError as KataError,
    KataConfig, KataRelease, LaunchContext, MeasureLaunchError, NodeFacts, PlanError,
};
use serde::Serialize;
use sev_core::host_kernel::KernelRelease;
use sev_core::{SevMode, VcpuSignature, VmShape, VmsaFpu};
use std::path::{Path, PathBuf};

/// What the node tells about itself, read once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// CPUID signature of the host CPU (AMD only).
    pub host_sig: Option<VcpuSignature>,
    /// The kernel runs in FIPS mode.
    pub fips: bool,
    /// Online CPUs.
    pub host_cpus: Option<u32>,
    /// The host kernel release SNP launches are measured for, and whether it
    /// was configured (else detected; `None`: neither).
    pub kernel: Option<(KernelRelease, bool)>,
    /// The SEV features of SNP guests' VMSAs.
    pub snp_guest_features: u64,
    /// Whether the guest-features value was configured rather than derived.
    pub snp_guest_features_configured: bool,
    /// The x87/SSE state in the VMSAs.
    pub vmsa_fpu: VmsaFpu,
}

impl HostFacts {
    /// What the launch model takes from this host.
    pub fn node_facts(&self) -> NodeFacts {
        NodeFacts {
            fips: self.fips,
            host_cpus: self.host_cpus,
            host_sig: self.host_sig,
            snp_guest_features: self.snp_guest_features,
            vmsa_fpu: self.vmsa_fpu,
        }
    }

    /// The VM shape of a QEMU launch of `release` on this host (see
    /// [`NodeFacts::shape`]: the CC builds' launches keep guest features 0x1
    /// and the reset x87/SSE state, as sev-snp-measure 0.0.13).
    pub fn shape(&self, vcpus: u32, vcpu_sig: VcpuSignature, release: KataRelease) -> VmShape {
        self.node_facts().shape(vcpus, vcpu_sig, release)
    }

    /// What this host puts into the VMSAs of launches of `release`.
    pub fn vmsa_for(&self, release: KataRelease) -> crate::drift::HostVmsa {
        if release.is_cc() {
            crate::drift::HostVmsa::default()
        } else {
            crate::drift::HostVmsa {
                guest_features: self.snp_guest_features,
                fpu: self.vmsa_fpu,
            }
        }
    }

    /// One line on what this host's kernel puts into SNP VMSAs, for status.
    pub fn snp_vmsa_summary(&self) -> String {
        let kernel = match self.kernel {
            Some((k, true)) => format!("host kernel {k} (configured)"),
            Some((k, false)) => format!("host kernel {k} (detected)"),
            None => "host kernel unknown (assumed 6.10 or later)".to_string(),
        };
        let features = if self.snp_guest_features_configured {
            format!("guest features {:#x} (configured)", self.snp_guest_features)
        } else {
            format!("guest features {:#x}", self.snp_guest_features)
        };
        format!("{kernel}: {features}, {}", self.vmsa_fpu.describe())
    }

    /// Facts for a host with this kernel (and guest-features override), no AMD
    /// CPU signature, no FIPS and an unknown CPU count; an unknown kernel is
    /// taken as 6.10 or later, as sev-snp-measure 0.0.10 and later do.
    pub fn for_kernel(
        kernel: Option<(KernelRelease, bool)>,
        guest_features: Option<u64>,
    ) -> HostFacts {
        let release = kernel.map(|(k, _)| k);
        HostFacts {
            host_sig: None,
            fips: false,
            host_cpus: None,
            kernel,
            snp_guest_features: guest_features
                .or(release.map(KernelRelease::snp_guest_features))
                .unwrap_or(sev_core::host_kernel::SNP_ACTIVE),
            snp_guest_features_configured: guest_features.is_some(),
            vmsa_fpu: release.map_or(VmsaFpu::Reset, KernelRelease::vmsa_fpu),
        }
    }

    /// Reads the host, with the configuration's overrides.
    pub fn detect(config: &AgentConfig) -> HostFacts {
        HostFacts::detect_with(HostOverrides {
            host_sig: config.host_cpu_signature(),
            fips: config.launches.fips,
            host_kernel: config
                .launches
                .snp
                .host_kernel
                .as_deref()
                .and_then(KernelRelease::parse),
            snp_guest_features: config.snp_guest_features(),
        })
    }

    /// Reads the host: the CPU signature, FIPS mode, CPU count and kernel
    /// release, each unless `overrides` gives it.
    pub fn detect_with(overrides: HostOverrides) -> HostFacts {
        let fips = overrides.fips.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/crypto/fips_enabled")
                .map(|s| s.trim() == "1")
                .unwrap_or(false)
        });
        let kernel = match overrides.host_kernel {
            Some(k) => Some((k, true)),
            None => KernelRelease::parse(&rustix::system::uname().release().to_string_lossy())
                .map(|k| (k, false)),
        };
        HostFacts {
            host_sig: overrides
                .host_sig
                .map(VcpuSignature)
                .or_else(crate::host_cpu::detect),
            fips,
            host_cpus: std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok()),
            ..HostFacts::for_kernel(kernel, overrides.snp_guest_features)
        }
    }
}

/// What an operator said about the host instead of letting it be detected
/// (the agent's configuration, or `digests`' options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostOverrides {
    /// CPUID signature of the host CPU.
    pub host_sig: Option<u32>,
    /// FIPS mode.
    pub fips: Option<bool>,
    /// The host kernel release SNP launches are measured for.
    pub host_kernel: Option<KernelRelease>,
    /// The SNP guest features.
    pub snp_guest_features: Option<u64>,
}

/// One launch and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DerivedLaunch {
    /// The pod CPU limit it is for.
    pub pod_cpus: u32,
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
    /// vCPUs at boot.
    pub vcpus: u32,
    /// The `-cpu` argument.
    pub cpu: String,
    /// The vCPU signature in the VMSAs (SEV-ES, SNP).
    pub vcpu_sig: Option<String>,
    /// Kernel, initrd and command line are measured (all but CC-0.8.0 SNP guests).
    pub kernel_hashes: bool,
    /// The `-smp` argument.
    pub smp: String,
    /// The pod annotation this launch is for (`default_vcpus=2`), if any.
    pub annotation: Option<String>,
    /// The VMSA SEV features measured (SNP).
    pub guest_features: Option<String>,
    /// The launch digest, hexadecimal.
    pub digest: String,
    /// The launch digest.
    #[serde(skip)]
    pub digest_bytes: Vec<u8>,
    /// The mode.
    #[serde(skip)]
    pub sev_mode: SevMode,
}

/// Everything one configuration yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassLaunches {
    /// The runtime class.
    pub runtime_class: String,
    /// The configuration file.
    pub config: PathBuf,
    /// The launches, by pod CPU count.
    pub launches: Vec<DerivedLaunch>,
    /// SHA-256 of kernel and initrd (for drift reports).
    pub kernel_sha256: [u8; 32],
    /// SHA-256 of the initrd, if any.
    pub initrd_sha256: Option<[u8; 32]>,
    /// SHA-256 of the firmware image.
    pub firmware_sha256: [u8; 32],
    /// SHA-256 of the configuration's text as read, the name the broker's
    /// approval knows it by (zero until [`Derived::with_text`] sets it).
    pub config_sha256: [u8; 32],
    /// The Kata release the launches were derived for, and where it came from.
    pub release: ResolvedRelease,
    /// What the digests do not cover (an unverified root image, annotations).
    pub warnings: Vec<String>,
}

/// The outcome for one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derived {
    /// Launches to register.
    Launches(Box<ClassLaunches>),
    /// The file is not an SEV launch this agent registers (a plain VM, another
    /// hypervisor, a mode not configured).
    Skipped {
        /// The runtime class, when the file name gives one.
        runtime_class: Option<String>,
        /// Why.
        reason: String,
    },
}

/// Why a configuration gave no launches.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    /// The file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The file is not a usable Kata configuration (names file, line and key).
    #[error(transparent)]
    Config(Box<KataError>),
    /// The Kata release the file belongs to cannot be told.
    #[error("{}: {cause}", path.display())]
    Release {
        /// The configuration.
        path: PathBuf,
        /// Why.
        cause: ReleaseError,
    },
    /// Kata would not launch an SEV guest from it (names file, line and key).
    #[error(transparent)]
    Plan(Box<PlanError>),
    /// An artefact it names cannot be used.
    #[error("{at}: {cause}")]
    Artefact {
        /// File, line and key that name the artefact.
        at: Box<kata_launch::Location>,
        /// What is wrong with the file.
        cause: Box<CacheError>,
    },
    /// The configuration is open for writing: it is read once closed.
    #[error("{} is being written", path.display())]
    BeingWritten {
        /// The configuration.
        path: PathBuf,
    },
    /// The launch cannot be measured.
    #[error("{}: {cause}", path.display())]
    Measure {
        /// The configuration.
        path: PathBuf,
        /// Why.
        cause: String,
    },
}

impl Derived {
    /// Records the SHA-256 of the configuration text the launches came from.
    pub fn with_text(self, text: &str) -> Derived {
        match self {
            Derived::Launches(mut c) => {
                use sha2::Digest as _;
                c.config_sha256 = sha2::Sha256::digest(text.as_bytes()).into();
                Derived::Launches(c)
            }
            skipped => skipped,
        }
    }
}

impl From<KataError> for DeriveError {
    fn from(e: KataError) -> Self {
        DeriveError::Config(Box::new(e))
    }
}

impl From<PlanError> for DeriveError {
    fn from(e: PlanError) -> Self {
        DeriveError::Plan(Box::new(e))
    }
}

impl DeriveError {
    /// Whether the error may go away by itself (a file caught while being
    /// written), so the previous result stands without being reported as broken.
    pub fn is_transient(&self) -> bool {
        matches!(self, DeriveError::BeingWritten { .. })
            || matches!(
                self,
                DeriveError::Artefact { cause, .. } if matches!(
                    **cause,
                    CacheError::Changed { .. }
                        | CacheError::BeingWritten { .. }
                        | CacheError::Artefact(ArtefactError::Stopped { .. })
                )
            )
    }
}

/// Paths a configuration depends on: the file itself and the artefacts it
/// names, whatever the outcome, so that fixing any of them is noticed.
pub fn artefact_paths(config: &KataConfig) -> Vec<PathBuf> {
    config.artefacts().into_iter().map(|a| a.path).collect()
}

/// The pod CPU counts to derive launches for.
fn pod_cpu_counts(config: &KataConfig, agent: &AgentConfig, host: &HostFacts) -> Vec<u32> {
    if let Some(list) = &agent.launches.pod_cpus {
        let mut v = list.clone();
        v.sort_unstable();
        v.dedup();
        return v;
    }
    if !config.runtime.static_sandbox_resource_mgmt.value {
        return vec![0];
    }
    let max = agent
        .launches
        .max_pod_cpus
        .or(host.host_cpus)
        .unwrap_or(1)
        .min(kata_launch::MAX_VCPUS);
    (0..=max).collect()
}

/// Hashes every artefact not yet cached, in parallel (kernel and initrd are
/// independent), before the launches are measured one after the other.
fn warm(config: &KataConfig, cache: &mut ArtefactCache) {
    let mut todo = Vec::new();
    if !cache.is_fresh(ArtefactKind::Kernel, &config.qemu.kernel.value) {
        todo.push((ArtefactKind::Kernel, config.qemu.kernel.value.clone()));
    }
    if let Some(i) = &config.qemu.initrd.value {
        if !cache.is_fresh(ArtefactKind::Initrd, i) {
            todo.push((ArtefactKind::Initrd, i.clone()));
        }
    }
    if todo.len() < 2 {
        return; // one file: hashed in place, no thread needed
    }
    if todo
        .iter()
        .any(|(kind, path)| cache.check_not_busy(*kind, path).is_err())
    {
        return; // the sequential pass reports it
    }
    let control = cache.control().clone();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .iter()
            .map(|(kind, path)| {
                let control = &control;
                s.spawn(move || (path, hash_uncached(*kind, path, control)))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for (path, result) in results {
        // Errors are reported by the sequential pass, with their key and line.
        if let Ok((key, hash)) = result {
            cache.insert_hash(path, key, hash);
        }
    }
}

/// Derives the launches of the configuration at `path`, whose text is `text`.
pub fn derive(
    path: &Path,
    text: &str,
    agent: &AgentConfig,
    host: &HostFacts,
    cache: &mut ArtefactCache,
) -> Result<(KataConfig, Derived), DeriveError> {
    let config = KataConfig::parse(path, text)?;
    let release = crate::kata_release::ReleaseProbe::new(agent.kata_release())
        .resolve(path)
        .map_err(|cause| DeriveError::Release {
            path: path.to_path_buf(),
            cause,
        })?;
    let derived = derive_parsed(&config, agent, host, cache, &release)?.with_text(text);
    Ok((config, derived))
}

/// The configured annotation values to derive extra launches for (those the
/// configuration does not let through are left out by the measurement).
pub fn annotations(agent: &AgentConfig) -> Vec<Annotation> {
    let a = &agent.launches.annotations;
    a.default_vcpus
        .iter()
        .map(|v| Annotation::DefaultVcpus(*v))
        .chain(
            a.kernel_params
                .iter()
                .cloned()
                .map(Annotation::KernelParams),
        )
        .chain(
            a.kernel_verity_params
                .iter()
                .cloned()
                .map(Annotation::KernelVerityParams),
        )
        .collect()
}

/// What the digests of `config` under `release` do not pin down, and a release
/// that was only assumed: an SNP file of Kata 3.19 or later derived as CC-0.8.0
/// gives digests no guest of that node will show.
fn warnings(config: &KataConfig, release: &ResolvedRelease) -> Vec<String> {
    let mut out = Vec::new();
    if release.source == crate::kata_release::ReleaseSource::Assumed {
        out.push(format!(
            "the Kata release was not found (no {} beside the configuration), so {} was \
             assumed; if this node runs Kata 3.19 or later these digests are wrong: set \
             launches.kata_version",
            crate::kata_release::SHIM,
            release.release
        ));
    }
    out.extend(kata_launch::unmeasured(config, release.release));
    out
}

/// As [`derive`], for a configuration already parsed, under `release`.
pub fn derive_parsed(
    config: &KataConfig,
    agent: &AgentConfig,
    host: &HostFacts,
    cache: &mut ArtefactCache,
    release: &ResolvedRelease,
) -> Result<Derived, DeriveError> {
    let first_ctx = LaunchContext {
        fips: host.fips,
        host_cpus: host.host_cpus,
        release: release.release,
        ..LaunchContext::default()
    };
    let first = match plan(config, &first_ctx) {
        Ok(p) => p,
        Err(PlanError::NotConfidential { .. }) => {
            return Ok(Derived::Skipped {
                runtime_class: Some(config.runtime_class.clone()),
                reason: "not a confidential guest".into(),
            })
        }
        Err(PlanError::NotSnp { .. }) => {
            return Ok(Derived::Skipped {
                runtime_class: Some(config.runtime_class.clone()),
                reason: format!(
                    "not an SEV-SNP guest (Kata {} attests AMD guests only as SNP)",
                    release.release
                ),
            })
        }
        Err(e) => return Err(e.into()),
    };
    if !agent.mode_allowed(first.mode) {
        return Ok(Derived::Skipped {
            runtime_class: Some(config.runtime_class.clone()),
            reason: format!("{} launches are not in launches.modes", first.mode),
        });
    }
    let artefact_err = |key: &str, cause| {
        let line = config
            .artefacts()
            .into_iter()
            .find(|a| a.key == key)
            .and_then(|a| a.line);
        DeriveError::Artefact {
            at: Box::new(config.qemu_key(key, line)),
            cause: Box::new(cause),
        }
    };
    warm(config, cache);
    let firmware = cache
        .firmware(&first.firmware)
        .map_err(|e| artefact_err("firmware", e))?;
    let kernel_sha256 = cache
        .sha256(ArtefactKind::Kernel, &first.kernel)
        .map_err(|e| artefact_err("kernel", e))?;
    let initrd_sha256 = match &first.initrd {
        Some(i) => Some(
            cache
                .sha256(ArtefactKind::Initrd, i)
                .map_err(|e| artefact_err("initrd", e))?,
        ),
        None => None,
    };
    let hashes = BootHashes {
        kernel: kernel_sha256,
        initrd: initrd_sha256,
    };
    let pod_cpus = pod_cpu_counts(config, agent, host);
    let annotations = annotations(agent);
    let request = ClassRequest {
        release: release.release,
        pod_cpus: &pod_cpus,
        annotations: &annotations,
    };
    let facts = host.node_facts();
    let measured = measure_class(config, &request, &facts, &hashes, firmware.image()).map_err(
        |e| match e {
            MeasureLaunchError::Plan(p) => DeriveError::Plan(p),
            MeasureLaunchError::Measure(m) => artefact_err("firmware", firmware.measure_error(m)),
            MeasureLaunchError::NoHostSignature { mode } => DeriveError::Measure {
                path: config.path.clone(),
                cause: format!(
                    "an {mode} guest runs with -cpu host, so its digest depends on the host \
                     CPU, which is not an AMD CPU here; set launches.host_cpu_signature"
                ),
            },
            MeasureLaunchError::UnknownCpuModel(name) => DeriveError::Measure {
                path: config.path.clone(),
                cause: format!("unknown vCPU model {name:?}"),
            },
        },
    )?;
    let refused = measured.refused;
    let launches = measured
        .launches
        .into_iter()
        .map(|m| {
            let p = m.plan;
            DerivedLaunch {
                pod_cpus: m.pod_cpus,
                mode: p.mode.name(),
                policy: p.policy,
                firmware: p.firmware.clone(),
                kernel: p.kernel.clone(),
                initrd: p.initrd.clone(),
                cpu: p.cpu_arg(),
                smp: p.smp_arg(),
                cmdline: p.cmdline,
                vcpus: p.vcpus,
                vcpu_sig: m.vcpu_sig.map(|s| s.to_string()),
                kernel_hashes: p.kernel_hashes,
                annotation: m.annotation,
                guest_features: m.guest_features.map(|f| format!("{f:#x}")),
                digest: m.digest.to_hex(),
                digest_bytes: m.digest.as_bytes().to_vec(),
                sev_mode: p.mode,
            }
        })
        .collect();
    Ok(Derived::Launches(Box::new(ClassLaunches {
        runtime_class: config.runtime_class.clone(),
        config: config.path.clone(),
        launches,
        kernel_sha256,
        initrd_sha256,
        firmware_sha256: firmware.image().sha256(),
        config_sha256: [0; 32],
        release: release.clone(),
        warnings: warnings(config, release)
            .into_iter()
            .chain(refused)
            .collect(),
    })))
}

/// Reads and derives; the error names the file when it cannot be read.
pub fn derive_file(
    path: &Path,
    agent: &AgentConfig,
    host: &HostFacts,
    cache: &mut ArtefactCache,
) -> Result<(KataConfig, Derived), DeriveError> {
    let text = crate::artefacts::read_config_text(path).map_err(|cause| DeriveError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    derive(path, &text, agent, host, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts {
            host_sig: Some(VcpuSignature(0x00a0_0f11)),
            fips: false,
            host_cpus: Some(2),
            ..HostFacts::for_kernel(None, None)
        }
    }

    #[test]
    fn sample_configuration_gives_one_launch_per_pod_cpu_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample_artefacts::write_sample(dir.path()).unwrap();
        let agent = AgentConfig::default();
        let mut cache = ArtefactCache::new();
        let (_, d) = derive_file(&s.config, &agent, &host(), &mut cache).unwrap();
        let Derived::Launches(c) = d else {
            panic!("{d:?}")
        };
        assert_eq!(c.runtime_class, "kata-qemu-sev");
        let counts: Vec<u32> = c.launches.iter().map(|l| l.pod_cpus).collect();
        assert_eq!(counts, [0, 1, 2]);
        let mut digests: Vec<&str> = c.launches.iter().map(|l| l.digest.as_str()).collect();
        digests.dedup();
        assert_eq!(digests.len(), 3, "nr_cpus differs, so the digests do");

        // The same as `host-agent digests` computes without any cache.
        let args = crate::digests_cmd::DigestsArgs {
            host_cpu_sig: Some(0x00a0_0f11),
            fips: Some(false),
            json: true,
            ..crate::digests_cmd::DigestsArgs::new(vec![s.config.clone()], vec![0, 1, 2])
        };
        let want: Vec<String> = crate::digests_cmd::reports(&args)
            .unwrap()
            .into_iter()
            .map(|r| r.digest)
            .collect();
        let got: Vec<String> = c.launches.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(got, want);

        // A second pass reads nothing again.
        let before = cache.stats().misses;
        derive_file(&s.config, &agent, &host(), &mut cache).unwrap();
        assert_eq!(cache.stats().misses, before);
    }

    #[test]
    fn plain_vm_is_skipped_and_bad_artefact_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample_artefacts::write_sample(dir.path()).unwrap();
        let text = std::fs::read_to_string(&s.config).unwrap();
        let agent = AgentConfig::default();
        let mut cache = ArtefactCache::new();
        let plain = text.replace("confidential_guest = true", "confidential_guest = false");
        let (_, d) = derive(&s.config, &plain, &agent, &host(), &mut cache).unwrap();
        assert!(matches!(d, Derived::Skipped { .. }), "{d:?}");

        std::fs::remove_file(&s.initrd).unwrap();
        let e = derive(&s.config, &text, &agent, &host(), &mut cache).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("hypervisor.qemu.initrd"), "{msg}");
        assert!(!e.is_transient());
    }

    /// The sample as an SNP guest of Kata 4.1 that lets pods set `extra` annotations.
    fn snp_sample(dir: &Path, extra: &str) -> (PathBuf, String) {
        let s = sample_artefacts::write_sample(dir).unwrap();
        let text = std::fs::read_to_string(&s.config).unwrap().replace(
            "sev_snp_guest = false",
            &format!("sev_snp_guest = true\n{extra}"),
        );
        let path = dir.join("configuration-qemu-snp.toml");
        std::fs::write(&path, &text).unwrap();
        (path, text)
    }

    fn launches_of(path: &Path, text: &str, agent: &AgentConfig) -> Vec<DerivedLaunch> {
        let release = ResolvedRelease {
            release: "4.1.0".parse().unwrap(),
            source: crate::kata_release::ReleaseSource::Configured,
        };
        let config = KataConfig::parse(path, text).unwrap();
        let mut cache = ArtefactCache::new();
        match derive_parsed(&config, agent, &host(), &mut cache, &release).unwrap() {
            Derived::Launches(c) => c.launches,
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn configured_annotation_values_give_launches_of_their_own_where_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, text) = snp_sample(
            dir.path(),
            "enable_annotations = [\"default_vcpus\", \"kernel_params\"]",
        );
        let mut agent = AgentConfig::default();
        agent.launches.pod_cpus = Some(vec![0, 1]);
        agent.launches.annotations.default_vcpus = vec![1.5];
        agent.launches.annotations.kernel_params = vec!["agent.log=debug".into()];
        // Not allowed by enable_annotations, so not derived.
        agent.launches.annotations.kernel_verity_params = vec![
            "root_hash=ab,salt=cd,data_blocks=8,data_block_size=4096,hash_block_size=4096".into(),
        ];
        let got = launches_of(&path, &text, &agent);
        let shape: Vec<(Option<&str>, u32, u32)> = got
            .iter()
            .map(|l| (l.annotation.as_deref(), l.pod_cpus, l.vcpus))
            .collect();
        assert_eq!(
            shape,
            [
                (None, 0, 1),
                (None, 1, 2),
                (Some("default_vcpus=1.5"), 0, 2),
                (Some("default_vcpus=1.5"), 1, 3),
                (Some("kernel_params=agent.log=debug"), 0, 1),
                (Some("kernel_params=agent.log=debug"), 1, 2),
            ]
        );
        // An annotation launch is the launch of a file that says the same:
        // default_vcpus 1.5 boots as default_vcpus 2 (4.1 writes no nr_cpus), and
        // the kernel_params annotation lands where the file's own would.
        let plain = AgentConfig {
            launches: crate::agent::config::LaunchesConfig {
                pod_cpus: Some(vec![0]),
                ..Default::default()
            },
            ..AgentConfig::default()
        };
        let two = launches_of(
            &path,
            &text.replace("default_vcpus = 1", "default_vcpus = 2"),
            &plain,
        );
        assert_eq!(two[0].digest, got[2].digest);
        // More than the host's 2 CPUs: Kata refuses such a pod, so that value
        // gives no launch, says why, and the rest still registers.
        let mut greedy = agent.clone();
        greedy.launches.annotations.default_vcpus = vec![3.0];
        let config = KataConfig::parse(&path, &text).unwrap();
        let release = ResolvedRelease {
            release: "4.1.0".parse().unwrap(),
            source: crate::kata_release::ReleaseSource::Configured,
        };
        let Derived::Launches(c) = derive_parsed(
            &config,
            &greedy,
            &host(),
            &mut ArtefactCache::new(),
            &release,
        )
        .unwrap() else {
            panic!("no launches")
        };
        assert_eq!(c.launches.len(), 4, "plain and kernel_params launches stay");
        assert!(c
            .launches
            .iter()
            .all(|l| l.annotation.as_deref() != Some("default_vcpus=3")));
        let e = c.warnings.join("\n");
        assert!(
            e.contains("annotation default_vcpus=3 is not registered")
                && e.contains("default_vcpus annotation 3"),
            "{e}"
        );
        let debug = launches_of(
            &path,
            &text.replace(
                "agent.enable_signature_verification=false\"",
                "agent.enable_signature_verification=false agent.log=debug\"",
            ),
            &plain,
        );
        assert_eq!(debug[0].cmdline, got[4].cmdline);
        assert_eq!(debug[0].digest, got[4].digest);
        // And the 2-vCPU guest is one launch however its vCPUs were asked for.
        assert_eq!(got[1].digest, got[2].digest);
        let digests: std::collections::BTreeSet<&str> =
            got.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(digests.len(), 5);

        // Without enable_annotations nothing extra is derived.
        let (path, text) = snp_sample(&dir.path().join("closed"), "");
        assert_eq!(launches_of(&path, &text, &agent).len(), 2);
    }

    #[test]
    fn the_host_kernel_shapes_upstream_snp_launches_only() {
        let old = HostFacts::for_kernel(Some((KernelRelease::parse("6.6").unwrap(), true)), None);
        assert_eq!(old.snp_guest_features, 0x21);
        assert_eq!(old.vmsa_fpu, VmsaFpu::Zero);
        let sig = VcpuSignature(0x0080_0f12);
        let up = old.shape(2, sig, "4.1.0".parse().unwrap());
        assert_eq!((up.guest_features, up.fpu), (0x21, VmsaFpu::Zero));
        // The CC builds' QEMU keeps what they were always registered with.
        let cc = old.shape(2, sig, "CC-0.8.0".parse().unwrap());
        assert_eq!((cc.guest_features, cc.fpu), (0x1, VmsaFpu::Reset));
        let configured = HostFacts::for_kernel(None, Some(0x5));
        assert_eq!(configured.snp_guest_features, 0x5);
        assert!(configured.snp_vmsa_summary().contains("0x5 (configured)"));
        assert!(configured.snp_vmsa_summary().contains("unknown"));
    }
}
