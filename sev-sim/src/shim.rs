//! The Kata shim's pre-attestation (CoCo 0.7/0.8, `guest_pre_attestation`),
//! as a gRPC client of the KBS speaking the simple-kbs `keybroker` protocol,
//! with the simulated platform playing QEMU and the PSP.
//!
//! [`pre_attest`] runs the whole flow. The steps are also separate functions
//! over plain values ([`get_bundle`], [`SimPlatform::launch_start`],
//! [`SimLaunch::measure`](crate::SimLaunch::measure), [`secret_request`], [`get_secret`],
//! [`SimLaunch::inject_secret`](crate::SimLaunch::inject_secret)), so that a test can replay a launch id, send
//! a wrong measurement or policy, or restart the KBS between GetBundle and
//! GetSecret. Like the shim, every call opens a new gRPC connection.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::{BundleRequest, RequestDetails, SecretRequest};
use tonic::transport::{Channel, Endpoint};

use crate::error::SimError;
use crate::platform::SimPlatform;

/// GUID under which the shim asks for the offline keyset bundle.
pub const OFFLINE_GUID: &str = "e6f5a162-d67f-4750-a67c-5d065f2a9910";
/// GUID under which the shim asks for the online connection secret.
pub const ONLINE_GUID: &str = "1ee27366-0c87-43a6-af48-28543eaf7cb0";
/// The keyset Kata asks for when its configuration names none.
pub const DEFAULT_KEYSET: &str = "KEYSET-1";
/// The launch description the shim sends.
pub const SHIM_DESCRIPTION: &str = "shim launch";

/// How long to wait for the KBS to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why pre-attestation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShimError {
    /// No connection to the KBS (bad URI, nothing listening, timeout).
    #[error("cannot connect to the KBS at {uri}: {source}")]
    Connect {
        /// The URI dialled.
        uri: String,
        /// Tonic's transport error.
        #[source]
        source: tonic::transport::Error,
    },

    /// The KBS answered a call with an error status.
    #[error("the KBS refused {call}: {code:?}: {message}", code = .status.code(), message = .status.message())]
    Refused {
        /// `GetBundle` or `GetSecret`.
        call: &'static str,
        /// The status, with its code and message.
        status: Box<tonic::Status>,
    },

    /// The KBS answered with a field that is not base64.
    #[error("the KBS's {call} answer has a {field} that is not base64: {source}")]
    Base64 {
        /// `GetBundle` or `GetSecret`.
        call: &'static str,
        /// The proto field.
        field: &'static str,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },

    /// The simulated PSP refused (LAUNCH_START or LAUNCH_SECRET).
    #[error(transparent)]
    Platform(#[from] SimError),
}

impl ShimError {
    /// The KBS's status, if the KBS refused a call.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ShimError::Refused { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The KBS's status code, if the KBS refused a call.
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }
}

/// One confidential guest launch as the shim sees it: where the KBS is, the
/// policy and launch digest QEMU will produce, and which secrets to ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct ShimLaunch {
    /// The KBS, e.g. `http://127.0.0.1:44444` (`host:port` gets `http://`).
    pub kbs_uri: String,
    /// The SEV guest policy (`sev_guest_policy`).
    pub policy: u32,
    /// The launch digest the guest will measure to.
    pub launch_digest: [u8; 32],
    /// The secrets to request.
    pub requests: Vec<RequestDetails>,
    /// The `LaunchDescription` to send.
    pub description: String,
}

impl ShimLaunch {
    /// Kata's offline request: the bundle of `keyset` under
    /// e6f5a162-d67f-4750-a67c-5d065f2a9910, format "JSON".
    pub fn offline(
        kbs_uri: impl Into<String>,
        policy: u32,
        launch_digest: [u8; 32],
        keyset: &str,
    ) -> ShimLaunch {
        ShimLaunch {
            kbs_uri: kbs_uri.into(),
            policy,
            launch_digest,
            requests: vec![RequestDetails {
                guid: OFFLINE_GUID.to_owned(),
                format: "JSON".to_owned(),
                secret_type: "bundle".to_owned(),
                id: keyset.to_owned(),
            }],
            description: SHIM_DESCRIPTION.to_owned(),
        }
    }

    /// Kata's online request: a connection secret under
    /// 1ee27366-0c87-43a6-af48-28543eaf7cb0, format "JSON", with the id of
    /// the configured keyset (`guest_pre_attestation_keyset`, KEYSET-1 by
    /// default), which the shim sends in both modes.
    pub fn online(kbs_uri: impl Into<String>, policy: u32, launch_digest: [u8; 32]) -> ShimLaunch {
        ShimLaunch {
            kbs_uri: kbs_uri.into(),
            policy,
            launch_digest,
            requests: vec![RequestDetails {
                guid: ONLINE_GUID.to_owned(),
                format: "JSON".to_owned(),
                secret_type: "connection".to_owned(),
                id: DEFAULT_KEYSET.to_owned(),
            }],
            description: SHIM_DESCRIPTION.to_owned(),
        }
    }
}

/// What GetBundle returned, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The launch id (plain text).
    pub launch_id: String,
    /// The guest owner's Diffie-Hellman certificate.
    pub godh: Vec<u8>,
    /// The 128-byte launch session blob.
    pub blob: Vec<u8>,
}

/// What GetSecret returned, decoded: the LAUNCH_SECRET packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPacket {
    /// flags u32, `iv[16]`, `mac[32]`.
    pub header: Vec<u8>,
    /// The encrypted secret table.
    pub data: Vec<u8>,
}

/// A successful pre-attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimOutcome {
    /// The launch id the KBS assigned.
    pub launch_id: String,
    /// The plaintext secret table the PSP injected into the guest.
    pub secret_table: Vec<u8>,
}

/// Runs the shim's whole pre-attestation against the KBS: GetBundle with the
/// platform's chain and the policy, LAUNCH_START, LAUNCH_MEASURE over the
/// launch digest, GetSecret, LAUNCH_SECRET. Returns the injected table.
pub async fn pre_attest(
    platform: &SimPlatform,
    launch: &ShimLaunch,
) -> Result<ShimOutcome, ShimError> {
    let bundle = get_bundle(&launch.kbs_uri, &platform.cert_chain(), launch.policy).await?;
    let mut psp = platform.launch_start(&bundle.godh, &bundle.blob, launch.policy)?;
    let measurement = psp.measure(&launch.launch_digest);
    let request = secret_request(platform, launch, &bundle.launch_id, &measurement);
    let packet = get_secret(&launch.kbs_uri, request).await?;
    let secret_table = psp.inject_secret(&packet.header, &packet.data)?;
    Ok(ShimOutcome {
        launch_id: bundle.launch_id,
        secret_table,
    })
}

/// GetBundle over a new connection: sends the chain (base64) and the policy,
/// returns the decoded GODH, blob and launch id.
pub async fn get_bundle(
    kbs_uri: &str,
    cert_chain: &[u8],
    policy: u32,
) -> Result<Bundle, ShimError> {
    const CALL: &str = "GetBundle";
    let mut client = connect(kbs_uri).await?;
    let response = client
        .get_bundle(BundleRequest {
            certificate_chain: BASE64.encode(cert_chain),
            policy,
        })
        .await
        .map_err(|status| ShimError::Refused {
            call: CALL,
            status: Box::new(status),
        })?
        .into_inner();
    Ok(Bundle {
        launch_id: response.launch_id,
        godh: decode(
            CALL,
            "GuestOwnerPublicKey",
            &response.guest_owner_public_key,
        )?,
        blob: decode(CALL, "LaunchBlob", &response.launch_blob)?,
    })
}

/// The GetSecret request the shim sends after LAUNCH_MEASURE: the
/// measurement and launch digest base64, the platform's firmware version,
/// the launch's policy, description and secret requests. A plain value:
/// tests may alter any field before [`get_secret`].
pub fn secret_request(
    platform: &SimPlatform,
    launch: &ShimLaunch,
    launch_id: &str,
    measurement: &[u8; 48],
) -> SecretRequest {
    SecretRequest {
        launch_measurement: BASE64.encode(measurement),
        launch_id: launch_id.to_owned(),
        policy: launch.policy,
        api_major: u32::from(platform.api_major()),
        api_minor: u32::from(platform.api_minor()),
        build_id: u32::from(platform.build()),
        fw_digest: BASE64.encode(launch.launch_digest),
        launch_description: launch.description.clone(),
        secret_requests: launch.requests.clone(),
    }
}

/// GetSecret over a new connection; returns the decoded secret packet.
pub async fn get_secret(kbs_uri: &str, request: SecretRequest) -> Result<SecretPacket, ShimError> {
    const CALL: &str = "GetSecret";
    let mut client = connect(kbs_uri).await?;
    let response = client
        .get_secret(request)
        .await
        .map_err(|status| ShimError::Refused {
            call: CALL,
            status: Box::new(status),
        })?
        .into_inner();
    Ok(SecretPacket {
        header: decode(CALL, "LaunchSecretHeader", &response.launch_secret_header)?,
        data: decode(CALL, "LaunchSecretData", &response.launch_secret_data)?,
    })
}

fn decode(call: &'static str, field: &'static str, text: &str) -> Result<Vec<u8>, ShimError> {
    BASE64.decode(text).map_err(|source| ShimError::Base64 {
        call,
        field,
        source,
    })
}

/// `host:port` as Kata configures it, or a full URI.
fn endpoint_uri(kbs_uri: &str) -> String {
    if kbs_uri.contains("://") {
        kbs_uri.to_owned()
    } else {
        format!("http://{kbs_uri}")
    }
}

/// A fresh connection, as the shim opens one per call.
async fn connect(kbs_uri: &str) -> Result<KeyBrokerServiceClient<Channel>, ShimError> {
    let uri = endpoint_uri(kbs_uri);
    let connect_error = |source| ShimError::Connect {
        uri: uri.clone(),
        source,
    };
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(connect_error)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    let channel = endpoint.connect().await.map_err(connect_error)?;
    Ok(KeyBrokerServiceClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_what_kata_sends() {
        let off = ShimLaunch::offline("127.0.0.1:44444", 3, [7; 32], DEFAULT_KEYSET);
        assert_eq!(off.requests.len(), 1);
        assert_eq!(off.requests[0].guid, OFFLINE_GUID);
        assert_eq!(off.requests[0].format, "JSON");
        assert_eq!(off.requests[0].secret_type, "bundle");
        assert_eq!(off.requests[0].id, "KEYSET-1");
        assert_eq!(off.description, "shim launch");
        let on = ShimLaunch::online("http://127.0.0.1:1", 1, [0; 32]);
        assert_eq!(on.requests[0].guid, ONLINE_GUID);
        assert_eq!(on.requests[0].secret_type, "connection");
        assert_eq!(on.requests[0].id, "KEYSET-1");
    }

    #[test]
    fn kata_style_uris_get_a_scheme() {
        assert_eq!(endpoint_uri("10.0.0.1:44444"), "http://10.0.0.1:44444");
        assert_eq!(endpoint_uri("http://127.0.0.1:1"), "http://127.0.0.1:1");
    }

    #[test]
    fn the_flow_can_run_on_spawned_tasks() {
        fn assert_send<T: Send>(_: &T) {}
        let roots = crate::FakeAmdRoots::generate_with(crate::RootKeySize::Rsa2048).unwrap();
        let platform = SimPlatform::new(&roots).unwrap();
        let launch = ShimLaunch::online("127.0.0.1:1", 1, [0; 32]);
        assert_send(&pre_attest(&platform, &launch));
        assert_send(&get_bundle("127.0.0.1:1", b"", 1));
        assert_send(&get_secret("127.0.0.1:1", SecretRequest::default()));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = get_bundle(&format!("127.0.0.1:{port}"), b"chain", 1)
            .await
            .unwrap_err();
        assert!(matches!(err, ShimError::Connect { .. }), "{err}");
        assert!(err.code().is_none());
        let err = get_bundle("http://[not a uri", b"", 1).await.unwrap_err();
        assert!(matches!(err, ShimError::Connect { .. }), "{err}");
    }
}
