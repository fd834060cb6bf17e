//! `kbs-load`: runs N concurrent simulated launches (GetBundle, LAUNCH_START on
//! the simulated PSP, LAUNCH_MEASURE, GetSecret, LAUNCH_SECRET), each over new
//! gRPC connections as the Kata shim makes them, against a real `kbs` process it
//! starts, for T seconds; reports launches per second, latency percentiles and
//! the server's CPU time per launch (from /proc) and its resident memory.
//!
//! Optionally under hostile traffic kept up for the whole run (see `flood`):
//! `--idle-connections N` idle TCP connections, `--stream-flood N` HTTP/2
//! connections holding unfinished GetBundle calls; it then also reports what
//! the flood held and what the broker closed, so that a run with a flood can
//! be set beside one without (scripts/bench-kbs-flood runs a baseline and
//! each flood).

#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

mod flood;
mod procfs;

use anyhow::{bail, Context};
use clap::Parser;
use flood::{IdleFlood, IdleSnapshot, StreamFlood, StreamSnapshot};
use kbs::store::{DigestRecord, Store};
use procfs::{cpu_seconds, memory, Memory};
use serde_json::json;
use sev_sim::kbs_process::KbsProcess;
use sev_sim::shim::{pre_attest, ShimError, ShimLaunch};
use sev_sim::{FakeAmdRoots, SimPlatform};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Load-test a key broker with simulated SEV launches, optionally under a
/// flood of hostile connections.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The kbs binary to start (a release build for figures that mean something).
    #[arg(long, value_name = "FILE", default_value = "target/release/kbs")]
    kbs_bin: PathBuf,
    /// Launches in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to run after warm-up.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Before warm-up, open this many TCP connections to the keybroker port
    /// that never send anything, and keep them up (reopen what the broker
    /// closes) for the whole run.
    #[arg(long, value_name = "N", default_value_t = 0)]
    idle_connections: usize,
    /// Before warm-up, open this many HTTP/2 connections, each with as many
    /// GetBundle calls as the broker allows that announce a message and never
    /// finish it, and keep them up for the whole run (a call the broker ends
    /// is replaced).
    #[arg(long, value_name = "N", default_value_t = 0)]
    stream_flood: usize,
    /// The message size the stream flood's calls announce (the gRPC length
    /// prefix), in bytes. Above the broker's --max-message-bytes (128 KiB by
    /// default) it refuses each call at the prefix; at or below it, it
    /// buffers the message as it comes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    stream_announce_bytes: u32,
    /// Flood connections from each source address (127.0.0.2, 127.0.0.3, ...);
    /// below the broker's per-source cap (128 by default), so that its total
    /// cap is what they meet.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    flood_per_source: u64,
    /// Milliseconds a flood connection waits before reopening once the broker
    /// closed it (and a stream-flood call before it is replaced).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    flood_reopen_ms: u64,
    /// Milliseconds a launch task waits after a failed launch before its next:
    /// a refused connection fails in well under a millisecond, and without a
    /// pause the launch loop would become a connect loop competing with the
    /// broker for the CPU.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    failure_pause_ms: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(i.min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

/// A short name for why a launch failed, to count failures by.
fn failure_kind(e: &ShimError) -> String {
    match (e, e.code()) {
        // No connection could be made. A connection the broker closes at
        // accept shows as the call's status instead (Cancelled, or Unknown
        // for a transport error).
        (ShimError::Connect { .. }, _) => "connect".to_owned(),
        (_, Some(code)) => format!("{code:?}"),
        (_, None) => "other".to_owned(),
    }
}

/// What one launch task saw after warm-up.
#[derive(Debug, Default)]
struct TaskOutcome {
    latencies: Vec<Duration>,
    failures: BTreeMap<String, u64>,
    /// The first error of each kind, to show what the failures were.
    examples: BTreeMap<String, String>,
}

/// The floods' gauges and the server's memory, sampled through the measured
/// window.
#[derive(Debug, Default)]
struct Samples {
    n: u64,
    idle_open_sum: u64,
    idle_open_min: Option<u64>,
    stream_open_sum: u64,
    calls_open_sum: u64,
    rss_max_kib: u64,
    broker_connections_sum: u64,
    broker_connections_max: u64,
}

impl Samples {
    /// One sample; `listeners` are the sockets the broker had before any
    /// traffic.
    fn take(
        &mut self,
        idle: Option<&IdleFlood>,
        streams: Option<&StreamFlood>,
        pid: u32,
        listeners: u64,
    ) {
        self.n += 1;
        if let Ok(sockets) = procfs::sockets(pid) {
            let connections = sockets.saturating_sub(listeners);
            self.broker_connections_sum += connections;
            self.broker_connections_max = self.broker_connections_max.max(connections);
        }
        if let Some(idle) = idle {
            let open = idle.snapshot().open;
            self.idle_open_sum += open;
            self.idle_open_min = Some(self.idle_open_min.map_or(open, |m| m.min(open)));
        }
        if let Some(streams) = streams {
            let s = streams.snapshot();
            self.stream_open_sum += s.open;
            self.calls_open_sum += s.calls_open;
        }
        if let Ok(m) = memory(pid) {
            self.rss_max_kib = self.rss_max_kib.max(m.rss_kib);
        }
    }

    fn mean(&self, sum: u64) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            sum as f64 / self.n as f64
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // On SIGINT or SIGTERM the run is dropped, and with it the broker
    // process (which would otherwise outlive this one, floods and all).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let per_source = usize::try_from(args.flood_per_source).unwrap_or(usize::MAX);
    let reopen = Duration::from_millis(args.flood_reopen_ms);
    let failure_pause = Duration::from_millis(args.failure_pause_ms);
    let flooding = args.idle_connections > 0 || args.stream_flood > 0;
    // One descriptor per flood connection, a few per launch in flight (a
    // connection being closed while the next is made), and the runtime's own.
    let needed = args.idle_connections + args.stream_flood + 4 * args.concurrency + 256;
    procfs::raise_own_nofile(u64::try_from(needed).unwrap_or(u64::MAX))?;

    let dir = tempfile::tempdir()?;
    let roots = FakeAmdRoots::generate()?;
    let platform = Arc::new(SimPlatform::new(&roots)?);
    let ark = dir.path().join("ark.cert");
    std::fs::write(&ark, roots.ark_cert())?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let digest = [0x42u8; 32];
    {
        let store = Store::open(&data)?;
        let rec = DigestRecord {
            mode: "sev".into(),
            digest: kbs::store::hex(&digest),
            vcpus: 1,
            vcpu_type: "host".into(),
            config: "load test".into(),
        };
        store.replace_digests(
            "load",
            "kata-qemu-sev",
            &[(digest.to_vec(), rec)],
            kbs::store::Origin::Operator,
            &[],
        )?;
        store.set_secret("k1", b"0123456789abcdef0123456789abcdef")?;
        store.set_keyset("KEYSET-1", &["k1".to_string()])?;
    }
    // The broker runs with its default limits; only its file limit is set,
    // to what its systemd unit gives it.
    let server = KbsProcess::start(&args.kbs_bin, &data, &data.join("admin.sock"), &ark)
        .with_context(|| format!("cannot start {}", args.kbs_bin.display()))?;
    procfs::set_nofile(server.pid(), procfs::KBS_NOFILE)?;
    let addr: SocketAddr = server
        .addr
        .parse()
        .with_context(|| format!("kbs address {:?}", server.addr))?;
    let launch = Arc::new(ShimLaunch::offline(
        format!("http://{}", server.addr),
        0x3,
        digest,
        "KEYSET-1",
    ));
    let mem_before = memory(server.pid())?;
    let listeners = procfs::sockets(server.pid())?;
    let loadgen_cpu_start = cpu_seconds(std::process::id())?;

    // The floods, from separate source addresses, up before the warm-up.
    let idle = (args.idle_connections > 0)
        .then(|| IdleFlood::start(addr, args.idle_connections, per_source, 0, reopen));
    let idle_sources = flood::sources_for(args.idle_connections, per_source);
    let streams = (args.stream_flood > 0).then(|| {
        StreamFlood::start(
            addr,
            args.stream_flood,
            per_source,
            idle_sources,
            args.stream_announce_bytes,
            reopen,
        )
    });
    let flood_start = Instant::now();
    if let Some(idle) = &idle {
        idle.wait_established(Duration::from_secs(30)).await;
        eprintln!(
            "kbs-load: idle flood up after {:.1} s: {} open",
            flood_start.elapsed().as_secs_f64(),
            idle.snapshot().open
        );
    }
    if let Some(streams) = &streams {
        streams.wait_established(Duration::from_secs(30)).await;
        let s = streams.snapshot();
        eprintln!(
            "kbs-load: stream flood up after {:.1} s: {} connections, {} calls open",
            flood_start.elapsed().as_secs_f64(),
            s.open,
            s.calls_open
        );
    }
    let mem_flood = if flooding {
        Some(memory(server.pid())?)
    } else {
        None
    };

    let warm_end = Instant::now() + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let platform = Arc::clone(&platform);
        let launch = Arc::clone(&launch);
        tasks.push(tokio::spawn(async move {
            let mut out = TaskOutcome::default();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = pre_attest(&platform, &launch).await;
                let counted = t0 >= warm_end;
                match result {
                    Ok(_) if counted => out.latencies.push(t0.elapsed()),
                    Ok(_) => {}
                    Err(e) => {
                        if counted {
                            let kind = failure_kind(&e);
                            *out.failures.entry(kind.clone()).or_default() += 1;
                            out.examples.entry(kind).or_insert_with(|| e.to_string());
                        }
                        tokio::time::sleep(failure_pause).await;
                    }
                }
            }
            out
        }));
    }
    tokio::time::sleep_until(warm_end.into()).await;
    let cpu_start = cpu_seconds(server.pid())?;
    let idle_start = idle.as_ref().map(IdleFlood::snapshot);
    let streams_start = streams.as_ref().map(StreamFlood::snapshot);
    let mut samples = Samples::default();
    loop {
        samples.take(idle.as_ref(), streams.as_ref(), server.pid(), listeners);
        // The broker's standard error goes to an unbounded channel; under a
        // flood it may warn often, so it is emptied here rather than kept.
        while server.log.try_recv().is_ok() {}
        let next = Instant::now() + Duration::from_millis(100);
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = cpu_seconds(server.pid())?;
    let mem_end = memory(server.pid())?;
    let broker_connections_end = procfs::sockets(server.pid())?.saturating_sub(listeners);
    let idle_window: Option<IdleSnapshot> = idle
        .as_ref()
        .zip(idle_start)
        .map(|(f, start)| f.snapshot().since(start));
    let streams_end = streams.as_ref().map(StreamFlood::snapshot);
    let streams_window: Option<StreamSnapshot> = streams_end
        .zip(streams_start)
        .map(|(e, start)| e.since(start));

    let mut outcome = TaskOutcome::default();
    for t in tasks {
        let o = t.await?;
        outcome.latencies.extend(o.latencies);
        for (kind, n) in o.failures {
            *outcome.failures.entry(kind).or_default() += n;
        }
        for (kind, e) in o.examples {
            outcome.examples.entry(kind).or_insert(e);
        }
    }
    // The floods stop here, once the last launches are in.
    drop(idle);
    drop(streams);
    let loadgen_cpu = cpu_seconds(std::process::id())? - loadgen_cpu_start;

    let mut latencies = outcome.latencies;
    latencies.sort();
    let failures: u64 = outcome.failures.values().sum();
    let n = latencies.len();
    let secs = args.duration as f64;
    let cpu = cpu_end - cpu_start;
    let rate = n as f64 / secs;
    // No percentiles without launches (a flood may let none through).
    let ms = |p: f64| (n > 0).then(|| percentile(&latencies, p).as_secs_f64() * 1000.0);
    let (p50, p99) = (ms(0.50), ms(0.99));
    let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
    let cpu_per_launch_ms = if n > 0 {
        cpu * 1000.0 / n as f64
    } else {
        f64::NAN
    };
    let idle_json = idle_window.map(|w| {
        json!({
            "connections": args.idle_connections,
            "per_source": per_source,
            "sources": idle_sources,
            "client_open_avg": samples.mean(samples.idle_open_sum),
            "client_open_min": samples.idle_open_min,
            "client_open_end": w.open,
            "closed_by_broker": w.refused + w.expired,
            "closed_at_accept": w.refused,
            "closed_at_deadline": w.expired,
            "reset_never_accepted": w.lost,
            "connects": w.connects,
            "connect_errors": w.connect_errors,
        })
    });
    let stream_json = streams_window.zip(streams_end).map(|(w, e)| {
        json!({
            "connections": args.stream_flood,
            "per_source": per_source,
            "sources": flood::sources_for(args.stream_flood, per_source),
            "announce_bytes": args.stream_announce_bytes,
            "connections_up_avg": samples.mean(samples.stream_open_sum),
            "connections_up_end": w.open,
            "calls_open_avg": samples.mean(samples.calls_open_sum),
            "calls_open_end": w.calls_open,
            "calls_sent": w.calls_sent,
            "calls_answered": w.calls_answered,
            "connections_closed": w.closed,
            "connect_errors": w.connect_errors,
            "bytes_sent_total": e.bytes_sent,
        })
    });
    if args.json {
        println!(
            "{}",
            json!({
                "concurrency": args.concurrency, "seconds": args.duration, "launches": n, "failures": failures,
                "failures_by_kind": outcome.failures,
                "launches_per_second": rate, "p50_ms": p50, "p99_ms": p99, "server_cpu_ms_per_launch": cpu_per_launch_ms,
                "server_cpu_seconds": cpu,
                "server_rss_before_kib": mem_before.rss_kib,
                "server_rss_flood_kib": mem_flood.map(|m| m.rss_kib),
                "server_rss_max_sampled_kib": samples.rss_max_kib,
                "server_rss_end_kib": mem_end.rss_kib,
                "server_hwm_kib": mem_end.hwm_kib,
                "broker_connections_avg": samples.mean(samples.broker_connections_sum),
                "broker_connections_max": samples.broker_connections_max,
                "broker_connections_end": broker_connections_end,
                "load_generator_cpu_seconds": loadgen_cpu,
                "idle_flood": idle_json,
                "stream_flood": stream_json,
            })
        );
    } else {
        println!(
            "{n} launches in {secs:.0} s at concurrency {}: {rate:.1} launches/s, p50 {}, p99 {}, \
             server CPU {} per launch, {failures} failed",
            args.concurrency,
            show(p50),
            show(p99),
            if n > 0 {
                format!("{cpu_per_launch_ms:.2} ms")
            } else {
                "-".to_owned()
            },
        );
        for (kind, count) in &outcome.failures {
            let example = outcome.examples.get(kind).map_or("", String::as_str);
            println!("  {count} failed: {kind} (e.g. {example})");
        }
        print_memory(mem_before, mem_flood, mem_end);
        println!(
            "broker connections (all sources, from its open sockets): {:.0} on average, {} at most, {} at the end",
            samples.mean(samples.broker_connections_sum),
            samples.broker_connections_max,
            broker_connections_end,
        );
        if let Some(w) = idle_window {
            println!(
                "idle flood: {} connections from {idle_sources} addresses ({per_source} each): open on \
                 the flood's side {:.0} on average (min {}), {} at the end; during the run the broker \
                 closed {} ({} at accept, {} at its deadline), {} were reset (never accepted); \
                 {} connects, {} connect errors",
                args.idle_connections,
                samples.mean(samples.idle_open_sum),
                samples.idle_open_min.unwrap_or(0),
                w.open,
                w.refused + w.expired,
                w.refused,
                w.expired,
                w.lost,
                w.connects,
                w.connect_errors,
            );
        }
        if let Some((w, e)) = streams_window.zip(streams_end) {
            println!(
                "stream flood: {} connections announcing {} bytes a call: connections up {:.0} on \
                 average, {} at the end; calls open {:.0} on average, {} at the end; during the run \
                 the broker answered {} calls and closed {} connections; {:.1} MiB of messages sent in all",
                args.stream_flood,
                args.stream_announce_bytes,
                samples.mean(samples.stream_open_sum),
                w.open,
                samples.mean(samples.calls_open_sum),
                w.calls_open,
                w.calls_answered,
                w.closed,
                mib(e.bytes_sent / 1024),
            );
        }
        println!(
            "CPU over the run: server {cpu:.1} s in the {secs:.0} s counted; load generator \
             {loadgen_cpu:.1} s in all (floods included)"
        );
    }
    if failures > 0 && !flooding {
        bail!("{failures} launches failed");
    }
    Ok(())
}

/// The server's resident memory before, with the flood up, at the end, and
/// its peak.
fn print_memory(before: Memory, flood: Option<Memory>, end: Memory) {
    let flood = flood.map_or(String::new(), |m| {
        format!(", {:.1} MiB with the flood up", mib(m.rss_kib))
    });
    println!(
        "server memory: VmRSS {:.1} MiB before{flood}, {:.1} MiB at the end; peak (VmHWM) {:.1} MiB",
        mib(before.rss_kib),
        mib(end.rss_kib),
        mib(end.hwm_kib),
    );
}
