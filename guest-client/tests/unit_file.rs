//! `systemd/guest-client.service` is a valid unit: `systemd-analyze verify`
//! accepts it with the binary pointed at the one just built.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn the_guest_unit_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing: install the `systemd` package (CI installs it)");
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/guest-client.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/guest-client verify"));
    assert!(unit.contains("Type=oneshot"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest-client.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/guest-client", env!("CARGO_BIN_EXE_guest-client")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("guest-client.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}
