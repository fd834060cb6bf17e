//! The keybroker port under a flood, against the real `kbs` binary: idle
//! connections from one source are capped and closed on time while a client
//! from another source is served throughout; a message over the size limit
//! is refused; the limits are counted in the metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use sev_sim::kbs_process::KbsProcess;
use std::ffi::OsString;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn start(dir: &Path, extra: &[&str]) -> KbsProcess {
    let roots = sev_sim::FakeAmdRoots::generate().unwrap();
    let ark = dir.join("ark.cert");
    std::fs::write(&ark, roots.ark_cert()).unwrap();
    let args: Vec<OsString> = extra.iter().map(OsString::from).collect();
    KbsProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_kbs")),
        &dir.join("data"),
        &dir.join("admin.sock"),
        &ark,
        &args,
    )
    .unwrap()
}

/// A gRPC health check of the keybroker service from source address `from`.
async fn serving_from(addr: SocketAddr, from: &str) -> bool {
    let source: std::net::IpAddr = from.parse().unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(
            move |_: tonic::transport::Uri| async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let stream = socket.connect(addr).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            },
        ))
        .await;
    let Ok(channel) = channel else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "keybroker.KeyBrokerService".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            // The server's HTTP/2 preface may come first; keep reading.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_closed_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = start(
        dir.path(),
        &[
            "--max-connections-per-source",
            "50",
            "--handshake-timeout",
            "2",
            "--idle-timeout",
            "2",
        ],
    );
    let addr: SocketAddr = kbs.addr.parse().unwrap();

    // 300 connections from 127.0.0.1 that never send anything.
    let mut flood: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // A client from another source is served all the same.
    assert!(serving_from(addr, "127.0.0.2").await);

    // Beyond the first 50, each is closed at once.
    let started = Instant::now();
    let refused = flood
        .iter_mut()
        .skip(50)
        .map(|s| closed_within(s, Duration::from_millis(500)))
        .filter(|c| *c)
        .count();
    assert_eq!(refused, 250);
    // The 50 admitted ones are closed once the handshake deadline passes, and
    // not much later.
    let mut admitted: Vec<TcpStream> = flood.drain(..50).collect();
    let closed = admitted
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_secs(5)))
        .filter(|c| *c)
        .count();
    assert_eq!(closed, 50);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Their places are free again.
    assert!(serving_from(addr, "127.0.0.1").await);
    assert!(serving_from(addr, "127.0.0.2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_is_refused_before_it_is_buffered() {
    use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
    use kbs_proto::keybroker::BundleRequest;
    let dir = tempfile::tempdir().unwrap();
    let kbs = start(dir.path(), &["--max-message-bytes", "8192"]);
    let mut c = KeyBrokerServiceClient::connect(kbs.uri()).await.unwrap();
    let e = c
        .get_bundle(BundleRequest {
            certificate_chain: "A".repeat(16 * 1024),
            ..BundleRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("8192"), "{e:?}");
}
