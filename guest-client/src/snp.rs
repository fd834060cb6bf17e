//! `guest-client verify` in an SEV-SNP guest: the launch proved from the
//! guest's own signed report, the secret path checked through the guest
//! components, and a status report the broker verifies through the chip.
//!
//! The checks, each with its own verdict and a reason that never holds a
//! secret value:
//! - `snp device`: the guest device answers with a report over a fresh nonce
//!   of ours (a report over anything else is an old one replayed by the host);
//! - `snp report`: its signature verifies under the VCEK or VLEK, and that
//!   certificate chains to AMD's root for the chip's product;
//! - `snp policy`: debugging off, no migration agent, SMT as configured;
//! - `snp tcb`: the reported TCB is at least the minimum given;
//! - `snp measurement`: MEASUREMENT is one of the expected launch digests
//!   (a file, or the broker's registry), naming the launch it matches;
//! - `resource`: a resource fetched through the confidential data hub;
//! - `attestation token`: where the attestation API is on, the token's
//!   verdict is affirming and its measurement is the report's.
//!
//! The status report: the body (nonce from the broker, checks, verdict) is
//! bound into a second report whose REPORT_DATA is SHA-512 of the body, so
//! the broker can check it came from this guest without any shared key.

use crate::snp_device::SnpDevice;
use crate::verify::Check;
use clap::Args;
use kbs_proto::kbsstatus::guest_status_client::GuestStatusClient;
use kbs_proto::kbsstatus::{SnpLookupRequest, SnpNonceRequest, SnpReportBody, SnpSignedReport};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha512};
use snp_attestation::{CertChain, CertEntry, CertKind, TrustedRoots};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The check of a resource fetched through the confidential data hub.
pub const RESOURCE_CHECK: &str = kbs_proto::snp_checks::RESOURCE;
/// The check of an attestation token signed by the pinned key (--token-key).
pub const TOKEN_CHECK: &str = kbs_proto::snp_checks::TOKEN;
/// The check of a token no pinned key authenticated: its claims only.
pub const UNPINNED_TOKEN_CHECK: &str = "attestation token (unpinned)";

/// The confidential data hub's REST endpoint in a CoCo guest.
pub const DEFAULT_CDH: &str = crate::guest_components::DEFAULT_BASE;

/// What SMT the guest policy must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Smt {
    /// Either.
    Any,
    /// The policy allows SMT.
    Allowed,
    /// The policy forbids SMT.
    Forbidden,
}

/// The SNP options of `verify` and `init`.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct SnpArgs {
    /// SNP: a directory with the chip's certificates, used instead of any the
    /// host gives with the report: vcek.pem or vcek.der (or vlek.*), and
    /// optionally ask.* (asvk.* for a VLEK) and ark.*, as `snpguest fetch`
    /// writes them. Missing ASK and ARK are AMD's built-in ones.
    #[arg(long, value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
    /// SNP: a file of expected launch digests: the JSON that
    /// `host-agent digests --json` or `guest-image digests --json` prints (its
    /// snp entries), or one hexadecimal digest per line. Without it the
    /// broker's registry is asked (--kbs).
    #[arg(long, value_name = "FILE")]
    pub expected: Option<PathBuf>,
    /// SNP: what the guest policy must say of SMT.
    #[arg(long, value_enum, value_name = "SMT", default_value = "any")]
    pub snp_smt: Smt,
    /// SNP: the minimum reported TCB, e.g. bootloader=7,tee=0,snp=21,microcode=209
    /// (and fmc=N on Turin); components left out are not checked.
    #[arg(long, value_name = "LIST", value_parser = parse_min_tcb)]
    pub snp_min_tcb: Option<snp_attestation::MinTcb>,
    /// SNP: a resource to fetch through the confidential data hub, e.g.
    /// kbs:///default/key/1 (its value is never printed, only its length).
    #[arg(long, value_name = "URI")]
    pub resource: Option<String>,
    /// SNP: the confidential data hub's REST endpoint.
    #[arg(long, value_name = "URL", default_value = DEFAULT_CDH)]
    pub cdh: String,
    /// SNP: the attestation service's public key (PEM) the token must be
    /// signed with; without it the token's embedded key is all that is checked.
    #[arg(long, value_name = "FILE")]
    pub token_key: Option<PathBuf>,
    /// INSECURE, for tests and the simulator: also trust this SNP root (PEM or
    /// DER: the ARK, optionally followed by its ASK). AMD's roots are built in.
    #[arg(long, value_name = "FILE")]
    pub snp_insecure_root: Vec<PathBuf>,
    /// TEST ONLY: the Unix socket of sev-sim's SNP device simulator, instead
    /// of /dev/sev-guest (also GUEST_CLIENT_SNP_SIMULATOR).
    #[arg(long, value_name = "SOCKET", hide = true)]
    pub snp_simulator: Option<PathBuf>,
}

/// Parses `bootloader=7,tee=0,snp=21,microcode=209[,fmc=N]`.
pub fn parse_min_tcb(text: &str) -> Result<snp_attestation::MinTcb, String> {
    let mut m = snp_attestation::MinTcb::default();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected NAME=VALUE"))?;
        let v: u8 = value
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: the value must be 0 to 255"))?;
        let slot = match name.trim() {
            "bootloader" => &mut m.bootloader,
            "tee" => &mut m.tee,
            "snp" => &mut m.snp,
            "microcode" => &mut m.microcode,
            "fmc" => &mut m.fmc,
            other => {
                return Err(format!(
                    "{other:?}: expected bootloader, tee, snp, microcode or fmc"
                ))
            }
        };
        *slot = Some(v);
    }
    Ok(m)
}

/// One expected launch digest and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedLaunch {
    /// The measurement.
    pub digest: [u8; 48],
    /// The launch, for people (class, vCPUs, configuration), or empty.
    pub label: String,
}

/// Reads a file of expected digests: `host-agent digests --json` output (its
/// `snp` entries) or one hexadecimal digest per line (`#` comments).
pub fn read_expected(path: &Path) -> Result<Vec<ExpectedLaunch>, String> {
    const MAX: u64 = 16 << 20;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX {
        return Err(format!("{}: larger than {MAX} bytes", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_expected(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn digest48(hex_text: &str) -> Option<[u8; 48]> {
    let bytes = hex::decode(hex_text.trim()).ok()?;
    <[u8; 48]>::try_from(bytes.as_slice()).ok()
}

/// Parses the text of a file of expected digests (see [`read_expected`]).
pub fn parse_expected(text: &str) -> Result<Vec<ExpectedLaunch>, String> {
    if text.trim_start().starts_with('[') {
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON list of launches: {e}"))?;
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.get("mode").and_then(|m| m.as_str()) != Some("snp") {
                continue;
            }
            let digest = e
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(digest48)
                .ok_or_else(|| format!("entry {i}: digest is not 48 bytes of hexadecimal"))?;
            let field = |k: &str| {
                e.get(k)
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default()
            };
            out.push(ExpectedLaunch {
                digest,
                label: format!(
                    "{} {} vCPUs ({})",
                    field("runtime_class"),
                    field("vcpus"),
                    field("config")
                ),
            });
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let digest =
            digest48(line).ok_or_else(|| format!("line {}: not 48 bytes of hexadecimal", n + 1))?;
        out.push(ExpectedLaunch {
            digest,
            label: format!("line {}", n + 1),
        });
    }
    Ok(out)
}

/// What the local SNP checks found, and what the network steps need.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnpLocal {
    /// The checks so far.
    pub checks: Vec<Check>,
    /// The verified report's measurement, when the report verified.
    pub measurement: Option<Vec<u8>>,
    /// The certificate table the report verified with (sent with the
    /// status report).
    pub cert_table: Vec<u8>,
    /// Whether the measurement was compared with a file already.
    pub measurement_checked: bool,
}

fn check(name: &str, passed: bool, reason: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        passed,
        reason: reason.into(),
    }
}

fn roots(a: &SnpArgs) -> Result<TrustedRoots, String> {
    let mut roots = TrustedRoots::amd();
    for path in &a.snp_insecure_root {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        roots = roots
            .with_extra_root_pem(&bytes)
            .map_err(|e| format!("--snp-insecure-root {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The certificates in `dir` as table entries: the VCEK (else the VLEK),
/// its signer (ask, or asvk for a VLEK) and the ARK, each the first of
/// NAME.pem, NAME.der, NAME.crt, NAME.cert found.
pub fn certs_from_dir(dir: &Path) -> Result<Vec<CertEntry>, String> {
    const EXTENSIONS: [&str; 4] = ["pem", "der", "crt", "cert"];
    let read = |stem: &str| -> Result<Option<Vec<u8>>, String> {
        for ext in EXTENSIONS {
            let path = dir.join(format!("{stem}.{ext}"));
            match std::fs::read(&path) {
                Ok(bytes) => {
                    return snp_attestation::der_from_pem_or_der(&bytes)
                        .map_err(|e| format!("{}: {e}", path.display()))?
                        .into_iter()
                        .next()
                        .map(Some)
                        .ok_or_else(|| format!("{}: no certificate", path.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(None)
    };
    let (vek, signers) = match read("vcek")? {
        Some(der) => (
            CertEntry {
                kind: CertKind::Vcek,
                der,
            },
            ["ask", "asvk"],
        ),
        None => match read("vlek")? {
            Some(der) => (
                CertEntry {
                    kind: CertKind::Vlek,
                    der,
                },
                ["asvk", "ask"],
            ),
            None => {
                return Err(format!(
                    "{}: no vcek or vlek certificate (.{})",
                    dir.display(),
                    EXTENSIONS.join(", .")
                ))
            }
        },
    };
    let mut out = vec![vek];
    for stem in signers {
        if let Some(der) = read(stem)? {
            out.push(CertEntry {
                kind: CertKind::Ask,
                der,
            });
            break;
        }
    }
    if let Some(der) = read("ark")? {
        out.push(CertEntry {
            kind: CertKind::Ark,
            der,
        });
    }
    Ok(out)
}

fn fresh_nonce() -> Result<[u8; 64], String> {
    let mut n = [0u8; 64];
    // Without randomness the echo check would accept an old report.
    getrandom::fill(&mut n).map_err(|e| format!("no random nonce: {e}"))?;
    Ok(n)
}

/// The checks that need no network: the device, the report and its chain,
/// the policy, the TCB and (with --expected) the measurement.
pub fn local(a: &SnpArgs) -> SnpLocal {
    let mut out = SnpLocal::default();
    let device = SnpDevice::choose(a.snp_simulator.as_deref());
    if !device.present() {
        out.checks.push(check(
            "snp device",
            false,
            format!("{} does not exist", device.describe()),
        ));
        return out;
    }
    let nonce = match fresh_nonce() {
        Ok(n) => n,
        Err(e) => {
            out.checks.push(check("snp device", false, e));
            return out;
        }
    };
    let answer = match device.report(nonce, true) {
        Ok(a) => a,
        Err(e) => {
            out.checks.push(check("snp device", false, e));
            return out;
        }
    };
    let entries = match (&answer.cert_table, &a.certs_dir) {
        (_, Some(dir)) => certs_from_dir(dir),
        (Some(table), None) => snp_attestation::decode_cert_table(table)
            .map_err(|e| format!("the host's certificate table: {e}")),
        (None, None) => Err(
            "the host gave no certificates with the report: give --certs-dir with the chip's VCEK"
                .to_string(),
        ),
    };
    let echoed = snp_attestation::AttestationReport::decode(&answer.report)
        .map(|r| r.report_data == nonce)
        .unwrap_or(false);
    out.checks.push(if echoed {
        check(
            "snp device",
            true,
            format!("{} answered over a fresh nonce", device.describe()),
        )
    } else {
        check(
            "snp device",
            false,
            "the report does not carry this client's fresh nonce (an old report, or not a report)",
        )
    });
    let entries = match entries {
        Ok(e) => e,
        Err(e) => {
            out.checks.push(check("snp report", false, e));
            return out;
        }
    };
    // The status report carries only the certificates the chain is made of:
    // whatever else the host put in its table is not the broker's business.
    let chain_only: Vec<CertEntry> = entries
        .iter()
        .filter(|e| !matches!(e.kind, CertKind::Other(_)))
        .cloned()
        .collect();
    out.cert_table = snp_attestation::encode_cert_table(&chain_only);
    let roots = match roots(a) {
        Ok(r) => r,
        Err(e) => {
            out.checks.push(check("snp report", false, e));
            return out;
        }
    };
    let verified =
        match snp_attestation::verify(&answer.report, &CertChain::from_table(&entries), &roots) {
            Ok(v) => v,
            Err(e) => {
                out.checks.push(check("snp report", false, e.to_string()));
                return out;
            }
        };
    out.checks.push(check(
        "snp report",
        true,
        format!(
            "signed by the {} of a {} chip, chained to {} (report version {})",
            match verified.signer {
                snp_attestation::SigningKey::Vlek => "VLEK",
                _ => "VCEK",
            },
            verified.product.name(),
            match verified.root {
                snp_attestation::RootKind::Amd => "AMD's root".to_string(),
                _ => "an extra root given with --snp-insecure-root (INSECURE)".to_string(),
            },
            verified.report.version
        ),
    ));
    let policy = verified.report.policy;
    let mut wrong = Vec::new();
    if policy.debug() {
        wrong.push("debugging allowed");
    }
    if policy.migrate_ma() {
        wrong.push("a migration agent allowed");
    }
    match (a.snp_smt, policy.smt_allowed()) {
        (Smt::Allowed, false) => wrong.push("SMT forbidden (--snp-smt allowed)"),
        (Smt::Forbidden, true) => wrong.push("SMT allowed (--snp-smt forbidden)"),
        _ => {}
    }
    out.checks.push(if wrong.is_empty() {
        check(
            "snp policy",
            true,
            format!(
                "debugging off, no migration agent, SMT {}",
                if policy.smt_allowed() {
                    "allowed"
                } else {
                    "forbidden"
                }
            ),
        )
    } else {
        check("snp policy", false, wrong.join(", "))
    });
    let tcb = verified.report.reported_tcb.decode(verified.product);
    out.checks.push(match &a.snp_min_tcb {
        None => check("snp tcb", true, "no minimum given (--snp-min-tcb)"),
        Some(min) => {
            let short = tcb.shortfalls(min);
            if short.is_empty() {
                check("snp tcb", true, "reported TCB at or above the minimum")
            } else {
                check(
                    "snp tcb",
                    false,
                    format!("reported TCB below the minimum: {}", short.join(", ")),
                )
            }
        }
    });
    let measurement = verified.report.measurement;
    out.measurement = Some(measurement.to_vec());
    if let Some(path) = &a.expected {
        out.measurement_checked = true;
        out.checks.push(match read_expected(path) {
            Err(e) => check("snp measurement", false, e),
            Ok(list) => match list.iter().find(|l| l.digest == measurement) {
                Some(l) => check(
                    "snp measurement",
                    true,
                    format!("the expected launch {}", l.label),
                ),
                None => check(
                    "snp measurement",
                    false,
                    format!(
                        "not one of the {} expected launch digests in {}",
                        list.len(),
                        path.display()
                    ),
                ),
            },
        });
    }
    out
}

/// What became of the SNP status report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SnpReportOutcome {
    /// Recorded by the broker as confirmed.
    Confirmed {
        /// When (Unix seconds).
        at: i64,
    },
    /// Recorded, as path_broken.
    PathBroken {
        /// When (Unix seconds).
        at: i64,
        /// The failed checks, the guest's and the broker's.
        failed_checks: Vec<String>,
    },
    /// Not sent, and why.
    NotSent {
        /// Why.
        reason: String,
    },
    /// Refused by the broker.
    Refused {
        /// Why.
        reason: String,
    },
    /// Could not be delivered.
    Undelivered {
        /// Why.
        reason: String,
    },
}

/// What an SNP `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct SnpOutcome {
    /// Always "snp".
    pub tee: &'static str,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Every check passed.
    pub path_works: bool,
    /// What became of the status report.
    pub report: SnpReportOutcome,
}

impl SnpOutcome {
    /// The exit status: 0 confirmed, 1 a check failed or the broker refused
    /// or did not confirm, 2 the report could not be delivered.
    pub fn exit_code(&self) -> u8 {
        use crate::cli::exit;
        if !self.path_works {
            return exit::FAILED;
        }
        match self.report {
            SnpReportOutcome::Confirmed { .. } | SnpReportOutcome::NotSent { .. } => {
                exit::CONFIRMED
            }
            SnpReportOutcome::PathBroken { .. } | SnpReportOutcome::Refused { .. } => exit::FAILED,
            SnpReportOutcome::Undelivered { .. } => exit::UNDELIVERED,
        }
    }
}

use crate::online::{call_error, channel, unreachable};

/// Asks the broker which registered launches have `measurement`.
async fn lookup(kbs: &str, measurement: &[u8], timeout: Duration) -> Result<Vec<String>, String> {
    let reply = GuestStatusClient::new(channel(kbs, timeout).await?)
        .snp_lookup(SnpLookupRequest {
            measurement: measurement.to_vec(),
        })
        .await
        .map_err(|s| call_error(&s, kbs, "lookup"))?
        .into_inner();
    Ok(reply
        .launches
        .iter()
        .map(|l| format!("{} {} vCPUs ({})", l.runtime_class, l.vcpus, l.config))
        .collect())
}

/// Sends the status report: a nonce from the broker, the body, a second
/// report bound to it, and the certificates.
async fn send_report(
    kbs: &str,
    a: &SnpArgs,
    checks: &[Check],
    path_works: bool,
    cert_table: &[u8],
    timeout: Duration,
) -> SnpReportOutcome {
    let mut client = match channel(kbs, timeout).await {
        Ok(c) => GuestStatusClient::new(c),
        Err(reason) => return SnpReportOutcome::Undelivered { reason },
    };
    let failed = |reason: String| {
        if unreachable(&reason) {
            SnpReportOutcome::Undelivered { reason }
        } else {
            SnpReportOutcome::Refused { reason }
        }
    };
    let nonce = match client.snp_nonce(SnpNonceRequest {}).await {
        Ok(n) => n.into_inner().nonce,
        Err(s) => return failed(call_error(&s, kbs, "nonce")),
    };
    let body = SnpReportBody {
        nonce,
        checks: crate::report::wire_checks(checks),
        path_works,
        client: crate::report::CLIENT.to_string(),
    }
    .encode_to_vec();
    let mut report_data = [0u8; 64];
    report_data.copy_from_slice(&Sha512::digest(&body));
    let device = SnpDevice::choose(a.snp_simulator.as_deref());
    let bound = match tokio::task::spawn_blocking(move || device.report(report_data, false))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
    {
        Ok(answer) => answer.report,
        Err(e) => {
            return SnpReportOutcome::NotSent {
                reason: format!("no report from the guest device to bind the status to: {e}"),
            }
        }
    };
    match client
        .snp_report(SnpSignedReport {
            body,
            attestation_report: bound,
            cert_table: cert_table.to_vec(),
        })
        .await
    {
        Ok(ack) => {
            let ack = ack.into_inner();
            if ack.status == "confirmed" {
                SnpReportOutcome::Confirmed {
                    at: ack.recorded_at,
                }
            } else {
                SnpReportOutcome::PathBroken {
                    at: ack.recorded_at,
                    failed_checks: ack.failed_checks,
                }
            }
        }
        Err(s) => failed(call_error(&s, kbs, "report")),
    }
}

/// Retries `attempt` every second while it fails as unreachable and
/// `deadline` has not passed.
async fn patiently<T, F, Fut>(deadline: tokio::time::Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        match attempt().await {
            Err(e) if unreachable(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// The network half: the measurement against the broker's registry (when
/// no file was given), the resource, the token, and the status report.
/// `patience` is how long to retry what cannot be reached yet (the guest
/// components and the network come up after boot).
pub async fn network(
    l: SnpLocal,
    a: &SnpArgs,
    kbs: Option<&str>,
    cmdline: &str,
    no_report: bool,
    timeout: Duration,
    patience: Duration,
) -> SnpOutcome {
    let deadline = tokio::time::Instant::now() + patience;
    let SnpLocal {
        mut checks,
        measurement,
        cert_table,
        measurement_checked,
    } = l;
    if let Some(m) = &measurement {
        if !measurement_checked {
            checks.push(match kbs {
                None => check(
                    "snp measurement",
                    false,
                    "no expected launch digests: give --expected FILE or --kbs HOST:PORT",
                ),
                Some(kbs) => match patiently(deadline, || lookup(kbs, m, timeout)).await {
                    Ok(launches) if launches.is_empty() => check(
                        "snp measurement",
                        false,
                        "not a launch registered with the broker",
                    ),
                    Ok(launches) => check(
                        "snp measurement",
                        true,
                        format!("the registered launch {}", launches.join("; ")),
                    ),
                    Err(e) => check(
                        "snp measurement",
                        false,
                        format!("cannot ask the broker's registry: {e}"),
                    ),
                },
            });
        }
    }
    if let Some(uri) = &a.resource {
        checks.push(match crate::guest_components::parse_resource_uri(uri) {
            Err(e) => check("resource", false, format!("--resource: {e}")),
            Ok(res) => match patiently(deadline, || {
                crate::guest_components::fetch_resource(&a.cdh, &res, timeout)
            })
            .await
            {
                Ok(got) => check(
                    "resource",
                    true,
                    format!(
                        "{uri} fetched through the confidential data hub ({} bytes)",
                        got.len
                    ),
                ),
                Err(e) => check("resource", false, e),
            },
        });
    }
    if crate::guest_components::rest_api_from_cmdline(cmdline).attestation_enabled() {
        let pinned = match &a.token_key {
            None => Ok(None),
            Some(p) => std::fs::read(p)
                .map(Some)
                .map_err(|e| format!("--token-key {}: {e}", p.display())),
        };
        checks.push(match (pinned, &measurement) {
            (Err(e), _) => check(TOKEN_CHECK, false, e),
            (Ok(_), None) => check(
                TOKEN_CHECK,
                false,
                "no verified report to compare the token with",
            ),
            (Ok(pinned), Some(m)) => {
                match patiently(deadline, || {
                    crate::guest_components::fetch_token(&a.cdh, timeout)
                })
                .await
                {
                    Err(e) => check(TOKEN_CHECK, false, e),
                    Ok(jwt) => {
                        let mut m48 = [0u8; 48];
                        if m.len() == 48 {
                            m48.copy_from_slice(m);
                        }
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                            .unwrap_or(0);
                        let v = crate::guest_components::check_token(
                            &jwt,
                            &m48,
                            pinned.as_deref(),
                            now,
                        );
                        // Only a key the operator pinned says who signed: a
                        // key the token carries itself proves nothing, so such
                        // a check does not count as proof of the secret path.
                        let name = if v.signature == crate::guest_components::SignatureCheck::Pinned
                        {
                            TOKEN_CHECK
                        } else {
                            UNPINNED_TOKEN_CHECK
                        };
                        check(name, v.passed, v.reason)
                    }
                }
            }
        });
    }
    if !checks
        .iter()
        .any(|c| c.passed && (c.name == RESOURCE_CHECK || c.name == TOKEN_CHECK))
    {
        checks.push(check(
            "secret path",
            false,
            "nothing checked the secret path: give --resource kbs:///REPO/TYPE/TAG, or turn the \
             attestation API on and pin the attestation service's key with --token-key",
        ));
    }
    if measurement.is_none() && checks.iter().all(|c| c.passed) {
        // Nothing above failed, yet no report was verified: never a pass.
        checks.push(check(
            "snp report",
            false,
            "no attestation report was verified",
        ));
    }
    let path_works = checks.iter().all(|c| c.passed);
    let report = match kbs {
        _ if no_report => SnpReportOutcome::NotSent {
            reason: "--no-report".into(),
        },
        _ if measurement.is_none() => SnpReportOutcome::NotSent {
            reason: "no verified report to bind a status report to (see the checks)".into(),
        },
        None => SnpReportOutcome::Undelivered {
            reason: "no key broker address: give --kbs".into(),
        },
        Some(kbs) => loop {
            let sent = send_report(kbs, a, &checks, path_works, &cert_table, timeout).await;
            match sent {
                SnpReportOutcome::Undelivered { .. } if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => break other,
            }
        },
    };
    SnpOutcome {
        tee: "snp",
        checks,
        path_works,
        report,
    }
}

/// Prints an SNP outcome for people.
pub fn print_human(o: &SnpOutcome, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    for c in &o.checks {
        writeln!(
            out,
            "{} {:<18} {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.reason
        )?;
    }
    writeln!(
        out,
        "{}",
        if o.path_works {
            "the launch is proved by the chip's report and the secret path works (SNP)"
        } else {
            "the launch or the secret path does not check out (SNP)"
        }
    )?;
    match &o.report {
        SnpReportOutcome::Confirmed { at } => {
            writeln!(
                out,
                "report recorded by the key broker as confirmed (at {at})"
            )
        }
        SnpReportOutcome::PathBroken { at, failed_checks } => writeln!(
            out,
            "report recorded by the key broker as path_broken (at {at}): {}",
            failed_checks.join(", ")
        ),
        SnpReportOutcome::NotSent { reason } => writeln!(out, "report not sent: {reason}"),
        SnpReportOutcome::Refused { reason } => writeln!(out, "report refused: {reason}"),
        SnpReportOutcome::Undelivered { reason } => {
            writeln!(out, "report not delivered: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_tcbs_parse() {
        let m = parse_min_tcb("bootloader=7,snp=21,microcode=209,fmc=1").unwrap();
        assert_eq!(
            m,
            snp_attestation::MinTcb {
                bootloader: Some(7),
                tee: None,
                snp: Some(21),
                microcode: Some(209),
                fmc: Some(1),
            }
        );
        assert!(parse_min_tcb("bootloader=256").is_err());
        assert!(parse_min_tcb("sp=1").is_err());
        assert!(parse_min_tcb("snp").is_err());
    }

    #[test]
    fn expected_digests_come_from_agent_json_or_lines() {
        let d = "ab".repeat(48);
        let json = format!(
            r#"[{{"mode":"sev","digest":"{}"}},{{"mode":"snp","digest":"{d}","vcpus":2,"runtime_class":"kata-qemu-snp","config":"/etc/kata/c.toml"}}]"#,
            "00".repeat(32)
        );
        let e = parse_expected(&json).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].digest, [0xab; 48]);
        assert_eq!(e[0].label, "kata-qemu-snp 2 vCPUs (/etc/kata/c.toml)");
        let lines = format!(
            "# from the image build\n{d}\n\n{}  # other\n",
            "cd".repeat(48)
        );
        let e = parse_expected(&lines).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].digest, [0xcd; 48]);
        assert!(parse_expected("abcd\n").unwrap_err().starts_with("line 1"));
        assert!(parse_expected(r#"[{"mode":"snp","digest":"zz"}]"#)
            .unwrap_err()
            .starts_with("entry 0"));
    }
}
