//! What Trustee should hold: the reference values the broker owns, made from
//! what the fleet registered, and how they differ from what Trustee holds.
//!
//! Trustee's RVPS keeps one list per name and a registration replaces the
//! list, so the broker always sends the whole union for every name it owns,
//! in one provenance message. Measurements are lowercase hex strings; TCB
//! values are integers, because the default attestation policy compares them
//! with the report's fields by membership (`x in query_reference_value(..)`).
//! A TCB minimum is therefore written as every value from the minimum up to
//! 255: membership then means "at least".

use crate::store::{NodeTcb, PlatformTcb, TcbPin};
use base64::Engine as _;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The launch measurement name.
pub const MEASUREMENT: &str = "snp_launch_measurement";
/// The boot loader SVN name.
pub const BOOTLOADER: &str = "snp_bootloader";
/// The TEE SVN name.
pub const TEE: &str = "snp_tee_svn";
/// The SNP firmware SVN name.
pub const SNP: &str = "snp_snp_svn";
/// The microcode level name.
pub const MICROCODE: &str = "snp_microcode";

/// Every name the broker owns, in the order shown.
pub const NAMES: [&str; 5] = [MEASUREMENT, BOOTLOADER, TEE, SNP, MICROCODE];

/// The lists Trustee should hold, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferenceValues(pub BTreeMap<String, Vec<Value>>);

/// One field of a TCB, for building its list.
fn field(t: &PlatformTcb, name: &str) -> u8 {
    match name {
        BOOTLOADER => t.bootloader,
        TEE => t.tee,
        SNP => t.snp,
        _ => t.microcode,
    }
}

fn pinned(p: &TcbPin, name: &str) -> Option<u8> {
    match name {
        BOOTLOADER => p.bootloader,
        TEE => p.tee,
        SNP => p.snp,
        _ => p.microcode,
    }
}

impl ReferenceValues {
    /// The values for the measurements that count, the TCBs nodes reported
    /// (when `honour_reported`: open registration) and the operator's pins,
    /// which win over reports field by field.
    pub fn desired(
        measurements: &[String],
        reported: &[NodeTcb],
        honour_reported: bool,
        pin: &TcbPin,
    ) -> ReferenceValues {
        let mut out = BTreeMap::new();
        let m: BTreeSet<String> = measurements
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        out.insert(
            MEASUREMENT.to_string(),
            m.into_iter().map(Value::String).collect(),
        );
        for name in [BOOTLOADER, TEE, SNP, MICROCODE] {
            let values: BTreeSet<u8> = match pinned(pin, name) {
                Some(min) => (min..=u8::MAX).collect(),
                None if honour_reported => reported.iter().map(|r| field(&r.tcb, name)).collect(),
                None => BTreeSet::new(),
            };
            out.insert(
                name.to_string(),
                values
                    .into_iter()
                    .map(|v| Value::from(u64::from(v)))
                    .collect(),
            );
        }
        ReferenceValues(out)
    }

    /// The provenance message that sets every name at once (Trustee's
    /// `sample` type: version 0.1.0, the payload standard base64 of the JSON
    /// map of names to lists).
    pub fn provenance_message(&self) -> String {
        let payload = serde_json::to_vec(&self.0).unwrap_or_default();
        serde_json::json!({
            "version": "0.1.0",
            "type": "sample",
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        })
        .to_string()
    }
}

/// How one name held by Trustee differs from what it should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Difference {
    /// The name.
    pub name: String,
    /// Trustee holds nothing under the name.
    pub absent: bool,
    /// Held but not a list (someone wrote another shape).
    pub malformed: bool,
    /// Wanted, not held (the first hundred).
    pub missing: Vec<Value>,
    /// Held, not wanted (the first hundred).
    pub extra: Vec<Value>,
    /// How many are missing.
    pub missing_count: usize,
    /// How many are held and not wanted.
    pub extra_count: usize,
}

impl Difference {
    /// A line for logs and status.
    pub fn describe(&self) -> String {
        if self.absent {
            return format!("{}: absent", self.name);
        }
        if self.malformed {
            return format!("{}: not a list", self.name);
        }
        let mut parts = Vec::new();
        if self.missing_count > 0 {
            parts.push(format!("{} missing", self.missing_count));
        }
        if self.extra_count > 0 {
            parts.push(format!("{} not ours", self.extra_count));
        }
        format!("{}: {}", self.name, parts.join(", "))
    }
}

/// Most values of one name worth comparing: more is not what the broker
/// wrote (a fleet has far fewer launches), and is treated as malformed.
pub const MAX_HELD_VALUES: usize = 100_000;
/// Values kept of a difference, for status.
const KEPT: usize = 100;

/// Canonical form of a value for comparison: strings exactly (Trustee's
/// policy compares them exactly), numbers by value.
fn canonical(v: &Value) -> String {
    match v {
        Value::String(s) => format!("s:{s}"),
        Value::Number(n) => format!("n:{n}"),
        other => format!("j:{other}"),
    }
}

/// How `held` (each name's value as read, `None` when absent) differs from
/// `want`, name by name; empty when Trustee holds exactly what it should, in
/// any order.
pub fn differences(
    want: &ReferenceValues,
    held: &BTreeMap<String, Option<Value>>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for (name, values) in &want.0 {
        let mut d = Difference {
            name: name.clone(),
            ..Difference::default()
        };
        match held.get(name).and_then(Option::as_ref) {
            None => {
                d.absent = true;
                d.missing_count = values.len();
                d.missing = values.iter().take(KEPT).cloned().collect();
            }
            Some(Value::Array(h)) if h.len() <= MAX_HELD_VALUES => {
                let have: BTreeSet<String> = h.iter().map(canonical).collect();
                let wanted: BTreeSet<String> = values.iter().map(canonical).collect();
                let missing: Vec<&Value> = values
                    .iter()
                    .filter(|v| !have.contains(&canonical(v)))
                    .collect();
                let extra: Vec<&Value> = h
                    .iter()
                    .filter(|v| !wanted.contains(&canonical(v)))
                    .collect();
                d.missing_count = missing.len();
                d.extra_count = extra.len();
                d.missing = missing.into_iter().take(KEPT).cloned().collect();
                d.extra = extra.into_iter().take(KEPT).cloned().collect();
            }
            Some(_) => d.malformed = true,
        }
        // An absent name that should be an empty list is no difference that
        // matters to a verifier, but it is written all the same.
        if d.absent || d.malformed || d.missing_count > 0 || d.extra_count > 0 {
            out.push(d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcb(node: &str, bootloader: u8, microcode: u8) -> NodeTcb {
        NodeTcb {
            node: node.into(),
            tcb: PlatformTcb {
                bootloader,
                tee: 0,
                snp: 23,
                microcode,
            },
            product: "Milan".into(),
            reported_at: 0,
        }
    }

    #[test]
    fn the_union_of_reports_and_the_pins_make_the_lists() {
        let m = vec!["AB".repeat(48), "01".repeat(48), "ab".repeat(48)];
        let reported = [tcb("a", 3, 209), tcb("b", 4, 213)];
        let v = ReferenceValues::desired(&m, &reported, true, &TcbPin::default());
        assert_eq!(
            v.0[MEASUREMENT],
            [Value::from("01".repeat(48)), Value::from("ab".repeat(48))]
        );
        assert_eq!(v.0[BOOTLOADER], [Value::from(3), Value::from(4)]);
        assert_eq!(v.0[SNP], [Value::from(23)]);
        // Under approved registration reports do not count; pins do, as
        // "at least".
        let pin = TcbPin {
            microcode: Some(250),
            ..TcbPin::default()
        };
        let v = ReferenceValues::desired(&m, &reported, false, &pin);
        assert!(v.0[BOOTLOADER].is_empty());
        assert_eq!(v.0[MICROCODE].len(), 6);
        assert_eq!(v.0[MICROCODE].first(), Some(&Value::from(250)));
        assert_eq!(v.0[MICROCODE].last(), Some(&Value::from(255)));
    }

    #[test]
    fn the_message_is_a_sample_provenance_of_every_name() {
        let v = ReferenceValues::desired(&["aa".repeat(48)], &[], true, &TcbPin::default());
        let msg: Value = serde_json::from_str(&v.provenance_message()).unwrap();
        assert_eq!(msg["version"], "0.1.0");
        assert_eq!(msg["type"], "sample");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(msg["payload"].as_str().unwrap())
            .unwrap();
        let map: BTreeMap<String, Vec<Value>> = serde_json::from_slice(&payload).unwrap();
        assert_eq!(map.len(), NAMES.len());
        assert_eq!(map[MEASUREMENT], [Value::from("aa".repeat(48))]);
    }

    #[test]
    fn differences_ignore_order_and_case_and_name_what_is_off() {
        let want = ReferenceValues::desired(
            &["aa".repeat(48), "bb".repeat(48)],
            &[tcb("a", 3, 209)],
            true,
            &TcbPin::default(),
        );
        let mut held: BTreeMap<String, Option<Value>> = want
            .0
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Some(Value::Array(v.iter().rev().cloned().collect())),
                )
            })
            .collect();
        held.insert(
            MEASUREMENT.into(),
            Some(serde_json::json!(["bb".repeat(48), "aa".repeat(48)])),
        );
        assert!(differences(&want, &held).is_empty());
        // Trustee compares strings exactly: upper case is not ours.
        held.insert(
            MEASUREMENT.into(),
            Some(serde_json::json!(["BB".repeat(48), "aa".repeat(48)])),
        );
        assert_eq!(differences(&want, &held)[0].extra_count, 1);

        held.insert(
            MEASUREMENT.into(),
            Some(serde_json::json!(["cc".repeat(48)])),
        );
        held.insert(BOOTLOADER.into(), None);
        held.insert(TEE.into(), Some(serde_json::json!("0")));
        let d = differences(&want, &held);
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d[0].name, BOOTLOADER);
        assert!(d[0].absent);
        let m = d.iter().find(|d| d.name == MEASUREMENT).unwrap();
        assert_eq!(m.missing.len(), 2);
        assert_eq!(m.extra, [Value::from("cc".repeat(48))]);
        assert_eq!(
            m.describe(),
            "snp_launch_measurement: 2 missing, 1 not ours"
        );
        assert!(d.iter().any(|d| d.name == TEE && d.malformed));
    }
}
