//! `kbs admin ...`: a client of the admin API for people and scripts. Every RPC
//! of `kbsadmin.Admin` has a subcommand; `--json` prints machine-readable
//! output. It connects over the admin Unix socket (authenticated by the
//! kernel's peer credentials) or over TCP with a bearer token, over TLS when
//! the endpoint is https.

use crate::metrics::code_name;
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use kbs_proto::kbsadmin::{
    DeleteRequest, Digest, ListDigestsRequest, ListInventoryRequest, ListRecordsRequest,
    ReplaceDigestsRequest, SetKeysetRequest, SetResourceRequest, SetSecretRequest,
};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Where the kbs serves the admin socket unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/kbs/admin.sock";

/// Calls the admin API of a running kbs.
///
/// Connects to the admin Unix socket (--socket; the kbs admits root, its own
/// uid and the uids given to it with --admin-uid), or to the TCP admin
/// listener (--endpoint with --token-file, and --ca-file for an https
/// endpoint). Errors print "kbs: error: ..." with the server's message and its
/// gRPC code, and exit with status 1.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin Unix socket of the kbs.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Call the TCP admin listener instead: http://HOST:PORT (in clear, the
    /// kbs serves it on loopback only, e.g. http://127.0.0.1:44445) or
    /// https://HOST:PORT (TLS; needs --ca-file).
    #[arg(long, global = true, value_name = "URL", requires = "token_file")]
    pub endpoint: Option<String>,
    /// File holding a bearer token of the TCP admin listener: the kbs's
    /// --admin-token-file, or a token `kbs admin token create` printed.
    #[arg(long, global = true, value_name = "FILE", requires = "endpoint")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificate that issued the kbs's --admin-tls-cert,
    /// for an https --endpoint: the kbs's certificate must chain to it and
    /// name the endpoint's host. The system's CA roots are never used. Not
    /// allowed with an http endpoint.
    #[arg(long, global = true, value_name = "FILE", requires = "endpoint")]
    pub ca_file: Option<PathBuf>,
    /// Print machine-readable JSON on standard output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a call after this many seconds.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Launch digests registered per node and runtime class.
    #[command(subcommand)]
    Digests(DigestsCommand),
    /// Secrets (served to verified guests; values are never shown).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Keysets: named bundles of secrets.
    #[command(subcommand)]
    Keyset(KeysetCommand),
    /// Resources: files served to verified guests.
    #[command(subcommand)]
    Resource(ResourceCommand),
    /// List the ids of every secret, keyset and resource (never values).
    List,
    /// Show attestation records (every GetBundle, GetSecret, GetOnlineSecret
    /// and guest Report outcome), oldest first. A GetSecret that released
    /// secrets also shows what its guest reported back: awaiting, confirmed,
    /// or path_broken with the names of the failed checks.
    Records {
        /// Only records with an id larger than N (for paging: ids are final,
        /// so paging after the last id seen misses nothing, on any number of
        /// replicas).
        #[arg(long, value_name = "N", default_value_t = 0)]
        after: i64,
        /// At most N records (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Approve an input nodes may register launches with (operator only).
    /// A node's registration is accepted only when its firmware, kernel,
    /// initrd and Kata configuration are all approved; the broker then
    /// derives the digests itself.
    #[command(subcommand)]
    Approve(crate::approve_cli::ApproveCommand),
    /// List approved inputs, with who approved them and when.
    Approvals,
    /// Revoke an approval; the digests derived from it are removed at once.
    Revoke {
        /// firmware, kernel, initrd, kata-config, host-cpu or host-kernel.
        kind: String,
        /// The id `approvals` shows: a SHA-256, a CPU signature, a release.
        id: String,
        /// For kata-config: only the approval for this runtime class (all of
        /// that configuration's classes when not given).
        #[arg(long, value_name = "CLASS")]
        runtime_class: Option<String>,
    },
    /// Admin tokens for the TCP listener: per node, or for operators.
    #[command(subcommand)]
    Token(crate::approve_cli::TokenCommand),
    /// Show who the kbs takes this caller for (role and node).
    Whoami,
    /// Trustee's SNP reference values as the broker keeps them (operator only).
    #[command(subcommand)]
    Trustee(crate::trustee_cli::TrusteeCommand),
}

/// `kbs admin digests ...`
#[derive(Debug, Subcommand)]
pub enum DigestsCommand {
    /// Replace every digest of a node and runtime class, in one transaction.
    Replace {
        /// The node (host) the digests are for.
        #[arg(long, value_name = "NODE")]
        node: String,
        /// The Kata runtime class, e.g. kata-qemu-sev.
        #[arg(long, value_name = "CLASS")]
        runtime_class: String,
        /// A digest: MODE:HEX[:VCPUS[:VCPU_TYPE]], MODE being sev, seves or
        /// snp (32 bytes of HEX for sev and seves, 48 for snp). Repeatable; the
        /// given digests become the whole set.
        #[arg(long, value_name = "MODE:HEX[:VCPUS[:VCPU_TYPE]]", value_parser = parse_digest, required_unless_present = "clear")]
        digest: Vec<Digest>,
        /// Remove every digest of the node and runtime class.
        #[arg(long, conflicts_with = "digest")]
        clear: bool,
        /// The configuration the digests were derived from (recorded with each).
        #[arg(long, value_name = "TEXT", default_value = "")]
        config: String,
    },
    /// List registered digests.
    List {
        /// Only this node.
        #[arg(long, value_name = "NODE", default_value = "")]
        node: String,
        /// Only this runtime class.
        #[arg(long, value_name = "CLASS", default_value = "")]
        runtime_class: String,
    },
}

/// `kbs admin secret ...`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set or replace a secret.
    Set {
        /// The secret id.
        id: String,
        /// Read the value from FILE ("-" for standard input).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "value",
            conflicts_with = "value"
        )]
        value_file: Option<PathBuf>,
        /// The value itself. Other users can see command lines in the process
        /// list: prefer --value-file.
        #[arg(long, value_name = "TEXT")]
        value: Option<String>,
    },
    /// Delete a secret.
    Delete {
        /// The secret id.
        id: String,
    },
}

/// `kbs admin keyset ...`
#[derive(Debug, Subcommand)]
pub enum KeysetCommand {
    /// Set or replace a keyset.
    Set {
        /// The keyset id.
        id: String,
        /// Ids of the secrets it bundles.
        #[arg(value_name = "SECRET", required = true)]
        secrets: Vec<String>,
        /// A resource an online connection opened for this keyset may fetch
        /// (repeat for several). An online connection reaches only its
        /// launch's keyset: these resources, its secrets and its bundle.
        #[arg(long = "resource", value_name = "RESOURCE")]
        resources: Vec<String>,
    },
    /// Delete a keyset.
    Delete {
        /// The keyset id.
        id: String,
    },
}

/// `kbs admin resource ...`
#[derive(Debug, Subcommand)]
pub enum ResourceCommand {
    /// Set or replace a resource.
    Set {
        /// The resource id.
        id: String,
        /// Read the resource from FILE ("-" for standard input).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete a resource.
    Delete {
        /// The resource id.
        id: String,
    },
}

/// Parses `MODE:HEX[:VCPUS[:VCPU_TYPE]]`; the config is filled in later.
pub fn parse_digest(text: &str) -> Result<Digest, String> {
    let mut parts = text.splitn(4, ':');
    let mode = parts.next().unwrap_or_default();
    let Some(hex_text) = parts.next() else {
        return Err(format!("{text:?}: expected MODE:HEX[:VCPUS[:VCPU_TYPE]]"));
    };
    let digest = hex::decode(hex_text).map_err(|e| format!("{text:?}: HEX: {e}"))?;
    let vcpus = match parts.next() {
        None | Some("") => 0,
        Some(v) => v.parse().map_err(|e| format!("{text:?}: VCPUS: {e}"))?,
    };
    Ok(Digest {
        mode: mode.to_string(),
        digest,
        vcpus,
        vcpu_type: parts.next().unwrap_or_default().to_string(),
        config: String::new(),
    })
}

pub use kbs_proto::admin_client::{Bearer, Client};

/// Connects to the admin Unix socket at `path`.
pub async fn connect_unix(path: &Path, timeout: Duration) -> anyhow::Result<Client> {
    Ok(kbs_proto::admin_client::connect_unix(path, timeout).await?)
}

/// Connects to the TCP admin listener at `endpoint`, presenting `token`:
/// `http://HOST:PORT` without `ca_file`, or `https://HOST:PORT` verifying the
/// kbs against the CA certificate(s) in `ca_file` (see
/// [`kbs_proto::admin_client::connect_tcp`]).
pub async fn connect_tcp(
    endpoint: &str,
    token: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<Client> {
    Ok(kbs_proto::admin_client::connect_tcp(endpoint, token, ca_file, timeout).await?)
}

/// Reads a token file the way the kbs does (trimmed), without checking its mode.
pub fn read_token(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    Ok(kbs_proto::admin_client::read_token(path)?)
}

fn read_input(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(Vec::new());
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut data)
            .context("cannot read standard input")?;
    } else {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        f.read_to_end(&mut data)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(data)
}

/// An admin call's failure as the CLI reports it: the RPC, the server's
/// message and its gRPC code.
pub(crate) fn rpc_error(rpc: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow!("{rpc}: {} ({})", status.message(), code_name(status.code()))
}

/// Prints `value` as indented JSON on standard output.
pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[derive(Serialize)]
struct Change<'a> {
    kind: &'a str,
    id: &'a str,
    action: &'a str,
}

fn changed(json: bool, kind: &str, id: &str, action: &str) -> anyhow::Result<()> {
    if json {
        print_json(&Change { kind, id, action })
    } else {
        println!("{kind} {id} {action}");
        Ok(())
    }
}

#[derive(Serialize)]
struct DigestRow {
    node: String,
    runtime_class: String,
    mode: String,
    digest: String,
    vcpus: u32,
    vcpu_type: String,
    config: String,
    /// Who vouches for it: operator, derived (by the broker from approved
    /// inputs) or node (sent by a node under open registration).
    origin: String,
}

#[derive(Serialize)]
struct KeysetRow {
    id: String,
    secret_ids: Vec<String>,
    resource_ids: Vec<String>,
}

#[derive(Serialize)]
struct InventoryOut {
    secrets: Vec<String>,
    keysets: Vec<KeysetRow>,
    resources: Vec<String>,
}

/// Runs one admin command, printing its result on standard output.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    // Read inputs before connecting, so that a bad file fails fast.
    let mut client = match (&args.endpoint, &args.token_file) {
        (Some(endpoint), Some(token_file)) => {
            let token = read_token(token_file)?;
            connect_tcp(endpoint, &token, args.ca_file.as_deref(), timeout).await?
        }
        (None, None) => connect_unix(&args.socket, timeout).await?,
        _ => bail!("--endpoint and --token-file go together"),
    };
    let json = args.json;
    match args.command {
        AdminCommand::Digests(DigestsCommand::Replace {
            node,
            runtime_class,
            digest,
            clear,
            config,
        }) => {
            let digests: Vec<Digest> = if clear {
                Vec::new()
            } else {
                digest
                    .into_iter()
                    .map(|d| Digest {
                        config: config.clone(),
                        ..d
                    })
                    .collect()
            };
            let r = client
                .replace_digests(ReplaceDigestsRequest {
                    node: node.clone(),
                    runtime_class: runtime_class.clone(),
                    digests,
                })
                .await
                .map_err(|s| rpc_error("ReplaceDigests", &s))?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "node": node, "runtime_class": runtime_class, "count": r.count,
                }))?;
            } else {
                println!(
                    "{} digests registered for node {node}, runtime class {runtime_class}",
                    r.count
                );
            }
        }
        AdminCommand::Digests(DigestsCommand::List {
            node,
            runtime_class,
        }) => {
            let r = client
                .list_digests(ListDigestsRequest {
                    node,
                    runtime_class,
                })
                .await
                .map_err(|s| rpc_error("ListDigests", &s))?
                .into_inner();
            let rows: Vec<DigestRow> = r
                .digests
                .into_iter()
                .map(|g| {
                    let d = g.digest.unwrap_or_default();
                    DigestRow {
                        node: g.node,
                        runtime_class: g.runtime_class,
                        mode: d.mode,
                        digest: hex::encode(&d.digest),
                        vcpus: d.vcpus,
                        vcpu_type: d.vcpu_type,
                        config: d.config,
                        origin: g.origin,
                    }
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                for d in rows {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        d.node, d.runtime_class, d.mode, d.vcpus, d.vcpu_type, d.digest, d.origin
                    );
                }
            }
        }
        AdminCommand::Secret(SecretCommand::Set {
            id,
            value_file,
            value,
        }) => {
            let payload = match (value_file, value) {
                (Some(f), _) => read_input(&f)?,
                (None, Some(v)) => Zeroizing::new(v.into_bytes()),
                (None, None) => bail!("give --value-file or --value"),
            };
            client
                .set_secret(SetSecretRequest {
                    id: id.clone(),
                    payload: payload.to_vec(),
                })
                .await
                .map_err(|s| rpc_error("SetSecret", &s))?;
            changed(json, "secret", &id, "set")?;
        }
        AdminCommand::Secret(SecretCommand::Delete { id }) => {
            client
                .delete_secret(DeleteRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error("DeleteSecret", &s))?;
            changed(json, "secret", &id, "deleted")?;
        }
        AdminCommand::Keyset(KeysetCommand::Set {
            id,
            secrets,
            resources,
        }) => {
            client
                .set_keyset(SetKeysetRequest {
                    id: id.clone(),
                    secret_ids: secrets,
                    resource_ids: resources,
                })
                .await
                .map_err(|s| rpc_error("SetKeyset", &s))?;
            changed(json, "keyset", &id, "set")?;
        }
        AdminCommand::Keyset(KeysetCommand::Delete { id }) => {
            client
                .delete_keyset(DeleteRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error("DeleteKeyset", &s))?;
            changed(json, "keyset", &id, "deleted")?;
        }
        AdminCommand::Resource(ResourceCommand::Set { id, file }) => {
            let data = read_input(&file)?;
            client
                .set_resource(SetResourceRequest {
                    id: id.clone(),
                    data: data.to_vec(),
                })
                .await
                .map_err(|s| rpc_error("SetResource", &s))?;
            changed(json, "resource", &id, "set")?;
        }
        AdminCommand::Resource(ResourceCommand::Delete { id }) => {
            client
                .delete_resource(DeleteRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error("DeleteResource", &s))?;
            changed(json, "resource", &id, "deleted")?;
        }
        AdminCommand::List => {
            let r = client
                .list_inventory(ListInventoryRequest {})
                .await
                .map_err(|s| rpc_error("ListInventory", &s))?
                .into_inner();
            let inv = InventoryOut {
                secrets: r.secrets,
                keysets: r
                    .keysets
                    .into_iter()
                    .map(|k| KeysetRow {
                        id: k.id,
                        secret_ids: k.secret_ids,
                        resource_ids: k.resource_ids,
                    })
                    .collect(),
                resources: r.resources,
            };
            if json {
                print_json(&inv)?;
            } else {
                for s in &inv.secrets {
                    println!("secret\t{s}");
                }
                for k in &inv.keysets {
                    if k.resource_ids.is_empty() {
                        println!("keyset\t{}\t{}", k.id, k.secret_ids.join(","));
                    } else {
                        println!(
                            "keyset\t{}\t{}\tresources: {}",
                            k.id,
                            k.secret_ids.join(","),
                            k.resource_ids.join(",")
                        );
                    }
                }
                for r in &inv.resources {
                    println!("resource\t{r}");
                }
            }
        }
        AdminCommand::Records { after, limit } => {
            let r = client
                .list_records(ListRecordsRequest {
                    after_id: after,
                    limit,
                })
                .await
                .map_err(|s| rpc_error("ListRecords", &s))?
                .into_inner();
            let rows: Vec<crate::store::AttestationRecord> = r
                .records
                .into_iter()
                .map(crate::store::AttestationRecord::from)
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                print!("{}", records_table(&rows));
            }
        }
        AdminCommand::Approve(cmd) => {
            let request = crate::approve_cli::approve_request(cmd)?;
            crate::approve_cli::approve(&mut client, request, json).await?;
        }
        AdminCommand::Approvals => crate::approve_cli::approvals(&mut client, json).await?,
        AdminCommand::Revoke {
            kind,
            id,
            runtime_class,
        } => crate::approve_cli::revoke(&mut client, kind, id, runtime_class, json).await?,
        AdminCommand::Token(cmd) => crate::approve_cli::token(&mut client, cmd, json).await?,
        AdminCommand::Whoami => crate::approve_cli::whoami(&mut client, json).await?,
        AdminCommand::Trustee(cmd) => crate::trustee_cli::run(&mut client, cmd, json).await?,
    }
    Ok(())
}

/// Attestation records as a table for people (scripts read `--json`): one
/// line per record, columns aligned, times in UTC.
fn records_table(rows: &[crate::store::AttestationRecord]) -> String {
    let mut lines = vec![[
        "ID".to_string(),
        "TIME (UTC)".into(),
        "TEE".into(),
        "CALL".into(),
        "OUTCOME".into(),
        "LAUNCH OR CLIENT".into(),
        "GUEST".into(),
        "REASON".into(),
    ]];
    for a in rows {
        let guest = if a.failed_checks.is_empty() {
            a.guest_status.clone()
        } else {
            format!("{} ({})", a.guest_status, a.failed_checks.join(","))
        };
        let at = u64::try_from(a.at)
            .ok()
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| a.at.to_string());
        lines.push([
            a.id.to_string(),
            at,
            a.tee.clone(),
            a.rpc.clone(),
            a.outcome.clone(),
            if a.launch_id.is_empty() && !a.chip_id.is_empty() {
                // An SNP guest has no launch id: its chip says where it ran.
                format!("chip {}", a.chip_id.get(..16).unwrap_or(&a.chip_id))
            } else {
                a.launch_id.clone()
            },
            if guest.is_empty() { "-".into() } else { guest },
            a.reason.clone(),
        ]);
    }
    // Guests write check names, reasons and their client's name: shown
    // escaped, so that no text can drive the operator's terminal.
    for line in lines.iter_mut().skip(1) {
        for cell in line.iter_mut() {
            if cell.chars().any(char::is_control) {
                *cell = cell
                    .chars()
                    .map(|c| {
                        if c.is_control() {
                            c.escape_default().to_string()
                        } else {
                            c.to_string()
                        }
                    })
                    .collect();
            }
        }
    }
    let mut widths = [0usize; 8];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (w, cell) in widths.iter().zip(l) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_arguments_parse() {
        let d = parse_digest(&format!("snp:{}:4:EPYC-v4", "ab".repeat(48))).unwrap();
        assert_eq!(d.mode, "snp");
        assert_eq!(d.digest, vec![0xab; 48]);
        assert_eq!(d.vcpus, 4);
        assert_eq!(d.vcpu_type, "EPYC-v4");
        let d = parse_digest(&format!("sev:{}", "00".repeat(32))).unwrap();
        assert_eq!((d.vcpus, d.vcpu_type.as_str()), (0, ""));
        assert!(parse_digest("sev").is_err());
        assert!(parse_digest("sev:zz").is_err());
        assert!(parse_digest("sev:00:x").is_err());
    }

    #[test]
    fn records_print_as_an_aligned_table() {
        let row = crate::store::AttestationRecord {
            id: 7,
            at: 1_795_887_886,
            rpc: "GetSecret".into(),
            outcome: "refused".into(),
            launch_id: "l-1".into(),
            reason: "launch digest not registered".into(),
            ..crate::store::AttestationRecord::default()
        };
        let table = records_table(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  TIME (UTC)"), "{table}");
        assert!(lines[1].contains("2026-11-28T"), "{table}");
        assert!(
            lines[1].ends_with("launch digest not registered"),
            "{table}"
        );
        // Columns line up: CALL starts at the same offset on both lines.
        assert_eq!(lines[0].find("CALL"), lines[1].find("GetSecret"));
        let hostile = crate::store::AttestationRecord {
            rpc: "Report".into(),
            guest_status: "path_broken".into(),
            failed_checks: vec!["x\u{1b}[2Jy".into()],
            ..crate::store::AttestationRecord::default()
        };
        let table = records_table(&[hostile]);
        assert!(!table.contains('\u{1b}'), "{table:?}");
        assert!(table.contains("x\\u{1b}[2Jy"), "{table:?}");
    }
}
