//! Image references (`registry[:port]/path[:tag][@sha256:hex]`) with docker's
//! normalisation, and sha256 digests.
//!
//! As in docker's `reference.ParseNormalizedNamed`: a first path component is a
//! registry only if it contains `.` or `:`, is `localhost`, or has upper-case
//! letters; otherwise the registry is `docker.io`, and a single-component name
//! there gets `library/` in front. `index.docker.io` is the legacy spelling of
//! `docker.io` and is normalised to it.

use sha2::Digest as _;
use std::fmt;
use std::net::IpAddr;
use thiserror::Error;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's legacy name, as cosign (go-containerregistry) spells it.
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Where Docker Hub's registry API actually is.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// docker's limit on the length of registry + path.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a reference or digest was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Empty, or with characters no reference has.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A digest that is not `sha256:` and 64 lower-case hex digits.
    #[error("invalid digest {digest:?}: expected sha256: followed by 64 lower-case hex digits")]
    Digest {
        /// The text given.
        digest: String,
    },
    /// A reference by tag where a digest is required.
    #[error(
        "{reference} names the image by tag only; sign and verify by digest, because a tag \
         can move to another image: give IMAGE@sha256:<digest> (for example from \
         `skopeo inspect --format '{{{{.Digest}}}}' docker://{reference}`)"
    )]
    TagOnly {
        /// The reference given.
        reference: String,
    },
}

/// A sha256 content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`. Other algorithms are refused: cosign
    /// and the registries we sign in use sha256 only.
    pub fn parse(s: &str) -> Result<Digest, ReferenceError> {
        let bad = || ReferenceError::Digest {
            digest: s.chars().take(100).collect(),
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The tag cosign stores this image's signatures under:
    /// `sha256-<hex>.sig`.
    pub fn signature_tag(&self) -> String {
        format!("sha256-{}.sig", self.hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageReference {
    /// Parses `[registry[:port]/]path[:tag][@sha256:hex]` with docker's defaults.
    pub fn parse(s: &str) -> Result<ImageReference, ReferenceError> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: s.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if !s.is_ascii()
            || s.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(invalid("only printable ASCII without spaces is allowed"));
        }
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'; a ':' before
        // that is a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag.get(last_slash..).and_then(|t| t.rfind(':')) {
            Some(i) => {
                let at = last_slash + i;
                let tag = name_and_tag.get(at + 1..).unwrap_or_default();
                if !valid_tag(tag) {
                    return Err(invalid(
                        "tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -",
                    ));
                }
                (
                    name_and_tag.get(..at).unwrap_or_default(),
                    Some(tag.to_string()),
                )
            }
            None => (name_and_tag, None),
        };
        if name.is_empty() {
            return Err(invalid("no repository name"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(invalid(
                "registry must be a host name or IP address with an optional :port",
            ));
        }
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lower case"));
        }
        if !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                "each path component must be lower-case letters and digits, separated by \
                 '.', '_', '__' or dashes",
            ));
        }
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid("name longer than 255 characters"));
        }
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry, as normalised (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if one was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if one was given.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`: what a simple-signing payload names as
    /// `docker-reference`.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The digest, or the explanation why signing by tag is refused.
    pub fn require_digest(&self) -> Result<&Digest, ReferenceError> {
        self.digest.as_ref().ok_or_else(|| ReferenceError::TagOnly {
            reference: self.to_string(),
        })
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> ImageReference {
        ImageReference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// Whether two references name the same repository (tags and digests
    /// aside).
    pub fn same_repository(&self, other: &ImageReference) -> bool {
        self.registry == other.registry && self.repository == other.repository
    }

    /// The host (and port) the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on this machine (`localhost`, 127.0.0.0/8,
    /// `[::1]`), where plain HTTP is used without asking.
    pub fn is_loopback_registry(&self) -> bool {
        let host = host_without_port(&self.registry);
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn host_without_port(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        // [v6]:port
        return match rest.find(']') {
            Some(i) => registry.get(..i + 2).unwrap_or(registry),
            None => registry,
        };
    }
    registry.split(':').next().unwrap_or(registry)
}

fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    tag.len() <= MAX_TAG_LEN && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            a => match a.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if registry.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let Some(&x) = b.get(i) else { break };
        if alnum(&x) {
            i += 1;
            continue;
        }
        let start = i;
        while b.get(i).is_some_and(|y| !alnum(y)) {
            i += 1;
        }
        let sep = c.get(start..i).unwrap_or_default();
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|y| y == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parsing_table() {
        // (input, registry, repository, tag, has digest)
        let ok: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("busybox", "docker.io", "library/busybox", None, false),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
            ),
            ("user/app", "docker.io", "user/app", None, false),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                None,
                false,
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io",
                "library/busybox",
                None,
                false,
            ),
            (
                "quay.io/org/app:v1",
                "quay.io",
                "org/app",
                Some("v1"),
                false,
            ),
            ("localhost/app", "localhost", "app", None, false),
            (
                "localhost:5000/a/b/c:t",
                "localhost:5000",
                "a/b/c",
                Some("t"),
                false,
            ),
            (
                "127.0.0.1:5000/demo/hello",
                "127.0.0.1:5000",
                "demo/hello",
                None,
                false,
            ),
            ("[::1]:5000/demo", "[::1]:5000", "demo", None, false),
            ("Registry/app", "Registry", "app", None, false),
            (
                "r.io/a__b/c-d--e/f.g",
                "r.io",
                "a__b/c-d--e/f.g",
                None,
                false,
            ),
        ];
        for (input, reg, repo, tag, _) in ok {
            let r = ImageReference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), *reg, "{input}");
            assert_eq!(r.repository(), *repo, "{input}");
            assert_eq!(r.tag(), *tag, "{input}");
            assert!(r.digest().is_none());
        }
        let with_digest = format!("r.io:443/app:tag@sha256:{HEX}");
        let r = ImageReference::parse(&with_digest).unwrap();
        assert_eq!(r.tag(), Some("tag"));
        assert_eq!(r.digest().unwrap().hex(), HEX);
        assert_eq!(r.to_string(), with_digest);
        assert_eq!(r.repository_name(), "r.io:443/app");
        assert_eq!(
            r.with_tag(&r.digest().unwrap().signature_tag()).to_string(),
            format!("r.io:443/app:sha256-{HEX}.sig")
        );
        let bad = [
            "",
            "UPPER",
            "docker.io/Upper/x",
            "a//b",
            "a/b/",
            "/a",
            "a:",
            "a:-t",
            "a@sha256:abc",
            "a@sha512:00",
            &format!("a@sha256:{}", HEX.to_uppercase()),
            "a b",
            "a/.b",
            "a/b..c",
            "a/b_-c",
            "r.io:port/x",
            "r..io/x",
            "-r.io/x",
            "[::1/x",
            "[zz]:5/x",
            "caf\u{e9}/x",
        ];
        for input in bad {
            assert!(ImageReference::parse(input).is_err(), "{input:?} accepted");
        }
        assert!(ImageReference::parse(&format!("r.io/{}", "a".repeat(300))).is_err());
        assert!(ImageReference::parse(&format!("a:{}", "t".repeat(129))).is_err());
    }

    #[test]
    fn tag_only_is_refused_with_an_explanation() {
        let r = ImageReference::parse("quay.io/org/app:v1").unwrap();
        let e = r.require_digest().unwrap_err().to_string();
        assert!(e.contains("by tag only"), "{e}");
        assert!(e.contains("IMAGE@sha256:"), "{e}");
        assert!(e.contains("tag can move"), "{e}");
        let r = ImageReference::parse(&format!("quay.io/org/app@sha256:{HEX}")).unwrap();
        assert_eq!(
            r.require_digest().unwrap().to_string(),
            format!("sha256:{HEX}")
        );
    }

    #[test]
    fn loopback_and_api_host() {
        for (r, lo) in [
            ("localhost:5000/x", true),
            ("localhost/x", true),
            ("127.0.0.1:5000/x", true),
            ("127.1.2.3/x", true),
            ("[::1]:5000/x", true),
            ("10.0.0.1:5000/x", false),
            ("localhost.example.com/x", false),
            ("busybox", false),
        ] {
            assert_eq!(
                ImageReference::parse(r).unwrap().is_loopback_registry(),
                lo,
                "{r}"
            );
        }
        assert_eq!(
            ImageReference::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(ImageReference::parse("q.io/x").unwrap().api_host(), "q.io");
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert!(Digest::parse("sha256:").is_err());
        assert!(Digest::parse(&format!("sha384:{HEX}")).is_err());
    }
}
