//! The agent and the broker's TCP admin listener over TLS: a CA and the
//! broker's certificate are made for the test (none is checked in), and the
//! agent registers only when it trusts that CA.

use crate::rig::Rig;
use sev_sim::tls_files::TlsFiles;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "host-agent-tls-test-token-0123456789abcdefghij";

/// Fresh TLS material for one test, in `dir`.
fn tls_files(dir: &Path) -> TlsFiles {
    TlsFiles::write(dir).unwrap()
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
