//! `host-agent knative`: the Knative side of a confidential service.
//!
//! Knative adds its queue-proxy sidecar to every pod of a service. With
//! `runtimeClassName: kata-qemu-sev` that sidecar runs inside the confidential
//! VM next to the application, and the guest pulls and checks its image like
//! any other: under the `verify` signature policy, an image that is not signed
//! with the operator's cosign key is refused, and the pod never starts. So the
//! upstream queue-proxy image has to be copied to a registry the operator
//! controls, signed there, and Knative told to use that copy, by digest
//! (`queue-sidecar-image` in the `knative-serving/config-deployment`
//! ConfigMap). This module checks the reference and prints that ConfigMap.

use clap::{Args, Subcommand};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::str::FromStr;

/// The queue-proxy image Knative Serving releases publish.
pub const UPSTREAM_QUEUE_IMAGE: &str = "gcr.io/knative-releases/knative.dev/serving/cmd/queue";
/// Knative Serving's namespace.
pub const KNATIVE_NAMESPACE: &str = "knative-serving";
/// The ConfigMap that holds the settings of the Deployments behind services.
pub const CONFIG_DEPLOYMENT: &str = "config-deployment";
/// Its key naming the queue-proxy sidecar image.
pub const QUEUE_SIDECAR_KEY: &str = "queue-sidecar-image";

/// Longest repository name registries accept.
const MAX_NAME_LEN: usize = 255;
/// Hexadecimal digits of a SHA-256 digest.
const SHA256_HEX_LEN: usize = 64;

/// Options of `host-agent knative`.
#[derive(Debug, Args)]
pub struct KnativeArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KnativeCommand,
}

/// Subcommands of `host-agent knative`.
#[derive(Debug, Subcommand)]
pub enum KnativeCommand {
    /// Print the knative-serving/config-deployment ConfigMap that points Knative
    /// at a queue-proxy image you re-published and signed, pinned by digest.
    ///
    /// Knative adds its queue-proxy container to every pod of a service, so with
    /// runtimeClassName kata-qemu-sev it runs inside the confidential VM, and the
    /// guest checks its image like the application's. Under the `verify`
    /// signature policy the guest refuses every image not signed with your
    /// cosign key; a signature covers one digest, so the image must be named by
    /// digest. Re-publish the upstream image in a registry you control, sign
    /// it, then generate the ConfigMap:
    ///
    ///   # what your Knative release runs, before any change:
    ///   # gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:...
    ///   UPSTREAM=$(kubectl -n knative-serving get configmap config-deployment \
    ///       -o jsonpath='{.data.queue-sidecar-image}')
    ///   skopeo --override-os linux --override-arch amd64 copy \
    ///       --digestfile queue.digest \
    ///       docker://$UPSTREAM docker://registry.example/knative/queue:VERSION
    ///   host-agent cosign sign registry.example/knative/queue@$(cat queue.digest) \
    ///       --key cosign.key
    ///   host-agent knative queue-sidecar \
    ///       --image registry.example/knative/queue@$(cat queue.digest) > config-deployment.yaml
    ///
    /// and list registry.example/knative/queue among the --image repositories of
    /// `host-agent provision --signature-policy verify`.
    ///
    /// The output is a whole ConfigMap with this one key: `kubectl apply` of it
    /// removes the keys that an earlier `kubectl apply` of this ConfigMap set
    /// and it lacks. To change only this key, use the `kubectl patch` command
    /// printed in the output's header instead. Where the Knative Operator
    /// manages Serving, set it in the KnativeServing resource
    /// (spec.config.deployment.queue-sidecar-image), which the operator would
    /// otherwise restore.
    #[command(verbatim_doc_comment)]
    QueueSidecar(QueueSidecarArgs),
}

/// Options of `host-agent knative queue-sidecar`.
#[derive(Debug, Args)]
pub struct QueueSidecarArgs {
    /// The re-published queue-proxy image, REGISTRY/REPOSITORY@sha256:<64 hex>
    /// (no tag: with a digest the runtime ignores it).
    #[arg(long, value_name = "REPO@sha256:HEX", value_parser = parse_reference)]
    pub image: DigestReference,
}

/// An image reference pinned by digest: a repository with an explicit registry
/// host, and a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestReference {
    repository: String,
    /// `sha256:` and 64 lowercase hexadecimal digits.
    digest: String,
}

impl DigestReference {
    /// Checks `reference` and splits it.
    pub fn parse(reference: &str) -> Result<DigestReference, ReferenceError> {
        let bad = |reason: String| ReferenceError::Malformed {
            reference: reference.to_string(),
            reason,
        };
        if reference.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if let Some(c) = reference
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(format!("it contains {c:?}")));
        }
        let Some((name, digest)) = reference.split_once('@') else {
            let tag = last_component(reference)
                .split_once(':')
                .map(|(_, tag)| tag.to_string());
            return Err(ReferenceError::NotPinned {
                reference: reference.to_string(),
                tag,
            });
        };
        if digest.contains('@') {
            return Err(bad("it has more than one '@'".into()));
        }
        check_digest(digest).map_err(|reason| ReferenceError::BadDigest {
            reference: reference.to_string(),
            reason,
        })?;
        if let Some((_, tag)) = last_component(name).split_once(':') {
            return Err(ReferenceError::TagWithDigest {
                reference: reference.to_string(),
                tag: tag.to_string(),
            });
        }
        check_repository(name).map_err(|e| match e {
            NameProblem::NoRegistry => ReferenceError::NoRegistry {
                reference: reference.to_string(),
            },
            NameProblem::Bad(reason) => bad(reason),
        })?;
        Ok(DigestReference {
            repository: name.to_string(),
            digest: digest.to_string(),
        })
    }

    /// The repository, with its registry host (what the signature policy and
    /// `host-agent provision --image` name).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The digest, `sha256:` and 64 lowercase hexadecimal digits.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl fmt::Display for DigestReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

impl FromStr for DigestReference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DigestReference::parse(s)
    }
}

/// Why an image reference cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// A tag or a bare name: what it names can change after it was signed.
    #[error(
        "{reference:?} is not pinned by digest{}: the guest's signature policy \
         verifies signatures made over a digest, and a tag can be moved to another \
         image after signing. Give REPOSITORY@sha256:<64 hex digits>; \
         `skopeo copy --digestfile FILE` writes the digest when you re-publish the \
         image, and `skopeo inspect --format '{{{{.Digest}}}}' docker://{reference}` \
         prints the digest of an image already published",
        tag.as_ref().map(|t| format!(" (tag {t:?} only)")).unwrap_or_default()
    )]
    NotPinned {
        /// What was given.
        reference: String,
        /// Its tag, if it has one.
        tag: Option<String>,
    },
    /// The part after `@` is not a SHA-256 digest as registries write it.
    #[error("{reference:?}: bad digest: {reason}")]
    BadDigest {
        /// What was given.
        reference: String,
        /// What is wrong with the digest.
        reason: String,
    },
    /// Both a tag and a digest.
    #[error(
        "{reference:?} has a tag ({tag:?}) as well as a digest: the runtime ignores \
         the tag, so drop it and keep REPOSITORY@sha256:..."
    )]
    TagWithDigest {
        /// What was given.
        reference: String,
        /// The tag.
        tag: String,
    },
    /// The name leaves the registry implicit (Docker Hub).
    #[error(
        "{reference:?} does not name its registry: write the registry host first \
         (e.g. registry.example/knative/queue, or docker.io/ORG/NAME for Docker \
         Hub), because the signature policy matches whole repository names"
    )]
    NoRegistry {
        /// What was given.
        reference: String,
    },
    /// Not a reference at all.
    #[error("{reference:?} is not an image reference: {reason}")]
    Malformed {
        /// What was given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
}

/// The last `/`-separated part of a name: where a tag's `:` can be (the first
/// part may hold a registry port).
fn last_component(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("{digest:?} is not sha256:<64 hex digits>"));
    };
    if algorithm != "sha256" {
        return Err(format!(
            "algorithm {algorithm:?}: only sha256 digests are accepted"
        ));
    }
    if hex.len() != SHA256_HEX_LEN {
        return Err(format!(
            "{} hexadecimal digits, a SHA-256 digest has {SHA256_HEX_LEN}",
            hex.len()
        ));
    }
    if let Some(c) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(format!(
            "{c:?} is not a lowercase hexadecimal digit (registries write digests in lowercase)"
        ));
    }
    Ok(())
}

enum NameProblem {
    NoRegistry,
    Bad(String),
}

/// A repository name with its registry: `HOST[:PORT]/PATH`, the path made of
/// lowercase components (letters, digits, and `.`, `_`, `-` inside).
fn check_repository(name: &str) -> Result<(), NameProblem> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameProblem::Bad(format!(
            "the repository name is longer than {MAX_NAME_LEN} characters"
        )));
    }
    let Some((host, path)) = name.split_once('/') else {
        return Err(NameProblem::NoRegistry);
    };
    // Docker's rule: a first component without '.' or ':' that is not
    // "localhost" is a path on Docker Hub, not a registry.
    if !(host.contains(['.', ':']) || host == "localhost") {
        return Err(NameProblem::NoRegistry);
    }
    check_host(host).map_err(NameProblem::Bad)?;
    for component in path.split('/') {
        check_path_component(component).map_err(NameProblem::Bad)?;
    }
    Ok(())
}

fn check_host(host_port: &str) -> Result<(), String> {
    let (host, port) = match host_port.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host_port, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a registry host name"));
    }
    if let Some(p) = port {
        let valid =
            p.chars().all(|c| c.is_ascii_digit()) && matches!(p.parse::<u16>(), Ok(n) if n > 0);
        if !valid {
            return Err(format!("{p:?} is not a port"));
        }
    }
    Ok(())
}

fn check_path_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("the repository path has an empty component ('//' or a trailing '/')".into());
    }
    if let Some(bad) = c
        .chars()
        .find(|ch| !matches!(ch, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        let why = if bad.is_ascii_uppercase() {
            "repository names are lowercase"
        } else {
            "allowed are lowercase letters, digits, '.', '_' and '-'"
        };
        return Err(format!("{bad:?} in {c:?}: {why}"));
    }
    let alnum = |ch: Option<char>| ch.is_some_and(|ch| ch.is_ascii_alphanumeric());
    if !alnum(c.chars().next()) || !alnum(c.chars().last()) {
        return Err(format!("{c:?} must start and end with a letter or digit"));
    }
    Ok(())
}

/// For clap: the reference, or the reason it is refused.
fn parse_reference(s: &str) -> Result<DigestReference, String> {
    DigestReference::parse(s).map_err(|e| e.to_string())
}

/// A Kubernetes ConfigMap, as much of it as we print.
#[derive(Serialize)]
struct ConfigMap<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    metadata: Metadata<'a>,
    data: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

/// The `knative-serving/config-deployment` ConfigMap setting the queue-proxy
/// image, as YAML, preceded by comments saying what applying it does and how
/// to change only this key instead.
pub fn config_deployment_yaml(image: &DigestReference) -> Result<String, serde_yaml::Error> {
    let map = ConfigMap {
        api_version: "v1",
        kind: "ConfigMap",
        metadata: Metadata {
            name: CONFIG_DEPLOYMENT,
            namespace: KNATIVE_NAMESPACE,
        },
        data: BTreeMap::from([(QUEUE_SIDECAR_KEY, image.to_string())]),
    };
    let body = serde_yaml::to_string(&map)?;
    // The reference was checked: no quotes, spaces or shell characters in it.
    Ok(format!(
        "# Knative's queue-proxy sidecar, re-published, signed and pinned by digest.\n\
         # Generated by `host-agent knative queue-sidecar`. `kubectl apply -f` of this\n\
         # file removes keys an earlier apply of {CONFIG_DEPLOYMENT} set and this one\n\
         # lacks; to set only this key:\n\
         #   kubectl -n {KNATIVE_NAMESPACE} patch configmap {CONFIG_DEPLOYMENT} --type merge \\\n\
         #     -p '{{\"data\":{{\"{QUEUE_SIDECAR_KEY}\":\"{image}\"}}}}'\n\
         {body}"
    ))
}

/// Runs `host-agent knative`.
pub fn run(a: &KnativeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &a.command {
        KnativeCommand::QueueSidecar(q) => {
            out.write_all(config_deployment_yaml(&q.image)?.as_bytes())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(r: &str) -> DigestReference {
        DigestReference::parse(r).unwrap_or_else(|e| panic!("{r}: {e}"))
    }

    fn err(r: &str) -> ReferenceError {
        match DigestReference::parse(r) {
            Ok(d) => panic!("{r} accepted as {d}"),
            Err(e) => e,
        }
    }

    #[test]
    fn digest_references_are_accepted_and_round_trip() {
        for r in [
            format!("registry.example/knative/queue@sha256:{HEX}"),
            format!("registry.example:5000/knative/queue@sha256:{HEX}"),
            format!("localhost/queue@sha256:{HEX}"),
            format!("localhost:5000/a/b/c@sha256:{HEX}"),
            format!("docker.io/library/my_queue-proxy.v2@sha256:{HEX}"),
            format!("{UPSTREAM_QUEUE_IMAGE}@sha256:{HEX}"),
            format!("10.0.0.2:5000/knative/queue@sha256:{HEX}"),
        ] {
            let d = ok(&r);
            assert_eq!(d.to_string(), r);
            assert_eq!(d.digest(), format!("sha256:{HEX}"));
            assert_eq!(r.parse::<DigestReference>(), Ok(d));
        }
        assert_eq!(
            ok(&format!("registry.example:5000/knative/queue@sha256:{HEX}")).repository(),
            "registry.example:5000/knative/queue"
        );
    }

    #[test]
    fn tags_and_bare_names_are_not_pinned() {
        let e = err("registry.example/knative/queue:v1.12");
        assert_eq!(
            e,
            ReferenceError::NotPinned {
                reference: "registry.example/knative/queue:v1.12".into(),
                tag: Some("v1.12".into()),
            }
        );
        let text = e.to_string();
        assert!(text.contains("not pinned by digest"), "{text}");
        assert!(text.contains("tag \"v1.12\""), "{text}");
        assert!(
            text.contains("skopeo inspect --format '{{.Digest}}'"),
            "{text}"
        );
        // A registry port is not a tag.
        assert_eq!(
            err("registry.example:5000/knative/queue"),
            ReferenceError::NotPinned {
                reference: "registry.example:5000/knative/queue".into(),
                tag: None,
            }
        );
    }

    #[test]
    fn bad_digests_say_what_is_wrong() {
        for (digest, says) in [
            (format!("sha256:{}", HEX.to_uppercase()), "lowercase"),
            (format!("sha256:{}", &HEX[..63]), "63 hexadecimal digits"),
            (format!("sha256:{HEX}0"), "65 hexadecimal digits"),
            (format!("sha256:{}g", &HEX[..63]), "'g'"),
            (format!("sha512:{HEX}{HEX}"), "only sha256"),
            (HEX.to_string(), "sha256:<64 hex digits>"),
            ("sha256:".to_string(), "0 hexadecimal digits"),
        ] {
            let r = format!("registry.example/knative/queue@{digest}");
            match err(&r) {
                ReferenceError::BadDigest { reason, .. } => {
                    assert!(reason.contains(says), "{r}: {reason}");
                }
                other => panic!("{r}: {other:?}"),
            }
        }
    }

    #[test]
    fn tag_next_to_digest_is_refused() {
        let e = err(&format!("registry.example/knative/queue:v1@sha256:{HEX}"));
        assert!(matches!(e, ReferenceError::TagWithDigest { ref tag, .. } if tag == "v1"));
        assert!(e.to_string().contains("drop it"));
    }

    #[test]
    fn registry_must_be_named() {
        for r in [
            format!("knative/queue@sha256:{HEX}"),
            format!("queue@sha256:{HEX}"),
        ] {
            let e = err(&r);
            assert!(matches!(e, ReferenceError::NoRegistry { .. }), "{r}: {e:?}");
            assert!(e.to_string().contains("registry host"), "{e}");
        }
    }

    #[test]
    fn malformed_names_are_refused() {
        for (name, says) in [
            ("registry.example/Knative/queue", "lowercase"),
            ("registry.example//queue", "empty component"),
            ("registry.example/queue/", "empty component"),
            ("registry.example/-queue", "start and end"),
            ("registry.example/queue$", "allowed are"),
            ("registry.example:99999/queue", "not a port"),
            ("registry.example:0/queue", "not a port"),
            ("bad_host.example/queue", "not a registry host"),
            ("registry.example/", "empty component"),
        ] {
            let r = format!("{name}@sha256:{HEX}");
            match err(&r) {
                ReferenceError::Malformed { reason, .. } => {
                    assert!(reason.contains(says), "{r}: {reason}");
                }
                other => panic!("{r}: {other:?}"),
            }
        }
        for (r, says) in [
            ("", "empty"),
            ("registry.example/queue @sha256:x", "' '"),
            ("a.example/q@sha256:x@sha256:y", "more than one '@'"),
        ] {
            match err(r) {
                ReferenceError::Malformed { reason, .. } => {
                    assert!(reason.contains(says), "{r}: {reason}");
                }
                other => panic!("{r}: {other:?}"),
            }
        }
        let long = format!("registry.example/{}@sha256:{HEX}", "a".repeat(250));
        assert!(err(&long).to_string().contains("longer than 255"));
    }

    #[test]
    fn config_map_yaml_has_the_key_and_a_patch_hint() {
        let image = ok(&format!("registry.example/knative/queue@sha256:{HEX}"));
        let text = config_deployment_yaml(&image).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(v["apiVersion"].as_str(), Some("v1"));
        assert_eq!(v["kind"].as_str(), Some("ConfigMap"));
        assert_eq!(v["metadata"]["name"].as_str(), Some(CONFIG_DEPLOYMENT));
        assert_eq!(v["metadata"]["namespace"].as_str(), Some(KNATIVE_NAMESPACE));
        let image_text = image.to_string();
        assert_eq!(
            v["data"][QUEUE_SIDECAR_KEY].as_str(),
            Some(image_text.as_str())
        );
        // The patch in the header is valid JSON setting the same key.
        let patch_line = text
            .lines()
            .find(|l| l.contains("-p '"))
            .unwrap_or_default();
        let json = patch_line.split('\'').nth(1).unwrap_or_default();
        let patch: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(patch["data"][QUEUE_SIDECAR_KEY], image_text.as_str());
    }

    #[test]
    fn run_prints_the_config_map() {
        let mut out = Vec::new();
        let args = KnativeArgs {
            command: KnativeCommand::QueueSidecar(QueueSidecarArgs {
                image: ok(&format!("registry.example/knative/queue@sha256:{HEX}")),
            }),
        };
        run(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("kind: ConfigMap"), "{text}");
    }
}
