//! Finding the independent oracle and the shared test inputs the way CI does.
//!
//! Nothing here skips: a missing input fails the test with the command that
//! provides it, so a green run always means the comparison really ran.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const SETUP: &str = "run `scripts/setup-test-env` from the repository root (it creates .venv with \
                     sev-snp-measure 0.0.13 and fetches a Debian kernel into .cache/testdata)";

/// Python with sev-snp-measure 0.0.13 installed.
pub fn oracle_python() -> PathBuf {
    let p = std::env::var_os("SEV_SNP_MEASURE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args([
            "-c",
            "import importlib.metadata as m; assert m.version('sev-snp-measure') == '0.0.13'",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "sev-snp-measure 0.0.13 is not available to {}: {SETUP}",
        p.display()
    );
    p
}

/// The `sev-snp-measure` command of the oracle's environment.
pub fn oracle_cli() -> PathBuf {
    let py = oracle_python();
    py.with_file_name("sev-snp-measure")
}

/// The shared test data directory (real AmdSev firmware, Kata configurations).
pub fn shared_testdata() -> PathBuf {
    let p = std::env::var_os("SEV_TESTDATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/testdata"));
    assert!(
        p.join("firmware/OVMF.amdsev.fd").is_file(),
        "shared test data not found at {} (set SEV_TESTDATA_DIR to the folder holding \
         firmware/OVMF.amdsev.fd and kata/)",
        p.display()
    );
    p
}

/// The real AmdSev OVMF build.
pub fn real_firmware() -> PathBuf {
    shared_testdata().join("firmware/OVMF.amdsev.fd")
}

/// A real Debian kernel image.
pub fn real_kernel() -> PathBuf {
    let p = root().join(".cache/testdata/vmlinuz");
    assert!(p.is_file(), "no Debian kernel at {}: {SETUP}", p.display());
    p
}

/// Runs the batch oracle over JSON cases; one answer (hex digest or `error: ...`)
/// per case.
pub fn oracle_batch(cases: &[serde_json::Value]) -> Vec<String> {
    let script = root().join("tests/oracle/ssm_oracle.py");
    let mut child = Command::new(oracle_python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the oracle");
    let mut input = String::new();
    for c in cases {
        input.push_str(&c.to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("oracle output");
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "oracle failed");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines.len(),
        cases.len(),
        "oracle answered {} of {} cases",
        lines.len(),
        cases.len()
    );
    lines
}

/// Runs the `host-agent` binary built for these tests.
pub fn host_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host-agent"))
        .args(args)
        .output()
        .unwrap()
}

/// Installs a `containerd-shim-kata-v2` in `tree/bin` that answers `--version`
/// as Kata's shim does, for `release`; written beside and renamed over, as a
/// package manager replaces it.
pub fn install_kata_shim(tree: &std::path::Path, release: &str) {
    use std::os::unix::fs::PermissionsExt;
    let bin = tree.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tmp = bin.join(".containerd-shim-kata-v2.new");
    std::fs::write(
        &tmp,
        format!(
            "#!/bin/sh\necho 'Kata Containers containerd shim (Golang): id: \"io.containerd.kata.v2\", version: {release}, commit: 0123456789abcdef'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, bin.join("containerd-shim-kata-v2")).unwrap();
}
