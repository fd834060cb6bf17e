//! The shim's pre-attestation against a small in-test key broker built on the
//! `sev` crate's guest-owner session (not our KBS: that one has its own e2e
//! tests). Shows that each step can be driven and tampered with separately.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use kbs_proto::keybroker::key_broker_service_server::{KeyBrokerService, KeyBrokerServiceServer};
use kbs_proto::keybroker::{
    BundleRequest, BundleResponse, OnlineSecretRequest, OnlineSecretResponse, SecretRequest,
    SecretResponse,
};
use sev::certs::sev::{Chain, Verifiable};
use sev::firmware::host::{Build, Version};
use sev::launch::sev::{HeaderFlags, Measurement, Policy};
use sev::parser::{Decoder, Encoder};
use sev::session::{Initialized, Session};
use sev_sim::efi_secret::{build_table, parse_table, write_dir};
use sev_sim::shim::{
    get_bundle, get_secret, pre_attest, secret_request, ShimError, ShimLaunch, DEFAULT_KEYSET,
    OFFLINE_GUID, ONLINE_GUID,
};
use sev_sim::{FakeAmdRoots, RootKeySize, SimError, SimPlatform};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

/// A launch between GetBundle and GetSecret.
struct Pending {
    session: Session<Initialized>,
    policy: u32,
}

/// A minimal simple-kbs: pins one ARK, keeps sessions in memory, accepts
/// one launch digest.
struct TestKbs {
    ark: Vec<u8>,
    digest: [u8; 32],
    next: AtomicU64,
    pending: Mutex<HashMap<String, Pending>>,
}

impl TestKbs {
    fn new(roots: &FakeAmdRoots, digest: [u8; 32]) -> TestKbs {
        TestKbs {
            ark: roots.ark_cert(),
            digest,
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, Status> {
    BASE64
        .decode(text)
        .map_err(|_| Status::invalid_argument(format!("{field} is not base64")))
}

#[tonic::async_trait]
impl KeyBrokerService for TestKbs {
    async fn get_bundle(
        &self,
        request: Request<BundleRequest>,
    ) -> Result<Response<BundleResponse>, Status> {
        let request = request.into_inner();
        let bytes = b64("CertificateChain", &request.certificate_chain)?;
        let chain = Chain::decode(&mut &bytes[..], ())
            .map_err(|_| Status::invalid_argument("malformed chain"))?;
        let mut ark = Vec::new();
        chain.ca.ark.encode(&mut ark, ()).unwrap();
        if ark != self.ark {
            return Err(Status::permission_denied(
                "chain is not under the pinned ARK",
            ));
        }
        (&chain)
            .verify()
            .map_err(|_| Status::permission_denied("chain does not verify"))?;
        let session = Session::try_from(Policy::from(request.policy)).unwrap();
        let start = session
            .start(chain)
            .map_err(|_| Status::internal("session"))?;
        let mut godh = Vec::new();
        start.cert.encode(&mut godh, ()).unwrap();
        let s = start.session;
        let blob = [
            &s.nonce[..],
            &s.wrap_tk[..],
            &s.wrap_iv[..],
            &s.wrap_mac[..],
            &s.policy_mac[..],
        ]
        .concat();
        let id = format!("launch-{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.pending.lock().unwrap().insert(
            id.clone(),
            Pending {
                session,
                policy: request.policy,
            },
        );
        Ok(Response::new(BundleResponse {
            guest_owner_public_key: BASE64.encode(godh),
            launch_blob: BASE64.encode(blob),
            launch_id: id,
        }))
    }

    async fn get_secret(
        &self,
        request: Request<SecretRequest>,
    ) -> Result<Response<SecretResponse>, Status> {
        let request = request.into_inner();
        let pending = self
            .pending
            .lock()
            .unwrap()
            .remove(&request.launch_id)
            .ok_or_else(|| Status::not_found("unknown launch id"))?;
        if request.policy != pending.policy {
            return Err(Status::permission_denied(
                "policy differs from the bundle's",
            ));
        }
        let m = b64("LaunchMeasurement", &request.launch_measurement)?;
        if m.len() != 48 {
            return Err(Status::invalid_argument("measurement is not 48 bytes"));
        }
        let msr = Measurement {
            measure: m[..32].try_into().unwrap(),
            mnonce: m[32..].try_into().unwrap(),
        };
        let build = Build {
            version: Version {
                major: request.api_major as u8,
                minor: request.api_minor as u8,
            },
            build: request.build_id as u8,
        };
        let verified = pending
            .session
            .verify(&self.digest, build, msr)
            .map_err(|_| Status::permission_denied("measurement does not match"))?;
        let payloads: Vec<(String, Vec<u8>)> = request
            .secret_requests
            .iter()
            .map(|r| {
                (
                    r.guid.clone(),
                    format!("{}:{}", r.secret_type, r.id).into_bytes(),
                )
            })
            .collect();
        let entries: Vec<(&str, &[u8])> = payloads
            .iter()
            .map(|(g, p)| (g.as_str(), p.as_slice()))
            .collect();
        let table = build_table(&entries).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let secret = verified
            .secret(HeaderFlags::empty(), &table)
            .map_err(|_| Status::internal("secret"))?;
        let h = secret.header;
        let header = [&h.flags.bits().to_le_bytes()[..], &h.iv[..], &h.mac[..]].concat();
        Ok(Response::new(SecretResponse {
            launch_secret_header: BASE64.encode(header),
            launch_secret_data: BASE64.encode(&secret.ciphertext),
        }))
    }

    async fn get_online_secret(
        &self,
        _request: Request<OnlineSecretRequest>,
    ) -> Result<Response<OnlineSecretResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// A running test KBS.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn serve(kbs: Arc<TestKbs>, addr: &str) -> Running {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(KeyBrokerServiceServer::from_arc(kbs))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    Running { addr, stop, task }
}

const DIGEST: [u8; 32] = [0x11; 32];
const POLICY: u32 = 0x3;

fn setup() -> (FakeAmdRoots, SimPlatform) {
    let roots = FakeAmdRoots::generate_with(RootKeySize::Rsa2048).unwrap();
    let platform = SimPlatform::new(&roots).unwrap();
    (roots, platform)
}

#[tokio::test]
async fn offline_pre_attestation_delivers_the_keyset_bundle() {
    let (roots, platform) = setup();
    let kbs = serve(Arc::new(TestKbs::new(&roots, DIGEST)), "127.0.0.1:0").await;

    let launch = ShimLaunch::offline(kbs.uri(), POLICY, DIGEST, DEFAULT_KEYSET);
    let outcome = pre_attest(&platform, &launch).await.unwrap();
    assert_eq!(outcome.launch_id, "launch-1");
    assert_eq!(outcome.secret_table.len() % 16, 0);
    assert_eq!(
        parse_table(&outcome.secret_table).unwrap(),
        vec![(OFFLINE_GUID.to_owned(), b"bundle:KEYSET-1".to_vec())]
    );

    let dir = tempfile::tempdir().unwrap();
    let coco = dir.path().join("secrets/coco");
    write_dir(&outcome.secret_table, &coco).unwrap();
    assert_eq!(
        std::fs::read(coco.join(OFFLINE_GUID)).unwrap(),
        b"bundle:KEYSET-1"
    );

    // Kata's `host:port` form works too.
    let online = ShimLaunch::online(kbs.addr.to_string(), POLICY, DIGEST);
    let outcome = pre_attest(&platform, &online).await.unwrap();
    assert_eq!(
        parse_table(&outcome.secret_table).unwrap(),
        vec![(ONLINE_GUID.to_owned(), b"connection:KEYSET-1".to_vec())]
    );
    kbs.stop().await;
}

#[tokio::test]
async fn a_replayed_launch_id_is_not_found() {
    let (roots, platform) = setup();
    let kbs = serve(Arc::new(TestKbs::new(&roots, DIGEST)), "127.0.0.1:0").await;
    let launch = ShimLaunch::offline(kbs.uri(), POLICY, DIGEST, DEFAULT_KEYSET);

    let bundle = get_bundle(&launch.kbs_uri, &platform.cert_chain(), POLICY)
        .await
        .unwrap();
    let mut psp = platform
        .launch_start(&bundle.godh, &bundle.blob, POLICY)
        .unwrap();
    let measurement = psp.measure(&DIGEST);
    let request = secret_request(&platform, &launch, &bundle.launch_id, &measurement);
    let packet = get_secret(&launch.kbs_uri, request.clone()).await.unwrap();
    psp.inject_secret(&packet.header, &packet.data).unwrap();

    let err = get_secret(&launch.kbs_uri, request).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert_eq!(err.status().unwrap().message(), "unknown launch id");
    kbs.stop().await;
}

#[tokio::test]
async fn a_wrong_measurement_or_policy_is_denied() {
    let (roots, platform) = setup();
    let kbs = serve(Arc::new(TestKbs::new(&roots, DIGEST)), "127.0.0.1:0").await;

    // The guest really measured to another digest.
    let launch = ShimLaunch::offline(kbs.uri(), POLICY, [0x22; 32], DEFAULT_KEYSET);
    let err = pre_attest(&platform, &launch).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // A flipped bit in the reported measurement.
    let launch = ShimLaunch::offline(kbs.uri(), POLICY, DIGEST, DEFAULT_KEYSET);
    let bundle = get_bundle(&launch.kbs_uri, &platform.cert_chain(), POLICY)
        .await
        .unwrap();
    let mut psp = platform
        .launch_start(&bundle.godh, &bundle.blob, POLICY)
        .unwrap();
    let mut measurement = psp.measure(&DIGEST);
    measurement[0] ^= 1;
    let request = secret_request(&platform, &launch, &bundle.launch_id, &measurement);
    let err = get_secret(&launch.kbs_uri, request).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // Another policy at GetSecret than at GetBundle.
    let bundle = get_bundle(&launch.kbs_uri, &platform.cert_chain(), POLICY)
        .await
        .unwrap();
    let mut psp = platform
        .launch_start(&bundle.godh, &bundle.blob, POLICY)
        .unwrap();
    let measurement = psp.measure(&DIGEST);
    let mut request = secret_request(&platform, &launch, &bundle.launch_id, &measurement);
    request.policy = 0x1;
    let err = get_secret(&launch.kbs_uri, request).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("policy"), "{err}");

    // The PSP itself refuses to launch under another policy than the session's.
    let bundle = get_bundle(&launch.kbs_uri, &platform.cert_chain(), POLICY)
        .await
        .unwrap();
    assert!(matches!(
        platform.launch_start(&bundle.godh, &bundle.blob, 0x1),
        Err(SimError::PolicyMac { policy: 1 })
    ));
    kbs.stop().await;
}

#[tokio::test]
async fn a_kbs_restart_between_bundle_and_secret_is_visible() {
    let (roots, platform) = setup();
    let first = serve(Arc::new(TestKbs::new(&roots, DIGEST)), "127.0.0.1:0").await;
    let addr = first.addr;
    let launch = ShimLaunch::offline(first.uri(), POLICY, DIGEST, DEFAULT_KEYSET);

    let bundle = get_bundle(&launch.kbs_uri, &platform.cert_chain(), POLICY)
        .await
        .unwrap();
    let mut psp = platform
        .launch_start(&bundle.godh, &bundle.blob, POLICY)
        .unwrap();
    let measurement = psp.measure(&DIGEST);
    first.stop().await;

    let err = get_secret(
        &launch.kbs_uri,
        secret_request(&platform, &launch, &bundle.launch_id, &measurement),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ShimError::Connect { .. }), "{err}");

    // This test KBS keeps sessions in memory: after a restart on the same
    // port the launch is gone (a durable KBS would answer here).
    let second = serve(Arc::new(TestKbs::new(&roots, DIGEST)), &addr.to_string()).await;
    let err = get_secret(
        &launch.kbs_uri,
        secret_request(&platform, &launch, &bundle.launch_id, &measurement),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    second.stop().await;
}

#[tokio::test]
async fn a_platform_under_other_roots_is_refused() {
    let (roots, _) = setup();
    let kbs = serve(Arc::new(TestKbs::new(&roots, DIGEST)), "127.0.0.1:0").await;
    let (_, impostor) = setup();
    let launch = ShimLaunch::offline(kbs.uri(), POLICY, DIGEST, DEFAULT_KEYSET);
    let err = pre_attest(&impostor, &launch).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    kbs.stop().await;
}
