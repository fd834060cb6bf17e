//! The report to the key broker: every check's outcome for the launch, MACed
//! with the report key the broker put in this launch's secret table, so that
//! only a guest that passed attestation can send it and the host cannot forge
//! or alter it.

use crate::entries::ReportKey;
use crate::verify::Check;
use hmac::{Hmac, Mac};
use kbs_proto::kbsstatus::guest_status_client::GuestStatusClient;
use kbs_proto::kbsstatus::{Check as WireCheck, ReportBody, SignedReport};
use prost::Message as _;
use std::time::Duration;

/// The report for `key`'s launch: the body's exact bytes and their MAC.
pub fn sign(key: &ReportKey, checks: &[Check], path_works: bool) -> SignedReport {
    let body = ReportBody {
        launch_id: key.launch_id.clone(),
        checks: wire_checks(checks),
        path_works,
        client: CLIENT.to_string(),
    }
    .encode_to_vec();
    // HMAC takes a key of any length; 32 bytes always works.
    let mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key.key)
        .map(|mut m| {
            m.update(&body);
            m.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default();
    SignedReport { body, mac }
}

/// Sends the report; returns when the broker recorded it (Unix seconds).
pub async fn send(kbs: &str, report: SignedReport, timeout: Duration) -> Result<i64, String> {
    let channel = crate::online::channel(kbs, timeout).await?;
    let ack = GuestStatusClient::new(channel)
        .report(report)
        .await
        .map_err(|s| crate::online::call_error(&s, kbs, "report"))?
        .into_inner();
    Ok(ack.recorded_at)
}

/// The checks as the wire carries them.
pub fn wire_checks(checks: &[Check]) -> Vec<WireCheck> {
    checks
        .iter()
        .map(|c| WireCheck {
            name: c.name.clone(),
            passed: c.passed,
            reason: c.reason.clone(),
        })
        .collect()
}

/// What the client calls itself in reports.
pub const CLIENT: &str = concat!("guest-client ", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_covers_the_exact_body() {
        let key = ReportKey {
            launch_id: "6f1e2d3c-0000-4000-8000-000000000001".into(),
            key: [5u8; 32],
        };
        let checks = [Check {
            name: "bundle".into(),
            passed: true,
            reason: "2 secrets".into(),
        }];
        let r = sign(&key, &checks, true);
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&[5u8; 32]).unwrap();
        m.update(&r.body);
        assert!(m.verify_slice(&r.mac).is_ok());
        let body = ReportBody::decode(r.body.as_slice()).unwrap();
        assert_eq!(body.launch_id, key.launch_id);
        assert!(body.path_works);
        assert_eq!(body.checks.len(), 1);
    }
}
