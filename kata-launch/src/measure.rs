//! The launches one configuration yields for a set of pod shapes, and their
//! launch digests: the step from a [`LaunchPlan`] to what the PSP measures.
//!
//! The host agent and the key broker both call [`measure_class`], the agent
//! over the files it hashed and the broker over the artefacts an operator
//! approved, so that a digest the broker registers is the agent's by
//! construction and a difference between the two can only come from their
//! inputs. Pure: the firmware is in memory, the kernel and initrd are their
//! SHA-256 digests.

use crate::launch::{CpuModel, LaunchContext, LaunchPlan, PlanError};
use crate::{measured_annotations, plan, KataConfig, KataRelease};
use sev_core::hashes::{cmdline_digest, empty_digest};
use sev_core::vcpu::vcpu_type_signature;
use sev_core::{
    FirmwareImage, KernelHashes, LaunchDigest, MeasureError, SevMode, VcpuSignature, VmShape,
    VmmType, VmsaFpu,
};

/// What the node contributes to a launch besides the configuration and the
/// artefacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// The host runs in FIPS mode (`fips=1` on the command line).
    pub fips: bool,
    /// The host's CPU count, when known.
    pub host_cpus: Option<u32>,
    /// CPUID signature of the host CPU, which `-cpu host` guests (SEV-ES)
    /// carry in their VMSAs.
    pub host_sig: Option<VcpuSignature>,
    /// SEV features the host kernel puts into SNP VMSAs (upstream releases;
    /// the CC builds' QEMU always measured 0x1).
    pub snp_guest_features: u64,
    /// x87/SSE state the host kernel puts into the VMSAs (upstream releases).
    pub vmsa_fpu: VmsaFpu,
}

impl NodeFacts {
    /// The VM shape of a launch of `release` with `vcpus` vCPUs of signature
    /// `sig`. The upstream releases' QEMU creates its guests with
    /// KVM_SEV_INIT2, so what the host kernel puts into the VMSAs counts; the
    /// CC builds' QEMU predates it and keeps guest features 0x1 and the reset
    /// x87/SSE state.
    pub fn shape(&self, vcpus: u32, sig: VcpuSignature, release: KataRelease) -> VmShape {
        let (guest_features, fpu) = if release.is_cc() {
            (sev_core::host_kernel::SNP_ACTIVE, VmsaFpu::Reset)
        } else {
            (self.snp_guest_features, self.vmsa_fpu)
        };
        VmShape {
            vcpus,
            vcpu_sig: sig,
            guest_features,
            vmm: VmmType::Qemu,
            fpu,
        }
    }
}

/// A pod annotation Kata lets through to the launch, with its value.
#[derive(Debug, Clone, PartialEq)]
pub enum Annotation {
    /// `io.katacontainers.config.hypervisor.default_vcpus`.
    DefaultVcpus(f32),
    /// `io.katacontainers.config.hypervisor.kernel_params`.
    KernelParams(String),
    /// `io.katacontainers.config.hypervisor.kernel_verity_params`.
    KernelVerityParams(String),
}

impl Annotation {
    /// The annotation's short name, as `enable_annotations` lists it.
    pub fn name(&self) -> &'static str {
        match self {
            Annotation::DefaultVcpus(_) => "default_vcpus",
            Annotation::KernelParams(_) => "kernel_params",
            Annotation::KernelVerityParams(_) => "kernel_verity_params",
        }
    }

    /// `name=value`, the form launches are labelled with.
    pub fn label(&self) -> String {
        match self {
            Annotation::DefaultVcpus(v) => format!("default_vcpus={v}"),
            Annotation::KernelParams(v) => format!("kernel_params={v}"),
            Annotation::KernelVerityParams(v) => format!("kernel_verity_params={v}"),
        }
    }

    /// Reads `name=value` (a label).
    pub fn parse(label: &str) -> Result<Annotation, String> {
        let (name, value) = label
            .split_once('=')
            .ok_or_else(|| format!("{label:?}: expected NAME=VALUE"))?;
        match name {
            "default_vcpus" => value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Annotation::DefaultVcpus)
                .ok_or_else(|| format!("{label:?}: default_vcpus is a number")),
            "kernel_params" => Ok(Annotation::KernelParams(value.to_string())),
            "kernel_verity_params" => Ok(Annotation::KernelVerityParams(value.to_string())),
            _ => Err(format!(
                "{label:?}: expected default_vcpus, kernel_params or kernel_verity_params"
            )),
        }
    }

    fn context(&self) -> LaunchContext {
        match self {
            Annotation::DefaultVcpus(v) => LaunchContext {
                default_vcpus_annotation: Some(*v),
                ..LaunchContext::default()
            },
            Annotation::KernelParams(v) => LaunchContext {
                kernel_params_annotation: Some(v.clone()),
                ..LaunchContext::default()
            },
            Annotation::KernelVerityParams(v) => LaunchContext {
                kernel_verity_params_annotation: Some(v.clone()),
                ..LaunchContext::default()
            },
        }
    }
}

/// The launches to measure: which release builds them, for which pod CPU
/// limits, and which annotation values besides the file's own launches.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassRequest<'a> {
    /// The Kata release.
    pub release: KataRelease,
    /// Pod CPU limits (0: none).
    pub pod_cpus: &'a [u32],
    /// Annotation values, each measured for every pod CPU limit where the
    /// configuration lets it through; others are left out.
    pub annotations: &'a [Annotation],
}

/// SHA-256 of the kernel and initrd QEMU boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootHashes {
    /// The kernel.
    pub kernel: [u8; 32],
    /// The initrd, if any.
    pub initrd: Option<[u8; 32]>,
}

/// One measured launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredLaunch {
    /// The pod CPU limit.
    pub pod_cpus: u32,
    /// The annotation it is for (`default_vcpus=2`), if any.
    pub annotation: Option<String>,
    /// What QEMU is given.
    pub plan: LaunchPlan,
    /// The vCPU signature in the VMSAs (SEV-ES, SNP).
    pub vcpu_sig: Option<VcpuSignature>,
    /// The VMSA SEV features measured (SNP).
    pub guest_features: Option<u64>,
    /// The launch digest.
    pub digest: LaunchDigest,
}

/// Everything measured for one configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeasuredClass {
    /// The launches, the file's own first, then per annotation value.
    pub launches: Vec<MeasuredLaunch>,
    /// Annotation values Kata would refuse on this node, each with why.
    pub refused: Vec<String>,
}

/// Why the launches of a configuration cannot be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureLaunchError {
    /// Kata would not start the guest (names file, key and line).
    #[error(transparent)]
    Plan(Box<PlanError>),
    /// A `-cpu host` guest whose VMSAs carry a signature nobody gave.
    #[error(
        "an {mode} guest runs with -cpu host, so its digest depends on the host CPU, \
         whose signature is not known"
    )]
    NoHostSignature {
        /// The mode.
        mode: SevMode,
    },
    /// A named vCPU model this crate has no signature for.
    #[error("unknown vCPU model {0:?}")]
    UnknownCpuModel(String),
    /// The firmware cannot measure the launch.
    #[error(transparent)]
    Measure(#[from] MeasureError),
}

impl From<PlanError> for MeasureLaunchError {
    fn from(e: PlanError) -> Self {
        MeasureLaunchError::Plan(Box::new(e))
    }
}

/// The vCPU signature the VMSAs of `plan` carry, if any.
pub fn vcpu_signature(
    plan: &LaunchPlan,
    facts: &NodeFacts,
) -> Result<Option<VcpuSignature>, MeasureLaunchError> {
    if plan.mode == SevMode::Sev {
        return Ok(None);
    }
    match &plan.cpu_model {
        CpuModel::Host => facts
            .host_sig
            .map(Some)
            .ok_or(MeasureLaunchError::NoHostSignature { mode: plan.mode }),
        CpuModel::Named(name) => vcpu_type_signature(name)
            .map(Some)
            .ok_or_else(|| MeasureLaunchError::UnknownCpuModel(name.clone())),
    }
}

/// Measures one planned launch.
pub fn measure_plan(
    plan: &LaunchPlan,
    facts: &NodeFacts,
    hashes: &BootHashes,
    firmware: &FirmwareImage,
) -> Result<(Option<VcpuSignature>, VmShape, LaunchDigest), MeasureLaunchError> {
    let sig = vcpu_signature(plan, facts)?;
    let shape = facts.shape(plan.vcpus, sig.unwrap_or(VcpuSignature(0)), plan.release);
    let table = KernelHashes {
        kernel: hashes.kernel,
        initrd: hashes.initrd.unwrap_or_else(empty_digest),
        cmdline: cmdline_digest(plan.cmdline.as_bytes()),
    };
    let digest = firmware.digest(plan.mode, plan.kernel_hashes.then_some(&table), &shape)?;
    Ok((sig, shape, digest))
}

/// Plans and measures the file's own launch for every pod CPU limit of
/// `request`, then each annotation value the configuration lets through. A
/// plan Kata refuses is an error for the file's own launches; for an
/// annotation value it ends that value's launches at the first pod CPU limit
/// Kata refuses (larger pods are refused too), and [`MeasuredClass::refused`]
/// says why.
pub fn measure_class(
    config: &KataConfig,
    request: &ClassRequest<'_>,
    facts: &NodeFacts,
    hashes: &BootHashes,
    firmware: &FirmwareImage,
) -> Result<MeasuredClass, MeasureLaunchError> {
    let allowed = measured_annotations(config, request.release);
    let mut contexts: Vec<(Option<String>, LaunchContext)> = vec![(None, LaunchContext::default())];
    contexts.extend(
        request
            .annotations
            .iter()
            .filter(|a| allowed.contains(&a.name()))
            .map(|a| (Some(a.label()), a.context())),
    );
    let mut out = MeasuredClass::default();
    'contexts: for (annotation, base) in &contexts {
        for &pod_cpus in request.pod_cpus {
            let ctx = LaunchContext {
                pod_cpus,
                fips: facts.fips,
                host_cpus: facts.host_cpus,
                release: request.release,
                ..base.clone()
            };
            let p = match (plan(config, &ctx), annotation) {
                (Ok(p), _) => p,
                (Err(e), Some(label)) => {
                    out.refused
                        .push(format!("annotation {label} is not registered: {e}"));
                    continue 'contexts;
                }
                (Err(e), None) => return Err(e.into()),
            };
            let (sig, shape, digest) = measure_plan(&p, facts, hashes, firmware)?;
            out.launches.push(MeasuredLaunch {
                pod_cpus,
                annotation: annotation.clone(),
                guest_features: (p.mode == SevMode::Snp).then_some(shape.guest_features),
                plan: p,
                vcpu_sig: sig,
                digest,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_labels_read_back() {
        for label in [
            "default_vcpus=1.5",
            "kernel_params=agent.log=debug",
            "kernel_verity_params=root_hash=ab",
        ] {
            assert_eq!(Annotation::parse(label).unwrap().label(), label);
        }
        assert!(Annotation::parse("default_vcpus=x").is_err());
        assert!(Annotation::parse("default_vcpus=NaN").is_err());
        assert!(Annotation::parse("default_memory=2048").is_err());
        assert!(Annotation::parse("kernel_params").is_err());
    }
}
