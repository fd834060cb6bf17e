//! `demo`: the whole attested flow on one machine, with no SEV hardware and
//! nothing installed.
//!
//! It plays every part the way the real ones behave, using the project's own
//! binaries as separate processes: the key broker (`kbs`, embedded store in a
//! temporary directory), the host agent (`host-agent run`, following a sample
//! Kata configuration with inotify), the Kata shim and the AMD PSP (the
//! simulator, which does the PSP's real cryptography and measures the launch
//! with the `sev` crate, independently of the host agent), and the guest client
//! (`guest-client verify` over the secrets as the guest kernel exposes them).
//! Everything it starts is stopped and its directory removed at the end, also
//! when a step fails.

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use kbs_proto::admin_client;
use kbs_proto::kbsadmin::ListDigestsRequest;
use sev_sim::guest_view::GuestView;
use sev_sim::kbs_process::KbsProcess;
use sev_sim::shim::{pre_attest, ShimLaunch};
use sev_sim::{FakeAmdRoots, SimPlatform};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The node name the demo's host agent registers under.
const NODE: &str = "demo-node";
/// The runtime class the sample configuration gives (configuration-qemu-sev.toml).
const CLASS: &str = "kata-qemu-sev";
/// The option the demo adds to `kernel_params` to show a configuration change.
const EDIT: &str = "demo.edited=1";
/// The repository whose images the demo's policy requires signed.
const SIGNED_REPOSITORY: &str = "registry.example/apps/hello";

/// Runs the attested flow end to end on this machine: a key broker, the host
/// agent following a sample Kata SEV configuration, a cosign key pair with a
/// `verify` image policy and an image-encryption key, simulated SEV launches, the
/// guest client's verification and report, a configuration edit followed live,
/// a stale launch refused, and what the broker recorded.
///
/// Needs no SEV hardware, cluster or database. The `kbs`, `host-agent` and
/// `guest-client` binaries are taken from the directory of this program (where
/// cargo builds them) unless --bin-dir says otherwise.
#[derive(Debug, Parser)]
#[command(name = "demo", version)]
struct Args {
    /// Directory holding the kbs, host-agent and guest-client binaries.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Keep the temporary directory (configuration, broker database, logs) and
    /// print its path, instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Add a last step with a real Trustee v0.21.0 (the relying party of SNP
    /// guests): the broker keeps its SNP reference values. Needs Trustee's
    /// binaries, which `bash scripts/setup-test-env` builds (or TRUSTEE_BIN_DIR).
    #[arg(long)]
    trustee: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The binaries the demo starts.
struct Bins {
    kbs: PathBuf,
    host_agent: PathBuf,
    guest_client: PathBuf,
}

impl Bins {
    fn find(dir: Option<&Path>) -> anyhow::Result<Bins> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot find this program's own path")?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("this program's path has no directory"))?,
        };
        let pick = |name: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{} is missing: build it first (scripts/demo builds kbs, host-agent and \
                     guest-client), or give --bin-dir",
                    p.display()
                )
            }
        };
        Ok(Bins {
            kbs: pick("kbs")?,
            host_agent: pick("host-agent")?,
            guest_client: pick("guest-client")?,
        })
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Asks the process to stop and waits for it; true if it exited cleanly.
    fn stop(&mut self) -> bool {
        if let Some(pid) =
            rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn step(n: u32, title: &str) {
    println!();
    println!("== {n}. {title}");
}

/// Prints `text` indented, as the output of a command.
fn show(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

/// Runs one of the project's binaries and returns its standard output, or an
/// error with what it printed.
fn run_tool(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    run_tool_with(bin, args, &[])
}

/// Like [`run_tool`], with extra environment variables.
fn run_tool_with(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes a fresh 32-byte key (an AES-256 key, as encrypted images use) that
/// only its owner can read.
fn write_random_key(path: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read /dev/urandom")?;
    write_private(path, &key)
}

/// Writes a new file only its owner can read.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A free loopback port for the agent's status server, so that `host-agent
/// status` can find it from the configuration.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The digests the broker holds for the demo's node: mode, vCPUs and the
/// digest in hexadecimal, sorted.
type Registered = Vec<(String, u32, String)>;

async fn registered(admin: &mut admin_client::Client) -> anyhow::Result<Registered> {
    let listed = admin
        .list_digests(ListDigestsRequest {
            node: NODE.into(),
            runtime_class: CLASS.into(),
        })
        .await
        .map_err(|s| anyhow!("ListDigests: {}", s.message()))?
        .into_inner();
    let mut v: Registered = listed
        .digests
        .into_iter()
        .filter_map(|d| d.digest)
        .map(|d| (d.mode, d.vcpus, hex::encode(d.digest)))
        .collect();
    v.sort();
    Ok(v)
}

/// Polls the broker until its digests differ from `before`; returns them and
/// how long it took.
async fn wait_change(
    admin: &mut admin_client::Client,
    before: &[(String, u32, String)],
    within: Duration,
) -> anyhow::Result<(Registered, Duration)> {
    let start = Instant::now();
    loop {
        let now = registered(admin).await?;
        if !now.is_empty() && now != before {
            return Ok((now, start.elapsed()));
        }
        if start.elapsed() > within {
            bail!("the broker's digests did not change within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The launch Kata builds from the configuration (artefacts and command line),
/// as the host agent derives it.
fn kata_launch(host_agent: &Path, config: &Path) -> anyhow::Result<serde_json::Value> {
    let text = run_tool(
        host_agent,
        &[
            "digests",
            "--kata-config",
            &config.to_string_lossy(),
            "--pod-cpus",
            "0",
            "--fips",
            "false",
            "--json",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&text).context("host-agent digests --json")?;
    v.get(0)
        .cloned()
        .ok_or_else(|| anyhow!("host-agent digests gave no launch"))
}

/// What the PSP measures for that launch: computed by the `sev` crate from the
/// files and command line, not by the host agent.
fn psp_digest(launch: &serde_json::Value) -> anyhow::Result<[u8; 32]> {
    let field = |k: &str| -> anyhow::Result<PathBuf> {
        launch
            .get(k)
            .and_then(serde_json::Value::as_str)
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("the launch has no {k}"))
    };
    let cmdline = launch
        .get("cmdline")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| anyhow!("the launch has no cmdline"))?;
    let initrd = field("initrd")?;
    sev_sim::launch_digest_sev(
        &field("firmware")?,
        &field("kernel")?,
        Some(&initrd),
        cmdline,
    )
    .map_err(|e| anyhow!("measuring the launch: {e}"))
}

fn policy_of(launch: &serde_json::Value) -> u32 {
    launch
        .get("policy")
        .and_then(serde_json::Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0x3)
}

fn guest_verify(bins: &Bins, view: &GuestView, kbs: &str) -> anyhow::Result<(bool, String)> {
    let out = view
        .verify_command(&bins.guest_client, kbs, "online")
        .stdin(Stdio::null())
        .output()
        .context("cannot run guest-client")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Starts `host-agent run` and waits until it serves its status.
fn start_agent(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Daemon> {
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no pipe from the host agent"))?;
    let mut file = std::fs::File::create(log)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if line.starts_with("host-agent: listening on ") {
                let _ = tx.send(());
            }
        }
    });
    let daemon = Daemon { child };
    rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
        anyhow!(
            "the host agent did not start; its log is {} (run with --keep to read it)",
            log.display()
        )
    })?;
    Ok(daemon)
}

/// Writes `config` with `kernel_params` edited to a new file beside it, to be
/// approved and then renamed over the old one (as an editor saves).
fn stage_kernel_params_edit(config: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(config)?;
    let mut done = false;
    let edited: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix("kernel_params = \"") {
            Some(rest) if !done => {
                done = true;
                format!("kernel_params = \"{EDIT} {rest}")
            }
            _ => line.to_string(),
        })
        .collect();
    if !done {
        bail!("{} has no kernel_params line", config.display());
    }
    let tmp = config.with_extension("toml.new");
    std::fs::write(&tmp, edited.join("\n") + "\n")?;
    Ok(tmp)
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let bins = Bins::find(args.bin_dir.as_deref())?;
    let tmp = tempfile::Builder::new()
        .prefix("sev-attestation-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let dir = tmp.path().to_path_buf();
    let outcome = flow(&bins, &dir, args.trustee).await;
    if args.keep {
        let kept = tmp.keep();
        println!();
        println!("kept {}", kept.display());
    } else {
        tmp.close()
            .with_context(|| format!("cannot remove {}", dir.display()))?;
        println!();
        println!(
            "== cleaned up: broker and agent stopped, {} removed",
            dir.display()
        );
    }
    outcome
}

async fn flow(bins: &Bins, dir: &Path, with_trustee: bool) -> anyhow::Result<()> {
    println!("Attested confidential serverless, end to end, on this machine (simulated SEV).");

    step(
        1,
        "Key broker: started with an embedded store in a temporary directory",
    );
    let roots = FakeAmdRoots::generate().map_err(|e| anyhow!("simulated AMD roots: {e}"))?;
    let platform = SimPlatform::new(&roots).map_err(|e| anyhow!("simulated platform: {e}"))?;
    let ark = dir.join("simulated-ark.cert");
    std::fs::write(&ark, roots.ark_cert())?;
    let socket = dir.join("kbs-admin.sock");
    // The TCP admin listener, on loopback, is where the node's own token works.
    let kbs = KbsProcess::start_with(
        &bins.kbs,
        &dir.join("kbs-data"),
        &socket,
        &ark,
        &["--admin-listen".into(), "127.0.0.1:0".into()],
    )
    .context("starting the key broker")?;
    let admin_addr = kbs
        .admin_addr
        .clone()
        .ok_or_else(|| anyhow!("the key broker started no TCP admin listener"))?;
    let mut admin = admin_client::connect_unix(&socket, Duration::from_secs(5))
        .await
        .context("cannot reach the broker's admin socket")?;
    println!(
        "   keybroker protocol on {}, admin socket {}",
        kbs.addr,
        socket.display()
    );
    println!("   it trusts only AMD's roots, plus the simulator's root for this demo");
    println!("   registration by approved inputs (the default): a node registers only launches");
    println!("   whose firmware, kernel, initrd and Kata configuration an operator approved");

    step(
        2,
        "Operator: approves the sample's inputs and gives the node a token of its own",
    );
    let sample = sample_artefacts::write_sample(&dir.join("kata"))?;
    let sock = socket.to_string_lossy().into_owned();
    let kbs_admin = |args: &[&str]| -> anyhow::Result<String> {
        println!("   $ kbs admin {}", args.join(" "));
        let mut all = vec!["admin", "--socket", sock.as_str()];
        all.extend_from_slice(args);
        run_tool(&bins.kbs, &all)
    };
    let path = |p: &Path| p.to_string_lossy().into_owned();
    // The sample is CoCo 0.8's SEV shape; pods get 0 to 2 CPUs.
    let approve_config = |file: &Path| -> anyhow::Result<String> {
        kbs_admin(&[
            "approve",
            "kata-config",
            &path(file),
            "--runtime-class",
            CLASS,
            "--kata-version",
            "CC-0.8.0",
            "--pod-cpus",
            "0-2",
        ])
    };
    for (kind, file) in [
        ("firmware", &sample.firmware),
        ("kernel", &sample.kernel),
        ("initrd", &sample.initrd),
    ] {
        show(&kbs_admin(&["approve", kind, &path(file)])?);
    }
    show(&approve_config(&sample.config)?);
    let token = kbs_admin(&["token", "create", "--node", NODE])?;
    let token_file = dir.join("node.token");
    write_private(&token_file, token.trim().as_bytes())?;
    println!(
        "   the token went to {} (shown once); it may register and list {NODE}'s digests, nothing else",
        token_file.display()
    );

    step(
        3,
        "Host agent: follows the Kata configuration; the broker derives and registers the digests",
    );
    let port = free_port()?;
    let agent_config = dir.join("host-agent.toml");
    let agent_toml = |kbs_table: &str| {
        format!(
            "kata_configs = [\"{}\"]\nnode = \"{NODE}\"\nlisten = \"127.0.0.1:{port}\"\n\
             state_dir = \"{}\"\n[kbs]\n{kbs_table}\n[launches]\n\
             host_cpu_signature = \"0xa00f11\"\nmax_pod_cpus = 2\n\
             # The sample is written in CoCo 0.8's shape: SEV with pre-attestation.\n\
             kata_version = \"CC-0.8.0\"\n",
            sample.config.display(),
            dir.join("agent-state").display(),
        )
    };
    std::fs::write(
        &agent_config,
        agent_toml(&format!(
            "admin_endpoint = \"http://{admin_addr}\"\nadmin_token_file = \"{}\"",
            token_file.display()
        )),
    )?;
    // `provision` sets secrets and resources: an operator's job, over the socket.
    let operator_config = dir.join("host-agent-operator.toml");
    std::fs::write(
        &operator_config,
        agent_toml(&format!("admin_socket = \"{}\"", socket.display())),
    )?;
    println!(
        "   {} names synthetic firmware, kernel and initrd",
        sample.config.display()
    );
    let started = Instant::now();
    let mut agent = start_agent(&bins.host_agent, &agent_config, &dir.join("host-agent.log"))?;
    let (digests, _) = wait_change(&mut admin, &[], Duration::from_secs(30)).await?;
    println!(
        "   registered {} digests for {CLASS} on {NODE}, {} ms after start (pods with 0, 1, 2 CPUs);",
        digests.len(),
        started.elapsed().as_millis()
    );
    println!("   the broker measured the launches itself and they matched the agent's:");
    for (mode, vcpus, d) in &digests {
        println!("     {mode} {vcpus} vCPU  {d}");
    }

    step(
        4,
        "Images: a cosign key pair, the signature policy and the key of encrypted images",
    );
    let prefix = dir.join("cosign");
    let text = run_tool_with(
        &bins.host_agent,
        &[
            "cosign",
            "generate-key-pair",
            "--output-key-prefix",
            &prefix.to_string_lossy(),
        ],
        &[("COSIGN_PASSWORD", "")],
    )?;
    show(&text);
    let image_key = dir.join("image-encryption.key");
    write_random_key(&image_key)?;
    let text = run_tool(
        &bins.host_agent,
        &[
            "provision",
            "--config",
            &operator_config.to_string_lossy(),
            "--signature-policy",
            "verify",
            "--image",
            SIGNED_REPOSITORY,
            "--cosign-key",
            &prefix.with_extension("pub").to_string_lossy(),
            "--image-encryption-key",
            &image_key.to_string_lossy(),
        ],
    )?;
    show(&text);
    println!(
        "   (images of {SIGNED_REPOSITORY} are then signed with `host-agent cosign sign IMAGE@DIGEST --key cosign.key`)"
    );

    step(
        5,
        "Launch: the Kata shim pre-attests, the PSP measures, the broker releases secrets",
    );
    let launch = kata_launch(&bins.host_agent, &sample.config)?;
    let measured = psp_digest(&launch)?;
    println!(
        "   the PSP measured {} (firmware, kernel, initrd and the command line Kata builds)",
        hex::encode(measured)
    );
    let uri = kbs.uri();
    let launched = pre_attest(
        &platform,
        &ShimLaunch::online(uri.clone(), policy_of(&launch), measured),
    )
    .await
    .map_err(|e| anyhow!("the launch was refused: {e}"))?;
    println!(
        "   launch {} verified; secrets injected into the guest:",
        launched.launch_id
    );
    let entries = sev_sim::efi_secret::parse_table(&launched.secret_table)
        .map_err(|e| anyhow!("the injected table: {e}"))?;
    for (guid, data) in &entries {
        println!("     {guid}  {} bytes  ({})", data.len(), entry_name(guid));
    }

    step(
        6,
        "Guest: the guest client checks the secrets arrived through the PSP path and reports",
    );
    let view = GuestView::write(&dir.join("guest"), &launched.secret_table, "quiet")
        .map_err(|e| anyhow!("writing the guest's view: {e}"))?;
    let (ok, text) = guest_verify(bins, &view, &kbs.addr)?;
    show(&text);
    if !ok {
        bail!("the guest client's verification failed");
    }

    step(
        7,
        "Configuration change: the operator approves the edited file, the node installs it",
    );
    let before = registered(&mut admin).await?;
    let old_launch = launch;
    let staged = stage_kernel_params_edit(&sample.config)?;
    show(&approve_config(&staged)?);
    std::fs::rename(&staged, &sample.config)?;
    let (after, took) = wait_change(&mut admin, &before, Duration::from_secs(30)).await?;
    println!(
        "   added {EDIT:?} to kernel_params; the broker held the new digests {:.1} ms after the save",
        took.as_secs_f64() * 1000.0
    );
    for ((_, vcpus, old), (_, _, new)) in before.iter().zip(&after) {
        println!("     {vcpus} vCPU  {}... -> {}...", short(old), short(new));
    }
    let new_launch = kata_launch(&bins.host_agent, &sample.config)?;
    let new_digest = psp_digest(&new_launch)?;
    pre_attest(
        &platform,
        &ShimLaunch::online(uri.clone(), policy_of(&new_launch), new_digest),
    )
    .await
    .map_err(|e| anyhow!("a launch with the new command line was refused: {e}"))?;
    println!("   a guest launched with the new command line gets its secrets");

    step(
        8,
        "Stale launch: a guest still measuring the old command line is refused",
    );
    let stale = psp_digest(&old_launch)?;
    match pre_attest(
        &platform,
        &ShimLaunch::online(uri, policy_of(&old_launch), stale),
    )
    .await
    {
        Ok(_) => bail!("the broker released secrets to a stale launch"),
        Err(e) => {
            let reason = e
                .status()
                .map(|s| format!("{:?}: {}", s.code(), s.message()))
                .unwrap_or_else(|| e.to_string());
            println!("   refused, {reason}");
        }
    }

    step(
        9,
        "Fleet view: what the broker recorded, and the agent's status",
    );
    let text = run_tool(
        &bins.kbs,
        &["admin", "--socket", &socket.to_string_lossy(), "records"],
    )?;
    show(&text);
    println!();
    let text = run_tool(
        &bins.host_agent,
        &["status", "--config", &agent_config.to_string_lossy()],
    )?;
    show(&text);

    if !agent.stop() {
        bail!("the host agent did not stop cleanly on SIGTERM");
    }
    drop(kbs);
    if with_trustee {
        trustee_step(bins, dir, &sample, &ark, &socket)?;
    }
    Ok(())
}

/// Step 10: the broker as the single writer of a real Trustee's SNP
/// reference values.
fn trustee_step(
    bins: &Bins,
    dir: &Path,
    sample: &sample_artefacts::Sample,
    ark: &Path,
    socket: &Path,
) -> anyhow::Result<()> {
    use sev_sim::trustee_process::{TrusteeOptions, TrusteeProcess};
    step(
        10,
        "Trustee: the broker keeps a real Trustee's SNP reference values",
    );
    let trustee = TrusteeProcess::start(TrusteeOptions {
        rust_log: "warn".into(),
        ..TrusteeOptions::default()
    })
    .context("starting Trustee (build it with: bash scripts/setup-test-env)")?;
    println!(
        "   Trustee v0.21.0 (KBS with its built-in RVPS) on {}",
        trustee.url()
    );
    // The sample as an SNP guest of Kata 4.1.
    let snp_config = sample.config.with_file_name("configuration-qemu-snp.toml");
    let text = std::fs::read_to_string(&sample.config)?
        .replace("sev_snp_guest = false", "sev_snp_guest = true");
    std::fs::write(&snp_config, text)?;
    let out = run_tool(
        &bins.host_agent,
        &[
            "digests",
            "--kata-config",
            &snp_config.to_string_lossy(),
            "--kata-version",
            "4.1.0",
            "--pod-cpus",
            "0,1,2",
            "--json",
        ],
    )?;
    let launches: Vec<serde_json::Value> =
        serde_json::from_str(&out).context("host-agent digests --json")?;
    let digests: Vec<String> = launches
        .iter()
        .filter_map(|l| {
            Some(format!(
                "snp:{}:{}:EPYC-v4",
                l["digest"].as_str()?,
                l["vcpus"].as_u64()?
            ))
        })
        .collect();
    println!(
        "   the sample as a Kata 4.1 SNP guest: {} launches (pods with 0, 1, 2 CPUs)",
        digests.len()
    );
    let key = trustee.admin_key_path().to_string_lossy().into_owned();
    let args = [
        "--trustee-url",
        &trustee.url(),
        "--trustee-admin-key",
        &key,
        "--trustee-admin-issuer",
        trustee.issuer(),
    ];
    println!(
        "   $ kbs ... --trustee-url {} --trustee-admin-key {key} --trustee-admin-issuer {}",
        trustee.url(),
        trustee.issuer()
    );
    let kbs = KbsProcess::start_with(
        &bins.kbs,
        &dir.join("kbs-data"),
        socket,
        ark,
        &args
            .iter()
            .map(Into::into)
            .collect::<Vec<std::ffi::OsString>>(),
    )
    .context("restarting the key broker with Trustee")?;
    let sock = socket.to_string_lossy().into_owned();
    let kbs_admin = |args: &[&str]| -> anyhow::Result<String> {
        println!("   $ kbs admin {}", args.join(" "));
        let mut all = vec!["admin", "--socket", sock.as_str()];
        all.extend_from_slice(args);
        run_tool(&bins.kbs, &all)
    };
    let mut replace = vec![
        "digests",
        "replace",
        "--node",
        NODE,
        "--runtime-class",
        "kata-qemu-snp",
    ];
    for d in &digests {
        replace.push("--digest");
        replace.push(d);
    }
    show(&kbs_admin(&replace)?);
    show(&kbs_admin(&[
        "trustee",
        "tcb",
        "set",
        "--bootloader",
        "10",
        "--tee",
        "0",
        "--snp",
        "23",
        "--microcode",
        "213",
    ])?);
    let want: Vec<String> = launches
        .iter()
        .filter_map(|l| l["digest"].as_str().map(str::to_string))
        .collect();
    let started = Instant::now();
    let held = loop {
        let held = trustee
            .get_reference_value("snp_launch_measurement")
            .map_err(|e| anyhow!("reading Trustee: {e}"))?;
        let list: Vec<String> = held
            .as_ref()
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if want.iter().all(|w| list.contains(w)) {
            break list;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("Trustee did not get the SNP measurements within 20 s: it holds {held:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "   Trustee holds them {} ms later (read with Trustee's kbs-client get-reference-value):",
        started.elapsed().as_millis()
    );
    for h in &held {
        println!("     snp_launch_measurement  {h}");
    }
    show(&kbs_admin(&["trustee", "status"])?);
    println!("   Trustee affirms only what the fleet registered; with the affirming resource");
    println!("   policy (kbs-client config set-resource-policy --affirming) that decides releases");
    drop(kbs);
    drop(trustee);
    Ok(())
}

/// What a secret table entry is, by its GUID.
fn entry_name(guid: &str) -> &'static str {
    use guest_client::entries::{BUNDLE_GUID, CONNECTION_GUID, REPORT_KEY_GUID};
    if guid == CONNECTION_GUID {
        "connection key for the guest's online requests"
    } else if guid == BUNDLE_GUID {
        "secret bundle"
    } else if guid == REPORT_KEY_GUID {
        "report key for the guest client"
    } else {
        "other"
    }
}
