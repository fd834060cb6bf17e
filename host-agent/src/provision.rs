//! `host-agent provision`: one-shot registration of this node's launch digests,
//! the image signature policy and the cosign public key, for nodes that do not
//! run the daemon or to set the policy.
//!
//! Every call replaces (digests per runtime class, resources by id), so running
//! it twice gives the same state. What this node set is recorded in its state
//! directory, so that `--clean` removes this node's digests and the resources it
//! set, and nothing another node or an operator registered.

use crate::agent::cache::ArtefactCache;
use crate::agent::config::{AgentConfig, KbsTarget};
use crate::agent::derive::{derive_file, Derived, HostFacts};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use kbs_proto::admin_client::{self, Client};
use kbs_proto::kbsadmin::{
    DeleteRequest, Digest, ListDigestsRequest, ReplaceDigestsRequest, SetResourceRequest,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The resource the guest reads its image signature policy from.
pub const POLICY_RESOURCE: &str = "default/security-policy/test";
/// The resource holding the cosign public key the policy points at.
pub const COSIGN_KEY_RESOURCE: &str = "default/cosign-key/1";
/// How the policy names the key: a KBS resource URI the guest resolves.
pub const COSIGN_KEY_PATH: &str = "kbs:///default/cosign-key/1";

/// Which images the guest accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignaturePolicy {
    /// Any image (`insecureAcceptAnything`).
    None,
    /// Only images of the given repositories signed with the cosign key; every
    /// other image is rejected.
    Verify,
}

/// Options of `host-agent provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The agent's configuration file (Kata configurations, key broker, node
    /// name, launches); /etc/host-agent/config.toml when it exists, else the
    /// defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The image signature policy the guests get: `none` accepts any image,
    /// `verify` accepts only images of the --image repositories signed with
    /// --cosign-key.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub signature_policy: SignaturePolicy,
    /// A repository whose images must be signed (e.g. `docker.io/library/nginx`
    /// or `registry.example:5000/apps/hello`); repeat for several. With
    /// `verify`, images of any other repository are rejected.
    #[arg(long = "image", value_name = "REPO")]
    pub images: Vec<String>,
    /// The cosign public key (PEM) that signs the images; needed with `verify`.
    #[arg(long, value_name = "FILE")]
    pub cosign_key: Option<PathBuf>,
    /// First remove everything this node registered before (its digests and the
    /// resources it set), then provision afresh.
    #[arg(long)]
    pub clean: bool,
    /// Only remove what this node registered; provision nothing.
    #[arg(long, requires = "clean")]
    pub clean_only: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What this node set at the broker, kept in its state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioned {
    /// The node name used.
    pub node: String,
    /// Runtime classes registered.
    pub classes: Vec<String>,
    /// Resource ids set.
    pub resources: Vec<String>,
}

/// The containers-policy.json text for a policy.
pub fn policy_json(policy: SignaturePolicy, images: &[String]) -> String {
    let value = match policy {
        SignaturePolicy::None => serde_json::json!({
            "default": [{"type": "insecureAcceptAnything"}],
            "transports": {}
        }),
        SignaturePolicy::Verify => {
            let docker: serde_json::Map<String, serde_json::Value> = images
                .iter()
                .map(|repo| {
                    (
                        repo.clone(),
                        serde_json::json!([{"type": "sigstoreSigned", "keyPath": COSIGN_KEY_PATH}]),
                    )
                })
                .collect();
            serde_json::json!({
                "default": [{"type": "reject"}],
                "transports": {"docker": docker}
            })
        }
    };
    // A json! value always serialises.
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Checks a repository reference: a name without tag or digest.
fn check_repository(repo: &str) -> anyhow::Result<()> {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if repo.is_empty()
        || repo.contains(char::is_whitespace)
        || repo.contains('@')
        || last.contains(':')
    {
        bail!(
            "--image {repo:?}: give a repository (e.g. docker.io/library/nginx), without tag or digest"
        );
    }
    Ok(())
}

/// Reads and checks a cosign public key.
fn read_cosign_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let data = std::fs::read(path)
        .with_context(|| format!("cannot read the cosign key {}", path.display()))?;
    let text = std::str::from_utf8(&data).unwrap_or_default();
    if text.contains("PRIVATE KEY") {
        bail!(
            "{} is a private key; give the public key (cosign.pub): the guest only verifies",
            path.display()
        );
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----") {
        bail!("{} is not a PEM public key (cosign.pub)", path.display());
    }
    Ok(data)
}

fn state_file(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("provisioned.json")
}

fn read_state(path: &Path) -> anyhow::Result<Provisioned> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .with_context(|| format!("{} is not a provisioning record", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Provisioned::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the record atomically: a crash leaves the old or the new one.
fn write_state(path: &Path, state: &Provisioned) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, state)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Connects as the agent's configuration says.
pub async fn connect(config: &AgentConfig) -> anyhow::Result<Client> {
    let timeout = config.kbs_timeout();
    Ok(match config.kbs_target() {
        KbsTarget::Socket(path) => admin_client::connect_unix(&path, timeout).await?,
        KbsTarget::Tcp {
            endpoint,
            token_file,
        } => {
            let token = admin_client::read_token(&token_file)?;
            admin_client::connect_tcp(&endpoint, &token, timeout).await?
        }
    })
}

fn rpc(name: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("key broker {name}: {:?}: {}", s.code(), s.message())
}

/// Derives the digest set of every runtime class; any broken configuration
/// fails the whole run, before anything is registered.
pub fn derive_all(config: &AgentConfig) -> anyhow::Result<BTreeMap<String, Vec<Digest>>> {
    let host = HostFacts::detect(config);
    let mut cache = ArtefactCache::new();
    let mut out = BTreeMap::new();
    let mut files = Vec::new();
    for pattern in &config.kata_configs {
        for p in glob::glob(pattern).with_context(|| format!("kata_configs {pattern:?}"))? {
            files.push(p?);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "no Kata configuration file matches {}",
            config.kata_configs.join(", ")
        );
    }
    for file in files {
        let (_, derived) = derive_file(&file, config, &host, &mut cache)?;
        if let Derived::Launches(c) = derived {
            if out.contains_key(&c.runtime_class) {
                continue; // the first file of a class wins, as in the daemon
            }
            let digests = c
                .launches
                .iter()
                .map(|l| Digest {
                    mode: l.mode.to_string(),
                    digest: l.digest_bytes.clone(),
                    vcpus: l.vcpus,
                    vcpu_type: l.vcpu_sig.clone().unwrap_or_default(),
                    config: format!("{} (pod CPUs {})", c.config.display(), l.pod_cpus),
                })
                .collect();
            out.insert(c.runtime_class.clone(), digests);
        }
    }
    Ok(out)
}

/// What a run did, as printed.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// The node.
    pub node: String,
    /// Classes whose digests were removed by --clean.
    pub removed_classes: Vec<String>,
    /// Resources deleted by --clean (or no longer wanted).
    pub removed_resources: Vec<String>,
    /// Classes registered, with their digest counts.
    pub registered: BTreeMap<String, u32>,
    /// Resources set.
    pub resources: Vec<String>,
    /// The policy, when set.
    pub signature_policy: Option<SignaturePolicy>,
}

async fn provision(a: &ProvisionArgs, config: &AgentConfig) -> anyhow::Result<Outcome> {
    let node = config.node_name();
    let state_path = state_file(config);
    let before = read_state(&state_path)?;
    // Check every input before touching the broker.
    let cosign_key = match (a.signature_policy, &a.cosign_key) {
        (SignaturePolicy::Verify, Some(p)) => Some(read_cosign_key(p)?),
        (SignaturePolicy::Verify, None) if !a.clean_only => {
            bail!("--signature-policy verify needs --cosign-key (the cosign public key)")
        }
        _ => None,
    };
    if a.signature_policy == SignaturePolicy::Verify && a.images.is_empty() && !a.clean_only {
        bail!("--signature-policy verify needs at least one --image REPO: otherwise every image is rejected");
    }
    for i in &a.images {
        check_repository(i)?;
    }
    let digests = if a.clean_only {
        BTreeMap::new()
    } else {
        derive_all(config)?
    };
    let mut client = connect(config).await?;
    let mut out = Outcome {
        node: node.clone(),
        ..Outcome::default()
    };
    let mut record = Provisioned {
        node: node.clone(),
        ..Provisioned::default()
    };
    if a.clean {
        let listed = client
            .list_digests(ListDigestsRequest {
                node: node.clone(),
                runtime_class: String::new(),
            })
            .await
            .map_err(|s| rpc("ListDigests", &s))?
            .into_inner();
        let mut classes: Vec<String> = listed
            .digests
            .into_iter()
            .filter(|d| d.node == node)
            .map(|d| d.runtime_class)
            .collect();
        classes.sort();
        classes.dedup();
        for class in classes {
            client
                .replace_digests(ReplaceDigestsRequest {
                    node: node.clone(),
                    runtime_class: class.clone(),
                    digests: Vec::new(),
                })
                .await
                .map_err(|s| rpc("ReplaceDigests", &s))?;
            out.removed_classes.push(class);
        }
        for id in &before.resources {
            delete_resource(&mut client, id, &mut out).await?;
        }
        // The record now says nothing is provisioned, in case the rest fails.
        write_state(&state_path, &record)?;
        if a.clean_only {
            return Ok(out);
        }
    }
    for (class, set) in &digests {
        let reply = client
            .replace_digests(ReplaceDigestsRequest {
                node: node.clone(),
                runtime_class: class.clone(),
                digests: set.clone(),
            })
            .await
            .map_err(|s| rpc("ReplaceDigests", &s))?
            .into_inner();
        out.registered.insert(class.clone(), reply.count);
        record.classes.push(class.clone());
    }
    let policy = policy_json(a.signature_policy, &a.images);
    set_resource(&mut client, POLICY_RESOURCE, policy.into_bytes()).await?;
    record.resources.push(POLICY_RESOURCE.into());
    out.resources.push(POLICY_RESOURCE.into());
    out.signature_policy = Some(a.signature_policy);
    if let Some(key) = cosign_key {
        set_resource(&mut client, COSIGN_KEY_RESOURCE, key).await?;
        record.resources.push(COSIGN_KEY_RESOURCE.into());
        out.resources.push(COSIGN_KEY_RESOURCE.into());
    } else if !a.clean && before.resources.iter().any(|r| r == COSIGN_KEY_RESOURCE) {
        // This node set the key for an earlier `verify`; nothing points at it now.
        delete_resource(&mut client, COSIGN_KEY_RESOURCE, &mut out).await?;
    }
    write_state(&state_path, &record)?;
    Ok(out)
}

async fn set_resource(client: &mut Client, id: &str, data: Vec<u8>) -> anyhow::Result<()> {
    client
        .set_resource(SetResourceRequest {
            id: id.to_string(),
            data,
        })
        .await
        .map_err(|s| rpc("SetResource", &s))?;
    Ok(())
}

async fn delete_resource(client: &mut Client, id: &str, out: &mut Outcome) -> anyhow::Result<()> {
    match client
        .delete_resource(DeleteRequest { id: id.to_string() })
        .await
    {
        Ok(_) => {
            out.removed_resources.push(id.to_string());
            Ok(())
        }
        // Already gone: the state wanted.
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(rpc("DeleteResource", &s)),
    }
}

/// Runs `provision`.
pub fn run(a: &ProvisionArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = crate::agent::load_config(a.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(provision(a, &config))?;
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &outcome)?;
        writeln!(out)?;
        return Ok(());
    }
    for c in &outcome.removed_classes {
        writeln!(out, "removed   digests of {c} (node {})", outcome.node)?;
    }
    for r in &outcome.removed_resources {
        writeln!(out, "removed   resource {r}")?;
    }
    for (c, n) in &outcome.registered {
        writeln!(out, "registered {n} digests of {c} (node {})", outcome.node)?;
    }
    for r in &outcome.resources {
        writeln!(out, "set       resource {r}")?;
    }
    if let Some(p) = outcome.signature_policy {
        let p = match p {
            SignaturePolicy::None => "none (any image)".to_string(),
            SignaturePolicy::Verify => format!("verify ({})", a.images.join(", ")),
        };
        writeln!(out, "signature policy {p}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_containers_policy_json() {
        let none: serde_json::Value =
            serde_json::from_str(&policy_json(SignaturePolicy::None, &[])).unwrap();
        assert_eq!(
            none,
            serde_json::json!({"default":[{"type":"insecureAcceptAnything"}],"transports":{}})
        );
        let verify: serde_json::Value = serde_json::from_str(&policy_json(
            SignaturePolicy::Verify,
            &["docker.io/library/nginx".into(), "reg:5000/a/b".into()],
        ))
        .unwrap();
        assert_eq!(verify["default"][0]["type"], "reject");
        for repo in ["docker.io/library/nginx", "reg:5000/a/b"] {
            assert_eq!(
                verify["transports"]["docker"][repo][0]["type"],
                "sigstoreSigned"
            );
            assert_eq!(
                verify["transports"]["docker"][repo][0]["keyPath"],
                "kbs:///default/cosign-key/1"
            );
        }
    }

    #[test]
    fn repositories_without_tag_or_digest() {
        assert!(check_repository("reg:5000/a/b").is_ok());
        assert!(check_repository("docker.io/library/nginx").is_ok());
        assert!(check_repository("nginx:latest").is_err());
        assert!(check_repository("nginx@sha256:00").is_err());
        assert!(check_repository("").is_err());
    }

    #[test]
    fn keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n").unwrap();
        assert!(read_cosign_key(&p)
            .unwrap_err()
            .to_string()
            .contains("private"));
        std::fs::write(&p, "hello").unwrap();
        assert!(read_cosign_key(&p).is_err());
        std::fs::write(
            &p,
            "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        assert!(read_cosign_key(&p).is_ok());
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/provisioned.json");
        assert_eq!(read_state(&p).unwrap(), Provisioned::default());
        let s = Provisioned {
            node: "n".into(),
            classes: vec!["kata-qemu-sev".into()],
            resources: vec![POLICY_RESOURCE.into()],
        };
        write_state(&p, &s).unwrap();
        assert_eq!(read_state(&p).unwrap(), s);
    }
}
