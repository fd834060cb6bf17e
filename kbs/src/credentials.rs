//! Who may call the admin API, and as what.
//!
//! Every admin call is authenticated by the interceptor of its listener
//! ([`AdminAuth`]) before the service sees it, and carries a [`Caller`]: a role
//! and a name for logs and approvals. Two roles:
//!
//! - operator: every call;
//! - node: only its own node's digests (the node is bound to the credential,
//!   never taken from the request), its registrations, and who it is.
//!
//! Credentials: on TCP, a bearer token, either the token file given at start
//! (operator) or a token made by `kbs admin token create` (kept in the
//! database as its SHA-256 only, looked up by that hash); on the Unix socket,
//! the peer credentials the kernel gives (SO_PEERCRED): root and the broker's
//! own uid are operators, other uids only as configured.

use crate::metrics::Metrics;
use crate::store::{Store, TokenRow};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use tracing::{error, warn};
use zeroize::Zeroizing;

/// Shortest admin token accepted, in bytes.
pub const MIN_TOKEN: usize = 32;
/// Largest admin token file read.
const MAX_TOKEN_FILE: u64 = 4096;
/// The prefix of tokens the broker makes, so that they are recognisable in a
/// leaked file or a secret scanner.
pub const TOKEN_PREFIX: &str = "kbsat_";

/// The message every unauthenticated caller gets, whatever was wrong.
const UNAUTHENTICATED: &str = "admin credentials missing or invalid";

/// What a credential may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Operator,
    /// Only this node's digests and registrations.
    Node(String),
}

impl Role {
    /// `operator` or `node`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Node(_) => "node",
        }
    }
}

/// The authenticated caller of one admin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What it may do.
    pub role: Role,
    /// How it is named in approvals and logs (`token 3f9a...`, `uid 0`).
    pub name: String,
}

impl Caller {
    /// The caller of a request, as its listener's interceptor stored it.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated(UNAUTHENTICATED))
    }

    /// Refuses a node credential.
    pub fn require_operator(&self, what: &str) -> Result<(), Status> {
        match &self.role {
            Role::Operator => Ok(()),
            Role::Node(node) => {
                warn!(caller = %self.name, %node, what, "admin: a node credential was refused an operator call");
                Err(Status::permission_denied(format!(
                    "{what} needs an operator credential; this one is node {node:?}'s"
                )))
            }
        }
    }

    /// The node a call about `requested` (empty: the caller's own) is for: a
    /// node credential speaks only for its own node.
    pub fn node_for(&self, requested: &str) -> Result<String, Status> {
        match &self.role {
            Role::Operator if requested.is_empty() => Err(Status::invalid_argument(
                "node: empty (an operator credential must name the node)",
            )),
            Role::Operator => Ok(requested.to_string()),
            Role::Node(node) if requested.is_empty() || requested == node => Ok(node.clone()),
            Role::Node(node) => {
                warn!(caller = %self.name, %node, requested, "admin: a node credential asked for another node");
                Err(Status::permission_denied(format!(
                    "this credential is node {node:?}'s and cannot act for node {requested:?}"
                )))
            }
        }
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

/// Reads a credential file: a regular file owned by root or by this
/// process's uid, not accessible to group or others; at most `max` + 1 bytes
/// (so that a caller can tell a file over `max`).
pub fn read_private(path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, TokenFileError> {
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
    file.take(max.saturating_add(1))
        .read_to_end(&mut raw)
        .map_err(read)?;
    Ok(raw)
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
        let raw = read_private(path, MAX_TOKEN_FILE)?;
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

/// A token the broker makes: its public id, the token (shown once) and the
/// hash that is stored.
pub struct NewToken {
    /// Public id, for listing and revoking.
    pub id: String,
    /// The bearer token.
    pub token: Zeroizing<String>,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
}

/// Whether `token` has the shape of one [`new_token`] makes:
/// `kbsat_`, 12 hexadecimal digits, `_`, 64 hexadecimal digits.
fn well_formed(token: &[u8]) -> bool {
    let Some(rest) = token.strip_prefix(TOKEN_PREFIX.as_bytes()) else {
        return false;
    };
    rest.len() == 12 + 1 + 64
        && rest.iter().enumerate().all(|(i, b)| {
            if i == 12 {
                *b == b'_'
            } else {
                b.is_ascii_digit() || (b'a'..=b'f').contains(b)
            }
        })
}

/// Makes a token: `kbsat_<id>_<secret>`, 256 bits of secret from the OS.
pub fn new_token() -> NewToken {
    use rand_core::{OsRng, RngCore};
    let mut id = [0u8; 6];
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut id);
    OsRng.fill_bytes(&mut secret[..]);
    let id = crate::store::hex(&id);
    let token = Zeroizing::new(format!(
        "{TOKEN_PREFIX}{id}_{}",
        Zeroizing::new(crate::store::hex(&secret[..])).as_str()
    ));
    let hash = Sha256::digest(token.as_bytes()).into();
    NewToken { id, token, hash }
}

/// The tokens made by `kbs admin token create`, looked up by hash in the
/// database at every call. Not cached: with replicas, a token revoked
/// through one must stop working on all at once.
#[derive(Debug, Default)]
pub struct TokenTable {}

fn caller_of(row: &TokenRow) -> Caller {
    Caller {
        role: if row.role == "operator" {
            Role::Operator
        } else {
            Role::Node(row.node.clone())
        },
        name: format!("token {}", row.id),
    }
}

impl TokenTable {
    /// The caller a presented token belongs to. A database that cannot be
    /// read admits nobody.
    pub fn lookup(&self, store: &Store, presented: &[u8]) -> Option<Caller> {
        // Only what [`new_token`] could have made reaches the database: a
        // caller's garbage costs no query.
        if !well_formed(presented) {
            return None;
        }
        // Looked up by hash: the time taken tells nothing about the token.
        let hash: [u8; 32] = Sha256::digest(presented).into();
        match store.token_by_hash(&hash) {
            Ok(row) => row.as_ref().map(caller_of),
            Err(e) => {
                error!(error = %e, "admin: cannot read the tokens; refusing token callers");
                None
            }
        }
    }
}

/// This process's effective uid.
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The uids admitted on the admin socket and their roles: root and the
/// broker's own uid as operators, and those configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUids {
    own: u32,
    extra: HashMap<u32, Role>,
}

impl AllowedUids {
    /// Root and `own` as operators, and `extra` as operators.
    pub fn new(own: u32, extra: Vec<u32>) -> AllowedUids {
        AllowedUids {
            own,
            extra: extra.into_iter().map(|u| (u, Role::Operator)).collect(),
        }
    }

    /// Root and `own` as operators, and each of `extra` in its role.
    pub fn with_roles(own: u32, extra: Vec<(u32, Role)>) -> AllowedUids {
        AllowedUids {
            own,
            extra: extra.into_iter().collect(),
        }
    }

    /// The role of `uid` on the admin socket, if admitted.
    pub fn role(&self, uid: u32) -> Option<Role> {
        if uid == 0 || uid == self.own {
            return Some(Role::Operator);
        }
        self.extra.get(&uid).cloned()
    }

    /// Whether `uid` may call the admin API over the socket.
    pub fn allows(&self, uid: u32) -> bool {
        self.role(uid).is_some()
    }
}

/// A `--admin-uid` value: `UID` (an operator) or `UID:node=NAME`.
pub fn parse_uid_role(text: &str) -> Result<(u32, Role), String> {
    let (uid, role) = match text.split_once(':') {
        None => (text, None),
        Some((u, r)) => (u, Some(r)),
    };
    let uid: u32 = uid
        .parse()
        .map_err(|e| format!("{text:?}: the uid {uid:?}: {e}"))?;
    let role = match role {
        None | Some("operator") => Role::Operator,
        Some(r) => match r.strip_prefix("node=") {
            Some(node) if crate::admin::check_id("node", node).is_ok() => {
                Role::Node(node.to_string())
            }
            _ => {
                return Err(format!(
                    "{text:?}: expected UID, UID:operator or UID:node=NAME"
                ))
            }
        },
    };
    Ok((uid, role))
}

enum Check {
    /// TCP: the token file's token (an operator), or a stored token.
    Token {
        file: Option<AdminToken>,
        table: Option<Arc<crate::broker::Broker>>,
    },
    PeerUid(AllowedUids),
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Token { file, table } => f
                .debug_struct("Token")
                .field("file", file)
                .field("table", &table.is_some())
                .finish(),
            Check::PeerUid(a) => f.debug_tuple("PeerUid").field(a).finish(),
        }
    }
}

/// The interceptor that authenticates every admin call of one listener and
/// hands the service its [`Caller`].
#[derive(Debug, Clone)]
pub struct AdminAuth {
    check: Arc<Check>,
    metrics: Arc<Metrics>,
}

impl AdminAuth {
    /// For the TCP listener: callers present the token file's token (an
    /// operator) or a token `broker` made.
    pub fn tokens(
        file: Option<AdminToken>,
        broker: Arc<crate::broker::Broker>,
        metrics: Arc<Metrics>,
    ) -> AdminAuth {
        AdminAuth {
            check: Arc::new(Check::Token {
                file,
                table: Some(broker),
            }),
            metrics,
        }
    }

    /// For a TCP listener that admits only the token file's token (the
    /// interceptor's tests; the kbs itself always admits stored tokens too).
    #[cfg(test)]
    pub fn token(token: AdminToken, metrics: Arc<Metrics>) -> AdminAuth {
        AdminAuth {
            check: Arc::new(Check::Token {
                file: Some(token),
                table: None,
            }),
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

/// The token of an `authorization` header value (`Bearer <token>`, scheme
/// case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_first_chunk::<7>()?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match &*self.check {
            Check::Token { file, table } => {
                let presented = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| bearer(v.as_bytes()));
                let caller = presented.and_then(|t| {
                    if file.as_ref().is_some_and(|f| f.matches(t)) {
                        Some(Caller {
                            role: Role::Operator,
                            name: "token file".into(),
                        })
                    } else {
                        table.as_ref().and_then(|b| b.tokens().lookup(b.store(), t))
                    }
                });
                match caller {
                    Some(c) => c,
                    None => {
                        warn!(peer = ?request.remote_addr(), "admin: refused a TCP caller without a valid token");
                        return Err(self.refuse("tcp"));
                    }
                }
            }
            Check::PeerUid(allowed) => {
                let cred = request
                    .extensions()
                    .get::<tonic::transport::server::UdsConnectInfo>()
                    .and_then(|c| c.peer_cred);
                match cred {
                    Some(c) => match allowed.role(c.uid()) {
                        Some(role) => Caller {
                            role,
                            name: format!("uid {}", c.uid()),
                        },
                        None => {
                            warn!(
                                uid = c.uid(),
                                pid = ?c.pid(),
                                "admin: refused a caller on the Unix socket: uid not allowed"
                            );
                            return Err(self.refuse("unix"));
                        }
                    },
                    None => {
                        warn!("admin: refused a caller on the Unix socket: no peer credentials");
                        return Err(self.refuse("unix"));
                    }
                }
            }
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_of_the_broker_s_shape_are_looked_up() {
        let t = new_token();
        assert!(well_formed(t.token.as_bytes()));
        assert!(!well_formed(b"kbsat_"));
        assert!(!well_formed(t.token.to_uppercase().as_bytes()));
        assert!(!well_formed(format!("{}0", t.token.as_str()).as_bytes()));
        assert!(!well_formed(
            t.token.replacen("kbsat_", "kbsxx_", 1).as_bytes()
        ));
    }
}
