#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The shipped unit file, checked by systemd itself: `systemd-analyze verify`
//! finds no problem in it, and `systemd-analyze security` rates its sandbox no
//! worse than the exposure recorded at the top of the file. Also the logger:
//! it installs once, and it recognises a stderr connected to the journal.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The exposure `systemd-analyze security --offline=yes` gave the unit with
/// systemd 252 (lower is better; 10 is no sandbox at all).
const MAX_EXPOSURE: f64 = 1.6;

const INSTALLED_BINARY: &str = "/usr/local/bin/host-agent";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Runs `systemd-analyze` with `args`; fails the test, rather than skipping it,
/// when the tool is not installed.
fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze")
        .args(args)
        .env("SYSTEMD_PAGER", "cat")
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not installed: install the `systemd` package \
             (apt-get install systemd) to check systemd/host-agent.service"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn systemd_version() -> String {
    let out = systemd_analyze(&["--version"]);
    text(&out)
        .lines()
        .next()
        .unwrap_or("unknown version")
        .to_string()
}

/// The unit as installed, except that it runs the binary just built, so that
/// `verify` finds an executable; beside it the key broker's unit it is ordered
/// after, likewise pointed at an existing executable.
fn unit_in_temp_dir() -> (tempfile::TempDir, PathBuf) {
    let binary = env!("CARGO_BIN_EXE_host-agent");
    let dir = tempfile::tempdir().unwrap();

    let unit = std::fs::read_to_string(repo_file("systemd/host-agent.service")).unwrap();
    let exec_start = format!("ExecStart={INSTALLED_BINARY} run");
    assert!(
        unit.lines()
            .any(|l| l == exec_start || l.starts_with(&format!("{exec_start} "))),
        "host-agent.service no longer starts `{INSTALLED_BINARY} run`: update this test"
    );
    let path = dir.path().join("host-agent.service");
    std::fs::write(&path, unit.replace(INSTALLED_BINARY, binary)).unwrap();

    let kbs = std::fs::read_to_string(repo_file("systemd/kbs.service")).unwrap();
    std::fs::write(
        dir.path().join("kbs.service"),
        kbs.replace("/usr/local/bin/kbs", binary),
    )
    .unwrap();
    (dir, path)
}

#[test]
fn unit_file_verifies_cleanly() {
    let (_dir, unit) = unit_in_temp_dir();
    let unit = unit.to_str().unwrap();
    // Only our unit decides the outcome: the units it pulls in come from the
    // machine running the test, whose own problems are not ours.
    let out = systemd_analyze(&["verify", "--man=no", "--recursive-errors=no", unit]);
    let report = text(&out);
    let ours: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("host-agent.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}) found problems in host-agent.service ({}):\n{report}",
        systemd_version(),
        out.status
    );
}

#[test]
fn unit_sandbox_exposure_does_not_grow() {
    let unit = repo_file("systemd/host-agent.service");
    let out = systemd_analyze(&[
        "security",
        "--offline=yes",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let report = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze security failed ({}):\n{report}",
        out.status
    );

    // "→ Overall exposure level for host-agent.service: 1.6 OK 🙂"
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for host-agent.service:"))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    let score: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure level in {line:?}"));
    assert!(
        score <= MAX_EXPOSURE,
        "host-agent.service's exposure grew to {score} (was {MAX_EXPOSURE} with systemd 252; \
         this is {}). Restore the sandbox, or record the new figure at the top of the \
         unit, in systemd/README.md and here if the change is deliberate.\n{report}",
        systemd_version()
    );
}

#[test]
fn logging_installs_once() {
    // This test binary has no other logger, so the first call must succeed.
    let first = host_agent::systemd::init_logging("info");
    assert!(first.is_ok(), "{first:?}");
    let second = host_agent::systemd::init_logging("info");
    assert!(second.is_err(), "a second logger was installed: {second:?}");
}

/// Set in the environment of the child process of `journal_stream_is_recognised`.
const CHILD: &str = "HOST_AGENT_TEST_LOGGING_CHILD";

/// Runs `logging_child` of this test binary with stderr sent to a file, and
/// `JOURNAL_STREAM` naming that file or another one. Returns the child's
/// stdout and stderr.
fn run_logging_child(journal_stream_is_stderr: bool) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let other = std::fs::File::create(dir.path().join("other")).unwrap();
    let named = if journal_stream_is_stderr {
        &stderr
    } else {
        &other
    };
    let meta = named.metadata().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "logging_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(out.status.success(), "child failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn journal_stream_is_recognised() {
    // JOURNAL_STREAM names stderr: the journal, or, where no journald listens
    // (a container), plain lines to that same stream, with a warning.
    let (stdout, stderr) = run_logging_child(true);
    assert!(
        stdout.contains("target=Journal")
            || (stdout.contains("target=Plain") && stderr.contains("cannot reach journald")),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // JOURNAL_STREAM inherited, but stderr is a file: plain lines, no colours.
    let (stdout, stderr) = run_logging_child(false);
    assert!(stdout.contains("target=Plain"), "stdout:\n{stdout}");
    assert!(stderr.contains("child logs"), "stderr:\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colours in a file:\n{stderr}");
}

/// The child side of `journal_stream_is_recognised`; does nothing otherwise.
#[test]
fn logging_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let target = host_agent::systemd::init_logging("info").unwrap();
    println!("target={target:?}");
    if target != host_agent::systemd::LogTarget::Journal {
        tracing::info!(node = "node-1", "child logs");
    }
}
