//! What the agent knows and has done, as `/status` serves it and `host-agent
//! status` prints it: per runtime class the launch it derived, the digests,
//! when they were registered and the last error.

use super::derive::DerivedLaunch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a runtime class stands with the key broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassState {
    /// The broker holds exactly the derived digests.
    Registered,
    /// Derived, not yet registered (the broker is unreachable, or a call is on its way).
    Pending,
    /// The configuration file is gone; its digests stay registered for a grace period.
    Stale,
    /// The configuration is broken; the last good digests stay registered.
    Error,
}

/// One runtime class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStatus {
    /// The configuration file.
    pub config: PathBuf,
    /// See [`ClassState`].
    pub state: ClassState,
    /// The launches last derived successfully (what is or will be registered).
    #[serde(default)]
    pub launches: Vec<LaunchView>,
    /// When they were derived (Unix seconds).
    pub derived_at: Option<u64>,
    /// When the broker last accepted them (Unix seconds).
    pub registered_at: Option<u64>,
    /// Distinct digests the broker holds for the class after that call.
    pub registered_digests: Option<u32>,
    /// Why the configuration gives no launches now (file, line, key).
    pub config_error: Option<String>,
    /// Why the last registration failed.
    pub registration_error: Option<String>,
    /// Since when the file is missing (Unix seconds).
    pub stale_since: Option<u64>,
    /// The Kata release the launches were derived for, and where it came from.
    #[serde(default)]
    pub kata_release: Option<String>,
    /// What the digests do not cover (an unverified root image, annotations
    /// pods may set).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A derived launch as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchView {
    /// Pod CPU limit.
    pub pod_cpus: u32,
    /// Mode.
    pub mode: String,
    /// Policy.
    pub policy: u32,
    /// Firmware.
    pub firmware: PathBuf,
    /// Kernel.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// `-cpu`.
    pub cpu: String,
    /// vCPU signature.
    pub vcpu_sig: Option<String>,
    /// The `-smp` argument.
    #[serde(default)]
    pub smp: String,
    /// The pod annotation this launch is for, if any.
    #[serde(default)]
    pub annotation: Option<String>,
    /// The SNP guest features measured.
    #[serde(default)]
    pub guest_features: Option<String>,
    /// Digest (hex).
    pub digest: String,
}

impl From<&DerivedLaunch> for LaunchView {
    fn from(l: &DerivedLaunch) -> Self {
        LaunchView {
            pod_cpus: l.pod_cpus,
            mode: l.mode.to_string(),
            policy: l.policy,
            firmware: l.firmware.clone(),
            kernel: l.kernel.clone(),
            initrd: l.initrd.clone(),
            cmdline: l.cmdline.clone(),
            vcpus: l.vcpus,
            cpu: l.cpu.clone(),
            vcpu_sig: l.vcpu_sig.clone(),
            smp: l.smp.clone(),
            annotation: l.annotation.clone(),
            guest_features: l.guest_features.clone(),
            digest: l.digest.clone(),
        }
    }
}

/// A file that gives no class to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNote {
    /// The file.
    pub config: PathBuf,
    /// Why it is skipped, or what is wrong with it.
    pub reason: String,
}

/// The key broker connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KbsStatus {
    /// Socket or endpoint.
    pub target: String,
    /// The last call succeeded.
    pub reachable: bool,
    /// The last failure.
    pub last_error: Option<String>,
    /// The last successful registration (Unix seconds).
    pub last_success_at: Option<u64>,
}

/// One drift finding as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftView {
    /// The QEMU process.
    pub pid: u32,
    /// The runtime class it seems to belong to.
    pub runtime_class: Option<String>,
    /// What it measures (hex), if it could be computed.
    pub digest: Option<String>,
    /// It measures something not registered.
    pub drifted: bool,
    /// The parts that differ from the closest registered launch.
    pub differing: Vec<String>,
    /// One line for people.
    pub detail: String,
}

/// Everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The node's name at the broker.
    pub node: String,
    /// The agent's process id.
    pub pid: u32,
    /// When it started (Unix seconds).
    pub started_at: u64,
    /// What it is doing, in a few words.
    pub activity: String,
    /// Every class was registered at least once.
    pub ready: bool,
    /// The broker.
    pub kbs: KbsStatus,
    /// Per runtime class.
    pub classes: BTreeMap<String, ClassStatus>,
    /// Files followed that give nothing to register, and why.
    pub skipped: Vec<FileNote>,
    /// Files whose runtime class is unknown that cannot be used.
    pub errors: Vec<FileNote>,
    /// Files the agent reacts to.
    pub watched_files: usize,
    /// Directories it holds inotify watches on.
    pub watched_dirs: usize,
    /// Running guests compared with the registered digests.
    pub drift: Vec<DriftView>,
    /// What this host's kernel puts into SNP guests' VMSAs (kernel release,
    /// guest features, x87/SSE state), as the digests are measured.
    #[serde(default)]
    pub snp_host: String,
    /// The platform's SNP TCB and chip, read from the SEV firmware, or why not.
    #[serde(default)]
    pub platform: Option<PlatformView>,
}

/// The SEV firmware's answer about the platform, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformView {
    /// The reported TCB and the chip.
    Tcb(crate::platform::PlatformTcb),
    /// Why it could not be read.
    Unavailable(String),
}
