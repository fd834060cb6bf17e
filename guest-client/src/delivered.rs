//! What the guest got for its images, as its attestation agent will find it:
//! the image signature policy, the cosign key the policy names, and the key of
//! encrypted images. Each becomes a report field and a check.
//!
//! Only ids, lengths and public fingerprints are kept: never a secret value.
//! A deployment need not use every feature, so a key the broker does not have
//! is "not provisioned", which passes; what is there but unusable (a key of
//! the wrong length, a resource that is not a public key, a key the policy
//! needs and the broker lacks) fails with a reason.

use crate::entries::{
    parse_public_key_pem, PolicyKind, PolicySummary, COSIGN_KEY_RESOURCE, IMAGE_KEY_ID,
    IMAGE_KEY_LEN,
};
use crate::verify::Check;
use serde::{Deserialize, Serialize};

/// Where the guest looked for a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The offline keyset bundle in the secret area.
    Bundle,
    /// GetOnlineSecret over the injected connection.
    Online,
}

/// What became of the image key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ImageKeyState {
    /// There, of the right length.
    Present {
        /// Its length in bytes.
        length: usize,
    },
    /// Not there: this deployment does not provision one.
    NotProvisioned,
    /// There, but no AES-256 key.
    Malformed {
        /// Its length in bytes.
        length: usize,
        /// Why it cannot be used.
        reason: String,
    },
    /// The broker could not be asked.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The key of encrypted images, as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageKeyReport {
    /// The secret id (`default/image-encryption-key/1`).
    pub id: String,
    /// Where it was looked for.
    pub source: Source,
    /// What was found.
    #[serde(flatten)]
    pub state: ImageKeyState,
}

impl ImageKeyReport {
    /// The report for a key of `length` bytes (`None`: not there).
    pub fn from_length(source: Source, length: Option<usize>) -> ImageKeyReport {
        let state = match length {
            None => ImageKeyState::NotProvisioned,
            Some(IMAGE_KEY_LEN) => ImageKeyState::Present {
                length: IMAGE_KEY_LEN,
            },
            Some(length) => ImageKeyState::Malformed {
                length,
                reason: format!(
                    "{IMAGE_KEY_ID} is {length} bytes, expected {IMAGE_KEY_LEN} (AES-256): the \
                     attestation agent cannot unwrap image layer keys with it"
                ),
            },
        };
        ImageKeyReport {
            id: IMAGE_KEY_ID.into(),
            source,
            state,
        }
    }

    /// The report when the broker could not be asked.
    pub fn failed(reason: String) -> ImageKeyReport {
        ImageKeyReport {
            id: IMAGE_KEY_ID.into(),
            source: Source::Online,
            state: ImageKeyState::Failed { reason },
        }
    }

    /// The check it makes.
    pub fn check(&self) -> Check {
        let whence = match self.source {
            Source::Bundle => "in the bundle",
            Source::Online => "served online",
        };
        let (passed, reason) = match &self.state {
            ImageKeyState::Present { length } => {
                (true, format!("{}: {length} bytes, {whence}", self.id))
            }
            ImageKeyState::NotProvisioned => (
                true,
                format!(
                    "not provisioned ({} not {whence}): encrypted images cannot be pulled, \
                     others are unaffected",
                    self.id
                ),
            ),
            ImageKeyState::Malformed { reason, .. } | ImageKeyState::Failed { reason } => {
                (false, reason.clone())
            }
        };
        Check {
            name: "image key".into(),
            passed,
            reason,
        }
    }
}

/// What became of the cosign key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CosignKeyState {
    /// A PEM public key.
    Present {
        /// Its algorithm.
        algorithm: String,
        /// SHA-256 of its DER SubjectPublicKeyInfo, hex (public data).
        fingerprint_sha256: String,
    },
    /// The broker has no such resource.
    NotProvisioned,
    /// There, but not a public key.
    Malformed {
        /// Why.
        reason: String,
    },
    /// The broker could not be asked.
    Failed {
        /// Why.
        reason: String,
    },
    /// Not asked for.
    NotFetched {
        /// Why.
        reason: String,
    },
}

/// The cosign public key resource, as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CosignKeyReport {
    /// The resource id (`default/cosign-key/1`).
    pub id: String,
    /// The delivered policy verifies signatures with it (unknown when no
    /// policy was fetched).
    pub required_by_policy: Option<bool>,
    /// What was found.
    #[serde(flatten)]
    pub state: CosignKeyState,
}

/// Why nothing is fetched in offline mode: the guest's offline KBC
/// (offline_sev_kbc) reads only the bundle and serves no resources.
pub const OFFLINE_NOTE: &str =
    "offline mode: offline_sev_kbc reads only the bundle and fetches no resources";

impl CosignKeyReport {
    /// The report for the resource's bytes (`None`: the broker has none).
    pub fn from_resource(data: Option<&[u8]>, required: bool) -> CosignKeyReport {
        let state = match data.map(parse_public_key_pem) {
            None => CosignKeyState::NotProvisioned,
            Some(Ok(k)) => CosignKeyState::Present {
                algorithm: k.algorithm,
                fingerprint_sha256: k.fingerprint_sha256,
            },
            Some(Err(e)) => CosignKeyState::Malformed {
                reason: format!("{COSIGN_KEY_RESOURCE}: {e}"),
            },
        };
        CosignKeyReport {
            id: COSIGN_KEY_RESOURCE.into(),
            required_by_policy: Some(required),
            state,
        }
    }

    /// The report when the broker could not be asked.
    pub fn failed(reason: String, required: bool) -> CosignKeyReport {
        CosignKeyReport {
            id: COSIGN_KEY_RESOURCE.into(),
            required_by_policy: Some(required),
            state: CosignKeyState::Failed { reason },
        }
    }

    /// The report in offline mode.
    pub fn offline() -> CosignKeyReport {
        CosignKeyReport {
            id: COSIGN_KEY_RESOURCE.into(),
            required_by_policy: None,
            state: CosignKeyState::NotFetched {
                reason: OFFLINE_NOTE.into(),
            },
        }
    }

    /// The check it makes, if it was fetched.
    pub fn check(&self) -> Option<Check> {
        let required = self.required_by_policy == Some(true);
        let (passed, reason) = match &self.state {
            CosignKeyState::Present {
                algorithm,
                fingerprint_sha256,
            } => (
                true,
                format!(
                    "{}: {algorithm} public key, SHA-256 {fingerprint_sha256}",
                    self.id
                ),
            ),
            CosignKeyState::NotProvisioned if required => (
                false,
                format!(
                    "the policy verifies signatures with kbs:///{0}, but the key broker has no \
                     resource {0}: those images will be rejected",
                    self.id
                ),
            ),
            CosignKeyState::NotProvisioned => (
                true,
                format!("not provisioned ({}): the policy needs no key", self.id),
            ),
            CosignKeyState::Malformed { reason } | CosignKeyState::Failed { reason } => {
                (false, reason.clone())
            }
            CosignKeyState::NotFetched { .. } => return None,
        };
        Some(Check {
            name: "cosign key".into(),
            passed,
            reason,
        })
    }
}

/// One line on a policy: its shape and what it asks of each repository.
pub fn describe_policy(p: &PolicySummary) -> String {
    let repos = p
        .repositories
        .iter()
        .map(|r| {
            let reqs = r
                .requirements
                .iter()
                .map(|q| match &q.key_path {
                    Some(k) => format!("{} {k}", q.kind),
                    None => q.kind.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("{} ({reqs})", r.repository)
        })
        .collect::<Vec<_>>()
        .join("; ");
    match p.policy {
        PolicyKind::None => "signature policy none: any image accepted".into(),
        PolicyKind::Verify => format!("signature policy verify: {repos}"),
        PolicyKind::Custom => format!(
            "signature policy custom, other images {}{}{repos}",
            if p.enforced { "rejected" } else { "accepted" },
            if repos.is_empty() { "" } else { ": " }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_key_states() {
        let ok = ImageKeyReport::from_length(Source::Bundle, Some(32));
        assert!(ok.check().passed);
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"id": IMAGE_KEY_ID, "source": "bundle", "state": "present", "length": 32})
        );
        let none = ImageKeyReport::from_length(Source::Online, None);
        let c = none.check();
        assert!(c.passed && c.reason.contains("not provisioned"), "{c:?}");
        let short = ImageKeyReport::from_length(Source::Online, Some(16));
        let c = short.check();
        assert!(!c.passed && c.reason.contains("16 bytes"), "{c:?}");
        assert_eq!(serde_json::to_value(&short).unwrap()["state"], "malformed");
        // It travels from init to its background child as JSON.
        let back: ImageKeyReport =
            serde_json::from_str(&serde_json::to_string(&short).unwrap()).unwrap();
        assert_eq!(back, short);
    }

    #[test]
    fn cosign_key_states() {
        let absent = CosignKeyReport::from_resource(None, false);
        assert!(absent.check().unwrap().passed);
        let needed = CosignKeyReport::from_resource(None, true);
        let c = needed.check().unwrap();
        assert!(!c.passed && c.reason.contains("rejected"), "{c:?}");
        let bad = CosignKeyReport::from_resource(Some(b"not a key"), true);
        assert!(!bad.check().unwrap().passed);
        assert!(CosignKeyReport::offline().check().is_none());
        assert_eq!(
            serde_json::to_value(CosignKeyReport::offline()).unwrap()["state"],
            "not_fetched"
        );
    }
}
