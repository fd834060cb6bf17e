//! A node on loopback for the daemon's tests: a real `kbs` process trusting fake
//! AMD roots, the real `host-agent run` following a sample Kata configuration,
//! a datagram socket playing systemd's notify socket, and the simulated PSP and
//! shim to try launches.

use kbs_proto::admin_client;
use kbs_proto::kbsadmin::ListDigestsRequest;
use sev_sim::shim::ShimLaunch;
use sev_sim::{FakeAmdRoots, SimPlatform};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const NODE: &str = "node-1";
pub const CLASS: &str = "kata-qemu-sev";
/// NODBG | NOKS, the sample configuration's policy.
pub const POLICY: u32 = 0x3;

/// Lines a child prints on stderr, collected by a thread.
fn collect_stderr(
    child: &mut Child,
    marker: &'static str,
) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let stderr = child.stderr.take().unwrap();
    let (found_tx, found_rx) = mpsc::channel();
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(marker) {
                let _ = found_tx.send(rest.trim().to_string());
            }
            let _ = log_tx.send(line);
        }
    });
    (found_rx, log_rx)
}

use sev_sim::kbs_process::KbsProcess;

pub struct Agent {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
    notify: UnixDatagram,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Agent {
    /// Waits for a notification starting with `prefix` (READY=1, STOPPING=1...).
    pub fn wait_notify(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            self.notify
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l.starts_with(prefix)) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        let log: Vec<String> = self.log.try_iter().collect();
        panic!(
            "no {prefix} from the agent within {within:?}; got {seen:?}\nlog:\n{}",
            log.join("\n")
        );
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's /status, parsed.
    pub async fn status(&self) -> host_agent::agent::status::AgentStatus {
        let body = host_agent::status_cmd::fetch(self.addr).await.unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

/// How to start the agent beyond the rig's defaults.
#[derive(Default)]
pub struct AgentStart {
    /// Environment variables added.
    pub env: Vec<(String, String)>,
    /// Without the capabilities that let root read whatever the permission
    /// bits say, as an unprivileged agent would be.
    pub without_dac_override: bool,
}

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub sample: sample_artefacts::Sample,
    pub platform: SimPlatform,
    pub kbs: Option<KbsProcess>,
    /// Arguments the kbs is started with beyond the rig's own.
    kbs_args: Vec<std::ffi::OsString>,
    /// The kbs's --registration: "open" unless a test asks for "approved",
    /// since most tests edit configurations no operator approved.
    registration: &'static str,
    ark: PathBuf,
    pub socket: PathBuf,
    pub agent_config: PathBuf,
}

impl Rig {
    /// Writes the sample artefacts, the agent's configuration and starts the kbs.
    pub fn new(extra_agent_config: &str) -> Rig {
        Rig::build(extra_agent_config, None, "", "")
    }

    /// As [`Rig::new`], with `kbs` added to the agent's `[kbs]` table.
    pub fn with_kbs(kbs: &str) -> Rig {
        Rig::build("", None, "", kbs)
    }

    /// As [`Rig::new`], the agent following `kata_configs` (a glob) instead of the
    /// sample's directory, with `launches` added to its `[launches]` table.
    pub fn following(kata_configs: &Path, launches: &str) -> Rig {
        Rig::build("", Some(kata_configs), launches, "")
    }

    fn build(
        extra_agent_config: &str,
        kata_configs: Option<&Path>,
        launches: &str,
        kbs: &str,
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let kata = dir.path().join("kata");
        let sample = sample_artefacts::write_sample(&kata).unwrap();
        let roots = FakeAmdRoots::generate().unwrap();
        let platform = SimPlatform::new(&roots).unwrap();
        let ark = dir.path().join("fake-ark.cert");
        std::fs::write(&ark, roots.ark_cert()).unwrap();
        let socket = dir.path().join("admin.sock");
        let agent_config = dir.path().join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "kata_configs = [\"{}\"]\n\
                 node = \"{NODE}\"\n\
                 listen = \"127.0.0.1:0\"\n\
                 state_dir = \"{}\"\n\
                 stale_grace_seconds = 2\n\
                 {extra_agent_config}\n\
                 [kbs]\n\
                 admin_socket = \"{}\"\n\
                 retry_max_seconds = 1\n\
                 timeout_seconds = 2\n\
                 {kbs}\n\
                 [launches]\n\
                 host_cpu_signature = \"0xa00f11\"\n\
                 max_pod_cpus = 1\n\
                 {launches}\n",
                kata_configs.map_or_else(
                    || kata.join("configuration-*.toml").display().to_string(),
                    |k| k.display().to_string()
                ),
                dir.path().join("state").display(),
                socket.display(),
            ),
        )
        .unwrap();
        let mut rig = Rig {
            dir,
            sample,
            platform,
            kbs: None,
            kbs_args: Vec::new(),
            registration: "open",
            ark,
            socket,
            agent_config,
        };
        rig.start_kbs();
        rig
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("kbs-data")
    }

    pub fn start_kbs(&mut self) {
        let bin = sev_sim::kbs_process::kbs_beside_current_exe().unwrap();
        let mut args: Vec<std::ffi::OsString> =
            vec!["--registration".into(), self.registration.into()];
        args.extend(self.kbs_args.iter().cloned());
        self.kbs = Some(
            KbsProcess::start_with(&bin, &self.data_dir(), &self.socket, &self.ark, &args).unwrap(),
        );
    }

    /// Restarts the kbs (same data and socket) under approved registration:
    /// nodes register only launches whose inputs an operator approved.
    pub fn require_approval(&mut self) {
        self.stop_kbs();
        self.registration = "approved";
        self.start_kbs();
    }

    /// Runs `kbs admin ARGS` against the rig's kbs as an operator (over its
    /// socket, as this uid), returning standard output; panics on failure.
    pub fn kbs_admin(&self, args: &[&std::ffi::OsStr]) -> String {
        let out = self.kbs_admin_output(args);
        assert!(
            out.status.success(),
            "kbs admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As [`Rig::kbs_admin`], returning the whole output whatever the status.
    pub fn kbs_admin_output(&self, args: &[&std::ffi::OsStr]) -> std::process::Output {
        let bin = sev_sim::kbs_process::kbs_beside_current_exe().unwrap();
        Command::new(bin)
            .arg("admin")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// Restarts the kbs (same data and socket) with `args` beyond the rig's
    /// own, now and at every later start.
    pub fn restart_kbs_with(&mut self, args: Vec<std::ffi::OsString>) {
        self.stop_kbs();
        self.kbs_args = args;
        self.start_kbs();
    }

    /// Points the agent's configuration at the broker's TCP admin listener
    /// instead of its socket.
    pub fn use_tcp_admin(&self, endpoint: &str, token_file: &Path, ca_file: Option<&Path>) {
        let text = std::fs::read_to_string(&self.agent_config).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            if [
                "admin_socket",
                "admin_endpoint",
                "admin_token_file",
                "admin_ca_file",
            ]
            .iter()
            .any(|k| line.starts_with(k))
            {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line == "[kbs]" {
                out.push_str(&format!(
                    "admin_endpoint = \"{endpoint}\"\nadmin_token_file = \"{}\"\n",
                    token_file.display()
                ));
                if let Some(ca) = ca_file {
                    out.push_str(&format!("admin_ca_file = \"{}\"\n", ca.display()));
                }
            }
        }
        std::fs::write(&self.agent_config, out).unwrap();
    }

    pub fn stop_kbs(&mut self) {
        self.kbs = None;
    }

    pub fn kbs_uri(&self) -> String {
        self.kbs.as_ref().unwrap().uri()
    }

    /// Starts `host-agent run` with a notify socket of its own.
    pub fn start_agent(&self) -> Agent {
        self.start_agent_with(&AgentStart::default())
    }

    /// As [`Rig::start_agent`], started as `how` says.
    pub fn start_agent_with(&self, how: &AgentStart) -> Agent {
        let notify_path = self.dir.path().join(format!("notify-{}", rand_suffix()));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let bin = env!("CARGO_BIN_EXE_host-agent");
        let mut command = if how.without_dac_override && rustix::process::geteuid().is_root() {
            // Root keeps its uid but loses the capabilities that let it
            // ignore permission bits (util-linux's setpriv; after exec, root's
            // capabilities are its bounding set). Another user needs no drop.
            let mut c = Command::new("setpriv");
            c.args(["--bounding-set", "-dac_override,-dac_read_search", "--"])
                .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&self.agent_config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .envs(how.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (found, log) = collect_stderr(&mut child, "host-agent: listening on ");
        let addr = match found.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let lines: Vec<String> = log.try_iter().collect();
                panic!("host-agent did not start:\n{}", lines.join("\n"));
            }
        };
        Agent {
            child: Some(child),
            addr,
            log,
            notify,
        }
    }

    /// The digests the broker holds for the node and class, hexadecimal, sorted.
    pub async fn registered(&self) -> Vec<String> {
        self.registered_for(CLASS).await
    }

    /// The digests the broker holds for the node and `class`, hexadecimal, sorted.
    pub async fn registered_for(&self, class: &str) -> Vec<String> {
        let mut c = admin_client::connect_unix(&self.socket, Duration::from_secs(5))
            .await
            .unwrap();
        let listed = c
            .list_digests(ListDigestsRequest {
                node: NODE.into(),
                runtime_class: class.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut v: Vec<String> = listed
            .digests
            .into_iter()
            .filter_map(|d| d.digest.map(|d| hex::encode(d.digest)))
            .collect();
        v.sort();
        v
    }

    /// Polls until the registered set satisfies `pred`.
    pub async fn wait_registered(
        &self,
        what: &str,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        self.wait_registered_for(CLASS, what, pred).await
    }

    /// Polls until the registered set of `class` satisfies `pred`.
    pub async fn wait_registered_for(
        &self,
        class: &str,
        what: &str,
        pred: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.registered_for(class).await;
            if pred(&now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; registered: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The SEV digest of a launch of the sample artefacts with `cmdline`, by the
    /// `sev` crate (independent of the agent's measurement).
    pub fn sev_digest(&self, initrd: &Path, cmdline: &str) -> [u8; 32] {
        sev_sim::launch_digest_sev(
            &self.sample.firmware,
            &self.sample.kernel,
            Some(initrd),
            cmdline,
        )
        .unwrap()
    }

    /// A whole online pre-attestation of a guest measuring `digest`.
    pub async fn launch(&self, digest: [u8; 32]) -> Result<(), String> {
        let shim = ShimLaunch::online(self.kbs_uri(), POLICY, digest);
        sev_sim::shim::pre_attest(&self.platform, &shim)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Replaces a file the way editors and package managers do: write a
    /// temporary file beside it, then rename it over.
    pub fn replace(&self, path: &Path, data: &[u8]) {
        let tmp = path.with_extension("tmp-new");
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    pub fn kata_config_text(&self) -> String {
        std::fs::read_to_string(&self.sample.config).unwrap()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
