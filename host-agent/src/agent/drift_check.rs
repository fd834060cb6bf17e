//! Drift checks inside the daemon: the running QEMU guests against the launches
//! the agent derived and registered.
//!
//! A guest's measurement is fixed when it starts, so each QEMU process is
//! measured once, when first seen, and remembered until it exits. Checks run
//! when someone reads the status or the metrics and after each registration,
//! never on a timer: an idle node does no work.

use super::config::AgentConfig;
use super::derive::{ClassLaunches, HostFacts};
use super::metrics::Metrics;
use super::status::DriftView;
use crate::drift::{check, measure_observed, scan, ExpectedLaunch, QemuLaunch};
use sev_core::LaunchDigest;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use tracing::warn;

/// What one process measures, remembered by pid and launch.
type Measured = HashMap<(u32, String), Result<LaunchDigest, String>>;

/// Holds what is expected and what was already measured and reported.
pub struct DriftChecker {
    enabled: bool,
    proc_root: PathBuf,
    host: HostFacts,
    metrics: Metrics,
    expected: Mutex<Vec<ExpectedLaunch>>,
    measured: Mutex<Measured>,
    /// Drifted (pid, digest) pairs already logged and counted.
    reported: Mutex<HashSet<(u32, String)>>,
}

fn key(pid: u32, q: &QemuLaunch) -> (u32, String) {
    (pid, format!("{q:?}"))
}

impl DriftChecker {
    /// What the host put into this guest's VMSAs. An SNP guest with kernel
    /// hashes was started by an upstream release's QEMU (KVM_SEV_INIT2), whose
    /// VMSAs carry what this host's kernel does; the CC builds' guests (SEV,
    /// SEV-ES, SNP without kernel hashes) keep the values they were registered with.
    fn vmsa_of(&self, q: &QemuLaunch) -> crate::drift::HostVmsa {
        if q.mode == sev_core::SevMode::Snp && q.kernel_hashes {
            crate::drift::HostVmsa {
                guest_features: self.host.snp_guest_features,
                fpu: self.host.vmsa_fpu,
            }
        } else {
            crate::drift::HostVmsa::default()
        }
    }

    /// A checker per the configuration.
    pub fn new(config: &AgentConfig, host: HostFacts, metrics: Metrics) -> DriftChecker {
        DriftChecker {
            enabled: config.drift.enabled,
            proc_root: config.drift.proc_root.clone(),
            host,
            metrics,
            expected: Mutex::default(),
            measured: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    /// The launches now derived (and registered, or about to be).
    pub fn set_expected(&self, launches: &[&ClassLaunches]) {
        let expected: Vec<ExpectedLaunch> = launches
            .iter()
            .flat_map(|c| {
                c.launches.iter().map(|l| ExpectedLaunch {
                    runtime_class: c.runtime_class.clone(),
                    mode: l.sev_mode,
                    firmware: l.firmware.clone(),
                    kernel: l.kernel.clone(),
                    initrd: l.initrd.clone(),
                    cmdline: l.cmdline.clone(),
                    vcpus: l.vcpus,
                    cpu: l.cpu.clone(),
                    digest: l.digest_bytes.clone(),
                    firmware_sha256: None,
                    kernel_sha256: Some(c.kernel_sha256),
                    initrd_sha256: c.initrd_sha256,
                })
            })
            .collect();
        if let Ok(mut e) = self.expected.lock() {
            *e = expected;
        }
    }

    fn measure(&self, pid: u32, q: &QemuLaunch) -> Result<LaunchDigest, String> {
        let k = key(pid, q);
        if let Some(found) = self.measured.lock().ok().and_then(|m| m.get(&k).cloned()) {
            return found;
        }
        let result =
            measure_observed(q, self.host.host_sig, self.vmsa_of(q)).map_err(|e| e.to_string());
        if let Ok(mut m) = self.measured.lock() {
            m.insert(k, result.clone());
        }
        result
    }

    /// Scans the running guests, logs drift not seen before, updates the
    /// metrics and returns every finding.
    pub fn scan_and_log(&self) -> Vec<DriftView> {
        if !self.enabled {
            return Vec::new();
        }
        let expected = self.expected.lock().map(|e| e.clone()).unwrap_or_default();
        let mut views = Vec::new();
        let mut alive = HashSet::new();
        for observed in scan(&self.proc_root) {
            let pid = observed.pid;
            let q = match observed.result {
                Ok(q) => q,
                Err(e) => {
                    views.push(DriftView {
                        pid,
                        runtime_class: None,
                        digest: None,
                        drifted: false,
                        differing: Vec::new(),
                        detail: format!("cannot read its launch: {e}"),
                    });
                    continue;
                }
            };
            alive.insert(key(pid, &q));
            let digest = match self.measure(pid, &q) {
                Ok(d) => d,
                Err(e) => {
                    views.push(DriftView {
                        pid,
                        runtime_class: None,
                        digest: None,
                        drifted: false,
                        differing: Vec::new(),
                        detail: format!("cannot measure its launch: {e}"),
                    });
                    continue;
                }
            };
            let finding = check(pid, &q, &digest, &expected);
            if finding.drifted {
                let new = self
                    .reported
                    .lock()
                    .map(|mut r| r.insert((pid, finding.digest_hex.clone())))
                    .unwrap_or(false);
                if new {
                    self.metrics.drift_detected.inc();
                    warn!(
                        pid,
                        runtime_class = finding.runtime_class.as_deref().unwrap_or("?"),
                        digest = %finding.digest_hex,
                        differing = %finding
                            .differing
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        "drift: a running guest measures what is not registered: {}",
                        finding.detail
                    );
                }
            }
            views.push(DriftView {
                pid,
                runtime_class: finding.runtime_class.clone(),
                digest: Some(finding.digest_hex.clone()),
                drifted: finding.drifted,
                differing: finding.differing.iter().map(ToString::to_string).collect(),
                detail: finding.detail.clone(),
            });
        }
        // Forget processes that exited.
        if let Ok(mut m) = self.measured.lock() {
            m.retain(|k, _| alive.contains(k));
        }
        let pids: HashSet<u32> = alive.iter().map(|(p, _)| *p).collect();
        if let Ok(mut r) = self.reported.lock() {
            r.retain(|(p, _)| pids.contains(p));
        }
        let drifted = views.iter().filter(|v| v.drifted).count();
        let matching = views
            .iter()
            .filter(|v| !v.drifted && v.digest.is_some())
            .count();
        self.metrics
            .guests_drifted
            .set(i64::try_from(drifted).unwrap_or(i64::MAX));
        self.metrics
            .guests_matching
            .set(i64::try_from(matching).unwrap_or(i64::MAX));
        views
    }
}
