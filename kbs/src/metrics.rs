//! Prometheus metrics of the key broker, and the small HTTP server that serves
//! them at `GET /metrics` (Prometheus text format 0.0.4).
//!
//! Labels come from fixed sets only (RPC names, gRPC code names, refusal
//! reasons, listener kinds): nothing a caller sends ends up in a label, so a
//! caller cannot grow the number of series.

use crate::broker::RefusalReason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// Latency buckets in seconds: 0.5 ms to 1 s.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcCode {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcReason {
    rpc: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Rpc {
    rpc: &'static str,
}

/// What became of a guest report, for `kbs_guest_reports_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestReportOutcome {
    /// Accepted; the guest says the secret path works.
    Confirmed,
    /// Accepted; the guest says the secret path is broken.
    PathBroken,
    /// Refused (malformed, unverified, replayed or an internal failure).
    Refused,
}

impl GuestReportOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [GuestReportOutcome; 3] = [
        GuestReportOutcome::Confirmed,
        GuestReportOutcome::PathBroken,
        GuestReportOutcome::Refused,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            GuestReportOutcome::Confirmed => "confirmed",
            GuestReportOutcome::PathBroken => "path_broken",
            GuestReportOutcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GuestOutcome {
    tee: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Listener {
    listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// A Trustee the operator named (`--trustee-url`, `--trustee-rvps`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TrusteeLabel {
    trustee: String,
}

type HistogramFamily = Family<Rpc, Histogram, fn() -> Histogram>;

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcCode, Counter>,
    refusals: Family<RpcReason, Counter>,
    duration: HistogramFamily,
    admin_requests: Family<RpcCode, Counter>,
    admin_duration: HistogramFamily,
    admin_auth_failures: Family<Listener, Counter>,
    guest_reports: Family<GuestOutcome, Counter>,
    connections_closed: Family<Reason, Counter>,
    accept_errors: Counter,
    trustee_writes: Family<TrusteeLabel, Counter>,
    trustee_failures: Family<TrusteeLabel, Counter>,
    trustee_in_step: Family<TrusteeLabel, Gauge>,
    trustee_policy: Family<TrusteeLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `kbs_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kbs");
        let requests = Family::<RpcCode, Counter>::default();
        let refusals = Family::<RpcReason, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(histogram);
        let admin_requests = Family::<RpcCode, Counter>::default();
        let admin_duration: HistogramFamily = Family::new_with_constructor(histogram);
        let admin_auth_failures = Family::<Listener, Counter>::default();
        let guest_reports = Family::<GuestOutcome, Counter>::default();
        let connections_closed = Family::<Reason, Counter>::default();
        let accept_errors = Counter::default();
        let trustee_writes = Family::<TrusteeLabel, Counter>::default();
        let trustee_failures = Family::<TrusteeLabel, Counter>::default();
        let trustee_in_step = Family::<TrusteeLabel, Gauge>::default();
        let trustee_policy = Family::<TrusteeLabel, Gauge>::default();
        for reason in ["total_cap", "source_cap", "timeout", "evicted"] {
            drop(connections_closed.get_or_create(&Reason { reason }));
        }
        // Every outcome from the start, so that a rate over zero reads as zero.
        for tee in ["sev", "snp"] {
            for o in GuestReportOutcome::ALL {
                drop(guest_reports.get_or_create(&GuestOutcome {
                    tee,
                    outcome: o.label(),
                }));
            }
        }
        registry.register(
            "requests",
            "Keybroker RPCs handled, by RPC and gRPC status code",
            requests.clone(),
        );
        registry.register(
            "refusals",
            "Keybroker RPCs that failed, by RPC and reason",
            refusals.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a keybroker RPC",
            duration.clone(),
        );
        registry.register(
            "admin_requests",
            "Admin RPCs handled (after authentication), by RPC and gRPC status code",
            admin_requests.clone(),
        );
        registry.register(
            "admin_request_duration_seconds",
            "Time to answer an admin RPC",
            admin_duration.clone(),
        );
        registry.register(
            "admin_auth_failures",
            "Admin calls refused as unauthenticated, by listener (tcp or unix)",
            admin_auth_failures.clone(),
        );
        registry.register(
            "guest_reports",
            "Guest reports on the secret delivery path (kbsstatus.GuestStatus Report and SnpReport), \
             by TEE (sev, snp) and outcome",
            guest_reports.clone(),
        );
        registry.register(
            "connections_closed",
            "Keybroker connections closed by the connection limits, by reason (total_cap, \
             source_cap: refused at accept; timeout: nothing sent in time; evicted: silent the \
             longest, closed to make room at the total cap)",
            connections_closed.clone(),
        );
        registry.register(
            "accept_errors",
            "Keybroker accept() failures (e.g. out of file descriptors)",
            accept_errors.clone(),
        );
        registry.register(
            "trustee_writes",
            "Registrations of reference values written to a Trustee, by Trustee",
            trustee_writes.clone(),
        );
        registry.register(
            "trustee_failures",
            "Failed attempts to read or write a Trustee's reference values, by Trustee",
            trustee_failures.clone(),
        );
        registry.register(
            "trustee_in_step",
            "1 when a Trustee was last seen holding exactly the reference values the broker owns",
            trustee_in_step.clone(),
        );
        registry.register(
            "trustee_policy_affirming",
            "Whether a Trustee's resource policy requires an affirming verdict: 1 yes, 0 no, \
             -1 unknown (reference values decide nothing unless it does)",
            trustee_policy.clone(),
        );
        Metrics {
            trustee_writes,
            trustee_failures,
            trustee_in_step,
            trustee_policy,
            connections_closed,
            accept_errors,
            registry,
            requests,
            refusals,
            duration,
            admin_requests,
            admin_duration,
            admin_auth_failures,
            guest_reports,
        }
    }

    /// Counts a write of reference values to `trustee`.
    pub fn trustee_write(&self, trustee: &str) {
        self.trustee_writes
            .get_or_create(&TrusteeLabel {
                trustee: trustee.to_string(),
            })
            .inc();
    }

    /// Counts a failed attempt on `trustee` and marks it out of step.
    pub fn trustee_failure(&self, trustee: &str) {
        let label = TrusteeLabel {
            trustee: trustee.to_string(),
        };
        self.trustee_failures.get_or_create(&label).inc();
        self.trustee_in_step.get_or_create(&label).set(0);
    }

    /// Records whether `trustee` holds what it should, and its policy
    /// verdict (1 affirming, 0 not, -1 unknown).
    pub fn trustee_state(&self, trustee: &str, in_step: bool, policy: i64) {
        let label = TrusteeLabel {
            trustee: trustee.to_string(),
        };
        self.trustee_in_step
            .get_or_create(&label)
            .set(i64::from(in_step));
        self.trustee_policy.get_or_create(&label).set(policy);
    }

    /// Counts an SEV guest's report by outcome.
    pub fn guest_report(&self, outcome: GuestReportOutcome) {
        self.tee_guest_report("sev", outcome);
    }

    /// Counts a guest report of `tee` (`sev` or `snp`) by outcome.
    pub fn tee_guest_report(&self, tee: &'static str, outcome: GuestReportOutcome) {
        self.guest_reports
            .get_or_create(&GuestOutcome {
                tee,
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts a keybroker RPC: its status code, the reason if it failed, and
    /// how long it took.
    pub fn keybroker(
        &self,
        rpc: &'static str,
        code: Code,
        reason: Option<RefusalReason>,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RpcCode {
                rpc,
                code: code_name(code),
            })
            .inc();
        if let Some(reason) = reason {
            self.refusals
                .get_or_create(&RpcReason {
                    rpc,
                    reason: reason.label(),
                })
                .inc();
        }
        self.duration
            .get_or_create(&Rpc { rpc })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an admin RPC that passed authentication.
    pub fn admin(&self, rpc: &'static str, code: Code, elapsed: Duration) {
        self.admin_requests
            .get_or_create(&RpcCode {
                rpc,
                code: code_name(code),
            })
            .inc();
        self.admin_duration
            .get_or_create(&Rpc { rpc })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts an admin call refused as unauthenticated on `listener` (`tcp` or
    /// `unix`).
    pub fn admin_auth_failure(&self, listener: &'static str) {
        self.admin_auth_failures
            .get_or_create(&Listener { listener })
            .inc();
    }

    /// Counts a keybroker connection closed by the limits, by reason.
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts a failed accept on the keybroker port.
    pub fn accept_error(&self) {
        self.accept_errors.inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The canonical name of a gRPC status code, e.g. `InvalidArgument`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

async fn scrape(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        metrics.encode(),
    )
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_reasons_and_latency() {
        let m = Metrics::new();
        m.keybroker(
            "GetSecret",
            Code::PermissionDenied,
            Some(RefusalReason::MeasurementMismatch),
            Duration::from_millis(2),
        );
        m.keybroker("GetBundle", Code::Ok, None, Duration::from_micros(100));
        m.admin("SetSecret", Code::Ok, Duration::from_millis(1));
        m.admin_auth_failure("tcp");
        m.guest_report(GuestReportOutcome::Confirmed);
        m.guest_report(GuestReportOutcome::Refused);
        m.guest_report(GuestReportOutcome::Refused);
        m.tee_guest_report("snp", GuestReportOutcome::PathBroken);
        let text = m.encode();
        let reports = |tee: &str, outcome: &str, n: u32| {
            text.contains(&format!(
                "kbs_guest_reports_total{{tee=\"{tee}\",outcome=\"{outcome}\"}} {n}"
            ))
        };
        assert!(reports("sev", "confirmed", 1), "{text}");
        assert!(reports("sev", "path_broken", 0));
        assert!(reports("sev", "refused", 2));
        assert!(reports("snp", "path_broken", 1));
        assert!(reports("snp", "confirmed", 0));
        assert!(text.contains("kbs_requests_total{rpc=\"GetSecret\",code=\"PermissionDenied\"} 1"));
        assert!(text
            .contains("kbs_refusals_total{rpc=\"GetSecret\",reason=\"measurement_mismatch\"} 1"));
        assert!(
            text.contains("kbs_request_duration_seconds_bucket{le=\"0.0005\",rpc=\"GetBundle\"} 1")
                || text.contains(
                    "kbs_request_duration_seconds_bucket{rpc=\"GetBundle\",le=\"0.0005\"} 1"
                ),
            "{text}"
        );
        assert!(text.contains("kbs_admin_requests_total{rpc=\"SetSecret\",code=\"Ok\"} 1"));
        assert!(text.contains("kbs_admin_auth_failures_total{listener=\"tcp\"} 1"));
        assert!(!text.contains("kbs_refusals_total{rpc=\"GetBundle\""));
    }

    #[test]
    fn every_reason_has_a_distinct_snake_case_label() {
        let labels: std::collections::HashSet<_> =
            RefusalReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
