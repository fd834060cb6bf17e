//! The agent and the broker's TCP admin listener over TLS: a CA and the
//! broker's certificate are made for the test (none is checked in), and the
//! agent registers only when it trusts that CA.

use crate::rig::Rig;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKEN: &str = "host-agent-tls-test-token-0123456789abcdefghij";

/// A CA, a certificate it issued for `localhost` and 127.0.0.1 with its key,
/// and a second CA that issued nothing, as PEM files.
struct TlsFiles {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn tls_files(dir: &Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    };
    let issuer = ca("broker test CA");
    let other = ca("broker test CA that signed nothing");
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "kbs admin");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        cert: dir.join("admin-cert.pem"),
        key: dir.join("admin-key.pem"),
    };
    std::fs::write(&files.ca, issuer.pem()).unwrap();
    std::fs::write(&files.other_ca, other.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_registers_over_the_tls_admin_listener_of_a_ca_it_trusts() {
    let mut rig = Rig::new("");
    let dir = rig.dir.path().to_path_buf();
    let tls = tls_files(&dir);
    let token = dir.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args: Vec<OsString> = vec![
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--admin-token-file".into(),
        token.clone().into(),
        "--admin-tls-cert".into(),
        tls.cert.clone().into(),
        "--admin-tls-key".into(),
        tls.key.clone().into(),
    ];
    rig.restart_kbs_with(args);
    let admin = rig.kbs.as_ref().unwrap().admin_addr.clone().unwrap();
    let port = admin.rsplit(':').next().unwrap();
    let endpoint = format!("https://localhost:{port}");

    // A CA that did not issue the broker's certificate: nothing is registered,
    // and the status says why.
    rig.use_tcp_admin(&endpoint, &token, Some(&tls.other_ca));
    let mut agent = rig.start_agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = agent.status().await;
        assert_eq!(s.kbs.target, endpoint);
        if let Some(e) = &s.kbs.last_error {
            assert!(!s.kbs.reachable);
            assert!(e.contains(&endpoint) && e.contains("certificate"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no TLS failure seen: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rig.registered().await.is_empty());
    assert!(agent.terminate().success());

    // The CA that did: registered over TLS.
    rig.use_tcp_admin(&endpoint, &token, Some(&tls.ca));
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let s = agent.status().await;
    assert_eq!(s.kbs.target, endpoint);
    assert!(s.kbs.reachable, "{s:?}");
    assert_eq!(rig.registered().await.len(), 2);
}
