//! Starting the real `kbs` binary on loopback in a temporary data directory, and
//! restarting or killing it, for the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `kbs` process.
pub struct Kbs {
    child: Child,
    /// The keybroker address it bound.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Extra arguments it was started with (kept for restarts).
    args: Vec<String>,
    /// Everything it printed on stderr after the listening line.
    pub log: mpsc::Receiver<String>,
}

impl Kbs {
    /// Starts `kbs --listen 127.0.0.1:0 --data-dir DIR ARGS...` and waits for it
    /// to say where it listens.
    pub fn start(data_dir: &Path, args: &[String]) -> Kbs {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kbs"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--metrics-listen", "none"])
            .args([
                "--admin-socket",
                &data_dir.join("admin.sock").to_string_lossy(),
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kbs");
        let stderr = child.stderr.take().expect("kbs stderr");
        let (addr_tx, addr_rx) = mpsc::channel();
        let (log_tx, log_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("kbs: listening on ") {
                    let _ = addr_tx.send(a.trim().to_string());
                }
                let _ = log_tx.send(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                let log: Vec<String> = log_rx.try_iter().collect();
                panic!("kbs did not start listening:\n{}", log.join("\n"));
            }
        };
        Kbs {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            args: args.to_vec(),
            log: log_rx,
        }
    }

    /// The keybroker URI for gRPC clients.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process hard (SIGKILL, no shutdown) and starts it again on the
    /// same data directory.
    pub fn crash_and_restart(mut self) -> Kbs {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Kbs::start(&self.data_dir.clone(), &self.args.clone())
    }

    /// Stops the process with SIGTERM (a clean shutdown) and waits for it.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("kbs exit")
    }

    /// The lines logged so far.
    pub fn logged(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
