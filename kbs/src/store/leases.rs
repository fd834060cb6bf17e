//! Work only one broker may do at a time among replicas of one database, and
//! the counters that tell the one doing it that something changed.
//!
//! A lease is a row naming its holder and when it lapses. Its holder renews
//! it well before then; anyone may take it once it has lapsed, so a holder
//! that died (or lost the database) is replaced within one lease period. The
//! take-or-renew is one statement, atomic on both databases. Time is the
//! database's own clock (seconds), so replicas' clocks need not agree.

use super::db::{params, DbError, Handle};
use super::{Store, StoreError};

/// The lease of the broker that writes Trustee's reference values.
pub const TRUSTEE_WRITER: &str = "trustee-writer";

/// The counter bumped with every change of what Trustee's reference values
/// are made of (digests, reported TCBs, pins).
pub const REFERENCE_COUNTER: &str = "reference";

/// Adds one to the counter `name`, in the caller's transaction.
pub(super) fn bump(h: &mut Handle<'_>, name: &str) -> Result<(), DbError> {
    h.execute(
        "INSERT INTO counters (name, value) VALUES (?1, 1) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
        params![name],
    )
    .map(drop)
}

impl Store {
    /// Takes the lease `name` for `holder` for `ttl_secs`, or renews it if
    /// `holder` has it; whether `holder` holds it now.
    pub fn take_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, StoreError> {
        let now = self.db_now();
        let sql = format!(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, {now} + ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < {now}"
        );
        self.with(|c| {
            c.execute(&sql, params![name, holder, ttl_secs])
                .map(|n| n == 1)
        })
    }

    /// The database's clock in Unix seconds, as SQL.
    fn db_now(&self) -> &'static str {
        match self.dialect() {
            super::db::Dialect::Sqlite => "CAST(strftime('%s', 'now') AS INTEGER)",
            super::db::Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)",
        }
    }

    /// Gives up the lease `name` if `holder` has it, so that another may take
    /// it at once rather than after it lapses.
    pub fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )
            .map(drop)
        })
    }

    /// Who holds the lease `name` and until when (Unix seconds), if anyone
    /// took it and it has not lapsed.
    pub fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>, StoreError> {
        let sql = format!(
            "SELECT holder, expires_at FROM leases WHERE name = ?1 AND expires_at >= {}",
            self.db_now()
        );
        self.with(|c| {
            c.query_opt(&sql, params![name])?
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .transpose()
        })
    }

    /// The counter `name` (0 before its first bump).
    pub fn counter(&self, name: &str) -> Result<i64, StoreError> {
        self.with(|c| {
            c.query_opt("SELECT value FROM counters WHERE name = ?1", params![name])?
                .map(|r| r.get(0))
                .transpose()
                .map(Option::unwrap_or_default)
        })
    }
}
