//! The `keybroker` gRPC service, and beside it on the same listener the
//! guest's `kbsstatus.GuestStatus` report: decodes requests into the broker's
//! types, runs the broker off the async threads, maps its errors to status
//! codes, and counts every call in the metrics (status code, refusal reason,
//! latency; guest reports also by outcome).

use crate::broker::{Broker, BrokerError, RefusalReason, SecretRequest, SecretRequestSet};
use crate::metrics::{GuestReportOutcome, Metrics};
use crate::trust::TrustError;
use base64::Engine as _;
use kbs_proto::kbsstatus::guest_status_server::GuestStatus;
use kbs_proto::kbsstatus::{
    ReportAck, SignedReport, SnpLaunch, SnpLookupReply, SnpLookupRequest, SnpNonce,
    SnpNonceRequest, SnpReportAck, SnpSignedReport,
};
use kbs_proto::keybroker::key_broker_service_server::KeyBrokerService;
use kbs_proto::keybroker::{
    BundleRequest, BundleResponse, OnlineSecretRequest, OnlineSecretResponse, RequestDetails,
    SecretResponse,
};
use sev_core::session::{FirmwareBuild, LaunchMeasurement};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{error, info_span, Instrument};

/// Largest base64 field accepted (a full chain is about 12 KiB of base64).
const MAX_FIELD: usize = 64 << 10;

/// The service over a shared broker: serves both `keybroker.KeyBrokerService`
/// and `kbsstatus.GuestStatus`.
pub struct KeyBroker {
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
}

impl KeyBroker {
    /// Serves `broker`, counting calls in metrics of its own.
    pub fn new(broker: Arc<Broker>) -> KeyBroker {
        KeyBroker::with_metrics(broker, Arc::new(Metrics::new()))
    }

    /// Serves `broker`, counting calls in `metrics`.
    pub fn with_metrics(broker: Arc<Broker>, metrics: Arc<Metrics>) -> KeyBroker {
        KeyBroker { broker, metrics }
    }

    /// Runs one RPC and counts its outcome.
    async fn counted<T>(
        &self,
        rpc: &'static str,
        body: impl Future<Output = Result<T, Failure>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = body.await;
        let elapsed = started.elapsed();
        match result {
            Ok(t) => {
                self.metrics.keybroker(rpc, tonic::Code::Ok, None, elapsed);
                Ok(Response::new(t))
            }
            Err(f) => {
                self.metrics
                    .keybroker(rpc, f.status.code(), Some(f.reason), elapsed);
                Err(f.status)
            }
        }
    }
}

/// A failed RPC: what the caller sees, and the reason label for the metrics.
struct Failure {
    status: Status,
    reason: RefusalReason,
}

impl From<BrokerError> for Failure {
    fn from(e: BrokerError) -> Self {
        Failure {
            status: status(&e),
            reason: e.reason(),
        }
    }
}

impl From<Status> for Failure {
    /// Decoding failures: every status made in this file outside `status` is an
    /// invalid argument or an internal error.
    fn from(status: Status) -> Self {
        let reason = if status.code() == tonic::Code::InvalidArgument {
            RefusalReason::InvalidArgument
        } else {
            RefusalReason::Internal
        };
        Failure { status, reason }
    }
}

/// Maps a refusal to its status code; internal details stay in the log.
pub fn status(e: &BrokerError) -> Status {
    match e {
        BrokerError::InvalidArgument { .. } | BrokerError::Untrusted(TrustError::Malformed(_)) => {
            Status::invalid_argument(e.to_string())
        }
        BrokerError::UnknownLaunch(_) | BrokerError::UnknownClient => {
            Status::not_found(e.to_string())
        }
        BrokerError::Untrusted(_) | BrokerError::Refused { .. } => {
            Status::permission_denied(e.to_string())
        }
        BrokerError::SecretsUnavailable | BrokerError::TooLarge { .. } => {
            Status::failed_precondition(e.to_string())
        }
        BrokerError::ReportNotVerified => Status::permission_denied(e.to_string()),
        BrokerError::AlreadyReported | BrokerError::NonceUsed => {
            Status::already_exists(e.to_string())
        }
        BrokerError::TooManyReports => Status::resource_exhausted(e.to_string()),
        BrokerError::Internal(inner) => {
            error!(error = %inner, "internal error");
            Status::internal("internal error")
        }
    }
}

fn decode_b64(field: &'static str, text: &str) -> Result<Vec<u8>, Status> {
    if text.len() > MAX_FIELD {
        return Err(Status::invalid_argument(format!(
            "{field}: longer than {MAX_FIELD} bytes"
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| Status::invalid_argument(format!("{field}: not base64: {e}")))
}

fn byte(field: &'static str, v: u32) -> Result<u8, Status> {
    u8::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("{field}: {v} does not fit in a byte")))
}

fn launch_id(field: &'static str, text: &str) -> Result<String, Status> {
    uuid::Uuid::parse_str(text)
        .map(|u| u.to_string())
        .map_err(|_| Status::invalid_argument(format!("{field}: not a UUID")))
}

fn requests(details: &[RequestDetails]) -> Result<Vec<SecretRequest>, Failure> {
    details
        .iter()
        .map(|d| {
            SecretRequest::parse(&d.guid, &d.format, &d.secret_type, &d.id).map_err(Failure::from)
        })
        .collect()
}

async fn run<T: Send + 'static>(
    broker: &Arc<Broker>,
    f: impl FnOnce(&Broker) -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, Failure> {
    let b = Arc::clone(broker);
    tokio::task::spawn_blocking(move || f(&b))
        .await
        .map_err(|e| {
            error!(error = %e, "broker task failed");
            Failure::from(Status::internal("internal error"))
        })?
        .map_err(Failure::from)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tonic::async_trait]
impl KeyBrokerService for KeyBroker {
    async fn get_bundle(
        &self,
        request: Request<BundleRequest>,
    ) -> Result<Response<BundleResponse>, Status> {
        let r = request.into_inner();
        let span = info_span!("GetBundle", policy = r.policy);
        self.counted("GetBundle", async move {
            let chain = decode_b64("CertificateChain", &r.certificate_chain)?;
            let policy = r.policy;
            let bundle = run(&self.broker, move |b| b.get_bundle(&chain, policy)).await?;
            Ok(BundleResponse {
                guest_owner_public_key: b64(&bundle.godh),
                launch_blob: b64(&bundle.blob),
                launch_id: bundle.launch_id,
            })
        })
        .instrument(span)
        .await
    }

    async fn get_secret(
        &self,
        request: Request<kbs_proto::keybroker::SecretRequest>,
    ) -> Result<Response<SecretResponse>, Status> {
        let r = request.into_inner();
        let span =
            info_span!("GetSecret", launch_id = %r.launch_id.chars().take(64).collect::<String>());
        self.counted("GetSecret", async move {
            let set = SecretRequestSet {
                launch_id: launch_id("LaunchId", &r.launch_id)?,
                measurement: LaunchMeasurement::decode(&decode_b64(
                    "LaunchMeasurement",
                    &r.launch_measurement,
                )?)
                .map_err(|e| Status::invalid_argument(format!("LaunchMeasurement: {e}")))?,
                policy: r.policy,
                firmware: FirmwareBuild {
                    api_major: byte("ApiMajor", r.api_major)?,
                    api_minor: byte("ApiMinor", r.api_minor)?,
                    build: byte("BuildId", r.build_id)?,
                },
                digest: {
                    let d = decode_b64("FwDigest", &r.fw_digest)?;
                    if d.len() != 32 {
                        return Err(Status::invalid_argument(format!(
                            "FwDigest: an SEV launch digest is 32 bytes, got {}",
                            d.len()
                        ))
                        .into());
                    }
                    d
                },
                description: r.launch_description.chars().take(256).collect(),
                requests: requests(&r.secret_requests)?,
            };
            let (header, data) = run(&self.broker, move |b| b.get_secret(&set)).await?;
            Ok(SecretResponse {
                launch_secret_header: b64(&header),
                launch_secret_data: b64(&data),
            })
        })
        .instrument(span)
        .await
    }

    async fn get_online_secret(
        &self,
        request: Request<OnlineSecretRequest>,
    ) -> Result<Response<OnlineSecretResponse>, Status> {
        let r = request.into_inner();
        let span = info_span!("GetOnlineSecret");
        self.counted("GetOnlineSecret", async move {
            let client_id = launch_id("ClientId", &r.client_id)?;
            let reqs = requests(&r.secret_requests)?;
            let (payload, iv) = run(&self.broker, move |b| {
                b.get_online_secret(&client_id, &reqs)
            })
            .await?;
            Ok(OnlineSecretResponse {
                payload: b64(&payload),
                iv: b64(&iv),
            })
        })
        .instrument(span)
        .await
    }
}

#[tonic::async_trait]
impl GuestStatus for KeyBroker {
    async fn report(&self, request: Request<SignedReport>) -> Result<Response<ReportAck>, Status> {
        let r = request.into_inner();
        let span = info_span!(
            "Report",
            body_len = r.body.len(),
            launch_id = tracing::field::Empty
        );
        let result = self
            .counted("Report", async {
                let parsed = crate::report::parse(&r.body, &r.mac)?;
                tracing::Span::current().record("launch_id", parsed.launch_id.as_str());
                let body = r.body;
                run(&self.broker, move |b| b.report(&parsed, &body)).await
            })
            .instrument(span)
            .await;
        match result {
            Ok(accepted) => {
                let accepted = accepted.into_inner();
                self.metrics.guest_report(if accepted.path_works {
                    GuestReportOutcome::Confirmed
                } else {
                    GuestReportOutcome::PathBroken
                });
                Ok(Response::new(ReportAck {
                    recorded_at: accepted.recorded_at,
                }))
            }
            Err(status) => {
                self.metrics.guest_report(GuestReportOutcome::Refused);
                Err(status)
            }
        }
    }

    async fn snp_nonce(
        &self,
        _request: Request<SnpNonceRequest>,
    ) -> Result<Response<SnpNonce>, Status> {
        let span = info_span!("SnpNonce");
        self.counted("SnpNonce", async {
            let (nonce, expires_at) = run(&self.broker, |b| b.snp_nonce()).await?;
            Ok(SnpNonce { nonce, expires_at })
        })
        .instrument(span)
        .await
    }

    async fn snp_lookup(
        &self,
        request: Request<SnpLookupRequest>,
    ) -> Result<Response<SnpLookupReply>, Status> {
        let r = request.into_inner();
        let span = info_span!("SnpLookup", measurement_len = r.measurement.len());
        self.counted("SnpLookup", async move {
            let launches = run(&self.broker, move |b| b.snp_lookup(&r.measurement)).await?;
            Ok(SnpLookupReply {
                launches: launches
                    .into_iter()
                    .map(|l| SnpLaunch {
                        runtime_class: l.runtime_class,
                        vcpus: l.vcpus,
                        vcpu_type: l.vcpu_type,
                        config: l.config,
                    })
                    .collect(),
            })
        })
        .instrument(span)
        .await
    }

    async fn snp_report(
        &self,
        request: Request<SnpSignedReport>,
    ) -> Result<Response<SnpReportAck>, Status> {
        let r = request.into_inner();
        let span = info_span!(
            "SnpReport",
            body_len = r.body.len(),
            certs_len = r.cert_table.len()
        );
        let result = self
            .counted("SnpReport", async {
                let parsed =
                    crate::snp_report::parse(&r.body, &r.attestation_report, &r.cert_table)?;
                let SnpSignedReport {
                    body,
                    attestation_report,
                    cert_table,
                } = r;
                run(&self.broker, move |b| {
                    b.snp_report(&parsed, &body, &attestation_report, &cert_table)
                })
                .await
            })
            .instrument(span)
            .await;
        match result {
            Ok(accepted) => {
                let a = accepted.into_inner();
                self.metrics.tee_guest_report(
                    "snp",
                    if a.confirmed {
                        GuestReportOutcome::Confirmed
                    } else {
                        GuestReportOutcome::PathBroken
                    },
                );
                Ok(Response::new(SnpReportAck {
                    recorded_at: a.recorded_at,
                    status: if a.confirmed {
                        "confirmed"
                    } else {
                        "path_broken"
                    }
                    .into(),
                    failed_checks: a.failed_checks,
                    launches: a.launches,
                }))
            }
            Err(status) => {
                self.metrics
                    .tee_guest_report("snp", GuestReportOutcome::Refused);
                Err(status)
            }
        }
    }
}
