//! What Trustee's reference values are made of, beyond the digests: the
//! platform TCB each SNP node reports, the operator's TCB minimums, and the
//! SNP measurements that count. Every change is announced to the writer that
//! keeps Trustee in step.

use super::db::{params, DbError};
use super::leases::{bump, REFERENCE_COUNTER};
use super::{now, Store, StoreError};

/// Where the operator's TCB minimums are kept in `meta`.
const PIN_KEY: &str = "trustee-tcb-pin";

/// The security versions of an SNP platform's TCB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlatformTcb {
    /// Boot loader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// CPU microcode patch level.
    pub microcode: u8,
}

/// A node's reported TCB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTcb {
    /// The node.
    pub node: String,
    /// What it reported.
    pub tcb: PlatformTcb,
    /// Its product name, for messages.
    pub product: String,
    /// When (Unix seconds).
    pub reported_at: i64,
}

/// The operator's minimums. An unset field follows what nodes report under
/// open registration, and is empty (no value affirmed) under approved
/// registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcbPin {
    /// Minimum boot loader SVN.
    pub bootloader: Option<u8>,
    /// Minimum TEE SVN.
    pub tee: Option<u8>,
    /// Minimum SNP SVN.
    pub snp: Option<u8>,
    /// Minimum microcode level.
    pub microcode: Option<u8>,
}

impl TcbPin {
    /// Whether no field is pinned.
    pub fn is_empty(&self) -> bool {
        *self == TcbPin::default()
    }
}

impl Store {
    /// Announces a change of what Trustee's reference values are made of:
    /// one committed through this store, or one through another broker on
    /// the same database, seen in its reference counter.
    pub(crate) fn reference_changed(&self) {
        self.reference_changes
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver told of every committed change of SNP digests, reported
    /// TCBs or TCB pins.
    pub fn subscribe_reference_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reference_changes.subscribe()
    }

    /// Every distinct SNP launch measurement that counts, lowercase hex,
    /// sorted: operator and derived digests always, a node's own only when
    /// `honour_node` (open registration).
    pub fn snp_measurements(&self, honour_node: bool) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT DISTINCT digest FROM digests WHERE mode = 'snp' \
                 AND (origin != 'node' OR ?1) ORDER BY digest",
                params![honour_node],
            )?
            .iter()
            .map(|r| r.get::<Vec<u8>>(0).map(|d| super::hex(&d)))
            .collect()
        })
    }

    /// Records the TCB `node` reported with its SNP launches.
    pub fn set_node_tcb(
        &self,
        node: &str,
        tcb: &PlatformTcb,
        product: &str,
    ) -> Result<(), StoreError> {
        let changed = self.transact(|c| {
            let old: Option<(u8, u8, u8, u8)> = c
                .query_opt(
                    "SELECT bootloader, tee, snp, microcode FROM platform_tcbs WHERE node = ?1",
                    params![node],
                )?
                .map(|r| Ok::<_, DbError>((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .transpose()?;
            c.execute(
                "INSERT INTO platform_tcbs \
                 (node, bootloader, tee, snp, microcode, product, reported_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (node) DO UPDATE SET bootloader = excluded.bootloader, \
                 tee = excluded.tee, snp = excluded.snp, microcode = excluded.microcode, \
                 product = excluded.product, reported_at = excluded.reported_at",
                params![
                    node,
                    tcb.bootloader,
                    tcb.tee,
                    tcb.snp,
                    tcb.microcode,
                    product,
                    now()
                ],
            )?;
            let changed = old != Some((tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode));
            if changed {
                bump(c, REFERENCE_COUNTER)?;
            }
            Ok(changed)
        })?;
        if changed {
            self.reference_changed();
        }
        Ok(())
    }

    /// Forgets the TCB `node` reported.
    pub fn clear_node_tcb(&self, node: &str) -> Result<(), StoreError> {
        let removed = self.transact(|c| {
            let n = c.execute("DELETE FROM platform_tcbs WHERE node = ?1", params![node])?;
            if n > 0 {
                bump(c, REFERENCE_COUNTER)?;
            }
            Ok(n)
        })?;
        if removed > 0 {
            self.reference_changed();
        }
        Ok(())
    }

    /// The TCBs reported by nodes that still have SNP digests registered,
    /// by node.
    pub fn node_tcbs(&self) -> Result<Vec<NodeTcb>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT node, bootloader, tee, snp, microcode, product, reported_at \
                 FROM platform_tcbs t WHERE EXISTS \
                 (SELECT 1 FROM digests d WHERE d.node = t.node AND d.mode = 'snp') \
                 ORDER BY node",
                params![],
            )?
            .iter()
            .map(|r| {
                Ok(NodeTcb {
                    node: r.get(0)?,
                    tcb: PlatformTcb {
                        bootloader: r.get(1)?,
                        tee: r.get(2)?,
                        snp: r.get(3)?,
                        microcode: r.get(4)?,
                    },
                    product: r.get(5)?,
                    reported_at: r.get(6)?,
                })
            })
            .collect()
        })
    }

    /// The operator's TCB minimums (none pinned when never set).
    pub fn tcb_pin(&self) -> Result<TcbPin, StoreError> {
        let raw: Option<Vec<u8>> = self.with(|c| {
            c.query_opt("SELECT value FROM meta WHERE name = ?1", params![PIN_KEY])?
                .map(|r| r.get(0))
                .transpose()
        })?;
        match raw {
            None => Ok(TcbPin::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| self.corrupt("the TCB pin")),
        }
    }

    /// Sets the operator's TCB minimums; an empty pin removes them.
    pub fn set_tcb_pin(&self, pin: &TcbPin) -> Result<(), StoreError> {
        let value = serde_json::to_vec(pin).unwrap_or_default();
        self.transact(|c| {
            if pin.is_empty() {
                c.execute("DELETE FROM meta WHERE name = ?1", params![PIN_KEY])?;
            } else {
                c.execute(
                    "INSERT INTO meta (name, value) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    params![PIN_KEY, value],
                )?;
            }
            bump(c, REFERENCE_COUNTER)
        })?;
        self.reference_changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DigestRecord, Origin};
    use super::*;

    fn snp(byte: u8) -> (Vec<u8>, DigestRecord) {
        (
            vec![byte; 48],
            DigestRecord {
                mode: "snp".into(),
                digest: String::new(),
                vcpus: 1,
                vcpu_type: String::new(),
                config: "c".into(),
            },
        )
    }

    #[test]
    fn measurements_tcbs_and_pins_are_kept_and_announced() {
        crate::store::test_db::each("measurements_tcbs_and_pins_are_kept_and_announced", |db| {
            let store = db.open();
            let mut changes = store.subscribe_reference_changes();
            store
                .replace_digests("n1", "kata-qemu-snp", &[snp(0xab)], Origin::Node, &[])
                .unwrap();
            store
                .replace_digests("n2", "kata-qemu-snp", &[snp(0x01)], Origin::Derived, &[])
                .unwrap();
            assert!(changes.has_changed().unwrap());
            changes.mark_unchanged();
            assert_eq!(store.snp_measurements(false).unwrap(), [hex_of(0x01)]);
            assert_eq!(
                store.snp_measurements(true).unwrap(),
                [hex_of(0x01), hex_of(0xab)]
            );

            let tcb = PlatformTcb {
                bootloader: 10,
                tee: 0,
                snp: 23,
                microcode: 213,
            };
            store.set_node_tcb("n1", &tcb, "Milan").unwrap();
            assert!(changes.has_changed().unwrap());
            changes.mark_unchanged();
            // The same report again is no change.
            store.set_node_tcb("n1", &tcb, "Milan").unwrap();
            assert!(!changes.has_changed().unwrap());
            assert_eq!(store.node_tcbs().unwrap().len(), 1);
            // A node without SNP digests does not count.
            store.set_node_tcb("n3", &tcb, "Milan").unwrap();
            assert_eq!(store.node_tcbs().unwrap().len(), 1);
            store.clear_node_tcb("n1").unwrap();
            assert!(changes.has_changed().unwrap());
            assert!(store.node_tcbs().unwrap().is_empty());
            store.set_node_tcb("n1", &tcb, "Milan").unwrap();
            store
                .replace_digests("n1", "kata-qemu-snp", &[], Origin::Node, &[])
                .unwrap();
            assert!(store.node_tcbs().unwrap().is_empty());

            let pin = TcbPin {
                snp: Some(22),
                ..TcbPin::default()
            };
            store.set_tcb_pin(&pin).unwrap();
            assert_eq!(store.tcb_pin().unwrap(), pin);
            store.set_tcb_pin(&TcbPin::default()).unwrap();
            assert!(store.tcb_pin().unwrap().is_empty());
        });
    }

    fn hex_of(byte: u8) -> String {
        super::super::hex(&[byte; 48])
    }
}
