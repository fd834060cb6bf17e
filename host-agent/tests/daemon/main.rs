//! The daemon end to end: real files, real inotify, a real `kbs` process on
//! loopback, and launches tried through the simulated PSP and shim with digests
//! computed by the `sev` crate, not by the agent.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod layouts;
mod provision;
mod rig;
mod snp;
mod tls;

use host_agent::agent::status::ClassState;
use rig::{Rig, CLASS};
use std::time::Duration;

/// The command line the agent derived for the pod without a CPU limit.
async fn cmdline_of(agent: &rig::Agent) -> String {
    let s = agent.status().await;
    let class = s.classes.get(CLASS).expect("class in status");
    class
        .launches
        .iter()
        .find(|l| l.pod_cpus == 0)
        .expect("launch for pod CPUs 0")
        .cmdline
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_registered_and_launches_follow_them() {
    let rig = Rig::new("");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));

    // Registered: one digest per pod CPU count (0 and 1 here).
    let first = rig.registered().await;
    assert_eq!(first.len(), 2, "{first:?}");
    let cmdline = cmdline_of(&agent).await;
    assert!(cmdline.contains("nr_cpus=1"), "{cmdline}");
    let old = rig.sev_digest(&rig.sample.initrd, &cmdline);
    assert!(
        first.contains(&hex::encode(old)),
        "the sev crate's digest is registered"
    );
    rig.launch(old).await.unwrap();

    // 1. Edit kernel_params, saved by rename.
    let text = rig.kata_config_text();
    let edited = text.replace(
        "agent.enable_signature_verification=false",
        "agent.enable_signature_verification=true",
    );
    assert_ne!(edited, text);
    rig.replace(&rig.sample.config, edited.as_bytes());
    let second = rig
        .wait_registered("the edited kernel_params", |now| now != first.as_slice())
        .await;
    let cmdline2 = cmdline_of(&agent).await;
    assert!(cmdline2.contains("agent.enable_signature_verification=true"));
    let new = rig.sev_digest(&rig.sample.initrd, &cmdline2);
    assert!(second.contains(&hex::encode(new)));
    assert!(
        !second.contains(&hex::encode(old)),
        "the old digest is gone"
    );
    rig.launch(new).await.unwrap();
    let refused = rig.launch(old).await.unwrap_err();
    assert!(
        refused.contains("PermissionDenied") || refused.contains("denied"),
        "{refused}"
    );

    // 2. Replace the initrd by rename.
    let mut initrd = std::fs::read(&rig.sample.initrd).unwrap();
    initrd[1000] ^= 0xff;
    rig.replace(&rig.sample.initrd, &initrd);
    let third = rig
        .wait_registered("the new initrd", |now| now != second.as_slice())
        .await;
    let with_new_initrd = rig.sev_digest(&rig.sample.initrd, &cmdline2);
    assert!(third.contains(&hex::encode(with_new_initrd)));
    assert!(!third.contains(&hex::encode(new)));
    rig.launch(with_new_initrd).await.unwrap();
    rig.launch(new).await.unwrap_err();

    // 3. Invalid TOML: the old set stays, the error shows, fixing recovers.
    let good = rig.kata_config_text();
    let broken = good.replace("default_vcpus = 1", "default_vcpus = = 1");
    rig.replace(&rig.sample.config, broken.as_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let error = loop {
        let s = agent.status().await;
        let c = &s.classes[CLASS];
        if let Some(e) = &c.config_error {
            assert_eq!(c.state, ClassState::Error);
            // The artefacts of the last good version stay watched.
            assert!(s.watched_files >= 4, "{s:?}");
            break e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no error in the status"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(error.contains("configuration-qemu-sev.toml"), "{error}");
    assert!(error.contains("line"), "{error}");
    assert_eq!(
        rig.registered().await,
        third,
        "the last good set stays registered"
    );
    rig.launch(with_new_initrd).await.unwrap();
    // Fixing the file (with another change) recovers.
    let fixed = good.replace("default_vcpus = 1", "default_vcpus = 2");
    rig.replace(&rig.sample.config, fixed.as_bytes());
    let fourth = rig
        .wait_registered("the fixed configuration", |now| now != third.as_slice())
        .await;
    let s = agent.status().await;
    assert_eq!(s.classes[CLASS].config_error, None);
    let cmdline3 = cmdline_of(&agent).await;
    assert!(cmdline3.contains("nr_cpus=2"), "{cmdline3}");
    assert!(fourth.contains(&hex::encode(rig.sev_digest(&rig.sample.initrd, &cmdline3))));

    // 4. The file disappears: stale, still registered, removed after the grace.
    std::fs::remove_file(&rig.sample.config).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = agent.status().await;
        if s.classes
            .get(CLASS)
            .is_some_and(|c| c.state == ClassState::Stale)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never marked stale");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.registered().await, fourth, "not removed at once");
    rig.wait_registered("removal after the grace period", <[String]>::is_empty)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_after_the_broker_comes_back_and_stops_on_sigterm() {
    let mut rig = Rig::new("");
    let mut agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let first = rig.registered().await;

    rig.stop_kbs();
    let text = rig.kata_config_text();
    rig.replace(
        &rig.sample.config,
        text.replace(
            "agent.config_file=/etc/agent-config.toml",
            "agent.config_file=/etc/agent-config.toml agent.log=debug",
        )
        .as_bytes(),
    );
    // The agent notices it cannot register.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = agent.status().await;
        if !s.kbs.reachable && s.classes[CLASS].state == ClassState::Pending {
            assert!(s.kbs.last_error.is_some());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw the broker down: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.start_kbs();
    let now = rig
        .wait_registered("catching up", |now| now != first.as_slice())
        .await;
    let cmdline = cmdline_of(&agent).await;
    assert!(cmdline.contains("agent.log=debug"));
    assert!(now.contains(&hex::encode(rig.sev_digest(&rig.sample.initrd, &cmdline))));

    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    agent.wait_notify("STOPPING=1", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_nothing_changed_keeps_the_registration() {
    let rig = Rig::new("");
    let mut agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let first = rig.registered().await;
    assert!(agent.terminate().success());
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    assert_eq!(rig.registered().await, first);
    let s = agent.status().await;
    assert!(s.ready);
    assert_eq!(s.classes[CLASS].state, ClassState::Registered);
}

/// A process whose command line reads like the QEMU Kata starts for an SEV
/// guest: `sh -c 'read -r line'` with `argv[0]` set to QEMU's path, blocked on
/// its stdin, its QEMU arguments unused positional parameters.
struct FakeQemu(std::process::Child);

impl FakeQemu {
    fn start(l: &host_agent::agent::status::LaunchView, append: &str) -> FakeQemu {
        use std::os::unix::process::CommandExt as _;
        let n = l.vcpus;
        let mut args = vec![
            "-machine".to_string(),
            "q35,accel=kvm,kernel_irqchip=split,confidential-guest-support=sev".into(),
            "-cpu".into(),
            l.cpu.clone(),
            "-object".into(),
            format!(
                "sev-guest,id=sev,cbitpos=51,reduced-phys-bits=1,policy={},kernel-hashes=on",
                l.policy
            ),
            "-drive".into(),
            format!(
                "if=pflash,format=raw,readonly=on,file={}",
                l.firmware.display()
            ),
            "-S".into(),
            "-kernel".into(),
            l.kernel.display().to_string(),
        ];
        if let Some(i) = &l.initrd {
            args.extend(["-initrd".to_string(), i.display().to_string()]);
        }
        args.extend([
            "-append".to_string(),
            append.to_string(),
            "-smp".into(),
            format!("{n},cores=1,threads=1,sockets={n},maxcpus={n}"),
        ]);
        let child = std::process::Command::new("sh")
            .arg0("/opt/confidential-containers/bin/qemu-system-x86_64")
            .arg("-c")
            .arg("read -r line")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let path = format!("/proc/{}/cmdline", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read(&path)
            .unwrap_or_default()
            .starts_with(b"/opt/confidential-containers/bin/qemu")
        {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(2));
        }
        FakeQemu(child)
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_guests_that_measure_differently_are_reported() {
    let rig = Rig::new("");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let s = agent.status().await;
    let launch = s.classes[CLASS]
        .launches
        .iter()
        .find(|l| l.pod_cpus == 0)
        .unwrap()
        .clone();
    let good = FakeQemu::start(&launch, &launch.cmdline);
    let bad = FakeQemu::start(&launch, &format!("{} debug", launch.cmdline));

    let s = agent.status().await;
    let find = |pid: u32| {
        s.drift
            .iter()
            .find(|d| d.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} not in {:?}", s.drift))
            .clone()
    };
    let g = find(good.0.id());
    assert!(!g.drifted, "{g:?}");
    assert_eq!(g.runtime_class.as_deref(), Some(CLASS));
    assert_eq!(g.digest.as_deref(), Some(launch.digest.as_str()));
    let b = find(bad.0.id());
    assert!(b.drifted, "{b:?}");
    assert_eq!(b.differing, ["command line"], "{b:?}");

    // Counted in the metrics, and logged once.
    let metrics = fetch_metrics(agent.addr).await;
    assert!(metrics.contains("host_agent_guests_drifted 1"), "{metrics}");
    assert!(
        metrics.contains("host_agent_drift_detected_total 1"),
        "{metrics}"
    );
    let log: Vec<String> = agent.log.try_iter().collect();
    let warned = log.iter().filter(|l| l.contains("drift:")).count();
    assert_eq!(warned, 1, "{log:?}");
}

async fn fetch_metrics(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await
}

/// A plain HTTP GET of `path`, returning the whole response.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[test]
fn a_refused_configuration_exits_64_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[launches]\nmodes = [\"tdx\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.toml") && err.contains("launches.modes"),
        "{err}"
    );

    std::fs::write(&config, "listen = [\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_loses_is_registered_again() {
    let mut rig = Rig::with_kbs("reconcile_seconds = 1");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let first = rig.registered().await;
    assert!(!first.is_empty());

    // An operator clears this node's digests: back within the reconcile period.
    rig.kbs_admin(&[
        "digests".as_ref(),
        "replace".as_ref(),
        "--node".as_ref(),
        rig::NODE.as_ref(),
        "--runtime-class".as_ref(),
        CLASS.as_ref(),
        "--clear".as_ref(),
    ]);
    assert!(rig.registered().await.is_empty());
    let again = rig
        .wait_registered("registered again after --clear", |now| !now.is_empty())
        .await;
    assert_eq!(again, first);

    // The broker comes back on an empty database (restored from an old
    // backup, say): registered again after the reconnect.
    rig.stop_kbs();
    std::fs::remove_dir_all(rig.data_dir()).unwrap();
    rig.start_kbs();
    let again = rig
        .wait_registered("registered again on an empty broker", |now| !now.is_empty())
        .await;
    assert_eq!(again, first);
    let s = agent.status().await;
    assert_eq!(s.classes[CLASS].state, ClassState::Registered, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_to_register_the_agent_is_ready_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::following(&dir.path().join("none/configuration-*.toml"), "");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let s = agent.status().await;
    assert!(s.ready, "{s:?}");
    assert!(s.classes.is_empty(), "{s:?}");
    assert!(
        s.activity
            .starts_with("nothing to register: no confidential Kata configuration"),
        "{s:?}"
    );
    let health = http_get(agent.addr, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
}
