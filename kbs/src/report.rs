//! The guest's report on its secret delivery path (`kbsstatus.GuestStatus`),
//! free of gRPC and storage: the report-key entry the broker adds to every
//! secret table it releases, and the decoding, bounds and MAC of a report.
//!
//! Every GetSecret that releases secrets adds one entry under
//! [`REPORT_KEY_GUID`] holding `{"launch_id":"<id>","report_key":"<base64>"}`
//! with a fresh random 32-byte key. The guest sends a `SignedReport` whose
//! `body` is an encoded `ReportBody` and whose `mac` is
//! HMAC-SHA256(report_key, body), over the exact bytes sent.

use crate::broker::BrokerError;
use hmac::{Hmac, Mac};
use kbs_proto::kbsstatus::ReportBody;
use prost::Message as _;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use sev_core::secret_table::REPORT_KEY_GUID;

/// Largest `SignedReport.body`, in bytes.
pub const MAX_BODY: usize = 64 << 10;
/// Most checks in one report.
pub const MAX_CHECKS: usize = 64;
/// Longest string field of a report (launch id, client, check name or reason), in bytes.
pub const MAX_STRING: usize = 1024;
/// Length of a report key and of a MAC.
pub const KEY_LEN: usize = 32;

/// The data of the report-key entry: `{"launch_id":"<id>","report_key":"<base64>"}`.
pub fn key_entry(launch_id: &str, key: &[u8; KEY_LEN]) -> Vec<u8> {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    // Serialising a map of two strings cannot fail; an empty entry would only
    // make the guest's report impossible, never leak anything.
    serde_json::to_vec(&serde_json::json!({"launch_id": launch_id, "report_key": text}))
        .unwrap_or_default()
}

/// HMAC-SHA256(key, body).
pub fn mac(key: &[u8; KEY_LEN], body: &[u8]) -> [u8; KEY_LEN] {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0; KEY_LEN];
    };
    m.update(body);
    m.finalize().into_bytes().into()
}

/// Whether `tag` is HMAC-SHA256(key, body), compared in constant time.
pub fn verify(key: &[u8; KEY_LEN], body: &[u8], tag: &[u8; KEY_LEN]) -> bool {
    mac(key, body).ct_eq(tag).into()
}

/// A report whose fields passed the bounds checks (its MAC is not checked yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReport {
    /// The launch, as a canonical lower-case UUID.
    pub launch_id: String,
    /// The guest's verdict.
    pub path_works: bool,
    /// Names of the checks that failed, in report order.
    pub failed_checks: Vec<String>,
    /// How many checks the report holds.
    pub checks: usize,
    /// The client's self-description.
    pub client: String,
    /// The MAC sent.
    pub mac: [u8; KEY_LEN],
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> BrokerError {
    BrokerError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// Refuses a string field longer than [`MAX_STRING`].
pub(crate) fn bounded(field: &'static str, text: &str) -> Result<(), BrokerError> {
    if text.len() > MAX_STRING {
        return Err(invalid(field, format!("longer than {MAX_STRING} bytes")));
    }
    Ok(())
}

/// Decodes and bounds-checks a `SignedReport`'s fields; every failure is an
/// `InvalidArgument` naming the field.
pub fn parse(body: &[u8], mac: &[u8]) -> Result<ParsedReport, BrokerError> {
    if body.len() > MAX_BODY {
        return Err(invalid("body", format!("longer than {MAX_BODY} bytes")));
    }
    let mac: [u8; KEY_LEN] = mac.try_into().map_err(|_| {
        invalid(
            "mac",
            format!("an HMAC-SHA256 is {KEY_LEN} bytes, got {}", mac.len()),
        )
    })?;
    let r = ReportBody::decode(body)
        .map_err(|e| invalid("body", format!("not an encoded ReportBody: {e}")))?;
    bounded("body.launch_id", &r.launch_id)?;
    let launch_id = uuid::Uuid::parse_str(&r.launch_id)
        .map_err(|_| invalid("body.launch_id", "not a UUID"))?
        .to_string();
    if r.checks.len() > MAX_CHECKS {
        return Err(invalid("body.checks", format!("at most {MAX_CHECKS}")));
    }
    for c in &r.checks {
        bounded("body.checks.name", &c.name)?;
        bounded("body.checks.reason", &c.reason)?;
    }
    bounded("body.client", &r.client)?;
    Ok(ParsedReport {
        launch_id,
        path_works: r.path_works,
        failed_checks: r
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.clone())
            .collect(),
        checks: r.checks.len(),
        client: r.client,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kbs_proto::kbsstatus::Check;

    const ID: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn body(edit: impl FnOnce(&mut ReportBody)) -> Vec<u8> {
        let mut b = ReportBody {
            launch_id: ID.into(),
            checks: vec![
                Check {
                    name: "securityfs".into(),
                    passed: true,
                    reason: String::new(),
                },
                Check {
                    name: "online".into(),
                    passed: false,
                    reason: "unreachable".into(),
                },
            ],
            path_works: false,
            client: "guest-client 0.1".into(),
        };
        edit(&mut b);
        b.encode_to_vec()
    }

    #[test]
    fn mac_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2 uses a 4-byte key; HMAC pads keys with zeros to
        // the block size, so the same key zero-padded to 32 bytes gives the
        // same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let tag = mac(&key, b"what do ya want for nothing?");
        assert_eq!(
            crate::store::hex(&tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(&key, b"what do ya want for nothing?", &tag));
        let mut bad = tag;
        bad[31] ^= 1;
        assert!(!verify(&key, b"what do ya want for nothing?", &bad));
        assert!(!verify(&[0; 32], b"what do ya want for nothing?", &tag));
    }

    #[test]
    fn key_entry_is_the_documented_json() {
        let e = key_entry(ID, &[0xab; 32]);
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["launch_id"], ID);
        assert_eq!(
            v["report_key"],
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="
        );
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(
            REPORT_KEY_GUID.to_string(),
            "6c8e2b4a-3f1d-4e7a-9b5c-0d2f8a1e7c93"
        );
    }

    #[test]
    fn a_good_report_parses() {
        let p = parse(&body(|_| {}), &[7; 32]).unwrap();
        assert_eq!(p.launch_id, ID);
        assert!(!p.path_works);
        assert_eq!(p.failed_checks, vec!["online".to_string()]);
        assert_eq!(p.checks, 2);
        assert_eq!(p.client, "guest-client 0.1");
        // Upper-case UUIDs are canonicalised.
        let p = parse(&body(|b| b.launch_id = ID.to_uppercase()), &[7; 32]).unwrap();
        assert_eq!(p.launch_id, ID);
    }

    #[test]
    fn malformed_reports_name_the_field() {
        let long = "x".repeat(MAX_STRING + 1);
        let check = |name: &str| Check {
            name: name.into(),
            passed: true,
            reason: String::new(),
        };
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("mac", body(|_| {}), vec![0; 31]),
            ("mac", body(|_| {}), vec![]),
            ("body", vec![0xff; 10], vec![0; 32]),
            ("body", vec![0; MAX_BODY + 1], vec![0; 32]),
            (
                "body.launch_id",
                body(|b| b.launch_id = "nope".into()),
                vec![0; 32],
            ),
            (
                "body.launch_id",
                body(|b| b.launch_id = long.clone()),
                vec![0; 32],
            ),
            ("body.launch_id", Vec::new(), vec![0; 32]),
            (
                "body.checks",
                body(|b| b.checks = vec![check("c"); MAX_CHECKS + 1]),
                vec![0; 32],
            ),
            (
                "body.checks.name",
                body(|b| b.checks[0].name = long.clone()),
                vec![0; 32],
            ),
            (
                "body.checks.reason",
                body(|b| b.checks[1].reason = long.clone()),
                vec![0; 32],
            ),
            (
                "body.client",
                body(|b| b.client = long.clone()),
                vec![0; 32],
            ),
        ];
        for (field, b, m) in cases {
            match parse(&b, &m) {
                Err(BrokerError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // The limits themselves are accepted.
        let max = body(|b| {
            b.checks = vec![check("n"); MAX_CHECKS];
            b.checks[0].name = "n".repeat(MAX_STRING);
            b.checks[1].reason = "r".repeat(MAX_STRING);
            b.launch_id = ID.to_uppercase();
            b.client = "c".repeat(MAX_STRING);
        });
        assert!(max.len() <= MAX_BODY);
        assert!(parse(&max, &[0; 32]).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let good = body(|_| {});
        for cut in 0..good.len() {
            let _ = parse(&good[..cut], &[0; 32]);
        }
        let mut x = 0x1234_5678_u32;
        for _ in 0..2000 {
            let len = (x % 96) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect();
            let _ = parse(&bytes, &[0; 32]);
        }
    }
}
