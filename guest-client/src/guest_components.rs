//! The guest components' REST API from inside a Confidential Containers guest:
//! a KBS resource through the confidential data hub
//! (`GET /cdh/resource/<repo>/<type>/<tag>`), and the attestation agent's KBS
//! token (`GET /aa/token?token_type=kbs`) with the checks that make it worth
//! something here: Trustee's verdict is "affirming", the SNP measurement in
//! it is the one in our own attestation report, it has not expired, and its
//! ES256 signature holds.
//!
//! The REST server (api-server-rest, 127.0.0.1:8006) serves only the resource
//! group unless the guest kernel command line says
//! `agent.guest_components_rest_api=attestation` or `all`
//! ([`rest_api_from_cmdline`]).
//!
//! Nothing fetched is kept or printed: a resource is reduced to its length,
//! and of the agent's answer only the JWT is kept (the TEE private key it
//! carries beside the token is wiped with the rest of the body).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde_json::Value;
use zeroize::Zeroize as _;

/// Where api-server-rest listens in a guest.
pub const DEFAULT_BASE: &str = "http://127.0.0.1:8006";

/// The largest resource or token answer read; a longer body is refused
/// without being kept.
pub const MAX_BODY_LEN: usize = 1 << 20;

/// The kernel command line parameter the Kata agent passes to api-server-rest
/// as `--features`.
pub const REST_API_PARAM: &str = "agent.guest_components_rest_api";

/// The verdict the token must carry.
pub const AFFIRMING: &str = "affirming";

/// How far in the future a token's `iat` may lie (guest and verifier clocks
/// differ).
pub const IAT_LEEWAY_SECS: i64 = 300;

/// The longest piece of an error body quoted in a reason.
const QUOTE_LEN: usize = 160;

/// A KBS resource: `repo/type/tag`, each part as Trustee's KBS accepts it
/// (letters, digits, `_`, `-`, and `.` after the first character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    /// The repository (often `default`).
    pub repo: String,
    /// The resource type.
    pub r#type: String,
    /// The resource tag.
    pub tag: String,
}

impl ResourcePath {
    /// The REST path that fetches it: `/cdh/resource/<repo>/<type>/<tag>`.
    pub fn rest_path(&self) -> String {
        format!("/cdh/resource/{}/{}/{}", self.repo, self.r#type, self.tag)
    }
}

impl std::fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kbs:///{}/{}/{}", self.repo, self.r#type, self.tag)
    }
}

fn valid_part(part: &str) -> bool {
    let mut chars = part.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Reads `kbs:///repo/type/tag` or `kbs://host:port/repo/type/tag`; the
/// host is ignored, as the confidential data hub ignores it (it asks the KBS
/// its own configuration names). Refuses other schemes (including
/// `kbs+<plugin>://`), queries, fragments, percent-escapes, and parts that are
/// empty, `.`, `..` or otherwise not what the KBS accepts.
pub fn parse_resource_uri(uri: &str) -> Result<ResourcePath, String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!("{uri:?} is not a kbs:// URI"));
    };
    if !scheme.eq_ignore_ascii_case("kbs") {
        return Err(format!(
            "{uri:?} has scheme {scheme:?}; only kbs:// resources are fetched"
        ));
    }
    if rest.contains(['?', '#', '%']) {
        return Err(format!(
            "{uri:?} carries a query, fragment or escape; give kbs:///repo/type/tag"
        ));
    }
    let Some((_host, path)) = rest.split_once('/') else {
        return Err(format!("{uri:?} has no path; give kbs:///repo/type/tag"));
    };
    let parts: Vec<&str> = path.split('/').collect();
    let [repo, r#type, tag] = parts.as_slice() else {
        return Err(format!(
            "{uri:?} has {} path parts; a KBS resource is repo/type/tag",
            parts.len()
        ));
    };
    for (name, part) in [("repo", repo), ("type", r#type), ("tag", tag)] {
        if !valid_part(part) {
            return Err(format!(
                "{uri:?}: the {name} {part:?} is empty, starts with '.' or holds a character \
                 the KBS refuses"
            ));
        }
    }
    Ok(ResourcePath {
        repo: repo.to_string(),
        r#type: r#type.to_string(),
        tag: tag.to_string(),
    })
}

/// Which API groups api-server-rest serves in this guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestApi {
    /// `/cdh/...` only: the default of the Kata agent and of api-server-rest.
    #[default]
    ResourceOnly,
    /// `/aa/...` only.
    Attestation,
    /// Both groups.
    All,
}

impl RestApi {
    /// Whether `/cdh/resource/...` is served.
    pub fn resource_enabled(self) -> bool {
        matches!(self, RestApi::ResourceOnly | RestApi::All)
    }

    /// Whether `/aa/token` is served.
    pub fn attestation_enabled(self) -> bool {
        matches!(self, RestApi::Attestation | RestApi::All)
    }
}

/// The API groups the Kata agent starts api-server-rest with, from the
/// kernel command line: the last `agent.guest_components_rest_api=` among
/// the whitespace-separated parameters, `resource`, `attestation` or `all`
/// (exact spelling). Absent, it is `resource`. The agent refuses to start on
/// any other value, so a running guest cannot have one; should one be seen,
/// it is read as the default.
pub fn rest_api_from_cmdline(cmdline: &str) -> RestApi {
    let prefix = format!("{REST_API_PARAM}=");
    cmdline
        .split_ascii_whitespace()
        .filter_map(|p| p.strip_prefix(prefix.as_str()))
        .next_back()
        .map_or(RestApi::default(), |value| match value {
            "all" => RestApi::All,
            "attestation" => RestApi::Attestation,
            _ => RestApi::ResourceOnly,
        })
}

/// A resource the hub handed over; only its length is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceFetched {
    /// Its length in bytes.
    pub len: usize,
}

/// Why one HTTP exchange did not produce an answer.
enum HttpFailure {
    BadBase(String),
    Unreachable(String),
    Timeout,
    Protocol(String),
    TooLarge,
}

struct HttpAnswer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Drop for HttpAnswer {
    fn drop(&mut self) {
        self.body.zeroize();
    }
}

/// One plain-HTTP GET with a whole-exchange deadline and a bounded body.
async fn get(
    base: &str,
    path_and_query: &str,
    timeout: Duration,
) -> Result<HttpAnswer, HttpFailure> {
    let uri: Uri = base
        .parse()
        .map_err(|e| HttpFailure::BadBase(format!("{base:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(HttpFailure::BadBase(format!(
            "{base:?} is not an http:// URL (the REST server speaks plain HTTP on loopback)"
        )));
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(HttpFailure::BadBase(format!("{base:?} names no host")));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(80);
    let exchange = async move {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| HttpFailure::Unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpFailure::Unreachable(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let request = Request::get(path_and_query)
            .header(hyper::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| HttpFailure::Protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| HttpFailure::Protocol(e.to_string()))?;
        let status = response.status();
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_LEN as u64) {
            driver.abort();
            return Err(HttpFailure::TooLarge);
        }
        let collected = Limited::new(response.into_body(), MAX_BODY_LEN)
            .collect()
            .await;
        driver.abort();
        match collected {
            Ok(body) => Ok(HttpAnswer {
                status,
                // Moves the buffer when it is not shared, so that the wipe on
                // drop reaches it (best effort: hyper may have copied chunks).
                body: Vec::from(body.to_bytes()),
            }),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpFailure::TooLarge),
            Err(e) => Err(HttpFailure::Protocol(e.to_string())),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(HttpFailure::Timeout))
}

/// A short, printable piece of an error body.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(QUOTE_LEN)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > QUOTE_LEN {
        out.push('…');
    }
    if out.trim().is_empty() {
        "(empty body)".to_string()
    } else {
        out
    }
}

fn failure_reason(who: &str, base: &str, timeout: Duration, failure: HttpFailure) -> String {
    match failure {
        HttpFailure::BadBase(reason) => reason,
        HttpFailure::Unreachable(e) => format!("cannot reach the {who} at {base}: {e}"),
        HttpFailure::Timeout => format!(
            "the {who} at {base} did not answer within {} ms",
            timeout.as_millis()
        ),
        HttpFailure::Protocol(e) => format!("the exchange with the {who} at {base} broke: {e}"),
        HttpFailure::TooLarge => {
            format!("the {who} at {base} answered more than {MAX_BODY_LEN} bytes; refused")
        }
    }
}

/// Fetches a resource through the confidential data hub's REST endpoint and
/// reports its length. A 500 is how the hub reports both a resource the KBS
/// does not hold and an attestation the KBS refused; a 404 "Resource Feature
/// Not Enabled" means the REST server runs without the resource group.
pub async fn fetch_resource(
    base: &str,
    res: &ResourcePath,
    timeout: Duration,
) -> Result<ResourceFetched, String> {
    let who = "confidential data hub";
    let answer = get(base, &res.rest_path(), timeout)
        .await
        .map_err(|f| failure_reason(who, base, timeout, f))?;
    if answer.status == StatusCode::OK {
        return Ok(ResourceFetched {
            len: answer.body.len(),
        });
    }
    let hint = match answer.status.as_u16() {
        500 => " (the KBS does not hold it, or refused this guest's attestation)",
        404 => " (the REST server's resource API is off or the path is wrong)",
        _ => "",
    };
    Err(format!(
        "CDH answered {} for {res}: {}{hint}",
        answer.status.as_u16(),
        quote(&answer.body)
    ))
}

/// Asks the attestation agent for its KBS token and returns the JWT alone.
/// The agent answers `{"token": ..., "tee_keypair": ...}`; a bare JWT is
/// accepted too. A 404 "Attestation Feature Not Enabled" means the guest
/// runs the REST server without the attestation group.
pub async fn fetch_token(base: &str, timeout: Duration) -> Result<String, String> {
    let who = "attestation agent";
    let answer = get(base, "/aa/token?token_type=kbs", timeout)
        .await
        .map_err(|f| failure_reason(who, base, timeout, f))?;
    if answer.status != StatusCode::OK {
        let hint = match answer.status.as_u16() {
            404 => " (the attestation API is off: it needs agent.guest_components_rest_api=attestation or all)",
            500 => " (attestation with the KBS failed)",
            _ => "",
        };
        return Err(format!(
            "the attestation agent answered {}: {}{hint}",
            answer.status.as_u16(),
            quote(&answer.body)
        ));
    }
    extract_jwt(&answer.body).ok_or_else(|| {
        format!(
            "the attestation agent's answer ({} bytes) holds no JWT",
            answer.body.len()
        )
    })
}

fn looks_like_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts.iter().take(2).all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The JWT out of the agent's answer; the rest of the answer is not kept.
fn extract_jwt(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Message {
        token: String,
    }
    if let Ok(message) = serde_json::from_slice::<Message>(body) {
        return looks_like_jwt(&message.token).then_some(message.token);
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    looks_like_jwt(text).then(|| text.to_string())
}

/// How the token's signature was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verified with the pinned key (and with the embedded JWK, if any).
    Pinned,
    /// Verified with the JWK embedded in the header only: the token is intact,
    /// but nothing says who signed it.
    EmbeddedOnly,
    /// No key to check with: only the claims were checked.
    Unchecked,
    /// A key was there and the signature did not verify, or the key or
    /// signature was unusable.
    Failed,
}

/// The outcome of [`check_token`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenVerdict {
    /// Every check held.
    pub passed: bool,
    /// What held and what did not, in one line (no claim values).
    pub reason: String,
    /// How the signature was checked.
    pub signature: SignatureCheck,
}

impl TokenVerdict {
    fn refused(reason: String) -> TokenVerdict {
        TokenVerdict {
            passed: false,
            reason,
            signature: SignatureCheck::Failed,
        }
    }
}

fn decode_json(part: &str, what: &str) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| format!("the token's {what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| format!("the token's {what} is not JSON"))
}

/// The ES256 key of a JWS header's `jwk`.
fn key_from_jwk(jwk: &Value) -> Result<VerifyingKey, String> {
    if jwk.get("kty").and_then(Value::as_str) != Some("EC")
        || jwk.get("crv").and_then(Value::as_str) != Some("P-256")
    {
        return Err("the embedded JWK is not an EC P-256 key".to_string());
    }
    let coordinate = |name: &str| -> Result<[u8; 32], String> {
        let text = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the embedded JWK has no {name}"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("the embedded JWK's {name} is not base64url"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| format!("the embedded JWK's {name} is not 32 bytes"))
    };
    let (x, y) = (coordinate("x")?, coordinate("y")?);
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    VerifyingKey::from_encoded_point(&point)
        .map_err(|_| "the embedded JWK is not a point on P-256".to_string())
}

/// A pinned key: PEM SubjectPublicKeyInfo, or its DER.
fn key_from_pinned(pinned: &[u8]) -> Result<VerifyingKey, String> {
    let from_pem = std::str::from_utf8(pinned)
        .ok()
        .and_then(|pem| VerifyingKey::from_public_key_pem(pem.trim()).ok());
    from_pem
        .or_else(|| VerifyingKey::from_public_key_der(pinned).ok())
        .ok_or_else(|| "the pinned key is not a P-256 public key (PEM or DER SPKI)".to_string())
}

/// The `cpu0` appraisal's claims, or why they cannot be read.
fn claim_checks(
    claims: &Value,
    report_measurement: &[u8; 48],
    now_unix: i64,
) -> Vec<Result<String, String>> {
    let mut checks = Vec::new();
    let cpu0 = claims.pointer("/submods/cpu0");
    checks.push(
        match cpu0
            .and_then(|c| c.get("ear.status"))
            .and_then(Value::as_str)
        {
            Some(AFFIRMING) => Ok("verdict affirming".to_string()),
            Some(s @ ("none" | "warning" | "contraindicated")) => {
                Err(format!("verdict is {s:?}, not \"affirming\""))
            }
            Some(_) => Err("verdict is not one of EAR's statuses".to_string()),
            None => Err("the token has no submods.cpu0 ear.status".to_string()),
        },
    );
    let measurement = cpu0
        .and_then(|c| c.get("ear.veraison.annotated-evidence"))
        .and_then(|e| e.get("snp"))
        .and_then(|s| s.get("measurement"))
        .and_then(Value::as_str);
    checks.push(match measurement {
        None => Err("the token carries no SNP measurement".to_string()),
        Some(text) => match hex::decode(text) {
            Ok(bytes) if bytes.as_slice() == report_measurement.as_slice() => {
                Ok("SNP measurement matches the report".to_string())
            }
            Ok(bytes) if bytes.len() == 48 => {
                Err("the token's SNP measurement differs from the report's".to_string())
            }
            _ => Err(format!(
                "the token's SNP measurement is not 96 hex digits ({} characters)",
                text.len()
            )),
        },
    });
    checks.push(match claims.get("exp").and_then(Value::as_i64) {
        None => Err("the token has no exp".to_string()),
        Some(exp) if exp <= now_unix => Err(format!(
            "the token expired {} s ago",
            now_unix.saturating_sub(exp)
        )),
        Some(exp) => Ok(format!("valid for {} s more", exp.saturating_sub(now_unix))),
    });
    if let Some(iat) = claims.get("iat").and_then(Value::as_i64) {
        if iat > now_unix.saturating_add(IAT_LEEWAY_SECS) {
            checks.push(Err(format!(
                "the token was issued {} s in the future",
                iat.saturating_sub(now_unix)
            )));
        }
    }
    checks
}

/// Checks an attestation token against our own report: verdict
/// `submods.cpu0["ear.status"]` is "affirming"; the SNP measurement under
/// `submods.cpu0["ear.veraison.annotated-evidence"].snp.measurement` (hex) is
/// `report_measurement`; `exp` lies after `now_unix` (and `iat` not far
/// ahead of it). The ES256 signature must verify with the JWK embedded in
/// the header, if there is one, and with `pinned_key` (PEM or DER
/// SubjectPublicKeyInfo of the attestation service's signing key), if given.
/// A token with no key to verify it passes on its claims alone and says so.
pub fn check_token(
    jwt: &str,
    report_measurement: &[u8; 48],
    pinned_key: Option<&[u8]>,
    now_unix: i64,
) -> TokenVerdict {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [header_b64, claims_b64, sig_b64] = parts.as_slice() else {
        return TokenVerdict::refused(format!(
            "the token is not a compact JWS ({} parts, expected 3)",
            parts.len()
        ));
    };
    let header = match decode_json(header_b64, "header") {
        Ok(h) => h,
        Err(e) => return TokenVerdict::refused(e),
    };
    let claims = match decode_json(claims_b64, "claims") {
        Ok(c) => c,
        Err(e) => return TokenVerdict::refused(e),
    };

    let mut checks = claim_checks(&claims, report_measurement, now_unix);

    let signing_input_len = header_b64.len() + 1 + claims_b64.len();
    let signing_input = jwt.trim().get(..signing_input_len).unwrap_or_default();
    let signature = verify_signature(&header, signing_input, sig_b64, pinned_key);
    checks.push(match &signature {
        Ok(SignatureCheck::Pinned) => Ok("signature verified with the pinned key".to_string()),
        Ok(SignatureCheck::EmbeddedOnly) => Ok(
            "signature verified with the key embedded in the token (integrity only: no key \
             pinned, so not who signed it)"
                .to_string(),
        ),
        Ok(_) => Ok(
            "signature NOT verified: the token embeds no key and none is pinned; only its \
             claims were checked"
                .to_string(),
        ),
        Err(e) => Err(e.clone()),
    });

    let passed = checks.iter().all(Result::is_ok);
    let failures: Vec<&str> = checks
        .iter()
        .filter_map(|c| c.as_ref().err().map(String::as_str))
        .collect();
    let reason = if passed {
        checks
            .iter()
            .filter_map(|c| c.as_ref().ok().map(String::as_str))
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        failures.join("; ")
    };
    TokenVerdict {
        passed,
        reason,
        signature: signature.unwrap_or(SignatureCheck::Failed),
    }
}

fn verify_signature(
    header: &Value,
    signing_input: &str,
    sig_b64: &str,
    pinned_key: Option<&[u8]>,
) -> Result<SignatureCheck, String> {
    let embedded = header.get("jwk");
    if embedded.is_none() && pinned_key.is_none() {
        return Ok(SignatureCheck::Unchecked);
    }
    // Only ES256 is accepted: it is what Trustee signs with, and refusing the
    // rest shuts out "none" and algorithm confusion.
    match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        Some(_) => return Err("the token is not signed with ES256".to_string()),
        None => return Err("the token's header names no alg".to_string()),
    }
    let raw = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| "the token's signature is not base64url".to_string())?;
    let signature = Signature::from_slice(&raw).map_err(|_| {
        format!(
            "the token's signature is {} bytes, not an ES256 r||s",
            raw.len()
        )
    })?;
    if let Some(jwk) = embedded {
        let key = key_from_jwk(jwk)?;
        key.verify(signing_input.as_bytes(), &signature)
            .map_err(|_| {
                "the signature does not verify with the key embedded in the token".to_string()
            })?;
    }
    match pinned_key {
        Some(pinned) => {
            let key = key_from_pinned(pinned)?;
            key.verify(signing_input.as_bytes(), &signature)
                .map_err(|_| "the signature does not verify with the pinned key".to_string())?;
            Ok(SignatureCheck::Pinned)
        }
        None => Ok(SignatureCheck::EmbeddedOnly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey as _;
    use serde_json::json;

    #[test]
    fn resource_uris() {
        let p = parse_resource_uri("kbs:///default/key/one").unwrap();
        assert_eq!(
            (p.repo.as_str(), p.r#type.as_str(), p.tag.as_str()),
            ("default", "key", "one")
        );
        assert_eq!(p.rest_path(), "/cdh/resource/default/key/one");
        assert_eq!(p.to_string(), "kbs:///default/key/one");
        let with_host = parse_resource_uri("kbs://10.0.0.1:8080/repo/t.y-p_e/v1.2").unwrap();
        assert_eq!(with_host.tag, "v1.2");
        assert_eq!(parse_resource_uri("KBS:///a/b/c").unwrap().repo, "a");
        for bad in [
            "kbs:///a/../c",
            "kbs:///a/./c",
            "kbs:///a//c",
            "kbs:///a/b/",
            "kbs:///a/b",
            "kbs:///a/b/c/d",
            "kbs:///a/b/.hidden",
            "kbs:///a/b/c?x=1",
            "kbs:///a/b/c#f",
            "kbs:///a/b/%2e%2e",
            "kbs:///a/b c/d",
            "kbs+pkcs11:///a/b/c",
            "https://kbs/a/b/c",
            "kbs://",
            "kbs://host",
            "/a/b/c",
            "",
        ] {
            assert!(parse_resource_uri(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cmdline() {
        assert_eq!(rest_api_from_cmdline(""), RestApi::ResourceOnly);
        assert_eq!(
            rest_api_from_cmdline("console=hvc0 agent.guest_components_rest_api=all quiet"),
            RestApi::All
        );
        assert_eq!(
            rest_api_from_cmdline("agent.guest_components_rest_api=attestation"),
            RestApi::Attestation
        );
        assert_eq!(
            rest_api_from_cmdline("agent.guest_components_rest_api=resource"),
            RestApi::ResourceOnly
        );
        // The last one counts, as in the agent's parser.
        assert_eq!(
            rest_api_from_cmdline(
                "agent.guest_components_rest_api=all agent.guest_components_rest_api=resource"
            ),
            RestApi::ResourceOnly
        );
        // Neither a longer name nor another spelling turns it on.
        assert_eq!(
            rest_api_from_cmdline("agent.guest_components_rest_apix=all"),
            RestApi::ResourceOnly
        );
        assert_eq!(
            rest_api_from_cmdline("agent.guest_components_rest_api=ALL"),
            RestApi::ResourceOnly
        );
        assert!(RestApi::All.attestation_enabled() && RestApi::All.resource_enabled());
        assert!(!RestApi::ResourceOnly.attestation_enabled());
        assert!(!RestApi::Attestation.resource_enabled());
    }

    #[test]
    fn jwt_from_agent_answers() {
        let body = br#"{"token":"aGVhZA.Ym9keQ.c2ln","tee_keypair":"-----BEGIN PRIVATE KEY-----"}"#;
        assert_eq!(extract_jwt(body).unwrap(), "aGVhZA.Ym9keQ.c2ln");
        assert_eq!(
            extract_jwt(b"aGVhZA.Ym9keQ.c2ln\n").unwrap(),
            "aGVhZA.Ym9keQ.c2ln"
        );
        assert!(extract_jwt(br#"{"token":"not a jwt"}"#).is_none());
        assert!(extract_jwt(b"").is_none());
        assert!(extract_jwt(b"\xff\xfe").is_none());
    }

    #[test]
    fn quotes_are_bounded_and_printable() {
        let q = quote(&[b'a'; 1000]);
        assert!(q.chars().count() <= QUOTE_LEN + 1);
        assert_eq!(quote(b"x\ny\0"), "x y ");
        assert_eq!(quote(b""), "(empty body)");
    }

    const M: [u8; 48] = [0x5a; 48];
    const NOW: i64 = 1_700_000_000;

    fn claims(status: &str, measurement: &str, exp: i64) -> Value {
        json!({
            "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
            "iat": NOW - 10,
            "exp": exp,
            "submods": { "cpu0": {
                "ear.status": status,
                "ear.veraison.annotated-evidence": { "snp": { "measurement": measurement } }
            }}
        })
    }

    fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: Signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn jwk_of(key: &SigningKey) -> Value {
        let point = key.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        })
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    #[test]
    fn good_token_with_pinned_and_embedded_key() {
        let k = key(1);
        let pem = k
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let jwt = sign(
            &k,
            &json!({"alg":"ES256","typ":"JWT","jwk":jwk_of(&k)}),
            &claims("affirming", &hex::encode(M), NOW + 100),
        );
        let v = check_token(&jwt, &M, Some(pem.as_bytes()), NOW);
        assert!(v.passed, "{}", v.reason);
        assert_eq!(v.signature, SignatureCheck::Pinned);
        let v = check_token(&jwt, &M, None, NOW);
        assert!(v.passed, "{}", v.reason);
        assert_eq!(v.signature, SignatureCheck::EmbeddedOnly);
        assert!(v.reason.contains("integrity only"));
        // Upper-case hex is the same measurement.
        let jwt = sign(
            &k,
            &json!({"alg":"ES256"}),
            &claims("affirming", &hex::encode_upper(M), NOW + 1),
        );
        let v = check_token(&jwt, &M, Some(pem.as_bytes()), NOW);
        assert!(v.passed, "{}", v.reason);
        // DER SPKI is accepted too.
        let der = k.verifying_key().to_public_key_der().unwrap();
        assert!(check_token(&jwt, &M, Some(der.as_bytes()), NOW).passed);
    }

    #[test]
    fn no_key_means_claims_only() {
        let jwt = sign(
            &key(2),
            &json!({"alg":"ES256"}),
            &claims("affirming", &hex::encode(M), NOW + 100),
        );
        let v = check_token(&jwt, &M, None, NOW);
        assert!(v.passed, "{}", v.reason);
        assert_eq!(v.signature, SignatureCheck::Unchecked);
        assert!(v.reason.contains("NOT verified"));
    }

    #[test]
    fn bad_claims_fail() {
        let k = key(3);
        let h = json!({"alg":"ES256","jwk":jwk_of(&k)});
        for (c, why) in [
            (claims("warning", &hex::encode(M), NOW + 100), "\"warning\""),
            (
                claims("contraindicated", &hex::encode(M), NOW + 100),
                "\"contraindicated\"",
            ),
            (claims("great", &hex::encode(M), NOW + 100), "not one of"),
            (
                claims("affirming", &hex::encode([0u8; 48]), NOW + 100),
                "differs",
            ),
            (claims("affirming", "abcd", NOW + 100), "96 hex"),
            (claims("affirming", &hex::encode(M), NOW), "expired 0 s ago"),
            (
                claims("affirming", &hex::encode(M), NOW - 5),
                "expired 5 s ago",
            ),
            (json!({"exp": NOW + 1}), "no submods.cpu0"),
        ] {
            let v = check_token(&sign(&k, &h, &c), &M, None, NOW);
            assert!(!v.passed, "{why}");
            assert!(v.reason.contains(why), "{why}: {}", v.reason);
            // The measurement itself is never printed.
            assert!(!v.reason.contains(&hex::encode(M)));
        }
        let mut future = claims("affirming", &hex::encode(M), NOW + 5000);
        future["iat"] = json!(NOW + 1000);
        assert!(!check_token(&sign(&k, &h, &future), &M, None, NOW).passed);
    }

    #[test]
    fn bad_signatures_fail() {
        let k = key(4);
        let other = key(5);
        let c = claims("affirming", &hex::encode(M), NOW + 100);
        let other_pem = other
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        // Signed by k, pinned to another key.
        let jwt = sign(&k, &json!({"alg":"ES256","jwk":jwk_of(&k)}), &c);
        let v = check_token(&jwt, &M, Some(other_pem.as_bytes()), NOW);
        assert!(!v.passed);
        assert_eq!(v.signature, SignatureCheck::Failed);
        assert!(v.reason.contains("pinned key"), "{}", v.reason);
        // The embedded JWK is not the signer's.
        let jwt = sign(&k, &json!({"alg":"ES256","jwk":jwk_of(&other)}), &c);
        assert!(!check_token(&jwt, &M, None, NOW).passed);
        // Claims changed after signing.
        let jwt = sign(&k, &json!({"alg":"ES256","jwk":jwk_of(&k)}), &c);
        let forged = claims("affirming", &hex::encode([1u8; 48]), NOW + 100);
        let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
        assert!(!check_token(&parts.join("."), &[1u8; 48], None, NOW).passed);
        // alg none / other algs with a key present.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg":"none","jwk":jwk_of(&k)}).to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        let v = check_token(&none, &M, None, NOW);
        assert!(!v.passed && v.reason.contains("ES256"), "{}", v.reason);
        let pinned = k
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        assert!(!check_token(&none, &M, Some(pinned.as_bytes()), NOW).passed);
        // A pinned key that is not a key.
        assert!(!check_token(&jwt, &M, Some(b"garbage"), NOW).passed);
    }

    #[test]
    fn malformed_tokens_fail_without_panicking() {
        for jwt in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.??.==",
            "e30.e30.",
            "e30.bm90anNvbg.AA",
        ] {
            let v = check_token(jwt, &M, None, NOW);
            assert!(!v.passed, "{jwt:?}");
        }
    }
}
