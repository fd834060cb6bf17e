//! Which Kata release a configuration file belongs to on this node.
//!
//! The launch depends on the release (see `kata_launch::KataRelease`), and a node
//! says which one it runs through its shim: `containerd-shim-kata-v2 --version`
//! prints `... version: 4.1.0, commit: ...`. The shim of a configuration under
//! `<prefix>/share/defaults/kata-containers/` is `<prefix>/bin/containerd-shim-kata-v2`
//! (kata-deploy and the CoCo chart install to `/opt/kata`, CoCo 0.7 to
//! `/opt/confidential-containers`); the path is tried as written and with its
//! links resolved, so a configuration reached through a symlink still finds the
//! tree it belongs to.
//!
//! An operator's setting wins over the shim. With neither, the release is taken
//! to be CC-0.8.0, the release of the seed's SEV configurations, and the result
//! says it was assumed, so that status and `digests` can show it.

use kata_launch::{KataRelease, UnknownRelease};
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shim's file name.
pub const SHIM: &str = "containerd-shim-kata-v2";
/// How long the shim may take to print its version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of its output that is read.
const VERSION_OUTPUT_LIMIT: u64 = 16 * 1024;

/// Where a release came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum ReleaseSource {
    /// The operator named it (`--kata-version`, `launches.kata_version`).
    Configured,
    /// The shim at this path reported it.
    Shim(PathBuf),
    /// Nothing said: CC-0.8.0 was assumed.
    Assumed,
}

/// A release and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRelease {
    /// The release.
    pub release: KataRelease,
    /// Where it came from.
    pub source: ReleaseSource,
}

impl fmt::Display for ResolvedRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ReleaseSource::Configured => write!(f, "{} (configured)", self.release),
            ReleaseSource::Shim(p) => write!(f, "{} (from {})", self.release, p.display()),
            ReleaseSource::Assumed => write!(
                f,
                "{} (assumed: no {SHIM} found beside the configuration; set the Kata version)",
                self.release
            ),
        }
    }
}

/// Why the release could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// The shim reports a release this agent does not model.
    #[error("{} reports {output:?}: {cause}", shim.display())]
    Unknown {
        /// The shim.
        shim: PathBuf,
        /// Its version line.
        output: String,
        /// The parse error, which lists the known releases.
        cause: UnknownRelease,
    },
    /// The shim is there but did not say its version.
    #[error("{} --version: {reason}", shim.display())]
    Shim {
        /// The shim.
        shim: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The shims that may belong to the configuration at `config`, most likely first.
pub fn shim_candidates(config: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut add = |p: &Path| {
        // <prefix>/share/defaults/kata-containers/<file>
        let prefix = p
            .parent()
            .filter(|d| d.ends_with("share/defaults/kata-containers"))
            .and_then(Path::parent)
            .and_then(Path::parent)
            .and_then(Path::parent);
        if let Some(prefix) = prefix {
            let shim = prefix.join("bin").join(SHIM);
            if !out.contains(&shim) {
                out.push(shim);
            }
        }
    };
    add(config);
    if let Ok(real) = std::fs::canonicalize(config) {
        add(&real);
    }
    out
}

/// Runs `shim --version` with a time limit and reads at most a few KiB of output.
/// The output is read while the shim runs and the pipe closed after the limit,
/// so a binary that prints without end neither fills memory nor blocks on a
/// full pipe until the time limit.
fn shim_version_output(shim: &Path) -> Result<String, ReleaseError> {
    let fail = |reason: String| ReleaseError::Shim {
        shim: shim.to_path_buf(),
        reason,
    };
    // ETXTBSY: the file is open for writing somewhere (a package upgrade
    // replacing it, or a process forked while it was written and not yet
    // exec'd); that passes within moments.
    let mut tries = 0;
    let mut child = loop {
        let spawned = Command::new(shim)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
                    && tries < 20 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            other => break other.map_err(|e| fail(format!("cannot run it: {e}")))?,
        }
    };
    let reader = child.stdout.take().map(|out| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let result = out.take(VERSION_OUTPUT_LIMIT).read_to_end(&mut bytes);
            // Dropping `out` here closes the pipe: a shim still writing gets EPIPE.
            result.map(|_| bytes)
        })
    });
    let deadline = Instant::now() + VERSION_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "no answer within {} s",
                    VERSION_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    let bytes = match reader.map(std::thread::JoinHandle::join) {
        Some(Ok(Ok(bytes))) => bytes,
        Some(Ok(Err(e))) => return Err(fail(format!("unreadable output: {e}"))),
        Some(Err(_)) | None => return Err(fail("its output could not be read".into())),
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Asks one shim for its release.
pub fn release_of_shim(shim: &Path) -> Result<KataRelease, ReleaseError> {
    let output = shim_version_output(shim)?;
    let first_line = output.lines().next().unwrap_or("").trim().to_string();
    match KataRelease::from_version_output(&output) {
        Some(Ok(r)) => Ok(r),
        Some(Err(cause)) => Err(ReleaseError::Unknown {
            shim: shim.to_path_buf(),
            output: first_line,
            cause,
        }),
        None => Err(ReleaseError::Shim {
            shim: shim.to_path_buf(),
            reason: format!("no version in its output {first_line:?}"),
        }),
    }
}

/// The shim's identity on disk: a package upgrade replaces the file, which
/// changes its inode and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShimKey {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// Resolves releases, running each shim once per version of the file.
#[derive(Debug, Default)]
pub struct ReleaseProbe {
    configured: Option<KataRelease>,
    seen: HashMap<PathBuf, (ShimKey, Result<KataRelease, ReleaseError>)>,
}

impl ReleaseProbe {
    /// A probe; `configured` overrides every shim.
    pub fn new(configured: Option<KataRelease>) -> ReleaseProbe {
        ReleaseProbe {
            configured,
            seen: HashMap::new(),
        }
    }

    /// The release of the configuration at `config`.
    pub fn resolve(&mut self, config: &Path) -> Result<ResolvedRelease, ReleaseError> {
        if let Some(release) = self.configured {
            return Ok(ResolvedRelease {
                release,
                source: ReleaseSource::Configured,
            });
        }
        for shim in shim_candidates(config) {
            // Follows links: the installed shim is often a link into the tree.
            let Ok(meta) = std::fs::metadata(&shim) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let key = ShimKey {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                ctime: meta.ctime(),
                ctime_nsec: meta.ctime_nsec(),
            };
            let result = match self.seen.get(&shim) {
                Some((k, r)) if *k == key => r.clone(),
                _ => {
                    let r = release_of_shim(&shim);
                    self.seen.insert(shim.clone(), (key, r.clone()));
                    r
                }
            };
            return result.map(|release| ResolvedRelease {
                release,
                source: ReleaseSource::Shim(shim),
            });
        }
        Ok(ResolvedRelease {
            release: KataRelease::default(),
            source: ReleaseSource::Assumed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_shim(dir: &Path, prints: &str) -> PathBuf {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let shim = bin.join(SHIM);
        let tmp = bin.join(".shim.tmp");
        std::fs::write(&tmp, format!("#!/bin/sh\necho '{prints}'\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Replaced by rename, as a package manager does.
        std::fs::rename(&tmp, &shim).unwrap();
        shim
    }

    fn config_in(dir: &Path) -> PathBuf {
        let d = dir.join("share/defaults/kata-containers");
        std::fs::create_dir_all(&d).unwrap();
        let c = d.join("configuration-qemu-snp.toml");
        std::fs::write(&c, "").unwrap();
        c
    }

    #[test]
    fn the_shim_beside_the_tree_names_the_release_and_upgrades_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let mut probe = ReleaseProbe::new(None);
        assert_eq!(
            probe.resolve(&config).unwrap().source,
            ReleaseSource::Assumed
        );
        let shim = fake_shim(
            dir.path(),
            "Kata Containers containerd shim (Golang): id: \"io.containerd.kata.v2\", version: 3.19.0, commit: abc",
        );
        let r = probe.resolve(&config).unwrap();
        assert_eq!(r.release.to_string(), "3.19.0");
        assert_eq!(r.source, ReleaseSource::Shim(shim.clone()));
        fake_shim(
            dir.path(),
            "Kata Containers containerd shim (Golang): id: \"io.containerd.kata.v2\", version: 4.1.0, commit: def",
        );
        assert_eq!(probe.resolve(&config).unwrap().release.to_string(), "4.1.0");
    }

    #[test]
    fn a_symlinked_configuration_finds_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("opt/kata");
        let config = config_in(&tree);
        fake_shim(&tree, "x version: 4.1.0, commit: y");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let link = etc.join("configuration.toml");
        std::os::unix::fs::symlink(&config, &link).unwrap();
        let r = ReleaseProbe::new(None).resolve(&link).unwrap();
        assert_eq!(r.release.to_string(), "4.1.0");
    }

    #[test]
    fn a_shim_that_prints_without_end_is_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let shim = bin.join(SHIM);
        std::fs::write(
            &shim,
            "#!/bin/sh\nwhile :; do echo 'no version here, no version here'; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ReleaseProbe::new(None).resolve(&config).unwrap_err();
        // Ended by the closed pipe: the output was read, not given up on.
        assert!(e.to_string().contains("no version"), "{e}");
        assert!(!e.to_string().contains("no answer within"), "{e}");
    }

    #[test]
    fn unknown_releases_and_silent_shims_are_errors_and_configuration_wins() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        fake_shim(dir.path(), "x version: 3.12.0, commit: y");
        let e = ReleaseProbe::new(None).resolve(&config).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("3.12.0") && msg.contains("4.1.x"), "{msg}");
        fake_shim(dir.path(), "nothing here");
        let e = ReleaseProbe::new(None).resolve(&config).unwrap_err();
        assert!(e.to_string().contains("no version"), "{e}");
        let forced = ReleaseProbe::new(Some("4.1.0".parse().unwrap()))
            .resolve(&config)
            .unwrap();
        assert_eq!(forced.source, ReleaseSource::Configured);
    }
}
