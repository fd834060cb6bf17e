//! Host agent benchmark: the time from the rename of an edited Kata
//! configuration (or a replaced initrd) to the new digests being readable at a
//! real key broker, and what the agent costs when idle.
//!
//! It starts release-built `kbs` and `host-agent run` processes on loopback over
//! a sample configuration with a 32 MiB initrd, waits for the agent's READY,
//! then times edits: each is written to a temporary file, renamed over the
//! original, and the broker's digests for the node are polled over the admin
//! socket until they change.
//!
//! The broker runs with approved registration (its default), so each
//! registration includes the broker's own derivation of the launches. As an
//! operator would, the bench approves every edited configuration and every
//! replaced initrd before renaming it into place; only the rename to
//! registered is timed.

use anyhow::{bail, Context};
use clap::Parser;
use kbs_load::percentile;
use kbs_proto::admin_client;
use kbs_proto::kbsadmin::{ApproveRequest, ListDigestsRequest};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Times the host agent's reaction to edits.
#[derive(Debug, Parser)]
struct Args {
    /// The kbs binary.
    #[arg(long, default_value = "target/release/kbs")]
    kbs_bin: PathBuf,
    /// The host-agent binary.
    #[arg(long, default_value = "target/release/host-agent")]
    agent_bin: PathBuf,
    /// kernel_params edits to time.
    #[arg(long, default_value_t = 100)]
    edits: usize,
    /// Initrd replacements to time.
    #[arg(long, default_value_t = 20)]
    initrd_replacements: usize,
    /// Initrd size in MiB.
    #[arg(long, default_value_t = 32)]
    initrd_mib: usize,
    /// Write the agent's log (at info level) to this file.
    #[arg(long, value_name = "FILE")]
    agent_log: Option<PathBuf>,
    /// Seconds to watch the idle agent.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Follow the configuration as an SEV-SNP guest of Kata 4.1 (kernel hashes,
    /// no nr_cpus) instead of CC-0.8.0's SEV guest.
    #[arg(long)]
    snp: bool,
    /// The largest pod CPU count to register launches for (0 up to it).
    #[arg(long, default_value_t = 1)]
    max_pod_cpus: u32,
    /// The broker's --registration: "approved" (it derives every launch
    /// itself) or "open" (it takes the agent's digests).
    #[arg(long, default_value = "approved")]
    registration: String,
}

/// Approves one input over the admin socket, as an operator.
async fn approve(client: &mut admin_client::Client, request: ApproveRequest) -> anyhow::Result<()> {
    let what = format!("{} {}", request.kind, request.id);
    client
        .approve(request)
        .await
        .map_err(|s| anyhow::anyhow!("approving {what}: {}", s.message()))?;
    Ok(())
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// The approval of a Kata configuration's text for the bench's class.
fn config_approval(text: &str, args: &Args) -> ApproveRequest {
    ApproveRequest {
        kind: "kata-config".into(),
        data: text.as_bytes().to_vec(),
        runtime_class: CLASS.get().copied().unwrap_or("kata-qemu-sev").into(),
        kata_versions: vec![if args.snp { "4.1.0" } else { "CC-0.8.0" }.into()],
        min_pod_cpus: 0,
        max_pod_cpus: args.max_pod_cpus.max(1),
        ..ApproveRequest::default()
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:<28} n={:<4} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

/// Context switches per thread of `pid` (each is a wake-up or a preemption).
fn context_switches(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let mut total = 0;
            if let Ok(text) = std::fs::read_to_string(t.path().join("status")) {
                for line in text.lines() {
                    if let Some(v) = line
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                    {
                        total += v.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
            out.insert(t.file_name().to_string_lossy().into_owned(), total);
        }
    }
    out
}

/// Wake-ups between two snapshots: the growth of every thread alive in the
/// second, counting a new thread's switches whole.
fn wakeups(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    after
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix(key)
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The runtime class under test: the sample's file name, or the SNP file's.
static CLASS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

async fn registered(client: &mut admin_client::Client) -> anyhow::Result<Vec<Vec<u8>>> {
    let listed = client
        .list_digests(ListDigestsRequest {
            node: "bench-node".into(),
            runtime_class: CLASS.get().copied().unwrap_or("kata-qemu-sev").into(),
        })
        .await?
        .into_inner();
    let mut v: Vec<Vec<u8>> = listed
        .digests
        .into_iter()
        .filter_map(|d| d.digest.map(|d| d.digest))
        .collect();
    v.sort();
    Ok(v)
}

/// Writes a file and flushes it to disk before it is renamed into place, as
/// package managers do; otherwise the broker's next fsync would wait for the
/// kernel to write out the 32 MiB, and the figure would be the disk's.
fn write_synced(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// Renames `tmp` over `path` and returns the milliseconds until the broker's
/// set differs from `before`.
async fn time_change(
    client: &mut admin_client::Client,
    tmp: &Path,
    path: &Path,
    before: &[Vec<u8>],
) -> anyhow::Result<(f64, Vec<Vec<u8>>)> {
    let start = Instant::now();
    std::fs::rename(tmp, path)?;
    loop {
        let now = registered(client).await?;
        if now != before {
            return Ok((start.elapsed().as_secs_f64() * 1000.0, now));
        }
        // A short pause between polls keeps the poller from taking a core
        // the agent and the broker need on a small machine.
        tokio::time::sleep(Duration::from_micros(250)).await;
        if start.elapsed() > Duration::from_secs(30) {
            let show = |v: &[Vec<u8>]| {
                v.iter()
                    .map(|d| hex::encode(d.get(..6).unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let socket = std::env::var("BENCH_SOCKET").unwrap_or_default();
            let mut fresh =
                admin_client::connect_unix(Path::new(&socket), Duration::from_secs(5)).await?;
            let again = registered(&mut fresh).await?;
            bail!(
                "the broker's digests did not change within 30 s of renaming {} (still {}; fresh connection {})",
                path.display(),
                show(&now),
                show(&again)
            );
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let kata = dir.path().join("kata");
    let mut sample = sample_artefacts::write_sample(&kata)?;
    if args.snp {
        // The same artefacts as an SNP guest, in a file named as Kata names it.
        let text = std::fs::read_to_string(&sample.config)?
            .replace("sev_snp_guest = false", "sev_snp_guest = true");
        if !text.contains("sev_snp_guest = true") {
            bail!("the sample configuration has no sev_snp_guest key to turn on");
        }
        std::fs::remove_file(&sample.config)?;
        sample.config = kata.join("configuration-qemu-snp.toml");
        std::fs::write(&sample.config, text)?;
        let _ = CLASS.set("kata-qemu-snp");
    }
    // A 32 MiB initrd of pseudo-random bytes.
    let mut rng = sample_artefacts::SplitMix::new(7);
    std::fs::write(&sample.initrd, rng.bytes(args.initrd_mib << 20))?;

    let roots = sev_sim::FakeAmdRoots::generate()?;
    let ark = dir.path().join("ark.cert");
    std::fs::write(&ark, roots.ark_cert())?;
    let socket = dir.path().join("admin.sock");
    let _kbs = sev_sim::kbs_process::KbsProcess::start_with(
        &args.kbs_bin,
        &dir.path().join("kbs-data"),
        &socket,
        &ark,
        &["--registration".into(), args.registration.clone().into()],
    )
    .with_context(|| format!("cannot start {}", args.kbs_bin.display()))?;
    let mut operator = admin_client::connect_unix(&socket, Duration::from_secs(10)).await?;
    let approved = args.registration == "approved";
    if approved {
        approve(
            &mut operator,
            ApproveRequest {
                kind: "firmware".into(),
                data: std::fs::read(&sample.firmware)?,
                ..ApproveRequest::default()
            },
        )
        .await?;
        for (kind, file) in [("kernel", &sample.kernel), ("initrd", &sample.initrd)] {
            approve(
                &mut operator,
                ApproveRequest {
                    kind: kind.into(),
                    id: sha256_hex(&std::fs::read(file)?),
                    ..ApproveRequest::default()
                },
            )
            .await?;
        }
        let text = std::fs::read_to_string(&sample.config)?;
        approve(&mut operator, config_approval(&text, &args)).await?;
        if args.snp {
            approve(
                &mut operator,
                ApproveRequest {
                    kind: "host-kernel".into(),
                    id: "6.12".into(),
                    ..ApproveRequest::default()
                },
            )
            .await?;
        }
    }

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "kata_configs = [\"{}/configuration-*.toml\"]\nnode = \"bench-node\"\nlisten = \"off\"\n\
             state_dir = \"{}\"\n[kbs]\nadmin_socket = \"{}\"\n[launches]\nhost_cpu_signature = \"0xa00f11\"\n\
             max_pod_cpus = {}\n{}[drift]\nenabled = false\n",
            kata.display(),
            dir.path().join("state").display(),
            socket.display(),
            args.max_pod_cpus,
            if args.snp {
                "kata_version = \"4.1.0\"\n[launches.snp]\nhost_kernel = \"6.12\"\n"
            } else {
                ""
            }
        ),
    )?;
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(60)))?;
    let started = Instant::now();
    let agent = Command::new(&args.agent_bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env(
            "RUST_LOG",
            if args.agent_log.is_some() {
                "info,host_agent=debug"
            } else {
                "warn"
            },
        )
        .stdout(Stdio::null())
        .stderr(match &args.agent_log {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        })
        .spawn()
        .with_context(|| format!("cannot start {}", args.agent_bin.display()))?;
    let pid = agent.id();
    let _agent = Killed(agent);
    let mut buf = [0u8; 1024];
    loop {
        let n = notify
            .recv(&mut buf)
            .context("no READY=1 from the agent within 60 s")?;
        if String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).contains("READY=1") {
            break;
        }
    }
    let startup = started.elapsed().as_secs_f64() * 1000.0;

    std::env::set_var("BENCH_SOCKET", &socket);
    let mut client = admin_client::connect_unix(&socket, Duration::from_secs(10)).await?;
    let mut current = registered(&mut client).await?;
    let base = std::fs::read_to_string(&sample.config)?;
    let tmp = kata.join(".configuration.toml.new");
    let mut edits = Vec::with_capacity(args.edits);
    for i in 0..args.edits {
        let text = base.replace(
            "agent.config_file=/etc/agent-config.toml",
            &format!("agent.config_file=/etc/agent-config.toml bench.edit={i}"),
        );
        write_synced(&tmp, text.as_bytes())?;
        if approved {
            approve(&mut operator, config_approval(&text, &args)).await?;
        }
        let (ms, now) = time_change(&mut client, &tmp, &sample.config, &current).await?;
        if std::env::var_os("BENCH_TRACE").is_some() {
            eprintln!(
                "edit {i}: {ms:.2} ms {:?}",
                now.iter()
                    .map(|d| hex::encode(d.get(..6).unwrap_or_default()))
                    .collect::<Vec<_>>()
            );
        }
        edits.push(ms);
        current = now;
    }

    let original = std::fs::read(&sample.initrd)?;
    let tmp_initrd = kata.join(".initrd.new");
    let mut replacements = Vec::with_capacity(args.initrd_replacements);
    let mut hashing = Vec::with_capacity(args.initrd_replacements);
    for i in 0..args.initrd_replacements {
        let mut data = original.clone();
        if let Some(b) = data.get_mut(i * 4096) {
            *b ^= 0xa5;
        }
        write_synced(&tmp_initrd, &data)?;
        if approved {
            approve(
                &mut operator,
                ApproveRequest {
                    kind: "initrd".into(),
                    id: sha256_hex(&data),
                    ..ApproveRequest::default()
                },
            )
            .await?;
        }
        let h = Instant::now();
        host_agent::artefacts::sha256_file(
            host_agent::artefacts::ArtefactKind::Initrd,
            &tmp_initrd,
        )?;
        hashing.push(h.elapsed().as_secs_f64() * 1000.0);
        let (ms, now) = time_change(&mut client, &tmp_initrd, &sample.initrd, &current).await?;
        replacements.push(ms);
        current = now;
    }

    // Idle: nothing changes; count the agent's wake-ups. Threads of the
    // runtime's blocking pool that ran a pass exit after 10 s unused; wait for
    // that first, as it happens once after activity, not periodically.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let threads = context_switches(pid).len();
    let before = context_switches(pid);
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_switches = wakeups(&before, &context_switches(pid));

    println!(
        "machine: {} cores; initrd {} MiB; release build; {} class, pod CPU counts 0 to {} ({} digests a registration); registration {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.initrd_mib,
        CLASS.get().copied().unwrap_or("kata-qemu-sev"),
        args.max_pod_cpus,
        current.len(),
        args.registration
    );
    println!("start to READY (first full registration): {startup:.1} ms");
    summary("kernel_params edit", edits);
    summary("initrd replacement", replacements.clone());
    summary("  sha256 of the initrd alone", hashing.clone());
    replacements.sort_by(f64::total_cmp);
    hashing.sort_by(f64::total_cmp);
    println!(
        "initrd replacement minus hashing (p50): {:.2} ms",
        percentile(&replacements, 50.0) - percentile(&hashing, 50.0)
    );
    println!(
        "idle {} s: {} wake-ups over {} threads; RSS {} KiB (peak {} KiB)",
        args.idle_seconds,
        idle_switches,
        threads,
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );
    Ok(())
}
