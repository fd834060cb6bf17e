//! Durable state of the key broker: an embedded SQLite database on disk for a
//! single broker, or PostgreSQL shared by replicas.
//!
//! Launch sessions live here rather than in memory so that a launch in flight
//! survives a restart of the broker, and so that a launch begun on one
//! replica is finished on another; a session is consumed by the statement
//! that reads it, so a launch id is usable once, whichever replica asks.
//! SQLite runs in WAL mode: a committed write survives a crash of the process.
//! The schema is versioned; [`migrations`] brings either database to this
//! version at open, under a lock.

use db::{params, DbError, Handle};
use rusqlite::{Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

mod approvals;
pub mod db;
pub mod import;
mod leases;
pub mod migrations;
pub mod postgres;
mod sealing;
mod snp_guests;
#[doc(hidden)]
pub mod testing;
mod trustee;
pub use approvals::{ApprovalRow, TokenRow};
pub use leases::{REFERENCE_COUNTER, TRUSTEE_WRITER};
pub use postgres::{PgConfigError, PgOptions};
pub use sealing::{AtRestKey, KeyError};
pub use snp_guests::{SnpGuestReport, SnpLaunch, SnpReportOutcome};
pub use trustee::{NodeTcb, PlatformTcb, TcbPin};

/// The at-rest key [`Store::open`] keeps beside the database when the kbs is
/// given none of its own.
pub const AT_REST_KEY_FILE: &str = "at-rest.key";

/// A storage failure. Never shown to RPC callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database {db}: {source}")]
    Db {
        /// The database file or server.
        db: String,
        /// The error.
        source: DbError,
    },
    /// The database file cannot be created.
    #[error("database {path}: cannot create: {source}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A value stored by an earlier version cannot be read back, or a
    /// sealed value does not open (altered, or moved to another row).
    #[error("database {db}: corrupt value in {what}")]
    Corrupt {
        /// The database file or server.
        db: String,
        /// What could not be read.
        what: &'static str,
    },
    /// The at-rest key cannot be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database's values were sealed under another key.
    #[error(
        "database {db}: its values are sealed under the at-rest key {expected}, not under the \
         key given ({given}); start the kbs with the key it was sealed under"
    )]
    WrongKey {
        /// The database file or server.
        db: String,
        /// Fingerprint of the key the database was sealed under.
        expected: String,
        /// Fingerprint of the key given.
        given: String,
    },
    /// The database was migrated by a newer kbs.
    #[error(
        "database {db}: its schema is version {found}, newer than this kbs knows ({known}); \
         run a kbs at least as new as the one that migrated it"
    )]
    NewerSchema {
        /// The database file or server.
        db: String,
        /// The schema version found.
        found: i64,
        /// The newest version this kbs knows.
        known: i64,
    },
    /// The embedded database could not be copied into PostgreSQL; nothing
    /// was written there.
    #[error("copying {from} into {to}: {source}")]
    Import {
        /// The embedded database file.
        from: String,
        /// The PostgreSQL server and database.
        to: String,
        /// What went wrong.
        source: Box<import::ImportError>,
    },
    /// The embedded database was copied into PostgreSQL, which now holds
    /// the state; serving this copy too would let one launch be released twice.
    #[error(
        "database {db}: moved into {to} by `kbs import-embedded`; serve it from there \
         (--database). To serve this copy again as it was then, remove the mark: \
         sqlite3 {db} \"DELETE FROM meta WHERE name = 'moved_to'\""
    )]
    Moved {
        /// The embedded database file.
        db: String,
        /// Where it went, and when (Unix seconds).
        to: String,
    },
    /// A reader waited longer than its patience for writers in flight;
    /// nothing was read or changed, and a retry may succeed.
    #[error("database {db}: {what} are being written; try again")]
    Busy {
        /// The database file or server.
        db: String,
        /// What was to be read.
        what: &'static str,
    },
    /// An approval a registration was derived from was revoked before the
    /// registration could be stored; nothing was stored.
    #[error("the approval of {kind} {id} was revoked meanwhile; nothing was registered")]
    InputRevoked {
        /// Its kind.
        kind: String,
        /// Its id.
        id: String,
    },
    /// The PostgreSQL options are unusable.
    #[error(transparent)]
    PgConfig(#[from] PgConfigError),
}

/// Rows deleted in one transaction of [`Store::purge`].
const PURGE_BATCH: usize = 2000;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The keys and policy of a launch, from GetBundle to GetSecret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSession {
    /// Transport encryption key.
    pub tek: [u8; 16],
    /// Transport integrity key.
    pub tik: [u8; 16],
    /// The guest policy the session was opened for.
    pub policy: u32,
    /// Identifies the platform (hex of its CEK's public key).
    pub chip: String,
}

/// What became of a request to take a launch session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOutcome {
    /// The session, now consumed.
    Taken(LaunchSession),
    /// No such launch.
    Unknown,
    /// Already used by an earlier GetSecret.
    Used,
    /// Past its expiry.
    Expired,
}

/// A registered launch digest and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DigestRecord {
    /// `sev`, `seves` or `snp`.
    pub mode: String,
    /// The digest bytes, hexadecimal.
    pub digest: String,
    /// vCPU count of the launch.
    pub vcpus: u32,
    /// vCPU type or signature of the launch.
    pub vcpu_type: String,
    /// The configuration it was derived from.
    pub config: String,
}

/// One attestation outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AttestationRecord {
    /// Sequence number.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// `GetBundle`, `GetSecret`, `GetOnlineSecret`, `Report` or `SnpReport`.
    pub rpc: String,
    /// `sev` (SEV and SEV-ES pre-attestation) or `snp` (an SNP guest's report).
    pub tee: String,
    /// Launch id, if known.
    pub launch_id: String,
    /// `ok` or `refused`.
    pub outcome: String,
    /// Why it was refused (empty when ok).
    pub reason: String,
    /// The claimed launch digest, hexadecimal.
    pub digest: String,
    /// Guest policy.
    pub policy: u32,
    /// Firmware version reported, `major.minor.build`.
    pub firmware: String,
    /// Free text from the orchestrator.
    pub description: String,
    /// Only on a GetSecret that released secrets: `awaiting` (no guest report
    /// yet), `confirmed` or `path_broken`; empty otherwise.
    pub guest_status: String,
    /// Names of the checks the guest reported as failed.
    pub failed_checks: Vec<String>,
    /// When the guest's report was recorded, Unix seconds (0: none).
    pub reported_at: i64,
    /// The reporting client's self-description.
    pub guest_client: String,
    /// An SNP guest's chip id, hexadecimal (empty for SEV, zeros when the
    /// report masks it).
    pub chip_id: String,
}

/// A guest's verified report on its launch, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// The guest's verdict: the secret delivery path works.
    pub path_works: bool,
    /// Names of the checks that failed.
    pub failed_checks: Vec<String>,
    /// The client's self-description.
    pub client: String,
    /// The exact signed body, kept for audit.
    pub body: Vec<u8>,
}

/// What became of a request to store a guest report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Stored; the Unix time it was recorded at.
    Recorded(i64),
    /// The launch has reported already; nothing changed.
    AlreadyReported,
    /// The launch has no report key.
    Unknown,
}

/// The ids of what the broker holds (never the secret values).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Inventory {
    /// Secret ids.
    pub secrets: Vec<String>,
    /// Keyset ids and their members.
    pub keysets: Vec<(String, KeysetMembers)>,
    /// Resource ids.
    pub resources: Vec<String>,
}

/// What an online connection may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionScope {
    /// The launch that opened it.
    pub launch_id: String,
    /// The keyset the launch named (the connection request's id): its
    /// secrets, the keyset itself and the resources attached to it.
    pub keyset: String,
    /// The launch's mode (`sev` or `seves`), with `digest`.
    pub mode: String,
    /// The launch digest the launch was verified against; the connection
    /// lives only while it is registered.
    pub digest: Vec<u8>,
}

/// A live online connection.
#[derive(Debug, Clone)]
pub struct OnlineConnection {
    /// The AES-256-GCM key of its responses.
    pub key: zeroize::Zeroizing<[u8; 32]>,
    /// What it may reach.
    pub scope: ConnectionScope,
}

/// The members of a keyset.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeysetMembers {
    /// Secret ids: what a bundle of the keyset holds.
    pub secrets: Vec<String>,
    /// Resource ids an online connection opened for the keyset may fetch.
    pub resources: Vec<String>,
}

/// Where the broker's state is kept.
enum Backend {
    /// The embedded database: one connection, requests take turns.
    Sqlite(Mutex<Connection>),
    /// A PostgreSQL server shared with other replicas.
    Postgres(Box<postgres::PgPool>),
}

/// The broker's database.
pub struct Store {
    /// The database file, or the server and database name: for messages.
    location: String,
    backend: Backend,
    key: AtRestKey,
    /// Bumped after every committed change of what Trustee's reference values
    /// are made of (digests, reported TCBs, pins).
    reference_changes: tokio::sync::watch::Sender<u64>,
}

/// Ends every online connection whose launch digest is no longer registered
/// (by any origin; whether a node's own digest counts is the broker's
/// decision, checked at every use). Run in the transactions that remove
/// digests, so that revoking a digest ends its connections for good even if
/// the same digest is registered again later.
const END_UNREGISTERED_CONNECTIONS: &str = "
DELETE FROM connections WHERE digest IS NULL OR NOT EXISTS
    (SELECT 1 FROM digests WHERE digests.digest = connections.digest AND digests.mode = connections.mode);
";

/// Who vouches for a registered digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Registered with an operator credential (`kbs admin digests replace`).
    Operator,
    /// Derived by the broker from approved inputs.
    Derived,
    /// A node's own digests, honoured only under open registration. Digests
    /// of databases made before registration by inputs read as this.
    Node,
}

impl Origin {
    /// The name stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Operator => "operator",
            Origin::Derived => "derived",
            Origin::Node => "node",
        }
    }

    fn parse(s: &str) -> Origin {
        match s {
            "operator" => Origin::Operator,
            "derived" => Origin::Derived,
            _ => Origin::Node,
        }
    }
}

/// The values kept sealed, as (table, id column, value column, row label):
/// a value is sealed for `label:id`.
const SEALED_COLUMNS: [(&str, &str, &str, &str); 6] = [
    ("secrets", "id", "payload", "secret"),
    ("resources", "id", "data", "resource"),
    ("sessions", "launch_id", "tek", "session-tek"),
    ("sessions", "launch_id", "tik", "session-tik"),
    ("connections", "client_id", "key", "connection"),
    ("launch_reports", "launch_id", "report_key", "report-key"),
];

/// The `meta` row of an embedded database that `kbs import-embedded` copied
/// into PostgreSQL: where to, and when.
const MOVED_TO: &str = "moved_to";

/// What the check value of `meta` holds, sealed: a database whose check
/// does not open was sealed under another key.
const KEY_CHECK: &[u8] = b"kbs at-rest key check";

impl Store {
    /// Opens (creating if needed) the database in `dir`, with the at-rest
    /// key kept beside it in [`AT_REST_KEY_FILE`] (created if missing).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let (key, _) = AtRestKey::load_or_create(&dir.join(AT_REST_KEY_FILE))?;
        Store::open_with_key(dir, key)
    }

    /// Opens (creating if needed) the database in `dir`, its values sealed
    /// under `key`. A database of an earlier version, whose values are
    /// plain, is sealed now, in one transaction, and compacted so that no
    /// plain copy stays in the file.
    pub fn open_with_key(dir: &Path, key: AtRestKey) -> Result<Store, StoreError> {
        Store::open_sqlite(dir, key, migrations::latest())
    }

    /// [`Store::open_with_key`], migrating no further than `upto`: for
    /// tests of migrations.
    #[doc(hidden)]
    pub fn open_sqlite(dir: &Path, key: AtRestKey, upto: i64) -> Result<Store, StoreError> {
        let path = dir.join("kbs.sqlite3");
        let location = path.display().to_string();
        let db = |source: rusqlite::Error| StoreError::Db {
            db: location.clone(),
            source: source.into(),
        };
        // Created 0600 before SQLite opens it: SQLite gives the WAL and shared
        // memory files the database file's mode, and these hold every secret.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StoreError::Create {
                    path: path.clone(),
                    source: e,
                })?;
        }
        let conn = Connection::open(&path).map_err(db)?;
        // First, so that switching the journal mode waits for another opener.
        conn.pragma_update(None, "busy_timeout", 5000).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        // Deleted rows (consumed sessions, replaced secrets) are overwritten
        // with zeros, not just unlinked from the b-tree.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(db)?;
        Store::finish_open(
            Store {
                location,
                backend: Backend::Sqlite(Mutex::new(conn)),
                key,
                reference_changes: tokio::sync::watch::Sender::new(0),
            },
            upto,
        )
    }

    /// Connects to the PostgreSQL database of `options`, brings its schema
    /// to this version (under the migration lock, so replicas starting
    /// together apply each step once) and checks that its values are sealed
    /// under `key`, as every replica's must be.
    pub fn open_postgres(options: &PgOptions, key: AtRestKey) -> Result<Store, StoreError> {
        Store::open_postgres_upto(options, key, migrations::latest())
    }

    /// [`Store::open_postgres`], migrating no further than `upto`: for tests
    /// of migrations.
    #[doc(hidden)]
    pub fn open_postgres_upto(
        options: &PgOptions,
        key: AtRestKey,
        upto: i64,
    ) -> Result<Store, StoreError> {
        let pool = postgres::PgPool::new(options)?;
        Store::finish_open(
            Store {
                location: pool.location().to_owned(),
                backend: Backend::Postgres(Box::new(pool)),
                key,
                reference_changes: tokio::sync::watch::Sender::new(0),
            },
            upto,
        )
    }

    fn finish_open(store: Store, upto: i64) -> Result<Store, StoreError> {
        let migrated = match &store.backend {
            Backend::Sqlite(_) => store.transact(|h| migrations::migrate(h, upto))?,
            Backend::Postgres(pool) => pool
                .migrate(|h| migrations::migrate(h, upto))
                .map_err(|source| store.db_error(source))?,
        };
        match migrated {
            migrations::Migrated::Newer { found } => {
                return Err(StoreError::NewerSchema {
                    db: store.location.clone(),
                    found,
                    known: migrations::latest(),
                })
            }
            migrations::Migrated::Current { version, applied } if !applied.is_empty() => {
                tracing::info!(db = %store.location, version, applied = ?applied, "database schema migrated");
            }
            migrations::Migrated::Current { .. } => {}
        }
        if let Backend::Sqlite(_) = store.backend {
            let moved: Option<Vec<u8>> = store.with(|c| {
                c.query_opt("SELECT value FROM meta WHERE name = ?1", params![MOVED_TO])?
                    .map(|r| r.get(0))
                    .transpose()
            })?;
            if let Some(to) = moved {
                return Err(StoreError::Moved {
                    db: store.location.clone(),
                    to: String::from_utf8_lossy(&to).into_owned(),
                });
            }
        }
        store.transact(|h| h.batch(END_UNREGISTERED_CONNECTIONS))?;
        store.check_or_seal()?;
        Ok(store)
    }

    /// Checks that the database was sealed under this store's key, or, for
    /// a database whose values are plain (new, or from an earlier version),
    /// seals them and records the key's check value.
    fn check_or_seal(&self) -> Result<(), StoreError> {
        let meta = |name: &'static str| {
            self.with(move |c| {
                c.query_opt("SELECT value FROM meta WHERE name = ?1", params![name])?
                    .map(|r| r.get::<Vec<u8>>(0))
                    .transpose()
            })
        };
        let key = &self.key;
        // Under the write lock: replicas opening a new database together seal
        // it once, under the first one's key; the others then check theirs.
        let sealed = self.transact(|tx| {
            let checked = tx
                .query_opt(
                    "SELECT value FROM meta WHERE name = 'at_rest_check'",
                    params![],
                )?
                .is_some();
            if checked {
                return Ok(None);
            }
            let mut sealed = 0usize;
            for (table, id_col, col, label) in SEALED_COLUMNS {
                let rows = tx.query(&format!("SELECT {id_col}, {col} FROM {table}"), params![])?;
                for r in rows {
                    let id: String = r.get(0)?;
                    let plain = zeroize::Zeroizing::new(r.get::<Vec<u8>>(1)?);
                    let value = key.seal(&format!("{label}:{id}"), &plain);
                    tx.execute(
                        &format!("UPDATE {table} SET {col} = ?1 WHERE {id_col} = ?2"),
                        params![value, id],
                    )?;
                    sealed += 1;
                }
            }
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('at_rest_check', ?1), ('at_rest_key', ?2)",
                params![
                    key.seal("meta:at_rest_check", KEY_CHECK),
                    key.fingerprint().into_bytes()
                ],
            )?;
            Ok(Some(sealed))
        })?;
        match sealed {
            None => {}
            Some(0) => return Ok(()),
            Some(sealed) => {
                // The plain values are gone from the tables, but their pages may
                // still be in the file and the WAL: rewrite both.
                if let Backend::Sqlite(_) = self.backend {
                    self.with(|c| {
                        c.batch("VACUUM")?;
                        c.query("PRAGMA wal_checkpoint(TRUNCATE)", params![])
                            .map(drop)
                    })?;
                }
                tracing::info!(values = sealed, key = %self.key.fingerprint(), "database values sealed under the at-rest key");
                return Ok(());
            }
        }
        let check = meta("at_rest_check")?.unwrap_or_default();
        let opened = self.key.open("meta:at_rest_check", &check);
        if opened.as_deref().map(Vec::as_slice) == Some(KEY_CHECK) {
            return Ok(());
        }
        let expected = meta("at_rest_key")?
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| "(unknown)".into());
        Err(StoreError::WrongKey {
            db: self.location.clone(),
            expected,
            given: self.key.fingerprint(),
        })
    }

    /// The fingerprint of the at-rest key, for logs.
    pub fn key_fingerprint(&self) -> String {
        self.key.fingerprint()
    }

    fn seal(&self, label: &str, id: &str, value: &[u8]) -> Vec<u8> {
        self.key.seal(&format!("{label}:{id}"), value)
    }

    fn unseal(
        &self,
        label: &str,
        id: &str,
        sealed: &[u8],
        what: &'static str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
        self.key
            .open(&format!("{label}:{id}"), sealed)
            .ok_or_else(|| self.corrupt(what))
    }

    /// A value that does not read back.
    fn corrupt(&self, what: &'static str) -> StoreError {
        StoreError::Corrupt {
            db: self.location.clone(),
            what,
        }
    }

    fn db_error(&self, source: DbError) -> StoreError {
        StoreError::Db {
            db: self.location.clone(),
            source,
        }
    }

    /// Writes what the WAL holds into the database and empties it, so that
    /// the pages of a deleted or replaced value do not linger there; best
    /// effort (a reader in the middle of a transaction defers it). PostgreSQL
    /// reclaims dead rows itself (vacuum).
    fn flush_wal(&self) {
        if let Backend::Sqlite(_) = self.backend {
            let _ = self.with(|c| {
                c.query("PRAGMA wal_checkpoint(TRUNCATE)", params![])
                    .map(drop)
            });
        }
    }

    /// The database, for messages: the SQLite file, or the PostgreSQL
    /// server and database (never a password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Which database this is.
    pub fn dialect(&self) -> db::Dialect {
        match self.backend {
            Backend::Sqlite(_) => db::Dialect::Sqlite,
            Backend::Postgres(_) => db::Dialect::Postgres,
        }
    }

    /// Runs `f` on a connection (statements outside a transaction each
    /// commit on their own).
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Handle<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                // A poisoned lock only means another request panicked mid-call; SQLite
                // rolled its transaction back, so the connection is still consistent.
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut Handle::Sqlite(&conn))
            }
            Backend::Postgres(pool) => pool.with(f),
        }
        .map_err(|source| self.db_error(source))
    }

    /// Runs `f` in a write transaction: committed when it returns `Ok`,
    /// rolled back otherwise. Such transactions take turns on both databases
    /// (SQLite's immediate transactions, one advisory lock on PostgreSQL), so
    /// what one reads stays true until it commits.
    fn transact<T: Send>(
        &self,
        f: impl FnOnce(&mut Handle<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, StoreError> {
        self.transact_with(postgres::TxLock::Exclusive, f)
    }

    /// [`Store::transact`] with the locks `lock` on PostgreSQL (SQLite has
    /// one writer at a time whatever they are).
    fn transact_with<T: Send>(
        &self,
        lock: postgres::TxLock<'_>,
        f: impl FnOnce(&mut Handle<'_>) -> Result<T, DbError> + Send,
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                (|| {
                    let tx = rusqlite::Transaction::new_unchecked(
                        &conn,
                        TransactionBehavior::Immediate,
                    )?;
                    let out = f(&mut Handle::Sqlite(&tx))?;
                    tx.commit()?;
                    Ok(out)
                })()
            }
            Backend::Postgres(pool) => pool.transact(lock, f),
        }
        .map_err(|source| self.db_error(source))
    }

    /// Stores a new launch session and, in the same transaction, its record.
    pub fn insert_session(
        &self,
        launch_id: &str,
        s: &LaunchSession,
        ttl_secs: i64,
        record: &NewRecord<'_>,
    ) -> Result<(), StoreError> {
        let t = now();
        let tek = self.seal("session-tek", launch_id, &s.tek);
        let tik = self.seal("session-tik", launch_id, &s.tik);
        // Two inserts, new rows only: nothing to serialize.
        self.transact_with(postgres::TxLock::None, |tx| {
            tx.execute(
                "INSERT INTO sessions (launch_id, tek, tik, policy, chip, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    launch_id,
                    tek,
                    tik,
                    s.policy,
                    s.chip,
                    t,
                    t.saturating_add(ttl_secs)
                ],
            )?;
            insert_record(tx, t, record).map(drop)
        })
    }

    /// Deletes what has outlived its use, and returns how many sessions,
    /// connections, records and launch reports went: sessions a day past expiry
    /// (kept that long so that a late replay is reported as such), expired
    /// online connections, and attestation records and launch report keys (with
    /// their reports) older than `records_before` (Unix seconds).
    pub fn purge(&self, records_before: i64) -> Result<Purged, StoreError> {
        let t = now();
        let mut purged = Purged::default();
        // In batches, each its own short statement: between them requests
        // take the database, so purging millions of old rows never stalls
        // the keybroker for more than one batch.
        let batch = |sql: &str, before: i64| -> Result<usize, StoreError> {
            let mut total = 0;
            loop {
                let n = self.with(|c| c.execute(sql, params![before, PURGE_BATCH]))?;
                total += n;
                if n < PURGE_BATCH {
                    return Ok(total);
                }
                std::thread::yield_now();
            }
        };
        purged.sessions = batch(
            "DELETE FROM sessions WHERE launch_id IN \
             (SELECT launch_id FROM sessions WHERE expires_at < ?1 LIMIT ?2)",
            t.saturating_sub(86_400),
        )?;
        purged.connections = batch(
            "DELETE FROM connections WHERE client_id IN \
             (SELECT client_id FROM connections WHERE expires_at < ?1 LIMIT ?2)",
            t,
        )?;
        purged.records = batch(
            "DELETE FROM records WHERE id IN \
             (SELECT id FROM records WHERE at < ?1 ORDER BY id LIMIT ?2)",
            records_before,
        )?;
        purged.reports = batch(
            "DELETE FROM launch_reports WHERE launch_id IN \
             (SELECT launch_id FROM launch_reports WHERE issued_at < ?1 LIMIT ?2)",
            records_before,
        )?;
        // A nonce stays refused as used for at least as long as it could be
        // presented, whatever the retention.
        purged.reports += batch(
            "DELETE FROM snp_guest_reports WHERE id IN \
             (SELECT id FROM snp_guest_reports WHERE at < ?1 ORDER BY id LIMIT ?2)",
            records_before.min(t.saturating_sub(2 * crate::snp_report::NONCE_TTL_SECS)),
        )?;
        Ok(purged)
    }

    /// Consumes the session of `launch_id`: whatever the outcome of the
    /// GetSecret that asks, the session cannot be used again. One statement
    /// marks it used and returns it only if it was not: of any number of
    /// concurrent callers, on any replica, exactly one gets it.
    pub fn take_session(&self, launch_id: &str) -> Result<TakeOutcome, StoreError> {
        let t = now();
        let taken = self.with(|c| {
            let row = c.query_opt(
                "UPDATE sessions SET used = 1 WHERE launch_id = ?1 AND used = 0 \
                 RETURNING tek, tik, policy, chip, expires_at",
                params![launch_id],
            )?;
            if let Some(r) = row {
                return Ok(Ok((
                    r.get::<Vec<u8>>(0)?,
                    r.get::<Vec<u8>>(1)?,
                    r.get::<u32>(2)?,
                    r.get::<String>(3)?,
                    r.get::<i64>(4)?,
                )));
            }
            let known = c
                .query_opt(
                    "SELECT used FROM sessions WHERE launch_id = ?1",
                    params![launch_id],
                )?
                .is_some();
            Ok(Err(if known {
                TakeOutcome::Used
            } else {
                TakeOutcome::Unknown
            }))
        })?;
        let (tek, tik, policy, chip, expires_at) = match taken {
            Ok(row) => row,
            Err(outcome) => return Ok(outcome),
        };
        if expires_at < t {
            return Ok(TakeOutcome::Expired);
        }
        let tek = self.unseal("session-tek", launch_id, &tek, "session keys")?;
        let tik = self.unseal("session-tik", launch_id, &tik, "session keys")?;
        Ok(TakeOutcome::Taken(LaunchSession {
            tek: tek
                .as_slice()
                .try_into()
                .map_err(|_| self.corrupt("session keys"))?,
            tik: tik
                .as_slice()
                .try_into()
                .map_err(|_| self.corrupt("session keys"))?,
            policy,
            chip,
        }))
    }

    /// Whether `digest` is registered for `mode` by any node with an origin
    /// that counts: operator and derived always, a node's own only when
    /// `honour_node` (open registration).
    pub fn digest_registered(
        &self,
        mode: &str,
        digest: &[u8],
        honour_node: bool,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_one(
                "SELECT EXISTS (SELECT 1 FROM digests WHERE digest = ?1 AND mode = ?2 \
                 AND (origin != 'node' OR ?3))",
                params![digest, mode, honour_node],
            )?
            .get(0)
        })
    }

    /// How many registered digests have `origin`.
    pub fn count_digests(&self, origin: Origin) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM digests WHERE origin = ?1",
                params![origin.name()],
            )?
            .get(0)
        })
    }

    /// Replaces every digest of `node` and `runtime_class` with `digests`,
    /// atomically, recording their origin and the approved inputs they were
    /// derived from (so that revoking one removes them).
    pub fn replace_digests(
        &self,
        node: &str,
        runtime_class: &str,
        digests: &[(Vec<u8>, DigestRecord)],
        origin: Origin,
        inputs: &[(String, String)],
    ) -> Result<(), StoreError> {
        let t = now();
        // Registrations of one node and class take turns; others run beside
        // them, and none beside a revocation.
        let key = format!("{node}\n{runtime_class}");
        let revoked = self.transact_with(postgres::TxLock::SharedWith(&key), |tx| {
            // The approvals were read before this transaction; one revoked
            // since (through any broker) would otherwise come back with the
            // digests derived from it. A revocation takes the write lock
            // exclusively, so none commits between this check and the commit.
            if origin == Origin::Derived {
                for (kind, id) in inputs {
                    let (class, id) = match (kind.as_str(), id.split_once(':')) {
                        ("kata-config", Some((class, id))) => (class, id),
                        _ => ("", id.as_str()),
                    };
                    let approved = tx
                        .query_opt(
                            "SELECT 1 FROM approvals WHERE kind = ?1 AND id = ?2 AND runtime_class = ?3",
                            params![kind, id, class],
                        )?
                        .is_some();
                    if !approved {
                        return Ok(Some((kind.clone(), id.to_string())));
                    }
                }
            }
            tx.execute(
                "DELETE FROM digests WHERE node = ?1 AND runtime_class = ?2",
                params![node, runtime_class],
            )?;
            tx.execute(
                "DELETE FROM registration_inputs WHERE node = ?1 AND runtime_class = ?2",
                params![node, runtime_class],
            )?;
            for (bytes, d) in digests {
                tx.execute(
                    "INSERT INTO digests (node, runtime_class, mode, digest, vcpus, vcpu_type, config, registered_at, origin) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (node, runtime_class, mode, digest, vcpus, vcpu_type) DO UPDATE SET \
                     config = excluded.config, registered_at = excluded.registered_at, origin = excluded.origin",
                    params![node, runtime_class, d.mode, bytes, d.vcpus, d.vcpu_type, d.config, t, origin.name()],
                )?;
            }
            if !digests.is_empty() {
                for (kind, id) in inputs {
                    tx.execute(
                        "INSERT INTO registration_inputs (node, runtime_class, kind, id) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![node, runtime_class, kind, id],
                    )?;
                }
            }
            tx.batch(END_UNREGISTERED_CONNECTIONS)?;
            leases::bump(tx, leases::REFERENCE_COUNTER)?;
            Ok(None)
        })?;
        if let Some((kind, id)) = revoked {
            return Err(StoreError::InputRevoked { kind, id });
        }
        self.reference_changed();
        Ok(())
    }

    /// Every registered digest as (node, runtime class, record, origin).
    pub fn list_digests(&self) -> Result<Vec<(String, String, DigestRecord, Origin)>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT node, runtime_class, mode, digest, vcpus, vcpu_type, config, origin FROM digests \
                 ORDER BY node, runtime_class, mode, vcpus",
                params![],
            )?
            .iter()
            .map(|r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    DigestRecord {
                        mode: r.get(2)?,
                        digest: hex(&r.get::<Vec<u8>>(3)?),
                        vcpus: r.get(4)?,
                        vcpu_type: r.get(5)?,
                        config: r.get(6)?,
                    },
                    Origin::parse(&r.get::<String>(7)?),
                ))
            })
            .collect()
        })
    }

    /// Sets (or replaces) a secret.
    pub fn set_secret(&self, id: &str, payload: &[u8]) -> Result<(), StoreError> {
        let sealed = self.seal("secret", id, payload);
        self.with(|c| {
            c.execute(
                "INSERT INTO secrets (id, payload) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET payload = excluded.payload",
                params![id, sealed],
            )
            .map(drop)
        })?;
        self.flush_wal();
        Ok(())
    }

    /// A secret's payload.
    pub fn secret(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.sealed_value("SELECT payload FROM secrets WHERE id = ?1", "secret", id)
    }

    /// The value of `sql` (one row, one column, selected by `id`), unsealed.
    fn sealed_value(
        &self,
        sql: &str,
        label: &'static str,
        id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed: Option<Vec<u8>> =
            self.with(|c| c.query_opt(sql, params![id])?.map(|r| r.get(0)).transpose())?;
        sealed
            .map(|v| {
                self.unseal(label, id, &v, label)
                    .map(|mut plain| std::mem::take(&mut *plain))
            })
            .transpose()
    }

    /// A secret's size in bytes, without reading it.
    pub fn secret_size(&self, id: &str) -> Result<Option<usize>, StoreError> {
        self.size_of("SELECT length(payload) FROM secrets WHERE id = ?1", id)
    }

    /// A resource's size in bytes, without reading it.
    pub fn resource_size(&self, id: &str) -> Result<Option<usize>, StoreError> {
        self.size_of("SELECT length(data) FROM resources WHERE id = ?1", id)
    }

    fn size_of(&self, sql: &str, id: &str) -> Result<Option<usize>, StoreError> {
        let n: Option<i64> =
            self.with(|c| c.query_opt(sql, params![id])?.map(|r| r.get(0)).transpose())?;
        // Sizes of sealed values, less what sealing adds.
        Ok(n.map(|n| {
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .saturating_sub(sealing::OVERHEAD)
        }))
    }

    /// Deletes a secret; whether it existed.
    pub fn delete_secret(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM secrets WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
        .inspect(|_| self.flush_wal())
    }

    /// Sets (or replaces) a keyset of secrets, with no resources attached.
    pub fn set_keyset(&self, id: &str, secret_ids: &[String]) -> Result<(), StoreError> {
        self.set_keyset_members(
            id,
            &KeysetMembers {
                secrets: secret_ids.to_vec(),
                resources: Vec::new(),
            },
        )
    }

    /// Sets (or replaces) a keyset: the ids of the secrets it bundles and
    /// of the resources attached to it.
    pub fn set_keyset_members(&self, id: &str, members: &KeysetMembers) -> Result<(), StoreError> {
        let secrets = serde_json::to_string(&members.secrets).unwrap_or_else(|_| "[]".into());
        let resources = serde_json::to_string(&members.resources).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            c.execute(
                "INSERT INTO keysets (id, secret_ids, resource_ids) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET secret_ids = excluded.secret_ids, \
                 resource_ids = excluded.resource_ids",
                params![id, secrets, resources],
            )
            .map(drop)
        })
    }

    /// The members of a keyset.
    pub fn keyset(&self, id: &str) -> Result<Option<KeysetMembers>, StoreError> {
        let raw: Option<(String, String)> = self.with(|c| {
            c.query_opt(
                "SELECT secret_ids, resource_ids FROM keysets WHERE id = ?1",
                params![id],
            )?
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .transpose()
        })?;
        raw.map(|(secrets, resources)| {
            Ok(KeysetMembers {
                secrets: serde_json::from_str(&secrets).map_err(|_| self.corrupt("keyset"))?,
                resources: serde_json::from_str(&resources).map_err(|_| self.corrupt("keyset"))?,
            })
        })
        .transpose()
    }

    /// Deletes a keyset; whether it existed.
    pub fn delete_keyset(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM keysets WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
    }

    /// Sets (or replaces) a resource.
    pub fn set_resource(&self, id: &str, data: &[u8]) -> Result<(), StoreError> {
        let sealed = self.seal("resource", id, data);
        self.with(|c| {
            c.execute(
                "INSERT INTO resources (id, data) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                params![id, sealed],
            )
            .map(drop)
        })?;
        self.flush_wal();
        Ok(())
    }

    /// A resource's bytes.
    pub fn resource(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.sealed_value("SELECT data FROM resources WHERE id = ?1", "resource", id)
    }

    /// Deletes a resource; whether it existed.
    pub fn delete_resource(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM resources WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
        .inspect(|_| self.flush_wal())
    }

    /// Ids of every secret, keyset (with its members) and resource.
    pub fn list_ids(&self) -> Result<Inventory, StoreError> {
        let ids = |table: &'static str| {
            self.with(move |c| {
                c.query(&format!("SELECT id FROM {table} ORDER BY id"), params![])?
                    .iter()
                    .map(|r| r.get::<String>(0))
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        let secrets = ids("secrets")?;
        let resources = ids("resources")?;
        let mut keysets = Vec::new();
        for id in ids("keysets")? {
            let members = self.keyset(&id)?.unwrap_or_default();
            keysets.push((id, members));
        }
        Ok(Inventory {
            secrets,
            keysets,
            resources,
        })
    }

    /// Stores the key of an online connection opened by a verified launch,
    /// with what it may reach: the keyset the launch named and the digest
    /// it was verified against.
    pub fn insert_connection(
        &self,
        client_id: &str,
        key: &[u8; 32],
        scope: &ConnectionScope,
        ttl_secs: i64,
    ) -> Result<(), StoreError> {
        let t = now();
        let sealed = self.seal("connection", client_id, &key[..]);
        self.with(|c| {
            c.execute(
                "INSERT INTO connections (client_id, key, launch_id, created_at, expires_at, keyset, mode, digest) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    client_id,
                    sealed,
                    scope.launch_id,
                    t,
                    t.saturating_add(ttl_secs),
                    scope.keyset,
                    scope.mode,
                    scope.digest
                ],
            )
            .map(drop)
        })
    }

    /// A live (unexpired) online connection: its key and scope.
    pub fn connection(&self, client_id: &str) -> Result<Option<OnlineConnection>, StoreError> {
        let t = now();
        let row = self.with(|c| {
            c.query_opt(
                "SELECT key, launch_id, keyset, mode, digest FROM connections \
                 WHERE client_id = ?1 AND expires_at >= ?2",
                params![client_id, t],
            )?
            .map(|r| {
                Ok((
                    zeroize::Zeroizing::new(r.get::<Vec<u8>>(0)?),
                    r.get::<String>(1)?,
                    r.get::<Option<String>>(2)?,
                    r.get::<Option<String>>(3)?,
                    r.get::<Option<Vec<u8>>>(4)?,
                ))
            })
            .transpose()
        })?;
        let Some((key, launch_id, keyset, mode, digest)) = row else {
            return Ok(None);
        };
        let key = self.unseal("connection", client_id, &key, "connection key")?;
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| self.corrupt("connection key"))?;
        Ok(Some(OnlineConnection {
            key: zeroize::Zeroizing::new(key),
            scope: ConnectionScope {
                launch_id,
                keyset: keyset.unwrap_or_default(),
                mode: mode.unwrap_or_default(),
                digest: digest.unwrap_or_default(),
            },
        }))
    }

    /// Ends an online connection; whether it existed.
    pub fn end_connection(&self, client_id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM connections WHERE client_id = ?1",
                params![client_id],
            )
            .map(|n| n > 0)
        })
    }

    /// Stores the report key issued to `launch_id` with its secrets.
    pub fn insert_report_key(&self, launch_id: &str, key: &[u8; 32]) -> Result<(), StoreError> {
        let t = now();
        let sealed = self.seal("report-key", launch_id, &key[..]);
        self.with(|c| {
            c.execute(
                "INSERT INTO launch_reports (launch_id, report_key, issued_at) VALUES (?1, ?2, ?3)",
                params![launch_id, sealed, t],
            )
            .map(drop)
        })
    }

    /// The report key issued to `launch_id`, whether or not it has reported.
    pub fn report_key(
        &self,
        launch_id: &str,
    ) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, StoreError> {
        let key: Option<zeroize::Zeroizing<Vec<u8>>> = self.with(|c| {
            c.query_opt(
                "SELECT report_key FROM launch_reports WHERE launch_id = ?1",
                params![launch_id],
            )?
            .map(|r| r.get::<Vec<u8>>(0).map(zeroize::Zeroizing::new))
            .transpose()
        })?;
        key.map(|k| {
            let k = self.unseal("report-key", launch_id, &k, "report key")?;
            <[u8; 32]>::try_from(k.as_slice())
                .map(zeroize::Zeroizing::new)
                .map_err(|_| self.corrupt("report key"))
        })
        .transpose()
    }

    /// Stores the verified report of `launch_id` and, in the same transaction,
    /// its record, unless the launch has reported already (then nothing is
    /// written).
    pub fn record_report(
        &self,
        launch_id: &str,
        report: &GuestReport,
        record: &NewRecord<'_>,
    ) -> Result<ReportOutcome, StoreError> {
        let t = now();
        let failed = serde_json::to_string(&report.failed_checks).unwrap_or_else(|_| "[]".into());
        // The update takes the row only while it has not reported: one wins.
        self.transact_with(postgres::TxLock::None, |tx| {
            let changed = tx.execute(
                "UPDATE launch_reports SET reported_at = ?2, path_works = ?3, failed_checks = ?4, \
                 client = ?5, body = ?6 WHERE launch_id = ?1 AND reported_at IS NULL",
                params![
                    launch_id,
                    t,
                    report.path_works,
                    failed,
                    report.client,
                    report.body
                ],
            )?;
            if changed == 1 {
                insert_record(tx, t, record)?;
                return Ok(ReportOutcome::Recorded(t));
            }
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM launch_reports WHERE launch_id = ?1)",
                    params![launch_id],
                )?
                .get(0)?;
            Ok(if exists {
                ReportOutcome::AlreadyReported
            } else {
                ReportOutcome::Unknown
            })
        })
    }

    /// Records an attestation outcome on its own.
    pub fn record(&self, r: &NewRecord<'_>) -> Result<(), StoreError> {
        let t = now();
        self.with(|c| insert_record(c, t, r).map(drop))
    }

    /// Writes one row, as every release must: whether the database can be
    /// written now (a full disk, a read-only file system or a locked
    /// database make it fail).
    pub fn probe_write(&self) -> Result<(), StoreError> {
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO write_probe (id, at) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                params![t],
            )
            .map(drop)
        })
    }

    /// How many attestation records are kept.
    pub fn count_records(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_one("SELECT COUNT(*) FROM records", params![])?
                .get(0)
        })
    }

    /// The database's size on the server, in bytes (PostgreSQL only; the
    /// embedded database's size is its files').
    pub fn database_size(&self) -> Result<Option<u64>, StoreError> {
        if let Backend::Sqlite(_) = self.backend {
            return Ok(None);
        }
        self.with(|c| {
            c.query_one("SELECT pg_database_size(current_database())", params![])?
                .get::<u64>(0)
                .map(Some)
        })
    }

    /// Each table's size on the server with its indexes and TOAST, in bytes
    /// (PostgreSQL only; empty for the embedded database).
    pub fn table_sizes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        if let Backend::Sqlite(_) = self.backend {
            return Ok(Vec::new());
        }
        self.with(|c| {
            c.query(
                "SELECT relname::text, pg_total_relation_size(relid) FROM pg_stat_user_tables \
                 ORDER BY relname",
                params![],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect()
        })
    }

    /// The newest `limit` records after id `after`, oldest first. Ids are
    /// final: a reader paging with the last id it saw never misses a record
    /// that commits later (see [`Store::settled_record_ids`]).
    pub fn records(&self, after: i64, limit: u32) -> Result<Vec<AttestationRecord>, StoreError> {
        let settled = self.settled_record_ids(RECORDS_PATIENCE)?;
        self.with(|c| {
            // A released GetSecret carries its launch's report state; no other
            // record does.
            let rows = c.query(
                "SELECT r.id, r.at, r.rpc, r.launch_id, r.outcome, r.reason, r.digest, r.policy, \
                 r.firmware, r.description, \
                 lr.launch_id IS NOT NULL, lr.reported_at, lr.path_works, lr.failed_checks, lr.client, \
                 sg.status, sg.failed_checks, sg.at, sg.client, sg.chip_id \
                 FROM records r LEFT JOIN launch_reports lr \
                 ON lr.launch_id = r.launch_id AND r.rpc = 'GetSecret' AND r.outcome = 'ok' \
                 LEFT JOIN snp_guest_reports sg ON sg.record_id = r.id \
                 WHERE r.id > ?1 AND r.id <= ?3 ORDER BY r.id LIMIT ?2",
                params![after, limit, settled],
            )?;
            rows.iter()
                .map(|r| {
                    // Written by this broker as a JSON list; anything else reads as none.
                    let checks = |s: Option<String>| -> Vec<String> {
                        s.and_then(|s| serde_json::from_str(&s).ok())
                            .unwrap_or_default()
                    };
                    let rpc: String = r.get(2)?;
                    let mut record = AttestationRecord {
                        tee: if rpc.starts_with("Snp") { "snp" } else { "sev" }.into(),
                        chip_id: String::new(),
                        id: r.get(0)?,
                        at: r.get(1)?,
                        rpc,
                        launch_id: r.get(3)?,
                        outcome: r.get(4)?,
                        reason: r.get(5)?,
                        digest: r.get(6)?,
                        policy: r.get(7)?,
                        firmware: r.get(8)?,
                        description: r.get(9)?,
                        guest_status: match (
                            r.get::<bool>(10)?,
                            r.get::<Option<i64>>(11)?,
                            r.get::<Option<bool>>(12)?,
                        ) {
                            (false, _, _) => String::new(),
                            (true, None, _) => "awaiting".into(),
                            (true, Some(_), Some(true)) => "confirmed".into(),
                            (true, Some(_), _) => "path_broken".into(),
                        },
                        failed_checks: checks(r.get(13)?),
                        reported_at: r.get::<Option<i64>>(11)?.unwrap_or(0),
                        guest_client: r.get::<Option<String>>(14)?.unwrap_or_default(),
                    };
                    // An SNP guest's recorded report carries its own state.
                    if let Some(status) = r.get::<Option<String>>(15)? {
                        record.guest_status = status;
                        record.failed_checks = checks(r.get(16)?);
                        record.reported_at = r.get::<Option<i64>>(17)?.unwrap_or(0);
                        record.guest_client = r.get::<Option<String>>(18)?.unwrap_or_default();
                        record.chip_id = r.get::<Option<String>>(19)?.unwrap_or_default();
                    }
                    Ok(record)
                })
                .collect()
        })
    }
}

impl Store {
    /// Copies the embedded database `source` into this PostgreSQL database,
    /// which must hold no data yet: one transaction, all or nothing (see
    /// [`import`]). Both must be sealed under the same at-rest key, since
    /// sealed values are copied as they are.
    pub fn import_embedded(&self, source: Store) -> Result<import::Copied, StoreError> {
        let from = source.location.clone();
        let fail = |source| StoreError::Import {
            from: from.clone(),
            to: self.location.clone(),
            source: Box::new(source),
        };
        let Backend::Postgres(pool) = &self.backend else {
            return Err(fail(import::ImportError::WrongKind(
                "the destination must be a PostgreSQL database",
            )));
        };
        if source.key.fingerprint() != self.key.fingerprint() {
            return Err(StoreError::WrongKey {
                db: self.location.clone(),
                expected: source.key.fingerprint(),
                given: self.key.fingerprint(),
            });
        }
        let Backend::Sqlite(conn) = source.backend else {
            return Err(fail(import::ImportError::WrongKind(
                "the source must be an embedded database",
            )));
        };
        let mut failure = None;
        let slot = &mut failure;
        let conn_ref = &conn;
        let copied = pool.transact(postgres::TxLock::Exclusive, move |dst| {
            let conn = conn_ref.lock().unwrap_or_else(|p| p.into_inner());
            // One read transaction: every table as of the same moment.
            conn.execute_batch("BEGIN")?;
            let out = import::copy(&mut Handle::Sqlite(&conn), dst);
            let _ = conn.execute_batch("ROLLBACK");
            out.map_err(|e| {
                *slot = Some(e);
                DbError::Abandoned
            })
        });
        let mut copied = match (copied, failure) {
            (Ok(c), _) => c,
            (Err(_), Some(e)) => return Err(fail(e)),
            (Err(e), None) => return Err(self.db_error(e)),
        };
        // Two brokers on copies of one state would each release a launch's
        // secrets once: the embedded database now refuses to be served.
        let marker = format!("{} at {}", self.location, now());
        let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        copied.source_marked = conn
            .execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                rusqlite::params![MOVED_TO, marker.as_bytes()],
            )
            .is_ok();
        Ok(copied)
    }

    /// The largest record id below which no record can still appear.
    ///
    /// PostgreSQL hands out an id when a row is inserted, not when it
    /// commits: two writers can commit ids 6 then 5, and a reader paging
    /// after 6 would never see 5. An INSERT takes its ROW EXCLUSIVE lock on
    /// the table before it draws an id, and keeps it to the end of its
    /// transaction. So after reading the last id drawn, every transaction that
    /// drew one up to it has either ended or holds that lock now: the reader
    /// waits until those it sees holding it are gone, and the ids up to the
    /// one it read are final. Writers are never held up (nothing waits on a
    /// lock); the reader gives up after `patience` ([`StoreError::Busy`]).
    /// SQLite has one writer at a time, holding its lock from insert to
    /// commit: its ids are final as soon as they are seen.
    fn settled_record_ids(&self, patience: std::time::Duration) -> Result<i64, StoreError> {
        if let Backend::Sqlite(_) = self.backend {
            return Ok(i64::MAX);
        }
        let deadline = std::time::Instant::now() + patience;
        let (drawn, writers) = self.with(|c| {
            let drawn: i64 = c
                .query_one(
                    "SELECT COALESCE(pg_sequence_last_value(\
                     pg_get_serial_sequence('records', 'id')::regclass), 0)",
                    params![],
                )?
                .get(0)?;
            Ok((drawn, records_writers(c, None)?.join(",")))
        })?;
        // A connection for each look, not one held while waiting: launches
        // need the pool more than a waiting reader does.
        let mut pause = std::time::Duration::from_millis(2);
        while !writers.is_empty() {
            if std::time::Instant::now() >= deadline {
                return Err(StoreError::Busy {
                    db: self.location.clone(),
                    what: "attestation records",
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
            if self
                .with(|c| records_writers(c, Some(&writers)))?
                .is_empty()
            {
                break;
            }
        }
        Ok(drawn)
    }
}

/// The transactions (PostgreSQL virtual transaction ids) other than this
/// connection's that hold the records table's ROW EXCLUSIVE lock, all or
/// those `among` a comma-separated list.
fn records_writers(c: &mut Handle<'_>, among: Option<&str>) -> Result<Vec<String>, DbError> {
    c.query(
        "SELECT virtualtransaction FROM pg_locks \
         WHERE locktype = 'relation' AND relation = 'records'::regclass \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND mode = 'RowExclusiveLock' AND granted AND pid <> pg_backend_pid() \
         AND (CAST(?1 AS TEXT) IS NULL \
              OR virtualtransaction = ANY (string_to_array(CAST(?1 AS TEXT), ',')))",
        params![among],
    )?
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// How long a records reader waits for the writers in flight
/// ([`Store::settled_record_ids`]): they are short transactions, each
/// statement bounded by the session's statement timeout.
const RECORDS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How many rows [`Store::purge`] deleted, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Launch sessions.
    pub sessions: usize,
    /// Online connections.
    pub connections: usize,
    /// Attestation records.
    pub records: usize,
    /// Launch report keys and their reports.
    pub reports: usize,
}

/// An attestation outcome to record.
#[derive(Debug, Clone, Default)]
pub struct NewRecord<'a> {
    /// The RPC.
    pub rpc: &'a str,
    /// Launch id, if known.
    pub launch_id: &'a str,
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not.
    pub reason: &'a str,
    /// Claimed digest, hexadecimal.
    pub digest: &'a str,
    /// Guest policy.
    pub policy: u32,
    /// Firmware version.
    pub firmware: &'a str,
    /// Orchestrator's description (cut to 256 characters).
    pub description: &'a str,
}

/// Inserts an attestation record; its id.
fn insert_record(c: &mut Handle<'_>, t: i64, r: &NewRecord<'_>) -> Result<i64, DbError> {
    let description: String = r.description.chars().take(256).collect();
    c.query_one(
        "INSERT INTO records (at, rpc, launch_id, outcome, reason, digest, policy, firmware, description) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        params![
            t,
            r.rpc,
            r.launch_id,
            if r.ok { "ok" } else { "refused" },
            r.reason,
            r.digest,
            r.policy,
            r.firmware,
            description
        ],
    )?
    .get(0)
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The test suite's databases: each test runs on SQLite in a temporary
/// directory and on a fresh PostgreSQL database when the test server is up.
#[cfg(test)]
pub(crate) mod test_db {
    use super::*;

    /// One database a test runs on.
    pub enum TestDb {
        /// SQLite in its own directory.
        Sqlite(tempfile::TempDir),
        /// A PostgreSQL database of its own.
        Postgres(PgOptions),
    }

    /// The at-rest key every test opens under unless it says otherwise.
    pub fn key() -> AtRestKey {
        AtRestKey::parse(&[7; 32]).unwrap()
    }

    impl TestDb {
        /// Whether this is the PostgreSQL half.
        pub fn is_postgres(&self) -> bool {
            matches!(self, TestDb::Postgres(_))
        }

        /// Opens (again) under [`key`].
        pub fn open(&self) -> Store {
            self.open_with(key()).unwrap()
        }

        /// Opens under `key`.
        pub fn open_with(&self, key: AtRestKey) -> Result<Store, StoreError> {
            self.open_upto(key, migrations::latest())
        }

        /// Opens under `key`, migrating no further than `upto`.
        pub fn open_upto(&self, key: AtRestKey, upto: i64) -> Result<Store, StoreError> {
            match self {
                TestDb::Sqlite(dir) => Store::open_sqlite(dir.path(), key, upto),
                TestDb::Postgres(o) => Store::open_postgres_upto(o, key, upto),
            }
        }
    }

    /// Runs `body` on SQLite, then on PostgreSQL (see [`testing`]).
    pub fn each(test: &str, body: impl Fn(&TestDb)) {
        body(&TestDb::Sqlite(tempfile::tempdir().unwrap()));
        if let Some(o) = testing::fresh_postgres(test) {
            body(&TestDb::Postgres(o));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_db::{each, key, TestDb};
    use super::*;

    /// Whether any database file in `dir` holds `needle`.
    fn files_hold(dir: &Path, needle: &[u8]) -> bool {
        ["kbs.sqlite3", "kbs.sqlite3-wal"].iter().any(|f| {
            std::fs::read(dir.join(f))
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
    }

    #[test]
    fn values_are_sealed_at_rest_and_open_only_under_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b"SECRET-VALUE-0123456789";
        let resource = b"RESOURCE-BYTES-9876543210";
        let fingerprint = {
            let s = Store::open_with_key(dir.path(), AtRestKey::parse(&[1; 32]).unwrap()).unwrap();
            s.set_secret("s", secret).unwrap();
            s.set_resource("r", resource).unwrap();
            s.insert_session("launch-1", &session(), 600, &NewRecord::default())
                .unwrap();
            assert_eq!(s.secret("s").unwrap().unwrap(), secret);
            assert_eq!(s.secret_size("s").unwrap(), Some(secret.len()));
            assert_eq!(s.resource_size("r").unwrap(), Some(resource.len()));
            s.key_fingerprint()
        };
        assert!(!files_hold(dir.path(), secret));
        assert!(!files_hold(dir.path(), resource));
        assert!(!files_hold(dir.path(), &session().tek));
        // Another key: refused at open, naming both keys by fingerprint.
        let other = AtRestKey::parse(&[2; 32]).unwrap();
        let given = other.fingerprint();
        let Err(e) = Store::open_with_key(dir.path(), other) else {
            panic!("opened under the wrong key");
        };
        let e = e.to_string();
        assert!(e.contains(&fingerprint) && e.contains(&given), "{e}");
        // The right key reads everything back.
        let s = Store::open_with_key(dir.path(), AtRestKey::parse(&[1; 32]).unwrap()).unwrap();
        assert_eq!(s.resource("r").unwrap().unwrap(), resource);
        assert_eq!(
            s.take_session("launch-1").unwrap(),
            TakeOutcome::Taken(session())
        );
        // A value moved to another row does not open there.
        s.set_secret("t", b"other").unwrap();
        s.with(|c| {
            c.execute(
                "UPDATE secrets SET payload = (SELECT payload FROM secrets WHERE id = 's') WHERE id = 't'",
                params![],
            )
        })
        .unwrap();
        assert!(matches!(s.secret("t"), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn sealed_values_open_only_under_their_key_on_both_databases() {
        each("sealed_values", |db| {
            let s = db.open();
            s.set_secret("s", b"value").unwrap();
            s.set_secret("t", b"other").unwrap();
            let fingerprint = s.key_fingerprint();
            drop(s);
            let other = AtRestKey::parse(&[2; 32]).unwrap();
            let given = other.fingerprint();
            let Err(e) = db.open_with(other) else {
                panic!("opened under the wrong key");
            };
            let e = e.to_string();
            assert!(e.contains(&fingerprint) && e.contains(&given), "{e}");
            let s = db.open();
            assert_eq!(s.secret("s").unwrap().unwrap(), b"value");
            s.with(|c| {
                c.execute(
                    "UPDATE secrets SET payload = (SELECT payload FROM secrets WHERE id = 's') WHERE id = 't'",
                    params![],
                )
            })
            .unwrap();
            assert!(matches!(s.secret("t"), Err(StoreError::Corrupt { .. })));
        });
    }

    #[test]
    fn plain_values_of_an_earlier_database_are_sealed_and_leave_no_copy() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b"PLAIN-SECRET-FROM-BEFORE-SEALING";
        {
            Store::open(dir.path()).unwrap();
        }
        // As an earlier version left it: plain values, no key check.
        {
            let c = Connection::open(dir.path().join("kbs.sqlite3")).unwrap();
            c.execute_batch("DELETE FROM meta").unwrap();
            c.execute(
                "INSERT INTO secrets (id, payload) VALUES ('old', ?1)",
                [&secret[..]],
            )
            .unwrap();
            c.execute(
                "INSERT INTO resources (id, data) VALUES ('res', ?1)",
                [&b"plain resource"[..]],
            )
            .unwrap();
            c.execute_batch("DELETE FROM secrets WHERE id = 'nothing'")
                .unwrap();
        }
        assert!(files_hold(dir.path(), secret));
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.secret("old").unwrap().unwrap(), secret);
        assert_eq!(s.resource("res").unwrap().unwrap(), b"plain resource");
        drop(s);
        assert!(!files_hold(dir.path(), secret), "a plain copy is left");
        // Replaced and deleted values do not linger, even sealed.
        let s = Store::open(dir.path()).unwrap();
        let sealed = |s: &Store| {
            s.with(|c| {
                c.query_one("SELECT payload FROM secrets WHERE id = 'old'", params![])?
                    .get::<Vec<u8>>(0)
            })
            .unwrap()
        };
        let before = sealed(&s);
        s.set_secret("old", b"rotated").unwrap();
        let rotated = sealed(&s);
        assert!(
            !files_hold(dir.path(), &before),
            "the replaced value lingers"
        );
        s.delete_secret("old").unwrap();
        assert!(s.secret("old").unwrap().is_none());
        assert!(
            !files_hold(dir.path(), &rotated),
            "the deleted value lingers"
        );
    }

    fn session() -> LaunchSession {
        LaunchSession {
            tek: [1; 16],
            tik: [2; 16],
            policy: 3,
            chip: "c".into(),
        }
    }

    #[test]
    fn a_session_is_taken_once_and_survives_reopening() {
        each("a_session_is_taken_once", a_session_is_taken_once);
    }

    fn a_session_is_taken_once(db: &TestDb) {
        {
            let s = db.open();
            s.insert_session(
                "a",
                &session(),
                600,
                &NewRecord {
                    rpc: "GetBundle",
                    ok: true,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let s = db.open();
        assert_eq!(s.take_session("a").unwrap(), TakeOutcome::Taken(session()));
        assert_eq!(s.take_session("a").unwrap(), TakeOutcome::Used);
        assert_eq!(s.take_session("b").unwrap(), TakeOutcome::Unknown);
        s.insert_session("old", &session(), -1, &NewRecord::default())
            .unwrap();
        assert_eq!(s.take_session("old").unwrap(), TakeOutcome::Expired);
        assert_eq!(s.records(0, 10).unwrap().len(), 2);
        // Housekeeping: the day-old expired session and every record before now+1 go;
        // the fresh session stays.
        s.insert_session("ancient", &session(), -200_000, &NewRecord::default())
            .unwrap();
        assert_eq!(
            s.purge(now() + 1).unwrap(),
            Purged {
                sessions: 1,
                records: 3,
                ..Purged::default()
            }
        );
        assert_eq!(s.take_session("ancient").unwrap(), TakeOutcome::Unknown);
        assert_eq!(s.take_session("old").unwrap(), TakeOutcome::Used);
        assert!(s.records(0, 10).unwrap().is_empty());
    }

    #[test]
    fn a_report_is_stored_once_shows_on_its_release_and_survives_reopening() {
        each("a_report_is_stored_once", a_report_is_stored_once);
    }

    fn a_report_is_stored_once(db: &TestDb) {
        let released = NewRecord {
            rpc: "GetSecret",
            launch_id: "l1",
            ok: true,
            ..Default::default()
        };
        {
            let s = db.open();
            s.record(&NewRecord {
                rpc: "GetBundle",
                launch_id: "l1",
                ok: true,
                ..Default::default()
            })
            .unwrap();
            s.record(&released).unwrap();
            s.insert_report_key("l1", &[9; 32]).unwrap();
            let r = s.records(0, 10).unwrap();
            assert_eq!(r[0].guest_status, "");
            assert_eq!(r[1].guest_status, "awaiting");
        }
        let s = db.open();
        assert_eq!(s.report_key("l1").unwrap().as_deref(), Some(&[9; 32]));
        assert_eq!(s.report_key("l2").unwrap(), None);
        let report = GuestReport {
            path_works: false,
            failed_checks: vec!["online".into()],
            client: "gc".into(),
            body: vec![1, 2],
        };
        let rec = NewRecord {
            rpc: "Report",
            launch_id: "l1",
            ok: true,
            ..Default::default()
        };
        assert!(matches!(
            s.record_report("l1", &report, &rec).unwrap(),
            ReportOutcome::Recorded(t) if t > 0
        ));
        assert_eq!(
            s.record_report("l1", &report, &rec).unwrap(),
            ReportOutcome::AlreadyReported
        );
        assert_eq!(
            s.record_report("l2", &report, &rec).unwrap(),
            ReportOutcome::Unknown
        );
        let r = s.records(0, 10).unwrap();
        assert_eq!(r.len(), 3, "only the accepted report is recorded here");
        assert_eq!(r[1].guest_status, "path_broken");
        assert_eq!(r[1].failed_checks, vec!["online".to_string()]);
        assert_eq!(r[1].guest_client, "gc");
        assert!(r[1].reported_at > 0);
        assert_eq!(
            (r[2].rpc.as_str(), r[2].guest_status.as_str()),
            ("Report", "")
        );
        assert_eq!(s.purge(now() + 1).unwrap().reports, 1);
        assert_eq!(s.report_key("l1").unwrap(), None);
    }

    #[test]
    fn a_database_from_before_reports_gains_the_table() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.record(&NewRecord {
                rpc: "GetSecret",
                launch_id: "old",
                ok: true,
                ..Default::default()
            })
            .unwrap();
            // As a release before versioned schemas and reports left it.
            s.with(|c| c.batch("DROP TABLE launch_reports; DROP TABLE schema_migrations"))
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let r = s.records(0, 10).unwrap();
        assert_eq!((r.len(), r[0].guest_status.as_str()), (1, ""));
        s.insert_report_key("new", &[1; 32]).unwrap();
        assert!(s.report_key("new").unwrap().is_some());
    }

    #[test]
    fn digests_are_replaced_per_node_and_class() {
        each("digests_are_replaced", digests_are_replaced);
    }

    fn digests_are_replaced(db: &TestDb) {
        let s = db.open();
        let rec = |d: &str| DigestRecord {
            mode: "sev".into(),
            digest: d.into(),
            vcpus: 1,
            vcpu_type: "host".into(),
            config: "c".into(),
        };
        s.replace_digests(
            "n1",
            "kata-qemu-sev",
            &[(vec![1; 32], rec("01"))],
            Origin::Node,
            &[],
        )
        .unwrap();
        s.replace_digests(
            "n2",
            "kata-qemu-sev",
            &[(vec![2; 32], rec("02"))],
            Origin::Operator,
            &[],
        )
        .unwrap();
        assert!(s.digest_registered("sev", &[1; 32], true).unwrap());
        assert!(!s.digest_registered("sev", &[1; 32], false).unwrap());
        assert!(s.digest_registered("sev", &[2; 32], false).unwrap());
        assert!(!s.digest_registered("seves", &[1; 32], true).unwrap());
        s.replace_digests(
            "n1",
            "kata-qemu-sev",
            &[(vec![3; 32], rec("03"))],
            Origin::Node,
            &[],
        )
        .unwrap();
        assert!(!s.digest_registered("sev", &[1; 32], true).unwrap());
        assert!(s.digest_registered("sev", &[2; 32], true).unwrap());
        assert_eq!(s.list_digests().unwrap().len(), 2);
    }

    #[test]
    fn of_concurrent_takers_on_separate_connections_exactly_one_gets_the_session() {
        each("exactly_one_taker", |db| {
            // Two stores on one database: two replicas, each with its own connections.
            let a = db.open();
            let b = db.open();
            for round in 0..5 {
                let id = format!("race-{round}");
                a.insert_session(&id, &session(), 600, &NewRecord::default())
                    .unwrap();
                let outcomes: Vec<TakeOutcome> = std::thread::scope(|sc| {
                    let takers: Vec<_> = (0..16)
                        .map(|i| {
                            let s = if i % 2 == 0 { &a } else { &b };
                            let id = &id;
                            sc.spawn(move || s.take_session(id).unwrap())
                        })
                        .collect();
                    takers.into_iter().map(|t| t.join().unwrap()).collect()
                });
                let taken = outcomes
                    .iter()
                    .filter(|o| matches!(o, TakeOutcome::Taken(_)))
                    .count();
                assert_eq!(taken, 1, "{outcomes:?}");
                assert!(outcomes
                    .iter()
                    .all(|o| matches!(o, TakeOutcome::Taken(_) | TakeOutcome::Used)));
            }
        });
    }

    /// A record by its RPC name alone.
    fn rpc_record(rpc: &str) -> NewRecord<'_> {
        NewRecord {
            rpc,
            ..NewRecord::default()
        }
    }

    /// Lets a held writer go when dropped, by the test or by a failing
    /// assertion's unwinding (which would otherwise wait for it forever).
    struct Release(std::sync::mpsc::Sender<()>);

    impl Drop for Release {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    /// Spawns a writer on `s` that inserts a record named `rpc` and holds its
    /// transaction open until released; returns once the record has its id.
    fn held_writer<'sc>(
        sc: &'sc std::thread::Scope<'sc, '_>,
        s: &'sc Store,
        rpc: &'static str,
    ) -> (std::thread::ScopedJoinHandle<'sc, ()>, Release) {
        let (inserted_tx, inserted) = std::sync::mpsc::channel();
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let writer = sc.spawn(move || {
            s.transact_with(postgres::TxLock::None, move |tx| {
                insert_record(tx, now(), &rpc_record(rpc))?;
                let _ = inserted_tx.send(());
                let _ = go.recv();
                Ok(())
            })
            .unwrap()
        });
        inserted.recv().unwrap();
        (writer, Release(go_tx))
    }

    #[test]
    fn a_pager_never_passes_a_record_that_commits_after_a_later_one() {
        each("records_settled", |db| {
            let (a, b) = (db.open(), db.open());
            let during = std::thread::scope(|sc| {
                // A writer that has its record's id and has not committed.
                let (slow, release) = held_writer(sc, &a, "first");
                // A later id commits first on PostgreSQL; on SQLite it waits
                // for the first writer.
                let fast = sc.spawn(|| b.record(&rpc_record("second")).unwrap());
                if db.is_postgres() {
                    fast.join().unwrap();
                }
                let reader = sc.spawn(|| b.records(0, 100).unwrap());
                std::thread::sleep(std::time::Duration::from_millis(300));
                drop(release);
                slow.join().unwrap();
                reader.join().unwrap()
            });
            let names =
                |rs: &[AttestationRecord]| rs.iter().map(|r| r.rpc.clone()).collect::<Vec<_>>();
            // Whatever the reader saw is a prefix of the final order: had it
            // returned "second" alone, paging after its id would lose "first".
            let all = b.records(0, 100).unwrap();
            assert_eq!(names(&all), ["first", "second"]);
            assert!(all[0].id < all[1].id);
            assert!(
                names(&all).starts_with(&names(&during)),
                "{:?}",
                names(&during)
            );
        });
    }

    #[test]
    fn a_records_reader_waiting_for_a_writer_holds_up_no_other_and_gives_up() {
        let Some(o) = testing::fresh_postgres("records_busy") else {
            return;
        };
        let db = TestDb::Postgres(o);
        let (a, b) = (db.open(), db.open());
        let waited = std::thread::scope(|sc| {
            let (slow, release) = held_writer(sc, &a, "held");
            let reader = sc.spawn(|| b.settled_record_ids(std::time::Duration::from_secs(3)));
            std::thread::sleep(std::time::Duration::from_millis(100));
            // Writers go on beside a waiting reader.
            b.record(&rpc_record("beside")).unwrap();
            assert!(
                !reader.is_finished(),
                "the reader waits for the held writer"
            );
            let waited = reader.join().unwrap();
            drop(release);
            slow.join().unwrap();
            waited
        });
        let err = waited.unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("try again"), "{err}");
        b.record(&rpc_record("after")).unwrap();
        let rpcs: Vec<String> = b
            .records(0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.rpc)
            .collect();
        assert_eq!(rpcs, ["held", "beside", "after"]);
    }

    #[test]
    fn the_import_copies_every_table_of_the_schema() {
        each("import_tables", |db| {
            let s = db.open();
            let sql = match s.dialect() {
                db::Dialect::Sqlite => {
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                }
                db::Dialect::Postgres => {
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = current_schema()"
                }
            };
            let mut tables: Vec<String> = s
                .with(|c| c.query(sql, params![])?.iter().map(|r| r.get(0)).collect())
                .unwrap();
            tables.sort();
            let mut known: Vec<&str> = import::TABLES.to_vec();
            known.sort_unstable();
            assert_eq!(tables, known, "a new table needs a place in import::TABLES");
        });
    }

    /// An embedded database to import, holding the secret "s1" ("sealed
    /// secret"), and a store open on it.
    fn embedded_source() -> (TestDb, Store) {
        let src = TestDb::Sqlite(tempfile::tempdir().unwrap());
        let s = src.open();
        s.set_secret("s1", b"sealed secret").unwrap();
        (src, s)
    }

    /// The operator token "t1", as an embedded broker stores it (its hash
    /// is `[9; 32]`).
    fn operator_token() -> TokenRow {
        TokenRow {
            id: "t1".into(),
            hash: [9; 32],
            role: "operator".into(),
            node: String::new(),
            note: String::new(),
            created_by: "operator".into(),
            created_at: 1,
        }
    }

    #[test]
    fn an_embedded_database_moves_into_an_empty_postgres_database_whole() {
        let Some(o) = testing::fresh_postgres("import_embedded") else {
            return;
        };
        let (src, s) = embedded_source();
        s.insert_session("l1", &session(), 600, &rpc_record("GetBundle"))
            .unwrap();
        for _ in 0..3 {
            s.record(&rpc_record("GetSecret")).unwrap();
        }
        // The newest ids were purged: ids after the move must still go on
        // after them, or an exporter's cursor would skip new records.
        s.with(|c| c.execute("DELETE FROM records WHERE id > 2", params![]))
            .unwrap();
        let approval = ApprovalRow {
            kind: "kernel".into(),
            id: "ab".repeat(32),
            runtime_class: String::new(),
            terms: "{}".into(),
            approved_by: "operator".into(),
            approved_at: 1,
            note: "moved".into(),
        };
        s.approve(&approval, None).unwrap();
        let firmware = vec![0xf1; 3 << 20];
        let image = ApprovalRow {
            kind: "firmware".into(),
            id: "cd".repeat(32),
            ..approval.clone()
        };
        s.approve(&image, Some(&firmware)).unwrap();
        s.insert_token(&operator_token()).unwrap();
        let digest = DigestRecord {
            mode: "sev".into(),
            digest: "01".into(),
            vcpus: 1,
            vcpu_type: "host".into(),
            config: "c".into(),
        };
        s.replace_digests(
            "n1",
            "kata-qemu-sev",
            &[(vec![1; 32], digest)],
            Origin::Operator,
            &[],
        )
        .unwrap();
        let nonce_key = s.snp_nonce_key().unwrap();
        let approvals = s.approvals().unwrap();
        drop(s);

        let dst = TestDb::Postgres(o);
        let d = dst.open();
        let copied = d.import_embedded(src.open()).unwrap();
        for expected in [
            ("secrets", 1),
            ("sessions", 1),
            ("records", 2),
            ("tokens", 1),
            ("approvals", 2),
            ("digests", 1),
        ] {
            assert!(
                copied.tables.contains(&expected),
                "{expected:?} in {copied:?}"
            );
        }
        // Sealed values open under the same key; the session is still single use.
        assert_eq!(d.secret("s1").unwrap().unwrap(), b"sealed secret");
        assert_eq!(d.take_session("l1").unwrap(), TakeOutcome::Taken(session()));
        assert_eq!(d.take_session("l1").unwrap(), TakeOutcome::Used);
        assert_eq!(
            d.token_by_hash(&[9; 32]).unwrap().map(|t| t.id),
            Some("t1".into())
        );
        assert_eq!(d.approvals().unwrap(), approvals);
        assert_eq!(
            d.approval_data("firmware", &image.id, "").unwrap(),
            Some(firmware),
            "a firmware image moves whole"
        );
        assert!(d.digest_registered("sev", &[1; 32], false).unwrap());
        assert_eq!(
            d.snp_nonce_key().unwrap(),
            nonce_key,
            "replicas accept the old nonces"
        );
        let ids = |st: &Store| {
            st.records(0, 100)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&d), [1, 2]);
        d.record(&rpc_record("after the move")).unwrap();
        assert_eq!(ids(&d), [1, 2, 5]);

        // The embedded copy is marked: no broker serves it again, and no
        // second import copies it.
        assert!(copied.source_marked);
        let err = src.open_with(key()).err().unwrap();
        assert!(matches!(err, StoreError::Moved { .. }), "{err}");
        assert!(err.to_string().contains(d.location()), "{err}");

        // Once used, the database takes no second copy, and keeps what it has.
        let another = TestDb::Sqlite(tempfile::tempdir().unwrap());
        another.open().set_secret("s1", b"another state").unwrap();
        let err = d.import_embedded(another.open()).unwrap_err();
        assert!(
            err.to_string()
                .contains("table sessions already holds rows"),
            "{err}"
        );
        assert_eq!(ids(&d), [1, 2, 5]);
        assert_eq!(d.secret("s1").unwrap().unwrap(), b"sealed secret");

        // Values sealed under one key cannot move into a database of another.
        let other = TestDb::Postgres(testing::fresh_postgres("import_other_key").unwrap());
        let d2 = other
            .open_with(AtRestKey::parse(&[8; 32]).unwrap())
            .unwrap();
        let err = d2.import_embedded(another.open()).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
        assert_eq!(d2.count_records().unwrap(), 0);
    }

    #[test]
    fn an_import_goes_only_from_embedded_to_postgres() {
        let (src, _) = embedded_source();
        let err = src.open().import_embedded(src.open()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(": the destination must be a PostgreSQL database"),
            "{err}"
        );
        let Some(o) = testing::fresh_postgres("import_kinds") else {
            return;
        };
        let pg = TestDb::Postgres(o);
        let err = pg.open().import_embedded(pg.open()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with(": the source must be an embedded database"),
            "{err}"
        );
    }

    #[test]
    fn a_copy_that_fails_midway_leaves_nothing_and_can_run_again() {
        let Some(o) = testing::fresh_postgres("import_midway") else {
            return;
        };
        let (src, s) = embedded_source();
        for _ in 0..3 {
            s.record(&rpc_record("GetBundle")).unwrap();
        }
        s.insert_token(&operator_token()).unwrap();
        // SQLite keeps text in an integer column; PostgreSQL will not take
        // it. Fails the batch of records, then names the row; then tokens.
        let edit = |sql: &str| {
            let s = src.open();
            s.with(|c| c.execute(sql, params![])).unwrap();
        };
        drop(s);
        edit("UPDATE records SET policy = 'none' WHERE id = 2");
        edit("UPDATE tokens SET created_at = 'yesterday'");
        let d = TestDb::Postgres(o).open();
        let err = d.import_embedded(src.open()).unwrap_err().to_string();
        assert!(err.contains("table records, row 2"), "{err}");
        assert!(err.contains("text cannot be bound as int8"), "{err}");
        // Tables copied before the failure were rolled back with it.
        assert_eq!(d.count_records().unwrap(), 0);
        assert_eq!(d.secret("s1").unwrap(), None);
        // Not marked: the embedded broker may still serve, or the copy run
        // again once the row is mended.
        edit("UPDATE records SET policy = 3 WHERE id = 2");
        let err = d.import_embedded(src.open()).unwrap_err().to_string();
        assert!(err.contains("table tokens, row 1"), "{err}");
        assert_eq!(d.count_records().unwrap(), 0);
        edit("UPDATE tokens SET created_at = 1");
        let copied = d.import_embedded(src.open()).unwrap();
        assert!(copied.tables.contains(&("tokens", 1)), "{copied:?}");
        assert!(copied.tables.contains(&("records", 3)), "{copied:?}");
        assert_eq!(d.secret("s1").unwrap().unwrap(), b"sealed secret");
    }

    #[test]
    fn a_database_is_migrated_from_empty_and_from_the_previous_version() {
        each("migrations", |db| {
            // The previous schema, as the release before it left the database.
            let s = db.open_upto(key(), migrations::latest() - 1).unwrap();
            s.set_secret("kept", b"across the migration").unwrap();
            s.insert_session("l", &session(), 600, &NewRecord::default())
                .unwrap();
            s.with(|c| {
                c.execute(
                    "INSERT INTO digests (node, runtime_class, mode, digest, vcpus, vcpu_type, config, registered_at, origin) \
                     VALUES ('n', 'c', 'snp', ?1, 1, 'v', 'cfg', 1, 'operator')",
                    params![vec![5u8; 48]],
                )
            })
            .unwrap();
            assert!(
                s.counter(leases::REFERENCE_COUNTER).is_err(),
                "no counters before"
            );
            drop(s);
            let s = db.open();
            assert_eq!(s.secret("kept").unwrap().unwrap(), b"across the migration");
            assert!(s.digest_registered("snp", &[5; 48], false).unwrap());
            assert_eq!(s.take_session("l").unwrap(), TakeOutcome::Taken(session()));
            assert_eq!(s.counter(leases::REFERENCE_COUNTER).unwrap(), 0);
            let versions: Vec<i64> = s
                .with(|c| {
                    c.query(
                        "SELECT version FROM schema_migrations ORDER BY version",
                        params![],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
                })
                .unwrap();
            assert_eq!(versions, (1..=migrations::latest()).collect::<Vec<_>>());
            // Opening again applies nothing and loses nothing.
            drop(s);
            assert_eq!(
                db.open().secret("kept").unwrap().unwrap(),
                b"across the migration"
            );
        });
    }

    #[test]
    fn a_database_of_a_newer_schema_is_refused() {
        each("newer_schema", |db| {
            let s = db.open();
            s.with(|c| {
                c.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, 'future', 0)",
                    params![migrations::latest() + 1],
                )
            })
            .unwrap();
            drop(s);
            let Err(e) = db.open_with(key()) else {
                panic!("opened a newer schema");
            };
            assert!(
                matches!(e, StoreError::NewerSchema { found, .. } if found == migrations::latest() + 1),
                "{e}"
            );
        });
    }

    #[test]
    fn replicas_starting_together_migrate_once() {
        each("migrate_together", |db| {
            let stores: Vec<Store> = std::thread::scope(|sc| {
                let opening: Vec<_> = (0..4).map(|_| sc.spawn(|| db.open())).collect();
                opening.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let rows: i64 = stores[0]
                .with(|c| {
                    c.query_one("SELECT COUNT(*) FROM schema_migrations", params![])?
                        .get(0)
                })
                .unwrap();
            assert_eq!(rows, migrations::latest());
            stores[1].set_secret("x", b"y").unwrap();
            assert_eq!(stores[3].secret("x").unwrap().unwrap(), b"y");
        });
    }

    #[test]
    fn a_lease_has_one_holder_until_it_lapses_or_is_released() {
        each("leases", |db| {
            let a = db.open();
            let b = db.open();
            assert!(a.take_lease("w", "replica-a", 30).unwrap());
            assert!(!b.take_lease("w", "replica-b", 30).unwrap());
            assert!(a.take_lease("w", "replica-a", 30).unwrap(), "renewed");
            assert_eq!(b.lease_holder("w").unwrap().unwrap().0, "replica-a");
            a.release_lease("w", "replica-a").unwrap();
            assert!(b.take_lease("w", "replica-b", 30).unwrap());
            // A holder that stops renewing loses it once it lapses.
            assert!(b.take_lease("w", "replica-b", -1).unwrap());
            assert!(a.take_lease("w", "replica-a", 30).unwrap());
            assert!(!b.take_lease("w", "replica-b", 30).unwrap());
        });
    }

    #[test]
    fn reference_changes_are_counted_in_the_database() {
        each("reference_counter", |db| {
            let a = db.open();
            let b = db.open();
            let before = b.counter(leases::REFERENCE_COUNTER).unwrap();
            a.replace_digests(
                "n",
                "c",
                &[(
                    vec![1; 48],
                    DigestRecord {
                        mode: "snp".into(),
                        digest: String::new(),
                        vcpus: 1,
                        vcpu_type: String::new(),
                        config: "c".into(),
                    },
                )],
                Origin::Operator,
                &[],
            )
            .unwrap();
            assert!(b.counter(leases::REFERENCE_COUNTER).unwrap() > before);
        });
    }
}
