//! Registration by inputs: what a node may register is what the operator
//! approved.
//!
//! A node tells what it runs for one runtime class (the SHA-256 of its Kata
//! configuration, firmware, kernel and initrd, the Kata release, the host's CPU
//! signature and kernel, the pod CPU limits and annotation values) together
//! with the launches it computed. The broker accepts only approved inputs,
//! derives the launches itself from the approved configuration text and
//! firmware image with the launch model the agent uses
//! ([`kata_launch::measure_class`]), refuses when the node's launches differ
//! from its own (naming what differs), and registers its own result. A
//! compromised node can then register only launches the operator's approvals
//! produce: it may lie about its inputs, but only to pick among approved ones.

use crate::credentials::Caller;
use crate::store::{ApprovalRow, DigestRecord, Store, StoreError};
use kata_launch::{
    measure_class, Annotation, BootHashes, ClassRequest, CpuModel, KataConfig, KataRelease,
    LaunchContext, MeasuredLaunch, NodeFacts, PlanError,
};
use kbs_proto::kbsadmin::{ApproveRequest, LaunchInputs, NodeLaunch};
use serde::{Deserialize, Serialize};
use sev_core::host_kernel::KernelRelease;
use sev_core::{FirmwareImage, SevMode, VcpuSignature};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tonic::Status;

/// Kinds of approval.
pub const FIRMWARE: &str = "firmware";
/// A kernel, by SHA-256.
pub const KERNEL: &str = "kernel";
/// An initrd, by SHA-256.
pub const INITRD: &str = "initrd";
/// A Kata configuration's text, per runtime class.
pub const KATA_CONFIG: &str = "kata-config";
/// A host CPU signature, for `-cpu host` guests.
pub const HOST_CPU: &str = "host-cpu";
/// A host kernel release, whose SNP VMSAs Kata 3.19 and later measure.
pub const HOST_KERNEL: &str = "host-kernel";
/// Every kind, in the order they are listed.
pub const KINDS: [&str; 6] = [FIRMWARE, KERNEL, INITRD, KATA_CONFIG, HOST_CPU, HOST_KERNEL];

/// Largest firmware image approved (as the host agent reads).
pub const MAX_FIRMWARE: usize = 64 << 20;
/// Largest Kata configuration approved.
pub const MAX_KATA_CONFIG: usize = 1 << 20;
/// Largest pod CPU limit.
pub const MAX_POD_CPUS: u32 = kata_launch::MAX_VCPUS;
/// Most annotation values per configuration.
pub const MAX_ANNOTATIONS: usize = 64;

/// Who may register which digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RegistrationMode {
    /// Nodes register only launches the broker derives from approved inputs.
    #[default]
    Approved,
    /// Any node credential registers whatever digests it sends, for its own
    /// node (labs only).
    Open,
}

impl RegistrationMode {
    /// `approved` or `open`.
    pub fn name(self) -> &'static str {
        match self {
            RegistrationMode::Approved => "approved",
            RegistrationMode::Open => "open",
        }
    }
}

/// What an approved Kata configuration allows besides its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KataConfigTerms {
    /// Kata releases that may launch it.
    pub kata_versions: Vec<String>,
    /// Smallest pod CPU limit.
    pub min_pod_cpus: u32,
    /// Largest pod CPU limit.
    pub max_pod_cpus: u32,
    /// Annotation values allowed to have launches of their own.
    pub annotations: Vec<String>,
}

/// What an approved host kernel allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostKernelTerms {
    /// SEV features of SNP VMSAs, when not what the kernel release sets.
    pub snp_guest_features: Option<u64>,
}

/// An artefact's approval terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtefactTerms {
    /// Its size, when the broker saw the file.
    pub size: Option<u64>,
}

/// One input a registration named that no approval covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unapproved {
    /// The approval kind (or `pod-cpus`, `annotation`, `kata-version`, terms of
    /// a Kata configuration).
    pub kind: String,
    /// The value: hash, signature, release, count or label.
    pub id: String,
    /// The `kbs admin approve` command that would approve it.
    pub approve: String,
}

/// Why a registration is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A field is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Inputs the operator has not approved.
    #[error("{}", unapproved_message(.0))]
    Unapproved(Vec<Unapproved>),
    /// The node's launches differ from the broker's.
    #[error("{0}")]
    Differs(String),
    /// The broker's own derivation failed (an approval the launch model now refuses).
    #[error("the approved inputs give no launch: {0}")]
    Derive(String),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn unapproved_message(list: &[Unapproved]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|u| format!("{} {} (approve with: {})", u.kind, u.id, u.approve))
        .collect();
    format!("not approved: {}", items.join("; "))
}

impl RegisterError {
    /// The gRPC status: refusals are FAILED_PRECONDITION, with the unapproved
    /// inputs also as JSON in the details; storage failures are INTERNAL.
    pub fn into_status(self) -> Status {
        match self {
            RegisterError::Invalid(m) => Status::invalid_argument(m),
            RegisterError::Unapproved(list) => {
                let details = serde_json::json!({ "unapproved": list }).to_string();
                Status::with_details(
                    tonic::Code::FailedPrecondition,
                    unapproved_message(&list),
                    details.into_bytes().into(),
                )
            }
            RegisterError::Differs(m) => Status::failed_precondition(m),
            RegisterError::Store(e @ StoreError::InputRevoked { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            RegisterError::Derive(m) => {
                Status::failed_precondition(format!("the approved inputs give no launch: {m}"))
            }
            RegisterError::Store(e) => {
                tracing::error!(error = %e, "admin: storage failure");
                Status::internal("internal error")
            }
        }
    }
}

/// Firmware images of approvals, parsed once, with their measurements started.
#[derive(Debug, Default)]
pub struct FirmwareImages {
    map: Mutex<HashMap<String, Arc<FirmwareImage>>>,
}

impl FirmwareImages {
    /// The approved image of SHA-256 `id`, if it is approved.
    pub fn get(
        &self,
        store: &Store,
        id: &str,
    ) -> Result<Option<Arc<FirmwareImage>>, RegisterError> {
        if let Some(fw) = self.map.lock().ok().and_then(|m| m.get(id).cloned()) {
            // The image is its SHA-256's forever; its approval is not, and
            // may be revoked through another broker on the same database.
            if store.approval(FIRMWARE, id, "")?.is_some() {
                return Ok(Some(fw));
            }
            self.forget(id);
            return Ok(None);
        }
        let Some(bytes) = store.approval_data(FIRMWARE, id, "")? else {
            return Ok(None);
        };
        let fw = FirmwareImage::new(bytes)
            .map_err(|e| RegisterError::Derive(format!("approved firmware {id}: {e}")))?;
        let fw = Arc::new(fw);
        if let Ok(mut m) = self.map.lock() {
            m.insert(id.to_string(), Arc::clone(&fw));
        }
        Ok(Some(fw))
    }

    /// Forgets an image whose approval went.
    pub fn forget(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }
}

/// Lowercase hexadecimal SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    crate::store::hex(&Sha256::digest(data))
}

/// Checks a SHA-256 given as hexadecimal; returns it lowercase.
pub fn check_sha256(field: &str, text: &str) -> Result<String, String> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "{field}: expected a SHA-256 as 64 hexadecimal digits"
        ))
    }
}

/// Reads a CPUID signature (`0x00a00f11` or `a00f11`) into its canonical form.
pub fn parse_cpu_signature(text: &str) -> Option<VcpuSignature> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if hex.is_empty() || hex.len() > 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(VcpuSignature)
}

/// Reads a configuration approved for `class`. The runtime class of an
/// approved text is the one it was approved for, whatever file it came from.
pub fn parse_approved(class: &str, text: &str) -> Result<KataConfig, String> {
    let stem = class.strip_prefix("kata-").unwrap_or(class);
    let stem = if !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        stem
    } else {
        "approved"
    };
    let path = PathBuf::from(format!("approved/configuration-{stem}.toml"));
    let mut config = KataConfig::parse(&path, text).map_err(|e| e.to_string())?;
    config.runtime_class = class.to_string();
    Ok(config)
}

fn terms<T: serde::de::DeserializeOwned>(row: &ApprovalRow) -> Result<T, RegisterError> {
    serde_json::from_str(&row.terms).map_err(|_| {
        RegisterError::Store(StoreError::Corrupt {
            db: "approvals".into(),
            what: "approval terms",
        })
    })
}

/// Validates an approval request from `caller` into what is stored.
pub fn prepare_approval(
    r: &ApproveRequest,
    caller: &Caller,
) -> Result<(ApprovalRow, Option<Vec<u8>>), Status> {
    let bad = |m: String| Status::invalid_argument(m);
    crate::admin::check_text("note", &r.note, crate::admin::MAX_CONFIG)?;
    let row = |kind: &str, id: String, class: &str, terms: String| ApprovalRow {
        kind: kind.to_string(),
        id,
        runtime_class: class.to_string(),
        terms,
        approved_by: caller.name.clone(),
        approved_at: 0,
        note: r.note.clone(),
    };
    let json = |v: serde_json::Value| v.to_string();
    match r.kind.as_str() {
        FIRMWARE => {
            if r.data.is_empty() || r.data.len() > MAX_FIRMWARE {
                return Err(bad(format!(
                    "data: a firmware approval uploads the image (1 byte to {MAX_FIRMWARE})"
                )));
            }
            let fw = FirmwareImage::new(r.data.clone())
                .map_err(|e| bad(format!("data: not a usable firmware image: {e}")))?;
            let id = crate::store::hex(&fw.sha256());
            if !r.id.is_empty() && check_sha256("id", &r.id).map_err(bad)? != id {
                return Err(bad(format!("id: the image's SHA-256 is {id}")));
            }
            let size = u64::try_from(r.data.len()).ok();
            Ok((
                row(
                    FIRMWARE,
                    id,
                    "",
                    json(serde_json::json!(ArtefactTerms { size })),
                ),
                Some(r.data.clone()),
            ))
        }
        KERNEL | INITRD => {
            let (id, size) = if r.data.is_empty() {
                (check_sha256("id", &r.id).map_err(bad)?, None)
            } else {
                (sha256_hex(&r.data), u64::try_from(r.data.len()).ok())
            };
            Ok((
                row(
                    &r.kind,
                    id,
                    "",
                    json(serde_json::json!(ArtefactTerms { size })),
                ),
                None,
            ))
        }
        KATA_CONFIG => {
            crate::admin::check_id("runtime_class", &r.runtime_class)?;
            if r.data.is_empty() || r.data.len() > MAX_KATA_CONFIG {
                return Err(bad(format!(
                    "data: a kata-config approval sends the configuration's text (1 byte to {MAX_KATA_CONFIG})"
                )));
            }
            let text = std::str::from_utf8(&r.data)
                .map_err(|_| bad("data: the configuration is not UTF-8".into()))?;
            let config =
                parse_approved(&r.runtime_class, text).map_err(|e| bad(format!("data: {e}")))?;
            let versions = if r.kata_versions.is_empty() {
                vec![KataRelease::default().to_string()]
            } else {
                r.kata_versions.clone()
            };
            let mut releases = Vec::new();
            for (i, v) in versions.iter().enumerate() {
                let release: KataRelease = v
                    .parse()
                    .map_err(|e| bad(format!("kata_versions[{i}]: {e}")))?;
                let ctx = LaunchContext {
                    release,
                    ..LaunchContext::default()
                };
                match kata_launch::plan(&config, &ctx) {
                    Ok(_) => {}
                    Err(PlanError::NotConfidential { .. }) => {
                        return Err(bad(
                            "data: not a confidential guest: there is no launch to approve".into(),
                        ))
                    }
                    Err(e) => return Err(bad(format!("data (Kata {release}): {e}"))),
                }
                releases.push(release.to_string());
            }
            let max = if r.max_pod_cpus == 0 {
                MAX_POD_CPUS
            } else {
                r.max_pod_cpus
            };
            if r.min_pod_cpus > max || max > MAX_POD_CPUS {
                return Err(bad(format!(
                    "pod CPUs: expected MIN <= MAX <= {MAX_POD_CPUS}, got {}-{max}",
                    r.min_pod_cpus
                )));
            }
            if r.annotations.len() > MAX_ANNOTATIONS {
                return Err(bad(format!("annotations: at most {MAX_ANNOTATIONS}")));
            }
            let mut annotations = Vec::new();
            for (i, a) in r.annotations.iter().enumerate() {
                crate::admin::check_text(
                    &format!("annotations[{i}]"),
                    a,
                    crate::admin::MAX_CONFIG,
                )?;
                let parsed =
                    Annotation::parse(a).map_err(|e| bad(format!("annotations[{i}]: {e}")))?;
                annotations.push(parsed.label());
            }
            let t = KataConfigTerms {
                kata_versions: releases,
                min_pod_cpus: r.min_pod_cpus,
                max_pod_cpus: max,
                annotations,
            };
            Ok((
                row(
                    KATA_CONFIG,
                    sha256_hex(&r.data),
                    &r.runtime_class,
                    json(serde_json::json!(t)),
                ),
                Some(r.data.clone()),
            ))
        }
        HOST_CPU => {
            let sig = parse_cpu_signature(&r.id).ok_or_else(|| {
                bad(format!(
                    "id: {:?} is not a CPUID signature such as 0x00a00f11",
                    r.id
                ))
            })?;
            Ok((
                row(HOST_CPU, format!("{:#010x}", sig.0), "", "{}".into()),
                None,
            ))
        }
        HOST_KERNEL => {
            let k = KernelRelease::parse(&r.id).ok_or_else(|| {
                bad(format!(
                    "id: {:?} is not a kernel release such as 6.8",
                    r.id
                ))
            })?;
            let t = HostKernelTerms {
                snp_guest_features: (r.snp_guest_features != 0).then_some(r.snp_guest_features),
            };
            Ok((
                row(HOST_KERNEL, k.to_string(), "", json(serde_json::json!(t))),
                None,
            ))
        }
        other => Err(bad(format!(
            "kind: {other:?} is not one of {}",
            KINDS.join(", ")
        ))),
    }
}

/// What an approval allows, in words, for listings.
pub fn describe(row: &ApprovalRow) -> String {
    match row.kind.as_str() {
        KATA_CONFIG => match serde_json::from_str::<KataConfigTerms>(&row.terms) {
            Ok(t) => {
                let mut s = format!(
                    "runtime class {}; Kata {}; pod CPUs {}-{}",
                    row.runtime_class,
                    t.kata_versions.join(", "),
                    t.min_pod_cpus,
                    t.max_pod_cpus
                );
                if !t.annotations.is_empty() {
                    s.push_str(&format!("; annotations {}", t.annotations.join(", ")));
                }
                s
            }
            Err(_) => "unreadable terms".into(),
        },
        HOST_KERNEL => match serde_json::from_str::<HostKernelTerms>(&row.terms) {
            Ok(HostKernelTerms {
                snp_guest_features: Some(f),
            }) => format!("SNP guest features {f:#x}"),
            Ok(_) => KernelRelease::parse(&row.id).map_or_else(String::new, |k| {
                format!("SNP guest features {:#x}", k.snp_guest_features())
            }),
            Err(_) => "unreadable terms".into(),
        },
        FIRMWARE | KERNEL | INITRD => match serde_json::from_str::<ArtefactTerms>(&row.terms) {
            Ok(ArtefactTerms { size: Some(n) }) => format!("{n} bytes"),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

/// A registration the broker derived: the digests to store and the approvals
/// they came from.
#[derive(Debug, Clone)]
pub struct Derivation {
    /// Digest bytes and records.
    pub digests: Vec<(Vec<u8>, DigestRecord)>,
    /// (kind, id) of every approval used; a Kata configuration as
    /// `class:id`.
    pub inputs: Vec<(String, String)>,
}

/// Validated inputs of a registration.
struct Checked {
    class: String,
    config_id: String,
    firmware: String,
    kernel: String,
    initrd: Option<String>,
    release: KataRelease,
    host_sig: Option<VcpuSignature>,
    host_kernel: Option<KernelRelease>,
    pod_cpus: Vec<u32>,
    annotations: Vec<Annotation>,
}

fn check_inputs(i: &LaunchInputs) -> Result<Checked, RegisterError> {
    let bad = RegisterError::Invalid;
    crate::admin::check_id("inputs.runtime_class", &i.runtime_class)
        .map_err(|s| bad(s.message().to_string()))?;
    let sha = |f: &str, v: &str| check_sha256(&format!("inputs.{f}"), v).map_err(bad);
    let release: KataRelease = i
        .kata_version
        .parse()
        .map_err(|e| bad(format!("inputs.kata_version: {e}")))?;
    let host_sig = if i.host_cpu_signature.is_empty() {
        None
    } else {
        Some(parse_cpu_signature(&i.host_cpu_signature).ok_or_else(|| {
            bad(format!(
                "inputs.host_cpu_signature: {:?} is not a CPUID signature",
                i.host_cpu_signature
            ))
        })?)
    };
    let host_kernel = if i.host_kernel.is_empty() {
        None
    } else {
        Some(KernelRelease::parse(&i.host_kernel).ok_or_else(|| {
            bad(format!(
                "inputs.host_kernel: {:?} is not a kernel release",
                i.host_kernel
            ))
        })?)
    };
    if i.pod_cpus.is_empty() || i.pod_cpus.len() > crate::admin::MAX_DIGESTS {
        return Err(bad(format!(
            "inputs.pod_cpus: 1 to {} pod CPU limits",
            crate::admin::MAX_DIGESTS
        )));
    }
    let mut pod_cpus = i.pod_cpus.clone();
    pod_cpus.sort_unstable();
    pod_cpus.dedup();
    if i.annotations.len() > MAX_ANNOTATIONS {
        return Err(bad(format!(
            "inputs.annotations: at most {MAX_ANNOTATIONS}"
        )));
    }
    let annotations = i
        .annotations
        .iter()
        .enumerate()
        .map(|(n, a)| {
            Annotation::parse(a).map_err(|e| bad(format!("inputs.annotations[{n}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Checked {
        class: i.runtime_class.clone(),
        config_id: sha("kata_config_sha256", &i.kata_config_sha256)?,
        firmware: sha("firmware_sha256", &i.firmware_sha256)?,
        kernel: sha("kernel_sha256", &i.kernel_sha256)?,
        initrd: if i.initrd_sha256.is_empty() {
            None
        } else {
            Some(sha("initrd_sha256", &i.initrd_sha256)?)
        },
        release,
        host_sig,
        host_kernel,
        pod_cpus,
        annotations,
    })
}

/// The key a launch is matched by: pod CPU limit and annotation.
type LaunchKey = (u32, String);

fn shorten(s: &str) -> String {
    const MAX: usize = 400;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", s.get(..end).unwrap_or_default())
}

fn label(key: &LaunchKey) -> String {
    if key.1.is_empty() {
        format!("pod CPUs {}", key.0)
    } else {
        format!("pod CPUs {}, annotation {}", key.0, key.1)
    }
}

/// Compares the node's launches with the broker's; the first difference, by
/// the part that differs.
fn compare(
    ours: &BTreeMap<LaunchKey, &MeasuredLaunch>,
    theirs: &[NodeLaunch],
) -> Result<(), RegisterError> {
    let mut seen = BTreeMap::new();
    for (n, l) in theirs.iter().enumerate() {
        let key = (l.pod_cpus, l.annotation.clone());
        if seen.insert(key.clone(), n).is_some() {
            return Err(RegisterError::Invalid(format!(
                "launches[{n}]: a second launch for {}",
                label(&key)
            )));
        }
        let Some(m) = ours.get(&key) else {
            return Err(RegisterError::Differs(format!(
                "launches[{n}] ({}): the approved inputs give no such launch",
                label(&key)
            )));
        };
        let d = l
            .digest
            .as_ref()
            .ok_or_else(|| RegisterError::Invalid(format!("launches[{n}].digest: missing")))?;
        let differs = |part: &str, broker: String, node: String| {
            Err(RegisterError::Differs(format!(
                "launches[{n}] ({}): {part} differs: the approved inputs give {:?}, the node {:?}",
                label(&key),
                shorten(&broker),
                shorten(&node)
            )))
        };
        if d.mode != m.plan.mode.name() {
            return differs("mode", m.plan.mode.name().into(), d.mode.clone());
        }
        if l.cmdline != m.plan.cmdline {
            return differs("command line", m.plan.cmdline.clone(), l.cmdline.clone());
        }
        if d.vcpus != m.plan.vcpus {
            return differs("vCPUs", m.plan.vcpus.to_string(), d.vcpus.to_string());
        }
        let cpu = m.plan.cpu_arg();
        let sig = m.vcpu_sig.map(|s| s.to_string()).unwrap_or_default();
        if l.cpu != cpu || d.vcpu_type != sig {
            return differs(
                "CPU type",
                format!("{cpu} (signature {sig})"),
                format!("{} (signature {})", l.cpu, d.vcpu_type),
            );
        }
        if d.digest != m.digest.as_bytes() {
            return differs(
                "launch digest (same command line, vCPUs and CPU type: the firmware, kernel or \
                 initrd measured are not the approved ones named, or the VMSA differs)",
                m.digest.to_hex(),
                crate::store::hex(&d.digest),
            );
        }
    }
    if let Some(key) = ours.keys().find(|k| !seen.contains_key(*k)) {
        return Err(RegisterError::Differs(format!(
            "the approved inputs give a launch for {} that the node did not send",
            label(key)
        )));
    }
    Ok(())
}

/// Checks a registration against the approvals, derives its launches from
/// them, compares them with the node's, and returns what to register.
pub fn derive(
    store: &Store,
    images: &FirmwareImages,
    inputs: &LaunchInputs,
    launches: &[NodeLaunch],
) -> Result<Derivation, RegisterError> {
    let c = check_inputs(inputs)?;
    let mut missing = Vec::new();
    let mut note = |kind: &str, id: String, approve: String| {
        missing.push(Unapproved {
            kind: kind.into(),
            id,
            approve,
        })
    };
    let config_row = store.approval(KATA_CONFIG, &c.config_id, &c.class)?;
    let terms_of: Option<KataConfigTerms> = config_row.as_ref().map(terms).transpose()?;
    match &terms_of {
        None => note(
            KATA_CONFIG,
            c.config_id.clone(),
            format!(
                "kbs admin approve kata-config FILE --runtime-class {} --kata-version {}",
                c.class, c.release
            ),
        ),
        Some(t) => {
            if !t.kata_versions.iter().any(|v| v == &c.release.to_string()) {
                note(
                    "kata-version",
                    c.release.to_string(),
                    format!(
                        "kbs admin approve kata-config FILE --runtime-class {} --kata-version {} \
                         (approved for {})",
                        c.class,
                        c.release,
                        t.kata_versions.join(", ")
                    ),
                );
            }
            for &n in &c.pod_cpus {
                if n < t.min_pod_cpus || n > t.max_pod_cpus {
                    note(
                        "pod-cpus",
                        n.to_string(),
                        format!(
                            "kbs admin approve kata-config FILE --runtime-class {} --pod-cpus MIN-MAX \
                             (approved for {}-{})",
                            c.class, t.min_pod_cpus, t.max_pod_cpus
                        ),
                    );
                }
            }
            for a in &c.annotations {
                let l = a.label();
                if !t.annotations.contains(&l) {
                    note(
                        "annotation",
                        l.clone(),
                        format!(
                            "kbs admin approve kata-config FILE --runtime-class {} --annotation '{l}'",
                            c.class
                        ),
                    );
                }
            }
        }
    }
    let firmware = images.get(store, &c.firmware)?;
    if firmware.is_none() {
        note(
            FIRMWARE,
            c.firmware.clone(),
            "kbs admin approve firmware FILE".into(),
        );
    }
    for (kind, id) in [(KERNEL, Some(&c.kernel)), (INITRD, c.initrd.as_ref())] {
        if let Some(id) = id {
            if store.approval(kind, id, "")?.is_none() {
                note(kind, id.clone(), format!("kbs admin approve {kind} FILE"));
            }
        }
    }
    // The host's CPU and kernel, as the node's own launches say they matter,
    // so that an operator sees every input to approve at once; whether they
    // really matter is decided again below, from the approved configuration.
    let claims = |pred: &dyn Fn(&NodeLaunch, &str) -> bool| {
        launches
            .iter()
            .any(|l| l.digest.as_ref().is_some_and(|d| pred(l, &d.mode)))
    };
    if let Some(sig) = c.host_sig {
        let id = format!("{:#010x}", sig.0);
        let host_cpu = claims(&|l, mode| mode != "sev" && l.cpu.split(',').next() == Some("host"));
        if host_cpu && store.approval(HOST_CPU, &id, "")?.is_none() {
            note(
                HOST_CPU,
                id.clone(),
                format!("kbs admin approve host-cpu {id}"),
            );
        }
    }
    if let Some(k) = c.host_kernel.filter(|_| !c.release.is_cc()) {
        let id = k.to_string();
        if claims(&|_, mode| mode == "snp") && store.approval(HOST_KERNEL, &id, "")?.is_none() {
            note(
                HOST_KERNEL,
                id.clone(),
                format!("kbs admin approve host-kernel {id}"),
            );
        }
    }
    let (Some(config_row), Some(_), Some(firmware), true) =
        (config_row, terms_of, firmware, missing.is_empty())
    else {
        return Err(RegisterError::Unapproved(missing));
    };
    let text = store
        .approval_data(KATA_CONFIG, &config_row.id, &c.class)?
        .unwrap_or_default();
    let text = String::from_utf8(text)
        .map_err(|_| RegisterError::Derive("the approved configuration is not UTF-8".into()))?;
    let config = parse_approved(&c.class, &text).map_err(RegisterError::Derive)?;

    let mut used = vec![
        (
            KATA_CONFIG.to_string(),
            format!("{}:{}", c.class, c.config_id),
        ),
        (FIRMWARE.to_string(), c.firmware.clone()),
        (KERNEL.to_string(), c.kernel.clone()),
    ];
    if let Some(i) = &c.initrd {
        used.push((INITRD.to_string(), i.clone()));
    }
    // What the plan needs of the host: its CPU signature only for -cpu host
    // guests with VMSAs, its kernel only for SNP launches of Kata 3.19 and
    // later. Each is an approved input where it counts.
    let first = kata_launch::plan(
        &config,
        &LaunchContext {
            release: c.release,
            fips: inputs.fips,
            host_cpus: (inputs.host_cpus > 0).then_some(inputs.host_cpus),
            ..LaunchContext::default()
        },
    )
    .map_err(|e| RegisterError::Derive(e.to_string()))?;
    let mut facts = NodeFacts {
        fips: inputs.fips,
        host_cpus: (inputs.host_cpus > 0).then_some(inputs.host_cpus),
        host_sig: None,
        snp_guest_features: sev_core::host_kernel::SNP_ACTIVE,
        vmsa_fpu: Default::default(),
    };
    if first.cpu_model == CpuModel::Host && first.mode != SevMode::Sev {
        match c.host_sig {
            None => {
                return Err(RegisterError::Invalid(format!(
                    "inputs.host_cpu_signature: an {} guest runs with -cpu host; the node must say its CPU signature",
                    first.mode
                )))
            }
            Some(sig) => {
                let id = format!("{:#010x}", sig.0);
                if store.approval(HOST_CPU, &id, "")?.is_none() {
                    return Err(RegisterError::Unapproved(vec![Unapproved {
                        kind: HOST_CPU.into(),
                        id: id.clone(),
                        approve: format!("kbs admin approve host-cpu {id}"),
                    }]));
                }
                facts.host_sig = Some(sig);
                used.push((HOST_CPU.to_string(), id));
            }
        }
    }
    if first.mode == SevMode::Snp && !c.release.is_cc() {
        let Some(k) = c.host_kernel else {
            return Err(RegisterError::Invalid(
                "inputs.host_kernel: SNP launches of Kata 3.19 and later depend on the host \
                 kernel; the node must say its release"
                    .into(),
            ));
        };
        let id = k.to_string();
        let Some(row) = store.approval(HOST_KERNEL, &id, "")? else {
            return Err(RegisterError::Unapproved(vec![Unapproved {
                kind: HOST_KERNEL.into(),
                id: id.clone(),
                approve: format!("kbs admin approve host-kernel {id}"),
            }]));
        };
        let t: HostKernelTerms = terms(&row)?;
        facts.snp_guest_features = t
            .snp_guest_features
            .unwrap_or_else(|| k.snp_guest_features());
        facts.vmsa_fpu = k.vmsa_fpu();
        if inputs.snp_guest_features != facts.snp_guest_features {
            return Err(RegisterError::Differs(format!(
                "SNP guest features differ: the approved host kernel {id} gives {:#x}, the node {:#x}",
                facts.snp_guest_features, inputs.snp_guest_features
            )));
        }
        used.push((HOST_KERNEL.to_string(), id));
    }
    let hashes = BootHashes {
        kernel: hex32(&c.kernel)?,
        initrd: c.initrd.as_deref().map(hex32).transpose()?,
    };
    let request = ClassRequest {
        release: c.release,
        pod_cpus: &c.pod_cpus,
        annotations: &c.annotations,
    };
    let measured = measure_class(&config, &request, &facts, &hashes, &firmware)
        .map_err(|e| RegisterError::Derive(e.to_string()))?;
    let ours: BTreeMap<LaunchKey, &MeasuredLaunch> = measured
        .launches
        .iter()
        .map(|m| ((m.pod_cpus, m.annotation.clone().unwrap_or_default()), m))
        .collect();
    compare(&ours, launches)?;
    let short = c.config_id.get(..12).unwrap_or_default();
    let digests = measured
        .launches
        .iter()
        .map(|m| {
            let node_text = launches
                .iter()
                .find(|l| {
                    l.pod_cpus == m.pod_cpus
                        && l.annotation == m.annotation.clone().unwrap_or_default()
                })
                .and_then(|l| l.digest.as_ref())
                .map(|d| d.config.as_str())
                .unwrap_or_default();
            let mut config = format!(
                "derived from approved inputs: {} kata-config {short} (pod CPUs {}; Kata {}",
                c.class, m.pod_cpus, c.release
            );
            if let Some(a) = &m.annotation {
                config.push_str(&format!("; annotation {a}"));
            }
            config.push(')');
            if !node_text.is_empty() {
                config.push_str("\nnode: ");
                config.push_str(node_text);
            }
            let config = shorten_to(&config, crate::admin::MAX_CONFIG);
            (
                m.digest.as_bytes().to_vec(),
                DigestRecord {
                    mode: m.plan.mode.name().to_string(),
                    digest: m.digest.to_hex(),
                    vcpus: m.plan.vcpus,
                    vcpu_type: m.vcpu_sig.map(|s| s.to_string()).unwrap_or_default(),
                    config,
                },
            )
        })
        .collect();
    Ok(Derivation {
        digests,
        inputs: used,
    })
}

fn shorten_to(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

fn hex32(text: &str) -> Result<[u8; 32], RegisterError> {
    hex::decode(text)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| RegisterError::Invalid(format!("{text:?} is not a SHA-256")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Role;
    use kbs_proto::kbsadmin::Digest;

    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        images: FirmwareImages,
        text: String,
        firmware: Vec<u8>,
        kernel: Vec<u8>,
        initrd: Vec<u8>,
    }

    fn operator() -> Caller {
        Caller {
            role: Role::Operator,
            name: "uid 0".into(),
        }
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let s = sample_artefacts::write_sample(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        Rig {
            text: std::fs::read_to_string(&s.config).unwrap(),
            firmware: std::fs::read(&s.firmware).unwrap(),
            kernel: std::fs::read(&s.kernel).unwrap(),
            initrd: std::fs::read(&s.initrd).unwrap(),
            store,
            images: FirmwareImages::default(),
            _dir: dir,
        }
    }

    fn approve(r: &Rig, req: ApproveRequest) {
        let (row, data) = prepare_approval(&req, &operator()).unwrap();
        r.store.approve(&row, data.as_deref()).unwrap();
    }

    fn approve_all(r: &Rig) {
        approve(
            r,
            ApproveRequest {
                kind: KATA_CONFIG.into(),
                data: r.text.clone().into_bytes(),
                runtime_class: "kata-qemu-sev".into(),
                max_pod_cpus: 4,
                ..Default::default()
            },
        );
        approve(
            r,
            ApproveRequest {
                kind: FIRMWARE.into(),
                data: r.firmware.clone(),
                ..Default::default()
            },
        );
        for (kind, data) in [(KERNEL, &r.kernel), (INITRD, &r.initrd)] {
            approve(
                r,
                ApproveRequest {
                    kind: kind.into(),
                    id: sha256_hex(data),
                    ..Default::default()
                },
            );
        }
    }

    fn inputs(r: &Rig, pod_cpus: Vec<u32>) -> LaunchInputs {
        LaunchInputs {
            runtime_class: "kata-qemu-sev".into(),
            kata_config_sha256: sha256_hex(r.text.as_bytes()),
            firmware_sha256: sha256_hex(&r.firmware),
            kernel_sha256: sha256_hex(&r.kernel),
            initrd_sha256: sha256_hex(&r.initrd),
            kata_version: "CC-0.8.0".into(),
            host_cpu_signature: "0x00a00f11".into(),
            host_cpus: 8,
            pod_cpus,
            ..Default::default()
        }
    }

    /// The launches a node running these files computes.
    fn node_launches(r: &Rig, i: &LaunchInputs) -> Vec<NodeLaunch> {
        let config =
            KataConfig::parse(std::path::Path::new("configuration-qemu-sev.toml"), &r.text)
                .unwrap();
        let fw = FirmwareImage::new(r.firmware.clone()).unwrap();
        let facts = NodeFacts {
            host_cpus: Some(8),
            host_sig: Some(VcpuSignature(0x00a0_0f11)),
            ..NodeFacts::default()
        };
        let hashes = BootHashes {
            kernel: Sha256::digest(&r.kernel).into(),
            initrd: Some(Sha256::digest(&r.initrd).into()),
        };
        let req = ClassRequest {
            release: KataRelease::default(),
            pod_cpus: &i.pod_cpus,
            annotations: &[],
        };
        measure_class(&config, &req, &facts, &hashes, &fw)
            .unwrap()
            .launches
            .into_iter()
            .map(|m| NodeLaunch {
                pod_cpus: m.pod_cpus,
                annotation: String::new(),
                cpu: m.plan.cpu_arg(),
                digest: Some(Digest {
                    mode: m.plan.mode.name().into(),
                    digest: m.digest.as_bytes().to_vec(),
                    vcpus: m.plan.vcpus,
                    vcpu_type: m.vcpu_sig.map(|s| s.to_string()).unwrap_or_default(),
                    config: "node text".into(),
                }),
                cmdline: m.plan.cmdline,
            })
            .collect()
    }

    #[test]
    fn unapproved_inputs_are_named_each_with_its_command() {
        let r = rig();
        let i = inputs(&r, vec![0, 1]);
        let e = derive(&r.store, &r.images, &i, &node_launches(&r, &i)).unwrap_err();
        let RegisterError::Unapproved(list) = e else {
            panic!("{e}")
        };
        let kinds: Vec<&str> = list.iter().map(|u| u.kind.as_str()).collect();
        assert_eq!(kinds, [KATA_CONFIG, FIRMWARE, KERNEL, INITRD]);
        assert_eq!(list[2].id, sha256_hex(&r.kernel));
        assert!(list[0].approve.contains("--runtime-class kata-qemu-sev"));
        let status = RegisterError::Unapproved(list).into_status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let details: serde_json::Value = serde_json::from_slice(status.details()).unwrap();
        assert_eq!(details["unapproved"][3]["kind"], "initrd");
    }

    #[test]
    fn approved_inputs_give_the_nodes_launches_and_nothing_else() {
        let r = rig();
        approve_all(&r);
        let i = inputs(&r, vec![0, 1, 2]);
        let launches = node_launches(&r, &i);
        // -cpu host SEV-ES needs the host CPU approved; plain SEV does not.
        let d = derive(&r.store, &r.images, &i, &launches).unwrap();
        assert_eq!(d.digests.len(), 3);
        for (l, (bytes, rec)) in launches.iter().zip(&d.digests) {
            assert_eq!(&l.digest.as_ref().unwrap().digest, bytes);
            assert!(rec.config.starts_with("derived from approved inputs"));
            assert!(rec.config.ends_with("node: node text"));
        }
        assert!(d.inputs.contains(&(
            KATA_CONFIG.to_string(),
            format!("kata-qemu-sev:{}", i.kata_config_sha256)
        )));

        // A command line the approved configuration cannot produce.
        let mut tampered = launches.clone();
        tampered[1].cmdline.push_str(" init=/bin/sh");
        let e = derive(&r.store, &r.images, &i, &tampered).unwrap_err();
        assert!(
            matches!(&e, RegisterError::Differs(m) if m.contains("command line differs")),
            "{e}"
        );
        // A digest of other files under the approved names.
        let mut other = launches.clone();
        if let Some(d) = other[0].digest.as_mut() {
            d.digest[0] ^= 1;
        }
        let e = derive(&r.store, &r.images, &i, &other).unwrap_err();
        assert!(e.to_string().contains("launch digest"), "{e}");
        // More vCPUs than the node claims.
        let mut vcpus = launches.clone();
        if let Some(d) = vcpus[0].digest.as_mut() {
            d.vcpus += 1;
        }
        assert!(derive(&r.store, &r.images, &i, &vcpus)
            .unwrap_err()
            .to_string()
            .contains("vCPUs differs"));
        // A launch the node hides, and one it adds.
        let e = derive(&r.store, &r.images, &i, &launches[..2]).unwrap_err();
        assert!(e.to_string().contains("did not send"), "{e}");
        // Pod CPU limits beyond the approved range.
        let wide = inputs(&r, vec![0, 9]);
        let e = derive(&r.store, &r.images, &wide, &node_launches(&r, &wide)).unwrap_err();
        assert!(
            matches!(&e, RegisterError::Unapproved(l) if l[0].kind == "pod-cpus" && l[0].id == "9"),
            "{e}"
        );
        // Another Kata release than approved.
        let mut newer = inputs(&r, vec![0]);
        newer.kata_version = "CC-0.7.0".into();
        let e = derive(&r.store, &r.images, &newer, &node_launches(&r, &newer)).unwrap_err();
        assert!(
            matches!(&e, RegisterError::Unapproved(l) if l[0].kind == "kata-version"),
            "{e}"
        );
    }

    #[test]
    fn approvals_are_validated_before_they_are_kept() {
        let bad = |req: ApproveRequest| prepare_approval(&req, &operator()).unwrap_err();
        let e = bad(ApproveRequest {
            kind: "bios".into(),
            ..Default::default()
        });
        assert!(e.message().starts_with("kind:"), "{}", e.message());
        let e = bad(ApproveRequest {
            kind: KERNEL.into(),
            id: "abc".into(),
            ..Default::default()
        });
        assert!(e.message().starts_with("id:"));
        let e = bad(ApproveRequest {
            kind: KATA_CONFIG.into(),
            runtime_class: "kata-qemu".into(),
            data:
                b"[hypervisor.qemu]\nconfidential_guest = false\nkernel = \"/k\"\ninitrd = \"/i\"\n"
                    .to_vec(),
            ..Default::default()
        });
        assert!(
            e.message().contains("not a confidential guest"),
            "{}",
            e.message()
        );
        let e = bad(ApproveRequest {
            kind: KATA_CONFIG.into(),
            runtime_class: "kata-qemu".into(),
            data: b"[hypervisor.qemu\n".to_vec(),
            ..Default::default()
        });
        assert!(e.message().starts_with("data:"), "{}", e.message());
        let e = bad(ApproveRequest {
            kind: FIRMWARE.into(),
            ..Default::default()
        });
        assert!(e.message().starts_with("data:"));
        let (row, _) = prepare_approval(
            &ApproveRequest {
                kind: HOST_CPU.into(),
                id: "A00F11".into(),
                ..Default::default()
            },
            &operator(),
        )
        .unwrap();
        assert_eq!(row.id, "0x00a00f11");
        assert_eq!(row.approved_by, "uid 0");
        let (row, _) = prepare_approval(
            &ApproveRequest {
                kind: HOST_KERNEL.into(),
                id: "6.8.0-45-generic".into(),
                ..Default::default()
            },
            &operator(),
        )
        .unwrap();
        assert_eq!(row.id, "6.8");
        assert!(describe(&row).contains("guest features"));
    }
}
