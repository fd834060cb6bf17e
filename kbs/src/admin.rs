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
use crate::metrics::Metrics;
use crate::store::{DigestRecord, Store, StoreError};
use kbs_proto::kbsadmin::admin_server::Admin;
use kbs_proto::kbsadmin::{
    AttestationRecord, DeleteRequest, DeleteResponse, Digest, Keyset, ListDigestsRequest,
    ListDigestsResponse, ListInventoryRequest, ListInventoryResponse, ListRecordsRequest,
    ListRecordsResponse, RegisteredDigest, ReplaceDigestsRequest, ReplaceDigestsResponse,
    SetKeysetRequest, SetKeysetResponse, SetResourceRequest, SetResourceResponse, SetSecretRequest,
    SetSecretResponse,
};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::future::Future;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};
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
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u32 = 4096;
/// Records returned when the request names no limit.
pub const DEFAULT_RECORDS: u32 = 100;
/// Most records in one ListRecords.
pub const MAX_RECORDS: u32 = 1000;
/// Shortest admin token accepted, in bytes.
pub const MIN_TOKEN: usize = 32;
/// Largest admin token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// The message every unauthenticated caller gets, whatever was wrong.
const UNAUTHENTICATED: &str = "admin credentials missing or invalid";

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
fn check_text(field: &str, text: &str, max: usize) -> Result<(), Status> {
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

fn internal(e: &StoreError) -> Status {
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
        let b = Arc::clone(&self.broker);
        tokio::task::spawn_blocking(move || f(b.store()))
            .await
            .map_err(|e| {
                error!(error = %e, "admin: store task failed");
                Status::internal("internal error")
            })?
            .map_err(|e| internal(&e))
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
        let r = request.into_inner();
        self.counted("ReplaceDigests", async move {
            check_id("node", &r.node)?;
            check_id("runtime_class", &r.runtime_class)?;
            if r.digests.len() > MAX_DIGESTS {
                return Err(Status::invalid_argument(format!(
                    "digests: at most {MAX_DIGESTS} in one call"
                )));
            }
            let digests = r
                .digests
                .iter()
                .enumerate()
                .map(|(i, d)| check_digest(&format!("digests[{i}]"), d))
                .collect::<Result<Vec<_>, _>>()?;
            let distinct: HashSet<_> = digests
                .iter()
                .map(|(bytes, d)| (d.mode.clone(), bytes.clone(), d.vcpus, d.vcpu_type.clone()))
                .collect();
            let count = u32::try_from(distinct.len()).unwrap_or(u32::MAX);
            let (node, class) = (r.node.clone(), r.runtime_class.clone());
            self.store(move |s| s.replace_digests(&node, &class, &digests))
                .await?;
            info!(node = %r.node, runtime_class = %r.runtime_class, count, "admin: digests replaced");
            Ok(ReplaceDigestsResponse { count })
        })
        .await
    }

    async fn list_digests(
        &self,
        request: Request<ListDigestsRequest>,
    ) -> Result<Response<ListDigestsResponse>, Status> {
        let r = request.into_inner();
        self.counted("ListDigests", async move {
            if !r.node.is_empty() {
                check_id("node", &r.node)?;
            }
            if !r.runtime_class.is_empty() {
                check_id("runtime_class", &r.runtime_class)?;
            }
            let all = self.store(|s| s.list_digests()).await?;
            let mut digests = Vec::new();
            for (node, runtime_class, d) in all {
                if (!r.node.is_empty() && node != r.node)
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
                });
            }
            Ok(ListDigestsResponse { digests })
        })
        .await
    }

    async fn set_secret(
        &self,
        request: Request<SetSecretRequest>,
    ) -> Result<Response<SetSecretResponse>, Status> {
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
        let r = request.into_inner();
        self.counted("SetKeyset", async move {
            check_id("id", &r.id)?;
            if r.secret_ids.len() > MAX_KEYSET {
                return Err(Status::invalid_argument(format!(
                    "secret_ids: at most {MAX_KEYSET}"
                )));
            }
            for (i, s) in r.secret_ids.iter().enumerate() {
                check_id(&format!("secret_ids[{i}]"), s)?;
            }
            let (id, members) = (r.id.clone(), r.secret_ids.clone());
            self.store(move |s| s.set_keyset(&id, &members)).await?;
            info!(id = %r.id, secrets = ?r.secret_ids, "admin: keyset set");
            Ok(SetKeysetResponse {})
        })
        .await
    }

    async fn delete_keyset(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
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
        _request: Request<ListInventoryRequest>,
    ) -> Result<Response<ListInventoryResponse>, Status> {
        self.counted("ListInventory", async move {
            let inv = self.store(|s| s.list_ids()).await?;
            Ok(ListInventoryResponse {
                secrets: inv.secrets,
                keysets: inv
                    .keysets
                    .into_iter()
                    .map(|(id, secret_ids)| Keyset { id, secret_ids })
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
}

/// Why the admin token file is refused. Messages name the file, never its
/// content.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be opened or read.
    #[error("admin token file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// It is a directory, device or other non-regular file.
    #[error("admin token file {path} is not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// Group or others may read or write it.
    #[error("admin token file {path} has mode {mode:04o}: group and others must have no access (chmod 600)")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another unprivileged user owns it, and could change it.
    #[error("admin token file {path} is owned by uid {owner}: it must be owned by root or by the broker's uid {me}")]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The broker's effective uid.
        me: u32,
    },
    /// The token is too short, too long or holds characters a header cannot.
    #[error("admin token file {path} must hold one token of {MIN_TOKEN} to {MAX_TOKEN_FILE} printable ASCII characters without spaces")]
    BadToken {
        /// The file.
        path: PathBuf,
    },
}

/// The bearer token TCP admin callers must present. Only its SHA-256 is kept.
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token from `path`: a regular file owned by root or by this
    /// process's uid, not accessible to group or others, holding at least
    /// [`MIN_TOKEN`] bytes of token after trimming white space.
    pub fn load(path: &Path) -> Result<AdminToken, TokenFileError> {
        let read = |error| TokenFileError::Read {
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        if !meta.is_file() {
            return Err(TokenFileError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenFileError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let me = own_uid();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(TokenFileError::Owner {
                path: path.to_path_buf(),
                owner: meta.uid(),
                me,
            });
        }
        let mut raw = Zeroizing::new(Vec::new());
        file.take(MAX_TOKEN_FILE + 1)
            .read_to_end(&mut raw)
            .map_err(read)?;
        let bad = || TokenFileError::BadToken {
            path: path.to_path_buf(),
        };
        if u64::try_from(raw.len()).unwrap_or(u64::MAX) > MAX_TOKEN_FILE {
            return Err(bad());
        }
        let token = raw.trim_ascii();
        if token.len() < MIN_TOKEN || !token.iter().all(u8::is_ascii_graphic) {
            return Err(bad());
        }
        Ok(AdminToken::from_bytes(token))
    }

    /// A token from its bytes (for tests and callers that hold it already).
    pub fn from_bytes(token: &[u8]) -> AdminToken {
        AdminToken {
            digest: Sha256::digest(token).into(),
        }
    }

    /// Whether `presented` is the token, in time independent of both (the
    /// hashes are compared, so not even the length shows).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(digest.ct_eq(&self.digest))
    }

    /// Whether an `authorization` header value carries the token
    /// (`Bearer <token>`, scheme case-insensitive).
    pub fn authorizes(&self, header: &[u8]) -> bool {
        let Some((scheme, rest)) = header.split_first_chunk::<7>() else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && self.matches(rest.trim_ascii())
    }
}

/// This process's effective uid.
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The uids allowed on the admin socket: root, the broker's own, and extras.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUids {
    own: u32,
    extra: Vec<u32>,
}

impl AllowedUids {
    /// Root, `own` and `extra`.
    pub fn new(own: u32, extra: Vec<u32>) -> AllowedUids {
        AllowedUids { own, extra }
    }

    /// Whether `uid` may call the admin API over the socket.
    pub fn allows(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own || self.extra.contains(&uid)
    }
}

#[derive(Debug)]
enum Check {
    Token(AdminToken),
    PeerUid(AllowedUids),
}

/// The interceptor that authenticates every admin call of one listener.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    check: Arc<Check>,
    metrics: Arc<Metrics>,
}

impl AdminAuth {
    /// For the TCP listener: callers must present `token`.
    pub fn token(token: AdminToken, metrics: Arc<Metrics>) -> AdminAuth {
        AdminAuth {
            check: Arc::new(Check::Token(token)),
            metrics,
        }
    }

    /// For the Unix socket: callers' peer credentials must name an allowed uid.
    pub fn peer_uid(allowed: AllowedUids, metrics: Arc<Metrics>) -> AdminAuth {
        AdminAuth {
            check: Arc::new(Check::PeerUid(allowed)),
            metrics,
        }
    }

    fn refuse(&self, listener: &'static str) -> Status {
        self.metrics.admin_auth_failure(listener);
        Status::unauthenticated(UNAUTHENTICATED)
    }
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &*self.check {
            Check::Token(token) => {
                let ok = request
                    .metadata()
                    .get("authorization")
                    .is_some_and(|v| token.authorizes(v.as_bytes()));
                if ok {
                    Ok(request)
                } else {
                    warn!(peer = ?request.remote_addr(), "admin: refused a TCP caller without a valid token");
                    Err(self.refuse("tcp"))
                }
            }
            Check::PeerUid(allowed) => {
                let cred = request
                    .extensions()
                    .get::<tonic::transport::server::UdsConnectInfo>()
                    .and_then(|c| c.peer_cred);
                match cred {
                    Some(c) if allowed.allows(c.uid()) => Ok(request),
                    Some(c) => {
                        warn!(
                            uid = c.uid(),
                            pid = ?c.pid(),
                            "admin: refused a caller on the Unix socket: uid not allowed"
                        );
                        Err(self.refuse("unix"))
                    }
                    None => {
                        warn!("admin: refused a caller on the Unix socket: no peer credentials");
                        Err(self.refuse("unix"))
                    }
                }
            }
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef-token";

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
