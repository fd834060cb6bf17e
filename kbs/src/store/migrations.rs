//! The broker's schema, as numbered migrations applied in order at open.
//!
//! Written once, in SQLite's spelling; PostgreSQL gets the same text through
//! [`postgres_ddl`]. Each migration runs, with the row that records it, in
//! one transaction that holds the migration lock (an immediate transaction
//! on SQLite, an advisory lock on PostgreSQL): replicas starting together
//! apply each migration once, and a crash mid-migration leaves the previous
//! version whole. A database whose version is newer than this broker knows
//! is refused rather than written: its meaning may have changed. Migrations
//! only add; a released one is never edited.

use super::db::{params, postgres_ddl, DbError, Dialect, Handle};

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version: the schema's version once it is applied.
    pub version: i64,
    /// What it is for.
    pub name: &'static str,
    sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "launch sessions, digests, secrets, records, approvals, tokens, SNP reports",
        sql: V1,
    },
    Migration {
        version: 2,
        name: "leases and change counters for replicas",
        sql: V2,
    },
];

/// The schema version this broker writes.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

// Every statement is CREATE ... IF NOT EXISTS: a SQLite database made before
// versions were kept has some of these tables, in older shapes, and gains the
// rest here and its missing columns in [`legacy_columns`].
const V1: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    launch_id TEXT PRIMARY KEY,
    tek BLOB NOT NULL,
    tik BLOB NOT NULL,
    policy INTEGER NOT NULL,
    chip TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);
CREATE TABLE IF NOT EXISTS digests (
    node TEXT NOT NULL,
    runtime_class TEXT NOT NULL,
    mode TEXT NOT NULL,
    digest BLOB NOT NULL,
    vcpus INTEGER NOT NULL,
    vcpu_type TEXT NOT NULL,
    config TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    origin TEXT NOT NULL DEFAULT 'node',
    PRIMARY KEY (node, runtime_class, mode, digest, vcpus, vcpu_type)
);
CREATE INDEX IF NOT EXISTS digests_by_value ON digests (digest, mode);
CREATE TABLE IF NOT EXISTS secrets (id TEXT PRIMARY KEY, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keysets (
    id TEXT PRIMARY KEY,
    secret_ids TEXT NOT NULL,
    resource_ids TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS resources (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS connections (
    client_id TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    launch_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    keyset TEXT,
    mode TEXT,
    digest BLOB
);
CREATE TABLE IF NOT EXISTS write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    rpc TEXT NOT NULL,
    launch_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    digest TEXT NOT NULL,
    policy INTEGER NOT NULL,
    firmware TEXT NOT NULL,
    description TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (at);
CREATE INDEX IF NOT EXISTS connections_by_expiry ON connections (expires_at);
CREATE TABLE IF NOT EXISTS launch_reports (
    launch_id TEXT PRIMARY KEY,
    report_key BLOB NOT NULL,
    issued_at INTEGER NOT NULL,
    reported_at INTEGER,
    path_works INTEGER,
    failed_checks TEXT,
    client TEXT,
    body BLOB
);
CREATE INDEX IF NOT EXISTS launch_reports_by_issue ON launch_reports (issued_at);
CREATE TABLE IF NOT EXISTS approvals (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    runtime_class TEXT NOT NULL,
    terms TEXT NOT NULL,
    data BLOB,
    approved_by TEXT NOT NULL,
    approved_at INTEGER NOT NULL,
    note TEXT NOT NULL,
    PRIMARY KEY (kind, id, runtime_class)
);
CREATE TABLE IF NOT EXISTS registration_inputs (
    node TEXT NOT NULL,
    runtime_class TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (node, runtime_class, kind, id)
);
CREATE INDEX IF NOT EXISTS registration_inputs_by_input ON registration_inputs (kind, id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS platform_tcbs (
    node TEXT PRIMARY KEY,
    bootloader INTEGER NOT NULL,
    tee INTEGER NOT NULL,
    snp INTEGER NOT NULL,
    microcode INTEGER NOT NULL,
    product TEXT NOT NULL,
    reported_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snp_guest_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nonce BLOB NOT NULL UNIQUE,
    record_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    chip_id TEXT NOT NULL,
    signer TEXT NOT NULL,
    measurement TEXT NOT NULL,
    status TEXT NOT NULL,
    failed_checks TEXT NOT NULL,
    client TEXT NOT NULL,
    body BLOB NOT NULL,
    report BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS snp_guest_reports_by_record ON snp_guest_reports (record_id);
CREATE INDEX IF NOT EXISTS snp_guest_reports_by_time ON snp_guest_reports (at);
CREATE INDEX IF NOT EXISTS snp_guest_reports_by_signer ON snp_guest_reports (signer, at);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    role TEXT NOT NULL,
    node TEXT NOT NULL,
    note TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

const V2: &str = "
-- One holder at a time for work only one replica may do (writing Trustee).
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
-- Bumped in the transactions that change what a lease holder acts on, so
-- that it notices changes made through any replica.
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// The database is at `version`; `applied` lists what was applied now.
    Current {
        /// The version now.
        version: i64,
        /// The migrations applied by this call.
        applied: Vec<i64>,
    },
    /// The database is at `found`, newer than this broker knows.
    Newer {
        /// The version found.
        found: i64,
    },
}

/// The version table, created before anything else under the lock.
const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)";

/// Brings the database of `h` (a transaction holding the migration lock) to
/// version `upto`.
pub fn migrate(h: &mut Handle<'_>, upto: i64) -> Result<Migrated, DbError> {
    let dialect = h.dialect();
    let ddl = |sql: &str| match dialect {
        Dialect::Sqlite => sql.to_owned(),
        Dialect::Postgres => postgres_ddl(sql),
    };
    h.batch(&ddl(VERSION_TABLE))?;
    let found: i64 = h
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            params![],
        )?
        .get(0)?;
    if found > latest() {
        return Ok(Migrated::Newer { found });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > found && m.version <= upto)
    {
        h.batch(&ddl(m.sql))?;
        if m.version == 1 && dialect == Dialect::Sqlite {
            legacy_columns(h)?;
        }
        h.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, super::now()],
        )?;
        applied.push(m.version);
    }
    Ok(Migrated::Current {
        version: applied.last().copied().unwrap_or(found),
        applied,
    })
}

/// Columns that SQLite databases of earlier releases lack; each comes with
/// the value that is right for the rows already there.
fn legacy_columns(h: &mut Handle<'_>) -> Result<(), DbError> {
    // Digests registered before origins were kept came from whichever
    // credential held the one admin token: a node's, as far as anyone knows.
    add_column(h, "digests", "origin", "TEXT NOT NULL DEFAULT 'node'")?;
    // Connections opened before they were scoped have no keyset and no
    // digest: they can fetch nothing (fail closed) and are ended at open.
    add_column(h, "connections", "keyset", "TEXT")?;
    add_column(h, "connections", "mode", "TEXT")?;
    add_column(h, "connections", "digest", "BLOB")?;
    add_column(h, "keysets", "resource_ids", "TEXT NOT NULL DEFAULT '[]'")
}

/// Adds `column` to the SQLite `table` unless it has it.
fn add_column(h: &mut Handle<'_>, table: &str, column: &str, decl: &str) -> Result<(), DbError> {
    let names = h.query(&format!("PRAGMA table_info({table})"), params![])?;
    let mut has = false;
    for r in &names {
        has |= r.get::<String>(1)? == column;
    }
    if !has {
        h.batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_rise_by_one_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i64::try_from(i).unwrap() + 1, "{}", m.name);
        }
    }

    #[test]
    fn postgres_spelling_leaves_no_sqlite_types() {
        for m in MIGRATIONS {
            let pg = postgres_ddl(m.sql);
            assert!(
                !pg.contains("BLOB") && !pg.contains("AUTOINCREMENT"),
                "{}",
                m.name
            );
        }
    }
}
