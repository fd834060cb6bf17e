//! A real `kbs` process on loopback for tests and benchmarks: started with a
//! data directory, an admin socket and a fake AMD root trusted through
//! `--insecure-trust-anchor`, ready once it has bound both its keybroker port
//! and its admin socket, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `kbs`.
pub struct KbsProcess {
    child: Child,
    /// The binary it runs, which also answers `kbs admin`.
    bin: PathBuf,
    /// The keybroker address, `HOST:PORT`.
    pub addr: String,
    /// The TCP admin listener's address, `HOST:PORT`, when it was started
    /// (given `--admin-listen` or `--admin-token-file` among the extra
    /// arguments).
    pub admin_addr: Option<String>,
    /// The admin socket.
    pub socket: PathBuf,
    /// What it printed on standard error after starting.
    pub log: mpsc::Receiver<String>,
}

impl Drop for KbsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `kbs` binary beside the running test or benchmark
/// (`target/<profile>/kbs` for `target/<profile>/deps/<test>`), which
/// `cargo test --workspace` builds.
pub fn kbs_beside_current_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| std::io::Error::other("the test binary has no target directory"))?;
    let bin = profile.join("kbs");
    if !bin.exists() {
        return Err(std::io::Error::other(format!(
            "{} is missing: build the key broker first (`cargo build -p kbs`; \
             `cargo test --workspace` builds it)",
            bin.display()
        )));
    }
    Ok(bin)
}

impl KbsProcess {
    /// Starts `bin --listen 127.0.0.1:0 --metrics-listen none --data-dir DATA
    /// --admin-socket SOCKET --insecure-trust-anchor ARK` and waits until it
    /// says it serves both.
    pub fn start(
        bin: &Path,
        data: &Path,
        socket: &Path,
        ark: &Path,
    ) -> std::io::Result<KbsProcess> {
        KbsProcess::start_with(bin, data, socket, ark, &[])
    }

    /// As [`KbsProcess::start`], with `extra` arguments after the others
    /// (e.g. `--admin-listen 127.0.0.1:0 --admin-token-file FILE` for the TCP
    /// admin listener, whose address then is in `admin_addr`).
    pub fn start_with(
        bin: &Path,
        data: &Path,
        socket: &Path,
        ark: &Path,
        extra: &[std::ffi::OsString],
    ) -> std::io::Result<KbsProcess> {
        std::fs::create_dir_all(data)?;
        let mut child = Command::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "none",
                "--data-dir",
            ])
            .arg(data)
            .arg("--admin-socket")
            .arg(socket)
            .arg("--insecure-trust-anchor")
            .arg(ark)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no stderr"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // "listening on ADDR" comes first, then "admin listening on ADDR" if the
        // TCP admin listener is on, "admin socket PATH" once that is bound.
        let mut addr = None;
        let mut admin_addr = None;
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                return Err(std::io::Error::other("kbs did not start within 30 s"));
            };
            if let Some(a) = line.strip_prefix("kbs: listening on ") {
                addr = Some(a.trim().to_string());
            }
            if let Some(a) = line.strip_prefix("kbs: admin listening on ") {
                admin_addr = Some(a.trim().to_string());
            }
            if line.starts_with("kbs: admin socket ") {
                break;
            }
        }
        let addr = addr.ok_or_else(|| std::io::Error::other("kbs named no address"))?;
        Ok(KbsProcess {
            child,
            bin: bin.to_path_buf(),
            addr,
            admin_addr,
            socket: socket.to_path_buf(),
            log: rx,
        })
    }

    /// The process id, e.g. to read its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL: no shutdown, as a node dies) and
    /// waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `http://ADDR`, for gRPC clients.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `kbs admin --socket SOCKET ARGS...` against this broker, with nothing
    /// on standard input; what it did.
    pub fn admin(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(&self.bin)
            .arg("admin")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// As [`KbsProcess::admin`], which must succeed: its standard output, or
    /// an error carrying the arguments and what it said on standard error.
    pub fn admin_ok(&self, args: &[&str]) -> std::io::Result<String> {
        let out = self.admin(args)?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "kbs admin {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        String::from_utf8(out.stdout).map_err(std::io::Error::other)
    }
}
