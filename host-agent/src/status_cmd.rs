//! `host-agent status`: what the running agent derived, registered and noticed,
//! read from its `/status` endpoint.

use crate::agent::config::Listen;
use crate::agent::status::{AgentStatus, ClassState, PlatformView};
use anyhow::{anyhow, bail, Context};
use clap::Args;
use http_body_util::BodyExt as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Options of `host-agent status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's configuration file, to find its status address (`listen`);
    /// /etc/host-agent/config.toml when it exists, else the default address.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's status address, instead of reading it from the configuration.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "config")]
    pub address: Option<SocketAddr>,
    /// Print the status as JSON, exactly as the agent serves it.
    #[arg(long)]
    pub json: bool,
}

/// Fetches `/status` from the agent at `addr`.
pub async fn fetch(addr: SocketAddr) -> anyhow::Result<String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot reach the host agent at {addr}; is it running?"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP handshake with the host agent")?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/status")
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .context("building the request")?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| anyhow!("the host agent at {addr} did not answer in 30 s"))??;
    let code = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the status")?
        .to_bytes();
    if !code.is_success() {
        bail!("the host agent at {addr} answered {code}");
    }
    String::from_utf8(body.to_vec()).map_err(|_| anyhow!("the status is not UTF-8"))
}

fn ago(now: u64, then: Option<u64>) -> String {
    match then {
        None => "never".into(),
        Some(t) => format!("{} s ago", now.saturating_sub(t)),
    }
}

/// Prints the status for people.
pub fn print_human(s: &AgentStatus, out: &mut dyn Write) -> std::io::Result<()> {
    let now = crate::agent::status::unix_now();
    writeln!(
        out,
        "node      {} (pid {}, up {} s)",
        s.node,
        s.pid,
        now.saturating_sub(s.started_at)
    )?;
    writeln!(out, "activity  {}", s.activity)?;
    writeln!(out, "ready     {}", if s.ready { "yes" } else { "no" })?;
    let kbs = if s.kbs.reachable {
        "reachable"
    } else {
        "unreachable"
    };
    writeln!(
        out,
        "kbs       {} ({kbs}; last registration {})",
        s.kbs.target,
        ago(now, s.kbs.last_success_at)
    )?;
    if let Some(e) = &s.kbs.last_error {
        writeln!(out, "          last error: {e}")?;
    }
    writeln!(
        out,
        "watching  {} files in {} directories",
        s.watched_files, s.watched_dirs
    )?;
    if !s.snp_host.is_empty() {
        writeln!(out, "snp vmsa  {}", s.snp_host)?;
    }
    match &s.platform {
        Some(PlatformView::Tcb(tcb)) => writeln!(out, "platform  {tcb}")?,
        Some(PlatformView::Unavailable(e)) => writeln!(out, "platform  TCB not available: {e}")?,
        None => {}
    }
    for (class, c) in &s.classes {
        let state = match c.state {
            ClassState::Registered => "registered",
            ClassState::Pending => "pending",
            ClassState::Stale => "stale",
            ClassState::Error => "error",
        };
        writeln!(out)?;
        writeln!(out, "{class}: {state}")?;
        if !c.config.as_os_str().is_empty() {
            writeln!(out, "  config      {}", c.config.display())?;
        }
        if let Some(r) = &c.kata_release {
            writeln!(out, "  kata        {r}")?;
        }
        writeln!(
            out,
            "  registered  {} ({} digests)",
            ago(now, c.registered_at),
            c.registered_digests.map_or("?".into(), |n| n.to_string())
        )?;
        if let Some(e) = &c.config_error {
            writeln!(out, "  error       {e}")?;
        }
        if let Some(e) = &c.registration_error {
            writeln!(out, "  kbs error   {e}")?;
        }
        if let Some(since) = c.stale_since {
            writeln!(
                out,
                "  stale       file missing since {}",
                ago(now, Some(since))
            )?;
        }
        if let Some(l) = c.launches.first() {
            writeln!(out, "  mode        {} (policy {:#x})", l.mode, l.policy)?;
            writeln!(out, "  firmware    {}", l.firmware.display())?;
            writeln!(out, "  kernel      {}", l.kernel.display())?;
            if let Some(i) = &l.initrd {
                writeln!(out, "  initrd      {}", i.display())?;
            }
            writeln!(out, "  cmdline     {}", l.cmdline)?;
        }
        for l in &c.launches {
            writeln!(
                out,
                "  pod CPUs {:<3} vCPUs {:<3} {}  -cpu {}{}",
                l.pod_cpus,
                l.vcpus,
                l.digest,
                l.cpu,
                l.annotation
                    .as_ref()
                    .map_or(String::new(), |a| format!("  annotation {a}"))
            )?;
        }
        for w in &c.warnings {
            writeln!(out, "  warning     {w}")?;
        }
    }
    for n in &s.skipped {
        writeln!(out, "skipped   {}: {}", n.config.display(), n.reason)?;
    }
    for n in &s.errors {
        writeln!(out, "error     {}: {}", n.config.display(), n.reason)?;
    }
    if !s.drift.is_empty() {
        writeln!(out)?;
        writeln!(out, "running guests:")?;
        for d in &s.drift {
            let verdict = if d.drifted { "DRIFT" } else { "ok" };
            writeln!(
                out,
                "  pid {:<7} {verdict:<5} {} {}",
                d.pid,
                d.runtime_class.as_deref().unwrap_or("?"),
                d.detail
            )?;
        }
    }
    Ok(())
}

/// Runs `status`.
pub fn run(a: &StatusArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let addr = match a.address {
        Some(addr) => addr,
        None => {
            let config = crate::agent::load_config(a.config.as_deref())?;
            match config.listen().map_err(anyhow::Error::msg)? {
                Listen::At(addr) => addr,
                Listen::Off => {
                    bail!("the agent's configuration has listen = \"off\": no status is served")
                }
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let body = runtime.block_on(fetch(addr))?;
    if a.json {
        writeln!(out, "{}", body.trim_end())?;
        return Ok(());
    }
    let status: AgentStatus = serde_json::from_str(&body)
        .context("the agent's status is not what this version expects")?;
    print_human(&status, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::{ClassStatus, LaunchView};
    use crate::platform::PlatformTcb;

    #[test]
    fn snp_facts_release_warnings_and_annotations_are_shown() {
        let launch = |annotation: Option<&str>| LaunchView {
            pod_cpus: 0,
            mode: "snp".into(),
            policy: 0,
            firmware: "/opt/kata/share/ovmf/AMDSEV.fd".into(),
            kernel: "/opt/kata/share/kata-containers/vmlinuz.container".into(),
            initrd: None,
            cmdline: "console=hvc0 quiet".into(),
            vcpus: 1,
            cpu: "EPYC-v4,pmu=off".into(),
            vcpu_sig: Some("0x800f12".into()),
            smp: "1,cores=1,threads=1".into(),
            annotation: annotation.map(String::from),
            guest_features: Some("0x1".into()),
            digest: "ab".repeat(48),
        };
        let mut s = AgentStatus {
            snp_host: "host kernel 6.12 (detected): guest features 0x1, x87/SSE reset state".into(),
            platform: Some(PlatformView::Tcb(PlatformTcb {
                product: "Genoa".into(),
                bootloader: 9,
                tee: 0,
                snp: 23,
                microcode: 72,
                fmc: None,
                firmware_version: "1.55".into(),
                build_id: 21,
            })),
            ..AgentStatus::default()
        };
        s.classes.insert(
            "kata-qemu-snp".into(),
            ClassStatus {
                config: "/opt/kata/share/defaults/kata-containers/configuration-qemu-snp.toml"
                    .into(),
                state: ClassState::Registered,
                launches: vec![launch(None), launch(Some("default_vcpus=2"))],
                derived_at: None,
                registered_at: None,
                registered_digests: Some(2),
                config_error: None,
                registration_error: None,
                stale_since: None,
                kata_release: Some("4.1.0 (from /opt/kata/bin/containerd-shim-kata-v2)".into()),
                warnings: vec!["pods may set kernel_params by annotation".into()],
            },
        );
        let mut out = Vec::new();
        print_human(&s, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for want in [
            "snp vmsa  host kernel 6.12 (detected)",
            "platform  Genoa firmware 1.55 build 21: boot loader 9, TEE 0, SNP 23, microcode 72",
            "  kata        4.1.0 (from /opt/kata/bin/containerd-shim-kata-v2)",
            "  annotation default_vcpus=2",
            "  warning     pods may set kernel_params by annotation",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        s.platform = Some(PlatformView::Unavailable("/dev/sev: absent".into()));
        let mut out = Vec::new();
        print_human(&s, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("platform  TCB not available: /dev/sev: absent"));
    }
}
