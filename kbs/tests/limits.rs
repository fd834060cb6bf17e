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
    start_with_platform(dir, extra).0
}

/// The kbs, and a simulated platform under the AMD root it trusts.
fn start_with_platform(dir: &Path, extra: &[&str]) -> (KbsProcess, sev_sim::SimPlatform) {
    let roots = sev_sim::FakeAmdRoots::generate().unwrap();
    let platform = sev_sim::SimPlatform::new(&roots).unwrap();
    let ark = dir.join("ark.cert");
    std::fs::write(&ark, roots.ark_cert()).unwrap();
    let args: Vec<OsString> = extra.iter().map(OsString::from).collect();
    let kbs = KbsProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_kbs")),
        &dir.join("data"),
        &dir.join("admin.sock"),
        &ark,
        &args,
    )
    .unwrap();
    (kbs, platform)
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
            "--request-timeout",
            "1",
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

/// Opens `n` connections from `from` that never send anything.
fn silent_connections(addr: SocketAddr, from: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let rt = tokio::runtime::Handle::current();
    (0..n)
        .map(|_| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(from.parse().unwrap(), 0))
                .unwrap();
            tokio::task::block_in_place(|| rt.block_on(socket.connect(addr))).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_many_sources_make_room_at_the_total_cap() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = start(
        dir.path(),
        &[
            "--max-connections",
            "120",
            "--max-connections-per-source",
            "40",
            "--handshake-timeout",
            "30",
            "--idle-timeout",
            "60",
        ],
    );
    let addr: SocketAddr = kbs.addr.parse().unwrap();
    // Three sources fill the total cap with connections that say nothing,
    // well within their handshake deadline.
    let mut flood = Vec::new();
    for from in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        flood.extend(silent_connections(addr, from, 40));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A genuine client from a fourth source is served, again and again:
    // each time the silent connection that has waited the longest goes.
    for _ in 0..5 {
        assert!(serving_from(addr, "127.0.0.6").await);
    }
    // A silent connection went for the first genuine one (later ones may
    // find the place the one before them gave back).
    let mut closed = 0;
    for s in &mut flood {
        let mut b = [0u8; 64];
        loop {
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
                // The server's HTTP/2 preface may come first; keep reading.
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => {
                    closed += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    assert!(
        (1..=5).contains(&closed),
        "{closed} silent connections closed"
    );
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

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Opens an HTTP/2 connection from `from` and starts `streams` GetBundle
/// calls whose gRPC frames announce `announce` bytes and then send as much
/// as flow control lets through, never finishing. Returns what must stay
/// alive.
async fn unfinished_streams(
    addr: SocketAddr,
    from: std::net::IpAddr,
    streams: usize,
    announce: u32,
) -> Vec<Box<dyn std::any::Any + Send>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let Ok(tcp) = socket.connect(addr).await else {
        return Vec::new();
    };
    let Ok((client, conn)) = h2::client::handshake(tcp).await else {
        return Vec::new();
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(1), client.ready()).await
    else {
        return keep;
    };
    for _ in 0..streams {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/keybroker.KeyBrokerService/GetBundle"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let Ok((response, mut send)) = client.send_request(request, false) else {
            break;
        };
        // A gRPC frame header announcing `announce` bytes, then filler.
        let mut frame = vec![0u8];
        frame.extend_from_slice(&announce.to_be_bytes());
        // One byte short of the announced message: it never completes.
        let filler = usize::try_from(announce - 1).unwrap().min(256 * 1024);
        frame.extend(std::iter::repeat_n(b'A', filler));
        send.reserve_capacity(frame.len());
        let _ = send.send_data(bytes::Bytes::from(frame), false);
        keep.push(Box::new(send));
        keep.push(Box::new(response));
        // The server's stream cap holds the next one back: stop there.
        match tokio::time::timeout(Duration::from_millis(200), client.clone().ready()).await {
            Ok(Ok(c)) => client = c,
            _ => break,
        }
    }
    keep.push(Box::new(client));
    keep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_streams_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (kbs, platform) = start_with_platform(dir.path(), &["--max-connections-per-source", "32"]);
    let addr: SocketAddr = kbs.addr.parse().unwrap();
    // A launch digest the operator vouches for, so that a genuine launch can
    // go all the way to its secrets.
    let digest = [7u8; 32];
    let mut admin = kbs::admin_cli::connect_unix(&kbs.socket, Duration::from_secs(5))
        .await
        .unwrap();
    admin
        .replace_digests(kbs_proto::kbsadmin::ReplaceDigestsRequest {
            node: "node-1".into(),
            runtime_class: "kata-qemu-sev".into(),
            digests: vec![kbs_proto::kbsadmin::Digest {
                mode: "sev".into(),
                digest: digest.to_vec(),
                vcpus: 1,
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let before = rss_kib(kbs.pid());

    // 48 connections from 127.0.0.3 (the per-source cap is 32 here), each
    // with up to 64 unfinished streams (the per-connection cap is 4): half
    // announce 4 MiB (refused at once, over --max-message-bytes), half
    // announce just under the 128 KiB limit, which the kbs buffers as it
    // arrives.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..48u32 {
        let announce = if i % 2 == 0 { 4 << 20 } else { 127 * 1024 };
        flood.spawn(unfinished_streams(
            addr,
            "127.0.0.3".parse().unwrap(),
            64,
            announce,
        ));
    }
    let mut held = Vec::new();
    while let Some(h) = flood.join_next().await {
        held.push(h.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(kbs.pid());
    // A genuine launch from another address gets its secrets during the flood.
    let launch = sev_sim::shim::ShimLaunch::online(kbs.uri(), 0x1, digest);
    let outcome = sev_sim::shim::pre_attest(&platform, &launch).await.unwrap();
    assert!(!outcome.secret_table.is_empty());
    eprintln!(
        "kbs resident memory: {before} KiB before, {during} KiB during 48 connections x 64 unfinished streams"
    );
    // Each admitted connection can make the kbs buffer at most its streams'
    // messages (4 x 128 KiB): about 16 MiB for 32, whatever they announce.
    assert!(
        during < before + 48 * 1024,
        "{before} KiB before, {during} KiB during the flood"
    );
    drop(held);
}

#[test]
fn a_request_timeout_as_long_as_the_idle_timeout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kbs"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .args(["--idle-timeout", "20", "--request-timeout", "20"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--request-timeout (20 s) must be shorter than --idle-timeout (20 s)"),
        "{stderr}"
    );
}
