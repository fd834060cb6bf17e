//! The online path from inside the guest: GetOnlineSecret over the connection
//! the key broker injected, decrypted with its key, for what the attestation
//! agent will ask for: the image signature policy, the cosign key and the key
//! of encrypted images.
//!
//! One request per secret, as the attestation agent asks: the broker refuses a
//! whole request when one of its secrets is missing, and a missing cosign or
//! image key must not hide the others.

use crate::delivered::{CosignKeyReport, ImageKeyReport, Source};
use crate::entries::{
    decode_online_payload, summarise_policy, Connection, PolicySummary, COSIGN_KEY_RESOURCE,
    IMAGE_KEY_ID,
};
use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine as _;
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::{OnlineSecretRequest, RequestDetails};
use std::time::Duration;
use tonic::transport::Channel;

/// The resource the guest's image verification reads its policy from.
pub const POLICY_RESOURCE: &str = "default/security-policy/test";
/// The GUID the guest client asks each secret under (any GUID: it only keys
/// the answer's map).
const REQUEST_GUID: &str = "a7f1c0de-3b52-4c8e-9d14-5e6f7a8b9c0d";

/// `http://HOST:PORT` for a `HOST:PORT` or a URL.
pub fn kbs_url(kbs: &str) -> String {
    if kbs.starts_with("http://") || kbs.starts_with("https://") {
        kbs.to_string()
    } else {
        format!("http://{kbs}")
    }
}

/// A channel to the key broker with `timeout` on the connection and on each
/// call; an error starting with "cannot reach" means the broker did not
/// answer (worth retrying while the network comes up).
pub async fn channel(kbs: &str, timeout: Duration) -> Result<Channel, String> {
    let url = kbs_url(kbs);
    tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|_| format!("{kbs:?} is not HOST:PORT"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot reach the key broker at {url}: {}", root_cause(&e)))
}

/// Whether an error of [`channel`] or [`call_error`] says the broker could
/// not be reached.
pub fn unreachable(e: &str) -> bool {
    e.starts_with("cannot reach")
}

/// What a failed call to the broker at `kbs` means: no answer (cancelled,
/// deadline or unavailable: the broker never judged the request, and the
/// message starts "cannot reach"), or `what` refused with the status.
pub fn call_error(s: &tonic::Status, kbs: &str, what: &str) -> String {
    match s.code() {
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded | tonic::Code::Unavailable => {
            format!(
                "cannot reach the key broker at {}: no answer ({})",
                kbs_url(kbs),
                s.message()
            )
        }
        code => format!("{what} refused: {code:?}: {}", s.message()),
    }
}

/// A connection to the key broker for one launch's online secrets.
#[derive(Debug)]
pub struct OnlineClient {
    client: KeyBrokerServiceClient<Channel>,
    connection: Connection,
}

impl OnlineClient {
    /// Connects; an error starting with "cannot reach" means the broker did
    /// not answer (worth retrying while the network comes up).
    pub async fn connect(
        kbs: &str,
        connection: &Connection,
        timeout: Duration,
    ) -> Result<OnlineClient, String> {
        let channel = channel(kbs, timeout).await?;
        Ok(OnlineClient {
            client: KeyBrokerServiceClient::new(channel),
            connection: connection.clone(),
        })
    }

    /// One secret (`kind` "resource" or "key"), decrypted; `None` when the
    /// broker has nothing by that id for this launch: it answers
    /// FAILED_PRECONDITION when the id is in the launch's keyset but unset,
    /// PERMISSION_DENIED naming the keyset when the id is not in it.
    pub async fn get(&mut self, kind: &str, id: &str) -> Result<Option<Vec<u8>>, String> {
        let reply = match self
            .client
            .get_online_secret(OnlineSecretRequest {
                client_id: self.connection.client_id.clone(),
                secret_requests: vec![RequestDetails {
                    guid: REQUEST_GUID.into(),
                    format: "binary".into(),
                    secret_type: kind.into(),
                    id: id.into(),
                }],
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => return Ok(None),
            Err(s)
                if s.code() == tonic::Code::PermissionDenied
                    && s.message().contains("not in this connection's keyset") =>
            {
                return Ok(None)
            }
            Err(s) => {
                return Err(format!(
                    "GetOnlineSecret refused: {:?}: {}",
                    s.code(),
                    s.message()
                ))
            }
        };
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
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&self.connection.key)
            .map_err(|_| "bad connection key".to_string())?;
        let plain = cipher
            .decrypt(aes_gcm::Nonce::from_slice(&iv), payload.as_slice())
            .map_err(|_| "the answer does not decrypt with the connection key".to_string())?;
        let mut map = decode_online_payload(&plain).ok_or("the decrypted payload is malformed")?;
        map.remove(REQUEST_GUID)
            .map(Some)
            .ok_or_else(|| format!("the answer lacks the {kind} {id}"))
    }

    /// The policy resource, summarised; its absence is an error, since the
    /// attestation agent cannot pull any image without it.
    pub async fn policy(&mut self) -> Result<PolicySummary, String> {
        let data = self
            .get("resource", POLICY_RESOURCE)
            .await?
            .ok_or_else(|| {
                format!("the key broker has no resource {POLICY_RESOURCE} (the signature policy)")
            })?;
        summarise_policy(&data).map_err(|e| format!("the policy resource: {e}"))
    }

    /// The cosign key resource; `required` says whether the policy names it.
    pub async fn cosign_key(&mut self, required: bool) -> CosignKeyReport {
        match self.get("resource", COSIGN_KEY_RESOURCE).await {
            Ok(data) => CosignKeyReport::from_resource(data.as_deref(), required),
            Err(e) => CosignKeyReport::failed(e, required),
        }
    }

    /// The image key, asked for as the attestation agent does (a `key`).
    pub async fn image_key(&mut self) -> ImageKeyReport {
        match self.get("key", IMAGE_KEY_ID).await {
            // Only the length is kept.
            Ok(data) => ImageKeyReport::from_length(Source::Online, data.map(|d| d.len())),
            Err(e) => ImageKeyReport::failed(e),
        }
    }
}

/// Asks the broker for the policy resource over the online connection and
/// summarises it.
pub async fn fetch_policy(
    kbs: &str,
    connection: &Connection,
    timeout: Duration,
) -> Result<PolicySummary, String> {
    OnlineClient::connect(kbs, connection, timeout)
        .await?
        .policy()
        .await
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
