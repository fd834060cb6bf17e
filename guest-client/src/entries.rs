//! The secret entries the key broker's packet puts in the guest's EFI secret
//! area, as `efi_secret` shows them (one file per GUID), and what a well-formed
//! one holds. Pure: no I/O, so every malformed case tests in microseconds.
//!
//! Values are never returned or shown: callers get ids, counts and lengths.

use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Kata's offline request: the bundle of a keyset (JSON: secret id to base64).
pub const BUNDLE_GUID: &str = "e6f5a162-d67f-4750-a67c-5d065f2a9910";
/// Kata's online request: the connection (JSON `{client_id, key}`).
pub const CONNECTION_GUID: &str = "1ee27366-0c87-43a6-af48-28543eaf7cb0";
/// The key broker's per-launch report key (JSON `{launch_id, report_key}`).
pub const REPORT_KEY_GUID: &str = "6c8e2b4a-3f1d-4e7a-9b5c-0d2f8a1e7c93";
/// The secret encrypted images' layers name as their key
/// (`kbs:///default/image-encryption-key/1`): in the offline bundle under this
/// id, or asked for online as a `key`.
pub const IMAGE_KEY_ID: &str = "default/image-encryption-key/1";
/// The image key's length: the attestation agent unwraps layer keys with
/// AES-256 (A256GCM or A256CTR).
pub const IMAGE_KEY_LEN: usize = 32;
/// The resource holding the cosign public key the signature policy names.
pub const COSIGN_KEY_RESOURCE: &str = "default/cosign-key/1";

/// Why an entry is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not JSON, or not the JSON shape expected.
    #[error("not the expected JSON ({0})")]
    NotJson(String),
    /// A field that must be base64 is not.
    #[error("{field} is not base64")]
    NotBase64 {
        /// The field.
        field: String,
    },
    /// A key of the wrong length.
    #[error("{field} is {len} bytes, expected 32")]
    KeyLength {
        /// The field.
        field: String,
        /// Its decoded length.
        len: usize,
    },
    /// A required field is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// Not one PEM block of the expected label.
    #[error("not a PEM {0}")]
    NotPem(&'static str),
    /// A private key where a public key belongs.
    #[error("a private key, where only the public key belongs")]
    PrivateKey,
    /// The DER inside the PEM is not a SubjectPublicKeyInfo.
    #[error("not a SubjectPublicKeyInfo ({0})")]
    NotSpki(&'static str),
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, EntryError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| EntryError::NotBase64 {
            field: field.to_string(),
        })
}

fn key32(field: &str, text: &str) -> Result<[u8; 32], EntryError> {
    let bytes = b64(field, text)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| EntryError::KeyLength {
        field: field.to_string(),
        len: bytes.len(),
    })
}

/// The offline bundle: which secrets it holds and how long each is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Secret id to decoded length.
    pub secrets: BTreeMap<String, usize>,
}

/// Parses the bundle entry.
pub fn parse_bundle(data: &[u8]) -> Result<Bundle, EntryError> {
    let map: BTreeMap<String, String> =
        serde_json::from_slice(data).map_err(|e| EntryError::NotJson(e.to_string()))?;
    if map.is_empty() {
        return Err(EntryError::Empty("the bundle"));
    }
    let mut secrets = BTreeMap::new();
    for (id, value) in map {
        let len = b64(&format!("secret {id:?}"), &value)?.len();
        secrets.insert(id, len);
    }
    Ok(Bundle { secrets })
}

/// The online connection: the client id and its AES-256-GCM key.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// The id the guest presents to GetOnlineSecret.
    pub client_id: String,
    /// The connection key.
    pub key: [u8; 32],
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawConnection {
    client_id: String,
    key: String,
}

/// Parses the connection entry.
pub fn parse_connection(data: &[u8]) -> Result<Connection, EntryError> {
    let raw: RawConnection =
        serde_json::from_slice(data).map_err(|e| EntryError::NotJson(e.to_string()))?;
    if raw.client_id.is_empty() {
        return Err(EntryError::Empty("client_id"));
    }
    Ok(Connection {
        client_id: raw.client_id,
        key: key32("key", &raw.key)?,
    })
}

/// The report key entry: the launch it belongs to and its HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportKey {
    /// The launch id the broker gave this launch.
    pub launch_id: String,
    /// HMAC-SHA256 key for the report.
    pub key: [u8; 32],
}

impl std::fmt::Debug for ReportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportKey")
            .field("launch_id", &self.launch_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawReportKey {
    launch_id: String,
    report_key: String,
}

/// Parses the report key entry.
pub fn parse_report_key(data: &[u8]) -> Result<ReportKey, EntryError> {
    let raw: RawReportKey =
        serde_json::from_slice(data).map_err(|e| EntryError::NotJson(e.to_string()))?;
    if raw.launch_id.is_empty() {
        return Err(EntryError::Empty("launch_id"));
    }
    Ok(ReportKey {
        launch_id: raw.launch_id,
        key: key32("report_key", &raw.report_key)?,
    })
}

/// Decodes the online payload: a bincode map of GUID text to bytes (u64 LE
/// count, then u64 LE length-prefixed keys and values).
pub fn decode_online_payload(data: &[u8]) -> Option<BTreeMap<String, Vec<u8>>> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = data.split_at_checked(n)?;
        *data = tail;
        Some(head)
    }
    fn len(data: &mut &[u8]) -> Option<usize> {
        let bytes: [u8; 8] = take(data, 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(bytes)).ok()
    }
    let mut rest = data;
    let count = len(&mut rest)?;
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let k = len(&mut rest)?;
        let key = String::from_utf8(take(&mut rest, k)?.to_vec()).ok()?;
        let v = len(&mut rest)?;
        out.insert(key, take(&mut rest, v)?.to_vec());
    }
    rest.is_empty().then_some(out)
}

/// Which of the shapes `host-agent provision` writes a signature policy has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Any image: the default accepts anything and no repository says otherwise.
    None,
    /// Images are rejected by default, and each listed repository must be
    /// signed (`sigstoreSigned` with a key path).
    Verify,
    /// Anything else (hand-written): see the repositories.
    Custom,
}

/// One requirement of a policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Requirement {
    /// Its `type` (`sigstoreSigned`, `signedBy`, `reject`...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its `keyPath`, if any.
    pub key_path: Option<String>,
}

/// What a policy requires of one repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepositoryPolicy {
    /// The transport (`docker`).
    pub transport: String,
    /// The repository.
    pub repository: String,
    /// Its requirements, in order.
    pub requirements: Vec<Requirement>,
    /// Every requirement is `sigstoreSigned` with a key path.
    pub sigstore_signed: bool,
}

/// What an image signature policy (containers-policy.json) enforces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicySummary {
    /// The policy's shape.
    pub policy: PolicyKind,
    /// Images are rejected unless a requirement accepts them.
    pub enforced: bool,
    /// Repository to the key paths its signatures must verify with.
    pub signed_repositories: BTreeMap<String, Vec<String>>,
    /// Every repository the policy names, with its requirements.
    pub repositories: Vec<RepositoryPolicy>,
}

impl PolicySummary {
    /// Whether a requirement's key path names the KBS resource `id`
    /// (`kbs:///ID` or `kbs://HOST:PORT/ID`).
    pub fn needs_resource(&self, id: &str) -> bool {
        self.repositories
            .iter()
            .flat_map(|r| &r.requirements)
            .filter_map(|q| q.key_path.as_deref())
            .any(|k| kbs_resource_path(k) == Some(id))
    }
}

/// The resource path of a KBS resource URI (`kbs://[HOST[:PORT]]/PATH`).
pub fn kbs_resource_path(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("kbs://")?;
    let (_authority, path) = rest.split_once('/')?;
    (!path.is_empty()).then_some(path)
}

fn requirement_type(r: &serde_json::Value) -> Option<&str> {
    r.get("type").and_then(|t| t.as_str())
}

/// Reads a containers-policy.json.
pub fn summarise_policy(data: &[u8]) -> Result<PolicySummary, EntryError> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| EntryError::NotJson(e.to_string()))?;
    let default = v
        .get("default")
        .and_then(|d| d.as_array())
        .ok_or_else(|| EntryError::NotJson("no \"default\" list".into()))?;
    let enforced = default
        .iter()
        .all(|r| requirement_type(r) == Some("reject"));
    let accepts_all = !default.is_empty()
        && default
            .iter()
            .all(|r| requirement_type(r) == Some("insecureAcceptAnything"));
    let mut signed_repositories = BTreeMap::new();
    let mut repositories = Vec::new();
    let transports = v.get("transports").and_then(|t| t.as_object());
    for (transport, scopes) in transports.into_iter().flatten() {
        let Some(scopes) = scopes.as_object() else {
            continue;
        };
        for (repo, reqs) in scopes {
            let requirements: Vec<Requirement> = reqs
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| Requirement {
                    kind: requirement_type(r).unwrap_or_default().to_string(),
                    key_path: r
                        .get("keyPath")
                        .and_then(|k| k.as_str())
                        .map(str::to_string),
                })
                .collect();
            let sigstore_signed = !requirements.is_empty()
                && requirements
                    .iter()
                    .all(|q| q.kind == "sigstoreSigned" && q.key_path.is_some());
            if transport == "docker" {
                let keys: Vec<String> = requirements
                    .iter()
                    .filter(|q| q.kind == "sigstoreSigned")
                    .filter_map(|q| q.key_path.clone())
                    .collect();
                if !keys.is_empty() {
                    signed_repositories.insert(repo.clone(), keys);
                }
            }
            repositories.push(RepositoryPolicy {
                transport: transport.clone(),
                repository: repo.clone(),
                requirements,
                sigstore_signed,
            });
        }
    }
    let policy = if accepts_all
        && repositories.iter().all(|r| {
            r.requirements
                .iter()
                .all(|q| q.kind == "insecureAcceptAnything")
        }) {
        PolicyKind::None
    } else if enforced && !repositories.is_empty() && repositories.iter().all(|r| r.sigstore_signed)
    {
        PolicyKind::Verify
    } else {
        PolicyKind::Custom
    };
    Ok(PolicySummary {
        policy,
        enforced,
        signed_repositories,
        repositories,
    })
}

/// What identifies a public key, all of it public.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublicKeyInfo {
    /// The algorithm, e.g. `ecdsa-p256`, `rsa`, `ed25519`, or the OID.
    pub algorithm: String,
    /// SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex.
    pub fingerprint_sha256: String,
}

/// One DER element at the start of `data`: (tag, contents, the rest). Only
/// definite lengths of up to four bytes, which is all a public key needs.
fn der_element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        // Minimal encoding, as DER requires.
        if bytes.first() == Some(&0) {
            return None;
        }
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return None;
        }
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Dotted text of an OID's contents, for algorithms not named here.
fn oid_text(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() {
                // The first number packs the first two arcs.
                let first = (value / 40).min(2);
                parts.push(first.to_string());
                parts.push((value - first * 40).to_string());
            } else {
                parts.push(value.to_string());
            }
            value = 0;
        }
    }
    parts.join(".")
}

/// Checks a DER SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID, params? },
/// BIT STRING }, nothing after. Returns the algorithm's name.
fn spki_algorithm(der: &[u8]) -> Result<String, EntryError> {
    let (tag, spki, rest) = der_element(der).ok_or(EntryError::NotSpki("bad DER"))?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(EntryError::NotSpki("not one SEQUENCE"));
    }
    let (tag, alg, rest) = der_element(spki).ok_or(EntryError::NotSpki("bad DER"))?;
    if tag != 0x30 {
        return Err(EntryError::NotSpki("no AlgorithmIdentifier"));
    }
    let (tag, key, rest) = der_element(rest).ok_or(EntryError::NotSpki("bad DER"))?;
    if tag != 0x03 || !rest.is_empty() || key.len() < 2 || key.first() != Some(&0) {
        return Err(EntryError::NotSpki("no public key BIT STRING"));
    }
    let (tag, oid, params) = der_element(alg).ok_or(EntryError::NotSpki("bad DER"))?;
    if tag != 0x06 || oid.is_empty() {
        return Err(EntryError::NotSpki("no algorithm OID"));
    }
    let curve = der_element(params).and_then(|(t, c, _)| (t == 0x06).then_some(c));
    Ok(match (oid, curve) {
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) => "ecdsa-p256".into(),
        (OID_EC_PUBLIC_KEY, Some(OID_P384)) => "ecdsa-p384".into(),
        (OID_EC_PUBLIC_KEY, Some(OID_P521)) => "ecdsa-p521".into(),
        (OID_EC_PUBLIC_KEY, Some(c)) => format!("ecdsa ({})", oid_text(c)),
        (OID_RSA, _) => "rsa".into(),
        (OID_ED25519, _) => "ed25519".into(),
        (other, _) => oid_text(other),
    })
}

/// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, what `cosign
/// generate-key-pair` writes as cosign.pub): its algorithm and the SHA-256
/// fingerprint of its DER SubjectPublicKeyInfo.
pub fn parse_public_key_pem(data: &[u8]) -> Result<PublicKeyInfo, EntryError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let text = std::str::from_utf8(data).map_err(|_| EntryError::NotPem("public key"))?;
    if text.contains("PRIVATE KEY-----") {
        return Err(EntryError::PrivateKey);
    }
    let (_, after) = text
        .split_once(BEGIN)
        .ok_or(EntryError::NotPem("public key"))?;
    let (body, tail) = after
        .split_once(END)
        .ok_or(EntryError::NotPem("public key"))?;
    if tail.contains("-----BEGIN") {
        return Err(EntryError::NotPem("public key (more than one block)"));
    }
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = b64("the PEM body", &body)?;
    let algorithm = spki_algorithm(&der)?;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(&der);
    Ok(PublicKeyInfo {
        algorithm,
        fingerprint_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles() {
        let b = parse_bundle(br#"{"key-a":"aW1hZ2Uga2V5","key-b":"AAEC/w=="}"#).unwrap();
        assert_eq!(b.secrets["key-a"], 9);
        assert_eq!(b.secrets["key-b"], 4);
        assert!(matches!(parse_bundle(b"{}"), Err(EntryError::Empty(_))));
        assert!(matches!(
            parse_bundle(b"not json"),
            Err(EntryError::NotJson(_))
        ));
        assert!(matches!(
            parse_bundle(br#"{"a":"***"}"#),
            Err(EntryError::NotBase64 { .. })
        ));
    }

    #[test]
    fn connections_and_report_keys() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let c =
            parse_connection(format!(r#"{{"client_id":"c1","key":"{key}"}}"#).as_bytes()).unwrap();
        assert_eq!(c.client_id, "c1");
        assert!(!format!("{c:?}").contains(&key), "no key in debug output");
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert_eq!(
            parse_connection(format!(r#"{{"client_id":"c1","key":"{short}"}}"#).as_bytes()),
            Err(EntryError::KeyLength {
                field: "key".into(),
                len: 16
            })
        );
        let r = parse_report_key(format!(r#"{{"launch_id":"L","report_key":"{key}"}}"#).as_bytes())
            .unwrap();
        assert_eq!(r.launch_id, "L");
        assert!(parse_report_key(br#"{"launch_id":"","report_key":""}"#).is_err());
    }

    #[test]
    fn online_payload_round_trip_and_truncation() {
        let mut p = Vec::new();
        p.extend_from_slice(&1u64.to_le_bytes());
        p.extend_from_slice(&3u64.to_le_bytes());
        p.extend_from_slice(b"abc");
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(b"xy");
        let m = decode_online_payload(&p).unwrap();
        assert_eq!(m["abc"], b"xy");
        for cut in 0..p.len() {
            assert!(decode_online_payload(&p[..cut]).is_none());
        }
        let mut huge = p.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_online_payload(&huge).is_none());
    }

    #[test]
    fn policies() {
        let none =
            summarise_policy(br#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}"#)
                .unwrap();
        assert!(!none.enforced);
        let verify = summarise_policy(
            br#"{"default":[{"type":"reject"}],"transports":{"docker":{"r/a":[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}]}}}"#,
        )
        .unwrap();
        assert!(verify.enforced);
        assert_eq!(
            verify.signed_repositories["r/a"],
            ["kbs:///default/cosign-key/1"]
        );
        assert!(summarise_policy(b"[]").is_err());
    }

    #[test]
    fn policy_shapes() {
        let none =
            summarise_policy(br#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{}}"#)
                .unwrap();
        assert_eq!(none.policy, PolicyKind::None);
        assert!(none.repositories.is_empty());
        let verify = summarise_policy(
            br#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "r/a":[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-key/1"}],
                "r/b":[{"type":"sigstoreSigned","keyPath":"kbs://kbs.example:44444/default/cosign-key/1"}]}}}"#,
        )
        .unwrap();
        assert_eq!(verify.policy, PolicyKind::Verify);
        assert_eq!(verify.repositories.len(), 2);
        assert!(verify.repositories.iter().all(|r| r.sigstore_signed));
        assert_eq!(verify.repositories[0].transport, "docker");
        assert_eq!(verify.repositories[0].repository, "r/a");
        assert_eq!(
            verify.repositories[0].requirements,
            [Requirement {
                kind: "sigstoreSigned".into(),
                key_path: Some("kbs:///default/cosign-key/1".into())
            }]
        );
        assert!(verify.needs_resource(COSIGN_KEY_RESOURCE));
        assert!(!none.needs_resource(COSIGN_KEY_RESOURCE));
        // A requirement without a key path, or of another type: not `verify`.
        for custom in [
            br#"{"default":[{"type":"reject"}],"transports":{"docker":{"r/a":[{"type":"sigstoreSigned"}]}}}"#.as_slice(),
            br#"{"default":[{"type":"reject"}],"transports":{"docker":{"r/a":[{"type":"signedBy","keyPath":"/k.gpg"}]}}}"#,
            br#"{"default":[{"type":"reject"}],"transports":{}}"#,
            br#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"r/a":[{"type":"reject"}]}}}"#,
        ] {
            let p = summarise_policy(custom).unwrap();
            assert_eq!(p.policy, PolicyKind::Custom, "{}", String::from_utf8_lossy(custom));
        }
        assert_eq!(kbs_resource_path("kbs:///a/b/c"), Some("a/b/c"));
        assert_eq!(kbs_resource_path("kbs://h:1/a/b/c"), Some("a/b/c"));
        assert_eq!(kbs_resource_path("/etc/k.pub"), None);
        assert_eq!(kbs_resource_path("kbs://"), None);
    }

    /// Keys from `openssl genpkey`, fingerprints from `openssl pkey -pubin
    /// -outform DER | sha256sum`.
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEptwYPIvgufFmmSoRyOy4150fng39
v9MYEg2s3Miv7oGfD4FNdVaHjXEaGwROEFo8ThePADtwjm5m1mvEH/P27w==
-----END PUBLIC KEY-----
";
    const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEArmspCDLHifJLIZ0oyIZ3ZGbyul0KC3h47CW6SGE3Dng=
-----END PUBLIC KEY-----
";
    const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC6JIu+/9zpgNXon7UOuKXeXRGj
ugXiruHYOzv9Y+WVCocv7qJ4h3RxwSIYcQVbxfdv9yJcD5gn2yYW2bdsPSCjKzrh
y6dGysd0QHzpNEF0uafEvbMCuy9BxkRBbXnGe10oaRKh8dVJctuptGPzI16R0Juw
ERI2gEmhL59xVczIzwIDAQAB
-----END PUBLIC KEY-----
";

    #[test]
    fn public_keys_and_their_fingerprints() {
        for (pem, algorithm, fingerprint) in [
            (
                P256_PEM,
                "ecdsa-p256",
                "4daf8c41617a6f806dbc52b702070a3a955c3d72e100eac526d80811fac472f4",
            ),
            (
                ED25519_PEM,
                "ed25519",
                "605fc17221b7350d055ebfe3072bd32127e6d14e35bfe60ef503ec5d3d6d8d46",
            ),
            (
                RSA_PEM,
                "rsa",
                "c946f0c78ba6030e60dd4d76b6f073970c51915abb967eae9350975f33de6b53",
            ),
        ] {
            let k = parse_public_key_pem(pem.as_bytes()).unwrap();
            assert_eq!(k.algorithm, algorithm);
            assert_eq!(k.fingerprint_sha256, fingerprint);
        }
        // CRLF line ends and surrounding text are fine.
        let crlf = format!("comment\r\n{}", P256_PEM.replace('\n', "\r\n"));
        assert_eq!(
            parse_public_key_pem(crlf.as_bytes()).unwrap().algorithm,
            "ecdsa-p256"
        );
        assert_eq!(
            parse_public_key_pem(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nabc\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"),
            Err(EntryError::PrivateKey)
        );
        assert!(matches!(
            parse_public_key_pem(b"hello"),
            Err(EntryError::NotPem(_))
        ));
        assert!(matches!(
            parse_public_key_pem(b"-----BEGIN PUBLIC KEY-----\n***\n-----END PUBLIC KEY-----\n"),
            Err(EntryError::NotBase64 { .. })
        ));
        // Base64 of something that is not a SubjectPublicKeyInfo.
        assert!(matches!(
            parse_public_key_pem(
                b"-----BEGIN PUBLIC KEY-----\naGVsbG8=\n-----END PUBLIC KEY-----\n"
            ),
            Err(EntryError::NotSpki(_))
        ));
        let two = format!("{P256_PEM}{ED25519_PEM}");
        assert!(matches!(
            parse_public_key_pem(two.as_bytes()),
            Err(EntryError::NotPem(_))
        ));
        // Every truncation of the DER is refused, never a panic.
        use base64::Engine as _;
        let body: String = P256_PEM
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        for cut in 0..der.len() {
            assert!(spki_algorithm(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(spki_algorithm(&der).unwrap(), "ecdsa-p256");
        assert_eq!(
            oid_text(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            "1.2.840.10045.2.1"
        );
    }
}
