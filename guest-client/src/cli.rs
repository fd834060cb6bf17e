//! The command line: `guest-client verify`.

use crate::delivered::{describe_policy, CosignKeyReport, ImageKeyReport, OFFLINE_NOTE};
use crate::entries::COSIGN_KEY_RESOURCE;
use crate::online::OnlineClient;
use crate::verify::{local_checks, mode_from_cmdline, Check, Mode, Paths};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Checks from inside a confidential guest that its secrets arrived through
/// the attested path, and reports the outcome to the key broker: in SEV
/// guests the PSP-injected secrets, in SEV-SNP guests the chip's signed
/// report, the expected launch digest and the guest components' secret path.
#[derive(Debug, Parser)]
#[command(name = "guest-client", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the checks in order (securityfs, efi_secret, the secrets directory,
    /// the entries the mode needs, the online round trip) and report them.
    ///
    /// Also says what the images will get: the signature policy (online), the
    /// cosign key it names (by the SHA-256 fingerprint of the public key) and
    /// the key of encrypted images, default/image-encryption-key/1 (from the
    /// bundle offline, asked for online; by its length only). A key that is
    /// not provisioned is no failure; one that is unusable is.
    ///
    /// Exit status 0 when the secret path works, 1 when a check failed.
    /// Secret values are never printed.
    Verify(VerifyArgs),
    /// Run as the initrd's init: verify and report (bounded by --boot-timeout),
    /// then hand PID 1 to PATH (the Kata agent) by exec.
    ///
    /// As PID 1 it mounts /proc, /sys, securityfs, /dev and configfs (what is
    /// missing) for the checks and
    /// unmounts what it mounted before the exec, so the agent finds the system
    /// as the kernel left it. A failed check or an unreachable broker never
    /// stops the boot: the outcome is printed on the console and the exec goes on.
    Init(InitArgs),
    /// The network half of `init`, run in the background: reads the local
    /// outcome on standard input, then does the online round trip and the
    /// report once the network is up.
    #[command(hide = true)]
    Finish(FinishArgs),
}

/// Options of `finish`.
#[derive(Debug, Args)]
pub struct FinishArgs {
    /// Seconds to wait for each call.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Seconds to keep retrying while the broker cannot be reached.
    #[arg(long, default_value_t = 300)]
    pub report_patience: u64,
    /// Do not send the report.
    #[arg(long)]
    pub no_report: bool,
}

/// Options of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The program to hand PID 1 to, e.g. /usr/bin/kata-agent.
    #[arg(long, value_name = "PATH")]
    pub exec: PathBuf,
    /// The most the checks may delay the boot, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub boot_timeout: u64,
    /// How long the background reporter keeps trying to reach the broker
    /// (the network comes up only once the agent runs), in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub report_patience: u64,
    /// The checks' options.
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// Arguments for the program.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<std::ffi::OsString>,
}

/// The kind of confidential guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tee {
    /// SEV or SEV-ES with pre-attestation: secrets injected through efi_secret.
    Sev,
    /// SEV-SNP: the guest's own report, and the secrets through the guest
    /// components.
    Snp,
}

/// Options of `verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The kind of guest; by default SNP when the SNP guest device
    /// (/dev/sev-guest) exists, SEV otherwise.
    #[arg(long, value_enum)]
    pub tee: Option<Tee>,
    /// The SNP checks' options.
    #[command(flatten)]
    pub snp: crate::snp::SnpArgs,
    /// The secrets directory efi_secret exposes.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/sys/kernel/security/secrets/coco"
    )]
    pub secrets_dir: PathBuf,
    /// The key broker, HOST:PORT; by default the one Kata put on the kernel
    /// command line (agent.aa_kbc_params=online_sev_kbc::HOST:PORT). In SNP
    /// guests, the broker that collects status reports (its keybroker port);
    /// there is no default.
    #[arg(long, value_name = "HOST:PORT")]
    pub kbs: Option<String>,
    /// The pre-attestation mode; by default from the kernel command line, or
    /// online when the connection entry is present.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not send the report to the key broker (and keep the report key).
    #[arg(long)]
    pub no_report: bool,
    /// Seconds the whole exchange with the key broker may take (the online
    /// round trip and the report together).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
    /// Where securityfs is mounted.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/sys/kernel/security",
        hide = true
    )]
    pub securityfs: PathBuf,
    /// The mount table.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/proc/self/mounts",
        hide = true
    )]
    pub mounts: PathBuf,
    /// The efi_secret module's sysfs directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/sys/module/efi_secret",
        hide = true
    )]
    pub module_dir: PathBuf,
    /// The kernel command line.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/proc/cmdline",
        hide = true
    )]
    pub cmdline: PathBuf,
}

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The mode checked.
    pub mode: Mode,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Every check passed.
    pub path_works: bool,
    /// The image signature policy delivered online, if fetched.
    pub signature_policy: Option<crate::entries::PolicySummary>,
    /// The cosign public key resource the policy verifies with.
    pub cosign_key: Option<CosignKeyReport>,
    /// The key of encrypted images: from the bundle (offline) or asked for
    /// online.
    pub image_encryption_key: Option<ImageKeyReport>,
    /// What became of the report.
    pub report: ReportOutcome,
}

/// What became of the report to the key broker.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ReportOutcome {
    /// Recorded by the broker at this Unix time; the report key was wiped.
    Recorded {
        /// When.
        at: i64,
    },
    /// Not sent, and why.
    NotSent {
        /// Why.
        reason: String,
    },
    /// Refused by the broker, or recorded without the report key wiped.
    Failed {
        /// Why.
        reason: String,
    },
    /// Could not be delivered: the broker was unreachable, or the run's
    /// --timeout ran out, or no broker address is known.
    Undelivered {
        /// Why.
        reason: String,
    },
}

/// What `verify` exits with.
pub mod exit {
    /// Every check passed and the broker acknowledged the report (or the
    /// report was not wanted: --no-report).
    pub const CONFIRMED: u8 = 0;
    /// A check failed, or the broker refused the report.
    pub const FAILED: u8 = 1;
    /// Every check passed, but the report could not be delivered.
    pub const UNDELIVERED: u8 = 2;
    /// The command line is wrong.
    pub const USAGE: u8 = 64;
    /// Something else went wrong (the message says what).
    pub const INTERNAL: u8 = 70;
}

impl Outcome {
    /// The exit status of `verify` for this outcome.
    pub fn exit_code(&self) -> u8 {
        if !self.path_works {
            return exit::FAILED;
        }
        match self.report {
            ReportOutcome::Recorded { .. } | ReportOutcome::NotSent { .. } => exit::CONFIRMED,
            ReportOutcome::Failed { .. } => exit::FAILED,
            ReportOutcome::Undelivered { .. } => exit::UNDELIVERED,
        }
    }
}

/// What the local checks found, and what the network steps need.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Local {
    /// The mode.
    pub mode: Mode,
    /// The key broker, if known.
    pub kbs: Option<String>,
    /// The local checks.
    pub checks: Vec<Check>,
    /// The connection entry (online), if well-formed.
    pub connection: Option<(String, String)>,
    /// The report key entry, if well-formed: launch id and base64 key.
    pub report_key: Option<(String, String)>,
    /// The image key in the offline bundle, if the bundle was read.
    #[serde(default)]
    pub image_key: Option<ImageKeyReport>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn key_of(text: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
}

/// The paths of `a`.
pub fn paths_of(a: &VerifyArgs) -> Paths {
    Paths {
        securityfs: a.securityfs.clone(),
        mounts: a.mounts.clone(),
        module: a.module_dir.clone(),
        secrets: a.secrets_dir.clone(),
        cmdline: a.cmdline.clone(),
    }
}

/// The checks that need no network.
pub fn local(a: &VerifyArgs) -> Local {
    let paths = paths_of(a);
    let from_cmdline = std::fs::read_to_string(&paths.cmdline)
        .ok()
        .and_then(|c| mode_from_cmdline(&c));
    let mode = a.mode.or(from_cmdline.as_ref().map(|(m, _)| *m)).unwrap_or(
        if paths.secrets.join(crate::entries::CONNECTION_GUID).exists() {
            Mode::Online
        } else {
            Mode::Offline
        },
    );
    let kbs = a
        .kbs
        .clone()
        .or_else(|| from_cmdline.and_then(|(_, uri)| uri));
    let mut checks = Vec::new();
    let found = local_checks(&paths, mode, &mut checks);
    Local {
        mode,
        kbs,
        checks,
        connection: found.connection.map(|c| (c.client_id, b64(&c.key))),
        report_key: found.report_key.map(|k| (k.launch_id, b64(&k.key))),
        image_key: found.image_key,
    }
}

/// The online round trip and the report. `wipe` runs once the broker has
/// acknowledged the report; `patience` is how long to keep retrying while the
/// broker cannot be reached (zero: one attempt); `timeout` bounds each call
/// and, when `whole_run` is set, the round trip and the report together.
pub async fn network(
    l: Local,
    no_report: bool,
    timeout: Duration,
    patience: Duration,
    wipe: Option<&Paths>,
    whole_run: bool,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + patience;
    // With no bound on the run, a deadline far enough away never to matter.
    let run_ends = tokio::time::Instant::now()
        + if whole_run {
            timeout
        } else {
            Duration::from_secs(86_400 * 365)
        };
    let out_of_time = || {
        format!(
            "no answer within --timeout ({} s for the whole run)",
            timeout.as_secs()
        )
    };
    let unreachable = crate::online::unreachable;
    let Local {
        mode,
        kbs,
        mut checks,
        connection,
        report_key,
        image_key,
    } = l;
    let mut signature_policy = None;
    let mut image_encryption_key = image_key;
    // Offline, the attestation agent gets nothing but the bundle.
    let mut cosign_key = (mode == Mode::Offline).then(CosignKeyReport::offline);
    let connection = connection.and_then(|(client_id, key)| {
        key_of(&key).map(|key| crate::entries::Connection { client_id, key })
    });
    if mode == Mode::Online {
        if let Some(conn) = &connection {
            let (passed, reason, fetched) = match &kbs {
                None => (
                    false,
                    "no key broker: give --kbs or boot with agent.aa_kbc_params".to_string(),
                    None,
                ),
                Some(kbs) => loop {
                    let attempt = tokio::time::timeout_at(run_ends, async {
                        match OnlineClient::connect(kbs, conn, timeout).await {
                            Ok(mut client) => client.policy().await.map(|p| (client, p)),
                            Err(e) => Err(e),
                        }
                    })
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("cannot reach the key broker: {}", out_of_time()))
                    });
                    match attempt {
                        Ok((client, p)) => break (true, describe_policy(&p), Some((client, p))),
                        Err(e) if unreachable(&e) && tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => break (false, e, None),
                    }
                },
            };
            checks.push(Check {
                name: "online secret".into(),
                passed,
                reason,
            });
            if let Some((mut client, p)) = fetched {
                let fetched = tokio::time::timeout_at(run_ends, async {
                    let key = client
                        .cosign_key(p.needs_resource(COSIGN_KEY_RESOURCE))
                        .await;
                    let image = client.image_key().await;
                    (key, image)
                })
                .await;
                match fetched {
                    Ok((key, image)) => {
                        checks.extend(key.check());
                        checks.push(image.check());
                        cosign_key = Some(key);
                        image_encryption_key = Some(image);
                    }
                    Err(_) => checks.push(Check {
                        name: "online keys".into(),
                        passed: false,
                        reason: out_of_time(),
                    }),
                }
                signature_policy = Some(p);
            }
        }
    }
    let path_works = checks.iter().all(|c| c.passed);
    let key = report_key.and_then(|(launch_id, key)| {
        key_of(&key).map(|key| crate::entries::ReportKey { launch_id, key })
    });
    let report = match (&key, &kbs) {
        _ if no_report => ReportOutcome::NotSent {
            reason: "--no-report".into(),
        },
        (None, _) => ReportOutcome::NotSent {
            reason: "no report key (see the checks)".into(),
        },
        (Some(_), None) => ReportOutcome::Undelivered {
            reason: "no key broker address: give --kbs".into(),
        },
        (Some(key), Some(kbs)) => loop {
            let signed = crate::report::sign(key, &checks, path_works);
            let sent = tokio::time::timeout_at(run_ends, crate::report::send(kbs, signed, timeout))
                .await
                .unwrap_or_else(|_| Err(format!("cannot reach the key broker: {}", out_of_time())));
            match sent {
                Ok(at) => {
                    // The key has done its job: wipe it from guest memory, so that
                    // nothing later in this guest can speak for the launch.
                    break match wipe.map(crate::verify::wipe_report_key) {
                        None | Some(Ok(())) => ReportOutcome::Recorded { at },
                        Some(Err(e)) => ReportOutcome::Failed {
                            reason: format!(
                                "recorded, but the report key entry could not be wiped: {e}"
                            ),
                        },
                    };
                }
                Err(e) if unreachable(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(reason) if unreachable(&reason) => break ReportOutcome::Undelivered { reason },
                Err(reason) => break ReportOutcome::Failed { reason },
            }
        },
    };
    Outcome {
        mode,
        checks,
        path_works,
        signature_policy,
        cosign_key,
        image_encryption_key,
        report,
    }
}

/// The kind of guest `a` is for: --tee, else SNP when the SNP guest device
/// (or the test simulator) is there, else SEV.
pub fn tee_of(a: &VerifyArgs) -> Tee {
    a.tee.unwrap_or_else(|| {
        if crate::snp_device::SnpDevice::choose(a.snp.snp_simulator.as_deref()).present() {
            Tee::Snp
        } else {
            Tee::Sev
        }
    })
}

/// What `init` hands the background reporter (`finish`) on standard input.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handover {
    /// An SEV guest's local outcome.
    Sev(Local),
    /// An SNP guest's local outcome, and what its network half needs.
    Snp {
        /// The local checks.
        local: crate::snp::SnpLocal,
        /// The SNP options.
        args: crate::snp::SnpArgs,
        /// The broker, if known.
        kbs: Option<String>,
        /// The kernel command line.
        cmdline: String,
    },
}

impl Handover {
    /// The checks so far.
    pub fn checks(&self) -> &[Check] {
        match self {
            Handover::Sev(l) => &l.checks,
            Handover::Snp { local, .. } => &local.checks,
        }
    }
}

/// The checks that need no network, of whichever kind of guest this is.
pub fn local_any(a: &VerifyArgs) -> Handover {
    match tee_of(a) {
        Tee::Sev => Handover::Sev(local(a)),
        Tee::Snp => {
            let mut local = crate::snp::local(&a.snp);
            let cmdline = snp_cmdline(a, &mut local);
            Handover::Snp {
                local,
                args: a.snp.clone(),
                kbs: a.kbs.clone(),
                cmdline,
            }
        }
    }
}

/// Runs `verify` in an SNP guest.
pub async fn verify_snp(a: &VerifyArgs) -> crate::snp::SnpOutcome {
    let snp = a.snp.clone();
    let mut l = tokio::task::spawn_blocking(move || crate::snp::local(&snp))
        .await
        .unwrap_or_else(|e| crate::snp::SnpLocal {
            checks: vec![Check {
                name: "snp device".into(),
                passed: false,
                reason: format!("the local checks did not finish: {e}"),
            }],
            ..Default::default()
        });
    let cmdline = snp_cmdline(a, &mut l);
    let timeout = Duration::from_secs(a.timeout);
    let local_checks = l.checks.clone();
    let run = crate::snp::network(
        l,
        &a.snp,
        a.kbs.as_deref(),
        &cmdline,
        a.no_report,
        timeout,
        Duration::ZERO,
    );
    // --timeout bounds the whole exchange, as for SEV guests.
    match tokio::time::timeout(timeout, run).await {
        Ok(o) => o,
        Err(_) => {
            let mut checks = local_checks;
            checks.push(Check {
                name: "network".into(),
                passed: false,
                reason: format!(
                    "no answer within --timeout ({} s for the whole run)",
                    a.timeout
                ),
            });
            crate::snp::SnpOutcome {
                tee: "snp",
                checks,
                path_works: false,
                report: crate::snp::SnpReportOutcome::Undelivered {
                    reason: "cannot reach the key broker: --timeout ran out".into(),
                },
            }
        }
    }
}

/// The kernel command line an SNP guest's checks read (whether the
/// attestation API is on); one that cannot be read is a failed check.
fn snp_cmdline(a: &VerifyArgs, l: &mut crate::snp::SnpLocal) -> String {
    std::fs::read_to_string(&a.cmdline).unwrap_or_else(|e| {
        l.checks.push(Check {
            name: "kernel command line".into(),
            passed: false,
            reason: format!("cannot read {}: {e}", a.cmdline.display()),
        });
        String::new()
    })
}

/// Runs `verify`.
pub async fn verify(a: &VerifyArgs) -> Outcome {
    let l = local(a);
    let paths = paths_of(a);
    network(
        l,
        a.no_report,
        Duration::from_secs(a.timeout),
        Duration::ZERO,
        Some(&paths),
        true,
    )
    .await
}

/// Prints an outcome for people.
pub fn print_human(o: &Outcome, out: &mut dyn Write) -> std::io::Result<()> {
    for c in &o.checks {
        writeln!(
            out,
            "{} {:<18} {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.reason
        )?;
    }
    if o.mode == Mode::Offline {
        writeln!(
            out,
            "signature policy and cosign key not fetched ({OFFLINE_NOTE})"
        )?;
    }
    writeln!(
        out,
        "{} ({} mode)",
        if o.path_works {
            "the secrets arrived through the PSP-protected path"
        } else {
            "the secret path is broken"
        },
        match o.mode {
            Mode::Online => "online",
            Mode::Offline => "offline",
        }
    )?;
    match &o.report {
        ReportOutcome::Recorded { at } => {
            writeln!(out, "report recorded by the key broker (at {at})")
        }
        ReportOutcome::NotSent { reason } => writeln!(out, "report not sent: {reason}"),
        ReportOutcome::Failed { reason } => writeln!(out, "report failed: {reason}"),
        ReportOutcome::Undelivered { reason } => writeln!(out, "report not delivered: {reason}"),
    }
}

/// The agent an initrd guest's init wrapper hands PID 1 to by default.
pub const DEFAULT_AGENT: &str = "/usr/bin/kata-agent";

/// Started by the kernel as init (`rdinit=/usr/bin/guest-client`) with no
/// arguments: act as `init --exec` the agent, which `GUEST_CLIENT_EXEC` on the
/// kernel command line can name (the kernel passes such parameters to init as
/// environment).
fn as_init(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if args.len() != 1 || std::process::id() != 1 {
        return args;
    }
    let agent = std::env::var_os("GUEST_CLIENT_EXEC").unwrap_or_else(|| DEFAULT_AGENT.into());
    let mut v = args;
    v.extend(["init".into(), "--exec".into(), agent]);
    v
}

/// Parses and runs; returns the exit status.
pub fn run(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let cli = Cli::try_parse_from(as_init(args.into_iter().collect()))?;
    match cli.command {
        Command::Verify(a) if tee_of(&a) == Tee::Snp => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let outcome = runtime.block_on(verify_snp(&a));
            if a.json {
                serde_json::to_writer_pretty(&mut *out, &outcome)?;
                writeln!(out)?;
            } else {
                crate::snp::print_human(&outcome, out)?;
            }
            Ok(outcome.exit_code())
        }
        Command::Verify(a) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let outcome = runtime.block_on(verify(&a));
            if a.json {
                serde_json::to_writer_pretty(&mut *out, &outcome)?;
                writeln!(out)?;
            } else {
                print_human(&outcome, out)?;
            }
            Ok(outcome.exit_code())
        }
        Command::Init(a) => Err(crate::init::run(&a, out)),
        Command::Finish(a) => {
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)?;
            let handover: Handover = serde_json::from_slice(&input)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let l = match handover {
                Handover::Sev(l) => l,
                Handover::Snp {
                    local,
                    args,
                    kbs,
                    cmdline,
                } => {
                    let outcome = runtime.block_on(crate::snp::network(
                        local,
                        &args,
                        kbs.as_deref(),
                        &cmdline,
                        a.no_report,
                        Duration::from_secs(a.timeout),
                        Duration::from_secs(a.report_patience),
                    ));
                    let mut err = std::io::stderr();
                    crate::snp::print_human(&outcome, &mut err)?;
                    return Ok(outcome.exit_code());
                }
            };
            let outcome = runtime.block_on(network(
                l,
                a.no_report,
                Duration::from_secs(a.timeout),
                Duration::from_secs(a.report_patience),
                None,
                false,
            ));
            let mut err = std::io::stderr();
            print_human(&outcome, &mut err)?;
            Ok(if outcome.path_works { 0 } else { 1 })
        }
    }
}
