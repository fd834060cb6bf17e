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

/// What an image signature policy (containers-policy.json) enforces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicySummary {
    /// Images are rejected unless a requirement accepts them.
    pub enforced: bool,
    /// Repository to the key paths its signatures must verify with.
    pub signed_repositories: BTreeMap<String, Vec<String>>,
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
        .all(|r| r.get("type").and_then(|t| t.as_str()) == Some("reject"));
    let mut signed_repositories = BTreeMap::new();
    if let Some(docker) = v
        .get("transports")
        .and_then(|t| t.get("docker"))
        .and_then(|d| d.as_object())
    {
        for (repo, reqs) in docker {
            let keys: Vec<String> = reqs
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r.get("type").and_then(|t| t.as_str()) == Some("sigstoreSigned"))
                .filter_map(|r| r.get("keyPath").and_then(|k| k.as_str()))
                .map(str::to_string)
                .collect();
            if !keys.is_empty() {
                signed_repositories.insert(repo.clone(), keys);
            }
        }
    }
    Ok(PolicySummary {
        enforced,
        signed_repositories,
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
}
