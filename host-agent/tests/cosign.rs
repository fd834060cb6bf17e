//! `host-agent cosign` as a whole process: key files an independent
//! implementation (Python's hashlib, PyNaCl, cryptography) opens, and signing
//! and verifying against a real OCI registry (Debian's `docker-registry` on
//! loopback, images pushed with skopeo), including each way verification must
//! fail: another key, a signature over another digest, another repository, no
//! signature at all, a tag instead of a digest.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../../image-signature/tests/support/mod.rs"]
mod support;

use image_signature::attachment::{SignatureManifest, SIGNATURE_ANNOTATION};
use image_signature::keys::ScryptParams;
use image_signature::payload::SIMPLE_SIGNING_MEDIA_TYPE;
use image_signature::registry::SIGNATURE_MANIFEST_ACCEPT;
use image_signature::{
    ClientOptions, Digest, ImageReference, PublicKey, RegistryClient, SigningKey,
};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the binary with an empty docker config, no terminal, and
/// `COSIGN_PASSWORD` only if given.
fn host_agent(args: &[&str], password: Option<&str>, docker_config: &Path) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host-agent"));
    cmd.args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("COSIGN_PASSWORD")
        .stdin(Stdio::null());
    if let Some(p) = password {
        cmd.env("COSIGN_PASSWORD", p);
    }
    let out: Output = cmd.output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn python() -> PathBuf {
    let p = std::env::var_os("COSIGN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import nacl.secret, cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "PyNaCl and cryptography are not available to {}: {}",
        p.display(),
        support::SETUP
    );
    p
}

/// Opens a cosign private key file with Python alone and prints the public key
/// PEM, so the key file is checked by an implementation that shares no code
/// with ours.
const OPEN_KEY: &str = r#"
import base64, hashlib, json, sys, nacl.secret
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
text, passphrase = open(sys.argv[1]).read().split("\n"), sys.argv[2]
assert text[0] == "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----", text[0]
body = json.loads(base64.b64decode("".join(l for l in text[1:] if l and not l.startswith("-----"))))
kdf = body["kdf"]
key = hashlib.scrypt(passphrase.encode(), salt=base64.b64decode(kdf["salt"]), n=kdf["params"]["N"],
                     r=kdf["params"]["r"], p=kdf["params"]["p"], maxmem=1 << 30, dklen=32)
der = nacl.secret.SecretBox(key).decrypt(base64.b64decode(body["ciphertext"]),
                                         base64.b64decode(body["cipher"]["nonce"]))
priv = serialization.load_der_private_key(der, password=None)
assert isinstance(priv.curve, ec.SECP256R1)
print(json.dumps({"N": kdf["params"]["N"], "public": priv.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()}))
"#;

#[test]
fn help_explains_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let r = host_agent(&["cosign", "--help"], None, dir.path());
    assert!(r.ok);
    for sub in ["generate-key-pair", "sign", "verify"] {
        assert!(r.stdout.contains(sub), "{sub} missing from:\n{}", r.stdout);
    }
    let r = host_agent(&["cosign", "sign", "--help"], None, dir.path());
    for needle in [
        "by digest",
        "sha256-<digest>.sig",
        "COSIGN_PASSWORD",
        "--allow-insecure-registry",
        "credential helpers",
    ] {
        assert!(
            r.stdout.contains(needle),
            "{needle} missing from:\n{}",
            r.stdout
        );
    }
    let r = host_agent(&["cosign", "verify", "--help"], None, dir.path());
    assert!(r.stdout.contains("at least one signature"), "{}", r.stdout);
    let r = host_agent(&["cosign", "generate-key-pair", "--help"], None, dir.path());
    assert!(r.stdout.contains("--output-key-prefix"), "{}", r.stdout);
    assert!(r.stdout.contains("0600"), "{}", r.stdout);
}

#[test]
fn generated_key_pair_is_cosigns_format() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("signer");
    let prefix_s = prefix.to_str().unwrap();
    let passphrase = "a pass phrase";

    // Neither COSIGN_PASSWORD nor a terminal: told what to do, nothing written.
    let r = host_agent(
        &[
            "cosign",
            "generate-key-pair",
            "--output-key-prefix",
            prefix_s,
        ],
        None,
        dir.path(),
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("COSIGN_PASSWORD"), "{}", r.stderr);
    assert!(!dir.path().join("signer.key").exists());

    let r = host_agent(
        &[
            "cosign",
            "generate-key-pair",
            "--output-key-prefix",
            prefix_s,
        ],
        Some(passphrase),
        dir.path(),
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("signer.key") && r.stdout.contains("signer.pub"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(passphrase) && !r.stderr.contains(passphrase));
    let key_path = dir.path().join("signer.key");
    let pub_path = dir.path().join("signer.pub");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private key mode {mode:o}");
    let key_text = std::fs::read_to_string(&key_path).unwrap();
    let pub_text = std::fs::read_to_string(&pub_path).unwrap();
    assert!(key_text.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
    assert!(pub_text.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(!r.stdout.contains(key_text.lines().nth(1).unwrap()));

    // Python opens it with the passphrase and finds the public key we wrote.
    let out = Command::new(python())
        .args(["-c", OPEN_KEY])
        .arg(&key_path)
        .arg(passphrase)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["N"], 65536);
    assert_eq!(
        PublicKey::from_pem(answer["public"].as_str().unwrap()).unwrap(),
        PublicKey::from_pem(&pub_text).unwrap()
    );

    // No overwriting without --force; nothing changed.
    let r = host_agent(
        &[
            "cosign",
            "generate-key-pair",
            "--output-key-prefix",
            prefix_s,
        ],
        Some(""),
        dir.path(),
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains("already exists") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_text);

    // --force replaces both, here with an empty passphrase.
    let r = host_agent(
        &[
            "cosign",
            "generate-key-pair",
            "--output-key-prefix",
            prefix_s,
            "--force",
        ],
        Some(""),
        dir.path(),
    );
    assert!(r.ok, "{}", r.stderr);
    let new_key = std::fs::read_to_string(&key_path).unwrap();
    assert_ne!(new_key, key_text);
    let key = SigningKey::from_encrypted_pem(&new_key, b"").unwrap();
    assert_eq!(
        key.public_key(),
        PublicKey::from_pem(&std::fs::read_to_string(&pub_path).unwrap()).unwrap()
    );
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A tmux server of its own, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "tmux is not installed (apt-get install tmux)");
        Tmux {
            socket: format!("cosign-test-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the pane shows `text`; returns the screen.
    fn wait_for(&self, session: &str, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let screen = self.run(&["capture-pane", "-p", "-t", session]);
            if screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} never appeared; screen:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn passphrase_is_asked_twice_on_a_terminal_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let tmux = Tmux::new();
    let bin = env!("CARGO_BIN_EXE_host-agent");
    let start = |session: &str, prefix: &str| {
        let command = format!(
            "env -u COSIGN_PASSWORD DOCKER_CONFIG={d} {bin} cosign generate-key-pair \
             --output-key-prefix {d}/{prefix}; echo EXIT=$?; sleep 60",
            d = dir.path().display()
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "150",
            "-y",
            "20",
            &command,
        ]);
    };

    start("same", "typed");
    tmux.wait_for("same", "Enter password for private key:");
    tmux.run(&["send-keys", "-t", "same", "typed secret", "Enter"]);
    tmux.wait_for("same", "again:");
    tmux.run(&["send-keys", "-t", "same", "typed secret", "Enter"]);
    let screen = tmux.wait_for("same", "EXIT=");
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(
        !screen.contains("typed secret"),
        "the passphrase was echoed:\n{screen}"
    );
    let key = std::fs::read_to_string(dir.path().join("typed.key")).unwrap();
    SigningKey::from_encrypted_pem(&key, b"typed secret").unwrap();

    start("differ", "mismatch");
    tmux.wait_for("differ", "Enter password for private key:");
    tmux.run(&["send-keys", "-t", "differ", "one", "Enter"]);
    tmux.wait_for("differ", "again:");
    tmux.run(&["send-keys", "-t", "differ", "two", "Enter"]);
    let screen = tmux.wait_for("differ", "EXIT=");
    assert!(screen.contains("EXIT=1"), "{screen}");
    assert!(screen.contains("do not match"), "{screen}");
    assert!(!dir.path().join("mismatch.key").exists());
}

/// A key pair written with cheap scrypt parameters, so that the many signings
/// below do not each spend seconds deriving (the format is the same).
fn cheap_key_pair(dir: &Path, name: &str, passphrase: &str) -> (PathBuf, PathBuf) {
    let key = SigningKey::generate();
    let pem = key
        .to_encrypted_pem_with(
            passphrase.as_bytes(),
            ScryptParams {
                log_n: 10,
                r: 8,
                p: 1,
            },
        )
        .unwrap();
    let k = dir.join(format!("{name}.key"));
    let p = dir.join(format!("{name}.pub"));
    std::fs::write(&k, pem).unwrap();
    std::fs::write(&p, key.public_key().to_pem().unwrap()).unwrap();
    (k, p)
}

fn signature_manifest(client: &mut RegistryClient, repo: &str, digest: &Digest) -> Option<Vec<u8>> {
    client
        .manifest(
            repo,
            &digest.signature_tag(),
            SIGNATURE_MANIFEST_ACCEPT,
            4 << 20,
        )
        .unwrap()
        .map(|m| m.bytes)
}

#[test]
fn sign_and_verify_against_a_real_registry() {
    let registry = support::Registry::start();
    let host = registry.host.clone();
    let work = tempfile::tempdir().unwrap();
    let docker_config = work.path().join("docker");
    std::fs::create_dir(&docker_config).unwrap();
    let image_a = support::write_image(work.path(), "a");
    let image_b = support::write_image(work.path(), "b");
    support::push(&image_a, &host, "demo/hello");
    support::push(&image_b, &host, "demo/hello");
    support::push(&image_a, &host, "demo/other");
    let a = format!("{host}/demo/hello@{}", image_a.digest);
    let b = format!("{host}/demo/hello@{}", image_b.digest);
    let sig_a = format!("{host}/demo/hello:{}", image_a.digest.signature_tag());

    // key1: made by the command, at cosign's real cost.
    let prefix = work.path().join("key1");
    let r = host_agent(
        &[
            "cosign",
            "generate-key-pair",
            "--output-key-prefix",
            prefix.to_str().unwrap(),
        ],
        Some("pw1"),
        &docker_config,
    );
    assert!(r.ok, "{}", r.stderr);
    let key1 = work.path().join("key1.key");
    let pub1 = work.path().join("key1.pub");
    let (key2, pub2) = cheap_key_pair(work.path(), "key2", "pw2");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Not signed yet.
    let r = host_agent(
        &["cosign", "verify", &a, "--key", &s(&pub1)],
        None,
        &docker_config,
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("has no signatures"), "{}", r.stderr);
    assert!(r.stderr.contains(&sig_a), "{}", r.stderr);

    // Sign A with key1; verify with key1.
    let r = host_agent(
        &["cosign", "sign", &a, "--key", &s(&key1)],
        Some("pw1"),
        &docker_config,
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("Pushed signature to {sig_a}")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("pw1") && !r.stderr.contains("pw1"));
    let r = host_agent(
        &["cosign", "verify", &a, "--key", &s(&pub1)],
        None,
        &docker_config,
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout
            .contains(&format!("docker-reference {host}/demo/hello,")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("docker-manifest-digest {}", image_a.digest)),
        "{}",
        r.stdout
    );

    // Another key does not verify it.
    let r = host_agent(
        &["cosign", "verify", &a, "--key", &s(&pub2)],
        None,
        &docker_config,
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains("does not verify with the public key"),
        "{}",
        r.stderr
    );

    // A wrong passphrase is told as such, and nothing is pushed.
    let r = host_agent(
        &["cosign", "sign", &a, "--key", &s(&key2)],
        Some("nope"),
        &docker_config,
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains("wrong password or not a cosign key"),
        "{}",
        r.stderr
    );

    // key2 signs too: a second layer, the first kept; signing again adds none.
    let r = host_agent(
        &["cosign", "sign", &a, "--key", &s(&key2)],
        Some("pw2"),
        &docker_config,
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("2 signature(s)"), "{}", r.stdout);
    let r = host_agent(
        &["cosign", "sign", &a, "--key", &s(&key2)],
        Some("pw2"),
        &docker_config,
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("already") && r.stdout.contains("nothing pushed"),
        "{}",
        r.stdout
    );
    for public in [&pub1, &pub2] {
        let r = host_agent(
            &["cosign", "verify", &a, "--key", &s(public)],
            None,
            &docker_config,
        );
        assert!(r.ok, "{}", r.stderr);
        assert!(r.stdout.contains("1 signature(s)"), "{}", r.stdout);
        assert!(r.stdout.contains("not verified: layer"), "{}", r.stdout);
    }

    // The attachment is cosign's layout.
    let ref_a = ImageReference::parse(&a).unwrap();
    let mut client = RegistryClient::connect(&ref_a, &ClientOptions::default()).unwrap();
    let bytes = signature_manifest(&mut client, "demo/hello", &image_a.digest).unwrap();
    let manifest = SignatureManifest::parse(&bytes).unwrap();
    assert_eq!(
        manifest.media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(
        manifest.config.media_type,
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(manifest.layers.len(), 2);
    for layer in &manifest.layers {
        assert_eq!(layer.media_type, SIMPLE_SIGNING_MEDIA_TYPE);
        assert!(layer.annotations.contains_key(SIGNATURE_ANNOTATION));
    }
    let config = client
        .blob(
            "demo/hello",
            &Digest::parse(&manifest.config.digest).unwrap(),
            1 << 20,
        )
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    // A's signatures copied to B's tag: signed over another digest.
    client
        .push_manifest(
            "demo/hello",
            &image_b.digest.signature_tag(),
            manifest.content_type(),
            &bytes,
        )
        .unwrap();
    let r = host_agent(
        &["cosign", "verify", &b, "--key", &s(&pub1)],
        None,
        &docker_config,
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&format!(
            "signature is for image {}, not {}",
            image_a.digest, image_b.digest
        )),
        "{}",
        r.stderr
    );

    // A's signatures (and their blobs) copied to the same image in another
    // repository: signed for another repository.
    for d in manifest
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain([&manifest.config.digest])
    {
        let blob = client
            .blob("demo/hello", &Digest::parse(d).unwrap(), 1 << 20)
            .unwrap();
        client.push_blob("demo/other", &blob).unwrap();
    }
    client
        .push_manifest(
            "demo/other",
            &image_a.digest.signature_tag(),
            manifest.content_type(),
            &bytes,
        )
        .unwrap();
    let other = format!("{host}/demo/other@{}", image_a.digest);
    let r = host_agent(
        &["cosign", "verify", &other, "--key", &s(&pub1)],
        None,
        &docker_config,
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(&format!(
            "signature is for repository {host}/demo/hello, not {host}/demo/other"
        )),
        "{}",
        r.stderr
    );

    // By tag only: refused before any passphrase or network, both ways.
    let tagged = format!("{host}/demo/hello:a");
    for args in [
        vec![
            "cosign",
            "sign",
            tagged.as_str(),
            "--key",
            key1.to_str().unwrap(),
        ],
        vec![
            "cosign",
            "verify",
            tagged.as_str(),
            "--key",
            pub1.to_str().unwrap(),
        ],
    ] {
        let r = host_agent(&args, None, &docker_config);
        assert!(!r.ok);
        assert!(r.stderr.contains("by tag only"), "{}", r.stderr);
        assert!(r.stderr.contains("IMAGE@sha256:"), "{}", r.stderr);
    }

    // An image the registry does not have is not signed.
    let absent = format!("{host}/demo/hello@{}", Digest::of(b"absent"));
    let r = host_agent(
        &["cosign", "sign", &absent, "--key", &s(&key2)],
        Some("pw2"),
        &docker_config,
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("no such image manifest"), "{}", r.stderr);
    assert!(signature_manifest(&mut client, "demo/hello", &Digest::of(b"absent")).is_none());

    // A public key given where the private key goes is named.
    let r = host_agent(
        &["cosign", "sign", &a, "--key", &s(&pub1)],
        Some("pw1"),
        &docker_config,
    );
    assert!(!r.ok);
    assert!(r.stderr.contains("\"PUBLIC KEY\""), "{}", r.stderr);
}

fn skopeo(args: &[&str]) -> (bool, String) {
    let out = Command::new(support::require_tool("skopeo"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "Debian bookworm's skopeo 1.9.3 is built with sigstore disabled \
            (\"Debian-local change: sigstore disabled\"); run with --ignored where \
            skopeo has sigstore support"]
fn skopeo_verifies_our_signatures_and_we_verify_skopeos() {
    let registry = support::Registry::start();
    let host = registry.host.clone();
    let work = tempfile::tempdir().unwrap();
    let docker_config = work.path().join("docker");
    std::fs::create_dir(&docker_config).unwrap();
    let image = support::write_image(work.path(), "a");
    support::push(&image, &host, "demo/hello");
    let a = format!("{host}/demo/hello@{}", image.digest);
    let (key1, pub1) = cheap_key_pair(work.path(), "key1", "pw1");
    let (_, pub2) = cheap_key_pair(work.path(), "key2", "pw2");
    let r = host_agent(
        &["cosign", "sign", &a, "--key", key1.to_str().unwrap()],
        Some("pw1"),
        &docker_config,
    );
    assert!(r.ok, "{}", r.stderr);

    let registries_d = work.path().join("registries.d");
    std::fs::create_dir(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("loopback.yaml"),
        format!("docker:\n  {host}:\n    use-sigstore-attachments: true\n"),
    )
    .unwrap();
    // The guest's policy form (default signedIdentity, matchRepoDigestOrExact)
    // and the explicit matchRepository one.
    let policy = |public: &Path, identity: Option<serde_json::Value>| {
        let mut req = serde_json::json!({"type": "sigstoreSigned", "keyPath": public});
        if let Some(i) = identity {
            req["signedIdentity"] = i;
        }
        let p = work.path().join(format!("policy-{}.json", rand_suffix()));
        let body = serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {format!("{host}/demo/hello"): [req]}},
        });
        std::fs::write(&p, body.to_string()).unwrap();
        p
    };
    let copy_out = |policy: &Path| {
        let out = work.path().join(format!("out-{}", rand_suffix()));
        skopeo(&[
            "--policy",
            policy.to_str().unwrap(),
            "--registries.d",
            registries_d.to_str().unwrap(),
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{a}"),
            &format!("dir:{}", out.display()),
        ])
    };
    for identity in [None, Some(serde_json::json!({"type": "matchRepository"}))] {
        let (ok, err) = copy_out(&policy(&pub1, identity.clone()));
        assert!(ok, "skopeo refused our signature: {err}");
        let (ok, _) = copy_out(&policy(&pub2, identity));
        assert!(!ok, "skopeo accepted another key");
    }

    // skopeo signs with a key we generated; we verify its signature.
    let pass_file = work.path().join("pass");
    std::fs::File::create(&pass_file)
        .unwrap()
        .write_all(b"pw1")
        .unwrap();
    let (ok, err) = skopeo(&[
        "--policy",
        support::accept_anything_policy(work.path())
            .to_str()
            .unwrap(),
        "--registries.d",
        registries_d.to_str().unwrap(),
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--sign-by-sigstore-private-key",
        key1.to_str().unwrap(),
        "--sign-passphrase-file",
        pass_file.to_str().unwrap(),
        &format!("docker://{a}"),
        &format!("docker://{host}/demo/signed:v1"),
    ]);
    assert!(ok, "skopeo could not sign with our key: {err}");
    let signed = format!("{host}/demo/signed@{}", image.digest);
    let r = host_agent(
        &["cosign", "verify", &signed, "--key", pub1.to_str().unwrap()],
        None,
        &docker_config,
    );
    assert!(r.ok, "we refused skopeo's signature: {}", r.stderr);
    assert!(r.stdout.contains("creator"), "{}", r.stdout);
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
