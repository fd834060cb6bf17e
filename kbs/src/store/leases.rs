//! Work only one broker may do at a time among replicas of one database, and
//! the counters that tell the one doing it that something changed.
//!
//! A lease is a row naming its holder and when it lapses. Its holder renews
//! it well before then; anyone may take it once it has lapsed, so a holder
//! that died (or lost the database) is replaced within one lease period. The
//! take-or-renew is one statement, atomic on both databases. Time is the
//! database's clients' own (seconds): replicas' clocks must agree to within a
//! small part of the lease, as NTP keeps them.

use super::db::{params, DbError, Handle};
use super::{now, Store, StoreError};

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
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ?4",
                params![name, holder, t.saturating_add(ttl_secs), t],
            )
            .map(|n| n == 1)
        })
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
        let t = now();
        self.with(|c| {
            c.query_opt(
                "SELECT holder, expires_at FROM leases WHERE name = ?1 AND expires_at >= ?2",
                params![name, t],
            )?
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
