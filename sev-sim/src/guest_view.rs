//! A guest's file-system view of an injected secret table, laid out under a
//! directory of its own: what `efi_secret` shows under securityfs, the mount
//! table naming that securityfs, an empty module directory and a kernel
//! command line. `guest-client verify` is pointed at these files instead of
//! the real ones, so the tests, the demo and the benchmark run it unprivileged.

use crate::error::SimError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of one simulated guest.
#[derive(Debug, Clone)]
pub struct GuestView {
    root: PathBuf,
}

impl GuestView {
    /// Writes the view of `table` under `root` (created if missing), with
    /// `cmdline` as the guest's kernel command line.
    pub fn write(root: &Path, table: &[u8], cmdline: &str) -> Result<GuestView, SimError> {
        let view = GuestView {
            root: root.to_path_buf(),
        };
        crate::efi_secret::write_dir(table, &view.secrets_dir())?;
        let io = |path: PathBuf| move |source| SimError::Io { path, source };
        let module = root.join("module");
        std::fs::create_dir_all(&module).map_err(io(module))?;
        let mounts = view.mounts();
        std::fs::write(
            &mounts,
            format!(
                "securityfs {} securityfs rw 0 0\n",
                view.securityfs().display()
            ),
        )
        .map_err(io(mounts.clone()))?;
        let cmdline_file = view.cmdline();
        std::fs::write(&cmdline_file, format!("{cmdline}\n")).map_err(io(cmdline_file.clone()))?;
        Ok(view)
    }

    /// A view written earlier under `root`.
    pub fn at(root: &Path) -> GuestView {
        GuestView {
            root: root.to_path_buf(),
        }
    }

    /// The directory everything is under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where securityfs is "mounted".
    pub fn securityfs(&self) -> PathBuf {
        self.root.join("security")
    }

    /// The secrets directory `efi_secret` fills (one file per GUID).
    pub fn secrets_dir(&self) -> PathBuf {
        self.securityfs().join("secrets/coco")
    }

    /// The guest's mount table.
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// The guest's kernel command line.
    pub fn cmdline(&self) -> PathBuf {
        self.root.join("cmdline")
    }

    /// `guest-client SUBCOMMAND` (`verify`, `init`) pointed at this view's
    /// files; add the subcommand's other options to it.
    pub fn client_command(&self, guest_client: &Path, subcommand: &str) -> Command {
        let mut cmd = Command::new(guest_client);
        cmd.arg(subcommand)
            .arg("--secrets-dir")
            .arg(self.secrets_dir())
            .arg("--securityfs")
            .arg(self.securityfs())
            .arg("--mounts")
            .arg(self.mounts())
            .arg("--module-dir")
            .arg(self.root.join("module"))
            .arg("--cmdline")
            .arg(self.cmdline());
        cmd
    }

    /// `guest-client verify` over this view, asking the broker at `kbs` in
    /// `mode` (`online` or `offline`); add `--json` or other options to it.
    pub fn verify_command(&self, guest_client: &Path, kbs: &str, mode: &str) -> Command {
        let mut cmd = self.client_command(guest_client, "verify");
        cmd.args(["--kbs", kbs, "--mode", mode]);
        cmd
    }
}
