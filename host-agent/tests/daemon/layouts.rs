//! The daemon on the layouts real nodes have: symlinked install trees swapped
//! with `ln -sfn`, chains of links, directories renamed into place, special
//! and huge files, files caught half-written, unreadable directories, and
//! starts from a broken configuration. Each test asserts what the broker holds
//! afterwards (digests by the `sev` crate, from the command line the status
//! shows) and what the status says.

use super::cmdline_of;
use crate::rig::{AgentStart, Rig, CLASS};
use host_agent::agent::status::{AgentStatus, ClassState};
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A configuration like the sample's, naming `kernel` and `initrd`, with
/// `variant=N` in its kernel parameters (so in the digest).
fn config_text(rig: &Rig, kernel: &Path, initrd: &Path, variant: u32) -> String {
    sample_artefacts::sample_config(&rig.sample.firmware, kernel, initrd).replace(
        "agent.enable_signature_verification=false",
        &format!("agent.enable_signature_verification=false variant={variant}"),
    )
}

/// `ln -sfn target link`: a new link renamed over the old one.
fn swap_link(target: &str, link: &Path) {
    let tmp = link.with_extension("swap-tmp");
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// A copy of the sample kernel with one byte changed: another digest.
fn kernel_variant(rig: &Rig, at: &Path, byte: u8) {
    let mut k = std::fs::read(&rig.sample.kernel).unwrap();
    k[4096] ^= byte;
    std::fs::write(at, k).unwrap();
}

/// Waits until the broker holds the digest of a launch of `kernel` and
/// `initrd` with the command line the status shows, which must satisfy
/// `cmdline_ok`; returns what the broker holds.
async fn wait_digest_of(
    rig: &Rig,
    agent: &crate::rig::Agent,
    kernel: &Path,
    initrd: &Path,
    what: &str,
    cmdline_ok: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = agent.status().await;
        if s.classes.get(CLASS).is_some_and(|c| !c.launches.is_empty()) {
            let cmdline = cmdline_of(agent).await;
            if cmdline_ok(&cmdline) {
                let want = hex::encode(
                    sev_sim::launch_digest_sev(
                        &rig.sample.firmware,
                        kernel,
                        Some(initrd),
                        &cmdline,
                    )
                    .unwrap(),
                );
                let held = rig.registered().await;
                if held.contains(&want) {
                    return held;
                }
            }
        }
        if Instant::now() >= deadline {
            let log: Vec<String> = agent.log.try_iter().collect();
            panic!(
                "timed out waiting for {what}; status: {s:?}; registered: {:?}\nlog:\n{}",
                rig.registered().await,
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the status until `pred` holds.
async fn wait_status(
    agent: &crate::rig::Agent,
    what: &str,
    pred: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = agent.status().await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn registered_state(s: &AgentStatus) -> bool {
    s.classes
        .get(CLASS)
        .is_some_and(|c| c.state == ClassState::Registered && c.stale_since.is_none())
}

/// A tree under the rig's directory, canonical (the temporary directory may
/// itself be reached through a link).
fn tree(rig: &Rig) -> PathBuf {
    let root = rig.dir.path().join("tree");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::canonicalize(root).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_directory_link_is_followed_and_edits_in_its_new_target_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let rig = Rig::following(&root.join("defaults/configuration-*.toml"), "");
    let (kernel, initrd) = (rig.sample.kernel.clone(), rig.sample.initrd.clone());
    for (d, vcpus) in [("v1", 1), ("v2", 2)] {
        std::fs::create_dir(root.join(d)).unwrap();
        std::fs::write(
            root.join(d).join("configuration-qemu-sev.toml"),
            config_text(&rig, &kernel, &initrd, vcpus),
        )
        .unwrap();
    }
    symlink("v1", root.join("defaults")).unwrap();
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    wait_digest_of(&rig, &agent, &kernel, &initrd, "v1", |c| {
        c.contains("variant=1")
    })
    .await;

    swap_link("v2", &root.join("defaults"));
    wait_digest_of(&rig, &agent, &kernel, &initrd, "v2 after the swap", |c| {
        c.contains("variant=2")
    })
    .await;
    // An edit inside the new target.
    std::fs::write(
        root.join("v2/configuration-qemu-sev.toml"),
        config_text(&rig, &kernel, &initrd, 3),
    )
    .unwrap();
    let held = wait_digest_of(&rig, &agent, &kernel, &initrd, "the edit in v2", |c| {
        c.contains("variant=3")
    })
    .await;
    assert_eq!(held.len(), 2, "only the current launches: {held:?}");
    let s = wait_status(&agent, "registered", registered_state).await;
    assert_eq!(
        s.classes[CLASS].config,
        root.join("defaults/configuration-qemu-sev.toml")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_link_on_the_way_to_the_kernel_is_followed() {
    let rig = Rig::new("");
    let root = tree(&rig);
    // kata-containers -> kata-containers-3.2, and inside it
    // vmlinuz.container -> vmlinuz-sev -> vmlinuz-6.1.a
    let v32 = root.join("kata-containers-3.2");
    std::fs::create_dir(&v32).unwrap();
    for (name, byte) in [("vmlinuz-6.1.a", 1), ("vmlinuz-6.1.b", 2)] {
        kernel_variant(&rig, &v32.join(name), byte);
    }
    symlink("vmlinuz-6.1.a", v32.join("vmlinuz-sev")).unwrap();
    symlink("vmlinuz-sev", v32.join("vmlinuz.container")).unwrap();
    symlink("kata-containers-3.2", root.join("kata-containers")).unwrap();
    let initrd = rig.sample.initrd.clone();
    rig.replace(
        &rig.sample.config,
        config_text(
            &rig,
            &root.join("kata-containers/vmlinuz.container"),
            &initrd,
            1,
        )
        .as_bytes(),
    );
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    wait_digest_of(
        &rig,
        &agent,
        &v32.join("vmlinuz-6.1.a"),
        &initrd,
        "kernel a",
        |_| true,
    )
    .await;

    // The middle link of the chain moves to another kernel.
    swap_link("vmlinuz-6.1.b", &v32.join("vmlinuz-sev"));
    wait_digest_of(
        &rig,
        &agent,
        &v32.join("vmlinuz-6.1.b"),
        &initrd,
        "kernel b",
        |_| true,
    )
    .await;

    // The directory link moves to a new release whose kernel differs.
    let v33 = root.join("kata-containers-3.3");
    std::fs::create_dir(&v33).unwrap();
    kernel_variant(&rig, &v33.join("vmlinuz-6.6"), 3);
    symlink("vmlinuz-6.6", v33.join("vmlinuz.container")).unwrap();
    swap_link("kata-containers-3.3", &root.join("kata-containers"));
    let held = wait_digest_of(
        &rig,
        &agent,
        &v33.join("vmlinuz-6.6"),
        &initrd,
        "kernel of 3.3",
        |_| true,
    )
    .await;
    assert_eq!(held.len(), 2, "{held:?}");

    // And a write in place to the kernel now at the end of the chain.
    kernel_variant(&rig, &v33.join("vmlinuz-6.6"), 4);
    wait_digest_of(
        &rig,
        &agent,
        &v33.join("vmlinuz-6.6"),
        &initrd,
        "the rewritten kernel",
        |_| true,
    )
    .await;
    wait_status(&agent, "registered", registered_state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_directory_renamed_into_place_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    // Followed through a link to the directory that is replaced.
    let rig = Rig::following(&root.join("current/configuration-*.toml"), "");
    let (kernel, initrd) = (rig.sample.kernel.clone(), rig.sample.initrd.clone());
    let write_dir = |d: &Path, vcpus| {
        std::fs::create_dir(d).unwrap();
        std::fs::write(
            d.join("configuration-qemu-sev.toml"),
            config_text(&rig, &kernel, &initrd, vcpus),
        )
        .unwrap();
    };
    write_dir(&root.join("d"), 1);
    symlink("d", root.join("current")).unwrap();
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    wait_digest_of(&rig, &agent, &kernel, &initrd, "d", |c| {
        c.contains("variant=1")
    })
    .await;

    // mv d d.old; mv d.new d
    write_dir(&root.join("d.new"), 2);
    std::fs::rename(root.join("d"), root.join("d.old")).unwrap();
    std::fs::rename(root.join("d.new"), root.join("d")).unwrap();
    wait_digest_of(&rig, &agent, &kernel, &initrd, "the new d", |c| {
        c.contains("variant=2")
    })
    .await;
    // Edits in the new directory are seen; the old one no longer matters.
    std::fs::write(
        root.join("d/configuration-qemu-sev.toml"),
        config_text(&rig, &kernel, &initrd, 3),
    )
    .unwrap();
    std::fs::write(
        root.join("d.old/configuration-qemu-sev.toml"),
        config_text(&rig, &kernel, &initrd, 4),
    )
    .unwrap();
    let held = wait_digest_of(
        &rig,
        &agent,
        &kernel,
        &initrd,
        "the edit in the new d",
        |c| c.contains("variant=3"),
    )
    .await;
    // Never stale, digests never removed: the configuration was always there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.registered().await, held);
    let s = wait_status(&agent, "registered", registered_state).await;
    assert!(s.classes[CLASS].config_error.is_none(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_named_as_kernel_is_an_error_that_blocks_nothing() {
    let rig = Rig::new("");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let before = rig.registered().await;
    assert_eq!(before.len(), 2);

    let fifo = tree(&rig).join("vmlinuz-fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let text = rig.kata_config_text().replace(
        &rig.sample.kernel.display().to_string(),
        &fifo.display().to_string(),
    );
    rig.replace(&rig.sample.config, text.as_bytes());
    let s = wait_status(&agent, "the FIFO's error", |s| {
        s.classes
            .get(CLASS)
            .and_then(|c| c.config_error.as_deref())
            .is_some_and(|e| e.contains("not a regular file"))
    })
    .await;
    assert_eq!(s.classes[CLASS].state, ClassState::Error);
    assert!(
        s.classes[CLASS]
            .config_error
            .as_deref()
            .is_some_and(|e| e.contains("vmlinuz-fifo")),
        "{s:?}"
    );
    assert_eq!(rig.registered().await, before, "the last good digests stay");

    // A restart with the FIFO still named gets to READY, and SIGTERM stops it.
    let mut agent = agent;
    assert!(agent.terminate().success());
    let mut again = rig.start_agent();
    again.wait_notify("READY=1", Duration::from_secs(30));
    let s = again.status().await;
    assert_eq!(s.classes[CLASS].state, ClassState::Error, "{s:?}");
    assert_eq!(rig.registered().await, before);
    assert!(again.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_hash_leaves_signals_and_the_watchdog_served_and_a_change_restarts_it() {
    // Hashing a 64 GiB sparse initrd takes far longer than the test waits.
    let rig = Rig::new("max_initrd_bytes = 68719476736");
    let huge = tree(&rig).join("initrd-huge.img");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let initrd = rig.sample.initrd.clone();
    let text = rig.kata_config_text().replace(
        &rig.sample.initrd.display().to_string(),
        &huge.display().to_string(),
    );
    rig.replace(&rig.sample.config, text.as_bytes());
    let watchdog = AgentStart {
        env: vec![("WATCHDOG_USEC".into(), "400000".into())],
        ..AgentStart::default()
    };
    let mut agent = rig.start_agent_with(&watchdog);
    // While the first pass hashes: watchdog pings and status answers.
    agent.wait_notify("WATCHDOG=1", Duration::from_secs(10));
    agent.wait_notify("WATCHDOG=1", Duration::from_secs(10));
    let s = agent.status().await;
    assert!(!s.ready, "{s:?}");
    // And SIGTERM stops it at once (terminate() allows 10 s).
    assert!(agent.terminate().success());

    // The initrd replaced by rename in the middle of the hash: the pass
    // starts over with the new file instead of finishing the old one.
    let agent = rig.start_agent_with(&watchdog);
    agent.wait_notify("WATCHDOG=1", Duration::from_secs(10));
    let small = huge.with_file_name("initrd-small.img");
    std::fs::copy(&initrd, &small).unwrap();
    std::fs::rename(&small, &huge).unwrap();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    wait_digest_of(
        &rig,
        &agent,
        &rig.sample.kernel,
        &huge,
        "the replaced initrd",
        |_| true,
    )
    .await;
    wait_status(&agent, "registered", registered_state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_paused_half_way_through_a_write_is_not_registered() {
    use std::io::Write as _;
    let rig = Rig::new("");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let before = rig.registered().await;
    let cmdline = cmdline_of(&agent).await;

    let mut new_kernel = std::fs::read(&rig.sample.kernel).unwrap();
    new_kernel[100] ^= 0x55;
    let half = tree(&rig).join("half");
    std::fs::write(&half, &new_kernel[..new_kernel.len() / 2]).unwrap();
    let half_digest = hex::encode(
        sev_sim::launch_digest_sev(
            &rig.sample.firmware,
            &half,
            Some(&rig.sample.initrd),
            &cmdline,
        )
        .unwrap(),
    );
    // Written in place, like `cp` over the file, pausing half-way with the
    // file still open (far longer than the 250 ms write settle).
    let mut f = std::fs::File::create(&rig.sample.kernel).unwrap();
    f.write_all(&new_kernel[..new_kernel.len() / 2]).unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let held = rig.registered().await;
        assert!(
            !held.contains(&half_digest),
            "a half-written kernel was registered"
        );
        assert_eq!(held, before);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.write_all(&new_kernel[new_kernel.len() / 2..]).unwrap();
    drop(f);
    let held = wait_digest_of(
        &rig,
        &agent,
        &rig.sample.kernel,
        &rig.sample.initrd,
        "the whole new kernel",
        |_| true,
    )
    .await;
    assert!(!held.contains(&half_digest));
    wait_status(&agent, "registered", registered_state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_stops_giving_launches_keeps_them_for_the_grace_period() {
    let rig = Rig::new("");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let before = rig.registered().await;
    let good = rig.kata_config_text();

    // Saved half-way, before confidential_guest: a valid file that gives
    // nothing to register.
    let cut = good.find("confidential_guest").unwrap();
    std::fs::write(&rig.sample.config, &good[..cut]).unwrap();
    let s = wait_status(&agent, "stale", |s| {
        s.classes
            .get(CLASS)
            .is_some_and(|c| c.state == ClassState::Stale)
    })
    .await;
    assert!(s.classes[CLASS].stale_since.is_some(), "{s:?}");
    assert_eq!(rig.registered().await, before, "not removed at once");
    // Saved whole again within the grace period: nothing was lost.
    std::fs::write(&rig.sample.config, &good).unwrap();
    wait_status(&agent, "registered again", registered_state).await;
    assert_eq!(rig.registered().await, before);

    // Left cut: removed once the grace period (2 s here) has passed.
    std::fs::write(&rig.sample.config, &good[..cut]).unwrap();
    let cut_at = Instant::now();
    rig.wait_registered("removal after the grace period", <[String]>::is_empty)
        .await;
    assert!(cut_at.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_configuration_directory_is_an_error_not_a_deletion() {
    let rig = Rig::new("");
    let how = AgentStart {
        without_dac_override: true,
        ..AgentStart::default()
    };
    let agent = rig.start_agent_with(&how);
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let before = rig.registered().await;
    let kata = rig.sample.config.parent().unwrap().to_path_buf();

    std::fs::set_permissions(&kata, std::fs::Permissions::from_mode(0o000)).unwrap();
    let s = wait_status(&agent, "an error for the directory", |s| {
        s.classes
            .get(CLASS)
            .is_some_and(|c| c.state == ClassState::Error)
    })
    .await;
    let error = s.classes[CLASS].config_error.clone().unwrap_or_default();
    assert!(error.contains("cannot read"), "{error}");
    assert!(error.contains(&kata.display().to_string()), "{error}");
    // Well past the 2 s grace period: still registered, never stale.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rig.registered().await, before);
    let s = agent.status().await;
    assert_eq!(s.classes[CLASS].state, ClassState::Error, "{s:?}");
    assert!(s.classes[CLASS].stale_since.is_none(), "{s:?}");

    std::fs::set_permissions(&kata, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_status(&agent, "registered once readable", |s| {
        registered_state(s) && s.classes[CLASS].config_error.is_none()
    })
    .await;
    assert_eq!(rig.registered().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_broken_then_fixed_to_the_digests_held_the_status_says_registered() {
    let rig = Rig::new("");
    let mut agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let before = rig.registered().await;
    assert!(agent.terminate().success());

    let good = rig.kata_config_text();
    rig.replace(
        &rig.sample.config,
        good.replace("default_vcpus = 1", "default_vcpus = = 1")
            .as_bytes(),
    );
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let s = wait_status(&agent, "the error", |s| {
        s.classes
            .get(CLASS)
            .is_some_and(|c| c.state == ClassState::Error)
    })
    .await;
    assert!(s.classes[CLASS].registered_at.is_none(), "{s:?}");
    assert_eq!(rig.registered().await, before);

    rig.replace(&rig.sample.config, good.as_bytes());
    let s = wait_status(&agent, "registered", registered_state).await;
    assert!(s.classes[CLASS].registered_at.is_some(), "{s:?}");
    assert_eq!(s.classes[CLASS].registered_digests, Some(2), "{s:?}");
    assert_eq!(rig.registered().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_line_or_configuration_is_an_error_that_keeps_the_digests() {
    let rig = Rig::new("");
    let agent = rig.start_agent();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let before = rig.registered().await;
    let good = rig.kata_config_text();
    let error_with = |needle: &'static str| {
        move |s: &AgentStatus| {
            s.classes
                .get(CLASS)
                .and_then(|c| c.config_error.as_deref())
                .is_some_and(|e| e.contains(needle))
        }
    };

    // QEMU refuses a command line this long: so does the agent.
    let long = good.replace(
        "agent.enable_signature_verification=false",
        &format!(
            "agent.enable_signature_verification=false x={}",
            "a".repeat(4096)
        ),
    );
    rig.replace(&rig.sample.config, long.as_bytes());
    let s = wait_status(
        &agent,
        "the command-line error",
        error_with("kernel_params"),
    )
    .await;
    assert_eq!(s.classes[CLASS].state, ClassState::Error, "{s:?}");
    assert_eq!(rig.registered().await, before);

    // A 50 MB configuration is refused unread.
    let huge = good.replace(
        "agent.enable_signature_verification=false",
        &format!(
            "agent.enable_signature_verification=false x={}",
            "a".repeat(50 << 20)
        ),
    );
    rig.replace(&rig.sample.config, huge.as_bytes());
    wait_status(
        &agent,
        "the size error",
        error_with("limit for a configuration"),
    )
    .await;
    assert_eq!(rig.registered().await, before);

    rig.replace(&rig.sample.config, good.as_bytes());
    wait_status(&agent, "registered", |s| {
        registered_state(s) && s.classes[CLASS].config_error.is_none()
    })
    .await;
    assert_eq!(rig.registered().await, before);
}
