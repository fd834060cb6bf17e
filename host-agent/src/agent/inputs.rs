//! What the agent sends the key broker for one runtime class: the digests it
//! derived, and the inputs they came from, so that the broker can check each
//! input against the operator's approvals and derive the same launches itself
//! (`kbsadmin.RegisterLaunches`). When the broker refuses unapproved inputs,
//! [`approve_hints`] turns its answer into the `kbs admin approve` commands an
//! operator would run, with this node's file paths.

use super::derive::{ClassLaunches, HostFacts};
use crate::platform::PlatformTcb;
use kbs_proto::kbsadmin::{Digest, LaunchInputs, NodeLaunch};
use sev_core::SevMode;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// One class as the broker should hold it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassRegistration {
    /// The digests (what the broker's listing is compared with).
    pub digests: Vec<Digest>,
    /// The inputs of the launches; `None` for a removal.
    pub inputs: Option<LaunchInputs>,
    /// The launches with their command lines and CPU arguments.
    pub launches: Vec<NodeLaunch>,
    /// The files the inputs were read from, by approval kind.
    pub files: Vec<(String, PathBuf)>,
    /// The platform's TCB, sent with SNP launches.
    pub platform: Option<kbs_proto::kbsadmin::PlatformTcb>,
}

impl ClassRegistration {
    /// Nothing to register: the class's digests are to be removed.
    pub fn removal() -> ClassRegistration {
        ClassRegistration::default()
    }

    /// Whether this removes the class.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// The digests the broker gets for a class. Each says where it came from: the
/// file, the pod shape, the Kata release, and for SNP the platform's TCB, which
/// Trustee's reference values for the same launch need beside the digest.
pub fn digests_of(c: &ClassLaunches, platform: Option<&PlatformTcb>) -> Vec<Digest> {
    c.launches
        .iter()
        .map(|l| {
            let mut config = format!(
                "{} (pod CPUs {}; Kata {})",
                c.config.display(),
                l.pod_cpus,
                c.release.release
            );
            if let Some(a) = &l.annotation {
                config.push_str(&format!("; annotation {a}"));
            }
            if let (Some(tcb), SevMode::Snp) = (platform, l.sev_mode) {
                config.push_str(&format!("; platform {tcb}"));
            }
            Digest {
                mode: l.mode.to_string(),
                digest: l.digest_bytes.clone(),
                vcpus: l.vcpus,
                vcpu_type: l.vcpu_sig.clone().unwrap_or_default(),
                config,
            }
        })
        .collect()
}

/// Everything the broker needs to register `c` by its inputs; `platform` is
/// the platform's TCB, sent when `c` has SNP launches.
pub fn registration_of(
    c: &ClassLaunches,
    host: &HostFacts,
    platform: Option<&PlatformTcb>,
) -> ClassRegistration {
    let digests = digests_of(c, platform);
    let launches: Vec<NodeLaunch> = c
        .launches
        .iter()
        .zip(&digests)
        .map(|(l, d)| NodeLaunch {
            pod_cpus: l.pod_cpus,
            annotation: l.annotation.clone().unwrap_or_default(),
            cmdline: l.cmdline.clone(),
            cpu: l.cpu.clone(),
            digest: Some(d.clone()),
        })
        .collect();
    let pod_cpus: BTreeSet<u32> = c.launches.iter().map(|l| l.pod_cpus).collect();
    let annotations: BTreeSet<String> = c
        .launches
        .iter()
        .filter_map(|l| l.annotation.clone())
        .collect();
    let first = c.launches.first();
    let mut files = vec![("kata-config".to_string(), c.config.clone())];
    if let Some(l) = first {
        files.push(("firmware".into(), l.firmware.clone()));
        files.push(("kernel".into(), l.kernel.clone()));
        if let Some(i) = &l.initrd {
            files.push(("initrd".into(), i.clone()));
        }
    }
    let inputs = LaunchInputs {
        runtime_class: c.runtime_class.clone(),
        kata_config_sha256: hex::encode(c.config_sha256),
        firmware_sha256: hex::encode(c.firmware_sha256),
        kernel_sha256: hex::encode(c.kernel_sha256),
        initrd_sha256: c.initrd_sha256.map(hex::encode).unwrap_or_default(),
        kata_version: c.release.release.to_string(),
        host_cpu_signature: host
            .host_sig
            .map(|s| format!("{:#010x}", s.0))
            .unwrap_or_default(),
        host_cpus: host.host_cpus.unwrap_or(0),
        fips: host.fips,
        host_kernel: host.kernel.map(|(k, _)| k.to_string()).unwrap_or_default(),
        snp_guest_features: host.snp_guest_features,
        pod_cpus: pod_cpus.into_iter().collect(),
        annotations: annotations.into_iter().collect(),
    };
    let has_snp = c.launches.iter().any(|l| l.sev_mode == SevMode::Snp);
    ClassRegistration {
        digests,
        inputs: Some(inputs),
        launches,
        files,
        platform: platform
            .filter(|_| has_snp)
            .map(|t| kbs_proto::kbsadmin::PlatformTcb {
                bootloader: u32::from(t.bootloader),
                tee: u32::from(t.tee),
                snp: u32::from(t.snp),
                microcode: u32::from(t.microcode),
                product: t.product.clone(),
            }),
    }
}

/// An input a broker refused as not approved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct UnapprovedInput {
    /// firmware, kernel, initrd, kata-config, host-cpu or host-kernel.
    pub kind: String,
    /// Its hash, signature or release.
    pub id: String,
    /// The broker's advice: the command that approves it.
    pub approve: String,
}

/// The unapproved inputs of a refusal, from its JSON details
/// (`{"unapproved":[{"kind","id","approve"}]}`); empty for any other answer.
pub fn unapproved(details: &[u8]) -> Vec<UnapprovedInput> {
    #[derive(serde::Deserialize)]
    struct Details {
        unapproved: Vec<UnapprovedInput>,
    }
    serde_json::from_slice::<Details>(details)
        .map(|d| d.unapproved)
        .unwrap_or_default()
}

/// The `kbs admin approve` commands for the inputs a broker refused, from
/// the details of its answer: a file of this node where the kind is one, else
/// the broker's own advice.
pub fn approve_hints(details: &[u8], reg: &ClassRegistration) -> Vec<String> {
    let class = reg
        .inputs
        .as_ref()
        .map(|i| i.runtime_class.clone())
        .unwrap_or_default();
    let version = reg
        .inputs
        .as_ref()
        .map(|i| i.kata_version.clone())
        .unwrap_or_default();
    let annotations: String = reg
        .inputs
        .iter()
        .flat_map(|i| &i.annotations)
        .map(|a| format!(" --annotation {a}"))
        .collect();
    unapproved(details)
        .into_iter()
        .map(|item| {
            let file = reg
                .files
                .iter()
                .find(|(k, _)| *k == item.kind)
                .map(|(_, p)| p.display().to_string());
            let command = match (item.kind.as_str(), file) {
                ("kata-config", Some(f)) => format!(
                    "kbs admin approve kata-config {f} --runtime-class {class} --kata-version {version}{annotations}"
                ),
                ("firmware" | "kernel" | "initrd", Some(f)) => {
                    format!("kbs admin approve {} {f}", item.kind)
                }
                _ => item.approve,
            };
            format!("{command}  # {} {}", item.kind, item.id)
        })
        .collect()
}
