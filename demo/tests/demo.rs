//! The demo as a newcomer runs it: every step happens, in order, with the
//! outcome the step promises, and nothing is left behind.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::Command;

#[test]
fn the_demo_shows_the_whole_attested_flow_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");

    // The steps, in order.
    let mut at = 0;
    for n in 1..=9 {
        let marker = format!("== {n}. ");
        let found = text[at..]
            .find(&marker)
            .unwrap_or_else(|| panic!("step {n} missing or out of order:\n{text}"));
        at += found + marker.len();
    }
    // What each step promises.
    for kind in ["firmware", "kernel", "initrd", "kata-config"] {
        assert!(
            text.contains(&format!("$ kbs admin approve {kind} ")),
            "{kind}: {text}"
        );
        assert!(
            text.contains(&format!("approved: {kind}\t")),
            "{kind}: {text}"
        );
    }
    assert!(
        text.contains("$ kbs admin token create --node demo-node"),
        "{text}"
    );
    assert!(
        text.contains("the broker measured the launches itself"),
        "{text}"
    );
    assert!(
        text.contains("registered 3 digests for kata-qemu-sev"),
        "{text}"
    );
    assert!(text.contains("report key for the guest client"), "{text}");
    assert!(text.contains("Public key written to"), "{text}");
    assert!(
        text.contains("signature policy verify: registry.example/apps/hello (sigstoreSigned"),
        "{text}"
    );
    assert!(text.contains("ecdsa-p256 public key, SHA-256"), "{text}");
    assert!(
        text.contains("default/image-encryption-key/1: 32 bytes, served online"),
        "{text}"
    );
    assert!(
        text.contains("the secrets arrived through the PSP-protected path"),
        "{text}"
    );
    assert!(text.contains("report recorded by the key broker"), "{text}");
    assert!(text.contains("the broker held the new digests"), "{text}");
    assert!(
        text.contains("a guest launched with the new command line gets its secrets"),
        "{text}"
    );
    assert!(
        text.contains("refused, PermissionDenied: launch digest"),
        "{text}"
    );
    assert!(text.contains("confirmed"), "{text}");
    assert!(text.contains("launch digest not registered"), "{text}");

    // Its directory is gone.
    let line = text
        .lines()
        .find(|l| l.starts_with("== cleaned up"))
        .unwrap_or_else(|| panic!("no clean-up line:\n{text}"));
    let dir = line.rsplit(' ').nth(1).unwrap();
    assert!(dir.contains("sev-attestation-demo-"), "{line}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

#[test]
fn missing_binaries_are_named() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--bin-dir")
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kbs is missing"), "{err}");
    assert!(err.contains("--bin-dir"), "{err}");
}
