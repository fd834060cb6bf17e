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
        // modprobe is the guest's (a build machine may have none).
        unit.replace("/usr/bin/guest-client", env!("CARGO_BIN_EXE_guest-client"))
            .replace("/sbin/modprobe", "/bin/true"),
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

/// The most exposure `systemd-analyze security` may rate the unit's sandbox
/// (it rates it 1.8 now; UNSAFE is 9.6).
const MAX_EXPOSURE: f64 = 3.0;

#[test]
fn the_guest_unit_is_sandboxed() {
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/guest-client.service"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", unit])
        .output()
        .expect("systemd-analyze is missing: install the `systemd` package (CI installs it)");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    // "→ Overall exposure level for guest-client.service: 1.8 OK 🙂"
    let score: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for guest-client.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} over {MAX_EXPOSURE}:\n{report}"
    );
}
