//! Differential tests of the key and signature formats against an independent
//! implementation: Python's `hashlib.scrypt`, PyNaCl's `SecretBox` and
//! `cryptography`'s PKCS#8 and ECDSA, driven by a script written here from the
//! format's description (go-securesystemslib's `encrypted` envelope).
//!
//! Python opens keys we write and signs with them; we open keys Python writes
//! (both PEM labels, other scrypt costs, JSON with other spacing); signatures
//! verify both ways. Missing Python packages fail the test with the command that
//! provides them.

#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine as _;
use image_signature::keys::{EncryptedPrivateKey, KeyError, ScryptParams};
use image_signature::{PublicKey, SigningKey};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const SETUP: &str = "run `scripts/setup-test-env` from the repository root (it installs PyNaCl \
                     and cryptography into .venv)";

/// The independent side: one JSON request on stdin, one JSON answer on stdout.
const SCRIPT: &str = r#"
import base64, hashlib, json, os, sys
import nacl.secret, nacl.exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.exceptions import InvalidSignature

def unarmor(text):
    lines = [l.strip() for l in text.strip().splitlines()]
    first, last = lines[0], lines[-1]
    assert first.startswith("-----BEGIN ") and first.endswith("-----"), first
    assert last == "-----END " + first[len("-----BEGIN "):], last
    return first[len("-----BEGIN "):-5], base64.b64decode("".join(lines[1:-1]), validate=True)

def armor(label, data):
    b = base64.b64encode(data).decode()
    body = "\n".join(b[i:i + 64] for i in range(0, len(b), 64))
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, body, label)

def derive(passphrase, kdf):
    p = kdf["params"]
    return hashlib.scrypt(passphrase.encode(), salt=base64.b64decode(kdf["salt"]),
                          n=p["N"], r=p["r"], p=p["p"], maxmem=1 << 30, dklen=32)

def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo).decode()

req = json.load(sys.stdin)
op = req["op"]
if op == "open":
    label, body = unarmor(req["pem"])
    env = json.loads(body)
    assert env["kdf"]["name"] == "scrypt" and env["cipher"]["name"] == "nacl/secretbox", env
    box = nacl.secret.SecretBox(derive(req["passphrase"], env["kdf"]))
    try:
        der = box.decrypt(base64.b64decode(env["ciphertext"]), base64.b64decode(env["cipher"]["nonce"]))
    except nacl.exceptions.CryptoError:
        print(json.dumps({"error": "decryption failed"}))
        sys.exit(0)
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key.curve, ec.SECP256R1), key.curve
    sig = key.sign(bytes.fromhex(req["message"]), ec.ECDSA(hashes.SHA256()))
    print(json.dumps({"label": label, "envelope": env, "public_pem": public_pem(key),
                      "signature": base64.b64encode(sig).decode()}))
elif op == "seal":
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    kdf = {"name": "scrypt", "params": {"N": req["n"], "r": req["r"], "p": req["p"]},
           "salt": base64.b64encode(os.urandom(32)).decode()}
    nonce = os.urandom(24)
    sealed = nacl.secret.SecretBox(derive(req["passphrase"], kdf)).encrypt(der, nonce)
    # Python's default separators put spaces where Go's encoder puts none.
    env = {"kdf": kdf, "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(sealed.ciphertext).decode()}
    print(json.dumps({"pem": armor(req["label"], json.dumps(env).encode()), "public_pem": public_pem(key)}))
elif op == "verify":
    key = serialization.load_pem_public_key(req["public_pem"].encode())
    try:
        key.verify(base64.b64decode(req["signature"]), bytes.fromhex(req["message"]),
                   ec.ECDSA(hashes.SHA256()))
        print(json.dumps({"valid": True}))
    except InvalidSignature:
        print(json.dumps({"valid": False}))
else:
    raise SystemExit("unknown op " + op)
"#;

fn python() -> PathBuf {
    let p = std::env::var_os("COSIGN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ok = Command::new(&p)
        .args([
            "-c",
            "import nacl.secret, cryptography.hazmat.primitives.asymmetric.ec",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "PyNaCl and cryptography are not available to {}: {SETUP}",
        p.display()
    );
    p
}

fn ask(request: serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const CHEAP: ScryptParams = ScryptParams {
    log_n: 10,
    r: 8,
    p: 1,
};

#[test]
fn python_opens_keys_we_write() {
    // cosign's real cost once; cheaper ones for the other passphrases.
    let cases: [(&str, ScryptParams); 3] = [
        ("correct horse battery staple", ScryptParams::COSIGN_DEFAULT),
        ("", CHEAP),
        ("p\u{e4}ssw\u{f6}rd \u{2713}", CHEAP),
    ];
    for (passphrase, params) in cases {
        let key = SigningKey::generate();
        let pem = key
            .to_encrypted_pem_with(passphrase.as_bytes(), params)
            .unwrap();
        let message = b"a message signed by python";
        let answer = ask(serde_json::json!({
            "op": "open", "pem": pem, "passphrase": passphrase, "message": hex::encode(message)
        }));
        assert_eq!(answer["label"], "ENCRYPTED SIGSTORE PRIVATE KEY");
        assert_eq!(answer["envelope"]["kdf"]["params"]["N"], params.n());
        assert_eq!(answer["envelope"]["kdf"]["params"]["r"], 8);
        assert_eq!(answer["envelope"]["kdf"]["params"]["p"], 1);
        let theirs = PublicKey::from_pem(answer["public_pem"].as_str().unwrap()).unwrap();
        assert_eq!(theirs, key.public_key(), "python decrypted another key");
        let sig = base64::engine::general_purpose::STANDARD
            .decode(answer["signature"].as_str().unwrap())
            .unwrap();
        key.public_key().verify(message, &sig).unwrap();

        // A wrong passphrase fails authentication there too.
        let answer = ask(serde_json::json!({
            "op": "open", "pem": pem, "passphrase": format!("{passphrase}x"), "message": "00"
        }));
        assert_eq!(answer["error"], "decryption failed");
    }
}

#[test]
fn we_open_keys_python_writes() {
    let cases = [
        (
            "ENCRYPTED COSIGN PRIVATE KEY",
            1u64 << 15,
            "old label, legacy cost",
        ),
        ("ENCRYPTED SIGSTORE PRIVATE KEY", 1 << 10, ""),
        ("ENCRYPTED SIGSTORE PRIVATE KEY", 1 << 12, "r=4 p=2"),
    ];
    for (label, n, passphrase) in cases {
        let (r, p) = if passphrase == "r=4 p=2" {
            (4, 2)
        } else {
            (8, 1)
        };
        let answer = ask(serde_json::json!({
            "op": "seal", "label": label, "n": n, "r": r, "p": p, "passphrase": passphrase
        }));
        let pem = answer["pem"].as_str().unwrap();
        let theirs = PublicKey::from_pem(answer["public_pem"].as_str().unwrap()).unwrap();
        let enc = EncryptedPrivateKey::parse_pem(pem).unwrap();
        assert_eq!(enc.label, label);
        assert_eq!(enc.params.n(), n);
        let key = enc.decrypt(passphrase.as_bytes()).unwrap();
        assert_eq!(key.public_key(), theirs);
        assert!(matches!(
            enc.decrypt(b"not the passphrase"),
            Err(KeyError::WrongPassphrase)
        ));
        let message = b"signed by us, checked by python";
        let answer = ask(serde_json::json!({
            "op": "verify", "public_pem": answer["public_pem"], "message": hex::encode(message),
            "signature": b64(&key.sign(message))
        }));
        assert_eq!(answer["valid"], true);
    }
}

#[test]
fn signatures_verify_both_ways() {
    // Python's ECDSA nonces are random, so over these rounds its signatures
    // include high-S ones, which cosign (Go) accepts and so must we.
    let key = SigningKey::generate();
    let pem = key.to_encrypted_pem_with(b"pw", CHEAP).unwrap();
    let public_pem = key.public_key().to_pem().unwrap();
    for i in 0..12u8 {
        let message = vec![i; usize::from(i) * 7];
        let answer = ask(serde_json::json!({
            "op": "open", "pem": pem, "passphrase": "pw", "message": hex::encode(&message)
        }));
        let sig = base64::engine::general_purpose::STANDARD
            .decode(answer["signature"].as_str().unwrap())
            .unwrap();
        key.public_key().verify(&message, &sig).unwrap();
        assert!(key.public_key().verify(b"other", &sig).is_err());

        let answer = ask(serde_json::json!({
            "op": "verify", "public_pem": public_pem, "message": hex::encode(&message),
            "signature": b64(&key.sign(&message))
        }));
        assert_eq!(answer["valid"], true, "round {i}");
        let answer = ask(serde_json::json!({
            "op": "verify", "public_pem": public_pem, "message": hex::encode(b"x"),
            "signature": b64(&key.sign(&message))
        }));
        assert_eq!(answer["valid"], false, "round {i}");
    }
}
