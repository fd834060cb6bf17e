//! What the registry tests share (also included by `host-agent`'s cosign
//! tests): a real OCI registry on loopback (Debian's `docker-registry`, started
//! as a child process and killed when dropped), tiny OCI images written as
//! image layouts, and skopeo to push them.
//!
//! Nothing here skips: a missing tool fails the test with the command that
//! provides it, so a green run means the real registry and tools were used.

#![allow(
    dead_code,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use image_signature::Digest;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SETUP: &str = "run `scripts/setup-test-env` from the repository root (it installs \
                         Debian's docker-registry and skopeo, and PyNaCl and cryptography into \
                         .venv)";

/// The absolute path of `tool`, or a failure saying how to install it.
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} is not installed: {SETUP}");
}

/// A registry serving on 127.0.0.1 until dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    dir: tempfile::TempDir,
}

/// A loopback port nobody listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET /v2/` answers 200, or 401 (a registry that wants
/// credentials is up too).
fn answers_v2(host: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(host) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok()
        && buf.starts_with(b"HTTP/1.")
        && (buf.ends_with(b"200") || buf.ends_with(b"401"))
}

impl Registry {
    /// Starts `docker-registry serve` with filesystem storage in a temporary
    /// directory, on a free loopback port, open to anyone.
    pub fn start() -> Registry {
        Registry::start_with("")
    }

    /// Like [`Registry::start`], with `extra` appended to the configuration
    /// (an `auth:` section).
    pub fn start_with(extra: &str) -> Registry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\nhttp:\n  addr: {host}\n{extra}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if answers_v2(&host) {
                    return Registry { child, host, dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start; its log:\n{log}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-layer OCI image written as an image layout.
pub struct LocalImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// Its tag in the layout.
    pub tag: String,
    /// The manifest digest (kept when pushed with `--preserve-digests`).
    pub digest: Digest,
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let d = Digest::of(bytes);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    (d.to_string(), bytes.len())
}

/// Writes an image whose layer is an empty tar archive and whose config
/// carries `label`, so that different labels give different digests.
pub fn write_image(parent: &Path, label: &str) -> LocalImage {
    let layout = parent.join(format!("layout-{label}"));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    // Two zero blocks: the end-of-archive marker, i.e. an empty tar.
    let layer = vec![0u8; 1024];
    let (layer_digest, layer_size) = put_blob(&layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"test.image": label}},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = put_blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    })
    .to_string();
    let (manifest_digest, manifest_size) = put_blob(&layout, manifest.as_bytes());
    let tag = label.to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    LocalImage {
        layout,
        tag,
        digest: Digest::parse(&manifest_digest).unwrap(),
    }
}

/// A policy.json accepting anything, for skopeo copies that only move images.
pub fn accept_anything_policy(dir: &Path) -> PathBuf {
    let p = dir.join("accept-anything.json");
    std::fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    p
}

/// Pushes `image` to `registry_host/repository:<its tag>` with skopeo, keeping
/// its digest.
pub fn push(image: &LocalImage, registry_host: &str, repository: &str) {
    push_as(image, registry_host, repository, None);
}

/// [`push`] with `user:password` credentials.
pub fn push_as(image: &LocalImage, registry_host: &str, repository: &str, creds: Option<&str>) {
    let skopeo = require_tool("skopeo");
    let dir = image.layout.parent().unwrap();
    let mut cmd = Command::new(skopeo);
    cmd.arg("--policy").arg(accept_anything_policy(dir)).args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if let Some(c) = creds {
        cmd.arg("--dest-creds").arg(c);
    }
    let out = cmd
        .arg(format!("oci:{}:{}", image.layout.display(), image.tag))
        .arg(format!(
            "docker://{registry_host}/{repository}:{}",
            image.tag
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
