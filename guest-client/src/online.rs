//! The online path from inside the guest: GetOnlineSecret over the connection
//! the key broker injected, decrypted with its key, for the image signature
//! policy resource.

use crate::entries::{decode_online_payload, summarise_policy, Connection, PolicySummary};
use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine as _;
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::{OnlineSecretRequest, RequestDetails};
use std::time::Duration;

/// The resource the guest's image verification reads its policy from.
pub const POLICY_RESOURCE: &str = "default/security-policy/test";
/// The GUID the guest client asks the resource under (any GUID: it only keys
/// the answer's map).
const POLICY_GUID: &str = "a7f1c0de-3b52-4c8e-9d14-5e6f7a8b9c0d";

/// `http://HOST:PORT` for a `HOST:PORT` or a URL.
pub fn kbs_url(kbs: &str) -> String {
    if kbs.starts_with("http://") || kbs.starts_with("https://") {
        kbs.to_string()
    } else {
        format!("http://{kbs}")
    }
}

/// Asks the broker for the policy resource over the online connection and
/// summarises it.
pub async fn fetch_policy(
    kbs: &str,
    connection: &Connection,
    timeout: Duration,
) -> Result<PolicySummary, String> {
    let url = kbs_url(kbs);
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|_| format!("{kbs:?} is not HOST:PORT"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach the key broker at {url}: {}", root_cause(&e)))?;
    let reply = KeyBrokerServiceClient::new(channel)
        .get_online_secret(OnlineSecretRequest {
            client_id: connection.client_id.clone(),
            secret_requests: vec![RequestDetails {
                guid: POLICY_GUID.into(),
                format: "binary".into(),
                secret_type: "resource".into(),
                id: POLICY_RESOURCE.into(),
            }],
        })
        .await
        .map_err(|s| format!("GetOnlineSecret refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let b64 = base64::engine::general_purpose::STANDARD;
    let iv = b64
        .decode(&reply.iv)
        .map_err(|_| "the answer's IV is not base64".to_string())?;
    let payload = b64
        .decode(&reply.payload)
        .map_err(|_| "the answer's payload is not base64".to_string())?;
    if iv.len() != 12 {
        return Err(format!(
            "the answer's IV is {} bytes, expected 12",
            iv.len()
        ));
    }
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&connection.key)
        .map_err(|_| "bad connection key".to_string())?;
    let plain = cipher
        .decrypt(aes_gcm::Nonce::from_slice(&iv), payload.as_slice())
        .map_err(|_| "the answer does not decrypt with the connection key".to_string())?;
    let map = decode_online_payload(&plain).ok_or("the decrypted payload is malformed")?;
    let policy = map
        .get(POLICY_GUID)
        .ok_or("the answer lacks the policy resource")?;
    summarise_policy(policy).map_err(|e| format!("the policy resource: {e}"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
