//! `guest-client verify`: the checks, in order, each with its own outcome and
//! reason, from securityfs down to the entries the launch's mode needs.
//!
//! Paths are parameters so that the checks run against a directory written by
//! the simulated platform as well as against the real `/sys`. Nothing here
//! prints or returns a secret value, and the only entry ever unlinked is the
//! report key, which the guest client owns.

use crate::delivered::{ImageKeyReport, Source};
use crate::entries::{
    parse_bundle, parse_connection, parse_report_key, Connection, ReportKey, BUNDLE_GUID,
    CONNECTION_GUID, IMAGE_KEY_ID, REPORT_KEY_GUID,
};
use serde::Serialize;
use std::path::PathBuf;

/// Which pre-attestation mode the guest was launched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The shim asked for a keyset bundle, injected whole.
    Offline,
    /// The shim asked for a connection; secrets come later over GetOnlineSecret.
    Online,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// Why, in a few words (never a secret value).
    pub reason: String,
}

/// Where the checks look.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Where securityfs is mounted (`/sys/kernel/security`).
    pub securityfs: PathBuf,
    /// The mount table (`/proc/self/mounts`).
    pub mounts: PathBuf,
    /// The module's sysfs directory (`/sys/module/efi_secret`).
    pub module: PathBuf,
    /// The secrets directory (`/sys/kernel/security/secrets/coco`).
    pub secrets: PathBuf,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            securityfs: PathBuf::from("/sys/kernel/security"),
            mounts: PathBuf::from("/proc/self/mounts"),
            module: PathBuf::from("/sys/module/efi_secret"),
            secrets: PathBuf::from("/sys/kernel/security/secrets/coco"),
            cmdline: PathBuf::from("/proc/cmdline"),
        }
    }
}

/// What the checks found that later steps need.
#[derive(Debug, Default)]
pub struct Found {
    /// The online connection.
    pub connection: Option<Connection>,
    /// The report key.
    pub report_key: Option<ReportKey>,
    /// The image key in the offline bundle (offline mode, bundle well-formed).
    pub image_key: Option<ImageKeyReport>,
}

/// The key broker named on the kernel command line by Kata
/// (`agent.aa_kbc_params=online_sev_kbc::HOST:PORT`), and the mode it implies.
pub fn mode_from_cmdline(cmdline: &str) -> Option<(Mode, Option<String>)> {
    cmdline.split_whitespace().find_map(|t| {
        let params = t.strip_prefix("agent.aa_kbc_params=")?;
        let (kbc, uri) = params.split_once("::").unwrap_or((params, ""));
        match kbc {
            "online_sev_kbc" => Some((Mode::Online, (!uri.is_empty()).then(|| uri.to_string()))),
            "offline_sev_kbc" => Some((Mode::Offline, None)),
            _ => None,
        }
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn securityfs_mounted(paths: &Paths) -> bool {
    let want = paths.securityfs.to_string_lossy();
    std::fs::read_to_string(&paths.mounts)
        .map(|t| {
            t.lines().any(|l| {
                let mut f = l.split_whitespace();
                let _source = f.next();
                f.next() == Some(want.as_ref()) && f.next() == Some("securityfs")
            })
        })
        .unwrap_or(false)
}

fn run_quietly(program: &str, args: &[&str]) -> Result<(), String> {
    match std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{program} failed ({s})")),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// Runs the checks up to the entries; online round trip and report come after.
pub fn local_checks(paths: &Paths, mode: Mode, checks: &mut Vec<Check>) -> Found {
    let mut found = Found::default();
    let mut push = |name: &str, passed: bool, reason: String| {
        checks.push(Check {
            name: name.to_string(),
            passed,
            reason,
        });
        passed
    };

    // 1. securityfs.
    let mounted = securityfs_mounted(paths) || {
        is_root()
            && run_quietly(
                "mount",
                &[
                    "-t",
                    "securityfs",
                    "securityfs",
                    &paths.securityfs.to_string_lossy(),
                ],
            )
            .is_ok()
            && securityfs_mounted(paths)
    };
    let secrets_present = paths.secrets.is_dir();
    let sfs = if mounted {
        push(
            "securityfs",
            true,
            format!("mounted at {}", paths.securityfs.display()),
        )
    } else if secrets_present {
        // A test tree or an unusual layout: the secrets are there regardless.
        push(
            "securityfs",
            true,
            format!(
                "{} not in the mount table, but the secrets directory exists",
                paths.securityfs.display()
            ),
        )
    } else {
        push(
            "securityfs",
            false,
            format!(
                "not mounted at {}{}",
                paths.securityfs.display(),
                if is_root() {
                    " and mounting it failed"
                } else {
                    " (run as root to mount it)"
                }
            ),
        )
    };

    // 2. efi_secret.
    let loaded = paths.module.is_dir() || secrets_present || {
        is_root() && run_quietly("modprobe", &["efi_secret"]).is_ok() && paths.module.is_dir()
    };
    let module_ok = push(
        "efi_secret",
        loaded,
        if loaded {
            "available".into()
        } else {
            format!(
                "module not loaded ({} missing){}; the guest kernel or initrd lacks efi_secret",
                paths.module.display(),
                if is_root() {
                    " and modprobe failed"
                } else {
                    ""
                }
            )
        },
    );

    // 3. The secrets directory.
    let dir_ok = push(
        "secrets directory",
        secrets_present,
        if secrets_present {
            format!("{} present", paths.secrets.display())
        } else if !sfs || !module_ok {
            format!("{} missing (see above)", paths.secrets.display())
        } else {
            format!(
                "{} missing: no secret area was injected (the launch was not pre-attested?)",
                paths.secrets.display()
            )
        },
    );
    if !dir_ok {
        return found;
    }

    // 4. The mode's entry.
    let read = |guid: &str| std::fs::read(paths.secrets.join(guid));
    // Only a missing entry was never delivered (or consumed); one that is
    // there but cannot be read is named as such.
    let absent = |guid: &str, what: &str, e: &std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "no entry {guid} ({what}): never delivered, or already consumed by the \
                 attestation agent, which removes the entries it reads"
            )
        } else {
            format!("entry {guid} ({what}) is there but cannot be read: {e}")
        }
    };
    match mode {
        Mode::Offline => match read(BUNDLE_GUID) {
            Ok(data) => match parse_bundle(&data) {
                Ok(b) => {
                    push(
                        "bundle",
                        true,
                        format!(
                            "{} secrets: {}",
                            b.secrets.len(),
                            b.secrets.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                    // The offline KBC looks the layers' key up in the bundle by id.
                    let key = ImageKeyReport::from_length(
                        Source::Bundle,
                        b.secrets.get(IMAGE_KEY_ID).copied(),
                    );
                    let c = key.check();
                    push(&c.name, c.passed, c.reason);
                    found.image_key = Some(key);
                }
                Err(e) => {
                    push("bundle", false, format!("entry {BUNDLE_GUID}: {e}"));
                }
            },
            Err(e) => {
                push(
                    "bundle",
                    false,
                    absent(BUNDLE_GUID, "offline keyset bundle", &e),
                );
            }
        },
        Mode::Online => match read(CONNECTION_GUID) {
            Ok(data) => match parse_connection(&data) {
                Ok(c) => {
                    push("connection", true, format!("client id {}", c.client_id));
                    found.connection = Some(c);
                }
                Err(e) => {
                    push("connection", false, format!("entry {CONNECTION_GUID}: {e}"));
                }
            },
            Err(e) => {
                push(
                    "connection",
                    false,
                    absent(CONNECTION_GUID, "online connection", &e),
                );
            }
        },
    }

    // 5. The report key (the broker's own entry for this client).
    match read(REPORT_KEY_GUID) {
        Ok(data) => match parse_report_key(&data) {
            Ok(k) => {
                push("report key", true, format!("launch {}", k.launch_id));
                found.report_key = Some(k);
            }
            Err(e) => {
                push("report key", false, format!("entry {REPORT_KEY_GUID}: {e}"));
            }
        },
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            push(
                "report key",
                false,
                format!("entry {REPORT_KEY_GUID} is there but cannot be read: {e}"),
            );
        }
        Err(_) => {
            push(
                "report key",
                false,
                format!(
                    "no entry {REPORT_KEY_GUID}: the key broker added none, or it was used \
                     and wiped by an earlier run"
                ),
            );
        }
    }
    found
}

/// Wipes the report key entry (unlinking an `efi_secret` file clears the
/// entry in guest memory). Only this entry: the others belong to the guest's
/// attestation agent.
pub fn wipe_report_key(paths: &Paths) -> std::io::Result<()> {
    std::fs::remove_file(paths.secrets.join(REPORT_KEY_GUID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_and_kbs_from_the_kernel_command_line() {
        assert_eq!(
            mode_from_cmdline("quiet agent.aa_kbc_params=online_sev_kbc::10.0.0.5:44444 x=1"),
            Some((Mode::Online, Some("10.0.0.5:44444".into())))
        );
        assert_eq!(
            mode_from_cmdline("agent.aa_kbc_params=offline_sev_kbc::null"),
            Some((Mode::Offline, None))
        );
        assert_eq!(mode_from_cmdline("quiet"), None);
        assert_eq!(mode_from_cmdline("agent.aa_kbc_params=cc_kbc::x"), None);
    }
}
