//! A stand-in, on loopback, for the REST server the Confidential Containers
//! guest components run inside a guest (`api-server-rest`, normally on
//! 127.0.0.1:8006), and a signer of EAR attestation tokens laid out as
//! Trustee's attestation service lays them out.
//!
//! The server answers as api-server-rest v0.21.0 answers:
//! - `GET /cdh/resource/<repo>/<type>/<tag>`: 200 with the resource's bytes
//!   (`application/octet-stream`); a resource the KBS does not hold, or a
//!   refused attestation, is a 500 whose body is the confidential data hub's
//!   ttRPC error text (the REST server cannot tell the two apart);
//! - `GET /aa/token?token_type=kbs`: 200 with the attestation agent's JSON
//!   `{"token": <JWT>, "tee_keypair": <PEM private key>}`; no `token_type` is
//!   a 400, a failed attestation a 500;
//! - `GET /info`: the version and the enabled feature group;
//! - a feature group that is off answers 404 with "Resource Feature Not
//!   Enabled" or "Attestation Feature Not Enabled"; unknown paths answer 404
//!   "URL NOT FOUND"; peers off loopback get 403.
//!
//! The other attestation agent endpoints (`/aa/evidence`,
//! `/aa/additional-evidence`, `/aa/aael`) are not simulated and answer 404.
//!
//! [`EarTokenSigner`] signs with ES256 over a P-256 key and embeds the public
//! key as a `jwk` in the JWS header, as Trustee does; the claims carry the
//! verdict under `submods.cpu0["ear.status"]` and the SNP launch measurement,
//! as lowercase hex, under
//! `submods.cpu0["ear.veraison.annotated-evidence"].snp.measurement`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use serde_json::{json, Value};

/// Where api-server-rest listens unless told otherwise.
pub const DEFAULT_BIND: &str = "127.0.0.1:8006";

/// The `eat_profile` Trustee's attestation service puts in its tokens.
pub const TRUSTEE_EAR_PROFILE: &str = "tag:github.com,2024:confidential-containers/Trustee";
/// The `iss` Trustee's attestation service puts in its tokens.
pub const TRUSTEE_ISSUER: &str = "CoCo-Attestation-Service";
/// The verifier developer Trustee names in `ear.verifier-id`.
pub const TRUSTEE_DEVELOPER: &str = "https://confidentialcontainers.org";
/// The verifier build Trustee names in `ear.verifier-id` (crate name and version).
pub const TRUSTEE_BUILD: &str = "attestation-service 0.1.0";
/// How long Trustee's tokens last by default, in seconds (5 minutes).
pub const TRUSTEE_TOKEN_LIFETIME_SECS: i64 = 300;

/// The body of the 500 api-server-rest answers when the confidential data hub
/// fails to get a resource (missing at the KBS, or attestation refused): the
/// Debug form of the ttRPC status the hub returns.
pub const CDH_GET_RESOURCE_FAILED: &str = "rpc status: Status { code: INTERNAL, message: \
     \"[CDH] [ERROR]: Get Resource failed\", details: [], special_fields: SpecialFields { \
     unknown_fields: UnknownFields { fields: None }, cached_size: CachedSize { size: 0 } } }";

/// The body of the 500 api-server-rest answers when the attestation agent
/// cannot get a token.
pub const AA_GET_TOKEN_FAILED: &str = "rpc status: Status { code: INTERNAL, message: \
     \"[ERROR:attestation-agent] AA-KBC get token failed\", details: [], special_fields: \
     SpecialFields { unknown_fields: UnknownFields { fields: None }, cached_size: CachedSize \
     { size: 0 } } }";

/// The body of the 500 the [`Fault::ServerError`] fault answers.
pub const SERVER_ERROR_BODY: &str = "ttrpc err: the component behind the REST server failed";

/// The version `/info` reports.
const SIM_VERSION: &str = "simulated";

/// Why the simulated REST server or the token signer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestComponentsError {
    /// The listening socket could not be opened.
    #[error("cannot listen on 127.0.0.1:{port}: {reason}")]
    Bind {
        /// The port asked for (0: any).
        port: u16,
        /// The server library's reason.
        reason: String,
    },

    /// The listener reports no IP address to connect to.
    #[error("the REST server's listener has no IP address")]
    NoAddress,

    /// OpenSSL failed in one step of key generation, encoding or signing.
    #[error("OpenSSL failed while {step}: {source}")]
    Crypto {
        /// The step that failed.
        step: &'static str,
        /// OpenSSL's error queue.
        #[source]
        source: openssl::error::ErrorStack,
    },

    /// JSON encoding of the token's header or claims failed.
    #[error("cannot encode the token's {part} as JSON: {source}")]
    Json {
        /// `header` or `claims`.
        part: &'static str,
        /// serde_json's reason.
        #[source]
        source: serde_json::Error,
    },

    /// A PEM produced by OpenSSL was not UTF-8.
    #[error("the {what} PEM is not UTF-8")]
    PemText {
        /// Which key.
        what: &'static str,
    },
}

fn crypto(step: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> GuestComponentsError {
    move |source| GuestComponentsError::Crypto { step, source }
}

/// Which API groups the REST server serves: its `--features` flag, which the
/// Kata agent sets from `agent.guest_components_rest_api`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestFeatures {
    /// Only `/cdh/...` (the default of both api-server-rest and the Kata agent).
    #[default]
    Resource,
    /// Only `/aa/...`.
    Attestation,
    /// Both.
    All,
}

impl RestFeatures {
    /// The flag's spelling: `resource`, `attestation` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestFeatures::Resource => "resource",
            RestFeatures::Attestation => "attestation",
            RestFeatures::All => "all",
        }
    }

    fn resource(self) -> bool {
        matches!(self, RestFeatures::Resource | RestFeatures::All)
    }

    fn attestation(self) -> bool {
        matches!(self, RestFeatures::Attestation | RestFeatures::All)
    }
}

/// A failure the server plays for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Resource and token requests answer 500 with [`SERVER_ERROR_BODY`], as
    /// when the hub or the agent behind the REST server is gone.
    ServerError,
    /// The KBS refused the guest's evidence: resource requests answer the
    /// hub's 500 ([`CDH_GET_RESOURCE_FAILED`]), token requests the agent's
    /// ([`AA_GET_TOKEN_FAILED`]).
    AttestationRefused,
    /// Every answer waits this long before it is sent.
    Slow(Duration),
}

/// What the simulated REST server serves.
#[derive(Clone, Debug, Default)]
pub struct GuestComponentsConfig {
    /// Loopback port to listen on; 0 picks a free one.
    pub port: u16,
    /// The API groups that are on.
    pub features: RestFeatures,
    /// The KBS's resources, keyed `repo/type/tag`.
    pub resources: BTreeMap<String, Vec<u8>>,
    /// The JWT `/aa/token?token_type=kbs` hands out; `None` makes the agent
    /// fail as when attestation is refused.
    pub token: Option<String>,
    /// The PEM private key served beside the token as `tee_keypair`; a fresh
    /// P-256 key when `None`.
    pub tee_keypair_pem: Option<String>,
    /// A failure to play, if any.
    pub fault: Option<Fault>,
}

impl GuestComponentsConfig {
    /// A configuration with the given API groups and nothing to serve yet.
    pub fn new(features: RestFeatures) -> GuestComponentsConfig {
        GuestComponentsConfig {
            features,
            ..GuestComponentsConfig::default()
        }
    }

    /// Adds a resource under `repo/type/tag`.
    pub fn with_resource(mut self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.resources.insert(path.to_string(), data.into());
        self
    }

    /// Sets the token the attestation agent hands out.
    pub fn with_token(mut self, jwt: impl Into<String>) -> Self {
        self.token = Some(jwt.into());
        self
    }

    /// Sets the private key PEM served beside the token.
    pub fn with_tee_keypair_pem(mut self, pem: impl Into<String>) -> Self {
        self.tee_keypair_pem = Some(pem.into());
        self
    }

    /// Plays a failure.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Listens on this loopback port instead of a free one.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
}

/// What the router decided to answer, before it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn octets(body: Vec<u8>) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/octet-stream"),
            body,
        }
    }
}

/// The server's fixed state, shared with its worker threads.
#[derive(Debug)]
struct State {
    features: RestFeatures,
    resources: BTreeMap<String, Vec<u8>>,
    token: Option<String>,
    tee_keypair_pem: String,
    fault: Option<Fault>,
}

/// Splits `path` after its `n`-th slash, keeping that slash on the right, as
/// api-server-rest routes: `("/cdh", "/resource/a/b/c")` for n = 2.
fn split_nth_slash(path: &str, n: usize) -> Option<(&str, &str)> {
    let (idx, _) = path.match_indices('/').nth(n.checked_sub(1)?)?;
    Some(path.split_at(idx))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

impl State {
    fn route(&self, method: &str, url: &str, peer: Option<SocketAddr>) -> Answer {
        if !peer.is_some_and(|p| p.ip().is_loopback()) {
            return Answer::text(403, "Forbidden");
        }
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        if path == "/info" {
            if method != "GET" {
                return Answer::text(405, "Method Not Allowed");
            }
            // The tee is only known through the attestation agent, so it is
            // absent when the attestation group is off.
            let tee = self.features.attestation().then_some("snp");
            let info =
                json!({ "version": SIM_VERSION, "tee": tee, "feature": self.features.as_str() });
            let info = match info {
                Value::Object(mut map) => {
                    map.retain(|_, v| !v.is_null());
                    Value::Object(map)
                }
                other => other,
            };
            return Answer {
                status: 200,
                content_type: Some("application/json"),
                body: info.to_string().into_bytes(),
            };
        }
        match split_nth_slash(path, 2) {
            Some(("/aa", rest)) => self.route_aa(method, rest, query),
            Some(("/cdh", rest)) => self.route_cdh(rest),
            _ => Answer::text(404, "URL NOT FOUND"),
        }
    }

    fn route_aa(&self, method: &str, rest: &str, query: &str) -> Answer {
        if !self.features.attestation() {
            return Answer::text(404, "Attestation Feature Not Enabled");
        }
        if rest != "/token" || method != "GET" {
            return Answer::text(404, "URL NOT FOUND");
        }
        let Some(token_type) = query_param(query, "token_type") else {
            return Answer::text(400, "BAD REQUEST");
        };
        match (&self.fault, token_type.as_str(), &self.token) {
            (Some(Fault::ServerError), _, _) => Answer::text(500, SERVER_ERROR_BODY),
            (Some(Fault::AttestationRefused), _, _) | (_, _, None) => {
                Answer::text(500, AA_GET_TOKEN_FAILED)
            }
            (_, "kbs", Some(token)) => {
                let message = json!({ "token": token, "tee_keypair": self.tee_keypair_pem });
                Answer::octets(message.to_string().into_bytes())
            }
            // Other token types (coco_as) are not simulated: the agent fails them.
            _ => Answer::text(500, AA_GET_TOKEN_FAILED),
        }
    }

    fn route_cdh(&self, rest: &str) -> Answer {
        if !self.features.resource() {
            return Answer::text(404, "Resource Feature Not Enabled");
        }
        match split_nth_slash(rest, 2) {
            Some(("/resource", resource_path)) => match &self.fault {
                Some(Fault::ServerError) => Answer::text(500, SERVER_ERROR_BODY),
                Some(Fault::AttestationRefused) => Answer::text(500, CDH_GET_RESOURCE_FAILED),
                _ => {
                    // The REST server hands the hub `kbs://` + "/repo/type/tag",
                    // whose URL path (less its first slash) names the resource.
                    let key = resource_path.strip_prefix('/').unwrap_or(resource_path);
                    match self.resources.get(key) {
                        Some(data) => Answer::octets(data.clone()),
                        None => Answer::text(500, CDH_GET_RESOURCE_FAILED),
                    }
                }
            },
            _ => Answer::text(404, "URL NOT FOUND"),
        }
    }

    fn delay(&self) -> Option<Duration> {
        match self.fault {
            Some(Fault::Slow(d)) => Some(d),
            _ => None,
        }
    }
}

/// The simulated REST server, listening on loopback until dropped.
pub struct GuestComponentsServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    served: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GuestComponentsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestComponentsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GuestComponentsServer {
    /// Starts listening on 127.0.0.1 (port `config.port`, or a free one) and
    /// answers from a background thread, one thread per request so that a
    /// slow answer does not hold up the others.
    pub fn start(config: GuestComponentsConfig) -> Result<Self, GuestComponentsError> {
        let tee_keypair_pem = match config.tee_keypair_pem {
            Some(pem) => pem,
            None => p256_pkcs8_pem(&generate_p256()?, "TEE key pair")?,
        };
        let state = Arc::new(State {
            features: config.features,
            resources: config.resources,
            token: config.token,
            tee_keypair_pem,
            fault: config.fault,
        });
        let server = tiny_http::Server::http((Ipv4Addr::LOCALHOST, config.port)).map_err(|e| {
            GuestComponentsError::Bind {
                port: config.port,
                reason: e.to_string(),
            }
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or(GuestComponentsError::NoAddress)?;
        let server = Arc::new(server);
        let served = Arc::new(AtomicUsize::new(0));
        let accept = {
            let server = Arc::clone(&server);
            let served = Arc::clone(&served);
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let state = Arc::clone(&state);
                    let served = Arc::clone(&served);
                    std::thread::spawn(move || answer(&state, request, &served));
                }
            })
        };
        Ok(GuestComponentsServer {
            addr,
            server,
            served,
            accept: Some(accept),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL a client is given.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests it has answered so far.
    pub fn requests_served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for GuestComponentsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(accept) = self.accept.take() {
            // A panicked accept thread has nothing left to clean up.
            let _ = accept.join();
        }
    }
}

fn answer(state: &State, request: tiny_http::Request, served: &AtomicUsize) {
    let peer = request.remote_addr().copied();
    let method = request.method().as_str().to_string();
    let decided = state.route(&method, request.url(), peer);
    if let Some(delay) = state.delay() {
        std::thread::sleep(delay);
    }
    let mut response =
        tiny_http::Response::from_data(decided.body).with_status_code(decided.status);
    if let Some(ct) = decided.content_type {
        if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", ct) {
            response = response.with_header(header);
        }
    }
    served.fetch_add(1, Ordering::SeqCst);
    // The client may have given up (timeouts are part of the tests).
    let _ = request.respond(response);
}

/// The verdict an EAR appraisal carries (`ear.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarStatus {
    /// No claim was made.
    None,
    /// The attester is trustworthy.
    Affirming,
    /// Something is off but not disqualifying.
    Warning,
    /// The attester is not trustworthy.
    Contraindicated,
}

impl EarStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EarStatus::None => "none",
            EarStatus::Affirming => "affirming",
            EarStatus::Warning => "warning",
            EarStatus::Contraindicated => "contraindicated",
        }
    }

    /// An AR4SI trust vector whose worst claim gives this status, with the
    /// values Trustee's default CPU policy assigns (3: approved executables,
    /// 2: genuine hardware or approved configuration, 33/36: unrecognised
    /// executables or unavailable configuration, 97: unrecognised hardware).
    fn trust_vector(self) -> Value {
        let (executables, hardware, configuration) = match self {
            EarStatus::None => (0, 0, 0),
            EarStatus::Affirming => (3, 2, 2),
            EarStatus::Warning => (33, 2, 36),
            EarStatus::Contraindicated => (33, 97, 36),
        };
        json!({
            "instance-identity": 0,
            "configuration": configuration,
            "executables": executables,
            "file-system": 0,
            "hardware": hardware,
            "runtime-opaque": 0,
            "storage-opaque": 0,
            "sourced-data": 0,
        })
    }
}

/// What goes into one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarTokenSpec {
    /// The verdict of the `cpu0` appraisal.
    pub status: EarStatus,
    /// The SNP launch measurement as the token spells it (Trustee: 96
    /// lowercase hex digits); any string, so tests can spell it wrongly.
    pub measurement_hex: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Whether the JWS header embeds the signer's public key (Trustee does).
    pub embed_jwk: bool,
    /// The report's REPORT_DATA (not tied to the nonce and TEE key here).
    pub report_data: [u8; 64],
    /// The report's HOST_DATA, which Trustee names `init_data`.
    pub host_data: [u8; 32],
    /// The KBS challenge's nonce.
    pub nonce: String,
    /// The policy that appraised the evidence.
    pub policy_id: String,
}

impl EarTokenSpec {
    /// An affirming token for this measurement, issued at `iat` and valid for
    /// Trustee's default five minutes.
    pub fn affirming(measurement: &[u8; 48], iat: i64) -> EarTokenSpec {
        EarTokenSpec {
            status: EarStatus::Affirming,
            measurement_hex: hex_lower(measurement),
            iat,
            exp: iat.saturating_add(TRUSTEE_TOKEN_LIFETIME_SECS),
            embed_jwk: true,
            report_data: [0; 64],
            host_data: [0; 32],
            nonce: "c2ltdWxhdGVkLW5vbmNl".to_string(),
            policy_id: "default".to_string(),
        }
    }

    /// The same token with another verdict.
    pub fn with_status(mut self, status: EarStatus) -> Self {
        self.status = status;
        self
    }

    /// The same token with another expiry.
    pub fn with_exp(mut self, exp: i64) -> Self {
        self.exp = exp;
        self
    }

    /// The same token with the measurement spelled this way.
    pub fn with_measurement_hex(mut self, hex: impl Into<String>) -> Self {
        self.measurement_hex = hex.into();
        self
    }

    /// The same token with or without the header's `jwk`.
    pub fn with_embedded_jwk(mut self, embed: bool) -> Self {
        self.embed_jwk = embed;
        self
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn generate_p256() -> Result<EcKey<Private>, GuestComponentsError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(crypto("loading P-256"))?;
    EcKey::generate(&group).map_err(crypto("generating a P-256 key"))
}

fn p256_pkcs8_pem(
    key: &EcKey<Private>,
    what: &'static str,
) -> Result<String, GuestComponentsError> {
    let pkey = PKey::from_ec_key(key.clone()).map_err(crypto("wrapping a P-256 key"))?;
    let pem = pkey
        .private_key_to_pem_pkcs8()
        .map_err(crypto("encoding a private key as PKCS#8"))?;
    String::from_utf8(pem).map_err(|_| GuestComponentsError::PemText { what })
}

/// The affine coordinates of a P-256 public key, 32 bytes each, base64url.
fn p256_coordinates(key: &EcKey<Private>) -> Result<(String, String), GuestComponentsError> {
    let mut ctx = BigNumContext::new().map_err(crypto("allocating a BN context"))?;
    let mut x = BigNum::new().map_err(crypto("allocating a bignum"))?;
    let mut y = BigNum::new().map_err(crypto("allocating a bignum"))?;
    key.public_key()
        .affine_coordinates(key.group(), &mut x, &mut y, &mut ctx)
        .map_err(crypto("reading the public key's coordinates"))?;
    // JWK coordinates are fixed-length (RFC 7518 §6.2.1.2): leading zeros stay.
    let x = x.to_vec_padded(32).map_err(crypto("padding x"))?;
    let y = y.to_vec_padded(32).map_err(crypto("padding y"))?;
    Ok((URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)))
}

/// Signs EAR tokens as Trustee's attestation service does: ES256 (ECDSA
/// P-256 with SHA-256, raw `r || s` signature), header
/// `{"typ":"JWT","alg":"ES256","jwk":{...}}`, and the EAR claims with the
/// `exp` and `iss` extensions.
pub struct EarTokenSigner {
    signing: EcKey<Private>,
    tee: EcKey<Private>,
}

impl std::fmt::Debug for EarTokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarTokenSigner").finish_non_exhaustive()
    }
}

impl EarTokenSigner {
    /// A signer with a fresh signing key and a fresh TEE key pair (whose
    /// public half goes into the claims as the KBS's `tee-pubkey`).
    pub fn generate() -> Result<EarTokenSigner, GuestComponentsError> {
        Ok(EarTokenSigner {
            signing: generate_p256()?,
            tee: generate_p256()?,
        })
    }

    /// The signing key's public half as a PEM SubjectPublicKeyInfo.
    pub fn public_key_pem(&self) -> Result<String, GuestComponentsError> {
        let pkey =
            PKey::from_ec_key(self.signing.clone()).map_err(crypto("wrapping the signing key"))?;
        let pem = pkey
            .public_key_to_pem()
            .map_err(crypto("encoding the signing key's public half"))?;
        String::from_utf8(pem).map_err(|_| GuestComponentsError::PemText {
            what: "signing public key",
        })
    }

    /// The signing key's public half as the JWK Trustee embeds and publishes:
    /// `{"kty":"EC","crv":"P-256","alg":"ES256","x":...,"y":...}`.
    pub fn jwk(&self) -> Result<Value, GuestComponentsError> {
        let (x, y) = p256_coordinates(&self.signing)?;
        Ok(json!({ "kty": "EC", "crv": "P-256", "alg": "ES256", "x": x, "y": y }))
    }

    /// The TEE key pair as the attestation agent hands it out beside the
    /// token (`tee_keypair`: PKCS#8 PEM for EC keys).
    pub fn tee_keypair_pem(&self) -> Result<String, GuestComponentsError> {
        p256_pkcs8_pem(&self.tee, "TEE key pair")
    }

    /// The TEE public key as the KBS protocol's `tee-pubkey` spells it.
    pub fn tee_pubkey_jwk(&self) -> Result<Value, GuestComponentsError> {
        let (x, y) = p256_coordinates(&self.tee)?;
        Ok(json!({ "kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": x, "y": y }))
    }

    /// The JSON claims of a token: the EAR with one `cpu0` appraisal whose
    /// annotated evidence has the SNP verifier's claims under `snp`, and
    /// `report_data`, `init_data` and the runtime and init data claims beside
    /// it, as Trustee's `transform_claims` lays them out.
    pub fn claims(&self, spec: &EarTokenSpec) -> Result<Value, GuestComponentsError> {
        let annotated = json!({
            "init_data": hex_lower(&spec.host_data),
            "init_data_claims": null,
            "report_data": hex_lower(&spec.report_data),
            "runtime_data_claims": {
                "additional-evidence": "",
                "nonce": spec.nonce,
                "tee-pubkey": self.tee_pubkey_jwk()?,
            },
            "snp": {
                "measurement": spec.measurement_hex,
                "platform_smt_enabled": true,
                "platform_tsme_enabled": false,
                "policy_abi_major": 0,
                "policy_abi_minor": 0,
                "policy_debug_allowed": false,
                "policy_migrate_ma": false,
                "policy_single_socket": false,
                "policy_smt_allowed": true,
                "reported_tcb_bootloader": 4,
                "reported_tcb_microcode": 219,
                "reported_tcb_snp": 22,
                "reported_tcb_tee": 0,
            },
        });
        Ok(json!({
            "eat_profile": TRUSTEE_EAR_PROFILE,
            "iat": spec.iat,
            "ear.verifier-id": { "build": TRUSTEE_BUILD, "developer": TRUSTEE_DEVELOPER },
            "submods": {
                "cpu0": {
                    "ear.status": spec.status.as_str(),
                    "ear.trustworthiness-vector": spec.status.trust_vector(),
                    "ear.appraisal-policy-id": spec.policy_id,
                    "ear.veraison.annotated-evidence": annotated,
                },
            },
            "exp": spec.exp,
            "iss": TRUSTEE_ISSUER,
        }))
    }

    /// Signs a token (compact JWS).
    pub fn sign(&self, spec: &EarTokenSpec) -> Result<String, GuestComponentsError> {
        let claims = self.claims(spec)?;
        self.sign_claims(&claims, spec.embed_jwk)
    }

    /// Signs arbitrary claims with this key, for tokens a test wants shaped
    /// differently.
    pub fn sign_claims(
        &self,
        claims: &Value,
        embed_jwk: bool,
    ) -> Result<String, GuestComponentsError> {
        let header = match embed_jwk {
            true => json!({ "typ": "JWT", "alg": "ES256", "jwk": self.jwk()? }),
            false => json!({ "typ": "JWT", "alg": "ES256" }),
        };
        let header = serde_json::to_vec(&header).map_err(|source| GuestComponentsError::Json {
            part: "header",
            source,
        })?;
        let claims = serde_json::to_vec(claims).map_err(|source| GuestComponentsError::Json {
            part: "claims",
            source,
        })?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let digest = openssl::sha::sha256(signing_input.as_bytes());
        let sig = EcdsaSig::sign(&digest, &self.signing).map_err(crypto("signing the token"))?;
        // JWS ES256 wants r || s, each 32 bytes (RFC 7518 §3.4), not DER.
        let mut raw = sig.r().to_vec_padded(32).map_err(crypto("padding r"))?;
        raw.extend(sig.s().to_vec_padded(32).map_err(crypto("padding s"))?);
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(raw)))
    }
}

/// The same JWT with one bit of its signature flipped: a tampered token.
pub fn tamper_signature(jwt: &str) -> String {
    let Some((signed, sig)) = jwt.rsplit_once('.') else {
        return jwt.to_string();
    };
    let Ok(mut raw) = URL_SAFE_NO_PAD.decode(sig) else {
        return jwt.to_string();
    };
    if let Some(first) = raw.first_mut() {
        *first ^= 0x01;
    }
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::IpAddr;

    const LOOPBACK_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000);

    fn state(features: RestFeatures) -> State {
        State {
            features,
            resources: BTreeMap::from([("default/key/one".to_string(), b"secret".to_vec())]),
            token: Some("a.b.c".to_string()),
            tee_keypair_pem: "PEM".to_string(),
            fault: None,
        }
    }

    #[test]
    fn split_like_the_rest_server() {
        assert_eq!(
            split_nth_slash("/cdh/resource/a/b/c", 2),
            Some(("/cdh", "/resource/a/b/c"))
        );
        assert_eq!(
            split_nth_slash("/resource/a/b/c", 2),
            Some(("/resource", "/a/b/c"))
        );
        assert_eq!(split_nth_slash("/cdh", 2), None);
        assert_eq!(split_nth_slash("/cdh/", 2), Some(("/cdh", "/")));
        assert_eq!(split_nth_slash("/x", 0), None);
    }

    #[test]
    fn resource_answers() {
        let s = state(RestFeatures::Resource);
        let ok = s.route("GET", "/cdh/resource/default/key/one", Some(LOOPBACK_PEER));
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body, b"secret");
        assert_eq!(ok.content_type, Some("application/octet-stream"));
        let missing = s.route("GET", "/cdh/resource/default/key/two", Some(LOOPBACK_PEER));
        assert_eq!(missing.status, 500);
        assert_eq!(missing.body, CDH_GET_RESOURCE_FAILED.as_bytes());
        assert_eq!(
            s.route("GET", "/cdh/resource", Some(LOOPBACK_PEER)).status,
            404
        );
        assert_eq!(
            s.route("GET", "/cdh/other/a/b/c", Some(LOOPBACK_PEER))
                .status,
            404
        );
        let info: Value =
            serde_json::from_slice(&s.route("GET", "/info", Some(LOOPBACK_PEER)).body).unwrap();
        assert_eq!(info["feature"], "resource");
        assert!(info.get("tee").is_none());
        let aa = s.route("GET", "/aa/token?token_type=kbs", Some(LOOPBACK_PEER));
        assert_eq!(
            (aa.status, aa.body.as_slice()),
            (404, &b"Attestation Feature Not Enabled"[..])
        );
    }

    #[test]
    fn token_answers() {
        let s = state(RestFeatures::Attestation);
        let ok = s.route("GET", "/aa/token?token_type=kbs", Some(LOOPBACK_PEER));
        assert_eq!(ok.status, 200);
        let v: Value = serde_json::from_slice(&ok.body).unwrap();
        assert_eq!(v["token"], "a.b.c");
        assert_eq!(v["tee_keypair"], "PEM");
        assert_eq!(s.route("GET", "/aa/token", Some(LOOPBACK_PEER)).status, 400);
        assert_eq!(
            s.route("POST", "/aa/token?token_type=kbs", Some(LOOPBACK_PEER))
                .status,
            404
        );
        assert_eq!(
            s.route("GET", "/aa/token?token_type=coco_as", Some(LOOPBACK_PEER))
                .status,
            500
        );
        let cdh = s.route("GET", "/cdh/resource/default/key/one", Some(LOOPBACK_PEER));
        assert_eq!(
            (cdh.status, cdh.body.as_slice()),
            (404, &b"Resource Feature Not Enabled"[..])
        );
    }

    #[test]
    fn faults_and_peers() {
        let mut s = state(RestFeatures::All);
        s.fault = Some(Fault::AttestationRefused);
        let r = s.route("GET", "/cdh/resource/default/key/one", Some(LOOPBACK_PEER));
        assert_eq!(
            (r.status, r.body.as_slice()),
            (500, CDH_GET_RESOURCE_FAILED.as_bytes())
        );
        let t = s.route("GET", "/aa/token?token_type=kbs", Some(LOOPBACK_PEER));
        assert_eq!(
            (t.status, t.body.as_slice()),
            (500, AA_GET_TOKEN_FAILED.as_bytes())
        );
        s.fault = Some(Fault::ServerError);
        assert_eq!(
            s.route("GET", "/aa/token?token_type=kbs", Some(LOOPBACK_PEER))
                .body,
            SERVER_ERROR_BODY.as_bytes()
        );
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1);
        assert_eq!(s.route("GET", "/info", Some(remote)).status, 403);
        assert_eq!(s.route("GET", "/info", None).status, 403);
        assert_eq!(s.route("POST", "/info", Some(LOOPBACK_PEER)).status, 405);
        let info: Value =
            serde_json::from_slice(&s.route("GET", "/info", Some(LOOPBACK_PEER)).body).unwrap();
        assert_eq!(info["feature"], "all");
        assert_eq!(info["tee"], "snp");
    }

    #[test]
    fn serves_over_http() {
        let server = GuestComponentsServer::start(
            GuestComponentsConfig::new(RestFeatures::Resource).with_resource("r/t/g", vec![7u8; 3]),
        )
        .unwrap();
        let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
        conn.write_all(b"GET /cdh/resource/r/t/g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(reply.ends_with(&[7, 7, 7]));
        assert_eq!(server.requests_served(), 1);
        assert!(server.url().starts_with("http://127.0.0.1:"));
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn token_layout_and_signature() {
        let signer = EarTokenSigner::generate().unwrap();
        let m = [0xabu8; 48];
        let jwt = signer.sign(&EarTokenSpec::affirming(&m, 1000)).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode_part(parts[0]);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["jwk"], signer.jwk().unwrap());
        let claims = decode_part(parts[1]);
        let cpu0 = &claims["submods"]["cpu0"];
        assert_eq!(cpu0["ear.status"], "affirming");
        assert_eq!(
            cpu0["ear.veraison.annotated-evidence"]["snp"]["measurement"],
            "ab".repeat(48)
        );
        assert_eq!(claims["exp"], 1300);
        assert_eq!(claims["iat"], 1000);
        assert_eq!(claims["eat_profile"], TRUSTEE_EAR_PROFILE);
        assert_eq!(
            cpu0["ear.veraison.annotated-evidence"]["runtime_data_claims"]["tee-pubkey"]["kty"],
            "EC"
        );

        // The signature checks out under the published key, and not once tampered.
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64);
        let verify = |jwt: &str| {
            let (input, sig) = jwt.rsplit_once('.').unwrap();
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            let ecsig = EcdsaSig::from_private_components(
                BigNum::from_slice(&sig[..32]).unwrap(),
                BigNum::from_slice(&sig[32..]).unwrap(),
            )
            .unwrap();
            let pub_key = PKey::public_key_from_pem(signer.public_key_pem().unwrap().as_bytes())
                .unwrap()
                .ec_key()
                .unwrap();
            ecsig
                .verify(&openssl::sha::sha256(input.as_bytes()), &pub_key)
                .unwrap()
        };
        assert!(verify(&jwt));
        assert!(!verify(&tamper_signature(&jwt)));
    }

    #[test]
    fn statuses_follow_the_trust_vector() {
        let worst = |s: EarStatus| {
            s.trust_vector()
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_i64().unwrap())
                .max()
                .unwrap()
        };
        // AR4SI tiers: 2..=31 affirming, 32..=95 warning, 96..=127 contraindicated.
        assert!((2..=31).contains(&worst(EarStatus::Affirming)));
        assert!((32..=95).contains(&worst(EarStatus::Warning)));
        assert!((96..=127).contains(&worst(EarStatus::Contraindicated)));
    }

    #[test]
    fn no_jwk_when_asked() {
        let signer = EarTokenSigner::generate().unwrap();
        let spec = EarTokenSpec::affirming(&[0; 48], 0).with_embedded_jwk(false);
        let jwt = signer.sign(&spec).unwrap();
        let header = decode_part(jwt.split('.').next().unwrap());
        assert!(header.get("jwk").is_none());
        assert!(signer
            .tee_keypair_pem()
            .unwrap()
            .contains("BEGIN PRIVATE KEY"));
    }
}
