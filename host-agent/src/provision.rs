//! `host-agent provision`: one-shot registration of this node's launch digests,
//! the image signature policy, the cosign public key and the key of encrypted
//! images, for nodes that do not run the daemon or to set the policy.
//!
//! Every call replaces (digests per runtime class, resources and secrets by id),
//! so running it twice gives the same state. What this node set is recorded in
//! its state directory, so that `--clean` removes this node's digests and the
//! resources and secrets it set, and nothing another node or an operator
//! registered.
//!
//! The image key is a secret in a keyset, because that is how both of the
//! guest's paths reach it: offline, the Kata shim asks for one keyset's bundle
//! and the attestation agent looks the key up in it by id; online, the agent
//! asks for the secret itself by id (`SecretType` "key"). Keysets are shared
//! with the operator and other nodes, so joining one is read-modify-write and
//! `--clean` takes only this node's id back out, deleting the keyset only when
//! this node created it and nothing else is left in it.

use crate::agent::cache::ArtefactCache;
use crate::agent::config::{AgentConfig, KbsTarget};
use crate::agent::derive::{derive_file, Derived, HostFacts};
use crate::agent::inputs::{approve_hints, registration_of, unapproved, ClassRegistration};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use kbs_proto::admin_client::{self, Client};
use kbs_proto::kbsadmin::{
    ApproveRequest, DeleteRequest, Keyset, ListDigestsRequest, ListInventoryRequest,
    RegisterLaunchesRequest, ReplaceDigestsRequest, SetKeysetRequest, SetResourceRequest,
    SetSecretRequest,
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
/// The secret holding the key of encrypted images: the resource path of the
/// `kid` (`kbs:///default/image-encryption-key/1`) in the layers' annotations.
pub const IMAGE_KEY_SECRET: &str = "default/image-encryption-key/1";
/// Length of the image key: the attestation agent unwraps each layer's key
/// with AES-256 (wrap types A256GCM and A256CTR), which takes exactly 32 bytes.
pub const IMAGE_KEY_LEN: usize = 32;
/// The keyset the Kata shim asks for when `guest_pre_attestation_keyset` is
/// not set.
pub const DEFAULT_KEYSET: &str = "KEYSET-1";
/// Longest id the broker takes, in bytes.
const MAX_ID: usize = 256;

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
#[command(after_long_help = "\
Encrypted images: --image-encryption-key sets the secret default/image-encryption-key/1 \
(the key id kbs:///default/image-encryption-key/1 of the layers' annotations) and puts it \
in the keyset the Kata shim asks for (guest_pre_attestation_keyset, KEYSET-1 by default; \
other secrets of that keyset stay). Offline guests find it in that keyset's bundle, online \
guests ask for it by id. Without the option, a key this node set earlier stays registered; \
--clean removes it and takes its id out of the keyset, deleting the keyset only when this \
node created it and nothing else is in it. The key is never printed.")]
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
    /// The key of encrypted images: a file of exactly 32 raw bytes (AES-256,
    /// e.g. from `head -c 32 /dev/urandom`; not base64 or hex), set as secret
    /// default/image-encryption-key/1 in the --keyset. Never printed.
    #[arg(long, value_name = "FILE")]
    pub image_encryption_key: Option<PathBuf>,
    /// The keyset the image key joins: the one the Kata shim asks for
    /// (`guest_pre_attestation_keyset`). Its other secrets stay.
    #[arg(
        long,
        value_name = "ID",
        default_value = DEFAULT_KEYSET,
        requires = "image_encryption_key"
    )]
    pub keyset: String,
    /// First remove everything this node registered before (its digests, the
    /// resources and secrets it set, its secrets' keyset memberships), then
    /// provision afresh.
    #[arg(long)]
    pub clean: bool,
    /// Only remove what this node registered; provision nothing.
    #[arg(long, requires = "clean")]
    pub clean_only: bool,
    /// Approve this node's launch inputs the broker does not know yet (its
    /// firmware image, kernel, initrd and Kata configurations, as the files
    /// on this node are now; its host CPU and kernel where launches depend on
    /// them), then register. Needs an operator credential: it vouches that
    /// this node's files are the ones to trust, for every node. Without it,
    /// unapproved inputs fail the run with the `kbs admin approve` commands
    /// that would approve them.
    #[arg(long, conflicts_with = "clean_only")]
    pub approve: bool,
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
    /// Secret ids set (absent from records written before secrets were set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Keyset memberships this node added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keysets: Vec<KeysetMembership>,
}

/// A secret this node put in a keyset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetMembership {
    /// The keyset.
    pub keyset: String,
    /// The secret.
    pub secret: String,
    /// This node created the keyset (it did not exist before), so it may
    /// delete it once nothing else is in it.
    pub created: bool,
}

/// The image key's bytes, wiped when dropped (best effort: the gRPC layer
/// makes its own copies while sending).
struct ImageKey(Vec<u8>);

impl Drop for ImageKey {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the compiler from dropping the writes to memory about to be freed.
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageKey({} bytes)", self.0.len())
    }
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

/// Reads and checks the image key: exactly [`IMAGE_KEY_LEN`] raw bytes. The
/// message names the file and the length, never the content.
fn read_image_key(path: &Path) -> anyhow::Result<ImageKey> {
    let key = ImageKey(
        std::fs::read(path)
            .with_context(|| format!("cannot read the image encryption key {}", path.display()))?,
    );
    if key.0.len() != IMAGE_KEY_LEN {
        let len = key.0.len();
        let text = key
            .0
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        bail!(
            "{}: the image encryption key is {len} bytes; it must be exactly {IMAGE_KEY_LEN} raw \
             bytes (an AES-256 key){}",
            path.display(),
            if text && len > 0 {
                ", and this looks like text: give the raw bytes, not base64 or hex"
            } else {
                ""
            }
        );
    }
    Ok(key)
}

/// Checks a keyset id as the broker does, so that a bad one is refused before
/// anything is set.
fn check_keyset(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("--keyset {id:?}: give 1 to {MAX_ID} printable ASCII characters without spaces");
    }
    Ok(())
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
            ca_file,
        } => {
            let token = admin_client::read_token(&token_file)?;
            admin_client::connect_tcp(&endpoint, &token, ca_file.as_deref(), timeout).await?
        }
    })
}

fn rpc(name: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("key broker {name}: {:?}: {}", s.code(), s.message())
}

/// Derives the launches of every runtime class, with the inputs they came
/// from; any broken configuration fails the whole run, before anything is
/// registered.
pub fn derive_all(config: &AgentConfig) -> anyhow::Result<BTreeMap<String, ClassRegistration>> {
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
    // Sent with SNP launches, as the daemon does; absent off an SNP host.
    let platform =
        crate::platform::read_platform(std::path::Path::new(crate::platform::SEV_DEVICE)).ok();
    for file in files {
        let (_, derived) = derive_file(&file, config, &host, &mut cache)?;
        if let Derived::Launches(c) = derived {
            if out.contains_key(&c.runtime_class) {
                continue; // the first file of a class wins, as in the daemon
            }
            out.insert(
                c.runtime_class.clone(),
                registration_of(&c, &host, platform.as_ref()),
            );
        }
    }
    Ok(out)
}

/// Registers one class by its inputs; with `approve`, first approves what
/// the broker names as unapproved, from this node's files.
async fn register_class(
    client: &mut Client,
    node: &str,
    reg: &ClassRegistration,
    approve: bool,
) -> anyhow::Result<u32> {
    let request = RegisterLaunchesRequest {
        node: node.to_string(),
        inputs: reg.inputs.clone(),
        launches: reg.launches.clone(),
        platform: reg.platform.clone(),
    };
    let class = reg
        .inputs
        .as_ref()
        .map(|i| i.runtime_class.clone())
        .unwrap_or_default();
    let refused = |s: &tonic::Status| {
        let mut e = format!(
            "key broker RegisterLaunches for {class}: {:?}: {}",
            s.code(),
            s.message()
        );
        let hints = approve_hints(s.details(), reg);
        if !hints.is_empty() {
            e.push_str("\nan operator approves them with (or run provision --approve):");
            for h in hints {
                e.push_str("\n  ");
                e.push_str(&h);
            }
        }
        anyhow::anyhow!(e)
    };
    match client.register_launches(request.clone()).await {
        Ok(r) => return Ok(r.into_inner().count),
        Err(s) if approve && !unapproved(s.details()).is_empty() => {
            for item in unapproved(s.details()) {
                let a = approval_for(&item.kind, &item.id, reg)?;
                client
                    .approve(a)
                    .await
                    .map_err(|s| rpc(&format!("Approve {} {}", item.kind, item.id), &s))?;
            }
        }
        Err(s) => return Err(refused(&s)),
    }
    client
        .register_launches(request)
        .await
        .map(|r| r.into_inner().count)
        .map_err(|s| refused(&s))
}

/// The approval of one input the broker named, from this node's files. A
/// file that no longer hashes to what was derived is refused: it changed
/// under the run, and approving its new content would approve something
/// nobody derived.
fn approval_for(kind: &str, id: &str, reg: &ClassRegistration) -> anyhow::Result<ApproveRequest> {
    use sha2::Digest as _;
    let file = || {
        reg.files
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, p)| p.clone())
            .with_context(|| format!("the broker names {kind} {id}, which this node did not send"))
    };
    let read_checked = |path: &Path| -> anyhow::Result<Vec<u8>> {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let got = hex::encode(sha2::Sha256::digest(&data));
        if got != id {
            bail!(
                "{} changed while provisioning (SHA-256 {got}, derived from {id}); run again",
                path.display()
            );
        }
        Ok(data)
    };
    let inputs = reg.inputs.clone().unwrap_or_default();
    let note = "approved by host-agent provision --approve".to_string();
    Ok(match kind {
        "firmware" => ApproveRequest {
            kind: kind.into(),
            data: read_checked(&file()?)?,
            note,
            ..ApproveRequest::default()
        },
        "kata-config" => {
            let min = inputs.pod_cpus.iter().copied().min().unwrap_or(0);
            let max = inputs.pod_cpus.iter().copied().max().unwrap_or(0);
            ApproveRequest {
                kind: kind.into(),
                data: read_checked(&file()?)?,
                runtime_class: inputs.runtime_class.clone(),
                kata_versions: vec![inputs.kata_version.clone()],
                min_pod_cpus: min,
                max_pod_cpus: max.max(1),
                annotations: inputs.annotations.clone(),
                note,
                ..ApproveRequest::default()
            }
        }
        // By hash: the broker never needs the kernel or initrd itself.
        "kernel" | "initrd" | "host-cpu" | "host-kernel" => ApproveRequest {
            kind: kind.into(),
            id: id.into(),
            note,
            ..ApproveRequest::default()
        },
        other => bail!("the broker names an input of kind {other:?} this agent cannot approve"),
    })
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
    /// Secrets set (ids only).
    pub secrets: Vec<String>,
    /// Secrets deleted by --clean.
    pub removed_secrets: Vec<String>,
    /// Keyset memberships in place after the run (set now or kept from before).
    pub keyset_members: Vec<KeysetMembership>,
    /// Memberships taken out of keysets.
    pub removed_keyset_members: Vec<KeysetMembership>,
    /// Keysets deleted: this node created them and nothing else was left in them.
    pub removed_keysets: Vec<String>,
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
    let mut image_key = match &a.image_encryption_key {
        Some(p) if !a.clean_only => {
            check_keyset(&a.keyset)?;
            Some(read_image_key(p)?)
        }
        _ => None,
    };
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
        // Out of the keysets first: a keyset naming a missing secret would
        // refuse every launch asking for it.
        for m in &before.keysets {
            leave_keyset(&mut client, m, &mut out).await?;
        }
        for id in &before.secrets {
            delete_secret(&mut client, id, &mut out).await?;
        }
        // The record now says nothing is provisioned, in case the rest fails.
        write_state(&state_path, &record)?;
        if a.clean_only {
            return Ok(out);
        }
    }
    for (class, reg) in &digests {
        let count = register_class(&mut client, &node, reg, a.approve).await?;
        out.registered.insert(class.clone(), count);
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
    // After --clean, nothing of the earlier run is left to carry over.
    let earlier = if a.clean {
        Provisioned::default()
    } else {
        before
    };
    if let Some(key) = image_key.as_mut() {
        // A move to another keyset: out of the old one first.
        for m in earlier
            .keysets
            .iter()
            .filter(|m| m.secret == IMAGE_KEY_SECRET && m.keyset != a.keyset)
        {
            leave_keyset(&mut client, m, &mut out).await?;
        }
        // Set before it joins the keyset, so that the keyset never names a
        // missing secret.
        client
            .set_secret(SetSecretRequest {
                id: IMAGE_KEY_SECRET.into(),
                payload: std::mem::take(&mut key.0),
            })
            .await
            .map_err(|s| rpc("SetSecret", &s))?;
        record.secrets.push(IMAGE_KEY_SECRET.into());
        out.secrets.push(IMAGE_KEY_SECRET.into());
        let created_before = earlier
            .keysets
            .iter()
            .any(|m| m.keyset == a.keyset && m.secret == IMAGE_KEY_SECRET && m.created);
        let m = join_keyset(&mut client, &a.keyset, IMAGE_KEY_SECRET, created_before).await?;
        record.keysets.push(m.clone());
        out.keyset_members.push(m);
    } else {
        // Not asked for this time: what this node set earlier stays, and stays
        // recorded, so that --clean can still remove it.
        for id in &earlier.secrets {
            if !record.secrets.contains(id) {
                record.secrets.push(id.clone());
            }
        }
        for m in &earlier.keysets {
            if !record.keysets.contains(m) {
                record.keysets.push(m.clone());
                out.keyset_members.push(m.clone());
            }
        }
    }
    // Online guests reach only the resources attached to the keyset their
    // shim names; attached after the image key joined, so that a keyset
    // created for the key is recorded as this node's.
    for id in &out.resources {
        attach_resource(&mut client, &a.keyset, id).await?;
    }
    write_state(&state_path, &record)?;
    Ok(out)
}

/// Puts `secret` in `keyset`, keeping its other members; creates the keyset
/// when it does not exist. Returns the membership to record: `created` when
/// this call created the keyset or an earlier run of this node did.
async fn join_keyset(
    client: &mut Client,
    keyset: &str,
    secret: &str,
    created_before: bool,
) -> anyhow::Result<KeysetMembership> {
    let existing = keyset_members(client, keyset).await?;
    let created = existing.is_none() || created_before;
    let mut members = existing.unwrap_or_default();
    if !members.secret_ids.iter().any(|s| s == secret) {
        members.secret_ids.push(secret.to_string());
        // The resources the operator attached stay attached.
        put_keyset(client, keyset, members).await?;
    }
    Ok(KeysetMembership {
        keyset: keyset.to_string(),
        secret: secret.to_string(),
        created,
    })
}

/// Takes a membership back out: the keyset is deleted when this node created
/// it and nothing else is left in it (no other secret, no resource but the
/// ones provision attaches), otherwise only the secret's id leaves.
async fn leave_keyset(
    client: &mut Client,
    m: &KeysetMembership,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    // Already gone: the state wanted.
    let Some(members) = keyset_members(client, &m.keyset).await? else {
        return Ok(());
    };
    let was_member = members.secret_ids.contains(&m.secret);
    let rest: Vec<String> = members
        .secret_ids
        .into_iter()
        .filter(|s| *s != m.secret)
        .collect();
    // The resources provision attaches are its own: they do not keep a
    // keyset this node created alive.
    let only_ours = members
        .resource_ids
        .iter()
        .all(|r| r == POLICY_RESOURCE || r == COSIGN_KEY_RESOURCE);
    if m.created && rest.is_empty() && only_ours {
        match client
            .delete_keyset(DeleteRequest {
                id: m.keyset.clone(),
            })
            .await
        {
            Ok(_) => out.removed_keysets.push(m.keyset.clone()),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(rpc("DeleteKeyset", &s)),
        }
    } else if was_member {
        let kept = Keyset {
            secret_ids: rest,
            ..members
        };
        put_keyset(client, &m.keyset, kept).await?;
        out.removed_keyset_members.push(m.clone());
    }
    Ok(())
}

/// A keyset with its members, `None` when the broker has no such keyset. The
/// admin API has no call for one keyset; the inventory lists every keyset
/// with its members (ids only, never secret values).
async fn keyset_members(client: &mut Client, keyset: &str) -> anyhow::Result<Option<Keyset>> {
    let inventory = client
        .list_inventory(ListInventoryRequest {})
        .await
        .map_err(|s| rpc("ListInventory", &s))?
        .into_inner();
    Ok(inventory.keysets.into_iter().find(|k| k.id == keyset))
}

async fn delete_secret(client: &mut Client, id: &str, out: &mut Outcome) -> anyhow::Result<()> {
    match client
        .delete_secret(DeleteRequest { id: id.to_string() })
        .await
    {
        Ok(_) => {
            out.removed_secrets.push(id.to_string());
            Ok(())
        }
        // Already gone: the state wanted.
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(rpc("DeleteSecret", &s)),
    }
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

/// Attaches resource `id` to `keyset`, creating the keyset when it does not
/// exist: an online connection reaches only the resources attached to the
/// keyset its launch named (the one the Kata shim asks for).
async fn attach_resource(client: &mut Client, keyset: &str, id: &str) -> anyhow::Result<()> {
    let mut members = keyset_members(client, keyset).await?.unwrap_or_default();
    if members.resource_ids.iter().any(|r| r == id) {
        return Ok(());
    }
    members.resource_ids.push(id.to_string());
    put_keyset(client, keyset, members).await
}

/// Sets keyset `id` to the members of `members` (its own id is ignored).
async fn put_keyset(client: &mut Client, id: &str, members: Keyset) -> anyhow::Result<()> {
    client
        .set_keyset(SetKeysetRequest {
            id: id.to_string(),
            secret_ids: members.secret_ids,
            resource_ids: members.resource_ids,
        })
        .await
        .map_err(|s| rpc("SetKeyset", &s))?;
    Ok(())
}

/// Deletes resource `id` after taking it out of every keyset it is attached
/// to.
async fn delete_resource(client: &mut Client, id: &str, out: &mut Outcome) -> anyhow::Result<()> {
    let inventory = client
        .list_inventory(ListInventoryRequest {})
        .await
        .map_err(|s| rpc("ListInventory", &s))?
        .into_inner();
    for k in inventory.keysets {
        if k.resource_ids.iter().any(|r| r == id) {
            let kept = Keyset {
                resource_ids: k.resource_ids.into_iter().filter(|r| r != id).collect(),
                ..k
            };
            let id = kept.id.clone();
            put_keyset(client, &id, kept).await?;
        }
    }
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
    for m in &outcome.removed_keyset_members {
        writeln!(out, "removed   {} from keyset {}", m.secret, m.keyset)?;
    }
    for k in &outcome.removed_keysets {
        writeln!(out, "removed   keyset {k}")?;
    }
    for s in &outcome.removed_secrets {
        writeln!(out, "removed   secret {s}")?;
    }
    for (c, n) in &outcome.registered {
        writeln!(out, "registered {n} digests of {c} (node {})", outcome.node)?;
    }
    for r in &outcome.resources {
        writeln!(out, "set       resource {r}")?;
    }
    for s in &outcome.secrets {
        writeln!(out, "set       secret {s} (value not shown)")?;
    }
    for m in &outcome.keyset_members {
        let kept = if outcome.secrets.contains(&m.secret) {
            ""
        } else {
            " (kept from an earlier run)"
        };
        writeln!(out, "keyset    {} holds {}{kept}", m.keyset, m.secret)?;
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
            ..Provisioned::default()
        };
        write_state(&p, &s).unwrap();
        assert_eq!(read_state(&p).unwrap(), s);
        // Without secrets the record reads as before they existed.
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            !text.contains("secrets") && !text.contains("keysets"),
            "{text}"
        );
        let s = Provisioned {
            secrets: vec![IMAGE_KEY_SECRET.into()],
            keysets: vec![KeysetMembership {
                keyset: DEFAULT_KEYSET.into(),
                secret: IMAGE_KEY_SECRET.into(),
                created: true,
            }],
            ..s
        };
        write_state(&p, &s).unwrap();
        assert_eq!(read_state(&p).unwrap(), s);
    }

    #[test]
    fn image_keys_are_32_raw_bytes_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("image.key");
        std::fs::write(&p, [0xa5u8; 32]).unwrap();
        let k = read_image_key(&p).unwrap();
        assert_eq!(k.0, [0xa5u8; 32]);
        assert_eq!(format!("{k:?}"), "ImageKey(32 bytes)");
        for (len, text) in [(31, false), (33, false), (0, false), (44, true)] {
            let data: Vec<u8> = if text {
                vec![b'A'; len]
            } else {
                vec![0x01; len]
            };
            std::fs::write(&p, &data).unwrap();
            let e = read_image_key(&p).unwrap_err().to_string();
            assert!(
                e.contains("image.key") && e.contains(&format!("is {len} bytes")),
                "{e}"
            );
            assert_eq!(e.contains("not base64 or hex"), text, "{e}");
        }
        let e = read_image_key(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
    }

    #[test]
    fn keyset_ids_are_checked_before_the_broker() {
        assert!(check_keyset("KEYSET-1").is_ok());
        assert!(check_keyset("").is_err());
        assert!(check_keyset("a b").is_err());
        assert!(check_keyset(&"k".repeat(257)).is_err());
    }
}
