//! `kbs admin approve|approvals|revoke|token|whoami`: the operator's side of
//! registration by inputs, and the admin tokens.
//!
//! Kernels and initrds are approved by SHA-256, computed here from the file
//! (streamed, so a large initrd is never held in memory) or given; firmware
//! images and Kata configurations are uploaded, since the broker measures
//! launches with them.

use crate::admin_cli::{print_json, rpc_error};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kbs_proto::admin_client::Client;
use kbs_proto::kbsadmin::{
    Approval, ApproveRequest, CreateTokenRequest, ListApprovalsRequest, ListTokensRequest,
    RevokeRequest, RevokeTokenRequest, WhoAmIRequest,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest firmware image or configuration read for upload.
const MAX_UPLOAD: u64 = 64 << 20;

/// `kbs admin approve ...`: allow an input in registrations by nodes.
#[derive(Debug, Subcommand)]
pub enum ApproveCommand {
    /// An OVMF image (uploaded: the broker measures launches with it).
    Firmware {
        /// The image.
        file: PathBuf,
        /// Kept with the approval.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// A guest kernel, by SHA-256 (of FILE, computed here, or given).
    Kernel(ArtefactArgs),
    /// A guest initrd, by SHA-256 (of FILE, computed here, or given).
    Initrd(ArtefactArgs),
    /// A Kata configuration file's exact text, for one runtime class.
    KataConfig {
        /// The configuration-*.toml as the nodes have it (any edit is a new
        /// configuration needing its own approval).
        file: PathBuf,
        /// The runtime class it serves, e.g. kata-qemu-snp.
        #[arg(long, value_name = "CLASS")]
        runtime_class: String,
        /// A Kata release whose shim may launch it ("4.1.0", "CC-0.8.0").
        /// Repeatable; CC-0.8.0 when none is given.
        #[arg(long = "kata-version", value_name = "VERSION")]
        kata_versions: Vec<String>,
        /// The pod CPU limits allowed, MIN-MAX (default 0-256).
        #[arg(long, value_name = "MIN-MAX", value_parser = parse_range)]
        pod_cpus: Option<(u32, u32)>,
        /// An annotation value pods may set that gets launches of its own,
        /// NAME=VALUE (default_vcpus, kernel_params, kernel_verity_params).
        /// Repeatable.
        #[arg(long, value_name = "NAME=VALUE")]
        annotation: Vec<String>,
        /// Kept with the approval.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// A host CPU signature, for SEV-ES guests started with -cpu host (their
    /// VMSAs carry it), e.g. 0x00a00f11.
    HostCpu {
        /// The CPUID signature.
        signature: String,
        /// Kept with the approval.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// A host kernel release (MAJOR.MINOR), whose SNP VMSAs Kata 3.19 and
    /// later measure.
    HostKernel {
        /// e.g. 6.8.
        release: String,
        /// The SEV features its SNP VMSAs carry, when not what that release
        /// sets (a distribution kernel with backports).
        #[arg(long, value_name = "HEX", value_parser = parse_hex_u64)]
        snp_guest_features: Option<u64>,
        /// Kept with the approval.
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// A kernel or initrd: a file, or its SHA-256.
#[derive(Debug, Args)]
pub struct ArtefactArgs {
    /// The file (hashed here; not uploaded).
    #[arg(required_unless_present = "sha256", conflicts_with = "sha256")]
    pub file: Option<PathBuf>,
    /// The SHA-256, 64 hexadecimal digits.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Kept with the approval.
    #[arg(long, default_value = "")]
    pub note: String,
}

/// `kbs admin token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it once on standard output (it is stored only
    /// hashed). A node token may only register and list its node's digests.
    Create {
        /// A node token for NODE.
        #[arg(long, value_name = "NODE", required_unless_present = "operator")]
        node: Option<String>,
        /// An operator token: every admin call.
        #[arg(long, conflicts_with = "node")]
        operator: bool,
        /// Kept with the token.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke a token by its id.
    Revoke {
        /// The id `token list` shows.
        id: String,
    },
}

fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected MIN-MAX"))?;
    let n = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|e| format!("{text:?}: {e}"))
    };
    let (a, b) = (n(a)?, n(b)?);
    if a > b {
        return Err(format!("{text:?}: MIN is larger than MAX"));
    }
    Ok((a, b))
}

fn parse_hex_u64(text: &str) -> Result<u64, String> {
    let t = text.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(t, 16).map_err(|e| format!("{text:?}: {e}"))
}

/// SHA-256 of a file, streamed.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !f.metadata()?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(h.finalize()))
}

fn read_upload(path: &Path) -> anyhow::Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !f.metadata()?.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut data = Vec::new();
    f.take(MAX_UPLOAD + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if u64::try_from(data.len()).unwrap_or(u64::MAX) > MAX_UPLOAD {
        bail!("{} is larger than {MAX_UPLOAD} bytes", path.display());
    }
    Ok(data)
}

/// Builds the request of an approve command (reading and hashing files).
pub fn approve_request(cmd: ApproveCommand) -> anyhow::Result<ApproveRequest> {
    let artefact = |kind: &str, a: ArtefactArgs| -> anyhow::Result<ApproveRequest> {
        let id = match (a.file, a.sha256) {
            (Some(f), _) => sha256_file(&f)?,
            (None, Some(h)) => h,
            (None, None) => bail!("give FILE or --sha256"),
        };
        Ok(ApproveRequest {
            kind: kind.into(),
            id,
            note: a.note,
            ..Default::default()
        })
    };
    Ok(match cmd {
        ApproveCommand::Firmware { file, note } => ApproveRequest {
            kind: "firmware".into(),
            data: read_upload(&file)?,
            note,
            ..Default::default()
        },
        ApproveCommand::Kernel(a) => artefact("kernel", a)?,
        ApproveCommand::Initrd(a) => artefact("initrd", a)?,
        ApproveCommand::KataConfig {
            file,
            runtime_class,
            kata_versions,
            pod_cpus,
            annotation,
            note,
        } => {
            let (min, max) = pod_cpus.unwrap_or((0, 0));
            ApproveRequest {
                kind: "kata-config".into(),
                data: read_upload(&file)?,
                runtime_class,
                kata_versions,
                min_pod_cpus: min,
                max_pod_cpus: max,
                annotations: annotation,
                note,
                ..Default::default()
            }
        }
        ApproveCommand::HostCpu { signature, note } => ApproveRequest {
            kind: "host-cpu".into(),
            id: signature,
            note,
            ..Default::default()
        },
        ApproveCommand::HostKernel {
            release,
            snp_guest_features,
            note,
        } => ApproveRequest {
            kind: "host-kernel".into(),
            id: release,
            snp_guest_features: snp_guest_features.unwrap_or(0),
            note,
            ..Default::default()
        },
    })
}

#[derive(Serialize)]
struct ApprovalOut {
    kind: String,
    id: String,
    runtime_class: String,
    detail: String,
    approved_by: String,
    approved_at: String,
    note: String,
}

fn when(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn approval_out(a: Approval) -> ApprovalOut {
    ApprovalOut {
        approved_at: when(a.approved_at),
        kind: a.kind,
        id: a.id,
        runtime_class: a.runtime_class,
        detail: a.detail,
        approved_by: a.approved_by,
        note: a.note,
    }
}

fn print_approval(a: &ApprovalOut) {
    let class = if a.runtime_class.is_empty() {
        String::new()
    } else {
        format!(" ({})", a.runtime_class)
    };
    println!(
        "{}\t{}{class}\t{}\tapproved by {} at {}",
        a.kind, a.id, a.detail, a.approved_by, a.approved_at
    );
}

/// `kbs admin approve ...`
pub async fn approve(
    client: &mut Client,
    request: ApproveRequest,
    json: bool,
) -> anyhow::Result<()> {
    let a = client
        .approve(request)
        .await
        .map_err(|s| rpc_error("Approve", &s))?
        .into_inner()
        .approval
        .unwrap_or_default();
    let out = approval_out(a);
    if json {
        print_json(&out)
    } else {
        print!("approved: ");
        print_approval(&out);
        Ok(())
    }
}

/// `kbs admin approvals`
pub async fn approvals(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let list: Vec<ApprovalOut> = client
        .list_approvals(ListApprovalsRequest {})
        .await
        .map_err(|s| rpc_error("ListApprovals", &s))?
        .into_inner()
        .approvals
        .into_iter()
        .map(approval_out)
        .collect();
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("no approvals: nodes can register nothing under approved registration");
    }
    for a in &list {
        print_approval(a);
    }
    Ok(())
}

/// `kbs admin revoke KIND ID`
pub async fn revoke(
    client: &mut Client,
    kind: String,
    id: String,
    runtime_class: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let r = client
        .revoke(RevokeRequest {
            kind: kind.clone(),
            id: id.clone(),
            runtime_class: runtime_class.unwrap_or_default(),
        })
        .await
        .map_err(|s| rpc_error("Revoke", &s))?
        .into_inner();
    if json {
        print_json(&serde_json::json!({
            "kind": kind, "id": id, "revoked": r.revoked, "digests_removed": r.digests_removed,
        }))
    } else {
        println!(
            "{kind} {id} revoked ({} approval(s)); {} digest(s) derived from it removed",
            r.revoked, r.digests_removed
        );
        Ok(())
    }
}

/// `kbs admin token ...`
pub async fn token(client: &mut Client, cmd: TokenCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            node,
            operator,
            note,
        } => {
            let (role, node) = match (operator, node) {
                (true, _) => ("operator", String::new()),
                (false, Some(n)) => ("node", n),
                (false, None) => bail!("give --node NAME or --operator"),
            };
            let r = client
                .create_token(CreateTokenRequest {
                    role: role.into(),
                    node: node.clone(),
                    note,
                })
                .await
                .map_err(|s| rpc_error("CreateToken", &s))?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "id": r.id, "role": role, "node": node, "token": r.token,
                }))?;
            } else {
                // The token alone on standard output, so that it can be
                // redirected into a file; the rest on standard error.
                println!("{}", r.token);
                eprintln!(
                    "made {role} token {}{}: shown once, store it now (only its hash is kept)",
                    r.id,
                    if node.is_empty() {
                        String::new()
                    } else {
                        format!(" for node {node}")
                    }
                );
            }
        }
        TokenCommand::List => {
            let list = client
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(|s| rpc_error("ListTokens", &s))?
                .into_inner()
                .tokens;
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "id": t.id, "role": t.role, "node": t.node, "note": t.note,
                        "created_by": t.created_by, "created_at": when(t.created_at),
                    })
                })
                .collect();
            if json {
                print_json(&rows)?;
            } else {
                for t in &list {
                    println!(
                        "{}\t{}\t{}\tmade by {} at {}\t{}",
                        t.id,
                        t.role,
                        if t.node.is_empty() { "-" } else { &t.node },
                        t.created_by,
                        when(t.created_at),
                        t.note
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            client
                .revoke_token(RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error("RevokeToken", &s))?;
            if json {
                print_json(&serde_json::json!({"kind": "token", "id": id, "action": "revoked"}))?;
            } else {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}

/// `kbs admin whoami`
pub async fn whoami(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let r = client
        .who_am_i(WhoAmIRequest {})
        .await
        .map_err(|s| rpc_error("WhoAmI", &s))?
        .into_inner();
    if json {
        print_json(&serde_json::json!({
            "role": r.role, "node": r.node, "name": r.name, "registration": r.registration,
        }))
    } else {
        let node = if r.node.is_empty() {
            String::new()
        } else {
            format!(" for node {}", r.node)
        };
        println!(
            "{} ({}{node}); the broker registers by {} inputs",
            r.name,
            r.role,
            if r.registration == "open" {
                "any (open registration)"
            } else {
                "approved"
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_hashed_here_and_ranges_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("vmlinuz");
        std::fs::write(&f, b"abc").unwrap();
        let r = approve_request(ApproveCommand::Kernel(ArtefactArgs {
            file: Some(f),
            sha256: None,
            note: String::new(),
        }))
        .unwrap();
        assert_eq!(
            r.id,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(r.data.is_empty(), "kernels are not uploaded");
        assert_eq!(parse_range("1-8").unwrap(), (1, 8));
        assert!(parse_range("8-1").is_err());
        assert!(parse_range("8").is_err());
        assert_eq!(parse_hex_u64("0x21").unwrap(), 0x21);
    }
}
