//! A real Trustee v0.21.0 (confidential-containers/trustee) on loopback for
//! tests: its `kbs` with the built-in attestation service, and either the
//! built-in reference value provider service (RVPS) or a standalone `rvps`
//! reached over gRPC.
//!
//! The harness writes a `kbs-config.toml` of the shape the offline bundle's
//! `run-local.sh` writes (plain HTTP on 127.0.0.1, LocalFs storage, the
//! `resource` plugin, `bearer_jwt` admin authentication with an Ed25519 key
//! made here, a regex ACL), picks free loopback ports, waits until the KBS
//! answers, and kills what it started when dropped.
//!
//! The helpers that read and write Trustee's state go through Trustee's own
//! tools (`kbs-client`, `rvps-tool`) wherever those can do the job, so that a
//! test checks our broker against Trustee's tooling rather than against our own
//! HTTP code. The admin tokens minted here ([`AdminKey::token`]) are a second,
//! independent implementation of the admin JWT, for test helpers only.
//!
//! The binaries come from `../shared/trustee/build.sh` (run by
//! `scripts/setup-test-env`); see [`TrusteeBinaries::find`]. Everything here
//! blocks: from async code, call it through `tokio::task::spawn_blocking`.

use std::ffi::OsString;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

/// The environment variable naming the directory that holds the binaries.
pub const BIN_DIR_ENV: &str = "TRUSTEE_BIN_DIR";
/// The environment variable naming build.sh's cache (its `bin/` is used).
pub const CACHE_ENV: &str = "TRUSTEE_CACHE";
/// When this environment variable is `1`, tests skip instead of failing when
/// the binaries are missing ([`TrusteeBinaries::find_for_tests`]).
pub const OPTIONAL_ENV: &str = "TRUSTEE_OPTIONAL";

/// The binaries the harness runs, as build.sh names them.
pub const BINARY_NAMES: [&str; 4] = ["kbs", "kbs-client", "rvps", "rvps-tool"];

/// How long a call of `kbs-client` or `rvps-tool` may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one HTTP request of the harness may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a start on freshly chosen ports is tried when a port turns
/// out to be taken.
const FRESH_PORT_ATTEMPTS: u32 = 5;
/// How many times a restart on the same ports is tried while they are busy.
const SAME_PORT_ATTEMPTS: u32 = 20;
/// The line the harness writes into a log file before each start.
const LOG_MARK: &str = "=== trustee_process: start";

/// Serializes port choice and start-up within this process, so that two tests
/// of one test binary never pick the same port between its release and its
/// use.
static START_LOCK: Mutex<()> = Mutex::new(());

/// What went wrong while finding, starting or talking to Trustee.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrusteeError {
    /// Some of the four binaries are not in the directory.
    #[error(
        "Trustee binaries missing in {dir} (from {origin}): {missing}. Build them with \
         `bash scripts/setup-test-env` (it runs ../shared/trustee/build.sh), or set \
         TRUSTEE_BIN_DIR to a directory holding kbs, kbs-client, rvps and rvps-tool"
    )]
    BinariesMissing {
        /// The directory that was searched.
        dir: PathBuf,
        /// Where the directory came from (an environment variable or the default).
        origin: &'static str,
        /// The names that are missing or not executable.
        missing: String,
    },

    /// Neither TRUSTEE_BIN_DIR, TRUSTEE_CACHE nor HOME is set.
    #[error("no Trustee binary directory: set TRUSTEE_BIN_DIR (or TRUSTEE_CACHE, or HOME)")]
    NoBinDir,

    /// A file operation failed.
    #[error("cannot {step} {path}: {source}")]
    Io {
        /// The operation (e.g. "write", "create").
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// A process could not be spawned.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// Ed25519 key generation, encoding or signing failed.
    #[error("Ed25519 admin key: cannot {0}")]
    Key(&'static str),

    /// `kbs` or `rvps` did not come up.
    #[error("{what} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        /// `kbs` or `rvps`.
        what: &'static str,
        /// What was seen.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log for this start.
        tail: String,
    },

    /// An HTTP request did not get an answer.
    #[error("HTTP {method} {url}: {reason}")]
    Http {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The client's error.
        reason: String,
    },

    /// An HTTP request got an unexpected status.
    #[error("HTTP {method} {url} answered {status}: {body}")]
    Status {
        /// The method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },

    /// `kbs-client` or `rvps-tool` failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// What it printed on standard error (and standard output).
        stderr: String,
    },

    /// A tool's output could not be understood.
    #[error("cannot understand {what}: {detail}")]
    Parse {
        /// What was being read.
        what: &'static str,
        /// Why it could not be read.
        detail: String,
    },

    /// A helper was called in a way that cannot work (e.g. an RVPS query in
    /// built-in mode, or reference values that are not a JSON object).
    #[error("{0}")]
    Usage(String),
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TrusteeError {
    let path = path.to_path_buf();
    move |source| TrusteeError::Io { step, path, source }
}

// ---------------------------------------------------------------- binaries

/// Where Trustee's `kbs`, `kbs-client`, `rvps` and `rvps-tool` are.
#[derive(Clone, Debug)]
pub struct TrusteeBinaries {
    dir: PathBuf,
}

impl TrusteeBinaries {
    /// The directory named by `TRUSTEE_BIN_DIR`, else `$TRUSTEE_CACHE/bin`,
    /// else `~/.cache/trustee/bin` (build.sh's default output), checked to
    /// hold all four binaries. The error names what is missing and how to
    /// build it.
    pub fn find() -> Result<TrusteeBinaries, TrusteeError> {
        let (dir, origin) = default_bin_dir()?;
        TrusteeBinaries::check(dir, origin)
    }

    /// The binaries in `dir`, checked to be there.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<TrusteeBinaries, TrusteeError> {
        TrusteeBinaries::check(dir.into(), "the caller")
    }

    /// For tests: [`TrusteeBinaries::find`], except that when the binaries
    /// are missing and `TRUSTEE_OPTIONAL=1` is set, it says on standard error
    /// that the test is skipped and returns `Ok(None)`. Without that
    /// variable, missing binaries are an error (the test fails).
    pub fn find_for_tests() -> Result<Option<TrusteeBinaries>, TrusteeError> {
        match TrusteeBinaries::find() {
            Ok(bins) => Ok(Some(bins)),
            Err(e @ (TrusteeError::BinariesMissing { .. } | TrusteeError::NoBinDir))
                if std::env::var_os(OPTIONAL_ENV).is_some_and(|v| v == "1") =>
            {
                eprintln!("skipping this test: {e} ({OPTIONAL_ENV}=1 is set)");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn check(dir: PathBuf, origin: &'static str) -> Result<TrusteeBinaries, TrusteeError> {
        let missing: Vec<&str> = BINARY_NAMES
            .iter()
            .copied()
            .filter(|name| !is_executable(&dir.join(name)))
            .collect();
        if missing.is_empty() {
            Ok(TrusteeBinaries { dir })
        } else {
            Err(TrusteeError::BinariesMissing {
                dir,
                origin,
                missing: missing.join(", "),
            })
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `kbs` server.
    pub fn kbs(&self) -> PathBuf {
        self.dir.join("kbs")
    }

    /// Trustee's admin client.
    pub fn kbs_client(&self) -> PathBuf {
        self.dir.join("kbs-client")
    }

    /// The standalone gRPC RVPS.
    pub fn rvps(&self) -> PathBuf {
        self.dir.join("rvps")
    }

    /// The gRPC client of the standalone RVPS.
    pub fn rvps_tool(&self) -> PathBuf {
        self.dir.join("rvps-tool")
    }
}

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn default_bin_dir() -> Result<(PathBuf, &'static str), TrusteeError> {
    if let Some(dir) = non_empty_env(BIN_DIR_ENV) {
        return Ok((PathBuf::from(dir), "TRUSTEE_BIN_DIR"));
    }
    if let Some(cache) = non_empty_env(CACHE_ENV) {
        return Ok((PathBuf::from(cache).join("bin"), "TRUSTEE_CACHE"));
    }
    let home = non_empty_env("HOME").ok_or(TrusteeError::NoBinDir)?;
    Ok((
        PathBuf::from(home).join(".cache/trustee/bin"),
        "the default ~/.cache/trustee/bin",
    ))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// ---------------------------------------------------------------- admin key

/// An Ed25519 admin key pair, made here, on disk as the two PEM files Trustee
/// and its tools use: a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`,
/// the v1 form `openssl genpkey -algorithm ed25519` writes) and an SPKI
/// public key (`-----BEGIN PUBLIC KEY-----`, the only Ed25519 form the KBS's
/// `public_key_uri` accepts).
pub struct AdminKey {
    pair: Ed25519KeyPair,
    private_key_path: PathBuf,
    public_key_path: PathBuf,
    public_key_pem: String,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKey")
            .field("private_key_path", &self.private_key_path)
            .field("public_key_path", &self.public_key_path)
            .finish_non_exhaustive()
    }
}

impl AdminKey {
    /// Makes a new key pair and writes `admin-private.pem` (mode 0600) and
    /// `admin-public.pem` into `dir`, which is created if needed.
    pub fn generate(dir: &Path) -> Result<AdminKey, TrusteeError> {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| TrusteeError::Key("generate a key pair"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| TrusteeError::Key("read back the generated key"))?;
        let private_der = pair
            .to_pkcs8v1()
            .map_err(|_| TrusteeError::Key("encode the private key as PKCS#8"))?;
        let public_der = pair
            .public_key()
            .as_der()
            .map_err(|_| TrusteeError::Key("encode the public key as SPKI"))?;
        let private_key_path = dir.join("admin-private.pem");
        let public_key_path = dir.join("admin-public.pem");
        let public_key_pem = pem("PUBLIC KEY", public_der.as_ref());
        write_private(
            &private_key_path,
            pem("PRIVATE KEY", private_der.as_ref()).as_bytes(),
        )?;
        std::fs::write(&public_key_path, &public_key_pem)
            .map_err(io_err("write", &public_key_path))?;
        Ok(AdminKey {
            pair,
            private_key_path,
            public_key_path,
            public_key_pem,
        })
    }

    /// The PKCS#8 PEM private key file.
    pub fn private_key_path(&self) -> &Path {
        &self.private_key_path
    }

    /// The SPKI PEM public key file (what `public_key_uri` names).
    pub fn public_key_path(&self) -> &Path {
        &self.public_key_path
    }

    /// The SPKI PEM public key.
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// An admin JWT in the bundle README's format: header
    /// `{"alg":"EdDSA","typ":"JWT"}`, claims `iss`, `sub`, `aud` (a list of
    /// one), `role`, `iat` = now and `exp` = now + `ttl`, each part
    /// base64url without padding, signed with Ed25519 over
    /// `header64.claims64`.
    pub fn token(
        &self,
        issuer: &str,
        audience: &str,
        role: &str,
        ttl: Duration,
    ) -> Result<String, TrusteeError> {
        let now = unix_now();
        self.token_with_claims(&json!({
            "iss": issuer,
            "sub": "trustee-test",
            "aud": [audience],
            "role": role,
            "iat": now,
            "exp": now.saturating_add(ttl.as_secs()),
        }))
    }

    /// A JWT with exactly these claims (e.g. an expired one, or one without
    /// `role`), with the EdDSA header and signature of [`AdminKey::token`].
    pub fn token_with_claims(&self, claims: &Value) -> Result<String, TrusteeError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{claims}");
        let signature = self
            .pair
            .try_sign(signed.as_bytes())
            .map_err(|_| TrusteeError::Key("sign a token"))?;
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// The seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `der` as a PEM block with 64-character lines.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, data: &[u8]) -> Result<(), TrusteeError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(data).map_err(io_err("write", path))
}

// ---------------------------------------------------------------- options

/// Which reference value provider service the KBS uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RvpsMode {
    /// The RVPS built into the KBS (`rvps_config` `BuiltIn`), storing in the
    /// KBS's own storage.
    #[default]
    BuiltIn,
    /// A standalone `rvps` process on loopback, reached over gRPC
    /// (`rvps_config` `GrpcRemote`; run-local.sh's `RVPS_MODE=grpc`).
    Grpc,
}

/// How to start Trustee.
#[derive(Clone, Debug)]
pub struct TrusteeOptions {
    /// Built-in or gRPC RVPS.
    pub rvps: RvpsMode,
    /// The admin token issuer the KBS accepts (`iss`).
    pub issuer: String,
    /// The admin token audience the KBS accepts (one of `aud`).
    pub audience: String,
    /// The role the ACL grants (`role`).
    pub role: String,
    /// The paths the role may use: a regex that Trustee requires to start
    /// with `^/kbs` and end with `$`, matched against the request URI.
    pub allowed_endpoints: String,
    /// Where Trustee keeps its state (the KBS's LocalFs storage in `kbs/`,
    /// the standalone RVPS's in `rvps/`). `None`: a directory inside the
    /// harness's temporary work directory. [`TrusteeProcess::restart_empty`]
    /// deletes everything in it.
    pub storage_dir: Option<PathBuf>,
    /// The lifetime of the tokens the helpers mint.
    pub token_ttl: Duration,
    /// `RUST_LOG` for `kbs` and `rvps`.
    pub rust_log: String,
    /// How long `kbs` and `rvps` may take to answer after being spawned.
    pub startup_timeout: Duration,
}

impl Default for TrusteeOptions {
    fn default() -> Self {
        TrusteeOptions {
            rvps: RvpsMode::BuiltIn,
            issuer: "trustee-test".to_string(),
            audience: "KBS".to_string(),
            role: "admin".to_string(),
            allowed_endpoints: "^/kbs/.+$".to_string(),
            storage_dir: None,
            token_ttl: Duration::from_secs(3600),
            rust_log: "info".to_string(),
            startup_timeout: Duration::from_secs(60),
        }
    }
}

impl TrusteeOptions {
    /// The defaults with the standalone gRPC RVPS.
    pub fn grpc() -> TrusteeOptions {
        TrusteeOptions {
            rvps: RvpsMode::Grpc,
            ..TrusteeOptions::default()
        }
    }
}

// ---------------------------------------------------------------- process

/// The answer to an HTTP request of [`TrusteeProcess::admin_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Why one start attempt failed.
enum LaunchError {
    /// A port was taken by someone else; another attempt may work.
    PortBusy(TrusteeError),
    /// Anything else.
    Failed(TrusteeError),
}

/// A running Trustee: `kbs` (and `rvps` in gRPC mode) on 127.0.0.1, killed
/// when dropped. Its work directory (config, keys, token, logs, and storage
/// unless [`TrusteeOptions::storage_dir`] is given) is deleted on drop.
pub struct TrusteeProcess {
    bins: TrusteeBinaries,
    opts: TrusteeOptions,
    work: tempfile::TempDir,
    storage: PathBuf,
    key: AdminKey,
    kbs_port: u16,
    rvps_port: Option<u16>,
    kbs: Option<Child>,
    rvps: Option<Child>,
    starts: u32,
}

impl std::fmt::Debug for TrusteeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrusteeProcess")
            .field("url", &self.url())
            .field("rvps_addr", &self.rvps_addr())
            .field("work_dir", &self.work.path())
            .field("storage_dir", &self.storage)
            .finish_non_exhaustive()
    }
}

impl Drop for TrusteeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.stop();
    }
}

impl TrusteeProcess {
    /// Finds the binaries ([`TrusteeBinaries::find`]) and starts Trustee
    /// ([`TrusteeProcess::start_with`]).
    pub fn start(opts: TrusteeOptions) -> Result<TrusteeProcess, TrusteeError> {
        TrusteeProcess::start_with(TrusteeBinaries::find()?, opts)
    }

    /// Makes a work directory and an admin key, picks free loopback ports,
    /// writes the configuration, starts `rvps` (gRPC mode) and `kbs`, and
    /// waits until `rvps` accepts connections and the KBS answers
    /// `GET /healthz`. On failure the logs are printed on standard error and
    /// are in the error.
    pub fn start_with(
        bins: TrusteeBinaries,
        opts: TrusteeOptions,
    ) -> Result<TrusteeProcess, TrusteeError> {
        let work = tempfile::Builder::new()
            .prefix("trustee-test.")
            .tempdir()
            .map_err(io_err("create", &std::env::temp_dir()))?;
        let storage = match &opts.storage_dir {
            Some(dir) => dir.clone(),
            None => work.path().join("storage"),
        };
        let key = AdminKey::generate(&work.path().join("keys"))?;
        let mut trustee = TrusteeProcess {
            bins,
            opts,
            work,
            storage,
            key,
            kbs_port: 0,
            rvps_port: None,
            kbs: None,
            rvps: None,
            starts: 0,
        };
        trustee.launch(true)?;
        Ok(trustee)
    }

    /// The KBS's base URL, `http://127.0.0.1:PORT` (the same across
    /// restarts).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.kbs_port)
    }

    /// The KBS's address.
    pub fn kbs_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.kbs_port))
    }

    /// In gRPC mode, the standalone RVPS's address as `rvps-tool -a` and the
    /// KBS's `GrpcRemote` take it, `http://127.0.0.1:PORT`.
    pub fn rvps_addr(&self) -> Option<String> {
        self.rvps_port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The options it was started with.
    pub fn options(&self) -> &TrusteeOptions {
        &self.opts
    }

    /// The binaries it runs.
    pub fn binaries(&self) -> &TrusteeBinaries {
        &self.bins
    }

    /// The admin key pair the KBS trusts.
    pub fn admin_key(&self) -> &AdminKey {
        &self.key
    }

    /// The admin private key file (PKCS#8 PEM, Ed25519).
    pub fn admin_key_path(&self) -> &Path {
        self.key.private_key_path()
    }

    /// The admin public key file (SPKI PEM) named by the KBS's
    /// `public_key_uri`.
    pub fn public_key_path(&self) -> &Path {
        self.key.public_key_path()
    }

    /// The admin token issuer the KBS accepts.
    pub fn issuer(&self) -> &str {
        &self.opts.issuer
    }

    /// The admin token audience the KBS accepts.
    pub fn audience(&self) -> &str {
        &self.opts.audience
    }

    /// The role the ACL grants.
    pub fn role(&self) -> &str {
        &self.opts.role
    }

    /// A fresh admin token with the configured issuer, audience and role,
    /// minted by the harness ([`AdminKey::token`]).
    pub fn admin_token(&self) -> Result<String, TrusteeError> {
        self.key.token(
            &self.opts.issuer,
            &self.opts.audience,
            &self.opts.role,
            self.opts.token_ttl,
        )
    }

    /// The file holding the admin token the harness gives `kbs-client`
    /// (rewritten with a fresh token by each helper and each start).
    pub fn admin_token_path(&self) -> PathBuf {
        self.work.path().join("keys/admin-token")
    }

    /// The work directory (config, keys, token, logs).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// The storage directory.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// The KBS's LocalFs storage root (`dir_path`).
    pub fn kbs_storage_dir(&self) -> PathBuf {
        self.storage.join("kbs")
    }

    /// The `kbs-config.toml` written for the KBS.
    pub fn config_path(&self) -> PathBuf {
        self.work.path().join("kbs-config.toml")
    }

    /// The KBS's log file (every start appends to it).
    pub fn kbs_log_path(&self) -> PathBuf {
        self.work.path().join("kbs.log")
    }

    /// The standalone RVPS's log file (gRPC mode).
    pub fn rvps_log_path(&self) -> PathBuf {
        self.work.path().join("rvps.log")
    }

    /// The end of the logs of the current start, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!(
            "--- last lines of {} ---\n{}",
            self.kbs_log_path().display(),
            log_tail(&self.kbs_log_path())
        );
        if self.opts.rvps == RvpsMode::Grpc {
            out.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                self.rvps_log_path().display(),
                log_tail(&self.rvps_log_path())
            ));
        }
        out
    }

    /// The KBS's process id while it runs.
    pub fn kbs_pid(&self) -> Option<u32> {
        self.kbs.as_ref().map(Child::id)
    }

    /// Whether the KBS (and the RVPS in gRPC mode) are still running.
    pub fn is_running(&mut self) -> bool {
        let alive =
            |c: &mut Option<Child>| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        alive(&mut self.kbs) && (self.opts.rvps == RvpsMode::BuiltIn || alive(&mut self.rvps))
    }

    /// Kills `kbs` and `rvps` and waits for them. Storage stays.
    pub fn stop(&mut self) {
        for child in [self.kbs.take(), self.rvps.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts again on the same storage, key and ports (so the URL
    /// stays valid).
    pub fn restart(&mut self) -> Result<(), TrusteeError> {
        self.stop();
        self.launch(false)
    }

    /// Stops, deletes everything in the storage directory, and starts again
    /// on the same key and ports.
    pub fn restart_empty(&mut self) -> Result<(), TrusteeError> {
        self.stop();
        if self.storage.exists() {
            std::fs::remove_dir_all(&self.storage).map_err(io_err("remove", &self.storage))?;
        }
        self.launch(false)
    }

    fn launch(&mut self, fresh_ports: bool) -> Result<(), TrusteeError> {
        let _serial = START_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        for dir in [self.storage.join("kbs"), self.storage.join("rvps")] {
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        self.write_token_file()?;
        let attempts = if fresh_ports {
            FRESH_PORT_ATTEMPTS
        } else {
            SAME_PORT_ATTEMPTS
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.launch_once(fresh_ports) {
                Ok(()) => return Ok(()),
                Err(LaunchError::PortBusy(_)) if attempt < attempts => {
                    self.stop();
                    if !fresh_ports {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
                Err(LaunchError::PortBusy(e) | LaunchError::Failed(e)) => {
                    self.stop();
                    eprintln!(
                        "trustee_process: Trustee did not start ({})\n{}",
                        self.config_path().display(),
                        self.logs()
                    );
                    return Err(e);
                }
            }
        }
    }

    fn launch_once(&mut self, fresh_ports: bool) -> Result<(), LaunchError> {
        self.starts += 1;
        let deadline = Instant::now() + self.opts.startup_timeout;
        let rvps_config = match self.opts.rvps {
            RvpsMode::BuiltIn => "type = \"BuiltIn\"\n".to_string(),
            RvpsMode::Grpc => {
                if fresh_ports || self.rvps_port.is_none() {
                    self.rvps_port = Some(free_port().map_err(LaunchError::Failed)?);
                }
                let port = self.rvps_port.unwrap_or_default();
                self.spawn_rvps(port, deadline)?;
                format!(
                    "type = \"GrpcRemote\"\naddress = {}\n",
                    toml_str(&format!("http://127.0.0.1:{port}"))
                )
            }
        };
        if fresh_ports || self.kbs_port == 0 {
            self.kbs_port = free_port().map_err(LaunchError::Failed)?;
        }
        let config = self.kbs_config(&rvps_config);
        let config_path = self.config_path();
        std::fs::write(&config_path, config)
            .map_err(io_err("write", &config_path))
            .map_err(LaunchError::Failed)?;
        let log = self.kbs_log_path();
        let mut cmd = Command::new(self.bins.kbs());
        cmd.arg("-c").arg(&config_path);
        let child = self.spawn_logged(cmd, &log)?;
        self.kbs = Some(child);
        self.wait_kbs(deadline)
    }

    fn kbs_config(&self, rvps_config: &str) -> String {
        let o = &self.opts;
        format!(
            r#"# Written by sev-sim's trustee_process for one test run.
[http_server]
sockets = [{socket}]
insecure_http = true
worker_count = 2

[attestation_token]
insecure_header_jwk = true

[attestation_service]
type = "coco_as_builtin"

[attestation_service.attestation_token_broker]
duration_min = 5

[attestation_service.rvps_config]
{rvps_config}
[admin]
authorization_mode = "AuthenticatedAuthorization"

[admin.authentication.bearer_jwt]
identity_providers = [
  {{ issuer = {issuer}, audience = {audience}, public_key_uri = {key} }},
]

[admin.authorization.regex_acl]
acls = [{{ role = {role}, allowed_endpoints = {endpoints} }}]

[storage_backend]
storage_type = "LocalFs"

[storage_backend.backends.local_fs]
dir_path = {storage}

[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
"#,
            socket = toml_str(&self.kbs_addr().to_string()),
            issuer = toml_str(&o.issuer),
            audience = toml_str(&o.audience),
            key = toml_str(&self.key.public_key_path().to_string_lossy()),
            role = toml_str(&o.role),
            endpoints = toml_str(&o.allowed_endpoints),
            storage = toml_str(&self.kbs_storage_dir().to_string_lossy()),
        )
    }

    fn spawn_rvps(&mut self, port: u16, deadline: Instant) -> Result<(), LaunchError> {
        let config_path = self.work.path().join("rvps.json");
        let config = json!({
            "storage": {
                "storage_type": "LocalFs",
                "backends": { "local_fs": { "dir_path": self.storage.join("rvps") } }
            }
        });
        std::fs::write(&config_path, config.to_string())
            .map_err(io_err("write", &config_path))
            .map_err(LaunchError::Failed)?;
        let log = self.rvps_log_path();
        let mut cmd = Command::new(self.bins.rvps());
        cmd.arg("-c")
            .arg(&config_path)
            .arg("-a")
            .arg(format!("127.0.0.1:{port}"));
        let child = self.spawn_logged(cmd, &log)?;
        self.rvps = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            self.check_alive("rvps", &log)?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // A start that lost its port to someone else exits at once:
                // make sure the listener is ours.
                std::thread::sleep(Duration::from_millis(100));
                return self.check_alive("rvps", &log);
            }
            if Instant::now() > deadline {
                return Err(LaunchError::Failed(start_error(
                    "rvps",
                    format!("no listener on {addr} in time"),
                    &log,
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_kbs(&mut self, deadline: Instant) -> Result<(), LaunchError> {
        let log = self.kbs_log_path();
        let url = format!("{}/healthz", self.url());
        let agent = http_agent(Duration::from_secs(2));
        loop {
            self.check_alive("kbs", &log)?;
            if self.opts.rvps == RvpsMode::Grpc {
                self.check_alive("rvps", &self.rvps_log_path())?;
            }
            let last = match agent.get(&url).call() {
                Ok(resp) if resp.status().as_u16() == 200 => {
                    std::thread::sleep(Duration::from_millis(100));
                    return self.check_alive("kbs", &log);
                }
                Ok(resp) => format!("GET /healthz answered {}", resp.status()),
                Err(e) => format!("GET /healthz: {e}"),
            };
            if Instant::now() > deadline {
                return Err(LaunchError::Failed(start_error(
                    "kbs",
                    format!("not ready in time ({last})"),
                    &log,
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An error if the `what` child has exited; a port conflict if its log
    /// says its address was in use.
    fn check_alive(&mut self, what: &'static str, log: &Path) -> Result<(), LaunchError> {
        let child = match what {
            "kbs" => self.kbs.as_mut(),
            _ => self.rvps.as_mut(),
        };
        let Some(child) = child else {
            return Err(LaunchError::Failed(start_error(
                what,
                "not started".to_string(),
                log,
            )));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let tail = log_tail(log);
                let err = start_error(what, format!("it exited ({status})"), log);
                if tail.contains("Address already in use") || tail.contains("AddrInUse") {
                    Err(LaunchError::PortBusy(err))
                } else {
                    Err(LaunchError::Failed(err))
                }
            }
            Err(e) => Err(LaunchError::Failed(start_error(
                what,
                format!("cannot wait for it: {e}"),
                log,
            ))),
        }
    }

    fn spawn_logged(&mut self, mut cmd: Command, log: &Path) -> Result<Child, LaunchError> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err("open", log))
            .map_err(LaunchError::Failed)?;
        let _ = writeln!(file, "{LOG_MARK} {} ===", self.starts);
        let err_file = file
            .try_clone()
            .map_err(io_err("open", log))
            .map_err(LaunchError::Failed)?;
        let program = PathBuf::from(cmd.get_program());
        cmd.env("RUST_LOG", &self.opts.rust_log)
            .env("NO_COLOR", "1")
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err_file));
        without_proxy(&mut cmd);
        cmd.spawn()
            .map_err(|source| LaunchError::Failed(TrusteeError::Spawn { program, source }))
    }

    fn write_token_file(&self) -> Result<(), TrusteeError> {
        let token = self.admin_token()?;
        write_private(&self.admin_token_path(), token.as_bytes())
    }

    // ------------------------------------------------------------ helpers

    /// Sends an admin request to the KBS with this token (or none) and
    /// returns whatever status it answers. `path` starts with `/kbs/v0/`;
    /// `body` is the content type and the bytes.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<HttpReply, TrusteeError> {
        let url = format!("{}{path}", self.url());
        let agent = http_agent(HTTP_TIMEOUT);
        let http_err = |reason: String| TrusteeError::Http {
            method: method.to_string(),
            url: url.clone(),
            reason,
        };
        let request = ureq::http::Request::builder().method(method).uri(&url);
        let request = match token {
            Some(t) => request.header("Authorization", format!("Bearer {t}")),
            None => request,
        };
        let result = match body {
            Some((content_type, bytes)) => request
                .header("Content-Type", content_type)
                .body(bytes)
                .map_err(|e| http_err(e.to_string()))
                .and_then(|r| agent.run(r).map_err(|e| http_err(e.to_string()))),
            None => request
                .body(())
                .map_err(|e| http_err(e.to_string()))
                .and_then(|r| agent.run(r).map_err(|e| http_err(e.to_string()))),
        };
        let mut response = result?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| http_err(e.to_string()))?;
        Ok(HttpReply { status, body })
    }

    /// Overwrites the reference values named in `values` (a JSON object
    /// `{"NAME": [VALUE, ...], ...}`) with one raw
    /// `POST /kbs/v0/reference-value` of a sample provenance message, as
    /// someone other than our broker would. Names not in `values` are
    /// untouched; each named one is replaced as a whole.
    pub fn set_reference_values(&self, values: &Value) -> Result<(), TrusteeError> {
        let message = sample_provenance(values)?;
        let token = self.admin_token()?;
        let path = "/kbs/v0/reference-value";
        let reply = self.admin_request(
            "POST",
            path,
            Some(&token),
            Some(("application/json", message.into_bytes())),
        )?;
        if reply.status != 200 {
            return Err(TrusteeError::Status {
                method: "POST".to_string(),
                url: format!("{}{path}", self.url()),
                status: reply.status,
                body: reply.body,
            });
        }
        Ok(())
    }

    /// Reads one reference value through
    /// `kbs-client config get-reference-value --id NAME`: the stored JSON
    /// value as it is (e.g. `["ab..."]` or `[10]`), or `None` when Trustee
    /// says it has none of that name (the KBS answers 401 with "No reference
    /// value found").
    pub fn get_reference_value(&self, name: &str) -> Result<Option<Value>, TrusteeError> {
        let out = self.kbs_client(&["get-reference-value", "--id", name])?;
        match out {
            Ok(stdout) => {
                // kbs-client prints the body with `{:?}`: a Rust string literal.
                let text =
                    unescape_debug_str(stdout.trim()).map_err(|detail| TrusteeError::Parse {
                        what: "kbs-client get-reference-value output",
                        detail: format!("{detail}: {stdout:?}"),
                    })?;
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| TrusteeError::Parse {
                        what: "the reference value kbs-client printed",
                        detail: format!("{e}: {text:?}"),
                    })
            }
            Err(TrusteeError::Tool { ref stderr, .. })
                if stderr.contains("No reference value found") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Registers `[value]` under `name` through
    /// `kbs-client config set-sample-reference-value NAME VALUE`, with
    /// `--as-integer` for a number (it must fit an i32) and `--as-bool` for a
    /// boolean; a string is sent as it is.
    pub fn set_sample_reference_value(
        &self,
        name: &str,
        value: &Value,
    ) -> Result<(), TrusteeError> {
        let (text, flag) = match value {
            Value::String(s) => (s.clone(), None),
            Value::Bool(b) => (b.to_string(), Some("--as-bool")),
            Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => {
                (n.to_string(), Some("--as-integer"))
            }
            other => {
                return Err(TrusteeError::Usage(format!(
                    "kbs-client set-sample-reference-value takes a string, a bool or an i32, \
                     not {other}"
                )))
            }
        };
        let mut args = vec!["set-sample-reference-value"];
        args.extend(flag);
        args.extend(["--", name, text.as_str()]);
        self.kbs_client(&args)?.map(drop)
    }

    /// Sets Trustee's "affirming" resource policy (resources are released
    /// only when every EAR submodule is affirming) through
    /// `kbs-client config set-resource-policy --affirming`.
    pub fn set_affirming_resource_policy(&self) -> Result<(), TrusteeError> {
        self.kbs_client(&["set-resource-policy", "--affirming"])?
            .map(drop)
    }

    /// Runs `kbs-client config set-resource-policy --default`. In v0.21.0
    /// kbs-client sends its `deny_all.rego` for `--default`, which is NOT
    /// the policy the KBS installs on an empty storage (`default.rego`);
    /// only [`TrusteeProcess::restart_empty`] brings that one back.
    pub fn set_default_resource_policy(&self) -> Result<(), TrusteeError> {
        self.kbs_client(&["set-resource-policy", "--default"])?
            .map(drop)
    }

    /// Sets the Rego policy in `file` as the resource policy through
    /// `kbs-client config set-resource-policy --policy-file FILE`.
    pub fn set_resource_policy_file(&self, file: &Path) -> Result<(), TrusteeError> {
        let file = file.to_string_lossy();
        self.kbs_client(&["set-resource-policy", "--policy-file", &file])?
            .map(drop)
    }

    /// The resource policy as the KBS stored it (read from its LocalFs
    /// storage, `kbs/resource-policy.rego`; the HTTP API only lists policy
    /// ids), or `None` before the KBS wrote one.
    pub fn stored_resource_policy(&self) -> Result<Option<String>, TrusteeError> {
        let path = self.kbs_storage_dir().join("kbs/resource-policy.rego");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TrusteeError::Io {
                step: "read",
                path,
                source,
            }),
        }
    }

    /// gRPC mode: asks the standalone RVPS directly, through
    /// `rvps-tool query -a ADDR -r NAME`, for the value stored under `name`.
    pub fn rvps_query(&self, name: &str) -> Result<Option<Value>, TrusteeError> {
        let addr = self.require_rvps("rvps_query")?;
        let mut cmd = Command::new(self.bins.rvps_tool());
        cmd.args(["query", "-a", &addr, "-r", name])
            .env("RUST_LOG", "info");
        let stdout = self.run_tool(cmd)??;
        parse_rvps_tool_query(&stdout)
    }

    /// gRPC mode: registers `values` (as for
    /// [`TrusteeProcess::set_reference_values`]) directly with the standalone
    /// RVPS through `rvps-tool register -a ADDR -p FILE`.
    pub fn rvps_register(&self, values: &Value) -> Result<(), TrusteeError> {
        let addr = self.require_rvps("rvps_register")?;
        let file = self.work.path().join("rvps-message.json");
        std::fs::write(&file, sample_provenance(values)?).map_err(io_err("write", &file))?;
        let mut cmd = Command::new(self.bins.rvps_tool());
        cmd.args(["register", "-a", &addr, "-p"]).arg(&file);
        self.run_tool(cmd)??;
        Ok(())
    }

    fn require_rvps(&self, helper: &str) -> Result<String, TrusteeError> {
        self.rvps_addr().ok_or_else(|| {
            TrusteeError::Usage(format!(
                "{helper} needs the standalone RVPS (RvpsMode::Grpc); this Trustee uses the built-in one"
            ))
        })
    }

    /// Runs `kbs-client --url URL config --admin-token-file FILE ARGS...`
    /// with a fresh token. The outer error: it could not be run; the inner
    /// one: it failed.
    fn kbs_client(&self, args: &[&str]) -> Result<Result<String, TrusteeError>, TrusteeError> {
        self.write_token_file()?;
        let mut cmd = Command::new(self.bins.kbs_client());
        cmd.arg("--url")
            .arg(self.url())
            .arg("config")
            .arg("--admin-token-file")
            .arg(self.admin_token_path())
            .args(args)
            .env("RUST_LOG", "warn");
        self.run_tool(cmd)
    }

    /// Runs a tool to its end (killing it after [`TOOL_TIMEOUT`]) and returns
    /// its standard output, or a [`TrusteeError::Tool`] if it failed.
    fn run_tool(&self, mut cmd: Command) -> Result<Result<String, TrusteeError>, TrusteeError> {
        let command = describe(&cmd);
        let program = PathBuf::from(cmd.get_program());
        cmd.env("NO_COLOR", "1")
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        without_proxy(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|source| TrusteeError::Spawn { program, source })?;
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        let deadline = Instant::now() + TOOL_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let stdout = strip_ansi(&stdout.join().unwrap_or_default());
        let stderr = strip_ansi(&stderr.join().unwrap_or_default());
        Ok(match status {
            Some(status) if status.success() => Ok(stdout),
            status => Err(TrusteeError::Tool {
                command,
                status: status.map_or_else(
                    || format!("killed after {} s", TOOL_TIMEOUT.as_secs()),
                    |s| s.to_string(),
                ),
                stderr: [stderr.trim(), stdout.trim()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("\n"),
            }),
        })
    }
}

/// The sample provenance message Trustee's RVPS takes for `values`, a JSON
/// object `{"NAME": [VALUE, ...], ...}`:
/// `{"version":"0.1.0","type":"sample","payload":"<base64 of values>"}`.
pub fn sample_provenance(values: &Value) -> Result<String, TrusteeError> {
    if !values.is_object() {
        return Err(TrusteeError::Usage(format!(
            "reference values must be a JSON object of names to values, not {values}"
        )));
    }
    Ok(json!({
        "version": "0.1.0",
        "type": "sample",
        "payload": STANDARD.encode(values.to_string()),
    })
    .to_string())
}

/// A blocking HTTP client that ignores proxy settings (everything here is on
/// loopback) and returns 4xx and 5xx answers instead of failing on them.
fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Drops the proxy variables, which Trustee's reqwest clients honour.
fn without_proxy(cmd: &mut Command) {
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
}

/// A free port on 127.0.0.1, found by binding port 0.
fn free_port() -> Result<u16, TrusteeError> {
    let bind = || TcpListener::bind(("127.0.0.1", 0))?.local_addr();
    bind()
        .map(|a| a.port())
        .map_err(io_err("bind a port on", Path::new("127.0.0.1")))
}

fn start_error(what: &'static str, reason: String, log: &Path) -> TrusteeError {
    TrusteeError::Start {
        what,
        reason,
        log: log.to_path_buf(),
        tail: log_tail(log),
    }
}

/// The last 60 lines the current start wrote to `log`.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let current = text
        .rfind(LOG_MARK)
        .map_or(text.as_str(), |i| text.get(i..).unwrap_or(""));
    let lines: Vec<&str> = current.lines().collect();
    let skip = lines.len().saturating_sub(60);
    lines.get(skip..).unwrap_or_default().join("\n")
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Removes terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The string a Rust `{:?}` string literal stands for (kbs-client prints
/// reference values that way).
fn unescape_debug_str(literal: &str) -> Result<String, String> {
    let inner = literal
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or("not a quoted string")?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('\'') => out.push('\''),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('u') => {
                if chars.next() != Some('{') {
                    return Err("\\u without {".to_string());
                }
                let hex: String = chars.by_ref().take_while(|&d| d != '}').collect();
                let code =
                    u32::from_str_radix(&hex, 16).map_err(|e| format!("\\u{{{hex}}}: {e}"))?;
                out.push(char::from_u32(code).ok_or(format!("\\u{{{hex}}} is no character"))?);
            }
            other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// Reads what `rvps-tool query` logged: the JSON after "Get reference values
/// succeeded:", or `None` for "No reference values found".
fn parse_rvps_tool_query(stdout: &str) -> Result<Option<Value>, TrusteeError> {
    const FOUND: &str = "Get reference values succeeded:";
    if let Some(i) = stdout.find(FOUND) {
        let rest = stdout.get(i + FOUND.len()..).unwrap_or("");
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        return match values.next() {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => Err(TrusteeError::Parse {
                what: "rvps-tool query output",
                detail: format!("{e}: {rest:?}"),
            }),
            None => Err(TrusteeError::Parse {
                what: "rvps-tool query output",
                detail: format!("no value after {FOUND:?}"),
            }),
        };
    }
    if stdout.contains("No reference values found") {
        return Ok(None);
    }
    Err(TrusteeError::Parse {
        what: "rvps-tool query output",
        detail: format!("neither a value nor \"No reference values found\": {stdout:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};

    #[test]
    fn debug_literals_unescape() {
        let original = "[\"a\\\"b\",\n\t1, \u{200b}, 'q']";
        let literal = format!("{original:?}");
        assert_eq!(unescape_debug_str(&literal).unwrap(), original);
        assert!(unescape_debug_str("[1]").is_err());
        assert!(unescape_debug_str("\"\\x41\"").is_err());
    }

    #[test]
    fn rvps_tool_output_is_read() {
        let out =
            "2026-01-01T00:00:00Z  INFO rvps_tool: Get reference values succeeded:\n [\"ab\",3]\n";
        assert_eq!(parse_rvps_tool_query(out).unwrap(), Some(json!(["ab", 3])));
        let none = "INFO rvps_tool: No reference values found for the given id\n";
        assert_eq!(parse_rvps_tool_query(none).unwrap(), None);
        assert!(parse_rvps_tool_query("INFO something else").is_err());
        assert_eq!(strip_ansi("\u{1b}[32mINFO\u{1b}[0m x"), "INFO x");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r"^/kbs/.+$"), r#""^/kbs/.+$""#);
        assert_eq!(toml_str("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }

    #[test]
    fn admin_key_files_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let key = AdminKey::generate(dir.path()).unwrap();
        let public = std::fs::read_to_string(key.public_key_path()).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let private = std::fs::read_to_string(key.private_key_path()).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let mode = std::fs::metadata(key.private_key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        // The SPKI is the 12-byte RFC 8410 prefix and the raw key.
        let b64: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        let spki = STANDARD.decode(b64).unwrap();
        assert_eq!(spki.len(), 44);
        assert_eq!(hex_prefix(&spki), "302a300506032b6570032100");

        let token = key
            .token("iss-x", "aud-y", "admin", Duration::from_secs(60))
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT"}));
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "iss-x");
        assert_eq!(claims["aud"], json!(["aud-y"]));
        assert_eq!(claims["role"], "admin");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(&ED25519, spki.get(12..).unwrap())
            .verify(signed.as_bytes(), &signature)
            .unwrap();
    }

    fn hex_prefix(der: &[u8]) -> String {
        der.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn provenance_wraps_an_object_only() {
        let msg: Value =
            serde_json::from_str(&sample_provenance(&json!({"x": [1]})).unwrap()).unwrap();
        assert_eq!(msg["version"], "0.1.0");
        assert_eq!(msg["type"], "sample");
        let payload = STANDARD.decode(msg["payload"].as_str().unwrap()).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&payload).unwrap(),
            json!({"x": [1]})
        );
        assert!(sample_provenance(&json!([1])).is_err());
    }
}
