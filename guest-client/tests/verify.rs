//! `guest-client verify` on secrets directories written the way `efi_secret`
//! shows an injected table (by the simulated platform's view of it): each
//! broken case fails with its own reason, and no secret value is printed.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine as _;
use guest_client::entries::{BUNDLE_GUID, CONNECTION_GUID, IMAGE_KEY_ID, REPORT_KEY_GUID};
use sev_sim::guest_view::GuestView;
use std::path::{Path, PathBuf};
use std::process::Command;

const SECRET: &[u8] = b"the image key, never printed";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A guest's view: securityfs "mounted" (per a mount table of our own), the
/// module directory present, and the entries of `table` under secrets/coco.
struct Guest {
    dir: tempfile::TempDir,
}

impl Guest {
    fn new(entries: &[(&str, Vec<u8>)], module: bool) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let sfs = dir.path().join("security");
        std::fs::create_dir_all(&sfs).unwrap();
        std::fs::write(
            dir.path().join("mounts"),
            format!("securityfs {} securityfs rw 0 0\n", sfs.display()),
        )
        .unwrap();
        if module {
            std::fs::create_dir_all(dir.path().join("module")).unwrap();
        }
        if !entries.is_empty() {
            let refs: Vec<(&str, &[u8])> =
                entries.iter().map(|(g, d)| (*g, d.as_slice())).collect();
            let table = sev_sim::efi_secret::build_table(&refs).unwrap();
            sev_sim::efi_secret::write_dir(&table, &sfs.join("secrets/coco")).unwrap();
        }
        std::fs::write(dir.path().join("cmdline"), "console=hvc0 quiet\n").unwrap();
        Guest { dir }
    }

    /// `guest-client SUBCOMMAND` pointed at this guest's files.
    fn command(&self, subcommand: &str) -> Command {
        GuestView::at(self.dir.path())
            .client_command(Path::new(env!("CARGO_BIN_EXE_guest-client")), subcommand)
    }

    fn secrets(&self) -> PathBuf {
        self.dir.path().join("security/secrets/coco")
    }

    fn verify(&self, extra: &[&str]) -> (i32, String) {
        let out = self.command("verify").args(extra).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        (out.status.code().unwrap(), text)
    }
}

fn bundle() -> Vec<u8> {
    format!(
        r#"{{"key-a":"{}","key-b":"{}"}}"#,
        b64(SECRET),
        b64(&[0, 1, 2])
    )
    .into_bytes()
}

fn report_key() -> Vec<u8> {
    format!(
        r#"{{"launch_id":"L-1","report_key":"{}"}}"#,
        b64(&[9u8; 32])
    )
    .into_bytes()
}

fn failed_check(out: &str, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    assert_eq!(v["path_works"], false, "{out}");
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {out}"))
        .clone();
    assert_eq!(c["passed"], false, "{out}");
    c
}

#[test]
fn a_good_offline_launch_passes_without_printing_secrets() {
    let g = Guest::new(
        &[(BUNDLE_GUID, bundle()), (REPORT_KEY_GUID, report_key())],
        true,
    );
    // Every check passes, but there is no broker to report to: exit 2, so a
    // unit or a fleet check can tell it from a confirmed launch.
    let (code, out) = g.verify(&["--mode", "offline", "--json"]);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["path_works"], true);
    assert_eq!(v["report"]["state"], "undelivered", "{out}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "securityfs",
            "efi_secret",
            "secrets directory",
            "bundle",
            "image key",
            "report key"
        ]
    );
    assert!(out.contains("key-a"));
    assert!(!out.contains(&b64(SECRET)) && !out.contains("never printed"));
    let (code, human) = g.verify(&["--mode", "offline"]);
    assert_eq!(code, 2);
    assert!(human.contains("PSP-protected path"), "{human}");
    assert!(human.contains("report not delivered"), "{human}");
    let (code, _) = g.verify(&["--mode", "offline", "--no-report"]);
    assert_eq!(code, 0);
    // Nothing was removed: the attestation agent still needs the bundle.
    assert!(g.secrets().join(BUNDLE_GUID).exists());
}

#[test]
fn each_broken_path_fails_with_its_own_reason() {
    // No module, no secrets: efi_secret missing.
    let g = Guest::new(&[], false);
    let (code, out) = g.verify(&["--mode", "offline", "--json"]);
    assert_eq!(code, 1);
    assert!(failed_check(&out, "efi_secret")["reason"]
        .as_str()
        .unwrap()
        .contains("efi_secret"));

    // The bundle missing (already consumed, or never sent).
    let g = Guest::new(&[(REPORT_KEY_GUID, report_key())], true);
    let (_, out) = g.verify(&["--mode", "offline", "--json"]);
    let r = failed_check(&out, "bundle")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(r.contains(BUNDLE_GUID) && r.contains("consumed"), "{r}");

    // There, but unreadable (a directory here; EACCES in a guest that
    // runs the client without the rights): named as such, not as missing.
    let g = Guest::new(&[(REPORT_KEY_GUID, report_key())], true);
    std::fs::create_dir(g.secrets().join(BUNDLE_GUID)).unwrap();
    let (code, out) = g.verify(&["--mode", "offline", "--json"]);
    assert_eq!(code, 1);
    let r = failed_check(&out, "bundle")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(r.contains("is there but cannot be read"), "{r}");
    assert!(!r.contains("never delivered"), "{r}");

    // Non-JSON and truncated payloads.
    for bad in [b"not json".to_vec(), bundle()[..10].to_vec()] {
        let g = Guest::new(&[(BUNDLE_GUID, bad), (REPORT_KEY_GUID, report_key())], true);
        let (_, out) = g.verify(&["--mode", "offline", "--json"]);
        let r = failed_check(&out, "bundle")["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(r.contains("JSON"), "{r}");
    }

    // The bundle under another GUID is not the bundle.
    let g = Guest::new(
        &[
            ("0b1c2d3e-4f50-4617-8899-aabbccddeeff", bundle()),
            (REPORT_KEY_GUID, report_key()),
        ],
        true,
    );
    let (_, out) = g.verify(&["--mode", "offline", "--json"]);
    failed_check(&out, "bundle");

    // Online mode without the connection entry.
    let g = Guest::new(
        &[(BUNDLE_GUID, bundle()), (REPORT_KEY_GUID, report_key())],
        true,
    );
    let (_, out) = g.verify(&["--mode", "online", "--json"]);
    let r = failed_check(&out, "connection")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(r.contains(CONNECTION_GUID), "{r}");

    // A connection key of the wrong length.
    let short = format!(r#"{{"client_id":"c","key":"{}"}}"#, b64(&[1u8; 16]));
    let g = Guest::new(
        &[
            (CONNECTION_GUID, short.into_bytes()),
            (REPORT_KEY_GUID, report_key()),
        ],
        true,
    );
    let (_, out) = g.verify(&["--mode", "online", "--json", "--kbs", "127.0.0.1:9"]);
    let r = failed_check(&out, "connection")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(r.contains("16 bytes"), "{r}");

    // The report key missing.
    let g = Guest::new(&[(BUNDLE_GUID, bundle())], true);
    let (_, out) = g.verify(&["--mode", "offline", "--json"]);
    failed_check(&out, "report key");
}

/// A bundle holding the operator's key and an image key of `len` bytes.
fn bundle_with_image_key(len: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "key-a": b64(SECRET),
        IMAGE_KEY_ID: b64(&vec![0xc3; len]),
    }))
    .unwrap()
}

#[test]
fn the_image_key_in_the_bundle_is_reported_by_length_only() {
    // Present, 32 bytes.
    let g = Guest::new(
        &[
            (BUNDLE_GUID, bundle_with_image_key(32)),
            (REPORT_KEY_GUID, report_key()),
        ],
        true,
    );
    let (code, out) = g.verify(&["--mode", "offline", "--json", "--no-report"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["image_encryption_key"],
        serde_json::json!({"id": IMAGE_KEY_ID, "source": "bundle", "state": "present", "length": 32})
    );
    assert_eq!(v["cosign_key"]["state"], "not_fetched", "{out}");
    assert!(!out.contains(&b64(&[0xc3; 32])), "{out}");
    let (code, human) = g.verify(&["--mode", "offline", "--no-report"]);
    assert_eq!(code, 0);
    assert!(
        human.contains("image key") && human.contains("32 bytes, in the bundle"),
        "{human}"
    );
    assert!(human.contains("not fetched"), "{human}");
    assert!(!human.contains(&b64(&[0xc3; 32])), "{human}");

    // Absent: not provisioned, which is no failure.
    let g = Guest::new(
        &[(BUNDLE_GUID, bundle()), (REPORT_KEY_GUID, report_key())],
        true,
    );
    let (code, out) = g.verify(&["--mode", "offline", "--json", "--no-report"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["image_encryption_key"]["state"], "not_provisioned");

    // The wrong length: a failed check with the length, not the bytes.
    for len in [16, 33] {
        let g = Guest::new(
            &[
                (BUNDLE_GUID, bundle_with_image_key(len)),
                (REPORT_KEY_GUID, report_key()),
            ],
            true,
        );
        let (code, out) = g.verify(&["--mode", "offline", "--json", "--no-report"]);
        assert_eq!(code, 1, "{out}");
        let r = failed_check(&out, "image key")["reason"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            r.contains(&format!("{len} bytes")) && r.contains("32"),
            "{r}"
        );
        assert!(!out.contains(&b64(&vec![0xc3; len])), "{out}");
    }
}

#[test]
fn mode_comes_from_the_kernel_command_line() {
    let g = Guest::new(
        &[(BUNDLE_GUID, bundle()), (REPORT_KEY_GUID, report_key())],
        true,
    );
    std::fs::write(
        g.dir.path().join("cmdline"),
        "quiet agent.aa_kbc_params=offline_sev_kbc::null\n",
    )
    .unwrap();
    let (code, out) = g.verify(&["--json", "--no-report"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"mode\": \"offline\""), "{out}");
}

#[test]
fn init_verifies_then_hands_over_by_exec() {
    let g = Guest::new(
        &[(BUNDLE_GUID, bundle()), (REPORT_KEY_GUID, report_key())],
        true,
    );
    let out = g
        .command("init")
        .args(["--exec", "/bin/sh", "--boot-timeout", "10"])
        .args([
            "--mode",
            "offline",
            "--",
            "-c",
            "echo handed over to pid $$",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("guest-client: ok bundle"), "{text}");
    // The report key was wiped before the hand-over; the bundle stays.
    assert!(!g.secrets().join(REPORT_KEY_GUID).exists());
    assert!(g.secrets().join(BUNDLE_GUID).exists());
    // The same process: exec, not a child.
    assert!(text.contains("handed over to pid"), "{text}");
}

#[test]
fn init_does_not_wait_for_the_network() {
    let g = Guest::new(
        &[(BUNDLE_GUID, bundle()), (REPORT_KEY_GUID, report_key())],
        true,
    );
    // A broker that never answers: a listener that accepts nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kbs = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let out = g
        .command("init")
        .args([
            "--exec",
            "/bin/echo",
            "--boot-timeout",
            "5",
            "--report-patience",
            "0",
        ])
        .args([
            "--mode",
            "offline",
            "--kbs",
            &kbs,
            "--timeout",
            "1",
            "--",
            "booted",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("booted\n"), "{text}");
    // The report waits in the background; the boot does not.
    assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
}

/// As PID 1 (the first process of a new PID namespace, as the kernel starts
/// init): the checks run, and the agent gets PID 1 by exec.
#[test]
fn init_as_pid_1_hands_pid_1_to_the_agent() {
    let g = Guest::new(
        &[(BUNDLE_GUID, bundle()), (REPORT_KEY_GUID, report_key())],
        true,
    );
    let p = |n: &str| g.dir.path().join(n);
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_guest-client"))
        .arg("init")
        .args(["--exec", "/bin/sh", "--no-report", "--mode", "offline"])
        .arg("--secrets-dir")
        .arg(g.secrets())
        .arg("--securityfs")
        .arg(p("security"))
        .arg("--mounts")
        .arg(p("mounts"))
        .arg("--module-dir")
        .arg(p("module"))
        .arg("--cmdline")
        .arg(p("cmdline"))
        .args(["--", "-c", "echo agent is pid $$"])
        .stderr(std::process::Stdio::null())
        .output()
        .expect("unshare (util-linux) runs a process as PID 1 of a new PID namespace; run as root");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("guest-client: ok bundle"), "{text}");
    assert!(text.contains("agent is pid 1\n"), "{text}");
}
