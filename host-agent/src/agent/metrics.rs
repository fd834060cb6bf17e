//! The agent's Prometheus metrics: registrations and failures, time since the
//! last successful registration, recomputation time, drift and watched files.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Label of per-class series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// The runtime class.
    pub runtime_class: String,
}

/// All series, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Successful ReplaceDigests calls, per class.
    pub registrations: Family<ClassLabel, Counter>,
    /// Failed ReplaceDigests calls (and failed connections).
    pub registration_failures: Counter,
    /// Seconds since the last successful registration, computed when scraped.
    since_last: Gauge<f64, AtomicU64>,
    last_success: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Time to re-derive every configuration after a change.
    pub recompute_seconds: Histogram,
    /// Artefacts read and hashed (cache misses).
    pub artefact_reads: Counter,
    /// Configuration files that are broken now.
    pub config_errors: Gauge,
    /// Files the agent reacts to.
    pub watched_files: Gauge,
    /// Directories with an inotify watch.
    pub watched_dirs: Gauge,
    /// Running SEV guests whose launch is registered.
    pub guests_matching: Gauge,
    /// Running SEV guests that measure something not registered.
    pub guests_drifted: Gauge,
    /// Drifted guests seen, counted once per process.
    pub drift_detected: Counter,
    /// Every runtime class was registered at least once.
    pub ready: Gauge,
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("host_agent");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            registrations: Family::default(),
            registration_failures: Counter::default(),
            since_last: Gauge::default(),
            last_success: Arc::default(),
            recompute_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            artefact_reads: Counter::default(),
            config_errors: Gauge::default(),
            watched_files: Gauge::default(),
            watched_dirs: Gauge::default(),
            guests_matching: Gauge::default(),
            guests_drifted: Gauge::default(),
            drift_detected: Counter::default(),
            ready: Gauge::default(),
        };
        registry.register(
            "registrations",
            "Digest sets the key broker accepted, per runtime class",
            m.registrations.clone(),
        );
        registry.register(
            "registration_failures",
            "Registrations that failed (broker unreachable or refusing)",
            m.registration_failures.clone(),
        );
        registry.register(
            "seconds_since_last_registration",
            "Seconds since the key broker last accepted a registration (-1: never)",
            m.since_last.clone(),
        );
        registry.register(
            "recompute_duration_seconds",
            "Time to re-derive the launches after a change",
            m.recompute_seconds.clone(),
        );
        registry.register(
            "artefact_reads",
            "Artefacts read and hashed because they were new or changed",
            m.artefact_reads.clone(),
        );
        registry.register(
            "config_errors",
            "Kata configuration files that cannot be used now",
            m.config_errors.clone(),
        );
        registry.register(
            "watched_files",
            "Files the agent reacts to",
            m.watched_files.clone(),
        );
        registry.register(
            "watched_directories",
            "Directories holding an inotify watch",
            m.watched_dirs.clone(),
        );
        registry.register(
            "guests_matching",
            "Running SEV guests whose launch digest is registered",
            m.guests_matching.clone(),
        );
        registry.register(
            "guests_drifted",
            "Running SEV guests that measure something not registered",
            m.guests_drifted.clone(),
        );
        registry.register(
            "drift_detected",
            "Drifted guests seen, once per process",
            m.drift_detected.clone(),
        );
        registry.register(
            "ready",
            "1 once every runtime class was registered",
            m.ready.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Notes a successful registration.
    pub fn registered(&self, runtime_class: &str) {
        self.registrations
            .get_or_create(&ClassLabel {
                runtime_class: runtime_class.to_string(),
            })
            .inc();
        if let Ok(mut t) = self.last_success.lock() {
            *t = Some(Instant::now());
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let since = self
            .last_success
            .lock()
            .ok()
            .and_then(|t| *t)
            .map_or(-1.0, |t| t.elapsed().as_secs_f64());
        self.since_last.set(since);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_series() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("host_agent_seconds_since_last_registration -1"),
            "{text}"
        );
        m.registered("kata-qemu-sev");
        m.registration_failures.inc();
        let text = m.encode();
        assert!(
            text.contains("host_agent_registrations_total{runtime_class=\"kata-qemu-sev\"} 1"),
            "{text}"
        );
        assert!(text.contains("host_agent_registration_failures_total 1"));
        assert!(text.contains("host_agent_recompute_duration_seconds_bucket"));
        assert!(text.contains("host_agent_watched_files 0"));
    }
}
