//! A small client of the OCI distribution API (HTTP API v2): what signing and
//! verifying need, nothing more. This is the only module that talks to the
//! network.
//!
//! - Transport: HTTPS with the system's trust roots. Registries on this machine
//!   (`localhost`, 127.0.0.0/8, `[::1]`) are spoken to over plain HTTP, as
//!   docker and skopeo do; any other registry only over HTTPS unless the
//!   caller allows insecure registries, and then plain HTTP only when HTTPS
//!   does not answer.
//! - Authentication: anonymous first; on `401` the `WWW-Authenticate` challenge
//!   decides: `Bearer` gets a token from the realm (with Basic credentials if we
//!   have some), `Basic` gets the credentials. Credentials come from the
//!   `auths` of `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`
//!   (base64 `user:password`); credential helpers (`credsStore`,
//!   `credHelpers`) are not run.
//! - Limits: every response body is read with a size bound, every request with
//!   a time bound; content fetched by digest is checked against it.

use crate::reference::{Digest, ImageReference};
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use ureq::http::{Method, Request, Response, StatusCode};
use zeroize::Zeroizing;

/// Manifest media types we accept when fetching an image's manifest by digest.
pub const IMAGE_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Media types accepted for a signature manifest.
pub const SIGNATURE_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// Bound on token responses and error bodies.
const MAX_SMALL_BODY: usize = 1024 * 1024;
/// How much of an error response is quoted in the error.
const ERROR_EXCERPT: usize = 300;
const USER_AGENT: &str = concat!("image-signature/", env!("CARGO_PKG_VERSION"));

/// Why a registry operation failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The request did not complete (connection, TLS, timeout).
    #[error("{method} {url}: {reason}")]
    Transport {
        /// HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        /// HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// A response body is larger than allowed.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The bound.
        limit: usize,
    },
    /// Content fetched by digest does not hash to it.
    #[error("{url}: content hashes to {actual}, not the requested {expected}")]
    DigestMismatch {
        /// The URL.
        url: String,
        /// The requested digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The registry wants credentials and we have none.
    #[error(
        "registry {registry} requires authentication and no credentials for it were found in \
         {config} (only \"auths\" entries are read; credential helpers are not supported)"
    )]
    NoCredentials {
        /// The registry.
        registry: String,
        /// The docker config looked at.
        config: String,
    },
    /// A `WWW-Authenticate` header we cannot act on.
    #[error("{url}: cannot use the authentication challenge {header:?}: {reason}")]
    Challenge {
        /// The URL answered 401.
        url: String,
        /// The header.
        header: String,
        /// Why.
        reason: String,
    },
    /// The token endpoint failed.
    #[error("token request to {realm} failed: {reason}")]
    Token {
        /// The realm.
        realm: String,
        /// Why.
        reason: String,
    },
    /// A redirect or upload location we cannot follow.
    #[error("{url}: unusable Location {location:?}")]
    Location {
        /// The URL that answered.
        url: String,
        /// The header.
        location: String,
    },
    /// The docker config file is unreadable.
    #[error("docker config {path}: {reason}")]
    DockerConfig {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// No trust roots could be loaded for HTTPS.
    #[error("no system trust roots could be loaded for HTTPS: {0}")]
    TrustRoots(String),
    /// A request could not be built (invalid header value or URL).
    #[error("cannot build the request to {url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Allow plain HTTP to a registry that is not on this machine when it does
    /// not answer over HTTPS.
    pub allow_insecure: bool,
    /// The docker config file for credentials; `None` means
    /// [`default_docker_config`].
    pub docker_config: Option<PathBuf>,
    /// Bound on each request, from connecting to the end of the body.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            allow_insecure: false,
            docker_config: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A user name and password for a registry. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn basic_header(&self) -> Zeroizing<String> {
        let raw = Zeroizing::new(format!("{}:{}", self.username, *self.password));
        Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
        ))
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The host part of an `auths` key: docker writes `host`, `https://host` or
/// `https://host/v1/`.
fn auths_key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Finds credentials for `registry` in the JSON of a docker config file.
/// Docker Hub's entry may be under `index.docker.io`, `docker.io` or
/// `registry-1.docker.io`.
pub fn credentials_from_docker_config(
    json: &[u8],
    registry: &str,
) -> Result<Option<Credentials>, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let wanted = |host: &str| host == registry || (hub.contains(&registry) && hub.contains(&host));
    for (key, entry) in auths {
        if !wanted(auths_key_host(key)) {
            continue;
        }
        if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            if auth.is_empty() {
                continue;
            }
            let decoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(auth.as_bytes())
                    .map_err(|e| format!("auths.{key}.auth is not base64: {e}"))?,
            );
            let text = std::str::from_utf8(&decoded)
                .map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
            return Ok(Some(Credentials {
                username: user.to_string(),
                password: Zeroizing::new(pass.to_string()),
            }));
        }
        let user = entry.get("username").and_then(|u| u.as_str());
        let pass = entry.get("password").and_then(|p| p.as_str());
        if let (Some(u), Some(p)) = (user, pass) {
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: Zeroizing::new(p.to_string()),
            }));
        }
    }
    Ok(None)
}

/// One authentication challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter, if given.
        service: Option<String>,
        /// The `scope` parameter, if given.
        scope: Option<String>,
    },
    /// A scheme we do not implement.
    Other(String),
}

/// Parses a `WWW-Authenticate` header value (RFC 7235: comma-separated
/// challenges, each a scheme and `name=value` parameters whose values are
/// tokens or quoted strings).
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, String> {
    let b = header.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
    let skip = |i: &mut usize, set: &[u8]| {
        while b.get(*i).is_some_and(|c| set.contains(c)) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(|&c| is_tchar(c)) {
            *i += 1;
        }
        header.get(start..*i).unwrap_or_default()
    };
    loop {
        skip(&mut i, b" \t,");
        if i >= b.len() {
            break;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            return Err(format!("expected an auth scheme at byte {i}"));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        loop {
            skip(&mut i, b" \t");
            let save = i;
            let name = token(&mut i);
            skip(&mut i, b" \t");
            if name.is_empty() || b.get(i) != Some(&b'=') {
                // Not a parameter: the next challenge starts here (or the end).
                i = save;
                break;
            }
            i += 1;
            skip(&mut i, b" \t");
            let value = if b.get(i) == Some(&b'"') {
                i += 1;
                let mut v = String::new();
                loop {
                    match b.get(i) {
                        None => return Err("unterminated quoted string".to_string()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let c = b.get(i + 1).ok_or("unterminated quoted string")?;
                            v.push(char::from(*c));
                            i += 2;
                        }
                        Some(&c) => {
                            v.push(char::from(c));
                            i += 1;
                        }
                    }
                }
                v
            } else {
                token(&mut i).to_string()
            };
            params.push((name.to_ascii_lowercase(), value));
            skip(&mut i, b" \t");
            match b.get(i) {
                Some(b',') => i += 1,
                None => break,
                Some(_) => return Err(format!("unexpected character at byte {i}")),
            }
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        out.push(match scheme.to_ascii_lowercase().as_str() {
            "basic" => Challenge::Basic,
            "bearer" => Challenge::Bearer {
                realm: get("realm").ok_or("Bearer challenge without realm")?,
                service: get("service"),
                scope: get("scope"),
            },
            _ => Challenge::Other(scheme.to_string()),
        });
    }
    Ok(out)
}

/// Percent-encodes a query parameter value.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://authority` of a URL, lower-cased, if it has one.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    Some(format!("{}://{}", scheme, authority).to_ascii_lowercase())
}

/// A manifest fetched from a registry.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Its bytes, exactly as served.
    pub bytes: Vec<u8>,
    /// The `Content-Type` it was served with.
    pub media_type: Option<String>,
    /// The sha256 of its bytes.
    pub digest: Digest,
}

enum Auth {
    Anonymous,
    Basic,
    Bearer(Zeroizing<String>),
}

/// A client of one registry.
pub struct RegistryClient {
    registry: String,
    host: String,
    scheme: &'static str,
    agent: ureq::Agent,
    credentials: Option<Credentials>,
    config_path: String,
    auth: Auth,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry)
            .field("base", &self.base())
            .finish_non_exhaustive()
    }
}

fn load_trust_roots() -> Result<Vec<ureq::tls::Certificate<'static>>, RegistryError> {
    let result = rustls_native_certs::load_native_certs();
    if result.certs.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(ToString::to_string).collect();
        return Err(RegistryError::TrustRoots(if errors.is_empty() {
            "none found".to_string()
        } else {
            errors.join("; ")
        }));
    }
    Ok(result
        .certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect())
}

impl RegistryClient {
    /// A client of `reference`'s registry. Decides the transport (see the
    /// module documentation) and reads credentials from the docker config.
    pub fn connect(
        reference: &ImageReference,
        options: &ClientOptions,
    ) -> Result<RegistryClient, RegistryError> {
        let loopback = reference.is_loopback_registry();
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(options.timeout))
            .timeout_connect(Some(options.timeout.min(Duration::from_secs(15))))
            .max_redirects(5)
            .user_agent(USER_AGENT);
        if loopback {
            // A proxy cannot reach this machine's loopback.
            config = config.proxy(None);
        } else {
            let roots = load_trust_roots()?;
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                    .build(),
            );
        }
        let agent = config.build().new_agent();
        let config_path = options.docker_config.clone().or_else(default_docker_config);
        let credentials = match &config_path {
            Some(p) => read_credentials(p, reference.registry())?,
            None => None,
        };
        let mut client = RegistryClient {
            registry: reference.registry().to_string(),
            host: reference.api_host().to_string(),
            scheme: if loopback { "http" } else { "https" },
            agent,
            credentials,
            config_path: config_path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| {
                    "(no docker config: neither DOCKER_CONFIG nor HOME is set)".into()
                }),
            auth: Auth::Anonymous,
        };
        if options.allow_insecure && !loopback {
            client.pick_scheme_for_insecure();
        }
        Ok(client)
    }

    /// With insecure registries allowed: HTTPS if the registry answers over it
    /// at all (any HTTP status), plain HTTP otherwise.
    fn pick_scheme_for_insecure(&mut self) {
        let url = format!("https://{}/v2/", self.host);
        let https_answers = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(())
            .ok()
            .is_some_and(|req| self.agent.run(req).is_ok());
        if !https_answers {
            self.scheme = "http";
        }
    }

    /// `scheme://host` of the registry API.
    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// The registry name, as in references.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn send(
        &mut self,
        method: Method,
        url: &str,
        repository: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let resp = self.send_once(&method, url, headers, body)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let header: Vec<String> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let write = !(method == Method::GET || method == Method::HEAD);
        self.authenticate(url, repository, write, &header)?;
        self.send_once(&method, url, headers, body)
    }

    fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let mut builder = Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        // Credentials only ever go to the registry itself, never to the
        // storage backend an upload location or redirect points at.
        if origin(url).as_deref() == Some(self.base().to_ascii_lowercase().as_str()) {
            match &self.auth {
                Auth::Anonymous => {}
                Auth::Basic => {
                    if let Some(c) = &self.credentials {
                        builder = builder.header("Authorization", c.basic_header().as_str());
                    }
                }
                Auth::Bearer(t) => {
                    builder = builder.header("Authorization", format!("Bearer {}", t.as_str()));
                }
            }
        }
        let request_error = |e: ureq::http::Error| RegistryError::Request {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let transport = |e: ureq::Error| RegistryError::Transport {
            method: method.to_string(),
            url: url.to_string(),
            reason: e.to_string(),
        };
        match body {
            Some(b) => self
                .agent
                .run(builder.body(b).map_err(request_error)?)
                .map_err(transport),
            None => self
                .agent
                .run(builder.body(()).map_err(request_error)?)
                .map_err(transport),
        }
    }

    fn authenticate(
        &mut self,
        url: &str,
        repository: &str,
        write: bool,
        headers: &[String],
    ) -> Result<(), RegistryError> {
        let mut challenges = Vec::new();
        for h in headers {
            challenges.extend(
                parse_challenges(h).map_err(|reason| RegistryError::Challenge {
                    url: url.to_string(),
                    header: h.clone(),
                    reason,
                })?,
            );
        }
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => Some((realm.clone(), service.clone(), scope.clone())),
            _ => None,
        });
        if let Some((realm, service, scope)) = bearer {
            let scope = scope.unwrap_or_else(|| {
                format!(
                    "repository:{repository}:{}",
                    if write { "pull,push" } else { "pull" }
                )
            });
            let token = self.fetch_token(&realm, service.as_deref(), &scope)?;
            self.auth = Auth::Bearer(token);
            return Ok(());
        }
        if challenges.contains(&Challenge::Basic) {
            if self.credentials.is_none() {
                return Err(self.no_credentials());
            }
            self.auth = Auth::Basic;
            return Ok(());
        }
        Err(RegistryError::Challenge {
            url: url.to_string(),
            header: headers.join(", "),
            reason: "no Bearer or Basic challenge".to_string(),
        })
    }

    fn no_credentials(&self) -> RegistryError {
        RegistryError::NoCredentials {
            registry: self.registry.clone(),
            config: self.config_path.clone(),
        }
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Zeroizing<String>, RegistryError> {
        let token_err = |reason: String| RegistryError::Token {
            realm: realm.to_string(),
            reason,
        };
        let plain = realm.starts_with("http://");
        if !(realm.starts_with("https://") || plain) {
            return Err(token_err("realm is not an http(s) URL".to_string()));
        }
        if plain && self.scheme == "https" {
            return Err(token_err(
                "realm is plain HTTP while the registry is HTTPS; refusing to send credentials or \
                 fetch tokens in clear"
                    .to_string(),
            ));
        }
        let mut url = realm.to_string();
        url.push(if realm.contains('?') { '&' } else { '?' });
        if let Some(s) = service {
            url.push_str("service=");
            url.push_str(&query_escape(s));
            url.push('&');
        }
        url.push_str("scope=");
        url.push_str(&query_escape(scope));
        let mut builder = Request::builder().method(Method::GET).uri(&url);
        if let Some(c) = &self.credentials {
            builder = builder.header("Authorization", c.basic_header().as_str());
        }
        let req = builder
            .body(())
            .map_err(|e| token_err(format!("cannot build the request: {e}")))?;
        let mut resp = self.agent.run(req).map_err(|e| token_err(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = read_body(&mut resp, &url, MAX_SMALL_BODY)?;
        if status == 401 || status == 403 {
            if self.credentials.is_none() {
                return Err(self.no_credentials());
            }
            return Err(token_err(format!(
                "HTTP {status}: the credentials from {} were refused",
                self.config_path
            )));
        }
        if !(200..300).contains(&status) {
            return Err(token_err(format!("HTTP {status}: {}", excerpt(&body))));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("response is not JSON: {e}")))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("response has no token".to_string()))?;
        Ok(Zeroizing::new(token.to_string()))
    }

    fn status_error(method: &str, url: &str, resp: &mut Response<ureq::Body>) -> RegistryError {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_SMALL_BODY as u64)
            .read_to_vec()
            .unwrap_or_default();
        RegistryError::Status {
            method: method.to_string(),
            url: url.to_string(),
            status,
            body: excerpt(&body),
        }
    }

    /// Fetches a manifest by tag or digest; `None` if the registry has none
    /// there. Fetched by digest, the bytes must hash to it.
    pub fn manifest(
        &mut self,
        repository: &str,
        reference: &str,
        accept: &str,
        limit: usize,
    ) -> Result<Option<FetchedManifest>, RegistryError> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base());
        let mut resp = self.send(Method::GET, &url, repository, &[("Accept", accept)], None)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(Self::status_error("GET", &url, &mut resp));
        }
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = read_body(&mut resp, &url, limit)?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = Digest::parse(reference) {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected,
                    actual: digest,
                });
            }
        }
        Ok(Some(FetchedManifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// Whether the registry has a manifest at `reference` (HEAD).
    pub fn manifest_exists(
        &mut self,
        repository: &str,
        reference: &str,
        accept: &str,
    ) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base());
        let mut resp = self.send(Method::HEAD, &url, repository, &[("Accept", accept)], None)?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::status_error("HEAD", &url, &mut resp)),
        }
    }

    /// Fetches a blob, at most `limit` bytes, and checks its digest.
    pub fn blob(
        &mut self,
        repository: &str,
        digest: &Digest,
        limit: usize,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base());
        let mut resp = self.send(Method::GET, &url, repository, &[], None)?;
        if !resp.status().is_success() {
            return Err(Self::status_error("GET", &url, &mut resp));
        }
        let bytes = read_body(&mut resp, &url, limit)?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Whether the repository has a blob (HEAD).
    pub fn blob_exists(
        &mut self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base());
        let mut resp = self.send(Method::HEAD, &url, repository, &[], None)?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::status_error("HEAD", &url, &mut resp)),
        }
    }

    /// Uploads a blob unless the repository has it: `POST .../blobs/uploads/`,
    /// then a single `PUT` of the bytes to the returned location with
    /// `?digest=`.
    pub fn push_blob(&mut self, repository: &str, bytes: &[u8]) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        if self.blob_exists(repository, &digest)? {
            return Ok(digest);
        }
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base());
        // An empty body rather than none, so that a Content-Length: 0 goes out
        // (some front ends refuse a POST without one).
        let mut resp = self.send(Method::POST, &url, repository, &[], Some(&[]))?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Self::status_error("POST", &url, &mut resp));
        }
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Location {
                url: url.clone(),
                location: String::new(),
            })?;
        let mut put_url = self.resolve_location(&url, &location)?;
        put_url.push(if put_url.contains('?') { '&' } else { '?' });
        put_url.push_str("digest=");
        put_url.push_str(&query_escape(&digest.to_string()));
        let mut resp = self.send(
            Method::PUT,
            &put_url,
            repository,
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
        )?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::status_error("PUT", &put_url, &mut resp));
        }
        Ok(digest)
    }

    /// Pushes a manifest under a tag; returns its digest.
    pub fn push_manifest(
        &mut self,
        repository: &str,
        tag: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base());
        let mut resp = self.send(
            Method::PUT,
            &url,
            repository,
            &[("Content-Type", content_type)],
            Some(bytes),
        )?;
        if resp.status() != StatusCode::CREATED {
            return Err(Self::status_error("PUT", &url, &mut resp));
        }
        Ok(Digest::of(bytes))
    }

    /// An upload `Location` made absolute: absolute URLs as they are,
    /// `/path` against the registry, anything else against the request URL.
    fn resolve_location(&self, request_url: &str, location: &str) -> Result<String, RegistryError> {
        let bad = || RegistryError::Location {
            url: request_url.to_string(),
            location: location.chars().take(300).collect(),
        };
        if location.is_empty()
            || location
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        if location.starts_with("https://") || location.starts_with("http://") {
            if location.starts_with("http://") && self.scheme == "https" {
                return Err(bad());
            }
            return Ok(location.to_string());
        }
        if let Some(rest) = location.strip_prefix("//") {
            return Ok(format!("{}://{rest}", self.scheme));
        }
        if location.starts_with('/') {
            return Ok(format!("{}{location}", self.base()));
        }
        let dir = request_url
            .split('?')
            .next()
            .and_then(|u| u.rfind('/').and_then(|i| u.get(..=i)))
            .ok_or_else(bad)?;
        Ok(format!("{dir}{location}"))
    }
}

fn read_credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::DockerConfig {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
    };
    if bytes.len() > MAX_SMALL_BODY {
        return Err(RegistryError::DockerConfig {
            path: path.display().to_string(),
            reason: "larger than 1 MiB".to_string(),
        });
    }
    credentials_from_docker_config(&bytes, registry).map_err(|reason| RegistryError::DockerConfig {
        path: path.display().to_string(),
        reason,
    })
}

fn read_body(
    resp: &mut Response<ureq::Body>,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, RegistryError> {
    let declared = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(RegistryError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    resp.body_mut()
        .with_config()
        .limit(limit as u64)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => RegistryError::TooLarge {
                url: url.to_string(),
                limit,
            },
            other => RegistryError::Transport {
                method: "reading the body of".to_string(),
                url: url.to_string(),
                reason: other.to_string(),
            },
        })
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(ERROR_EXCERPT)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#;
        assert_eq!(
            parse_challenges(h).unwrap(),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull".into()),
            }]
        );
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry Realm""#).unwrap(),
            vec![Challenge::Basic]
        );
        // Several challenges in one header, odd spacing and case, escapes,
        // token values.
        let h = r#"basic realm="a, b" , BEARER  realm = "https://t/x?a=1" ,scope="repository:a/b:pull,push", error=insufficient_scope, Negotiate"#;
        assert_eq!(
            parse_challenges(h).unwrap(),
            vec![
                Challenge::Basic,
                Challenge::Bearer {
                    realm: "https://t/x?a=1".into(),
                    service: None,
                    scope: Some("repository:a/b:pull,push".into()),
                },
                Challenge::Other("Negotiate".into()),
            ]
        );
        assert_eq!(
            parse_challenges(r#"Bearer realm="q\"uote""#).unwrap(),
            vec![Challenge::Bearer {
                realm: "q\"uote".into(),
                service: None,
                scope: None
            }]
        );
        assert!(parse_challenges(r#"Bearer realm="open"#).is_err());
        assert!(parse_challenges(r#"Bearer service="s""#).is_err());
        assert!(parse_challenges("Bearer realm=x y").is_err());
        assert!(parse_challenges("=x").is_err());
        assert_eq!(parse_challenges("").unwrap(), vec![]);
    }

    #[test]
    fn docker_config_credentials() {
        let cfg = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw=="},
            "https://quay.io":{"username":"q","password":"p"},
            "empty.io":{"auth":""}
        },"credsStore":"desktop"}"#;
        let c = credentials_from_docker_config(cfg, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "user");
        assert_eq!(c.password.as_str(), "pa:ss");
        let c = credentials_from_docker_config(cfg, "docker.io")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("hub", "secret")
        );
        let c = credentials_from_docker_config(cfg, "quay.io")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("q", "p"));
        assert!(credentials_from_docker_config(cfg, "empty.io")
            .unwrap()
            .is_none());
        assert!(credentials_from_docker_config(cfg, "other.io")
            .unwrap()
            .is_none());
        assert!(credentials_from_docker_config(b"{}", "x")
            .unwrap()
            .is_none());
        let e =
            credentials_from_docker_config(br#"{"auths":{"x":{"auth":"!!"}}}"#, "x").unwrap_err();
        assert!(e.contains("auths.x.auth is not base64"), "{e}");
        let e = credentials_from_docker_config(br#"{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}"#, "x")
            .unwrap_err();
        assert!(e.contains("not user:password"), "{e}");
        assert!(credentials_from_docker_config(b"{", "x").is_err());
        assert!(!format!("{c:?}").contains('p') || !format!("{c:?}").contains("\"p\""));
    }

    #[test]
    fn locations_resolve() {
        let r = ImageReference::parse("127.0.0.1:5000/demo/x").unwrap();
        let c = RegistryClient::connect(&r, &ClientOptions::default()).unwrap();
        let post = "http://127.0.0.1:5000/v2/demo/x/blobs/uploads/";
        assert_eq!(
            c.resolve_location(post, "/v2/demo/x/blobs/uploads/u1?_state=s")
                .unwrap(),
            "http://127.0.0.1:5000/v2/demo/x/blobs/uploads/u1?_state=s"
        );
        assert_eq!(
            c.resolve_location(post, "http://127.0.0.1:5000/up/u2")
                .unwrap(),
            "http://127.0.0.1:5000/up/u2"
        );
        assert_eq!(
            c.resolve_location(post, "u3").unwrap(),
            "http://127.0.0.1:5000/v2/demo/x/blobs/uploads/u3"
        );
        assert_eq!(
            c.resolve_location(post, "//other:1/u4").unwrap(),
            "http://other:1/u4"
        );
        assert!(c.resolve_location(post, "").is_err());
        assert!(c.resolve_location(post, "a b").is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(
            origin("HTTP://Host:5/x?y").as_deref(),
            Some("http://host:5")
        );
        assert_eq!(origin("nope"), None);
        assert_eq!(
            auths_key_host("https://index.docker.io/v1/"),
            "index.docker.io"
        );
        assert_eq!(excerpt(b"  {\"errors\":[]}\n"), "{\"errors\":[]}");
    }
}
