//! What the operator requires of guest policies (`--require-policy`): bits a
//! guest's SEV policy must have and bits it must not. Without it a host could
//! launch, say, an SEV-ES guest as plain SEV wherever a `sev` digest of the
//! same artefacts is registered, or allow the guest to be migrated out.

use sev_core::policy::GuestPolicy;
use std::fmt;
use std::str::FromStr;

/// The policy bits by name, as the SEV API names them.
const BITS: [(&str, u32); 6] = [
    ("NODBG", GuestPolicy::NODBG),
    ("NOKS", GuestPolicy::NOKS),
    ("ES", GuestPolicy::ES),
    ("NOSEND", GuestPolicy::NOSEND),
    ("DOMAIN", GuestPolicy::DOMAIN),
    ("SEV", GuestPolicy::SEV),
];

/// Bits that must be set and bits that must be clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyRequirement {
    /// Bits the policy must have.
    pub set: u32,
    /// Bits the policy must not have.
    pub clear: u32,
}

fn names(bits: u32) -> Vec<&'static str> {
    BITS.iter()
        .filter(|(_, b)| bits & b != 0)
        .map(|(n, _)| *n)
        .collect()
}

impl FromStr for PolicyRequirement {
    type Err = String;

    /// `NODBG,ES,NOSEND,!DOMAIN`: names must be set, `!NAME` (or `not-NAME`)
    /// must be clear; case does not matter.
    fn from_str(text: &str) -> Result<PolicyRequirement, String> {
        let mut r = PolicyRequirement::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (negated, name) = match item.strip_prefix('!') {
                Some(n) => (true, n),
                None => match item.get(..4) {
                    Some(p) if p.eq_ignore_ascii_case("not-") => {
                        (true, item.get(4..).unwrap_or(""))
                    }
                    _ => (false, item),
                },
            };
            let bit = BITS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    format!(
                        "{item:?}: not a policy bit; one of {} (prefix ! for must be clear)",
                        BITS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )
                })?;
            if negated {
                r.clear |= bit;
            } else {
                r.set |= bit;
            }
        }
        if r.set & r.clear != 0 {
            return Err(format!(
                "{} both required and forbidden",
                names(r.set & r.clear).join(", ")
            ));
        }
        Ok(r)
    }
}

impl fmt::Display for PolicyRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = names(self.set).into_iter().map(str::to_string).collect();
        items.extend(names(self.clear).into_iter().map(|n| format!("!{n}")));
        f.write_str(&items.join(","))
    }
}

impl PolicyRequirement {
    /// Whether `policy` meets it; if not, what it lacks and what it has that
    /// it must not, for the caller.
    pub fn check(&self, policy: GuestPolicy) -> Result<(), String> {
        let lacks = self.set & !policy.0;
        let has = self.clear & policy.0;
        if lacks == 0 && has == 0 {
            return Ok(());
        }
        let mut parts = Vec::new();
        if lacks != 0 {
            parts.push(format!("lacks {}", names(lacks).join(", ")));
        }
        if has != 0 {
            parts.push(format!("has {}", names(has).join(", ")));
        }
        Err(format!(
            "Policy {policy} {}, against the broker's --require-policy {self}",
            parts.join(" and ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_negations_and_checks() {
        let r: PolicyRequirement = "nodbg, ES,NOSEND,!domain,not-NOKS".parse().unwrap();
        assert_eq!(
            r.set,
            GuestPolicy::NODBG | GuestPolicy::ES | GuestPolicy::NOSEND
        );
        assert_eq!(r.clear, GuestPolicy::DOMAIN | GuestPolicy::NOKS);
        assert_eq!(r.to_string(), "NODBG,ES,NOSEND,!NOKS,!DOMAIN");
        assert!(r.check(GuestPolicy(0x0d)).is_ok());
        let e = r.check(GuestPolicy(0x13)).unwrap_err();
        assert!(e.contains("lacks ES, NOSEND and has NOKS, DOMAIN"), "{e}");
        assert!("ES,!ES".parse::<PolicyRequirement>().is_err());
        assert!("SEND"
            .parse::<PolicyRequirement>()
            .unwrap_err()
            .contains("not a policy bit"));
        assert_eq!(
            "".parse::<PolicyRequirement>().unwrap(),
            PolicyRequirement::default()
        );
    }
}
