//! SEV-SNP guests' reports: the key their nonces are MACed with, the
//! registered launches a measurement matches, and the verified reports, one
//! per nonce, each with its attestation record.

use super::db::params;
use super::{hex, insert_record, now, NewRecord, Store, StoreError};

/// Where the nonce key is kept in `meta`.
const NONCE_KEY: &str = "snp-nonce-key";

/// Most launches a lookup returns.
pub const MAX_LAUNCHES: u32 = 64;

/// A registered launch, as a guest's lookup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpLaunch {
    /// The node that registered it.
    pub node: String,
    /// Its runtime class.
    pub runtime_class: String,
    /// vCPUs.
    pub vcpus: u32,
    /// vCPU type or signature.
    pub vcpu_type: String,
    /// The Kata configuration it comes from.
    pub config: String,
}

impl SnpLaunch {
    /// One line for a guest: class, vCPUs and configuration (no node name:
    /// guests are not authenticated callers).
    pub fn describe_for_guest(&self) -> String {
        format!(
            "{} {} vCPU{} ({})",
            self.runtime_class,
            self.vcpus,
            if self.vcpus == 1 { "" } else { "s" },
            self.config
        )
    }

    /// One line for operators: node, class, vCPUs and configuration.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} vCPU{} ({})",
            self.node,
            self.runtime_class,
            self.vcpus,
            if self.vcpus == 1 { "" } else { "s" },
            self.config
        )
    }
}

/// A verified SNP guest report, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnpGuestReport {
    /// The broker's nonce the body carried (unique: a second use is a replay).
    pub nonce: Vec<u8>,
    /// The chip's id (64 bytes), or zeros when the platform masks it.
    pub chip_id: Vec<u8>,
    /// SHA-256 of the certificate of the key that signed the report (VCEK or
    /// VLEK), hexadecimal: what the per-chip limit counts by, since masked
    /// chip ids are all zeros.
    pub signer: String,
    /// The launch measurement.
    pub measurement: Vec<u8>,
    /// "confirmed" or "path_broken".
    pub status: String,
    /// The guest's failed checks and the broker's.
    pub failed_checks: Vec<String>,
    /// The client's self-description.
    pub client: String,
    /// The exact body, kept for audit.
    pub body: Vec<u8>,
    /// The attestation report, kept for audit.
    pub report: Vec<u8>,
}

/// What became of a request to store an SNP guest report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpReportOutcome {
    /// Stored; the Unix time it was recorded at.
    Recorded(i64),
    /// A report with this nonce is stored already; nothing changed.
    Replayed,
    /// The signing key has [`MAX_PER_CHIP_HOUR`] reports in the last hour
    /// already; nothing changed.
    TooMany,
}

/// Most reports recorded per signing key (chip) in any hour. A guest reports
/// once per boot; anyone can run a registered (public) image on a chip of
/// their own, so this bounds what one chip adds to the database (with
/// bodies of at most 16 KiB, about 25 MB a day).
pub const MAX_PER_CHIP_HOUR: i64 = 60;

impl Store {
    /// The key nonces are MACed with: made on first use and kept, so that
    /// every broker process over this database accepts the others' nonces.
    pub fn snp_nonce_key(&self) -> Result<[u8; 32], StoreError> {
        let fresh = {
            use rand_core::RngCore as _;
            let mut k = [0u8; 32];
            rand_core::OsRng.fill_bytes(&mut k);
            k
        };
        let stored: Vec<u8> = self.with(|c| {
            c.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![NONCE_KEY, fresh],
            )?;
            c.query_one("SELECT value FROM meta WHERE name = ?1", params![NONCE_KEY])?
                .get(0)
        })?;
        <[u8; 32]>::try_from(stored.as_slice()).map_err(|_| self.corrupt("the SNP nonce key"))
    }

    /// The registered SNP launches with `measurement` that count: operator
    /// and derived always, a node's own only when `honour_node`; at most
    /// [`MAX_LAUNCHES`].
    pub fn snp_launches(
        &self,
        measurement: &[u8],
        honour_node: bool,
    ) -> Result<Vec<SnpLaunch>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT node, runtime_class, vcpus, vcpu_type, config FROM digests \
                 WHERE digest = ?1 AND mode = 'snp' AND (origin != 'node' OR ?2) \
                 ORDER BY node, runtime_class, vcpus LIMIT ?3",
                params![measurement, honour_node, MAX_LAUNCHES],
            )?
            .iter()
            .map(|r| {
                Ok(SnpLaunch {
                    node: r.get(0)?,
                    runtime_class: r.get(1)?,
                    vcpus: r.get(2)?,
                    vcpu_type: r.get(3)?,
                    config: r.get(4)?,
                })
            })
            .collect()
        })
    }

    /// Stores a verified SNP guest report and its record in one
    /// transaction, unless its nonce was used already.
    pub fn record_snp_report(
        &self,
        report: &SnpGuestReport,
        record: &NewRecord<'_>,
    ) -> Result<SnpReportOutcome, StoreError> {
        let t = now();
        let failed = serde_json::to_string(&report.failed_checks).unwrap_or_else(|_| "[]".into());
        // Reports of one signing key take turns (its hourly count is read
        // before the insert); a nonce is unique across all of them, and a
        // concurrent insert of the same nonce fails on that.
        let outcome = self.transact_with(super::postgres::TxLock::SharedWith(&report.signer), |tx| {
            let used = tx
                .query_opt(
                    "SELECT id FROM snp_guest_reports WHERE nonce = ?1",
                    params![report.nonce],
                )?
                .is_some();
            if used {
                return Ok(SnpReportOutcome::Replayed);
            }
            let recent: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM snp_guest_reports WHERE signer = ?1 AND at > ?2",
                    params![report.signer, t.saturating_sub(3600)],
                )?
                .get(0)?;
            if recent >= MAX_PER_CHIP_HOUR {
                return Ok(SnpReportOutcome::TooMany);
            }
            let record_id = insert_record(tx, t, record)?;
            tx.execute(
                "INSERT INTO snp_guest_reports (nonce, record_id, at, chip_id, signer, measurement, \
                 status, failed_checks, client, body, report) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    report.nonce,
                    record_id,
                    t,
                    hex(&report.chip_id),
                    report.signer,
                    hex(&report.measurement),
                    report.status,
                    failed,
                    report.client,
                    report.body,
                    report.report
                ],
            )?;
            Ok(SnpReportOutcome::Recorded(t))
        });
        match outcome {
            Err(StoreError::Db { source, .. }) if source.is_unique_violation() => {
                Ok(SnpReportOutcome::Replayed)
            }
            other => other,
        }
    }

    /// How many SNP guest reports are stored, by status.
    pub fn count_snp_reports(&self, status: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_one(
                "SELECT COUNT(*) FROM snp_guest_reports WHERE status = ?1",
                params![status],
            )?
            .get(0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_honour_node_digests_only_when_asked_and_skip_other_modes() {
        use crate::store::{DigestRecord, Origin};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = |mode: &str, digest: &[u8], vcpus| DigestRecord {
            mode: mode.into(),
            digest: hex(digest),
            vcpus,
            vcpu_type: "EPYC-v4".into(),
            config: "/etc/kata/configuration-qemu-snp.toml".into(),
        };
        let m = vec![0x5a; 48];
        store
            .replace_digests(
                "node-a",
                "kata-qemu-snp",
                &[(m.clone(), record("snp", &m, 2))],
                Origin::Node,
                &[],
            )
            .unwrap();
        store
            .replace_digests(
                "node-b",
                "kata-qemu-snp",
                &[
                    (m.clone(), record("snp", &m, 4)),
                    (m[..32].to_vec(), record("sev", &m[..32], 4)),
                ],
                Origin::Operator,
                &[],
            )
            .unwrap();
        let approved = store.snp_launches(&m, false).unwrap();
        assert_eq!(approved.len(), 1);
        assert_eq!(approved[0].node, "node-b");
        assert_eq!(
            approved[0].describe_for_guest(),
            "kata-qemu-snp 4 vCPUs (/etc/kata/configuration-qemu-snp.toml)"
        );
        assert_eq!(store.snp_launches(&m, true).unwrap().len(), 2);
        assert!(store.snp_launches(&[0x5b; 48], true).unwrap().is_empty());
        // An SEV digest never matches an SNP lookup.
        assert!(store.snp_launches(&m[..32], true).unwrap().is_empty());
    }

    fn report(nonce: u8) -> SnpGuestReport {
        SnpGuestReport {
            nonce: vec![nonce; 41],
            chip_id: vec![0xab; 64],
            signer: "a1".repeat(32),
            measurement: vec![0xcd; 48],
            status: "confirmed".into(),
            failed_checks: vec![],
            client: "guest-client test".into(),
            body: vec![1, 2, 3],
            report: vec![0; 1184],
        }
    }

    #[test]
    fn a_nonce_is_used_once_and_the_record_shows_the_chip() {
        crate::store::test_db::each("a_nonce_is_used_once_and_the_record_shows_the_chip", |db| {
            let store = db.open();
            let record = NewRecord {
                rpc: "SnpReport",
                ok: true,
                reason: "guest confirmed the secret path",
                digest: &hex(&[0xcd; 48]),
                ..Default::default()
            };
            assert!(matches!(
                store.record_snp_report(&report(1), &record).unwrap(),
                SnpReportOutcome::Recorded(_)
            ));
            assert_eq!(
                store.record_snp_report(&report(1), &record).unwrap(),
                SnpReportOutcome::Replayed
            );
            // One chip fills its hour; another is not held up by it.
            let limit = u8::try_from(MAX_PER_CHIP_HOUR).unwrap();
            for n in 100..(100 + limit - 1) {
                assert!(matches!(
                    store.record_snp_report(&report(n), &record).unwrap(),
                    SnpReportOutcome::Recorded(_)
                ));
            }
            assert_eq!(
                store.record_snp_report(&report(200), &record).unwrap(),
                SnpReportOutcome::TooMany
            );
            let mut other_chip = report(201);
            other_chip.signer = "b2".repeat(32);
            assert!(matches!(
                store.record_snp_report(&other_chip, &record).unwrap(),
                SnpReportOutcome::Recorded(_)
            ));
            store
                .with(|c| c.execute("DELETE FROM snp_guest_reports WHERE id > 1", params![]))
                .unwrap();
            store
                .with(|c| c.execute("DELETE FROM records WHERE id > 1", params![]))
                .unwrap();
            let mut broken = report(2);
            broken.status = "path_broken".into();
            broken.failed_checks = vec!["broker: measurement registered".into()];
            store.record_snp_report(&broken, &record).unwrap();
            assert_eq!(store.count_snp_reports("confirmed").unwrap(), 1);
            assert_eq!(store.count_snp_reports("path_broken").unwrap(), 1);
            let records = store.records(0, 10).unwrap();
            assert_eq!(records.len(), 2, "the replay adds no record");
            assert_eq!(records[0].guest_status, "confirmed");
            assert_eq!(records[0].tee, "snp");
            assert_eq!(records[0].chip_id, hex(&[0xab; 64]));
            assert_eq!(records[1].guest_status, "path_broken");
            assert_eq!(records[1].failed_checks, broken.failed_checks);
            // The key is made once and kept.
            let k = store.snp_nonce_key().unwrap();
            assert_eq!(store.snp_nonce_key().unwrap(), k);
            drop(store);
            assert_eq!(db.open().snp_nonce_key().unwrap(), k);
        });
    }
}
