//! The registry client's authentication against the real registry's own
//! implementations of it, with credentials from a docker config file:
//!
//! - `Basic`: `docker-registry` with an htpasswd file (bcrypt hash made by
//!   Python's `crypt`);
//! - `Bearer`: `docker-registry` with token authentication, its tokens issued
//!   by a small token server written here in Python (an ES256 JWT with the
//!   issuer certificate in `x5c`, checked by the registry against its root
//!   bundle), which itself wants the Basic credentials. Pushing needs a token
//!   with more scope than pulling, so the client must ask again.
//!
//! Signing and verifying work with the right credentials; without them, or
//! with wrong ones, the error says so.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use base64::Engine as _;
use image_signature::registry::RegistryError;
use image_signature::{
    sign_image, verify_image, ClientOptions, ImageReference, OpsError, RegistryClient, SigningKey,
};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const USER: &str = "signer";
const PASSWORD: &str = "pa:ss word";

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = Command::new(&p)
        .args(["-W", "ignore", "-c", "import crypt, cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python with cryptography is not available at {}: {}",
        p.display(),
        support::SETUP
    );
    p
}

fn docker_config(dir: &Path, host: &str, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    let p = dir.join(format!("config-{}.json", password.len()));
    std::fs::write(
        &p,
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    p
}

fn options(config: Option<PathBuf>) -> ClientOptions {
    ClientOptions {
        // A path that does not exist stands for "no docker config".
        docker_config: Some(config.unwrap_or_else(|| PathBuf::from("/nonexistent/config.json"))),
        ..ClientOptions::default()
    }
}

/// Signs and verifies `image` with the given client options.
fn sign_and_verify(image: &ImageReference, opts: &ClientOptions) -> Result<(), OpsError> {
    let key = SigningKey::generate();
    let mut client = RegistryClient::connect(image, opts).unwrap();
    sign_image(&mut client, image, &key)?;
    let mut client = RegistryClient::connect(image, opts).unwrap();
    let report = verify_image(&mut client, image, &key.public_key())?;
    assert_eq!(report.verified.len(), 1);
    Ok(())
}

fn pushed_image(registry: &support::Registry, work: &Path) -> ImageReference {
    let image = support::write_image(work, "a");
    support::push_as(
        &image,
        &registry.host,
        "demo/hello",
        Some(&format!("{USER}:{PASSWORD}")),
    );
    ImageReference::parse(&format!("{}/demo/hello@{}", registry.host, image.digest)).unwrap()
}

#[test]
fn basic_authentication_from_docker_config() {
    let work = tempfile::tempdir().unwrap();
    let hash = Command::new(python())
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
            PASSWORD,
        ])
        .output()
        .unwrap();
    assert!(hash.status.success());
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("{USER}:{}", String::from_utf8(hash.stdout).unwrap().trim()),
    )
    .unwrap();
    let registry = support::Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
        htpasswd.display()
    ));
    let image = pushed_image(&registry, work.path());

    let e = sign_and_verify(&image, &options(None)).unwrap_err();
    assert!(
        matches!(e, OpsError::Registry(RegistryError::NoCredentials { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("requires authentication"), "{e}");

    let wrong = docker_config(work.path(), &registry.host, "wrong");
    let e = sign_and_verify(&image, &options(Some(wrong))).unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");

    let right = docker_config(work.path(), &registry.host, PASSWORD);
    sign_and_verify(&image, &options(Some(right))).unwrap();
}

/// Issues registry tokens for `USER`/`PASSWORD` (Basic), granting what the
/// scope asks for. Writes its certificate, then prints "ready".
const TOKEN_SERVER: &str = r#"
import base64, datetime, json, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

port, cert_path, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token issuer")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
open(cert_path, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
expected = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.end_headers()
            return
        q = parse_qs(urlparse(self.path).query)
        access = []
        for scope in q.get("scope", []):
            for s in scope.split(" "):
                kind, repo, actions = s.split(":")
                access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        t = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [x5c]}
        claims = {"iss": "test-issuer", "sub": user, "aud": q["service"][0], "exp": t + 600,
                  "nbf": t - 60, "iat": t, "jti": os.urandom(8).hex(), "access": access}
        signing_input = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        token = signing_input + "." + b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        body = json.dumps({"token": token}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
"#;

struct TokenServer(Child);

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bearer_tokens_from_a_token_server() {
    let work = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let cert = work.path().join("issuer.pem");
    let mut child = Command::new(python())
        .args(["-c", TOKEN_SERVER])
        .arg(port.to_string())
        .arg(&cert)
        .args([USER, PASSWORD])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = TokenServer(child);
    assert_eq!(line.trim(), "ready", "token server did not start");
    let registry = support::Registry::start_with(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: test-registry\n    \
         issuer: test-issuer\n    rootcertbundle: {}\n",
        cert.display()
    ));
    let image = pushed_image(&registry, work.path());

    let e = sign_and_verify(&image, &options(None)).unwrap_err();
    assert!(
        matches!(e, OpsError::Registry(RegistryError::NoCredentials { .. })),
        "{e}"
    );

    let wrong = docker_config(work.path(), &registry.host, "wrong");
    let e = sign_and_verify(&image, &options(Some(wrong))).unwrap_err();
    assert!(e.to_string().contains("were refused"), "{e}");

    let right = docker_config(work.path(), &registry.host, PASSWORD);
    sign_and_verify(&image, &options(Some(right))).unwrap();
}
