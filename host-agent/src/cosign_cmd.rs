//! `host-agent cosign`: image signing compatible with cosign's key and signature
//! formats.
//!
//! The point is that a node operator can sign the images a confidential
//! service may run, and that the guest's image policy (a `sigstoreSigned`
//! requirement with the public key) accepts them, without installing cosign.
//! Keys, payloads and the registry layout are cosign's, so cosign and skopeo can
//! verify what is signed here and the other way round. The formats and the
//! registry client are in the `image-signature` crate; this module reads files,
//! asks for the passphrase and prints.

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use image_signature::keys::MAX_KEY_FILE_LEN;
use image_signature::{
    passphrase, ClientOptions, EncryptedPrivateKey, ImageReference, PublicKey, RegistryClient,
    SigningKey,
};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Options of `host-agent cosign`.
#[derive(Debug, Args)]
pub struct CosignArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CosignCommand,
}

/// Subcommands of `host-agent cosign`.
#[derive(Debug, Subcommand)]
pub enum CosignCommand {
    /// Create an ECDSA P-256 key pair in cosign's formats.
    ///
    /// Writes PREFIX.key, the private key encrypted with a passphrase (scrypt and
    /// NaCl secretbox, PEM "ENCRYPTED SIGSTORE PRIVATE KEY", mode 0600), and
    /// PREFIX.pub, the public key (PEM "PUBLIC KEY"). The passphrase comes from
    /// COSIGN_PASSWORD if set (it may be empty), else it is asked twice on the
    /// terminal. cosign and skopeo read these files as their own.
    GenerateKeyPair(GenerateKeyPairArgs),
    /// Sign an image in its registry, by digest.
    ///
    /// Checks that the registry has the image manifest at that digest, signs
    /// cosign's simple-signing payload for it (the repository and the digest)
    /// with the private key, and pushes the signature as a layer of the OCI
    /// manifest tagged sha256-<digest>.sig in the same repository, next to the
    /// signatures already there. The passphrase comes from COSIGN_PASSWORD, else
    /// the terminal. Registry credentials come from the "auths" of
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json (credential helpers
    /// are not supported).
    Sign(SignArgs),
    /// Verify an image's signatures, by digest, against a public key.
    ///
    /// Fetches the sha256-<digest>.sig manifest, and for each signature checks
    /// the payload's digest, the signature against the key, and that the payload
    /// names this image digest and this repository. Succeeds (exit 0) if at least
    /// one signature verifies and prints what each verified signature says;
    /// otherwise fails naming what went wrong with each.
    Verify(VerifyArgs),
}

/// Options of `host-agent cosign generate-key-pair`.
#[derive(Debug, Args)]
pub struct GenerateKeyPairArgs {
    /// Path prefix of the files written: PREFIX.key and PREFIX.pub.
    #[arg(long, value_name = "PREFIX", default_value = "cosign")]
    pub output_key_prefix: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// How to reach the registry.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP to a registry that does not answer over HTTPS.
    /// Registries on this machine (localhost, 127.0.0.0/8, [::1]) use plain HTTP
    /// without this flag.
    #[arg(long)]
    pub allow_insecure_registry: bool,
}

/// Options of `host-agent cosign sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The image, by digest: [REGISTRY/]REPOSITORY[:TAG]@sha256:DIGEST. A tag
    /// alone is refused: it can move to another image.
    #[arg(value_name = "IMAGE@DIGEST")]
    pub image: String,
    /// The private key file (cosign's encrypted PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Options of `host-agent cosign verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image, by digest: [REGISTRY/]REPOSITORY[:TAG]@sha256:DIGEST.
    #[arg(value_name = "IMAGE@DIGEST")]
    pub image: String,
    /// The public key file (PEM "PUBLIC KEY").
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs `host-agent cosign`.
pub fn run(a: &CosignArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &a.command {
        CosignCommand::GenerateKeyPair(g) => generate_key_pair(g, out),
        CosignCommand::Sign(s) => sign(s, out),
        CosignCommand::Verify(v) => verify(v, out),
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(prefix.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `path` with `mode`, refusing to replace an existing file unless
/// `force`. Never follows a symlink planted at `path`.
fn write_new_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn generate_key_pair(a: &GenerateKeyPairArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let key_path = with_suffix(&a.output_key_prefix, ".key");
    let pub_path = with_suffix(&a.output_key_prefix, ".pub");
    if !a.force {
        for p in [&key_path, &pub_path] {
            if p.symlink_metadata().is_ok() {
                bail!(
                    "{} already exists; not overwriting it (give --force to replace the key pair)",
                    p.display()
                );
            }
        }
    }
    let pass = passphrase::for_new_key()?;
    let key = SigningKey::generate();
    let private_pem = key.to_encrypted_pem(&pass)?;
    let public_pem = key.public_key().to_pem()?;
    write_new_file(&key_path, private_pem.as_bytes(), 0o600, a.force)?;
    write_new_file(&pub_path, public_pem.as_bytes(), 0o644, a.force)?;
    writeln!(out, "Private key written to {}", key_path.display())?;
    writeln!(out, "Public key written to {}", pub_path.display())?;
    Ok(())
}

fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_KEY_FILE_LEN as u64 {
        bail!(
            "{} is {len} bytes, more than a key file can be ({MAX_KEY_FILE_LEN})",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn image_by_digest(text: &str) -> anyhow::Result<ImageReference> {
    let image = ImageReference::parse(text)?;
    image.require_digest()?;
    Ok(image)
}

fn client_for(image: &ImageReference, r: &RegistryArgs) -> anyhow::Result<RegistryClient> {
    let options = ClientOptions {
        allow_insecure: r.allow_insecure_registry,
        ..ClientOptions::default()
    };
    Ok(RegistryClient::connect(image, &options)?)
}

fn sign(a: &SignArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Everything that can be wrong locally is found before the passphrase is
    // asked and before the network.
    let image = image_by_digest(&a.image)?;
    let text = read_key_file(&a.key)?;
    let encrypted = EncryptedPrivateKey::parse_pem(&text)
        .with_context(|| format!("reading the private key {}", a.key.display()))?;
    let pass = passphrase::for_existing_key()?;
    let key = encrypted
        .decrypt(&pass)
        .with_context(|| format!("opening the private key {}", a.key.display()))?;
    drop(pass);
    let mut client = client_for(&image, &a.registry)?;
    let outcome = image_signature::sign_image(&mut client, &image, &key)
        .with_context(|| format!("signing {image}"))?;
    if outcome.added {
        writeln!(
            out,
            "Pushed signature to {} (manifest {}, {} signature(s))",
            outcome.signature_reference, outcome.manifest_digest, outcome.layer_count
        )?;
    } else {
        writeln!(
            out,
            "This signature is already in {} ({} signature(s)); nothing pushed",
            outcome.signature_reference, outcome.layer_count
        )?;
    }
    Ok(())
}

fn verify(a: &VerifyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let image = image_by_digest(&a.image)?;
    let text = read_key_file(&a.key)?;
    let key = PublicKey::from_pem(&text)
        .with_context(|| format!("reading the public key {}", a.key.display()))?;
    let mut client = client_for(&image, &a.registry)?;
    let report = image_signature::verify_image(&mut client, &image, &key)
        .with_context(|| format!("verifying {image}"))?;
    writeln!(
        out,
        "Verified {image}: {} signature(s) in {} verify with key {}",
        report.verified.len(),
        report.signature_reference,
        key.fingerprint()
    )?;
    for v in &report.verified {
        let optional = match &v.payload.optional {
            Some(o) => serde_json::Value::Object(o.clone()).to_string(),
            None => "null".to_string(),
        };
        writeln!(
            out,
            "  signature {}: docker-reference {}, docker-manifest-digest {}, optional {}",
            v.layer_digest, v.payload.docker_reference, v.payload.manifest_digest, optional
        )?;
    }
    for (layer, failure) in &report.failures {
        writeln!(out, "  not verified: layer {layer}: {failure}")?;
    }
    Ok(())
}
