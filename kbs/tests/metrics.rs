//! The Prometheus endpoint of the real `kbs` binary: scraped over HTTP after
//! keybroker and admin calls that succeed and fail for known reasons.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use base64::Engine as _;
use kbs_proto::kbsadmin::admin_client::AdminClient;
use kbs_proto::kbsadmin::{ListInventoryRequest, SetSecretRequest};
use kbs_proto::keybroker::key_broker_service_client::KeyBrokerServiceClient;
use kbs_proto::keybroker::{BundleRequest, OnlineSecretRequest, SecretRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tonic::Code;

const TOKEN: &str = "kbs-metrics-test-token-0123456789abcdefghijklmn";

struct Kbs {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kbs {
    /// Starts the kbs and waits for a line containing `until`.
    fn start(dir: &Path, args: &[&str], until: &str) -> Kbs {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kbs"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--admin-socket")
            .arg(dir.join("admin.sock"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let done = line.contains(until);
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("kbs did not start:\n{}", lines.join("\n"));
                }
            }
        }
        std::thread::spawn(move || for _ in rx {});
        Kbs { child, lines }
    }

    fn addr(&self, prefix: &str) -> Option<SocketAddr> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|a| a.trim().parse().unwrap())
    }
}

/// GET `path` over plain HTTP/1.1: (status, headers, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The value of the sample `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_count_outcomes_reasons_latency_and_admin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let kbs = Kbs::start(
        dir.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
        "kbs: metrics on ",
    );
    let metrics = kbs.addr("kbs: metrics on ").unwrap();
    let mut kb = KeyBrokerServiceClient::connect(format!(
        "http://{}",
        kbs.addr("kbs: listening on ").unwrap()
    ))
    .await
    .unwrap();

    // Not base64; base64 but not a chain; a policy that allows debugging.
    for (chain, policy, code) in [
        ("!!not base64!!", 1, Code::InvalidArgument),
        ("Z2FyYmFnZQ==", 1, Code::InvalidArgument),
        ("Z2FyYmFnZQ==", 0, Code::PermissionDenied),
    ] {
        let e = kb
            .get_bundle(BundleRequest {
                certificate_chain: chain.into(),
                policy,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
    }
    let e = kb
        .get_secret(SecretRequest {
            launch_measurement: b64(&[0; 48]),
            launch_id: "0b0e7f53-6d3a-4a59-9d2b-0c7c3c2d2b11".into(),
            policy: 1,
            fw_digest: b64(&[0; 32]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = kb
        .get_online_secret(OnlineSecretRequest {
            client_id: "0b0e7f53-6d3a-4a59-9d2b-0c7c3c2d2b12".into(),
            secret_requests: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());

    // Admin: one call through the socket, one refused on TCP.
    let mut admin =
        kbs::admin_cli::connect_unix(&dir.path().join("admin.sock"), Duration::from_secs(10))
            .await
            .unwrap();
    admin
        .set_secret(SetSecretRequest {
            id: "k".into(),
            payload: b"v".to_vec(),
        })
        .await
        .unwrap();
    let mut anonymous = AdminClient::connect(format!(
        "http://{}",
        kbs.addr("kbs: admin listening on ").unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(
        anonymous
            .list_inventory(ListInventoryRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let (status, head, text) = get(metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let expect = [
        (
            r#"kbs_requests_total{rpc="GetBundle",code="InvalidArgument"}"#,
            2.0,
        ),
        (
            r#"kbs_requests_total{rpc="GetBundle",code="PermissionDenied"}"#,
            1.0,
        ),
        (
            r#"kbs_requests_total{rpc="GetSecret",code="NotFound"}"#,
            1.0,
        ),
        (
            r#"kbs_requests_total{rpc="GetOnlineSecret",code="NotFound"}"#,
            1.0,
        ),
        (
            r#"kbs_refusals_total{rpc="GetBundle",reason="invalid_argument"}"#,
            2.0,
        ),
        (
            r#"kbs_refusals_total{rpc="GetBundle",reason="debug_policy"}"#,
            1.0,
        ),
        (
            r#"kbs_refusals_total{rpc="GetSecret",reason="unknown_launch"}"#,
            1.0,
        ),
        (
            r#"kbs_refusals_total{rpc="GetOnlineSecret",reason="unknown_client"}"#,
            1.0,
        ),
        (
            r#"kbs_request_duration_seconds_count{rpc="GetBundle"}"#,
            3.0,
        ),
        (
            r#"kbs_request_duration_seconds_bucket{rpc="GetBundle",le="+Inf"}"#,
            3.0,
        ),
        (
            r#"kbs_admin_requests_total{rpc="SetSecret",code="Ok"}"#,
            1.0,
        ),
        (r#"kbs_admin_auth_failures_total{listener="tcp"}"#, 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    assert!(text.contains("# TYPE kbs_request_duration_seconds histogram"));
    for le in ["0.0005", "0.001", "0.01", "0.1", "1"] {
        let series = format!(r#"kbs_request_duration_seconds_bucket{{rpc="GetSecret",le="{le}"}}"#);
        assert!(sample(&text, &series).is_some(), "{series} in:\n{text}");
    }
    // The refused TCP call never reached the service.
    assert_eq!(
        sample(
            &text,
            r#"kbs_admin_requests_total{rpc="ListInventory",code="Unauthenticated"}"#
        ),
        None
    );

    assert_eq!(get(metrics, "/other").0, 404);
}

#[test]
fn metrics_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &["--metrics-listen", "none"], "metrics are off");
    assert!(kbs.addr("kbs: metrics on ").is_none());
    assert!(kbs.addr("kbs: listening on ").is_some());
}

#[tokio::test]
async fn grpc_health_is_served_on_the_keybroker_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempfile::tempdir().unwrap();
    let kbs = Kbs::start(dir.path(), &["--metrics-listen", "none"], "metrics are off");
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        kbs.addr("kbs: listening on ").unwrap()
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "keybroker.KeyBrokerService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
}
