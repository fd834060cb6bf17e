//! The operator's approvals and the admin tokens, in the broker's database.
//!
//! An approval is keyed by kind, id and runtime class (empty but for Kata
//! configurations). Revoking one removes, in the same transaction, every
//! registration derived from it: the digests of each node and runtime class
//! whose recorded inputs name it. Tokens are stored as SHA-256 of the token
//! only; the token itself is shown once, when it is made.

use super::db::{params, DbError, Row};
use super::{now, Store, StoreError};

/// One approval as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    /// `firmware`, `kernel`, `initrd`, `kata-config`, `host-cpu`, `host-kernel`.
    pub kind: String,
    /// The approved value's name: SHA-256 (hex), signature or release.
    pub id: String,
    /// For `kata-config`: the runtime class; empty otherwise.
    pub runtime_class: String,
    /// What the approval allows, as JSON the broker wrote.
    pub terms: String,
    /// Who approved it.
    pub approved_by: String,
    /// Unix seconds.
    pub approved_at: i64,
    /// The operator's note.
    pub note: String,
}

/// One admin token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public id.
    pub id: String,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// `operator` or `node`.
    pub role: String,
    /// For a node token, its node.
    pub node: String,
    /// The operator's note.
    pub note: String,
    /// Who made it.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Stores (or replaces) an approval and its data (a firmware image or a
    /// configuration's text), stamped now.
    pub fn approve(&self, row: &ApprovalRow, data: Option<&[u8]>) -> Result<i64, StoreError> {
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO approvals \
                 (kind, id, runtime_class, terms, data, approved_by, approved_at, note) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (kind, id, runtime_class) DO UPDATE SET terms = excluded.terms, \
                 data = excluded.data, approved_by = excluded.approved_by, \
                 approved_at = excluded.approved_at, note = excluded.note",
                params![
                    row.kind,
                    row.id,
                    row.runtime_class,
                    row.terms,
                    data,
                    row.approved_by,
                    t,
                    row.note
                ],
            )
            .map(|_| t)
        })
    }

    /// Every approval, by kind and id.
    pub fn approvals(&self) -> Result<Vec<ApprovalRow>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT kind, id, runtime_class, terms, approved_by, approved_at, note \
                 FROM approvals ORDER BY kind, id, runtime_class",
                params![],
            )?
            .iter()
            .map(approval_row)
            .collect()
        })
    }

    /// The approval of `kind` and `id` for `runtime_class` (empty for the
    /// kinds that have none).
    pub fn approval(
        &self,
        kind: &str,
        id: &str,
        runtime_class: &str,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT kind, id, runtime_class, terms, approved_by, approved_at, note \
                 FROM approvals WHERE kind = ?1 AND id = ?2 AND runtime_class = ?3",
                params![kind, id, runtime_class],
            )?
            .as_ref()
            .map(approval_row)
            .transpose()
        })
    }

    /// The data kept with an approval.
    pub fn approval_data(
        &self,
        kind: &str,
        id: &str,
        runtime_class: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT data FROM approvals WHERE kind = ?1 AND id = ?2 AND runtime_class = ?3",
                params![kind, id, runtime_class],
            )?
            .map(|r| r.get::<Option<Vec<u8>>>(0))
            .transpose()
            .map(Option::flatten)
        })
    }

    /// Removes the approvals of `kind` and `id` (only `runtime_class`'s, when
    /// given) and every registration derived from them; returns how many
    /// approvals and digests went.
    pub fn revoke(
        &self,
        kind: &str,
        id: &str,
        runtime_class: Option<&str>,
    ) -> Result<(usize, usize), StoreError> {
        self.transact(|tx| {
            let revoked = match runtime_class {
                Some(class) => tx.execute(
                    "DELETE FROM approvals WHERE kind = ?1 AND id = ?2 AND runtime_class = ?3",
                    params![kind, id, class],
                )?,
                None => tx.execute(
                    "DELETE FROM approvals WHERE kind = ?1 AND id = ?2",
                    params![kind, id],
                )?,
            };
            // A Kata configuration's registrations are recorded under the class
            // it was approved for and its id, as `class:id`: revoking one class's
            // approval leaves the other classes' registrations.
            let (condition, value) = match (kind, runtime_class) {
                ("kata-config", Some(class)) => ("id = ?2", format!("{class}:{id}")),
                // Ids of configurations are hexadecimal: no LIKE wildcards.
                ("kata-config", None) => ("id LIKE '%:' || ?2", id.to_string()),
                _ => ("id = ?2", id.to_string()),
            };
            let registrations: Vec<(String, String)> = {
                tx.query(
                    &format!(
                        "SELECT DISTINCT node, runtime_class FROM registration_inputs \
                         WHERE kind = ?1 AND {condition}"
                    ),
                    params![kind, value],
                )?
                .iter()
                .map(|r| Ok((r.get(0)?, r.get(1)?)))
                .collect::<Result<_, DbError>>()?
            };
            let mut digests = 0;
            for (node, class) in &registrations {
                digests += tx.execute(
                    "DELETE FROM digests WHERE node = ?1 AND runtime_class = ?2 AND origin = 'derived'",
                    params![node, class],
                )?;
                tx.execute(
                    "DELETE FROM registration_inputs WHERE node = ?1 AND runtime_class = ?2",
                    params![node, class],
                )?;
            }
            tx.batch(super::END_UNREGISTERED_CONNECTIONS)?;
            if digests > 0 {
                super::leases::bump(tx, super::leases::REFERENCE_COUNTER)?;
            }
            Ok((revoked, digests))
        })
        .inspect(|(_, digests)| {
            if *digests > 0 {
                self.reference_changed();
            }
        })
    }

    /// Stores a new token (by its hash).
    pub fn insert_token(&self, row: &TokenRow) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (id, hash, role, node, note, created_by, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    row.id,
                    &row.hash[..],
                    row.role,
                    row.node,
                    row.note,
                    row.created_by,
                    row.created_at
                ],
            )
            .map(drop)
        })
    }

    /// Every live token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows: Vec<(TokenRow, Vec<u8>)> = self.with(|c| {
            c.query(
                "SELECT id, hash, role, node, note, created_by, created_at FROM tokens \
                 ORDER BY created_at, id",
                params![],
            )?
            .iter()
            .map(|r| {
                Ok((
                    TokenRow {
                        id: r.get(0)?,
                        hash: [0; 32],
                        role: r.get(2)?,
                        node: r.get(3)?,
                        note: r.get(4)?,
                        created_by: r.get(5)?,
                        created_at: r.get(6)?,
                    },
                    r.get::<Vec<u8>>(1)?,
                ))
            })
            .collect()
        })?;
        rows.into_iter()
            .map(|(mut row, hash)| {
                row.hash = hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| self.corrupt("token hash"))?;
                Ok(row)
            })
            .collect()
    }

    /// The token whose hash is `hash`, if it is live.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT id, role, node, note, created_by, created_at FROM tokens WHERE hash = ?1",
                params![hash],
            )?
            .map(|r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    hash: *hash,
                    role: r.get(1)?,
                    node: r.get(2)?,
                    note: r.get(3)?,
                    created_by: r.get(4)?,
                    created_at: r.get(5)?,
                })
            })
            .transpose()
        })?;
        Ok(row)
    }

    /// Deletes a token; whether it existed.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM tokens WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
    }
}

fn approval_row(r: &Row) -> Result<ApprovalRow, DbError> {
    Ok(ApprovalRow {
        kind: r.get(0)?,
        id: r.get(1)?,
        runtime_class: r.get(2)?,
        terms: r.get(3)?,
        approved_by: r.get(4)?,
        approved_at: r.get(5)?,
        note: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DigestRecord, Origin};

    fn row(kind: &str, id: &str, class: &str) -> ApprovalRow {
        ApprovalRow {
            kind: kind.into(),
            id: id.into(),
            runtime_class: class.into(),
            terms: "{}".into(),
            approved_by: "uid 0".into(),
            approved_at: 0,
            note: String::new(),
        }
    }

    #[test]
    fn a_registration_from_an_approval_revoked_meanwhile_stores_nothing() {
        crate::store::test_db::each("registration_after_revocation", |db| {
            let s = db.open();
            s.approve(&row("kernel", "aa", ""), None).unwrap();
            s.approve(&row("kata-config", "cc", "kata-qemu-snp"), Some(b"toml"))
                .unwrap();
            let digests = vec![(
                vec![1; 48],
                DigestRecord {
                    mode: "snp".into(),
                    digest: "01".into(),
                    vcpus: 1,
                    vcpu_type: "EPYC-v4".into(),
                    config: String::new(),
                },
            )];
            let inputs = vec![
                ("kernel".to_string(), "aa".to_string()),
                ("kata-config".to_string(), "kata-qemu-snp:cc".to_string()),
            ];
            // Derived while both were approved; stored after one went.
            s.revoke("kata-config", "cc", Some("kata-qemu-snp"))
                .unwrap();
            let e = s
                .replace_digests("n1", "kata-qemu-snp", &digests, Origin::Derived, &inputs)
                .unwrap_err();
            assert!(
                matches!(&e, StoreError::InputRevoked { kind, id } if kind == "kata-config" && id == "cc"),
                "{e}"
            );
            assert!(s.list_digests().unwrap().is_empty());
            // With it approved again, the same registration is stored.
            s.approve(&row("kata-config", "cc", "kata-qemu-snp"), Some(b"toml"))
                .unwrap();
            s.replace_digests("n1", "kata-qemu-snp", &digests, Origin::Derived, &inputs)
                .unwrap();
            assert_eq!(s.list_digests().unwrap().len(), 1);
        });
    }

    #[test]
    fn revoking_an_input_removes_the_registrations_derived_from_it_only() {
        crate::store::test_db::each(
            "revoking_an_input_removes_the_registrations_derived_from_it_only",
            |db| {
                let s = db.open();
                s.approve(&row("kernel", "aa", ""), None).unwrap();
                s.approve(&row("kata-config", "cc", "kata-qemu-snp"), Some(b"toml"))
                    .unwrap();
                s.approve(&row("kata-config", "cc", "kata-qemu-snp-2"), Some(b"toml"))
                    .unwrap();
                assert_eq!(
                    s.approval_data("kata-config", "cc", "kata-qemu-snp")
                        .unwrap(),
                    Some(b"toml".to_vec())
                );
                let rec = DigestRecord {
                    mode: "snp".into(),
                    digest: "01".into(),
                    vcpus: 1,
                    vcpu_type: "EPYC-v4".into(),
                    config: String::new(),
                };
                let inputs = |class: &str| {
                    vec![
                        ("kernel".to_string(), "aa".to_string()),
                        ("kata-config".to_string(), format!("{class}:cc")),
                    ]
                };
                s.replace_digests(
                    "n1",
                    "kata-qemu-snp",
                    &[(vec![1; 48], rec.clone())],
                    Origin::Derived,
                    &inputs("kata-qemu-snp"),
                )
                .unwrap();
                s.replace_digests(
                    "n2",
                    "kata-qemu-snp-2",
                    &[(vec![2; 48], rec.clone())],
                    Origin::Derived,
                    &inputs("kata-qemu-snp-2"),
                )
                .unwrap();
                s.replace_digests("op", "x", &[(vec![3; 48], rec)], Origin::Operator, &[])
                    .unwrap();
                // An online connection opened by a launch of each digest.
                for d in 1..=3u8 {
                    let scope = super::super::ConnectionScope {
                        launch_id: format!("launch-{d}"),
                        keyset: "KEYSET-1".into(),
                        mode: "snp".into(),
                        digest: vec![d; 48],
                    };
                    s.insert_connection(&format!("client-{d}"), &[d; 32], &scope, 3600)
                        .unwrap();
                }
                assert_eq!(
                    s.revoke("kata-config", "cc", Some("kata-qemu-snp"))
                        .unwrap(),
                    (1, 1)
                );
                // Revoking ends the connections of the digests it removed.
                assert!(s.connection("client-1").unwrap().is_none());
                assert!(s.connection("client-2").unwrap().is_some());
                assert!(!s.digest_registered("snp", &[1; 48], true).unwrap());
                assert!(s.digest_registered("snp", &[2; 48], false).unwrap());
                assert_eq!(s.revoke("kernel", "aa", None).unwrap(), (1, 1));
                assert!(!s.digest_registered("snp", &[2; 48], true).unwrap());
                assert!(s.connection("client-2").unwrap().is_none());
                assert!(s.digest_registered("snp", &[3; 48], false).unwrap());
                let kept = s.connection("client-3").unwrap().unwrap();
                assert_eq!(*kept.key, [3; 32]);
                assert_eq!(kept.scope.keyset, "KEYSET-1");
                assert_eq!(s.revoke("kernel", "aa", None).unwrap(), (0, 0));
                assert_eq!(s.approvals().unwrap().len(), 1);
            },
        );
    }

    #[test]
    fn tokens_are_kept_by_hash_and_revoked_by_id() {
        crate::store::test_db::each("tokens_are_kept_by_hash_and_revoked_by_id", |db| {
            let s = db.open();
            let t = TokenRow {
                id: "t1".into(),
                hash: [7; 32],
                role: "node".into(),
                node: "n1".into(),
                note: String::new(),
                created_by: "uid 0".into(),
                created_at: 1,
            };
            s.insert_token(&t).unwrap();
            assert!(s.insert_token(&t).is_err(), "ids and hashes are unique");
            assert_eq!(s.tokens().unwrap(), vec![t]);
            assert!(s.revoke_token("t1").unwrap());
            assert!(!s.revoke_token("t1").unwrap());
            assert!(s.tokens().unwrap().is_empty());
        });
    }
}
