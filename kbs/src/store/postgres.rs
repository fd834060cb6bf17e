//! Connections to the PostgreSQL server that replicas of the broker share.
//!
//! The store is synchronous (its callers run on blocking threads); the
//! `postgres` client drives its own small runtime, which may not run inside
//! another, so every use of a connection happens on a thread outside the
//! caller's runtime. A small pool keeps connections open; one that broke
//! (server restarted, network cut) is dropped and the next use opens a new
//! one. A transaction that reads and then writes on what it read takes one
//! transaction-level advisory lock exclusively, so such writers queue as they
//! do on SQLite and a check-then-write means the same thing on both
//! databases; a registration takes it shared (registrations run side by
//! side, but not beside a revocation) with a lock of its own node and class.

use super::db::{DbError, Handle, StatementCache};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The advisory lock every write transaction holds.
const WRITE_LOCK: i64 = 0x6b62_735f_7772_6974; // "kbs_writ"
/// The advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x6b62_735f_6d69_6772; // "kbs_migr"

/// Which advisory locks a transaction takes first.
#[derive(Debug, Clone, Copy)]
pub enum TxLock<'a> {
    /// The write lock, exclusively: no other locking transaction runs.
    Exclusive,
    /// The write lock shared, and the lock of this key exclusively.
    SharedWith(&'a str),
    /// None: the transaction's statements are safe side by side.
    None,
    /// The migration lock, exclusively (schema changes at start).
    Migration,
}

/// Server settings of every session: no statement (lock waits included) runs
/// longer than 15 s, and no transaction idles open for more than 30 s.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=15000 -c idle_in_transaction_session_timeout=30000";

/// How long a caller waits for a pooled connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// How to reach the PostgreSQL server.
#[derive(Clone)]
pub struct PgOptions {
    /// The connection string (`postgres://user@host:port/db?sslmode=...`),
    /// without a password.
    pub url: String,
    /// The password, from a file or the environment.
    pub password: Option<zeroize::Zeroizing<String>>,
    /// PEM file of the certificate authorities the server's certificate is
    /// checked against (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Most connections kept open by this process.
    pub pool_size: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            // Parsed, so that a password given against the rules never shows.
            .field(
                "url",
                &self
                    .url
                    .parse::<postgres::Config>()
                    .map_or_else(|_| "(not a connection string)".to_owned(), |c| location(&c)),
            )
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Why the PostgreSQL options cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgConfigError {
    /// The connection string does not parse.
    #[error("--database: not a PostgreSQL connection string: {0}")]
    Url(String),
    /// The connection string carries a password.
    #[error(
        "--database: the connection string holds a password, which would be visible in the \
         process list; give it with --database-password-file or KBS_DATABASE_PASSWORD"
    )]
    PasswordInUrl,
    /// The connection could fall back to plain text off loopback.
    #[error(
        "--database: the server is not on loopback, so the connection must be TLS: add \
         sslmode=require (the server's certificate and host name are then checked; \
         sslmode=prefer would fall back to plain text, password and all, for anyone in the path)"
    )]
    PlaintextOffLoopback,
    /// The CA file cannot be read or holds no certificate.
    #[error("--database-ca {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

struct PgConn {
    client: postgres::Client,
    statements: StatementCache,
}

/// A connection taken from the pool, given back when dropped, also when
/// the call using it panics (the pool's count of open connections stays
/// true).
struct Checkout<'p> {
    pool: &'p PgPool,
    conn: Option<PgConn>,
}

impl Checkout<'_> {
    /// The connection (present from checkout until drop).
    fn conn(&mut self) -> Result<&mut PgConn, DbError> {
        self.conn
            .as_mut()
            .ok_or_else(|| DbError::Unavailable("the connection was given back".into()))
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// A pool of connections to one PostgreSQL database.
pub struct PgPool {
    config: postgres::Config,
    tls: Tls,
    location: String,
    idle: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
}

struct PoolState {
    idle: Vec<PgConn>,
    open: usize,
}

impl PgPool {
    /// A pool for `options`; no connection is opened yet.
    pub fn new(options: &PgOptions) -> Result<PgPool, PgConfigError> {
        let mut config: postgres::Config = options
            .url
            .parse()
            .map_err(|e: postgres::Error| PgConfigError::Url(e.to_string()))?;
        if config.get_password().is_some() {
            return Err(PgConfigError::PasswordInUrl);
        }
        if let Some(p) = &options.password {
            config.password(p.as_bytes());
        }
        if config.get_application_name().is_none() {
            config.application_name("kbs");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A dead server or a cut network must fail calls within seconds, not
        // when TCP gives up: a connection stuck holding the write lock would
        // stall every replica's writes, and a lease holder must notice that
        // it can no longer renew.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(15));
        if config.get_options().is_none() {
            config.options(SESSION_OPTIONS);
        }
        if config.get_ssl_mode() != postgres::config::SslMode::Require && !loopback_only(&config) {
            return Err(PgConfigError::PlaintextOffLoopback);
        }
        let tls = if config.get_ssl_mode() == postgres::config::SslMode::Disable {
            Tls::None
        } else {
            Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
                client_config(options.ca_file.as_deref())?,
            ))
        };
        let location = location(&config);
        Ok(PgPool {
            config,
            tls,
            location,
            idle: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            max: options.pool_size.max(1),
        })
    }

    /// The database, for messages: user, host, port and name, never a password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs `f` on a pooled connection.
    pub fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Handle<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, DbError> {
        self.on_own_thread(|| {
            let mut lease = self.checkout()?;
            let conn = lease.conn()?;
            f(&mut Handle::Postgres(
                &mut conn.client,
                &mut conn.statements,
            ))
        })
    }

    /// Runs `f` in a transaction holding `lock`; commits when it returns
    /// `Ok`, rolls back otherwise.
    pub fn transact<T: Send>(
        &self,
        lock: TxLock<'_>,
        f: impl FnOnce(&mut Handle<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, DbError> {
        self.on_own_thread(|| {
            let mut lease = self.checkout()?;
            let out = (|| {
                let PgConn { client, statements } = lease.conn()?;
                let mut tx = client.transaction()?;
                match lock {
                    TxLock::Exclusive => {
                        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
                    }
                    TxLock::SharedWith(key) => {
                        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&WRITE_LOCK])?;
                        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key_lock(key)])?;
                    }
                    TxLock::Migration => {
                        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
                    }
                    TxLock::None => {}
                }
                let out = f(&mut Handle::Postgres(&mut tx, statements))?;
                tx.commit()?;
                Ok(out)
            })();
            out
        })
    }

    /// Runs `f` in a transaction holding the migration lock.
    pub fn migrate<T: Send>(
        &self,
        f: impl FnOnce(&mut Handle<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, DbError> {
        self.transact(TxLock::Migration, f)
    }

    /// Runs `f` where the client's own runtime may block: on this thread if
    /// it is outside any runtime or may leave it (a multi-threaded runtime's
    /// worker hands its tasks on; a blocking-pool thread is outside already),
    /// else (a current-thread runtime, as tests use) on a thread of its own.
    fn on_own_thread<T: Send>(
        &self,
        f: impl FnOnce() -> Result<T, DbError> + Send,
    ) -> Result<T, DbError> {
        match tokio::runtime::Handle::try_current() {
            Err(_) => return f(),
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                return tokio::task::block_in_place(f);
            }
            Ok(_) => {}
        }
        std::thread::scope(|s| {
            s.spawn(f)
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn checkout(&self) -> Result<Checkout<'_>, DbError> {
        self.take().map(|conn| Checkout {
            pool: self,
            conn: Some(conn),
        })
    }

    fn take(&self) -> Result<PgConn, DbError> {
        let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = state.idle.pop() {
                if c.client.is_closed() {
                    // Broken while idle (the server restarted): replaced below.
                    state.open = state.open.saturating_sub(1);
                    continue;
                }
                return Ok(c);
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return self.connect().inspect_err(|_| {
                    let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    state.open = state.open.saturating_sub(1);
                    self.returned.notify_one();
                });
            }
            let (s, timeout) = self
                .returned
                .wait_timeout(state, POOL_WAIT)
                .unwrap_or_else(|p| p.into_inner());
            state = s;
            if timeout.timed_out() && state.idle.is_empty() && state.open >= self.max {
                return Err(DbError::Unavailable(format!(
                    "{}: all {} connections busy for {}s",
                    self.location,
                    self.max,
                    POOL_WAIT.as_secs()
                )));
            }
        }
    }

    fn checkin(&self, conn: PgConn) {
        let mut state = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // A call that panicked may have left the session in any state.
        if conn.client.is_closed() || std::thread::panicking() {
            state.open = state.open.saturating_sub(1);
        } else {
            state.idle.push(conn);
        }
        self.returned.notify_one();
    }

    fn connect(&self) -> Result<PgConn, DbError> {
        let client = match &self.tls {
            Tls::None => self.config.connect(postgres::NoTls)?,
            Tls::Rustls(tls) => self.config.connect(tls.clone())?,
        };
        Ok(PgConn {
            client,
            statements: StatementCache::new(),
        })
    }
}

/// Whether every host of `config` is this machine (a loopback address or a
/// Unix socket), where plain text crosses no network.
fn loopback_only(config: &postgres::Config) -> bool {
    config.get_hosts().iter().all(|h| match h {
        postgres::config::Host::Unix(_) => true,
        postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    })
}

/// The advisory lock of `key`: the first eight bytes of its SHA-256.
fn key_lock(key: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    i64::from_be_bytes(first)
}

/// The TLS client configuration: the server's certificate must chain to
/// `ca_file`'s certificates, or to the system's roots, and name the host.
fn client_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, PgConfigError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |reason: String| PgConfigError::Ca {
                path: path.to_path_buf(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificate in it".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgConfigError::Url(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn location(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        host,
        port,
        config.get_dbname().unwrap_or("")
    )
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Closing a client blocks on its runtime, which may not happen on a
        // thread that drives another.
        let state = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        let idle = std::mem::take(&mut state.idle);
        if idle.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            drop(idle);
        } else {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("location", &self.location)
            .field("max", &self.max)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> PgOptions {
        PgOptions {
            url: url.into(),
            password: None,
            ca_file: None,
            pool_size: 2,
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        let e = PgPool::new(&options("postgres://kbs:hunter2@db/kbs")).unwrap_err();
        assert!(matches!(e, PgConfigError::PasswordInUrl), "{e}");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn the_location_names_no_password() {
        let mut o = options("postgres://kbs@db.example:5433/broker?sslmode=require");
        o.password = Some(zeroize::Zeroizing::new("hunter2".into()));
        let p = PgPool::new(&o).unwrap();
        assert_eq!(p.location(), "postgres://kbs@db.example:5433/broker");
        assert!(!format!("{p:?} {o:?}").contains("hunter2"));
    }

    #[test]
    fn plain_text_is_refused_off_loopback() {
        for url in [
            "postgres://kbs@db.example/kbs",
            "postgres://kbs@db.example/kbs?sslmode=prefer",
            "postgres://kbs@10.0.0.5/kbs?sslmode=disable",
        ] {
            let e = PgPool::new(&options(url)).unwrap_err();
            assert!(
                matches!(e, PgConfigError::PlaintextOffLoopback),
                "{url}: {e}"
            );
        }
        for url in [
            "postgres://kbs@127.0.0.1/kbs?sslmode=disable",
            "postgres://kbs@localhost/kbs",
            "postgres://kbs@db.example/kbs?sslmode=require",
        ] {
            assert!(PgPool::new(&options(url)).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "nothing\n").unwrap();
        let mut o = options("postgres://kbs@db/kbs?sslmode=require");
        o.ca_file = Some(f.clone());
        let e = PgPool::new(&o).unwrap_err();
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    }
}
