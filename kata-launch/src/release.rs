//! Which Kata Containers release builds the launch.
//!
//! The same configuration file gives a different QEMU launch under different
//! releases (4.1 drops `nr_cpus` for confidential guests, 3.19 still writes it),
//! so every launch is derived for one named release. Two families are modelled:
//! the Confidential Containers builds CC-0.7.0 and CC-0.8.0 (SEV with
//! pre-attestation, and their SNP launch), and the upstream Go runtime from 3.19.0
//! through 4.1.x (SNP only: 3.19.0 removed SEV).
//!
//! A release is named as `--kata-version` takes it (`4.1.0`, `3.19.1`,
//! `CC-0.8.0`) or as the shim reports itself (`containerd-shim-kata-v2
//! --version`, which says `3.2.0-rc0` for the CC-0.8.0 build).

use std::fmt;

/// The upstream minor releases modelled, `(major, minor)`; any patch release of
/// them is accepted.
pub const UPSTREAM_MINORS: [(u32, u32); 16] = [
    (3, 19),
    (3, 20),
    (3, 21),
    (3, 22),
    (3, 23),
    (3, 24),
    (3, 25),
    (3, 26),
    (3, 27),
    (3, 28),
    (3, 29),
    (3, 30),
    (3, 31),
    (3, 32),
    (4, 0),
    (4, 1),
];

/// The version strings the Confidential Containers builds report, and their names.
const CC_BUILDS: [(&str, CcBuild); 2] = [
    ("3.2.0-alpha3", CcBuild::Cc07),
    ("3.2.0-rc0", CcBuild::Cc08),
];

/// A Confidential Containers build of Kata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CcBuild {
    /// Tag CC-0.7.0 (CoCo 0.7), version 3.2.0-alpha3.
    Cc07,
    /// Tag CC-0.8.0 (CoCo 0.8), version 3.2.0-rc0.
    Cc08,
}

/// A Kata release whose launch this crate models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KataRelease {
    /// A Confidential Containers build (the launch is the same for both).
    Cc(CcBuild),
    /// An upstream release of the Go runtime, 3.19.0 to 4.1.x.
    Upstream {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
        /// Patch version.
        patch: u32,
    },
}

impl Default for KataRelease {
    /// CC-0.8.0, the release the SEV path is built for.
    fn default() -> Self {
        KataRelease::Cc(CcBuild::Cc08)
    }
}

/// A version string that names no modelled release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Kata release {given:?} is not known here; known releases: {}",
    known_releases()
)]
pub struct UnknownRelease {
    /// What was given.
    pub given: String,
}

/// The known releases, for messages: `CC-0.7.0, CC-0.8.0, 3.19.x, ..., 4.1.x`.
pub fn known_releases() -> String {
    let mut names = vec!["CC-0.7.0".to_string(), "CC-0.8.0".to_string()];
    names.extend(
        UPSTREAM_MINORS
            .iter()
            .map(|(major, minor)| format!("{major}.{minor}.x")),
    );
    names.join(", ")
}

fn parse_triple(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((major, minor, patch))
}

impl KataRelease {
    /// Parses `X.Y.Z` (an upstream release), `CC-0.7.0` or `CC-0.8.0`, or the
    /// version a CC build's shim reports (`3.2.0-rc0`). A leading `v` is allowed.
    pub fn parse(text: &str) -> Result<KataRelease, UnknownRelease> {
        let unknown = || UnknownRelease {
            given: text.to_string(),
        };
        let s = text.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        match s {
            "CC-0.7.0" => return Ok(KataRelease::Cc(CcBuild::Cc07)),
            "CC-0.8.0" => return Ok(KataRelease::Cc(CcBuild::Cc08)),
            _ => {}
        }
        if let Some((_, build)) = CC_BUILDS.iter().find(|(v, _)| *v == s) {
            return Ok(KataRelease::Cc(*build));
        }
        let (major, minor, patch) = parse_triple(s).ok_or_else(unknown)?;
        if UPSTREAM_MINORS.contains(&(major, minor)) {
            Ok(KataRelease::Upstream {
                major,
                minor,
                patch,
            })
        } else {
            Err(unknown())
        }
    }

    /// Finds the release in the output of `containerd-shim-kata-v2 --version`
    /// (or `kata-runtime --version`): the first word after `version` that names
    /// a release. `None` when the output names no version at all; an error when
    /// it names one that is not modelled.
    pub fn from_version_output(output: &str) -> Option<Result<KataRelease, UnknownRelease>> {
        let words: Vec<&str> = output
            .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
            .filter(|w| !w.is_empty())
            .collect();
        let after_version = words
            .windows(2)
            .find(|w| w.first().is_some_and(|v| v.eq_ignore_ascii_case("version")))
            .and_then(|w| w.get(1).copied());
        let candidate = after_version
            .filter(|w| looks_like_version(w))
            .or_else(|| words.iter().copied().find(|w| looks_like_version(w)))?;
        Some(KataRelease::parse(candidate))
    }

    /// Whether this is an upstream release at or after `major.minor`.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        match self {
            KataRelease::Cc(_) => false,
            KataRelease::Upstream {
                major: a, minor: b, ..
            } => (a, b) >= (major, minor),
        }
    }

    /// Whether this is a Confidential Containers build (SEV pre-attestation era).
    pub fn is_cc(self) -> bool {
        matches!(self, KataRelease::Cc(_))
    }
}

fn looks_like_version(w: &str) -> bool {
    let w = w.strip_prefix('v').unwrap_or(w);
    let core = w.split('-').next().unwrap_or("");
    parse_triple(core).is_some()
}

impl fmt::Display for KataRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KataRelease::Cc(CcBuild::Cc07) => f.write_str("CC-0.7.0"),
            KataRelease::Cc(CcBuild::Cc08) => f.write_str("CC-0.8.0"),
            KataRelease::Upstream {
                major,
                minor,
                patch,
            } => write!(f, "{major}.{minor}.{patch}"),
        }
    }
}

impl std::str::FromStr for KataRelease {
    type Err = UnknownRelease;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KataRelease::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_shim_versions() {
        assert_eq!(KataRelease::parse("4.1.0").unwrap().to_string(), "4.1.0");
        assert_eq!(KataRelease::parse("v3.19.1").unwrap().to_string(), "3.19.1");
        assert_eq!(
            KataRelease::parse("CC-0.8.0").unwrap(),
            KataRelease::Cc(CcBuild::Cc08)
        );
        assert_eq!(
            KataRelease::parse("3.2.0-rc0").unwrap(),
            KataRelease::Cc(CcBuild::Cc08)
        );
        assert_eq!(
            KataRelease::parse("3.2.0-alpha3").unwrap(),
            KataRelease::Cc(CcBuild::Cc07)
        );
        for bad in [
            "3.18.0", "4.2.0", "3.19", "3.19.0.1", "", "CC-0.9.0", "x.y.z",
        ] {
            let e = KataRelease::parse(bad).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("CC-0.8.0") && msg.contains("3.19.x") && msg.contains("4.1.x"),
                "{msg}"
            );
        }
    }

    #[test]
    fn order_and_families() {
        let r = |s| KataRelease::parse(s).unwrap();
        assert!(r("4.1.0").at_least(4, 1));
        assert!(r("4.1.0").at_least(3, 19));
        assert!(!r("3.19.0").at_least(3, 20));
        assert!(!r("CC-0.8.0").at_least(3, 19));
        assert!(r("CC-0.8.0").is_cc());
        assert_eq!(KataRelease::default(), r("CC-0.8.0"));
    }

    #[test]
    fn version_output_of_the_shim() {
        let out = "Kata Containers containerd shim (Golang): id: \"io.containerd.kata.v2\", version: 4.1.0, commit: 0123abc\n";
        assert_eq!(
            KataRelease::from_version_output(out),
            Some(Ok(KataRelease::parse("4.1.0").unwrap()))
        );
        let cc = "Kata Containers containerd shim: id: \"io.containerd.kata.v2\", version: 3.2.0-rc0, commit: abc\n";
        assert_eq!(
            KataRelease::from_version_output(cc),
            Some(Ok(KataRelease::Cc(CcBuild::Cc08)))
        );
        assert!(matches!(
            KataRelease::from_version_output("version: 3.12.0"),
            Some(Err(_))
        ));
        assert_eq!(KataRelease::from_version_output("no numbers here"), None);
    }
}
