//! `host-agent kata guest-attestation` and `kata signature-verification` as the
//! operator runs them: the real binary on copies of the Kata configurations that
//! CoCo 0.7 and 0.8 ship, checking that only the edited lines change, that the
//! result yields the command line captured on a real CoCo 0.7 SEV node, and that
//! runs are idempotent, atomic and honest about what they did.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::host_agent;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

const CC_07: &str = "configuration-qemu-sev.CC-0.7.0.toml";
const SHIPPED: [&str; 3] = [
    CC_07,
    "configuration-qemu-sev.CC-0.8.0-opt-kata.toml",
    "configuration-qemu-sev.toml",
];

/// The `-append` string captured from a real CoCo 0.7 SEV node (DESIGN.md), with
/// the node's address 10.0.0.5.
const CAPTURED_CMDLINE: &str = "tsc=reliable no_timer_check rcupdate.rcu_expedited=1 \
    i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 i8042.noaux=1 noreplace-smp reboot=k \
    cryptomgr.notests net.ifnames=0 pci=lastbus=0 console=hvc0 console=hvc1 quiet panic=1 \
    nr_cpus=1 selinux=0 agent.aa_kbc_params=online_sev_kbc::10.0.0.5:44444 \
    scsi_mod.scan=none agent.config_file=/etc/agent-config.toml \
    agent.enable_signature_verification=true";

/// A copy of a shipped configuration in a fresh directory, under its own name
/// (the runtime class comes from the name).
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_testdata().join("kata").join(name);
    let dst = dir.path().join(name);
    std::fs::copy(&src, &dst).unwrap();
    (dir, dst)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// Runs `host-agent kata ARGS... --kata-config FILE` and requires success.
fn kata_ok(args: &[&str], file: &Path) -> String {
    let o = kata(args, file);
    assert!(
        o.status.success(),
        "host-agent kata {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn kata(args: &[&str], file: &Path) -> Output {
    let mut all = vec!["kata"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--kata-config", file.to_str().unwrap()]);
    host_agent(&all)
}

/// 1-based numbers of the lines that differ; both texts must have as many lines.
fn differing_lines(before: &str, after: &str) -> Vec<usize> {
    let a: Vec<&str> = before.split('\n').collect();
    let b: Vec<&str> = after.split('\n').collect();
    assert_eq!(a.len(), b.len(), "line count changed");
    (0..a.len())
        .filter(|&i| a[i] != b[i])
        .map(|i| i + 1)
        .collect()
}

/// The 1-based line where `key` is set (not commented out).
fn line_of_key(text: &str, key: &str) -> usize {
    let hits: Vec<usize> = text
        .split('\n')
        .enumerate()
        .filter(|(_, l)| {
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "{key} set on lines {hits:?}");
    hits[0]
}

fn cmdline_of(path: &Path) -> String {
    let cfg = kata_launch::KataConfig::parse(path, &read(path)).unwrap();
    kata_launch::plan(&cfg, &kata_launch::LaunchContext::new(0))
        .unwrap()
        .cmdline
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// Sets the file's modification time an hour back, so a rewrite cannot go
/// unnoticed for landing in the same clock tick.
fn age(p: &Path) -> SystemTime {
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(old)
        .unwrap();
    mtime(p)
}

/// Names in a directory, to see that no temporary file is left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn switching_on_changes_only_those_lines_and_yields_the_captured_command_line() {
    for name in SHIPPED {
        let (dir, file) = copy_of(name);
        let original = read(&file);
        let uri_line = line_of_key(&original, "guest_pre_attestation_kbs_uri");
        let params_line = line_of_key(&original, "kernel_params");

        let out = kata_ok(
            &["guest-attestation", "on", "--kbs-uri", "10.0.0.5:44444"],
            &file,
        );
        assert!(out.contains(": changed"), "{out}");
        assert!(
            out.contains(&format!(
                "hypervisor.qemu.guest_pre_attestation_kbs_uri (line {uri_line}): \"localhost:44444\" -> \"10.0.0.5:44444\""
            )),
            "{out}"
        );
        let out = kata_ok(&["signature-verification", "on"], &file);
        assert!(
            out.contains(&format!(
                "hypervisor.qemu.kernel_params (line {params_line}): agent.enable_signature_verification=false -> agent.enable_signature_verification=true"
            )),
            "{out}"
        );

        let edited = read(&file);
        // The shipped file already has pre-attestation on in online mode, so only
        // the address and kernel_params change; everything else byte for byte.
        assert_eq!(
            differing_lines(&original, &edited),
            vec![uri_line, params_line],
            "{name}"
        );
        let new_lines: Vec<&str> = edited.split('\n').collect();
        assert_eq!(
            new_lines[uri_line - 1],
            "guest_pre_attestation_kbs_uri = \"10.0.0.5:44444\""
        );
        assert_eq!(
            new_lines[params_line - 1],
            "kernel_params = \"agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=true \""
        );

        // Same directory entries: the temporary file was renamed into place.
        assert_eq!(entries(dir.path()), vec![name.to_string()]);
        // Every shipped file yields the captured CoCo 0.7 command line.
        assert_eq!(cmdline_of(&file), CAPTURED_CMDLINE, "{name}");
    }
}

#[test]
fn running_twice_changes_nothing_the_second_time() {
    let (_dir, file) = copy_of(CC_07);
    let args = ["guest-attestation", "on", "--kbs-uri", "10.0.0.5:44444"];
    kata_ok(&args, &file);
    kata_ok(&["signature-verification", "on"], &file);
    let once = read(&file);
    let before = age(&file);
    let inode = std::fs::metadata(&file).unwrap().ino();

    let out = kata_ok(&args, &file);
    assert_eq!(out.trim(), format!("{}: unchanged", file.display()));
    let out = kata_ok(&["signature-verification", "on"], &file);
    assert_eq!(out.trim(), format!("{}: unchanged", file.display()));

    assert_eq!(read(&file), once);
    assert_eq!(mtime(&file), before, "an unchanged file was rewritten");
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
}

#[test]
fn switching_off_again() {
    let (_dir, file) = copy_of(CC_07);
    let original = read(&file);
    kata_ok(
        &["guest-attestation", "on", "--kbs-uri", "10.0.0.5:44444"],
        &file,
    );
    kata_ok(&["signature-verification", "on"], &file);
    let on = read(&file);

    let out = kata_ok(&["guest-attestation", "off"], &file);
    let flag_line = line_of_key(&original, "guest_pre_attestation");
    assert!(
        out.contains(&format!(
            "hypervisor.qemu.guest_pre_attestation (line {flag_line}): true -> false"
        )),
        "{out}"
    );
    let off = read(&file);
    assert_eq!(
        differing_lines(&on, &off),
        vec![line_of_key(&on, "guest_pre_attestation")]
    );
    assert!(off.contains("\nguest_pre_attestation = false\n"));
    // The address and the mode stay for the next `on`.
    assert!(off.contains("\nguest_pre_attestation_kbs_uri = \"10.0.0.5:44444\"\n"));
    assert!(off.contains("\nguest_pre_attestation_kbs_mode=\"online\" \n"));

    kata_ok(&["signature-verification", "off"], &file);
    let both_off = read(&file);
    // Back to the shipped file but for the address and the pre-attestation flag.
    let uri_line = line_of_key(&original, "guest_pre_attestation_kbs_uri");
    assert_eq!(
        differing_lines(&original, &both_off),
        vec![flag_line, uri_line]
    );
    // Without pre-attestation the command line loses the KBC parameters.
    let cmdline = cmdline_of(&file);
    assert!(!cmdline.contains("aa_kbc_params"), "{cmdline}");
    assert!(
        cmdline.ends_with(" agent.enable_signature_verification=false"),
        "{cmdline}"
    );
}

#[test]
fn dry_run_prints_a_diff_and_writes_nothing() {
    let (dir, file) = copy_of(CC_07);
    let original = read(&file);
    let before = age(&file);

    let out = kata_ok(
        &[
            "guest-attestation",
            "on",
            "--kbs-uri",
            "10.0.0.5:44444",
            "--mode",
            "offline",
            "--dry-run",
        ],
        &file,
    );
    assert!(out.contains(": would change"), "{out}");
    assert!(out.contains(&format!("--- {}", file.display())), "{out}");
    assert!(out.contains(&format!("+++ {}", file.display())), "{out}");
    assert!(out.contains("@@ "), "{out}");
    assert!(
        out.contains("\n-guest_pre_attestation_kbs_uri = \"localhost:44444\"\n"),
        "{out}"
    );
    assert!(
        out.contains("\n+guest_pre_attestation_kbs_uri = \"10.0.0.5:44444\"\n"),
        "{out}"
    );
    assert!(
        out.contains("\n+guest_pre_attestation_kbs_mode=\"offline\" \n"),
        "{out}"
    );
    let out = kata_ok(&["signature-verification", "on", "--dry-run"], &file);
    assert!(
        out.contains("+kernel_params = \"agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=true \""),
        "{out}"
    );

    assert_eq!(read(&file), original);
    assert_eq!(mtime(&file), before);
    assert_eq!(entries(dir.path()), vec![CC_07.to_string()]);
}

#[test]
fn the_file_mode_is_kept() {
    for mode in [0o640, 0o600, 0o644] {
        let (_dir, file) = copy_of(CC_07);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let owner = std::fs::metadata(&file).unwrap();
        kata_ok(
            &["guest-attestation", "on", "--kbs-uri", "10.0.0.5:44444"],
            &file,
        );
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode);
        assert_eq!((meta.uid(), meta.gid()), (owner.uid(), owner.gid()));
    }
}

#[test]
fn invalid_toml_is_an_error_naming_file_and_line_and_nothing_is_written() {
    let (dir, file) = copy_of(CC_07);
    let mut lines: Vec<String> = read(&file).split('\n').map(str::to_string).collect();
    // Line 50 is blank in the shipped file; a key without a value breaks it.
    assert_eq!(lines[49], "");
    lines[49] = "broken = ".to_string();
    let broken = lines.join("\n");
    std::fs::write(&file, &broken).unwrap();

    // A good file named first is not written either: all edits are made before
    // any file is replaced.
    let good = dir.path().join("configuration-qemu-sev.toml");
    std::fs::copy(common::shared_testdata().join("kata").join(CC_07), &good).unwrap();
    let good_before = read(&good);

    let o = host_agent(&[
        "kata",
        "signature-verification",
        "on",
        "--kata-config",
        good.to_str().unwrap(),
        "--kata-config",
        file.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("file {} line 50 column", file.display())),
        "{err}"
    );
    assert!(err.contains("invalid TOML"), "{err}");
    assert_eq!(read(&file), broken);
    assert_eq!(read(&good), good_before);
    assert_eq!(entries(dir.path()).len(), 2);
}

#[test]
fn missing_pre_attestation_keys_are_added() {
    let (_dir, file) = copy_of(CC_07);
    let stripped: String = read(&file)
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("guest_pre_attestation"))
        .collect();
    std::fs::write(&file, &stripped).unwrap();

    let out = kata_ok(
        &["guest-attestation", "on", "--kbs-uri", "10.0.0.5:44444"],
        &file,
    );
    assert!(
        out.contains("hypervisor.qemu.guest_pre_attestation ("),
        "{out}"
    );
    assert!(out.contains(": added true"), "{out}");
    assert!(out.contains(": added \"online\""), "{out}");
    let edited = read(&file);
    let added = [
        "guest_pre_attestation = true\n",
        "guest_pre_attestation_kbs_uri = \"10.0.0.5:44444\"\n",
        "guest_pre_attestation_kbs_mode = \"online\"\n",
    ];
    // The new file is the old one with exactly these three lines inserted.
    let without: String = edited
        .split_inclusive('\n')
        .filter(|l| !added.contains(l))
        .collect();
    assert_eq!(without, stripped);
    assert_eq!(edited.split('\n').count(), stripped.split('\n').count() + 3);
    // Inside [hypervisor.qemu], in order, and effective.
    let pos = |s: &str| edited.find(s).unwrap();
    assert!(pos("[hypervisor.qemu]") < pos(added[0]));
    assert!(pos(added[0]) < pos(added[1]) && pos(added[1]) < pos(added[2]));
    assert!(pos(added[2]) < pos("[factory]"));
    let cfg = kata_launch::KataConfig::parse(&file, &edited).unwrap();
    assert!(cfg.qemu.guest_pre_attestation.value);
    assert_eq!(
        cfg.qemu.guest_pre_attestation_kbs_uri.value,
        "10.0.0.5:44444"
    );
    assert_eq!(
        cfg.qemu.guest_pre_attestation_kbs_mode.value,
        Some(kata_launch::KbsMode::Online)
    );
    assert!(cmdline_of(&file).contains(" agent.aa_kbc_params=online_sev_kbc::10.0.0.5:44444 "));
}

#[test]
fn missing_kernel_params_is_added() {
    let (_dir, file) = copy_of(CC_07);
    let stripped: String = read(&file)
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("kernel_params"))
        .collect();
    std::fs::write(&file, &stripped).unwrap();

    let out = kata_ok(&["signature-verification", "on"], &file);
    assert!(
        out.contains(": added \"agent.enable_signature_verification=true\""),
        "{out}"
    );
    let edited = read(&file);
    let added = "kernel_params = \"agent.enable_signature_verification=true\"\n";
    let without: String = edited
        .split_inclusive('\n')
        .filter(|l| *l != added)
        .collect();
    assert_eq!(without, stripped);
    assert!(edited.find(added).unwrap() < edited.find("[factory]").unwrap());
    let cmdline = cmdline_of(&file);
    assert!(
        cmdline.ends_with(" scsi_mod.scan=none agent.enable_signature_verification=true"),
        "{cmdline}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let (_dir, file) = copy_of(CC_07);
    let original = read(&file);
    let o = kata(&["guest-attestation", "on", "--kbs-uri", "10.0.0.5"], &file);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HOST:PORT"));
    let o = kata(
        &["guest-attestation", "off", "--kbs-uri", "10.0.0.5:44444"],
        &file,
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("only to `guest-attestation on`"));
    let o = kata(&["guest-attestation", "on", "--mode", "Online"], &file);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(read(&file), original);
}

#[test]
fn every_option_is_explained() {
    // Words joined by single spaces, whatever the wrapping width.
    let help_of = |args: &[&str]| {
        let o = host_agent(args);
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let help = help_of(&["kata", "guest-attestation", "--help"]);
    for needle in [
        "--kbs-uri <HOST:PORT>",
        "default route",
        "--mode <MODE>",
        "offline",
        "--kata-config <FILE>",
        "sev_snp_guest",
        "--dry-run",
        "unified diff",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    let help = help_of(&["kata", "signature-verification", "--help"]);
    assert!(
        help.contains("agent.enable_signature_verification"),
        "{help}"
    );
    assert!(help.contains("--dry-run"), "{help}");
}
