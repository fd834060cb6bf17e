//! The admin API (`kbsadmin.Admin`, `kbs-proto/proto/kbsadmin.proto`): host
//! agents and operators register launch digests, manage secrets, keysets and
//! resources, and read the attestation records.
//!
//! Every caller is authenticated before the service sees the call, by the
//! [`AdminAuth`] interceptor of its listener:
//!
//! - on TCP, by a bearer token (`authorization: Bearer <token>`) that the broker
//!   reads at start from a file only its owner can read ([`AdminToken::load`]),
//!   compared in constant time;
//! - on the Unix socket, by the peer credentials the kernel gives for the
//!   connection (SO_PEERCRED): root, the broker's own uid, or an allowed uid.
//!
//! Requests are validated here, field by field, with `INVALID_ARGUMENT` naming
//! the field; the store runs off the async threads; storage failures become
//! `INTERNAL` with the detail only in the log. Secret values never leave the
//! broker through this API and are never logged.

use crate::broker::Broker;
pub use crate::credentials::{
    own_uid, AdminAuth, AdminToken, AllowedUids, TokenFileError, MIN_TOKEN,
};
use crate::credentials::{Caller, Role};
use crate::metrics::Metrics;
use crate::registration::{self, RegisterError, RegistrationMode};
use crate::store::{ApprovalRow, DigestRecord, KeysetMembers, Origin, Store, StoreError, TokenRow};
use kbs_proto::kbsadmin::admin_server::Admin;
use kbs_proto::kbsadmin::{
    Approval, ApproveRequest, ApproveResponse, AttestationRecord, CreateTokenRequest,
    CreateTokenResponse, DeleteRequest, DeleteResponse, Digest, Keyset, LaunchInputs,
    ListApprovalsRequest, ListApprovalsResponse, ListDigestsRequest, ListDigestsResponse,
    ListInventoryRequest, ListInventoryResponse, ListRecordsRequest, ListRecordsResponse,
    ListTokensRequest, ListTokensResponse, NodeLaunch, RegisterLaunchesRequest,
    RegisterLaunchesResponse, RegisteredDigest, ReplaceDigestsRequest, ReplaceDigestsResponse,
    RevokeRequest, RevokeResponse, RevokeTokenRequest, RevokeTokenResponse, SetKeysetRequest,
    SetKeysetResponse, SetResourceRequest, SetResourceResponse, SetSecretRequest,
    SetSecretResponse, SetTcbPinRequest, SetTcbPinResponse, TokenInfo, TrusteeStatusRequest,
    TrusteeStatusResponse, WhoAmIRequest, WhoAmIResponse,
};
use std::collections::HashSet;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn, Instrument};
use zeroize::Zeroizing;

/// Longest id (node, runtime class, secret, keyset, resource), in bytes.
pub const MAX_ID: usize = 256;
/// Largest secret payload.
pub const MAX_SECRET: usize = 64 << 10;
/// Largest resource.
pub const MAX_RESOURCE: usize = 3 << 20;
/// Most digests in one ReplaceDigests.
pub const MAX_DIGESTS: usize = 4096;
/// Most secrets in one keyset.
pub const MAX_KEYSET: usize = 1024;
/// Longest digest `config` text, in bytes.
pub const MAX_CONFIG: usize = 4096;
/// Longest kernel command line in a registration (QEMU's own limit on x86 is
/// far below).
pub const MAX_CMDLINE: usize = 64 << 10;
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u32 = 4096;
/// Records returned when the request names no limit.
pub const DEFAULT_RECORDS: u32 = 100;
/// Most records in one ListRecords.
pub const MAX_RECORDS: u32 = 1000;

/// The length of a launch digest of `mode` (`sev`, `seves` or `snp`).
pub fn digest_len(mode: &str) -> Option<usize> {
    match mode {
        "sev" | "seves" => Some(32),
        "snp" => Some(48),
        _ => None,
    }
}

/// Checks an id: 1 to [`MAX_ID`] printable ASCII characters without spaces.
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: empty")));
    }
    if id.len() > MAX_ID {
        return Err(Status::invalid_argument(format!(
            "{field}: longer than {MAX_ID} bytes"
        )));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{field}: only printable ASCII characters without spaces are allowed"
        )));
    }
    Ok(())
}

/// Checks free text: at most `max` bytes, no control characters but newlines
/// and tabs.
pub fn check_text(field: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max {
        return Err(Status::invalid_argument(format!(
            "{field}: longer than {max} bytes"
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Status::invalid_argument(format!(
            "{field}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// Validates one digest of a ReplaceDigests; `field` is e.g. `digests[3]`.
fn check_digest(field: &str, d: &Digest) -> Result<(Vec<u8>, DigestRecord), Status> {
    let Some(len) = digest_len(&d.mode) else {
        return Err(Status::invalid_argument(format!(
            "{field}.mode: expected sev, seves or snp"
        )));
    };
    if d.digest.len() != len {
        return Err(Status::invalid_argument(format!(
            "{field}.digest: a {} launch digest is {len} bytes, got {}",
            d.mode,
            d.digest.len()
        )));
    }
    let min_vcpus = if d.mode == "sev" { 0 } else { 1 };
    if d.vcpus < min_vcpus || d.vcpus > MAX_VCPUS {
        return Err(Status::invalid_argument(format!(
            "{field}.vcpus: expected {min_vcpus} to {MAX_VCPUS} for {}",
            d.mode
        )));
    }
    if d.vcpu_type.len() > MAX_ID || !d.vcpu_type.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{field}.vcpu_type: at most {MAX_ID} printable ASCII characters without spaces"
        )));
    }
    check_text(&format!("{field}.config"), &d.config, MAX_CONFIG)?;
    Ok((
        d.digest.clone(),
        DigestRecord {
            mode: d.mode.clone(),
            digest: crate::store::hex(&d.digest),
            vcpus: d.vcpus,
            vcpu_type: d.vcpu_type.clone(),
            config: d.config.clone(),
        },
    ))
}

/// How many distinct digests a set holds (what the node and class then have).
fn distinct(digests: &[(Vec<u8>, DigestRecord)]) -> u32 {
    let set: HashSet<_> = digests
        .iter()
        .map(|(bytes, d)| (d.mode.clone(), bytes.clone(), d.vcpus, d.vcpu_type.clone()))
        .collect();
    u32::try_from(set.len()).unwrap_or(u32::MAX)
}

/// Registers one class's launches by their inputs: under approved
/// registration the broker's own derivation, under open registration the
/// node's digests as sent.
fn register(
    broker: &Broker,
    mode: RegistrationMode,
    node: &str,
    inputs: &LaunchInputs,
    launches: &[NodeLaunch],
) -> Result<(u32, Origin), RegisterError> {
    let (digests, origin, used) = match mode {
        RegistrationMode::Approved => {
            let d =
                registration::derive(broker.store(), broker.firmware_images(), inputs, launches)?;
            (d.digests, Origin::Derived, d.inputs)
        }
        RegistrationMode::Open => {
            let digests = launches
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.digest.as_ref().map(|d| (i, d)))
                .map(|(i, d)| check_digest(&format!("launches[{i}].digest"), d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|s| RegisterError::Invalid(s.message().to_string()))?;
            (digests, Origin::Node, Vec::new())
        }
    };
    let count = distinct(&digests);
    broker
        .store()
        .replace_digests(node, &inputs.runtime_class, &digests, origin, &used)?;
    Ok((count, origin))
}

/// An approval as the API shows it.
fn approval_message(row: ApprovalRow) -> Approval {
    Approval {
        detail: registration::describe(&row),
        kind: row.kind,
        id: row.id,
        runtime_class: row.runtime_class,
        approved_by: row.approved_by,
        approved_at: row.approved_at,
        note: row.note,
    }
}

/// The stored form of an approval id given to revoke.
fn canonical_id(kind: &str, id: &str) -> Result<String, Status> {
    let bad = |m: String| Status::invalid_argument(m);
    match kind {
        registration::HOST_CPU => registration::parse_cpu_signature(id)
            .map(|s| format!("{:#010x}", s.0))
            .ok_or_else(|| bad(format!("id: {id:?} is not a CPUID signature"))),
        registration::HOST_KERNEL => sev_core::host_kernel::KernelRelease::parse(id)
            .map(|k| k.to_string())
            .ok_or_else(|| bad(format!("id: {id:?} is not a kernel release"))),
        _ => registration::check_sha256("id", id).map_err(bad),
    }
}

/// The status an operator gets for a store failure: a busy database is
/// worth a retry and says so; anything else is logged and kept internal.
fn store_status(e: &StoreError) -> Status {
    if let StoreError::Busy { what, .. } = e {
        warn!(error = %e, "admin: database busy");
        return Status::unavailable(format!("{what} are being written; try again"));
    }
    error!(error = %e, "admin: storage failure");
    Status::internal("internal error")
}

/// The admin service over a shared broker.
pub struct AdminService {
    broker: Arc<Broker>,
    metrics: Arc<Metrics>,
}

impl AdminService {
    /// Serves the store of `broker`, counting calls in `metrics`.
    pub fn new(broker: Arc<Broker>, metrics: Arc<Metrics>) -> AdminService {
        AdminService { broker, metrics }
    }

    /// Runs `f` on the store off the async threads.
    async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        self.blocking(move |b| f(b.store())).await
    }

    /// Runs `f` on the broker off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Broker) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let b = Arc::clone(&self.broker);
        tokio::task::spawn_blocking(move || f(&b))
            .await
            .map_err(|e| {
                error!(error = %e, "admin: store task failed");
                Status::internal("internal error")
            })?
            .map_err(|e| store_status(&e))
    }

    /// Runs one RPC and counts its outcome.
    async fn counted<T>(
        &self,
        rpc: &'static str,
        body: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = body.await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics.admin(rpc, code, started.elapsed());
        result.map(Response::new)
    }

    async fn delete(
        &self,
        rpc: &'static str,
        kind: &'static str,
        id: String,
        f: fn(&Store, &str) -> Result<bool, StoreError>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.counted(rpc, async move {
            check_id("id", &id)?;
            let key = id.clone();
            if self.store(move |s| f(s, &key)).await? {
                info!(%id, "admin: {kind} deleted");
                Ok(DeleteResponse {})
            } else {
                Err(Status::not_found(format!("{kind} {id:?} does not exist")))
            }
        })
        .await
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn replace_digests(
        &self,
        request: Request<ReplaceDigestsRequest>,
    ) -> Result<Response<ReplaceDigestsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        self.counted("ReplaceDigests", async move {
            let node = caller.node_for(&r.node)?;
            check_id("node", &node)?;
            check_id("runtime_class", &r.runtime_class)?;
            if r.digests.len() > MAX_DIGESTS {
                return Err(Status::invalid_argument(format!(
                    "digests: at most {MAX_DIGESTS} in one call"
                )));
            }
            let origin = match caller.role {
                Role::Operator => Origin::Operator,
                Role::Node(_) => Origin::Node,
            };
            // A node's own digests count only under open registration; under
            // approved registration it may only withdraw its own.
            if origin == Origin::Node
                && !r.digests.is_empty()
                && self.broker.registration() == RegistrationMode::Approved
            {
                warn!(caller = %caller.name, %node, "admin: a node sent its own digests under approved registration");
                return Err(Status::failed_precondition(
                    "registration is by approved inputs: a node registers with RegisterLaunches \
                     (host agents do), or an operator vouches with kbs admin digests replace",
                ));
            }
            let digests = r
                .digests
                .iter()
                .enumerate()
                .map(|(i, d)| check_digest(&format!("digests[{i}]"), d))
                .collect::<Result<Vec<_>, _>>()?;
            let count = distinct(&digests);
            let (n, class) = (node.clone(), r.runtime_class.clone());
            self.store(move |s| s.replace_digests(&n, &class, &digests, origin, &[]))
                .await?;
            info!(caller = %caller.name, %node, runtime_class = %r.runtime_class, count, origin = origin.name(), "admin: digests replaced");
            Ok(ReplaceDigestsResponse { count })
        })
        .await
    }

    async fn list_digests(
        &self,
        request: Request<ListDigestsRequest>,
    ) -> Result<Response<ListDigestsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        self.counted("ListDigests", async move {
            // A node sees only its own node's digests.
            let only_node = match &caller.role {
                Role::Operator => r.node.clone(),
                Role::Node(_) => caller.node_for(&r.node)?,
            };
            if !only_node.is_empty() {
                check_id("node", &only_node)?;
            }
            if !r.runtime_class.is_empty() {
                check_id("runtime_class", &r.runtime_class)?;
            }
            let all = self.store(|s| s.list_digests()).await?;
            let mut digests = Vec::new();
            for (node, runtime_class, d, origin) in all {
                if (!only_node.is_empty() && node != only_node)
                    || (!r.runtime_class.is_empty() && runtime_class != r.runtime_class)
                {
                    continue;
                }
                let bytes = hex::decode(&d.digest).map_err(|_| {
                    error!(%node, %runtime_class, "admin: a stored digest is not hexadecimal");
                    Status::internal("internal error")
                })?;
                digests.push(RegisteredDigest {
                    node,
                    runtime_class,
                    digest: Some(Digest {
                        mode: d.mode,
                        digest: bytes,
                        vcpus: d.vcpus,
                        vcpu_type: d.vcpu_type,
                        config: d.config,
                    }),
                    origin: origin.name().to_string(),
                });
            }
            Ok(ListDigestsResponse { digests })
        })
        .await
    }

    async fn register_launches(
        &self,
        request: Request<RegisterLaunchesRequest>,
    ) -> Result<Response<RegisterLaunchesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let node = caller.node_for(&r.node)?;
        let inputs = r.inputs.unwrap_or_default();
        let span = tracing::info_span!(
            "registration",
            caller = %caller.name,
            %node,
            runtime_class = %inputs.runtime_class,
            launches = r.launches.len()
        );
        self.counted(
            "RegisterLaunches",
            async move {
                check_id("node", &node)?;
                check_id("inputs.runtime_class", &inputs.runtime_class)?;
                if r.launches.len() > MAX_DIGESTS {
                    return Err(Status::invalid_argument(format!(
                        "launches: at most {MAX_DIGESTS} in one call"
                    )));
                }
                for (i, l) in r.launches.iter().enumerate() {
                    let d = l.digest.as_ref().ok_or_else(|| {
                        Status::invalid_argument(format!("launches[{i}].digest: missing"))
                    })?;
                    check_digest(&format!("launches[{i}].digest"), d)?;
                    check_text(&format!("launches[{i}].cmdline"), &l.cmdline, MAX_CMDLINE)?;
                    check_text(&format!("launches[{i}].cpu"), &l.cpu, MAX_ID)?;
                    check_text(
                        &format!("launches[{i}].annotation"),
                        &l.annotation,
                        MAX_CONFIG,
                    )?;
                }
                let platform = match &r.platform {
                    None => None,
                    Some(p) => {
                        check_text("platform.product", &p.product, MAX_ID)?;
                        let tcb = crate::trustee::status::tcb_from_proto(p).ok_or_else(|| {
                            Status::invalid_argument("platform: a TCB field over 255")
                        })?;
                        Some((tcb, p.product.clone()))
                    }
                };
                let snp = r
                    .launches
                    .iter()
                    .any(|l| l.digest.as_ref().is_some_and(|d| d.mode == "snp"));
                let class = inputs.runtime_class.clone();
                let mode = self.broker.registration();
                let b = Arc::clone(&self.broker);
                let n = node.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let done = register(&b, mode, &n, &inputs, &r.launches);
                    // The TCB counts once the node's SNP launches do; SNP
                    // launches without one mean the node cannot read it
                    // any more, and what it reported before is dropped.
                    if let (Ok(_), true) = (&done, snp) {
                        let recorded = match &platform {
                            Some((tcb, product)) => b.store().set_node_tcb(&n, tcb, product),
                            None => b.store().clear_node_tcb(&n),
                        };
                        if let Err(e) = recorded {
                            error!(error = %e, "admin: cannot record the node's TCB");
                        }
                    }
                    done
                })
                .await
                .map_err(|e| {
                    error!(error = %e, "admin: registration task failed");
                    Status::internal("internal error")
                })?;
                match outcome {
                    Ok((count, origin)) => {
                        info!(count, origin = origin.name(), "admin: launches registered");
                        Ok(RegisterLaunchesResponse {
                            count,
                            origin: origin.name().to_string(),
                        })
                    }
                    Err(e) => {
                        warn!(runtime_class = %class, error = %e, "admin: registration refused");
                        Err(e.into_status())
                    }
                }
            }
            .instrument(span),
        )
        .await
    }

    async fn approve(
        &self,
        request: Request<ApproveRequest>,
    ) -> Result<Response<ApproveResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        self.counted("Approve", async move {
            caller.require_operator("approving inputs")?;
            let (row, data) = tokio::task::spawn_blocking({
                let caller = caller.clone();
                move || registration::prepare_approval(&r, &caller)
            })
            .await
            .map_err(|e| {
                error!(error = %e, "admin: approval task failed");
                Status::internal("internal error")
            })??;
            let stored = row.clone();
            let at = self
                .store(move |s| s.approve(&stored, data.as_deref()))
                .await?;
            if row.kind == registration::FIRMWARE {
                self.broker.firmware_images().forget(&row.id);
            }
            info!(caller = %caller.name, kind = %row.kind, id = %row.id, runtime_class = %row.runtime_class, "admin: input approved");
            Ok(ApproveResponse {
                approval: Some(approval_message(ApprovalRow {
                    approved_at: at,
                    ..row
                })),
            })
        })
        .await
    }

    async fn list_approvals(
        &self,
        request: Request<ListApprovalsRequest>,
    ) -> Result<Response<ListApprovalsResponse>, Status> {
        let caller = Caller::of(&request)?;
        self.counted("ListApprovals", async move {
            caller.require_operator("listing approvals")?;
            let rows = self.store(|s| s.approvals()).await?;
            Ok(ListApprovalsResponse {
                approvals: rows.into_iter().map(approval_message).collect(),
            })
        })
        .await
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        self.counted("Revoke", async move {
            caller.require_operator("revoking approvals")?;
            if !registration::KINDS.contains(&r.kind.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "kind: {:?} is not one of {}",
                    r.kind,
                    registration::KINDS.join(", ")
                )));
            }
            check_id("id", &r.id)?;
            let id = canonical_id(&r.kind, &r.id)?;
            let class = (!r.runtime_class.is_empty()).then(|| r.runtime_class.clone());
            if let Some(c) = &class {
                check_id("runtime_class", c)?;
            }
            let (kind, key) = (r.kind.clone(), id.clone());
            let (revoked, removed) = self
                .store(move |s| s.revoke(&kind, &key, class.as_deref()))
                .await?;
            if revoked == 0 {
                return Err(Status::not_found(format!(
                    "no {} approval {id:?}{}",
                    r.kind,
                    if r.runtime_class.is_empty() {
                        String::new()
                    } else {
                        format!(" for runtime class {}", r.runtime_class)
                    }
                )));
            }
            if r.kind == registration::FIRMWARE {
                self.broker.firmware_images().forget(&id);
            }
            info!(caller = %caller.name, kind = %r.kind, %id, revoked, digests_removed = removed, "admin: approval revoked");
            Ok(RevokeResponse {
                revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
                digests_removed: u32::try_from(removed).unwrap_or(u32::MAX),
            })
        })
        .await
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        self.counted("CreateToken", async move {
            caller.require_operator("making tokens")?;
            match r.role.as_str() {
                "node" => check_id("node", &r.node)?,
                "operator" if r.node.is_empty() => {}
                "operator" => {
                    return Err(Status::invalid_argument(
                        "node: an operator token speaks for no node",
                    ))
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "role: {other:?} is not node or operator"
                    )))
                }
            }
            check_text("note", &r.note, MAX_CONFIG)?;
            let made = crate::credentials::new_token();
            let row = TokenRow {
                id: made.id.clone(),
                hash: made.hash,
                role: r.role.clone(),
                node: r.node.clone(),
                note: r.note.clone(),
                created_by: caller.name.clone(),
                created_at: crate::store::now(),
            };
            let stored = row.clone();
            self.store(move |s| s.insert_token(&stored)).await?;
            info!(caller = %caller.name, id = %row.id, role = %row.role, node = %row.node, "admin: token made");
            Ok(CreateTokenResponse {
                id: made.id,
                token: made.token.to_string(),
            })
        })
        .await
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let caller = Caller::of(&request)?;
        self.counted("ListTokens", async move {
            caller.require_operator("listing tokens")?;
            let rows = self.store(|s| s.tokens()).await?;
            Ok(ListTokensResponse {
                tokens: rows
                    .into_iter()
                    .map(|t| TokenInfo {
                        id: t.id,
                        role: t.role,
                        node: t.node,
                        note: t.note,
                        created_by: t.created_by,
                        created_at: t.created_at,
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        self.counted("RevokeToken", async move {
            caller.require_operator("revoking tokens")?;
            check_id("id", &r.id)?;
            let id = r.id.clone();
            if !self.store(move |s| s.revoke_token(&id)).await? {
                return Err(Status::not_found(format!("no token {:?}", r.id)));
            }
            info!(caller = %caller.name, id = %r.id, "admin: token revoked");
            Ok(RevokeTokenResponse {})
        })
        .await
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let caller = Caller::of(&request)?;
        self.counted("WhoAmI", async move {
            Ok(WhoAmIResponse {
                role: caller.role.name().to_string(),
                node: match &caller.role {
                    Role::Node(n) => n.clone(),
                    Role::Operator => String::new(),
                },
                name: caller.name.clone(),
                registration: self.broker.registration().name().to_string(),
            })
        })
        .await
    }

    async fn set_secret(
        &self,
        request: Request<SetSecretRequest>,
    ) -> Result<Response<SetSecretResponse>, Status> {
        Caller::of(&request)?.require_operator("setting secrets")?;
        let r = request.into_inner();
        self.counted("SetSecret", async move {
            check_id("id", &r.id)?;
            let payload = Zeroizing::new(r.payload);
            if payload.is_empty() {
                return Err(Status::invalid_argument("payload: empty"));
            }
            if payload.len() > MAX_SECRET {
                return Err(Status::invalid_argument(format!(
                    "payload: longer than {MAX_SECRET} bytes"
                )));
            }
            let id = r.id.clone();
            self.store(move |s| s.set_secret(&id, &payload)).await?;
            info!(id = %r.id, "admin: secret set");
            Ok(SetSecretResponse {})
        })
        .await
    }

    async fn delete_secret(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        Caller::of(&request)?.require_operator("deleting secrets")?;
        self.delete(
            "DeleteSecret",
            "secret",
            request.into_inner().id,
            Store::delete_secret,
        )
        .await
    }

    async fn set_keyset(
        &self,
        request: Request<SetKeysetRequest>,
    ) -> Result<Response<SetKeysetResponse>, Status> {
        Caller::of(&request)?.require_operator("setting keysets")?;
        let r = request.into_inner();
        self.counted("SetKeyset", async move {
            check_id("id", &r.id)?;
            if r.secret_ids.len() > MAX_KEYSET {
                return Err(Status::invalid_argument(format!(
                    "secret_ids: at most {MAX_KEYSET}"
                )));
            }
            if r.resource_ids.len() > MAX_KEYSET {
                return Err(Status::invalid_argument(format!(
                    "resource_ids: at most {MAX_KEYSET}"
                )));
            }
            for (i, s) in r.secret_ids.iter().enumerate() {
                check_id(&format!("secret_ids[{i}]"), s)?;
            }
            for (i, s) in r.resource_ids.iter().enumerate() {
                check_id(&format!("resource_ids[{i}]"), s)?;
            }
            let id = r.id.clone();
            let members = KeysetMembers {
                secrets: r.secret_ids.clone(),
                resources: r.resource_ids.clone(),
            };
            self.store(move |s| s.set_keyset_members(&id, &members)).await?;
            info!(id = %r.id, secrets = ?r.secret_ids, resources = ?r.resource_ids, "admin: keyset set");
            Ok(SetKeysetResponse {})
        })
        .await
    }

    async fn delete_keyset(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        Caller::of(&request)?.require_operator("deleting keysets")?;
        self.delete(
            "DeleteKeyset",
            "keyset",
            request.into_inner().id,
            Store::delete_keyset,
        )
        .await
    }

    async fn set_resource(
        &self,
        request: Request<SetResourceRequest>,
    ) -> Result<Response<SetResourceResponse>, Status> {
        Caller::of(&request)?.require_operator("setting resources")?;
        let r = request.into_inner();
        self.counted("SetResource", async move {
            check_id("id", &r.id)?;
            if r.data.len() > MAX_RESOURCE {
                return Err(Status::invalid_argument(format!(
                    "data: longer than {MAX_RESOURCE} bytes"
                )));
            }
            let id = r.id.clone();
            let data = Zeroizing::new(r.data);
            self.store(move |s| s.set_resource(&id, &data)).await?;
            info!(id = %r.id, "admin: resource set");
            Ok(SetResourceResponse {})
        })
        .await
    }

    async fn delete_resource(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        Caller::of(&request)?.require_operator("deleting resources")?;
        self.delete(
            "DeleteResource",
            "resource",
            request.into_inner().id,
            Store::delete_resource,
        )
        .await
    }

    async fn list_inventory(
        &self,
        request: Request<ListInventoryRequest>,
    ) -> Result<Response<ListInventoryResponse>, Status> {
        Caller::of(&request)?.require_operator("listing secrets, keysets and resources")?;
        self.counted("ListInventory", async move {
            let inv = self.store(|s| s.list_ids()).await?;
            Ok(ListInventoryResponse {
                secrets: inv.secrets,
                keysets: inv
                    .keysets
                    .into_iter()
                    .map(|(id, m)| Keyset {
                        id,
                        secret_ids: m.secrets,
                        resource_ids: m.resources,
                    })
                    .collect(),
                resources: inv.resources,
            })
        })
        .await
    }

    async fn list_records(
        &self,
        request: Request<ListRecordsRequest>,
    ) -> Result<Response<ListRecordsResponse>, Status> {
        Caller::of(&request)?.require_operator("reading attestation records")?;
        let r = request.into_inner();
        self.counted("ListRecords", async move {
            if r.after_id < 0 {
                return Err(Status::invalid_argument("after_id: negative"));
            }
            let limit = match r.limit {
                0 => DEFAULT_RECORDS,
                n if n > MAX_RECORDS => {
                    return Err(Status::invalid_argument(format!(
                        "limit: at most {MAX_RECORDS}"
                    )))
                }
                n => n,
            };
            let after = r.after_id;
            let records = self.store(move |s| s.records(after, limit)).await?;
            Ok(ListRecordsResponse {
                records: records.into_iter().map(AttestationRecord::from).collect(),
            })
        })
        .await
    }

    async fn trustee_status(
        &self,
        request: Request<TrusteeStatusRequest>,
    ) -> Result<Response<TrusteeStatusResponse>, Status> {
        Caller::of(&request)?.require_operator("reading the Trustee status")?;
        self.counted("TrusteeStatus", async move {
            self.blocking(crate::trustee::status::status).await
        })
        .await
    }

    async fn set_tcb_pin(
        &self,
        request: Request<SetTcbPinRequest>,
    ) -> Result<Response<SetTcbPinResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_operator("pinning TCB values")?;
        let r = request.into_inner();
        self.counted("SetTcbPin", async move {
            let pin = match (r.clear, &r.pin) {
                (true, _) => crate::store::TcbPin::default(),
                (false, Some(p)) => crate::trustee::status::pin_from_proto(p).map_err(|field| {
                    Status::invalid_argument(format!("pin.{field}: at most 255"))
                })?,
                (false, None) => {
                    return Err(Status::invalid_argument("pin: missing (or set clear)"))
                }
            };
            if !r.clear && pin.is_empty() {
                return Err(Status::invalid_argument(
                    "pin: no field set (or set clear to remove the pins)",
                ));
            }
            self.store(move |s| s.set_tcb_pin(&pin)).await?;
            info!(caller = %caller.name, ?pin, "admin: TCB pin set");
            Ok(SetTcbPinResponse {})
        })
        .await
    }
}

/// Why the admin socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Something other than a socket is in the way.
    #[error("admin socket {0}: exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    /// Another process answers on the socket.
    #[error("admin socket {0}: another process is serving on it")]
    InUse(PathBuf),
    /// Creating, removing, binding or restricting the socket failed.
    #[error("admin socket {path}: cannot {step}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Binds the admin socket at `path`, mode 0600: creates missing parent
/// directories (mode 0755), and removes a stale socket that nobody serves.
/// Must run inside a tokio runtime.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let io = |step| {
        move |source| SocketError::Io {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("create its directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
            info!(path = %path.display(), "admin: removed a stale socket");
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect it")(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io("bind"))?;
    // Between bind and chmod the socket carries the umask's mode; the peer
    // credential check is what keeps other users out, the mode is a second wall.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set mode 0600"))?;
    Ok(listener)
}

impl From<crate::store::AttestationRecord> for AttestationRecord {
    fn from(a: crate::store::AttestationRecord) -> Self {
        AttestationRecord {
            id: a.id,
            at: a.at,
            rpc: a.rpc,
            launch_id: a.launch_id,
            outcome: a.outcome,
            reason: a.reason,
            digest: a.digest,
            policy: a.policy,
            firmware: a.firmware,
            description: a.description,
            guest_status: a.guest_status,
            failed_checks: a.failed_checks,
            reported_at: a.reported_at,
            guest_client: a.guest_client,
            tee: a.tee,
            chip_id: a.chip_id,
        }
    }
}

impl From<AttestationRecord> for crate::store::AttestationRecord {
    fn from(a: AttestationRecord) -> Self {
        crate::store::AttestationRecord {
            id: a.id,
            at: a.at,
            rpc: a.rpc,
            launch_id: a.launch_id,
            outcome: a.outcome,
            reason: a.reason,
            digest: a.digest,
            policy: a.policy,
            firmware: a.firmware,
            description: a.description,
            guest_status: a.guest_status,
            failed_checks: a.failed_checks,
            reported_at: a.reported_at,
            guest_client: a.guest_client,
            tee: a.tee,
            chip_id: a.chip_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef-token";

    #[test]
    fn a_busy_database_is_worth_a_retry_and_names_no_server() {
        let busy = StoreError::Busy {
            db: "postgres://kbs@db.internal:5432/kbs".into(),
            what: "attestation records",
        };
        let st = store_status(&busy);
        assert_eq!(st.code(), tonic::Code::Unavailable);
        assert_eq!(
            st.message(),
            "attestation records are being written; try again"
        );
        let other = StoreError::Corrupt {
            db: "postgres://kbs@db.internal:5432/kbs".into(),
            what: "report key",
        };
        let st = store_status(&other);
        assert_eq!(
            (st.code(), st.message()),
            (tonic::Code::Internal, "internal error")
        );
    }

    fn write_token(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("token");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn token_file_must_be_private_regular_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_token(dir.path(), &format!("{TOKEN}\n"), 0o600);
        let t = AdminToken::load(&p).unwrap();
        assert!(t.matches(TOKEN.as_bytes()));
        assert!(!t.matches(b"0123456789abcdef0123456789abcdef-tokeN"));
        assert!(!t.matches(b""));

        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            let p = write_token(dir.path(), TOKEN, mode);
            let e = AdminToken::load(&p).unwrap_err();
            assert!(
                matches!(e, TokenFileError::Permissions { .. }),
                "{mode:o}: {e}"
            );
            assert!(e.to_string().contains(&p.display().to_string()));
        }
        let p = write_token(dir.path(), "short-token\n", 0o600);
        let e = AdminToken::load(&p).unwrap_err();
        assert!(matches!(e, TokenFileError::BadToken { .. }));
        assert!(!e.to_string().contains("short-token"));
        let p = write_token(dir.path(), "0123456789abcdef 0123456789abcdef", 0o600);
        assert!(matches!(
            AdminToken::load(&p),
            Err(TokenFileError::BadToken { .. })
        ));
        assert!(matches!(
            AdminToken::load(dir.path()),
            Err(TokenFileError::NotAFile { .. })
        ));
        assert!(matches!(
            AdminToken::load(&dir.path().join("missing")),
            Err(TokenFileError::Read { .. })
        ));
    }

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let t = AdminToken::from_bytes(TOKEN.as_bytes());
        assert!(t.authorizes(format!("Bearer {TOKEN}").as_bytes()));
        assert!(t.authorizes(format!("bearer {TOKEN}").as_bytes()));
        assert!(!t.authorizes(TOKEN.as_bytes()));
        assert!(!t.authorizes(format!("Basic {TOKEN}").as_bytes()));
        assert!(!t.authorizes(b"Bearer "));
        assert!(!t.authorizes(b""));
    }

    #[test]
    fn socket_uids_are_root_own_and_extra() {
        let a = AllowedUids::new(1000, vec![2000]);
        assert!(a.allows(0));
        assert!(a.allows(1000));
        assert!(a.allows(2000));
        assert!(!a.allows(65534));
        assert!(!a.allows(1001));
    }

    #[test]
    fn interceptor_refuses_without_credentials_and_says_nothing_more() {
        let metrics = Arc::new(Metrics::new());
        let mut tcp = AdminAuth::token(AdminToken::from_bytes(TOKEN.as_bytes()), metrics.clone());
        let e = tcp.call(Request::new(())).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        let e2 = tcp.call(wrong).unwrap_err();
        assert_eq!(e.message(), e2.message());
        let mut right = Request::new(());
        right
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        assert!(tcp.call(right).is_ok());
        // A request that did not come over a Unix socket has no credentials.
        let mut unix = AdminAuth::peer_uid(AllowedUids::new(0, vec![]), metrics.clone());
        assert_eq!(
            unix.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(metrics
            .encode()
            .contains("kbs_admin_auth_failures_total{listener=\"unix\"} 1"));
    }

    #[test]
    fn ids_and_digests_are_checked_field_by_field() {
        assert!(check_id("id", "kata/key-1").is_ok());
        assert!(check_id("id", "")
            .unwrap_err()
            .message()
            .starts_with("id: "));
        assert!(check_id("id", "a b").is_err());
        assert!(check_id("id", "a\u{7f}").is_err());
        assert!(check_id("id", "é").is_err());
        assert!(check_id("id", &"x".repeat(MAX_ID)).is_ok());
        assert!(check_id("id", &"x".repeat(MAX_ID + 1)).is_err());
        let d = |mode: &str, len: usize, vcpus: u32| Digest {
            mode: mode.into(),
            digest: vec![7; len],
            vcpus,
            vcpu_type: "EPYC-v4".into(),
            config: "configuration-qemu-sev.toml\nline two".into(),
        };
        assert!(check_digest("digests[0]", &d("sev", 32, 0)).is_ok());
        assert!(check_digest("digests[0]", &d("seves", 32, 2)).is_ok());
        assert!(check_digest("digests[0]", &d("snp", 48, 1)).is_ok());
        let e = check_digest("digests[1]", &d("snp", 32, 1)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("digests[1].digest:"),
            "{}",
            e.message()
        );
        assert!(check_digest("d", &d("sev-snp", 48, 1))
            .unwrap_err()
            .message()
            .starts_with("d.mode:"));
        assert!(check_digest("d", &d("seves", 32, 0))
            .unwrap_err()
            .message()
            .starts_with("d.vcpus:"));
        let mut bad = d("sev", 32, 1);
        bad.config = "a\u{1b}[2J".into();
        assert!(check_digest("d", &bad)
            .unwrap_err()
            .message()
            .starts_with("d.config:"));
        let (bytes, rec) = check_digest("d", &d("sev", 32, 1)).unwrap();
        assert_eq!(bytes, vec![7; 32]);
        assert_eq!(rec.digest, "07".repeat(32));
    }

    #[tokio::test]
    async fn socket_is_private_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/admin.sock");
        let l = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind_socket(&path), Err(SocketError::InUse(_))));
        drop(l);
        bind_socket(&path).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_socket(&file),
            Err(SocketError::NotASocket(_))
        ));
        assert!(file.exists());
    }
}
