//! The `host-agent measure` command as a drop-in for `sev-snp-measure`: same
//! arguments, same output, whole process; and the errors it gives on bad input.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::host_agent;

use std::path::Path;
use std::process::{Command, Output};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn prints_what_sev_snp_measure_prints() {
    let dir = tempfile::tempdir().unwrap();
    let fw = common::real_firmware();
    let fw = fw.to_str().unwrap();
    let kernel = common::real_kernel();
    let kernel = kernel.to_str().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![0x5a; 1 << 20]).unwrap();
    let initrd = initrd.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--mode", "sev", "--ovmf", fw],
        vec![
            "--mode",
            "sev",
            "--ovmf",
            fw,
            "--kernel",
            kernel,
            "--initrd",
            initrd,
            "--append",
            "  console=hvc0  quiet ",
        ],
        vec![
            "--mode",
            "sev",
            "--ovmf",
            fw,
            "--kernel",
            kernel,
            "--append",
            "",
            "--output-format",
            "base64",
        ],
        vec![
            "--mode",
            "seves",
            "--ovmf",
            fw,
            "--vcpus",
            "4",
            "--vcpu-family",
            "25",
            "--vcpu-model",
            "1",
            "--vcpu-stepping",
            "1",
            "--kernel",
            kernel,
            "--append",
            "名前=値",
        ],
        vec![
            "--mode",
            "seves",
            "--ovmf",
            fw,
            "--vcpus",
            "2",
            "--vcpu-sig",
            "0xa10f10",
        ],
        vec![
            "--mode",
            "snp",
            "--ovmf",
            fw,
            "--vcpus",
            "8",
            "--vcpu-type",
            "EPYC-Genoa",
            "--guest-features",
            "0x21",
            "--kernel",
            kernel,
            "--initrd",
            initrd,
            "--append",
            "x",
        ],
        vec![
            "--mode",
            "snp",
            "--ovmf",
            fw,
            "--vcpus",
            "3",
            "--vcpu-type",
            "EPYC-v4",
            "--vmm-type",
            "ec2",
            "--output-format",
            "base64",
        ],
        vec![
            "--mode",
            "snp",
            "--ovmf",
            fw,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-Turin",
            "--vmm-type",
            "gce",
            "--kernel",
            kernel,
        ],
    ];
    for args in cases {
        let ours = host_agent(&[&["measure"], args.as_slice()].concat());
        let theirs = Command::new(common::oracle_cli())
            .args(&args)
            .output()
            .unwrap();
        assert!(ours.status.success(), "{args:?}: {:?}", text(&ours));
        assert!(theirs.status.success(), "{args:?}: {:?}", text(&theirs));
        assert_eq!(text(&ours).0, text(&theirs).0, "{args:?}");
    }
}

fn assert_fails_naming(args: &[&str], needles: &[&str]) {
    let o = host_agent(args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {out} {err}");
    assert!(out.is_empty(), "no digest on failure: {out}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} does not mention {n:?}");
    }
}

#[test]
fn bad_inputs_get_errors_that_say_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, data: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };
    let real = std::fs::read(common::real_firmware()).unwrap();
    let truncated = write("truncated.fd", &real[..real.len() / 2]);
    let tiny = write("tiny.fd", b"MZ");
    let foreign = write("foreign.fd", &vec![0xff; 1 << 20]);
    let kernel = write("vmlinuz", b"kernel");
    let unreadable = write("unreadable", b"x");
    let dir_path = d.to_str().unwrap();

    assert_fails_naming(
        &["measure", "--mode", "sev", "--ovmf", &tiny],
        &["tiny.fd", "only 2 bytes"],
    );
    assert_fails_naming(
        &[
            "measure", "--mode", "sev", "--ovmf", &truncated, "--kernel", &kernel,
        ],
        &["truncated.fd", "no SEV hashes table", "AmdSev"],
    );
    assert_fails_naming(
        &[
            "measure",
            "--mode",
            "seves",
            "--ovmf",
            &foreign,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC",
        ],
        &["foreign.fd", "SEV-ES reset block"],
    );
    assert_fails_naming(
        &[
            "measure",
            "--mode",
            "snp",
            "--ovmf",
            &foreign,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC",
        ],
        &["foreign.fd", "reset block"],
    );
    assert_fails_naming(
        &["measure", "--mode", "sev", "--ovmf", dir_path],
        &["firmware", "not a regular file"],
    );
    assert_fails_naming(
        &[
            "measure",
            "--mode",
            "sev",
            "--ovmf",
            &common::real_firmware().to_string_lossy(),
            "--kernel",
            "/nonexistent/vmlinuz",
        ],
        &["kernel", "/nonexistent/vmlinuz"],
    );
    // SNP without a vCPU type is a usage error, as in sev-snp-measure.
    let o = host_agent(&[
        "measure", "--mode", "snp", "--ovmf", &foreign, "--vcpus", "2",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--vcpu-type"), "{}", text(&o).1);
    // Permission bits do not stop root; only check unreadable files as a normal user.
    let mut perms = std::fs::metadata(&unreadable).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o000);
    std::fs::set_permissions(&unreadable, perms).unwrap();
    if std::fs::read(&unreadable).is_err() {
        assert_fails_naming(
            &["measure", "--mode", "sev", "--ovmf", &unreadable],
            &["unreadable", "ermission"],
        );
    }
    // A file that opens but fails to read (as root, permission bits cannot make one).
    assert_fails_naming(
        &["measure", "--mode", "sev", "--ovmf", "/proc/self/mem"],
        &["firmware", "/proc/self/mem"],
    );
    assert_fails_naming(
        &[
            "measure",
            "--mode",
            "sev",
            "--ovmf",
            &foreign,
            "--kernel",
            "/proc/self/mem",
        ],
        &["kernel", "/proc/self/mem"],
    );
    // A firmware-only digest of foreign firmware is fine in SEV mode.
    assert!(
        host_agent(&["measure", "--mode", "sev", "--ovmf", &foreign])
            .status
            .success()
    );
    let _ = Path::new(dir_path);
}

#[test]
fn usage_errors_exit_2_and_help_explains() {
    let o = host_agent(&["measure", "--mode", "tdx", "--ovmf", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("expected sev, seves or snp"));
    let o = host_agent(&["measure", "--mode", "sev", "--ovmf", "x", "--initrd", "y"]);
    assert_eq!(o.status.code(), Some(2), "--initrd needs --kernel");
    let o = host_agent(&["measure", "--help"]);
    assert!(o.status.success());
    let help = text(&o).0;
    for opt in [
        "--ovmf",
        "--kernel",
        "--initrd",
        "--append",
        "--vcpus",
        "--vcpu-type",
        "--guest-features",
        "--vmm-type",
        "--output-format",
    ] {
        assert!(help.contains(opt), "help lacks {opt}");
    }
}

/// Runs `host-agent ARGS`, killing it if it has not finished within 20 s.
fn host_agent_within(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("host-agent {args:?} blocked for 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_fifo_or_a_huge_sparse_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("vmlinuz-fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let sparse = dir.path().join("initrd-sparse.img");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(40 << 30)
        .unwrap();
    let ovmf = common::real_firmware().to_string_lossy().into_owned();
    let fifo = fifo.to_str().unwrap();
    let sparse = sparse.to_str().unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let kernel = kernel.to_str().unwrap();
    for (args, needles) in [
        (
            vec!["measure", "--mode", "sev", "--ovmf", fifo],
            vec!["firmware", "vmlinuz-fifo", "not a regular file"],
        ),
        (
            vec![
                "measure", "--mode", "sev", "--ovmf", &ovmf, "--kernel", fifo,
            ],
            vec!["kernel", "vmlinuz-fifo", "not a regular file"],
        ),
        (
            vec![
                "measure", "--mode", "sev", "--ovmf", &ovmf, "--kernel", kernel, "--initrd", sparse,
            ],
            vec!["initrd", "initrd-sparse.img", "limit"],
        ),
    ] {
        let o = host_agent_within(&args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {out} {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err:?} does not mention {n:?}");
        }
    }
}
