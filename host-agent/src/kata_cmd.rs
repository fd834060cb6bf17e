//! `host-agent kata ...`: switches guest pre-attestation and image signature
//! verification on and off in Kata configuration files, in place.
//!
//! The edits themselves are [`crate::kata_edit`]'s (pure, layout-preserving);
//! this module chooses the files, finds the address a guest can reach the key
//! broker at, and replaces each changed file atomically with its owner and mode
//! kept, because the host agent's daemon and the Kata shim read these files while
//! we write them. Unchanged files are not touched at all, so that a second run
//! wakes no watcher.

use crate::kata_edit::{
    is_sev_pre_attestation_config, set_guest_pre_attestation, set_signature_verification,
    validate_kbs_uri, Edit, KataEditError, PreAttestation,
};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use kata_launch::KbsMode;
use rustix::fs::{FileType, Gid, Mode, Uid};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the CoCo operator (0.7) installs the Kata configurations.
pub const DEFAULT_CONFIG_GLOB: &str =
    "/opt/confidential-containers/share/defaults/kata-containers/configuration-*.toml";

/// The key broker's port (simple-kbs and ours).
pub const DEFAULT_KBS_PORT: u16 = 44444;

/// Options of `host-agent kata`.
#[derive(Debug, Args)]
pub struct KataArgs {
    /// What to switch.
    #[command(subcommand)]
    pub command: KataCommand,
}

/// Subcommands of `host-agent kata`.
#[derive(Debug, Subcommand)]
pub enum KataCommand {
    /// Switch SEV guest pre-attestation on or off.
    ///
    /// on: sets guest_pre_attestation = true, guest_pre_attestation_kbs_uri and
    /// guest_pre_attestation_kbs_mode in [hypervisor.qemu]; off: sets only
    /// guest_pre_attestation = false (the address and mode stay for next time).
    /// Comments and layout are kept; only the changed values are rewritten.
    GuestAttestation(GuestAttestationArgs),
    /// Switch image signature verification in the guest on or off.
    ///
    /// Sets agent.enable_signature_verification=true|false in [hypervisor.qemu]
    /// kernel_params, in place (appended when absent). This changes the kernel
    /// command line, and so the launch digest the key broker must expect.
    SignatureVerification(SignatureVerificationArgs),
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Switch it on.
    On,
    /// Switch it off.
    Off,
}

/// `--mode` values (Kata's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The guest's online_sev_kbc fetches secrets from the key broker itself
    /// (what the stock SEV initrd is built for).
    Online,
    /// The key broker's secret bundle is injected at launch; needs an initrd
    /// built for the offline KBC.
    Offline,
}

impl From<ModeArg> for KbsMode {
    fn from(m: ModeArg) -> KbsMode {
        match m {
            ModeArg::Online => KbsMode::Online,
            ModeArg::Offline => KbsMode::Offline,
        }
    }
}

/// The files to edit and whether to write them.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// Kata configuration file to edit; repeat for several. Default: every
    /// /opt/confidential-containers/share/defaults/kata-containers/configuration-*.toml
    /// whose [hypervisor.qemu] has confidential_guest = true and sev_snp_guest not
    /// true (Kata pre-attests SEV and SEV-ES guests only). A symbolic link is
    /// followed and its target edited.
    #[arg(long = "kata-config", value_name = "FILE")]
    pub kata_configs: Vec<PathBuf>,
    /// Print what would change, as a unified diff per file, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Options of `host-agent kata guest-attestation`.
#[derive(Debug, Args)]
pub struct GuestAttestationArgs {
    /// on or off.
    #[arg(value_enum)]
    pub state: Switch,
    /// Key broker address, HOST:PORT (IPv6 in brackets), that both the Kata shim
    /// and the guest dial; never localhost, which the guest cannot reach. Default:
    /// this node's source address on its default route, port 44444. Only with on.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_kbs_uri)]
    pub kbs_uri: Option<String>,
    /// Pre-attestation mode. Default: keep the mode the file already has, or
    /// online when it has none. Only with on.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Files and dry run.
    #[command(flatten)]
    pub files: FileArgs,
}

/// Options of `host-agent kata signature-verification`.
#[derive(Debug, Args)]
pub struct SignatureVerificationArgs {
    /// on or off.
    #[arg(value_enum)]
    pub state: Switch,
    /// Files and dry run.
    #[command(flatten)]
    pub files: FileArgs,
}

fn parse_kbs_uri(s: &str) -> Result<String, String> {
    validate_kbs_uri(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// Runs `kata`.
pub fn run(a: &KataArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &a.command {
        KataCommand::GuestAttestation(g) => {
            if g.state == Switch::Off && (g.kbs_uri.is_some() || g.mode.is_some()) {
                bail!("--kbs-uri and --mode apply only to `guest-attestation on`");
            }
            // Files first: with none to edit, the address does not matter.
            let files = config_files(&g.files, DEFAULT_CONFIG_GLOB)?;
            let setting = match g.state {
                Switch::On => {
                    let kbs_uri = match &g.kbs_uri {
                        Some(uri) => {
                            if validate_kbs_uri(uri)?.host.is_loopback() {
                                writeln!(
                                    out,
                                    "warning: {uri} is a loopback address, \
                                     which the guest cannot reach"
                                )?;
                            }
                            uri.clone()
                        }
                        None => {
                            let ip = node_address()?;
                            let uri = kbs_uri_for(ip, DEFAULT_KBS_PORT);
                            writeln!(
                                out,
                                "KBS address {uri}: this node's default-route address \
                                 (choose another with --kbs-uri)"
                            )?;
                            uri
                        }
                    };
                    PreAttestation::On {
                        kbs_uri,
                        mode: g.mode.map(KbsMode::from),
                    }
                }
                Switch::Off => PreAttestation::Off,
            };
            apply(&files, g.files.dry_run, out, |path, text| {
                set_guest_pre_attestation(path, text, &setting)
            })
        }
        KataCommand::SignatureVerification(s) => {
            let enabled = s.state == Switch::On;
            let files = config_files(&s.files, DEFAULT_CONFIG_GLOB)?;
            apply(&files, s.files.dry_run, out, |path, text| {
                set_signature_verification(path, text, enabled)
            })
        }
    }
}

/// The files named with `--kata-config`, or the SEV pre-attestation
/// configurations matching `pattern`.
fn config_files(files: &FileArgs, pattern: &str) -> anyhow::Result<Vec<PathBuf>> {
    if files.kata_configs.is_empty() {
        default_configs(pattern)
    } else {
        Ok(files.kata_configs.clone())
    }
}

/// Every file matching `pattern` that [`is_sev_pre_attestation_config`]; an
/// error when there is none, or when one cannot be read (fail closed: a file we
/// cannot judge may be one that should have been edited).
fn default_configs(pattern: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut chosen = Vec::new();
    let mut seen = 0usize;
    for entry in glob::glob(pattern).with_context(|| format!("bad pattern {pattern}"))? {
        let path = entry.with_context(|| format!("listing {pattern}"))?;
        seen += 1;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("file {}: cannot read", path.display()))?;
        if is_sev_pre_attestation_config(&path, &text)? {
            chosen.push(path);
        }
    }
    if chosen.is_empty() {
        bail!(
            "no Kata configuration for SEV or SEV-ES guests (confidential_guest = true, \
             sev_snp_guest not true) matches {pattern} ({seen} file(s) matched the pattern); \
             name the files with --kata-config"
        );
    }
    Ok(chosen)
}

/// This node's address as seen on its default route: the source address the
/// kernel picks for a public destination. Connecting a UDP socket sends nothing.
fn node_address() -> anyhow::Result<IpAddr> {
    // Documentation addresses (RFC 5737, RFC 3849): routed by the default route
    // like any public address, and nothing is ever sent to them.
    let probes = [
        (
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 9)),
        ),
        (
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9)),
        ),
    ];
    let mut seen = Vec::new();
    for (local, remote) in probes {
        let Ok(socket) = UdpSocket::bind(local) else {
            continue;
        };
        if socket.connect(remote).is_err() {
            continue;
        }
        if let Ok(addr) = socket.local_addr() {
            if guest_reachable(addr.ip()) {
                return Ok(addr.ip());
            }
            seen.push(addr.ip().to_string());
        }
    }
    let found = if seen.is_empty() {
        "no default route".to_string()
    } else {
        format!("only {}", seen.join(", "))
    };
    bail!(
        "cannot find an address of this node that a guest can reach ({found}); \
         pass --kbs-uri HOST:PORT with the key broker's address"
    )
}

/// Whether a guest could dial this address: not loopback, unspecified,
/// multicast, or IPv6 link-local (a URI cannot carry the interface it needs).
fn guest_reachable(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

/// `HOST:PORT` for an address, IPv6 in brackets.
fn kbs_uri_for(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// A configuration file as read: where it really is, its text, and what the
/// replacement must keep.
struct Target {
    /// As the operator named it.
    shown: PathBuf,
    /// With symbolic links resolved: the file that is replaced.
    real: PathBuf,
    text: String,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn read_target(path: &Path) -> anyhow::Result<Target> {
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("file {}: cannot open", path.display()))?;
    let mut file =
        File::open(&real).with_context(|| format!("file {}: cannot open", path.display()))?;
    let st = rustix::fs::fstat(&file)
        .with_context(|| format!("file {}: cannot stat", path.display()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        bail!("file {}: not a regular file", path.display());
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("file {}: cannot read as UTF-8 text", path.display()))?;
    Ok(Target {
        shown: path.to_path_buf(),
        real,
        text,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    })
}

/// Edits every file, then writes the changed ones. All edits are computed
/// before anything is written, so a bad file stops the run with no file changed.
fn apply<F>(paths: &[PathBuf], dry_run: bool, out: &mut dyn Write, edit: F) -> anyhow::Result<()>
where
    F: Fn(&Path, &str) -> Result<Edit, KataEditError>,
{
    let mut work: Vec<(Target, Edit)> = Vec::new();
    for path in paths {
        let target = read_target(path)?;
        // The same file named twice (or through a link) is edited once.
        if work.iter().any(|(t, _)| t.real == target.real) {
            continue;
        }
        let result = edit(path, &target.text)?;
        work.push((target, result));
    }
    for (target, result) in &work {
        let shown = target.shown.display();
        let via = if target.real == target.shown {
            String::new()
        } else {
            format!(" (-> {})", target.real.display())
        };
        if !result.changed {
            writeln!(out, "{shown}{via}: unchanged")?;
            continue;
        }
        let verb = if dry_run { "would change" } else { "changed" };
        writeln!(out, "{shown}{via}: {verb}")?;
        for change in &result.changes {
            writeln!(out, "  {change}")?;
        }
        if dry_run {
            let name = target.shown.to_string_lossy();
            let diff = similar::TextDiff::from_lines(target.text.as_str(), result.text.as_str());
            write!(
                out,
                "{}",
                diff.unified_diff().context_radius(3).header(&name, &name)
            )?;
        } else {
            replace_file(target, &result.text)
                .with_context(|| format!("file {}: not written", target.shown.display()))?;
        }
    }
    Ok(())
}

/// Replaces `target.real` with `text` atomically: a temporary file in the same
/// directory gets the text, the original's owner and mode, and an fsync; it is
/// renamed over the original and the directory is synced, so that readers see
/// the old file or the new one, never a half-written one, even after a crash.
fn replace_file(target: &Target, text: &str) -> anyhow::Result<()> {
    let dir = match target.real.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target
        .real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (tmp_path, mut tmp) = create_temp(dir, &name)?;
    let result = (|| -> anyhow::Result<()> {
        tmp.write_all(text.as_bytes()).context("writing")?;
        let st = rustix::fs::fstat(&tmp)?;
        // Owner before mode: changing the owner clears set-id bits.
        if st.st_uid != target.uid || st.st_gid != target.gid {
            rustix::fs::fchown(
                &tmp,
                Some(Uid::from_raw(target.uid)),
                Some(Gid::from_raw(target.gid)),
            )
            .with_context(|| {
                format!(
                    "cannot give the new file the original's owner {}:{} \
                     (run as root or as the owner)",
                    target.uid, target.gid
                )
            })?;
        }
        rustix::fs::fchmod(&tmp, Mode::from_raw_mode(target.mode)).context("setting the mode")?;
        rustix::fs::fsync(&tmp).context("syncing")?;
        // Someone else may have edited the file since we read it; do not undo that.
        let now = std::fs::read(&target.real).context("re-reading the original")?;
        if now != target.text.as_bytes() {
            bail!("it changed while being edited; run the command again");
        }
        std::fs::rename(&tmp_path, &target.real).context("renaming the new file into place")?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
        return result;
    }
    // The rename is durable only once the directory is.
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    rustix::fs::fsync(&d).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// A new, private file beside the original (same file system, so the rename is
/// atomic), named after it and hidden, created exclusively.
fn create_temp(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last_error = None;
    for n in 0..16u32 {
        let path = dir.join(format!(".{name}.host-agent-{pid}-{n}.tmp"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create a file in {}", dir.display()))
            }
        }
    }
    Err(anyhow::anyhow!(
        "cannot create a temporary file in {}: {}",
        dir.display(),
        last_error.map_or_else(String::new, |e| e.to_string())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SEV: &str =
        "[hypervisor.qemu]\nconfidential_guest = true\nguest_pre_attestation = false\n";

    #[test]
    fn default_configs_are_sev_confidential_only() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("configuration-qemu-sev.toml", SEV);
        write(
            "configuration-qemu-snp.toml",
            "[hypervisor.qemu]\nconfidential_guest = true\nsev_snp_guest = true\n",
        );
        write(
            "configuration-qemu.toml",
            "[hypervisor.qemu]\npath = \"/q\"\n",
        );
        write("configuration-clh.toml", "[hypervisor.clh]\n");
        write("other.toml", SEV);
        let pattern = format!("{}/configuration-*.toml", dir.path().display());
        let found = default_configs(&pattern).unwrap();
        assert_eq!(found, vec![dir.path().join("configuration-qemu-sev.toml")]);

        let empty = tempfile::tempdir().unwrap();
        let pattern = format!("{}/configuration-*.toml", empty.path().display());
        let msg = default_configs(&pattern).unwrap_err().to_string();
        assert!(msg.contains(&pattern), "{msg}");
        assert!(msg.contains("--kata-config"), "{msg}");
    }

    #[test]
    fn addresses_a_guest_cannot_reach_are_refused() {
        assert!(!guest_reachable("127.0.0.1".parse().unwrap()));
        assert!(!guest_reachable("0.0.0.0".parse().unwrap()));
        assert!(!guest_reachable("::1".parse().unwrap()));
        assert!(!guest_reachable("::".parse().unwrap()));
        assert!(!guest_reachable("fe80::1".parse().unwrap()));
        assert!(guest_reachable("10.0.0.5".parse().unwrap()));
        assert!(guest_reachable("fd00::5".parse().unwrap()));
        assert_eq!(
            kbs_uri_for("10.0.0.5".parse().unwrap(), 44444),
            "10.0.0.5:44444"
        );
        assert_eq!(
            kbs_uri_for("fd00::5".parse().unwrap(), 44444),
            "[fd00::5]:44444"
        );
        assert!(validate_kbs_uri(&kbs_uri_for("fd00::5".parse().unwrap(), 1)).is_ok());
    }

    #[test]
    fn node_address_is_never_loopback() {
        // Machines without a default route (some CI sandboxes) get the error.
        match node_address() {
            Ok(ip) => assert!(guest_reachable(ip), "{ip}"),
            Err(e) => assert!(e.to_string().contains("--kbs-uri"), "{e}"),
        }
    }

    #[test]
    fn replacement_keeps_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("configuration-qemu-sev.toml");
        std::fs::write(&path, SEV).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let target = read_target(&path).unwrap();
        replace_file(&target, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_file_changed_meanwhile_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, SEV).unwrap();
        let target = read_target(&path).unwrap();
        std::fs::write(&path, "someone else's edit\n").unwrap();
        let err = replace_file(&target, "ours\n").unwrap_err();
        assert!(format!("{err:#}").contains("changed while"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "someone else's edit\n"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn links_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("configuration-qemu-sev.toml");
        let link = dir.path().join("configuration.toml");
        std::fs::write(&real, SEV).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut out = Vec::new();
        apply(&[link.clone(), real.clone()], false, &mut out, |p, t| {
            set_signature_verification(p, t, true)
        })
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        // Named twice, edited once, through the link.
        assert_eq!(out.matches(": changed").count(), 1, "{out}");
        assert!(out.contains(" (-> "), "{out}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::read_to_string(&real)
            .unwrap()
            .contains("agent.enable_signature_verification=true"));
    }
}
