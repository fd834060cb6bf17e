//! The `kbs` command line: serve the key broker (keybroker protocol, admin API
//! on a Unix socket and optionally TCP, Prometheus metrics), or call the admin
//! API of a running one (`kbs admin ...`).

use crate::admin::{AdminAuth, AdminService, AdminToken, AllowedUids};
use crate::broker::{Broker, BrokerPolicy};
use crate::grpc::KeyBroker;
use crate::metrics::Metrics;
use crate::registration::RegistrationMode;
use crate::store::{AtRestKey, Store, AT_REST_KEY_FILE};
use crate::trust::TrustAnchors;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kbs_proto::kbsadmin::admin_server::AdminServer;
use kbs_proto::kbsstatus::guest_status_server::GuestStatusServer;
use kbs_proto::keybroker::key_broker_service_server::KeyBrokerServiceServer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::{Identity, ServerTlsConfig};
use tracing::{error, info, warn};
use zeroize::Zeroizing;

/// How long in-flight calls may take to finish after SIGINT or SIGTERM.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Key broker for SEV pre-attestation of Kata confidential guests.
///
/// Without a subcommand, serves: the simple-kbs `keybroker` gRPC protocol that
/// the Kata shim and the guest's attestation agent use (--listen); the admin
/// API for host agents and operators on a Unix socket checked by peer
/// credentials (--admin-socket) and, given a token file, on TCP
/// (--admin-listen; in clear on loopback only, or over TLS with
/// --admin-tls-cert and --admin-tls-key); and Prometheus metrics
/// (--metrics-listen). Platform
/// certificate chains must end in one of AMD's root keys; launch measurements
/// are verified before any policy is consulted; launch sessions and every
/// attestation outcome are kept on disk. Stops on SIGINT or SIGTERM.
///
/// `kbs admin ...` calls the admin API of a running kbs; `kbs
/// import-embedded ...` moves a stopped broker's embedded database into
/// PostgreSQL for replicas.
#[derive(Debug, Parser)]
#[command(name = "kbs", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Serving options (when no subcommand is given).
    #[command(flatten)]
    pub serve: Args,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of `kbs`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Call the admin API of a running kbs (for people and scripts).
    Admin(crate::admin_cli::AdminArgs),
    /// Copy the embedded database of --data-dir into the PostgreSQL database
    /// of --database, to move a single broker to replicas.
    ///
    /// Give the storage options the replicas will run with: `kbs
    /// import-embedded --data-dir /var/lib/kbs --at-rest-key-file KEY
    /// --database postgres://... --database-password-file FILE`. The
    /// broker on --data-dir must be stopped (its directory is locked while
    /// copying). The PostgreSQL database must hold no data yet; the copy is one
    /// transaction, so it lands whole or not at all, and a failed one can
    /// simply be run again. Everything durable is copied: approvals, tokens,
    /// digests, secrets, keysets, resources, launch sessions, records and
    /// SNP reports, still sealed under the same at-rest key, which the
    /// replicas must then be given. --data-dir must hold the database (nothing
    /// is created there). Once copied, the embedded database is marked as
    /// moved, and a kbs started on it refuses to serve: two brokers on copies
    /// of one state could each release a launch's secrets once.
    ImportEmbedded(StorageArgs),
}

/// A listener address, or `none` to turn the listener off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrNone<T>(pub Option<T>);

impl<T: FromStr> FromStr for OrNone<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "none" {
            return Ok(OrNone(None));
        }
        text.parse()
            .map(|t| OrNone(Some(t)))
            .map_err(|e| format!("{text:?}: {e} (or \"none\")"))
    }
}

/// Where the broker keeps its state: options shared by serving and by
/// `kbs import-embedded`.
#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// Directory of the broker's database (created, mode 0700, if missing).
    /// It must belong to the kbs's user and not be writable by others; its
    /// database files are made 0600. One kbs at a time: a second one on the
    /// same directory is refused (lock file kbs.lock).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kbs")]
    pub data_dir: PathBuf,
    /// The key the database's secrets, resources and session, connection and
    /// report keys are sealed under (AES-256-GCM): 32 bytes, 64 hexadecimal
    /// digits or base64, in a file only the kbs's user can read. Give it from
    /// outside the data directory, so that a copy of the data directory
    /// reveals nothing: systemd's `LoadCredentialEncrypted=kbs-at-rest-key:...`
    /// puts it in $CREDENTIALS_DIRECTORY, where it is found without this
    /// option. Without either, a key is kept in DIR/at-rest.key (created on
    /// first start), with a warning at every start.
    #[arg(long, value_name = "FILE")]
    pub at_rest_key_file: Option<PathBuf>,
    /// Where the broker keeps its state: `sqlite` (the embedded database in
    /// --data-dir, for a single broker) or a PostgreSQL connection string
    /// shared by replicas behind one address, e.g.
    /// `postgres://kbs@db.example:5432/kbs?sslmode=require`. The schema is
    /// created or migrated at start, under a lock. No password in the string
    /// (refused): give it with --database-password-file or
    /// KBS_DATABASE_PASSWORD. With PostgreSQL every replica needs the same
    /// at-rest key, given explicitly (--at-rest-key-file or the systemd
    /// credential), and --data-dir holds nothing durable.
    #[arg(
        long,
        value_name = "URL",
        env = "KBS_DATABASE",
        default_value = "sqlite"
    )]
    pub database: String,
    /// File holding the PostgreSQL password (one line). Without it, the
    /// environment variable KBS_DATABASE_PASSWORD is used, if set.
    #[arg(long, value_name = "FILE")]
    pub database_password_file: Option<PathBuf>,
    /// PEM file of the certificate authorities the PostgreSQL server's
    /// certificate must chain to (else the system's roots). A server off
    /// loopback needs `sslmode=require` in --database (anything that could
    /// fall back to plain text is refused); TLS then checks the server's
    /// certificate and host name.
    #[arg(long, value_name = "FILE")]
    pub database_ca: Option<PathBuf>,
    /// Most connections this broker keeps open to PostgreSQL.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub database_pool: u32,
}

/// Serving options of the key broker.
#[derive(Debug, Parser)]
#[command(name = "kbs", version)]
pub struct Args {
    /// Address to serve the keybroker protocol on. Guests and the Kata shim must
    /// reach it: Kata's guest_pre_attestation_kbs_uri names it.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:44444")]
    pub listen: SocketAddr,
    /// Where the broker's state is, and the key it is sealed under.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// INSECURE, for test rigs and the simulator: also trust this root key (an ARK
    /// in AMD's CA certificate format, as `sevctl export` writes it). Anyone with
    /// its private key can impersonate a PSP and receive secrets. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub insecure_trust_anchor: Vec<PathBuf>,
    /// INSECURE, for test rigs and the SNP simulator: also trust this SEV-SNP
    /// root for SNP guests' reports: a PEM or DER file with the ARK, optionally
    /// followed by its ASK. Anyone with its private key can forge a guest's
    /// report. Repeatable. AMD's roots (Milan, Genoa, Turin) are always trusted.
    #[arg(long, value_name = "FILE")]
    pub snp_insecure_root: Vec<PathBuf>,
    /// Accept guests whose policy allows debugging (NODBG clear); their memory is
    /// readable by the host.
    #[arg(long)]
    pub allow_debug: bool,
    /// Guest policy bits every launch must have, and with a leading ! those
    /// it must not: e.g. NODBG,ES,NOSEND,!DOMAIN (bits NODBG, NOKS, ES,
    /// NOSEND, DOMAIN, SEV). Without ES required, a host may launch a guest as
    /// plain SEV wherever a sev digest of the same artefacts is registered.
    #[arg(long, value_name = "BITS", default_value = "")]
    pub require_policy: crate::policy_requirement::PolicyRequirement,
    /// Oldest SEV firmware API version accepted, MAJOR.MINOR.
    #[arg(long, value_name = "MAJOR.MINOR", default_value = "0.0", value_parser = parse_api)]
    pub min_fw_api: (u8, u8),
    /// With --min-fw-api, the build of the oldest SEV firmware accepted:
    /// MAJOR.MINOR build N, compared as one version (1.55 build 1 is newer
    /// than 1.51 build 30).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_fw_build: u8,
    /// Seconds a launch id stays usable after GetBundle.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub session_ttl: u32,
    /// Seconds an online connection (online_sev_kbc) stays usable after the
    /// GetSecret that opened it. Whatever its lifetime, a connection reaches
    /// only its launch's keyset (its secrets, its bundle and the resources
    /// attached with `kbs admin keyset set --resource`), and ends when its
    /// launch's digest is no longer registered.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(u32).range(1..))]
    pub connection_ttl: u32,
    /// Days to keep attestation records; older ones are deleted hourly, with
    /// expired sessions and online connections.
    #[arg(long, value_name = "DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    pub record_retention_days: u32,
    /// Address of the TCP admin listener, which admits the token of
    /// --admin-token-file (an operator) and the tokens `kbs admin token create`
    /// made (an operator's, or a node's bound to its node name). It is started
    /// when this is given, or on 127.0.0.1:44445 when only --admin-token-file
    /// is. Without --admin-tls-cert/--admin-tls-key it speaks plain gRPC, so
    /// the kbs refuses to start unless ADDR is a loopback address: bearer
    /// tokens would cross the network in clear.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the bearer token TCP admin callers must present
    /// (`authorization: Bearer <token>`): a regular file owned by root or by
    /// the kbs's user, not readable or writable by group or others, with at
    /// least 32 printable characters of token. The kbs refuses to start if the
    /// file does not qualify. Its holder is an operator.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate (leaf first, then any intermediates) of the TCP admin
    /// listener, which then speaks TLS and may listen on any address. Clients
    /// verify it against the CA that issued it (`kbs admin --ca-file`, the
    /// host agent's `[kbs] admin_ca_file`) and the host name in their https://
    /// endpoint, so its subject alternative names must cover that name. Needs
    /// --admin-tls-key.
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --admin-tls-cert; keep it
    /// readable by the kbs's user only. The kbs refuses to start if either file
    /// cannot be read, is not PEM, or the key is not the certificate's. Needs
    /// --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// Unix socket of the admin API, created mode 0600 (a stale socket is
    /// replaced), or "none". Callers are admitted by their peer credentials:
    /// root, the kbs's own uid, and --admin-uid.
    #[arg(long, value_name = "PATH", default_value = crate::admin_cli::DEFAULT_SOCKET)]
    pub admin_socket: OrNone<PathBuf>,
    /// Also admit this uid on the admin socket, as an operator (UID or
    /// UID:operator) or as the host agent of one node (UID:node=NAME: it may
    /// register and list that node's digests and nothing else). Repeatable.
    /// The socket is mode 0600, so that user also needs write access to it
    /// (e.g. an ACL: setfacl -m u:UID:rw PATH, after each start).
    #[arg(long, value_name = "UID[:ROLE]", value_parser = crate::credentials::parse_uid_role)]
    pub admin_uid: Vec<(u32, crate::credentials::Role)>,
    /// How node credentials register digests. "approved" (the default): a
    /// node sends the inputs of its launches, the broker accepts them only
    /// when an operator approved every one (`kbs admin approve`) and registers
    /// the digests it derives itself. "open": a node's credential registers
    /// whatever digests it sends for its own node, so a compromised node can
    /// get any guest it likes released; for labs only. Digests an operator
    /// registers (`kbs admin digests replace`) count in both modes.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = RegistrationMode::Approved)]
    pub registration: RegistrationMode,
    /// Largest request the keybroker port decodes, in bytes: above the 64 KiB
    /// the largest field may hold (a guest report's body), so that field's own
    /// check names it; anything larger is refused before it is buffered whole.
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024, value_parser = clap::value_parser!(u32).range(4096..=4 * 1024 * 1024))]
    pub max_message_bytes: u32,
    /// Concurrent HTTP/2 streams (calls in flight) per keybroker connection.
    /// The Kata shim and the guest make one call per connection at a time.
    /// A connection can make the kbs buffer up to this many requests of
    /// --max-message-bytes: about 0.5 MiB at the defaults, 0.5 GiB at
    /// --max-connections.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_streams_per_connection: u32,
    /// Keybroker connections open at once, from everyone; more are closed at
    /// accept. Keep the process's file limit (LimitNOFILE) well above it.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Keybroker connections open at once from one source address (a node's
    /// shims and guests share its address).
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_source: u32,
    /// Seconds a new keybroker connection has to send its first bytes.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_timeout: u64,
    /// Seconds a keybroker connection may stay without sending anything
    /// before it is closed (clients reconnect when they next call). Longer
    /// than --request-timeout. This also closes dead peers, which is why the
    /// broker sends no HTTP/2 keepalive pings: replies to them would keep
    /// idle connections open.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout: u64,
    /// Seconds one keybroker call may take before it fails with
    /// DEADLINE_EXCEEDED.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
    /// Largest GetOnlineSecret response, in bytes: a request whose secrets and
    /// resources come to more (as bounded from their stored sizes, before any
    /// is read) is refused with an error naming this limit.
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 20, value_parser = clap::value_parser!(u32).range(65_536..=268_435_456))]
    pub max_online_response_bytes: u32,
    /// Refusals of one kind (RPC and reason) recorded one by one per minute;
    /// past it they are counted in one summary record a minute, so that
    /// refused calls cannot fill the disk. Metrics count every call.
    #[arg(long, value_name = "N", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub refusal_records_per_minute: u32,
    /// Address serving Prometheus metrics at GET /metrics, or "none".
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_listen: OrNone<SocketAddr>,
    /// A Trustee KBS whose SNP reference values this broker keeps (repeat for
    /// several): it becomes their single writer, writing the union of every
    /// node's SNP measurements and TCBs (what counts under --registration) to
    /// snp_launch_measurement, snp_bootloader, snp_tee_svn, snp_snp_svn and
    /// snp_microcode. Nothing is written to Trustee without this or
    /// --trustee-rvps. Needs --trustee-admin-key and --trustee-admin-issuer, or
    /// --trustee-admin-token-file.
    #[arg(long = "trustee-url", value_name = "URL", help_heading = "Trustee")]
    pub trustee_urls: Vec<String>,
    /// The private key (PKCS#8 PEM: Ed25519, ECDSA P-256/P-384 or RSA) whose
    /// public half Trustee's admin configuration trusts: the broker signs a
    /// short-lived admin token with it for each call.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Trustee",
        requires = "trustee_admin_issuer",
        conflicts_with = "trustee_admin_token_file"
    )]
    pub trustee_admin_key: Option<PathBuf>,
    /// The issuer Trustee's admin configuration names for that key (`iss`).
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Trustee",
        requires = "trustee_admin_key"
    )]
    pub trustee_admin_issuer: Option<String>,
    /// The audience of the admin tokens (`aud`).
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Trustee",
        default_value = "KBS"
    )]
    pub trustee_admin_audience: String,
    /// The role claim of the admin tokens, which Trustee's ACL matches against
    /// the paths it allows; the broker needs only /kbs/v0/reference-value (it
    /// reads the resource policy when allowed). Trustee does not tie roles to
    /// issuers, so the key can sign any role: it is as strong as Trustee's
    /// admin. For less, give a ready token with a restricted role instead.
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Trustee",
        default_value = "admin"
    )]
    pub trustee_admin_role: String,
    /// A ready admin token instead of a key, read at every call (so that it can
    /// be rotated in place).
    #[arg(long, value_name = "FILE", help_heading = "Trustee")]
    pub trustee_admin_token_file: Option<PathBuf>,
    /// A CA certificate (PEM) for the Trustee KBS's TLS certificate, beside
    /// the system's roots.
    #[arg(long, value_name = "FILE", help_heading = "Trustee")]
    pub trustee_ca_file: Option<PathBuf>,
    /// A standalone Trustee RVPS (gRPC, HOST:PORT) to write the same reference
    /// values to (repeat for several).
    #[arg(long = "trustee-rvps", value_name = "ADDR", help_heading = "Trustee")]
    pub trustee_rvps: Vec<String>,
    /// How often each Trustee is read back and corrected when it differs
    /// (restarted on empty storage, overwritten by someone else).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, help_heading = "Trustee", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub trustee_reconcile_seconds: u64,
}

/// A configuration the kbs refuses to start with: the process exits with
/// status 64 (EX_USAGE).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ConfigError(pub anyhow::Error);

fn parse_api(text: &str) -> Result<(u8, u8), String> {
    let (a, b) = text
        .split_once('.')
        .ok_or_else(|| format!("{text:?}: expected MAJOR.MINOR"))?;
    let num = |s: &str| s.parse::<u8>().map_err(|e| format!("{text:?}: {e}"));
    Ok((num(a)?, num(b)?))
}

/// Checks and locks the data directory, logging what it narrowed.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<crate::data_dir::DataDirLock> {
    let p = crate::data_dir::prepare(dir, crate::admin::own_uid())?;
    for n in &p.narrowed {
        warn!(file = %n.path.display(), was = format!("{:04o}", n.was), "database file was readable by other users; now 0600");
    }
    if p.listable {
        warn!(dir = %dir.display(), "data directory can be listed by other users (its files are 0600); chmod 0700 is best");
    }
    Ok(p.lock)
}

/// The credential name systemd's `LoadCredentialEncrypted=` gives the at-rest
/// key in the shipped unit.
pub const AT_REST_CREDENTIAL: &str = "kbs-at-rest-key";

/// The at-rest key systemd's credential gives, if it gives one.
fn credential_key() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| Path::new(&d).join(AT_REST_CREDENTIAL))
        .filter(|p| p.exists())
}

/// Whether the at-rest key is the one kept in the data directory: neither
/// --at-rest-key-file nor the systemd credential gives one.
fn key_in_data_dir(args: &StorageArgs) -> bool {
    args.at_rest_key_file.is_none() && credential_key().is_none()
}

/// The at-rest key: --at-rest-key-file, else the systemd credential, else
/// the key kept in the data directory (created on first start; its path is
/// returned when this call created it).
fn at_rest_key(args: &StorageArgs) -> anyhow::Result<(AtRestKey, Option<PathBuf>)> {
    let mut made = None;
    let (key, source) = if let Some(path) = &args.at_rest_key_file {
        (AtRestKey::load(path)?, path.clone())
    } else if let Some(path) = credential_key() {
        (AtRestKey::load(&path)?, path)
    } else {
        let path = args.data_dir.join(AT_REST_KEY_FILE);
        let (key, created) = AtRestKey::load_or_create(&path)?;
        if created {
            info!(file = %path.display(), "created an at-rest key");
            made = Some(path.clone());
        }
        warn!(
            file = %path.display(),
            "the at-rest key is kept beside the database: a copy of the data directory reveals every secret; \
             give the key from elsewhere (--at-rest-key-file, or systemd LoadCredentialEncrypted={AT_REST_CREDENTIAL}:...)"
        );
        (key, path)
    };
    info!(file = %source.display(), fingerprint = %key.fingerprint(), "at-rest key loaded");
    Ok((key, made))
}

/// The PostgreSQL options of --database, or `None` for the embedded database.
pub fn postgres_options(args: &StorageArgs) -> anyhow::Result<Option<crate::store::PgOptions>> {
    let url = args.database.trim();
    if url.eq_ignore_ascii_case("sqlite") {
        return Ok(None);
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Not echoed: a mistyped string may still hold a password.
        anyhow::bail!("--database: expected `sqlite` or a postgres:// connection string");
    }
    let password = match &args.database_password_file {
        Some(path) => {
            // Checked as the admin token file is: the broker's own (or
            // root's), closed to group and others, small.
            const MAX: u64 = 1024;
            let raw = crate::credentials::read_private(path, MAX).map_err(|e| {
                let e = e
                    .to_string()
                    .replacen("admin token file", "password file", 1);
                anyhow::anyhow!("--database-password-file: {e}")
            })?;
            let text = std::str::from_utf8(&raw)
                .ok()
                .filter(|_| u64::try_from(raw.len()).is_ok_and(|n| n <= MAX));
            let line = text
                .and_then(|t| t.lines().next())
                .map(|l| l.trim_end_matches('\r'))
                .unwrap_or_default();
            if line.is_empty() {
                anyhow::bail!(
                    "--database-password-file {}: expected one line of UTF-8 (at most {MAX} bytes)",
                    path.display()
                );
            }
            Some(zeroize::Zeroizing::new(line.to_owned()))
        }
        None => std::env::var("KBS_DATABASE_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(zeroize::Zeroizing::new),
    };
    Ok(Some(crate::store::PgOptions {
        url: url.to_owned(),
        password,
        ca_file: args.database_ca.clone(),
        pool_size: usize::try_from(args.database_pool).unwrap_or(8),
    }))
}

/// Opens the database --database names. The embedded one lives in the
/// locked data directory; PostgreSQL needs an at-rest key given from outside,
/// the same for every replica.
fn open_store(args: &StorageArgs) -> anyhow::Result<(Store, Option<crate::data_dir::DataDirLock>)> {
    if let Some(options) = postgres_options(args)? {
        if key_in_data_dir(args) {
            anyhow::bail!(
                "--database postgres://...: give the at-rest key with --at-rest-key-file (or the \
                 systemd credential {AT_REST_CREDENTIAL}); every replica must share it, and a key \
                 kept in a replica's data directory would be its own"
            );
        }
        let (key, _) = at_rest_key(args)?;
        let store = Store::open_postgres(&options, key)?;
        info!(db = %store.location(), pool = options.pool_size, "PostgreSQL database opened");
        return Ok((store, None));
    }
    let lock = prepare_data_dir(&args.data_dir)?;
    let (key, created) = at_rest_key(args)?;
    match Store::open_with_key(&args.data_dir, key) {
        Ok(s) => Ok((s, Some(lock))),
        Err(e) => {
            // A key made by this start for a database sealed under another
            // one would only mislead the next start.
            if let Some(path) = created {
                let _ = std::fs::remove_file(path);
            }
            Err(e.into())
        }
    }
}

/// `kbs import-embedded`: copies the embedded database of `--data-dir` into
/// the PostgreSQL database of `--database` and prints what it copied.
pub fn import_embedded(args: &StorageArgs) -> anyhow::Result<()> {
    // What the options name is wrong (exit 64, as when serving); what the
    // databases say is not.
    let config = |e: anyhow::Error| anyhow::Error::from(ConfigError(e));
    let Some(options) = postgres_options(args).map_err(config)? else {
        return Err(config(anyhow::anyhow!(
            "import-embedded: name the PostgreSQL database to copy into with --database postgres://..."
        )));
    };
    let file = args.data_dir.join("kbs.sqlite3");
    if !file.is_file() {
        return Err(config(anyhow::anyhow!(
            "import-embedded: {} holds no embedded database (kbs.sqlite3)",
            args.data_dir.display()
        )));
    }
    // Held until the copy is done: no broker may write the source meanwhile.
    let _lock = prepare_data_dir(&args.data_dir).map_err(config)?;
    // The key the database was sealed under, never a new one.
    let kept = args.data_dir.join(AT_REST_KEY_FILE);
    let key_in_data_dir = key_in_data_dir(args);
    let key = if key_in_data_dir {
        if !kept.exists() {
            return Err(config(anyhow::anyhow!(
                "import-embedded: {} has no at-rest key; give the one its database was sealed \
                 under with --at-rest-key-file",
                args.data_dir.display()
            )));
        }
        AtRestKey::load(&kept).map_err(|e| config(e.into()))?
    } else {
        at_rest_key(args).map_err(config)?.0
    };
    let source = Store::open_with_key(&args.data_dir, key.clone())?;
    let destination = Store::open_postgres(&options, key)?;
    let copied = destination.import_embedded(source)?;
    let total: u64 = copied.tables.iter().map(|(_, n)| n).sum();
    info!(from = %file.display(), to = %destination.location(), rows = total, "embedded database imported");
    println!(
        "copied {total} rows from {} into {}:",
        file.display(),
        destination.location()
    );
    for (table, rows) in &copied.tables {
        println!("  {table:<20} {rows}");
    }
    if copied.source_marked {
        println!(
            "{} is marked as moved: a kbs started on it refuses to serve",
            file.display()
        );
    } else {
        warn!(file = %file.display(), "could not mark the embedded database as moved; make sure no kbs serves it again");
    }
    if key_in_data_dir {
        println!(
            "the at-rest key was the one kept in {}: give it to every replica with \
             --at-rest-key-file (or the {AT_REST_CREDENTIAL} credential)",
            kept.display()
        );
    }
    Ok(())
}

/// Builds the broker from the arguments: everything that can fail on bad
/// configuration fails here, before any port is bound.
pub fn broker(args: &Args) -> anyhow::Result<(Broker, Option<crate::data_dir::DataDirLock>)> {
    let (store, lock) = open_store(&args.storage)?;
    let mut trust = TrustAnchors::amd();
    for path in &args.insecure_trust_anchor {
        trust.add_insecure_anchor(path)?;
        warn!(
            anchor = %path.display(),
            "INSECURE: trusting an extra root key; whoever holds its private key can obtain every secret"
        );
    }
    info!(anchors = ?trust.names(), db = %store.location(), "trust anchors loaded");
    let policy = BrokerPolicy {
        session_ttl_secs: i64::from(args.session_ttl),
        connection_ttl_secs: i64::from(args.connection_ttl),
        allow_debug: args.allow_debug,
        min_api: args.min_fw_api,
        min_build: args.min_fw_build,
        registration: args.registration,
        max_online_response: usize::try_from(args.max_online_response_bytes).unwrap_or(8 << 20),
        refusal_records_per_minute: args.refusal_records_per_minute,
        require_policy: args.require_policy,
    };
    let mut snp_roots = snp_attestation::TrustedRoots::amd();
    for path in &args.snp_insecure_root {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--snp-insecure-root {}: {e}", path.display()))?;
        snp_roots = snp_roots
            .with_extra_root_pem(&bytes)
            .map_err(|e| anyhow::anyhow!("--snp-insecure-root {}: {e}", path.display()))?;
        warn!(
            root = %path.display(),
            "INSECURE: trusting an extra SNP root; whoever holds its private key can forge guests' reports"
        );
    }
    Ok((
        Broker::new(store, trust, policy).with_snp_roots(snp_roots),
        lock,
    ))
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled: a signal sent as
/// soon as the listeners have announced themselves must still stop the broker
/// cleanly rather than kill it. Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                let _ = one.recv().await;
            }
            // No handler could be installed: the default actions apply.
            (Err(_), Err(_)) => std::future::pending::<()>().await,
        }
    }
}

/// Why the TCP admin listener's certificate or key cannot be used. The
/// messages name the file and never hold key material.
#[derive(Debug, thiserror::Error)]
pub enum AdminTlsError {
    /// The certificate file cannot be read or holds no usable certificate.
    #[error("admin TLS certificate file {}: {reason}", path.display())]
    Certificate {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file cannot be read or holds no usable private key.
    #[error("admin TLS key file {}: {reason}", path.display())]
    Key {
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the one of the certificate.
    #[error(
        "admin TLS key file {} is not the key of certificate file {}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// tonic refused the identity after rustls accepted it.
    #[error("admin TLS certificate file {} and key file {}: {reason}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// tonic's reason.
        reason: String,
    },
}

/// Longest a client may take over the TLS handshake, so that connections
/// that never finish it do not pile up.
const ADMIN_TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Words for a PEM decoding failure that never quote the file: a damaged
/// key file's lines are key material.
fn pem_reason(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => format!("no PEM {what} in it"),
        Error::MissingSectionEnd { .. } => "not valid PEM: a section has no END line".into(),
        Error::IllegalSectionStart { .. } => "not valid PEM: a malformed BEGIN line".into(),
        Error::Base64Decode(_) => "not valid PEM: a section is not base64".into(),
        Error::SectionTooLarge => "not valid PEM: a section is too large".into(),
        Error::Io(e) => format!("cannot read: {e}"),
        _ => "not valid PEM".into(),
    }
}

/// Loads and checks the TCP admin listener's certificate chain and key:
/// readable, PEM, a key rustls can sign with, and the leaf certificate's own
/// key. Everything tonic would find wrong only when the first client
/// connects is found here, before any port is bound.
pub fn load_admin_tls(cert: &Path, key: &Path) -> Result<ServerTlsConfig, AdminTlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad_cert = |reason: String| AdminTlsError::Certificate {
        path: cert.to_path_buf(),
        reason,
    };
    let bad_key = |reason: String| AdminTlsError::Key {
        path: key.to_path_buf(),
        reason,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| bad_cert(format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(pem_reason(&e, "certificate")))?;
    if chain.is_empty() {
        return Err(bad_cert(pem_reason(
            &rustls::pki_types::pem::Error::NoItemsFound,
            "certificate",
        )));
    }
    let key_pem =
        Zeroizing::new(std::fs::read(key).map_err(|e| bad_key(format!("cannot read: {e}")))?);
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad_key(pem_reason(&e, "private key (PKCS#8, PKCS#1 or SEC1)")))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| bad_key(format!("not a usable private key: {e}")))?;
    match rustls::sign::CertifiedKey::new(chain, signer).keys_match() {
        // Unknown: a key type rustls cannot compare; the handshake decides.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(AdminTlsError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        Err(e) => return Err(bad_cert(format!("not a usable certificate: {e}"))),
    }
    // tonic builds its rustls configuration with the process's default
    // provider, and there is none when both ring and aws-lc-rs are compiled
    // in (other crates of the tree bring ring): name the one the kbs uses.
    // An error only says a default is installed already.
    let _ = provider.install_default();
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&cert_pem, key_pem.as_slice()))
        .timeout(ADMIN_TLS_HANDSHAKE);
    // The same construction serve makes, so that it cannot fail there.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| AdminTlsError::Rejected {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: kbs_proto::admin_client::root_cause(&e),
        })?;
    Ok(config)
}

/// Everything checked before any port is bound.
struct Prepared {
    broker: Arc<Broker>,
    /// The Trustee instances to write reference values to.
    trustees: Vec<crate::trustee::client::Target>,
    /// Held while the kbs serves: a second kbs on the directory is refused.
    _lock: Option<crate::data_dir::DataDirLock>,
    token: Option<AdminToken>,
    /// Where the TCP admin listener binds, when it is on.
    admin_listen: Option<SocketAddr>,
    tls: Option<ServerTlsConfig>,
    allowed: AllowedUids,
}

/// How often the database is checked for writes (the health status).
const WRITE_PROBE_EVERY: Duration = Duration::from_secs(5);

/// The TCP admin listener's address when no --admin-listen is given but a
/// token file is.
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:44445";

fn prepare(args: &Args) -> anyhow::Result<Prepared> {
    // A caller waiting for its answer sends nothing, and the idle deadline
    // counts only what peers send: a call allowed to outlast it would be cut
    // by it instead of ending with DEADLINE_EXCEEDED. For the same reason
    // the broker sends no HTTP/2 keepalive pings: a peer's replies to them
    // would keep an idle connection open for ever, and a dead peer is closed
    // by the idle deadline anyway.
    if args.request_timeout >= args.idle_timeout {
        bail!(
            "--request-timeout ({} s) must be shorter than --idle-timeout ({} s): a call waiting \
             for its answer sends nothing, so the idle deadline would cut it first",
            args.request_timeout,
            args.idle_timeout
        );
    }
    let token = args
        .admin_token_file
        .as_deref()
        .map(AdminToken::load)
        .transpose()?;
    let tls = match (&args.admin_tls_cert, &args.admin_tls_key) {
        (Some(cert), Some(key)) => Some(load_admin_tls(cert, key)?),
        (None, None) => None,
        // clap's `requires` makes this unreachable from the command line.
        _ => bail!("--admin-tls-cert and --admin-tls-key go together"),
    };
    let admin_listen = match (args.admin_listen, &token) {
        (Some(addr), _) => Some(addr),
        (None, Some(_)) => Some(SocketAddr::from_str(DEFAULT_ADMIN_LISTEN)?),
        (None, None) => None,
    };
    if let Some(addr) = admin_listen {
        if tls.is_none() && !is_loopback(&addr) {
            bail!(
                "--admin-listen {addr}: not a loopback address, and without TLS the admin \
                 API's bearer tokens would cross the network in clear; give \
                 --admin-tls-cert and --admin-tls-key, or a loopback address"
            );
        }
    } else if tls.is_some() {
        warn!("--admin-tls-cert without --admin-listen or --admin-token-file: the TCP admin listener is off");
    }
    let (broker, lock) = broker(args)?;
    let broker = Arc::new(broker);
    match args.registration {
        RegistrationMode::Open => warn!(
            "--registration open: any node credential registers whatever digests it sends \
             for its own node, so a compromised node can get any guest released; for labs only"
        ),
        RegistrationMode::Approved => {
            let unhonoured = broker
                .store()
                .count_digests(crate::store::Origin::Node)
                .unwrap_or(0);
            if unhonoured > 0 {
                warn!(
                    digests = unhonoured,
                    "digests nodes registered without approved inputs are kept but not honoured; \
                     approve the nodes' inputs (kbs admin approve) so they register again, or \
                     start with --registration open"
                );
            }
        }
    }
    let trustees = trustee_targets(args)?;
    let own = crate::admin::own_uid();
    Ok(Prepared {
        trustees,
        broker,
        _lock: lock,
        token,
        admin_listen,
        tls,
        allowed: AllowedUids::with_roles(own, args.admin_uid.clone()),
    })
}

/// The Trustee instances named on the command line, with their credentials
/// checked now (a key that cannot be read fails the start).
fn trustee_targets(args: &Args) -> anyhow::Result<Vec<crate::trustee::client::Target>> {
    use crate::trustee::client::Target;
    use crate::trustee::token::{AdminKey, TokenSource};
    let mut out = Vec::new();
    if !args.trustee_urls.is_empty() {
        let ca = args
            .trustee_ca_file
            .as_deref()
            .map(|p| std::fs::read(p).with_context(|| format!("--trustee-ca-file {}", p.display())))
            .transpose()?;
        for url in &args.trustee_urls {
            let tokens = match (
                &args.trustee_admin_key,
                &args.trustee_admin_issuer,
                &args.trustee_admin_token_file,
            ) {
                (Some(key), Some(issuer), None) => TokenSource::Minted {
                    key: AdminKey::load(key).context("--trustee-admin-key")?,
                    issuer: issuer.clone(),
                    audience: args.trustee_admin_audience.clone(),
                    role: args.trustee_admin_role.clone(),
                },
                (None, None, Some(file)) => {
                    // Read once now, so that a missing file fails the start.
                    TokenSource::File(file.clone())
                        .token()
                        .context("--trustee-admin-token-file")?;
                    TokenSource::File(file.clone())
                }
                _ => bail!(
                    "--trustee-url {url}: give --trustee-admin-key with --trustee-admin-issuer, \
                     or --trustee-admin-token-file, for the broker's admin calls to Trustee"
                ),
            };
            out.push(
                Target::kbs(url, tokens, ca.as_deref())
                    .map_err(|e| anyhow::anyhow!("--trustee-url: {e}"))?,
            );
        }
    } else if args.trustee_admin_key.is_some() || args.trustee_admin_token_file.is_some() {
        warn!("Trustee admin credentials given without --trustee-url: they are not used");
    }
    for addr in &args.trustee_rvps {
        out.push(Target::rvps(addr).map_err(|e| anyhow::anyhow!("--trustee-rvps: {e}"))?);
    }
    Ok(out)
}

/// The admin service with room for a firmware upload (`kbs admin approve
/// firmware`): AmdSev OVMF images are a few MiB, tonic's default limit 4 MiB.
fn admin_service(broker: &Arc<Broker>, metrics: &Arc<Metrics>) -> AdminServer<AdminService> {
    AdminServer::new(AdminService::new(Arc::clone(broker), Arc::clone(metrics)))
        .max_decoding_message_size(crate::registration::MAX_FIRMWARE + 64 * 1024)
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

async fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))
}

/// Serves until SIGINT or SIGTERM: the keybroker protocol, the admin API and
/// the metrics. Configuration is checked before any port is bound; a bad one
/// is a [`ConfigError`].
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let Prepared {
        trustees,
        broker,
        _lock,
        token,
        admin_listen,
        tls,
        allowed,
    } = prepare(&args).map_err(ConfigError)?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut servers: JoinSet<anyhow::Result<()>> = JoinSet::new();
    // Before any listener is announced: from then on SIGTERM drains.
    let shutdown = shutdown_signal();

    // Housekeeping off the request path: expired sessions and connections, and
    // records past their retention, so the database does not grow without bound.
    {
        let broker = Arc::clone(&broker);
        let retention = i64::from(args.record_retention_days) * 86_400;
        let stop = stopped();
        servers.spawn(async move {
            let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
            let mut minutely = tokio::time::interval(std::time::Duration::from_secs(60));
            tokio::pin!(stop);
            loop {
                // The summaries of refusals not recorded one by one, each
                // minute and at shutdown.
                let flush = |all: bool| {
                    let b = Arc::clone(&broker);
                    tokio::task::spawn_blocking(move || b.flush_refusal_summaries(all))
                };
                tokio::select! {
                    _ = &mut stop => {
                        let _ = flush(true).await;
                        return Ok(());
                    }
                    _ = minutely.tick() => {
                        let _ = flush(false).await;
                        continue;
                    }
                    _ = hourly.tick() => {}
                }
                let b = Arc::clone(&broker);
                let purged = tokio::task::spawn_blocking(move || {
                    b.store()
                        .purge(crate::store::now().saturating_sub(retention))
                })
                .await;
                match purged {
                    Ok(Ok(p)) => info!(
                        sessions = p.sessions,
                        connections = p.connections,
                        records = p.records,
                        reports = p.reports,
                        "purged expired state"
                    ),
                    Ok(Err(e)) => warn!(error = %e, "purge failed"),
                    Err(e) => warn!(error = %e, "purge task failed"),
                }
            }
        });
    }

    // The single writer of Trustee's SNP reference values.
    if trustees.is_empty() {
        info!("no --trustee-url or --trustee-rvps: no Trustee reference values are written");
    } else {
        let settings = crate::trustee::sync::Settings {
            reconcile: Duration::from_secs(args.trustee_reconcile_seconds),
        };
        let names: Vec<String> = trustees
            .iter()
            .map(crate::trustee::client::Target::name)
            .collect();
        info!(trustees = %names.join(", "), "keeping Trustee's SNP reference values");
        // One writer among the replicas of a database: the lease holder.
        let lease_stop = {
            let mut rx = stop_tx.subscribe();
            Box::pin(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
        };
        let (holding, keeper) = crate::trustee::lease::spawn(&broker, lease_stop);
        servers.spawn(async move {
            keeper
                .await
                .context("the Trustee writer lease keeper failed")?;
            Ok(())
        });
        let stop_rx = stop_tx.subscribe();
        for handle in crate::trustee::sync::spawn(
            &broker,
            trustees,
            &settings,
            &metrics,
            &holding,
            move || {
                let mut rx = stop_rx.clone();
                Box::pin(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
            },
        ) {
            servers.spawn(async move {
                // It ends only when the kbs stops; a panic is an error.
                handle.await.context("the Trustee writer failed")?;
                Ok(())
            });
        }
    }

    // The keybroker protocol and the guests' reports, with gRPC health.
    let listener = bind_tcp(args.listen, "the keybroker protocol").await?;
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<KeyBrokerServiceServer<KeyBroker>>()
        .await;
    health.set_serving::<GuestStatusServer<KeyBroker>>().await;
    // A release that cannot be recorded is refused, so while the database
    // cannot be written the keybroker is not serving, and says so.
    {
        let broker = Arc::clone(&broker);
        let health = health.clone();
        let stop = stopped();
        servers.spawn(async move {
            let mut every = tokio::time::interval(WRITE_PROBE_EVERY);
            let mut writable = true;
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = every.tick() => {}
                }
                let b = Arc::clone(&broker);
                let probe = tokio::task::spawn_blocking(move || b.store().probe_write()).await;
                let now = matches!(probe, Ok(Ok(())));
                if now != writable {
                    writable = now;
                    if now {
                        info!("the database can be written again: serving");
                        health.set_serving::<KeyBrokerServiceServer<KeyBroker>>().await;
                        health.set_serving::<GuestStatusServer<KeyBroker>>().await;
                    } else {
                        let why = match probe {
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                            Ok(Ok(())) => String::new(),
                        };
                        error!(error = %why, "the database cannot be written: no release can be recorded; health NOT_SERVING");
                        health.set_not_serving::<KeyBrokerServiceServer<KeyBroker>>().await;
                        health.set_not_serving::<GuestStatusServer<KeyBroker>>().await;
                    }
                }
            }
        });
    }
    let max_message = usize::try_from(args.max_message_bytes).unwrap_or(128 * 1024);
    let limits = crate::connections::ConnectionLimits {
        max_total: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        max_per_source: usize::try_from(args.max_connections_per_source).unwrap_or(usize::MAX),
        handshake: Duration::from_secs(args.handshake_timeout),
        idle: Duration::from_secs(args.idle_timeout),
    };
    // What one connection can make the kbs hold is bounded: its streams, each
    // at most one message, within flow-control windows it cannot raise.
    let keybroker = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(args.max_streams_per_connection))
        .initial_stream_window_size(Some(args.max_message_bytes.saturating_add(1024)))
        .initial_connection_window_size(Some(4 * args.max_message_bytes.saturating_add(1024)))
        .http2_max_header_list_size(Some(16 * 1024))
        .timeout(Duration::from_secs(args.request_timeout))
        .add_service(health_service)
        .add_service(
            KeyBrokerServiceServer::new(KeyBroker::with_metrics(
                Arc::clone(&broker),
                Arc::clone(&metrics),
            ))
            .max_decoding_message_size(max_message),
        )
        .add_service(
            GuestStatusServer::new(KeyBroker::with_metrics(
                Arc::clone(&broker),
                Arc::clone(&metrics),
            ))
            .max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(
            crate::connections::incoming(listener, limits, Arc::clone(&metrics), stopped()),
            stopped(),
        );
    servers.spawn(async move { keybroker.await.context("keybroker listener") });
    // The line tests and scripts wait for; the address is the one really bound.
    eprintln!("kbs: listening on {addr}");
    info!(%addr, "serving keybroker");

    // The admin API over TCP, for bearer tokens; beyond loopback only over TLS
    // (prepare refused the rest).
    match admin_listen {
        Some(listen) => {
            let listener = bind_tcp(listen, "the admin API").await?;
            let addr = listener.local_addr()?;
            let service = tonic::service::interceptor::InterceptedService::new(
                admin_service(&broker, &metrics),
                AdminAuth::tokens(token, Arc::clone(&broker), Arc::clone(&metrics)),
            );
            let with_tls = tls.is_some();
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder
                    .tls_config(tls)
                    .context("TLS of the TCP admin listener")?;
            }
            let server = builder.add_service(service).serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped(),
            );
            servers.spawn(async move { server.await.context("TCP admin listener") });
            eprintln!("kbs: admin listening on {addr}");
            if with_tls {
                info!(%addr, tls = true, "serving the admin API on TCP (TLS, bearer token)");
            } else {
                info!(%addr, tls = false, "serving the admin API on TCP in clear, on loopback (bearer token)");
            }
        }
        None => info!("no --admin-listen or --admin-token-file: the TCP admin listener is off"),
    }

    // The admin API on the Unix socket.
    let socket = args.admin_socket.0.clone();
    if let Some(path) = &socket {
        let listener = crate::admin::bind_socket(path)
            .map_err(|e| anyhow::anyhow!("{e} (use --admin-socket PATH or none)"))?;
        let service = tonic::service::interceptor::InterceptedService::new(
            admin_service(&broker, &metrics),
            AdminAuth::peer_uid(allowed, Arc::clone(&metrics)),
        );
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stopped(),
            );
        servers.spawn(async move { server.await.context("admin socket") });
        eprintln!("kbs: admin socket {}", path.display());
        info!(path = %path.display(), "serving the admin API on a Unix socket (peer credentials)");
    } else {
        info!("--admin-socket none: the admin socket is off");
    }

    // Prometheus metrics.
    if let OrNone(Some(metrics_addr)) = args.metrics_listen {
        let listener = bind_tcp(metrics_addr, "metrics").await?;
        let addr = listener.local_addr()?;
        let server = crate::metrics::serve(listener, Arc::clone(&metrics), stopped());
        servers.spawn(async move { server.await.context("metrics listener") });
        eprintln!("kbs: metrics on {addr}");
        info!(%addr, "serving metrics at /metrics");
    } else {
        info!("--metrics-listen none: metrics are off");
    }

    let mut failure = None;
    tokio::select! {
        () = shutdown => info!("stopping: draining in-flight calls"),
        Some(ended) = servers.join_next() => {
            failure = Some(match ended {
                Ok(Ok(())) => anyhow::anyhow!("a listener stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::Error::from(e).context("a listener failed"),
            });
        }
    }
    stop_tx.send_replace(true);
    drain(&mut servers).await;
    if let Some(path) = &socket {
        remove_socket(path);
    }
    match failure {
        Some(e) => Err(e),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// Waits for the listeners to finish their in-flight calls, at most
/// [`DRAIN_GRACE`].
async fn drain(servers: &mut JoinSet<anyhow::Result<()>>) {
    let all = async {
        while let Some(ended) = servers.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %format!("{e:#}"), "listener failed while stopping"),
                Err(e) => error!(error = %e, "listener task failed while stopping"),
            }
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, all).await.is_err() {
        warn!(grace = ?DRAIN_GRACE, "calls still in flight after the grace period; stopping anyway");
        servers.abort_all();
    }
}

fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(path = %path.display(), error = %e, "cannot remove the admin socket");
        }
    }
}
