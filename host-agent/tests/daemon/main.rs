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

mod rig;

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
