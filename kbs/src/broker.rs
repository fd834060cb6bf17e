//! The key broker's decisions, free of gRPC: open launch sessions for trusted
//! platforms, verify launch measurements, check policy, and package secrets.
//!
//! Order matters in GetSecret: the session is consumed first (single use), the
//! measurement MAC is verified next (constant time), and only a verified launch
//! is checked against policy and given secrets. Refusals say what failed without
//! saying which secrets, keysets or resources exist.

use crate::report::{ParsedReport, REPORT_KEY_GUID};
use crate::store::{
    hex, ConnectionScope, GuestReport, LaunchSession, NewRecord, ReportOutcome, Store, StoreError,
    TakeOutcome,
};
use crate::trust::{TrustAnchors, TrustError};
use aes_gcm::aead::{Aead, KeyInit};
use rand_core::{OsRng, RngCore};
use sev_core::cert::{godh_certificate, EcdhPublicKey};
use sev_core::policy::GuestPolicy;
use sev_core::secret_table::{SecretTable, MAX_ENTRIES};
use sev_core::session::{
    package_secret, FirmwareBuild, LaunchBlob, LaunchMeasurement, TransportKeys,
};
use sev_core::Guid;
use tracing::{info, warn};

/// Largest secret table released, in bytes: the secret area of an AmdSev OVMF
/// (and what the guest's `efi_secret` maps) is one 4 KiB page.
pub const MAX_TABLE_LEN: usize = 4096;

/// What the operator decides about launches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPolicy {
    /// How long a launch id stays usable after GetBundle.
    pub session_ttl_secs: i64,
    /// How long an online connection key stays usable.
    pub connection_ttl_secs: i64,
    /// Accept guests whose policy allows debugging.
    pub allow_debug: bool,
    /// Oldest firmware API version accepted.
    pub min_api: (u8, u8),
    /// Oldest firmware build accepted.
    pub min_build: u8,
    /// Who may register digests; under approved registration a node's own
    /// digests (origin `node`) are not honoured.
    pub registration: crate::registration::RegistrationMode,
    /// Largest GetOnlineSecret response (before encryption), in bytes.
    pub max_online_response: usize,
    /// Refusals of one kind (RPC and reason) recorded one by one per minute;
    /// the rest go into one summary record.
    pub refusal_records_per_minute: u32,
    /// Bits guest policies must have and must not have.
    pub require_policy: crate::policy_requirement::PolicyRequirement,
}

impl Default for BrokerPolicy {
    fn default() -> Self {
        BrokerPolicy {
            session_ttl_secs: 600,
            connection_ttl_secs: 86_400,
            allow_debug: false,
            min_api: (0, 0),
            min_build: 0,
            registration: crate::registration::RegistrationMode::Approved,
            max_online_response: 8 << 20,
            refusal_records_per_minute: 60,
            require_policy: crate::policy_requirement::PolicyRequirement::default(),
        }
    }
}

/// Why a request is refused. The message is what the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A field is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The launch id is unknown, used or expired.
    #[error("launch {0} is unknown, already used or expired")]
    UnknownLaunch(String),
    /// The online client id is unknown or expired.
    #[error("ClientId is unknown or expired")]
    UnknownClient,
    /// The platform chain is not trusted.
    #[error(transparent)]
    Untrusted(TrustError),
    /// Attestation or policy refuses the launch.
    #[error("{message}")]
    Refused {
        /// Which check refused, for metrics.
        reason: RefusalReason,
        /// What the caller is told.
        message: String,
    },
    /// A requested secret cannot be served; deliberately unspecific.
    #[error("the requested secrets are not available to this launch")]
    SecretsUnavailable,
    /// What was asked for would make a response over its limit; found out
    /// from the stored sizes, before any value is read.
    #[error("the requested secrets come to at least {size} bytes, over the limit of {limit} bytes ({what})")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// The response's size, as bounded from the stored sizes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A guest report for a launch without a report key, or whose MAC does
    /// not verify under it; the two are not told apart.
    #[error("report refused: no report key for this launch, or the MAC does not verify")]
    ReportNotVerified,
    /// A verified report for a launch that has reported already.
    #[error("this launch has reported already")]
    AlreadyReported,
    /// An SNP report whose nonce was used already.
    #[error("this report's nonce was used already (a replayed report)")]
    NonceUsed,
    /// An SNP chip sent more reports in the last hour than are recorded.
    #[error("too many reports from this chip in the last hour; try again later")]
    TooManyReports,
    /// Storage or another internal failure; details only in the log.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        BrokerError::Internal(e)
    }
}

/// Why a request failed, as one of a small fixed set of labels (for metrics:
/// never the message, which can carry caller-supplied text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// A request field is malformed (including a chain that does not parse).
    InvalidArgument,
    /// The platform chain does not verify to a trusted root.
    UntrustedChain,
    /// The launch id is unknown, used or expired.
    UnknownLaunch,
    /// The online client id is unknown or expired.
    UnknownClient,
    /// The launch measurement does not verify.
    MeasurementMismatch,
    /// The policy differs from the one the session was opened with.
    PolicyMismatch,
    /// The launch digest is not registered.
    DigestNotRegistered,
    /// An online request outside its connection's keyset.
    OutOfScope,
    /// The guest policy allows debugging.
    DebugPolicy,
    /// The guest policy does not meet --require-policy.
    PolicyRequirement,
    /// The firmware is older than the minimum.
    OldFirmware,
    /// The requested secrets cannot be served.
    SecretsUnavailable,
    /// The response would be over its size limit.
    TooLarge,
    /// A guest report without a known launch or with a wrong MAC.
    ReportNotVerified,
    /// A second report for the same launch.
    ReportReplayed,
    /// Over a per-source rate limit (an SNP chip's reports).
    RateLimited,
    /// Storage or another internal failure.
    Internal,
}

impl RefusalReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RefusalReason; 17] = [
        RefusalReason::InvalidArgument,
        RefusalReason::UntrustedChain,
        RefusalReason::UnknownLaunch,
        RefusalReason::UnknownClient,
        RefusalReason::MeasurementMismatch,
        RefusalReason::PolicyMismatch,
        RefusalReason::DigestNotRegistered,
        RefusalReason::OutOfScope,
        RefusalReason::DebugPolicy,
        RefusalReason::PolicyRequirement,
        RefusalReason::OldFirmware,
        RefusalReason::SecretsUnavailable,
        RefusalReason::TooLarge,
        RefusalReason::ReportNotVerified,
        RefusalReason::ReportReplayed,
        RefusalReason::RateLimited,
        RefusalReason::Internal,
    ];

    /// The metric label, e.g. `measurement_mismatch`.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::InvalidArgument => "invalid_argument",
            RefusalReason::UntrustedChain => "untrusted_chain",
            RefusalReason::UnknownLaunch => "unknown_launch",
            RefusalReason::UnknownClient => "unknown_client",
            RefusalReason::MeasurementMismatch => "measurement_mismatch",
            RefusalReason::PolicyMismatch => "policy_mismatch",
            RefusalReason::DigestNotRegistered => "digest_not_registered",
            RefusalReason::OutOfScope => "out_of_scope",
            RefusalReason::DebugPolicy => "debug_policy",
            RefusalReason::PolicyRequirement => "policy_requirement",
            RefusalReason::OldFirmware => "old_firmware",
            RefusalReason::SecretsUnavailable => "secrets_unavailable",
            RefusalReason::TooLarge => "too_large",
            RefusalReason::ReportNotVerified => "report_not_verified",
            RefusalReason::ReportReplayed => "report_replayed",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::Internal => "internal",
        }
    }
}

impl BrokerError {
    /// Why the request failed, as a fixed label. A `Refused` is classified by
    /// the messages `Broker` gives it below; keep the two in step.
    pub fn reason(&self) -> RefusalReason {
        match self {
            BrokerError::InvalidArgument { .. }
            | BrokerError::Untrusted(TrustError::Malformed(_)) => RefusalReason::InvalidArgument,
            BrokerError::Untrusted(_) => RefusalReason::UntrustedChain,
            BrokerError::UnknownLaunch(_) => RefusalReason::UnknownLaunch,
            BrokerError::UnknownClient => RefusalReason::UnknownClient,
            BrokerError::SecretsUnavailable => RefusalReason::SecretsUnavailable,
            BrokerError::TooLarge { .. } => RefusalReason::TooLarge,
            BrokerError::ReportNotVerified => RefusalReason::ReportNotVerified,
            BrokerError::AlreadyReported => RefusalReason::ReportReplayed,
            BrokerError::TooManyReports => RefusalReason::RateLimited,
            BrokerError::NonceUsed => RefusalReason::ReportReplayed,
            BrokerError::Internal(_) => RefusalReason::Internal,
            BrokerError::Refused { reason, .. } => *reason,
        }
    }
}

fn refused(reason: RefusalReason, message: impl Into<String>) -> BrokerError {
    BrokerError::Refused {
        reason,
        message: message.into(),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> BrokerError {
    BrokerError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// The kinds of secret a launch can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Every secret of a keyset, as a JSON object id -> base64.
    Bundle,
    /// One secret.
    Key,
    /// A resource file.
    Resource,
    /// A fresh key for the online path.
    Connection,
}

impl SecretKind {
    /// The wire name (`SecretType`).
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::Bundle => "bundle",
            SecretKind::Key => "key",
            SecretKind::Resource => "resource",
            SecretKind::Connection => "connection",
        }
    }
}

/// The verified launch a GetSecret serves: what an online connection it
/// opens is bound to.
struct LaunchScope<'a> {
    launch_id: &'a str,
    /// `sev` or `seves`.
    mode: &'static str,
    digest: &'a [u8],
}

/// How a secret is encoded in its table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The bytes themselves.
    Binary,
    /// JSON.
    Json,
}

/// One entry of a launch's secret request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRequest {
    /// Secret table GUID.
    pub guid: Guid,
    /// Encoding.
    pub format: Format,
    /// Kind.
    pub kind: SecretKind,
    /// Keyset, secret or resource id.
    pub id: String,
}

impl SecretRequest {
    /// Parses the wire fields; `Format` and `SecretType` are case-insensitive (the
    /// Kata shim sends "JSON").
    pub fn parse(
        guid: &str,
        format: &str,
        kind: &str,
        id: &str,
    ) -> Result<SecretRequest, BrokerError> {
        let guid = Guid::parse(guid).map_err(|e| invalid("SecretRequests.Guid", e.to_string()))?;
        let format = match format.to_ascii_lowercase().as_str() {
            "binary" => Format::Binary,
            "json" | "" => Format::Json,
            _ => return Err(invalid("SecretRequests.Format", "expected binary or json")),
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "bundle" => SecretKind::Bundle,
            "key" => SecretKind::Key,
            "resource" => SecretKind::Resource,
            "connection" => SecretKind::Connection,
            _ => {
                return Err(invalid(
                    "SecretRequests.SecretType",
                    "expected bundle, key, resource or connection",
                ))
            }
        };
        if id.len() > 256 {
            return Err(invalid("SecretRequests.Id", "longer than 256 bytes"));
        }
        Ok(SecretRequest {
            guid,
            format,
            kind,
            id: id.to_string(),
        })
    }
}

/// GetBundle's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The guest owner's DH certificate.
    pub godh: Vec<u8>,
    /// The launch blob.
    pub blob: [u8; 128],
    /// The launch id.
    pub launch_id: String,
}

/// GetSecret's inputs, decoded.
#[derive(Debug, Clone)]
pub struct SecretRequestSet {
    /// The launch.
    pub launch_id: String,
    /// LAUNCH_MEASURE output.
    pub measurement: LaunchMeasurement,
    /// The policy the shim says it launched with.
    pub policy: u32,
    /// Firmware version the PSP reported.
    pub firmware: FirmwareBuild,
    /// The launch digest the shim claims.
    pub digest: Vec<u8>,
    /// Free text.
    pub description: String,
    /// What it asks for.
    pub requests: Vec<SecretRequest>,
}

/// A guest report the broker accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportAccepted {
    /// When it was recorded, Unix seconds.
    pub recorded_at: i64,
    /// The guest's verdict.
    pub path_works: bool,
}

/// An SNP guest's report as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReportAccepted {
    /// When it was recorded, Unix seconds.
    pub recorded_at: i64,
    /// Every check passed, the guest's and the broker's.
    pub confirmed: bool,
    /// The failed checks, the guest's and the broker's.
    pub failed_checks: Vec<String>,
    /// The registered launches the measurement matches, for people.
    pub launches: Vec<String>,
}

/// The key broker.
pub struct Broker {
    store: Store,
    trust: TrustAnchors,
    policy: BrokerPolicy,
    tokens: crate::credentials::TokenTable,
    firmware: crate::registration::FirmwareImages,
    refusals: crate::refusal_log::RefusalLog,
    trustee: crate::trustee::Board,
    /// The roots SNP guests' chips must chain to: AMD's, plus any extra
    /// given with --snp-insecure-root.
    snp_roots: snp_attestation::TrustedRoots,
    /// The SNP nonce key, once read from the store (it never changes).
    snp_nonce_key: std::sync::OnceLock<[u8; 32]>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Broker {
    /// A broker over `store` trusting `trust`.
    pub fn new(store: Store, trust: TrustAnchors, policy: BrokerPolicy) -> Broker {
        Broker {
            store,
            trust,
            tokens: crate::credentials::TokenTable::default(),
            firmware: crate::registration::FirmwareImages::default(),
            refusals: crate::refusal_log::RefusalLog::new(
                policy.refusal_records_per_minute,
                std::time::Duration::from_secs(60),
            ),
            policy,
            trustee: crate::trustee::Board::default(),
            snp_roots: snp_attestation::TrustedRoots::amd(),
            snp_nonce_key: std::sync::OnceLock::new(),
        }
    }

    /// The broker, also trusting `roots` for SNP guests' chips (tests and
    /// simulators; AMD's roots are always trusted).
    pub fn with_snp_roots(mut self, roots: snp_attestation::TrustedRoots) -> Broker {
        self.snp_roots = roots;
        self
    }

    /// Writes the summaries of refusals that were not recorded one by one,
    /// for the windows that have passed (all of them with `all`, at
    /// shutdown); how many summaries were written.
    pub fn flush_refusal_summaries(&self, all: bool) -> usize {
        let summaries = self.refusals.flush(std::time::Instant::now(), all);
        for s in &summaries {
            let reason = format!(
                "{} (and {} more like it in {} s, counted, not recorded one by one)",
                s.reason, s.suppressed, s.seconds
            );
            if let Err(e) = self.store.record(&NewRecord {
                rpc: &s.rpc,
                reason: &reason,
                ..Default::default()
            }) {
                warn!(error = %e, "cannot record a refusal summary");
            }
        }
        summaries.len()
    }

    /// The approved firmware images, parsed.
    pub fn firmware_images(&self) -> &crate::registration::FirmwareImages {
        &self.firmware
    }

    /// Who may register digests.
    pub fn registration(&self) -> crate::registration::RegistrationMode {
        self.policy.registration
    }

    /// The admin tokens made by `kbs admin token create`.
    pub fn tokens(&self) -> &crate::credentials::TokenTable {
        &self.tokens
    }

    /// The store, for the admin API.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The status of the Trustee instances the broker writes to.
    pub fn trustee(&self) -> &crate::trustee::Board {
        &self.trustee
    }

    /// Whether nodes' own digests (origin `node`) count: open registration.
    pub fn honours_node_digests(&self) -> bool {
        self.policy.registration == crate::registration::RegistrationMode::Open
    }

    /// Records a refusal, unless its kind has had its share this minute
    /// (then it goes into the kind's summary).
    fn record(&self, r: &NewRecord<'_>) {
        if !r.ok
            && self
                .refusals
                .admit(r.rpc, r.reason, std::time::Instant::now())
                == crate::refusal_log::Verdict::Suppress
        {
            return;
        }
        if let Err(e) = self.store.record(r) {
            warn!(error = %e, "cannot record attestation outcome");
        }
    }

    /// Opens a launch session with the PSP of the platform whose chain is given.
    pub fn get_bundle(&self, chain: &[u8], policy: u32) -> Result<Bundle, BrokerError> {
        let refuse = |reason: &str| {
            self.record(&NewRecord {
                rpc: "GetBundle",
                reason,
                policy,
                ..Default::default()
            });
        };
        let gp = GuestPolicy(policy);
        if gp.has_reserved_bits() {
            refuse("policy has reserved bits set");
            return Err(invalid(
                "Policy",
                format!("{gp}: bits 6 to 15 are reserved and must be zero"),
            ));
        }
        if gp.debug_allowed() && !self.policy.allow_debug {
            refuse("policy allows debugging");
            return Err(refused(
                RefusalReason::DebugPolicy,
                format!("Policy {gp} allows debugging the guest; this broker requires NODBG"),
            ));
        }
        let platform = self.trust.verify(chain).map_err(|e| {
            refuse(&e.to_string());
            BrokerError::Untrusted(e)
        })?;
        if platform.insecure {
            warn!(anchor = %platform.anchor, "accepting a platform chained to an INSECURE trust anchor");
        }
        let Some((godh_key, z)) = ecdh(&platform.pdh) else {
            refuse("PDH is not a point on P-384");
            return Err(BrokerError::Untrusted(TrustError::BadPdh(
                "not a point on P-384".into(),
            )));
        };
        let keys = TransportKeys {
            tek: random(),
            tik: random(),
        };
        let blob = LaunchBlob::wrap(&z, random(), random(), &keys, policy);
        let launch_id = uuid::Uuid::new_v4().to_string();
        let session = LaunchSession {
            tek: keys.tek,
            tik: keys.tik,
            policy,
            chip: platform.chip.clone(),
        };
        self.store.insert_session(
            &launch_id,
            &session,
            self.policy.session_ttl_secs,
            &NewRecord {
                rpc: "GetBundle",
                launch_id: &launch_id,
                ok: true,
                policy,
                ..Default::default()
            },
        )?;
        info!(launch_id = %launch_id, anchor = %platform.anchor, chip = %platform.chip, policy = %gp, "launch session opened");
        Ok(Bundle {
            godh: godh_certificate(&godh_key).to_vec(),
            blob: blob.encode(),
            launch_id,
        })
    }

    /// Verifies a launch and packages the secrets it asks for: (header, ciphertext).
    pub fn get_secret(&self, req: &SecretRequestSet) -> Result<([u8; 52], Vec<u8>), BrokerError> {
        // The shape of the request is checked before the launch is consumed.
        check_table_requests(&req.requests)?;
        let digest_hex = hex(&req.digest);
        let fw = format!(
            "{}.{}.{}",
            req.firmware.api_major, req.firmware.api_minor, req.firmware.build
        );
        let refuse = |reason: &str| {
            self.record(&NewRecord {
                rpc: "GetSecret",
                launch_id: &req.launch_id,
                reason,
                digest: &digest_hex,
                policy: req.policy,
                firmware: &fw,
                description: &req.description,
                ..Default::default()
            });
        };
        let session = match self.store.take_session(&req.launch_id)? {
            TakeOutcome::Taken(s) => s,
            other => {
                let why = match other {
                    TakeOutcome::Used => "launch id replayed",
                    TakeOutcome::Expired => "launch id expired",
                    _ => "launch id unknown",
                };
                refuse(why);
                return Err(BrokerError::UnknownLaunch(req.launch_id.clone()));
            }
        };
        // Verify before trusting anything the request says.
        if !req
            .measurement
            .verify(&session.tik, req.firmware, session.policy, &req.digest)
        {
            refuse("launch measurement does not verify");
            return Err(refused(
                RefusalReason::MeasurementMismatch,
                "LaunchMeasurement does not verify for this launch's session, policy, firmware and FwDigest",
            ));
        }
        if req.policy != session.policy {
            refuse("policy differs from the session's");
            return Err(refused(
                RefusalReason::PolicyMismatch,
                "Policy differs from the policy the launch was opened with",
            ));
        }
        let gp = GuestPolicy(session.policy);
        let mode = if gp.es() { "seves" } else { "sev" };
        let honour_node = self.policy.registration == crate::registration::RegistrationMode::Open;
        if !self
            .store
            .digest_registered(mode, &req.digest, honour_node)?
        {
            refuse("launch digest not registered");
            return Err(refused(
                RefusalReason::DigestNotRegistered,
                format!("launch digest {digest_hex} is not registered for {mode}"),
            ));
        }
        if gp.debug_allowed() && !self.policy.allow_debug {
            refuse("policy allows debugging");
            return Err(refused(
                RefusalReason::DebugPolicy,
                format!("Policy {gp} allows debugging the guest"),
            ));
        }
        if let Err(message) = self.policy.require_policy.check(gp) {
            refuse("policy does not meet --require-policy");
            return Err(refused(RefusalReason::PolicyRequirement, message));
        }
        let f = req.firmware;
        // One version, compared as a whole: 1.55 build 1 is newer than 1.51
        // build 3.
        if (f.api_major, f.api_minor, f.build)
            < (
                self.policy.min_api.0,
                self.policy.min_api.1,
                self.policy.min_build,
            )
        {
            refuse("firmware older than the minimum");
            return Err(refused(
                RefusalReason::OldFirmware,
                format!(
                    "firmware {fw} is older than the minimum {}.{} build {}",
                    self.policy.min_api.0, self.policy.min_api.1, self.policy.min_build
                ),
            ));
        }
        // Bounded from the stored sizes before any value is read: a keyset
        // or resource too large for the guest's secret area is refused
        // without being loaded.
        let bound = match self.table_bound(&req.requests) {
            Ok(b) => b,
            Err(e) => {
                refuse("requested secrets not available");
                return Err(e);
            }
        };
        if bound > MAX_TABLE_LEN {
            refuse("requested secrets too large for the secret area");
            return Err(BrokerError::TooLarge {
                what: "the guest's secret area",
                size: bound,
                limit: MAX_TABLE_LEN,
            });
        }
        let launch = LaunchScope {
            launch_id: &req.launch_id,
            mode,
            digest: &req.digest,
        };
        let table = match self.secret_table(&req.requests, &launch) {
            Ok(t) => t,
            Err(e) => {
                refuse("requested secrets not available");
                return Err(e);
            }
        };
        let keys = TransportKeys {
            tek: session.tek,
            tik: session.tik,
        };
        let (header, ciphertext) = package_secret(&keys, &req.measurement, random(), &table)
            .map_err(|_| BrokerError::SecretsUnavailable)?;
        // No secret leaves unrecorded: if the release cannot be written, the
        // caller gets an internal error instead of the packet (the launch is
        // used up either way).
        self.store
            .record(&NewRecord {
                rpc: "GetSecret",
                launch_id: &req.launch_id,
                ok: true,
                digest: &digest_hex,
                policy: session.policy,
                firmware: &fw,
                description: &req.description,
                ..Default::default()
            })
            .inspect_err(|e| warn!(error = %e, launch_id = %req.launch_id, "release not recorded; nothing released"))?;
        info!(launch_id = %req.launch_id, digest = %digest_hex, entries = req.requests.len(), "secrets released");
        Ok((header.encode(), ciphertext))
    }

    fn secret_table(
        &self,
        requests: &[SecretRequest],
        launch: &LaunchScope<'_>,
    ) -> Result<Vec<u8>, BrokerError> {
        let launch_id = launch.launch_id;
        let mut table = SecretTable::default();
        for r in requests {
            table.entries.push((r.guid, self.payload(r, Some(launch))?));
        }
        let key = zeroize::Zeroizing::new(random::<32>());
        table
            .entries
            .push((REPORT_KEY_GUID, crate::report::key_entry(launch_id, &key)));
        let bytes = table
            .encode()
            .map_err(|_| BrokerError::SecretsUnavailable)?;
        if bytes.len() > MAX_TABLE_LEN {
            warn!(
                launch_id,
                len = bytes.len(),
                max = MAX_TABLE_LEN,
                "secret table larger than the guest's secret area"
            );
            return Err(BrokerError::SecretsUnavailable);
        }
        // Stored only once the table is sure to go out.
        self.store.insert_report_key(launch_id, &key)?;
        Ok(bytes)
    }

    /// Verifies and stores a guest's report on its launch (at most one per
    /// launch). `body` is the exact signed bytes `report` was parsed from.
    pub fn report(
        &self,
        report: &ParsedReport,
        body: &[u8],
    ) -> Result<ReportAccepted, BrokerError> {
        let refuse = |reason: &str| {
            self.record(&NewRecord {
                rpc: "Report",
                launch_id: &report.launch_id,
                reason,
                description: &report.client,
                ..Default::default()
            });
        };
        let key = self.store.report_key(&report.launch_id)?;
        // An unknown launch costs the same MAC as a known one.
        let known = key.is_some();
        let key = key.unwrap_or_else(|| zeroize::Zeroizing::new([0; 32]));
        if !crate::report::verify(&key, body, &report.mac) || !known {
            refuse(if known {
                "report MAC does not verify"
            } else {
                "report for a launch without a report key"
            });
            return Err(BrokerError::ReportNotVerified);
        }
        let stored = GuestReport {
            path_works: report.path_works,
            failed_checks: report.failed_checks.clone(),
            client: report.client.clone(),
            body: body.to_vec(),
        };
        let verdict = if report.path_works {
            "guest confirmed the secret path"
        } else {
            "guest reports the secret path broken"
        };
        let record = NewRecord {
            rpc: "Report",
            launch_id: &report.launch_id,
            ok: true,
            reason: verdict,
            description: &report.client,
            ..Default::default()
        };
        match self
            .store
            .record_report(&report.launch_id, &stored, &record)?
        {
            ReportOutcome::Recorded(recorded_at) => {
                info!(launch_id = %report.launch_id, path_works = report.path_works, checks = report.checks, failed = ?report.failed_checks, "guest report recorded");
                Ok(ReportAccepted {
                    recorded_at,
                    path_works: report.path_works,
                })
            }
            ReportOutcome::AlreadyReported => {
                refuse("report replayed");
                Err(BrokerError::AlreadyReported)
            }
            ReportOutcome::Unknown => {
                refuse("report for a launch without a report key");
                Err(BrokerError::ReportNotVerified)
            }
        }
    }

    /// The key SNP nonces are MACed with, read from the store once.
    fn snp_nonce_key(&self) -> Result<[u8; 32], BrokerError> {
        if let Some(k) = self.snp_nonce_key.get() {
            return Ok(*k);
        }
        let k = self.store.snp_nonce_key()?;
        Ok(*self.snp_nonce_key.get_or_init(|| k))
    }

    /// A fresh nonce for an SNP guest's report, and when it expires.
    pub fn snp_nonce(&self) -> Result<(Vec<u8>, i64), BrokerError> {
        let key = self.snp_nonce_key()?;
        let expires_at = crate::store::now().saturating_add(crate::snp_report::NONCE_TTL_SECS);
        Ok((
            crate::snp_report::mint_nonce(&key, expires_at, random()),
            expires_at,
        ))
    }

    /// The registered launches with `measurement` that count under the
    /// registration mode.
    pub fn snp_lookup(
        &self,
        measurement: &[u8],
    ) -> Result<Vec<crate::store::SnpLaunch>, BrokerError> {
        if measurement.len() != 48 {
            return Err(invalid(
                "measurement",
                format!(
                    "an SNP launch measurement is 48 bytes, got {}",
                    measurement.len()
                ),
            ));
        }
        let honour_node = self.policy.registration == crate::registration::RegistrationMode::Open;
        Ok(self.store.snp_launches(measurement, honour_node)?)
    }

    /// Verifies and records an SNP guest's report: the nonce, the binding of
    /// the body, the chip's chain and signature (cheapest first); a
    /// measurement that is not registered is refused (any SNP guest anywhere
    /// can make a valid report, so only registered launches are stored);
    /// then the broker's own checks (policy, VMPL, the TCB pin) decide
    /// whether the guest is confirmed. `body`, `report` and `cert_table` are
    /// the request's bytes, `parsed` what [`crate::snp_report::parse`] made
    /// of them.
    pub fn snp_report(
        &self,
        parsed: &crate::snp_report::ParsedSnpBody,
        body: &[u8],
        report: &[u8],
        cert_table: &[u8],
    ) -> Result<SnpReportAccepted, BrokerError> {
        // The record's reason is one of a fixed set (the refusal log groups
        // by it); the caller's message may say more.
        let refuse = |reason: RefusalReason, fixed: &str, digest: &str, message: String| {
            self.record(&NewRecord {
                rpc: "SnpReport",
                reason: fixed,
                digest,
                description: &parsed.client,
                ..Default::default()
            });
            refused(reason, message)
        };
        crate::snp_report::check_nonce(&self.snp_nonce_key()?, &parsed.nonce, crate::store::now())
            .map_err(|e| {
                refuse(
                    RefusalReason::ReportNotVerified,
                    "nonce not valid",
                    "",
                    e.to_string(),
                )
            })?;
        let decoded = snp_attestation::AttestationReport::decode(report)
            .map_err(|e| invalid("attestation_report", e.to_string()))?;
        if !crate::snp_report::bound_to(&decoded, body) {
            let m = "the attestation report's REPORT_DATA is not SHA-512 of the body";
            return Err(refuse(RefusalReason::ReportNotVerified, m, "", m.into()));
        }
        let entries = snp_attestation::decode_cert_table(cert_table)
            .map_err(|e| invalid("cert_table", e.to_string()))?;
        let chain = snp_attestation::CertChain::from_table(&entries);
        let verified = snp_attestation::verify(report, &chain, &self.snp_roots).map_err(|e| {
            refuse(
                RefusalReason::UntrustedChain,
                &format!("the attestation report does not verify ({})", e.kind()),
                "",
                format!("the attestation report does not verify: {e}"),
            )
        })?;
        let measurement = verified.report.measurement;
        let digest = crate::store::hex(&measurement);
        let launches = self.snp_lookup(&measurement)?;
        if launches.is_empty() {
            return Err(refuse(
                RefusalReason::DigestNotRegistered,
                "measurement not registered",
                &digest,
                "the launch measurement is not registered for any node".into(),
            ));
        }
        let pin = self.store.tcb_pin()?;
        let (confirmed, failed_checks) = crate::snp_report::judge(&verified, parsed, &pin);
        let status = if confirmed {
            "confirmed"
        } else {
            "path_broken"
        };
        let verdict = if confirmed {
            "guest confirmed the secret path".to_string()
        } else {
            format!("guest's secret path broken: {}", failed_checks.join(", "))
        };
        let described: Vec<String> = launches.iter().map(|l| l.describe()).collect();
        let host_data = verified.report.host_data;
        let description = format!(
            "{} on {}{}; {}{}",
            parsed.client,
            verified.product.name(),
            if verified.root == snp_attestation::RootKind::Amd {
                ""
            } else {
                " (INSECURE: an extra root, not AMD's)"
            },
            described.join("; "),
            if host_data.iter().any(|b| *b != 0) {
                format!("; host_data {}", crate::store::hex(&host_data))
            } else {
                String::new()
            }
        );
        let record = NewRecord {
            rpc: "SnpReport",
            ok: true,
            reason: &verdict,
            digest: &digest,
            // SNP policy bits above 31 are reserved.
            policy: u32::try_from(verified.report.policy.0 & 0xffff_ffff).unwrap_or(0),
            firmware: &{
                let (major, minor, build) = verified.report.current_version;
                format!("{major}.{minor}.{build}")
            },
            description: &description,
            ..Default::default()
        };
        let signer = chain
            .vek
            .as_deref()
            .map(|der| crate::store::hex(&<sha2::Sha256 as sha2::Digest>::digest(der)))
            .unwrap_or_default();
        let stored = crate::store::SnpGuestReport {
            nonce: parsed.nonce.clone(),
            chip_id: verified.report.chip_id.to_vec(),
            signer,
            measurement: measurement.to_vec(),
            status: status.into(),
            failed_checks: failed_checks.clone(),
            client: parsed.client.clone(),
            body: body.to_vec(),
            report: report.to_vec(),
        };
        match self.store.record_snp_report(&stored, &record)? {
            crate::store::SnpReportOutcome::Recorded(recorded_at) => {
                info!(measurement = %digest, status, failed = ?failed_checks, product = verified.product.name(), "SNP guest report recorded");
                Ok(SnpReportAccepted {
                    recorded_at,
                    confirmed,
                    failed_checks,
                    launches: launches.iter().map(|l| l.describe_for_guest()).collect(),
                })
            }
            crate::store::SnpReportOutcome::TooMany => {
                self.record(&NewRecord {
                    rpc: "SnpReport",
                    reason: "too many reports from this chip",
                    digest: &digest,
                    description: &parsed.client,
                    ..Default::default()
                });
                Err(BrokerError::TooManyReports)
            }
            crate::store::SnpReportOutcome::Replayed => {
                self.record(&NewRecord {
                    rpc: "SnpReport",
                    reason: "report replayed",
                    digest: &digest,
                    description: &parsed.client,
                    ..Default::default()
                });
                Err(BrokerError::NonceUsed)
            }
        }
    }

    /// An upper bound of the secret table a GetSecret would build, from the
    /// stored sizes.
    fn table_bound(&self, requests: &[SecretRequest]) -> Result<usize, BrokerError> {
        // The table's header and GUID, each entry's GUID and length, and the
        // broker's report key entry.
        let mut bound: usize = 40 + 128;
        for r in requests {
            bound = bound
                .saturating_add(20)
                .saturating_add(self.payload_bound(r)?);
        }
        Ok(bound)
    }

    /// An upper bound of what [`Broker::payload`] would make of `r`, from the
    /// stored sizes, reading no value.
    fn payload_bound(&self, r: &SecretRequest) -> Result<usize, BrokerError> {
        let missing = || BrokerError::SecretsUnavailable;
        let b64_len = |n: usize| n.div_ceil(3).saturating_mul(4);
        // JSON may escape every character of an id (\u00XX).
        let json_id = |id: &str| id.len().saturating_mul(6).saturating_add(2);
        Ok(match r.kind {
            SecretKind::Bundle => {
                let ids = self.store.keyset(&r.id)?.ok_or_else(missing)?.secrets;
                let mut n: usize = 2;
                for id in ids {
                    let size = self.store.secret_size(&id)?.ok_or_else(missing)?;
                    n = n
                        .saturating_add(json_id(&id))
                        .saturating_add(b64_len(size))
                        .saturating_add(4);
                }
                n
            }
            SecretKind::Key | SecretKind::Resource => {
                let size = if r.kind == SecretKind::Key {
                    self.store.secret_size(&r.id)?
                } else {
                    self.store.resource_size(&r.id)?
                }
                .ok_or_else(missing)?;
                match r.format {
                    Format::Binary => size,
                    Format::Json => b64_len(size)
                        .saturating_add(json_id(&r.id))
                        .saturating_add(32),
                }
            }
            SecretKind::Connection => 128,
        })
    }

    fn payload(
        &self,
        r: &SecretRequest,
        launch: Option<&LaunchScope<'_>>,
    ) -> Result<Vec<u8>, BrokerError> {
        let missing = || BrokerError::SecretsUnavailable;
        Ok(match r.kind {
            SecretKind::Bundle => {
                let ids = self.store.keyset(&r.id)?.ok_or_else(missing)?.secrets;
                let mut bundle = serde_json::Map::new();
                for id in ids {
                    let payload = self.store.secret(&id)?.ok_or_else(missing)?;
                    bundle.insert(id, serde_json::Value::String(b64(&payload)));
                }
                serde_json::to_vec(&bundle).map_err(|_| missing())?
            }
            SecretKind::Key => {
                let payload = self.store.secret(&r.id)?.ok_or_else(missing)?;
                match r.format {
                    Format::Binary => payload,
                    Format::Json => serde_json::to_vec(
                        &serde_json::json!({"id": r.id, "payload": b64(&payload)}),
                    )
                    .map_err(|_| missing())?,
                }
            }
            SecretKind::Resource => {
                let data = self.store.resource(&r.id)?.ok_or_else(missing)?;
                match r.format {
                    Format::Binary => data,
                    Format::Json => {
                        serde_json::to_vec(&serde_json::json!({ r.id.clone(): b64(&data) }))
                            .map_err(|_| missing())?
                    }
                }
            }
            SecretKind::Connection => {
                let launch = launch.ok_or_else(missing)?;
                let client_id = uuid::Uuid::new_v4().to_string();
                let key = zeroize::Zeroizing::new(random::<32>());
                // The shim names its configured keyset in the connection
                // request's id: that keyset is all the connection reaches.
                let scope = ConnectionScope {
                    launch_id: launch.launch_id.to_string(),
                    keyset: r.id.clone(),
                    mode: launch.mode.to_string(),
                    digest: launch.digest.to_vec(),
                };
                self.store.insert_connection(
                    &client_id,
                    &key,
                    &scope,
                    self.policy.connection_ttl_secs,
                )?;
                serde_json::to_vec(
                    &serde_json::json!({"client_id": client_id, "key": b64(&key[..])}),
                )
                .map_err(|_| missing())?
            }
        })
    }

    /// Serves secrets to a guest over its online connection: (ciphertext, IV).
    pub fn get_online_secret(
        &self,
        client_id: &str,
        requests: &[SecretRequest],
    ) -> Result<(Vec<u8>, [u8; 12]), BrokerError> {
        let refuse = |reason: &str| {
            self.record(&NewRecord {
                rpc: "GetOnlineSecret",
                launch_id: client_id,
                reason,
                ..Default::default()
            });
        };
        let Some(connection) = self.store.connection(client_id)? else {
            refuse("client id unknown or expired");
            return Err(BrokerError::UnknownClient);
        };
        if requests.len() > MAX_ENTRIES {
            return Err(invalid(
                "SecretRequests",
                format!("at most {MAX_ENTRIES} entries"),
            ));
        }
        let scope = &connection.scope;
        // Only while the launch's digest is registered (and honoured): a
        // connection outlives neither its digest nor a change of mind.
        let honour_node = self.policy.registration == crate::registration::RegistrationMode::Open;
        if scope.digest.is_empty()
            || !self
                .store
                .digest_registered(&scope.mode, &scope.digest, honour_node)?
        {
            refuse("launch digest of the connection no longer registered");
            self.store.end_connection(client_id)?;
            info!(client_id, launch_id = %scope.launch_id, "online connection ended: its launch digest is no longer registered");
            return Err(refused(
                RefusalReason::DigestNotRegistered,
                "this connection has ended: its launch's digest is no longer registered",
            ));
        }
        let members = self.store.keyset(&scope.keyset)?.unwrap_or_default();
        for r in requests {
            let in_scope = match r.kind {
                SecretKind::Bundle => !scope.keyset.is_empty() && r.id == scope.keyset,
                SecretKind::Key => members.secrets.contains(&r.id),
                SecretKind::Resource => members.resources.contains(&r.id),
                SecretKind::Connection => true,
            };
            if !in_scope {
                refuse("request outside the connection's keyset");
                return Err(refused(
                    RefusalReason::OutOfScope,
                    format!(
                        "{} {:?} is not in this connection's keyset",
                        r.kind.name(),
                        r.id
                    ),
                ));
            }
        }
        let mut bound: usize = 8;
        for r in requests {
            if r.kind == SecretKind::Connection {
                return Err(invalid(
                    "SecretRequests.SecretType",
                    "connection is not served online",
                ));
            }
            // Each entry: two length prefixes, the GUID, the payload.
            match self.payload_bound(r) {
                Ok(n) => bound = bound.saturating_add(16 + 36).saturating_add(n),
                Err(e) => {
                    refuse("requested secrets not available");
                    return Err(e);
                }
            }
        }
        if bound > self.policy.max_online_response {
            refuse("requested secrets over the online response limit");
            return Err(BrokerError::TooLarge {
                what: "--max-online-response-bytes",
                size: bound,
                limit: self.policy.max_online_response,
            });
        }
        let mut entries = Vec::with_capacity(requests.len());
        for r in requests {
            if r.kind == SecretKind::Connection {
                return Err(invalid(
                    "SecretRequests.SecretType",
                    "connection is not served online",
                ));
            }
            match self.payload(r, None) {
                Ok(p) => entries.push((r.guid.to_string(), p)),
                Err(e) => {
                    refuse("requested secrets not available");
                    return Err(e);
                }
            }
        }
        let plaintext = encode_online_payload(&entries);
        let iv: [u8; 12] = random();
        let cipher = aes_gcm::Aes256Gcm::new((&*connection.key).into());
        let ciphertext = cipher
            .encrypt(&iv.into(), plaintext.as_slice())
            .map_err(|_| BrokerError::SecretsUnavailable)?;
        self.store
            .record(&NewRecord {
                rpc: "GetOnlineSecret",
                launch_id: client_id,
                ok: true,
                ..Default::default()
            })
            .inspect_err(|e| warn!(error = %e, "online release not recorded; nothing released"))?;
        Ok((ciphertext, iv))
    }
}

/// The limits on what one GetSecret may ask for: one entry of the table is
/// the broker's own report key, so at most `MAX_ENTRIES - 1` requests, none
/// of them under its GUID.
fn check_table_requests(requests: &[SecretRequest]) -> Result<(), BrokerError> {
    let most = MAX_ENTRIES - 1;
    if requests.len() > most {
        return Err(invalid(
            "SecretRequests",
            format!("at most {most} entries (one more is the broker's report key)"),
        ));
    }
    if requests.iter().any(|r| r.guid == REPORT_KEY_GUID) {
        return Err(invalid(
            "SecretRequests.Guid",
            format!("{REPORT_KEY_GUID} is reserved for the broker's report key"),
        ));
    }
    Ok(())
}

/// A fresh guest-owner key pair on P-384 and its ECDH shared secret with the
/// PDH: (the guest owner's public key, the big-endian X coordinate of the shared
/// point, which is what the SEV key derivation takes). `None` if the PDH is not a
/// valid point. This is most of GetBundle's work; AWS-LC's P-384 does it in about
/// a third of the time of the portable implementations measured here.
fn ecdh(pdh: &EcdhPublicKey) -> Option<(EcdhPublicKey, zeroize::Zeroizing<Vec<u8>>)> {
    use aws_lc_rs::agreement::{agree, PrivateKey, UnparsedPublicKey, ECDH_P384};
    let ours = PrivateKey::generate(&ECDH_P384).ok()?;
    let public = ours.compute_public_key().ok()?;
    // Uncompressed SEC1: 0x04 || x || y.
    let (x, y) = public.as_ref().get(1..)?.split_at_checked(48)?;
    let godh = EcdhPublicKey {
        x: x.try_into().ok()?,
        y: y.try_into().ok()?,
    };
    let mut peer = Vec::with_capacity(97);
    peer.push(0x04);
    peer.extend_from_slice(&pdh.x);
    peer.extend_from_slice(&pdh.y);
    // The peer point is validated (on the curve, not the identity) before use.
    let z = agree(
        &ours,
        UnparsedPublicKey::new(&ECDH_P384, &peer),
        aws_lc_rs::error::Unspecified,
        |z| Ok(zeroize::Zeroizing::new(z.to_vec())),
    )
    .ok()?;
    Some((godh, z))
}

/// The online payload as the guest's online KBC decodes it: a bincode map of
/// GUID text to bytes (u64 LE count, then u64 LE length-prefixed key and value).
pub fn encode_online_payload(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}
