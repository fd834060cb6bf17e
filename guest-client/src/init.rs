//! `guest-client init`: the init wrapper for initrd guests, where the Kata
//! agent is PID 1. It verifies and reports within a time bound, then replaces
//! itself with the agent, which keeps PID 1.

use crate::cli::{local_any, paths_of, Handover, InitArgs};
use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::Duration;

/// File systems the checks need and the kernel does not mount for PID 1.
const MOUNTS: [(&str, &str, &str); 5] = [
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("securityfs", "/sys/kernel/security", "securityfs"),
    // An initramfs has no /dev of its own; the SNP guest device lives there.
    ("devtmpfs", "/dev", "devtmpfs"),
    // SNP reports through configfs-tsm, with the host's certificates.
    ("configfs", "/sys/kernel/config", "configfs"),
];

fn mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

/// Mounts what is missing; returns what it mounted, to undo in reverse.
fn mount_missing(out: &mut dyn Write) -> Vec<&'static str> {
    let mut done = Vec::new();
    for (source, target, fstype) in MOUNTS {
        // /proc itself tells what is mounted; before it is, nothing is.
        if (target != "/proc" && mounted(target))
            || (target == "/proc" && Path::new("/proc/self").exists())
        {
            continue;
        }
        let _ = std::fs::create_dir_all(target);
        match rustix::mount::mount(
            source,
            target,
            fstype,
            if fstype == "devtmpfs" {
                rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NOEXEC
            } else {
                rustix::mount::MountFlags::NOSUID
                    | rustix::mount::MountFlags::NODEV
                    | rustix::mount::MountFlags::NOEXEC
            },
            None,
        ) {
            Ok(()) => done.push(target),
            Err(e) => {
                let _ = writeln!(out, "guest-client: cannot mount {fstype} on {target}: {e}");
            }
        }
    }
    done
}

fn unmount(targets: &[&str], out: &mut dyn Write) {
    for target in targets.iter().rev() {
        if let Err(e) = rustix::mount::unmount(*target, rustix::mount::UnmountFlags::empty()) {
            let _ = writeln!(out, "guest-client: cannot unmount {target}: {e}");
        }
    }
}

/// Verifies, hands the network steps to a child, and execs; returns only if
/// the exec failed.
///
/// Before the Kata agent runs, an initrd guest has no network (the agent sets
/// it up), so only the local checks run here, bounded by `--boot-timeout`. The
/// online round trip and the report go to a child process (`guest-client
/// finish`), which gets what it needs on its standard input, keeps trying until
/// the network is up (`--report-patience`) and, as a child, outlives the exec.
/// The report key entry is wiped here, while securityfs is still mounted; the
/// child holds the key in memory only.
pub fn run(a: &InitArgs, out: &mut dyn Write) -> anyhow::Error {
    let pid1 = std::process::id() == 1;
    let mounted_here = if pid1 { mount_missing(out) } else { Vec::new() };
    let bound = Duration::from_secs(a.boot_timeout);
    // On a thread of its own, so that nothing it waits on (a mount, modprobe)
    // can hold the boot past the bound: the exec below replaces the whole
    // process, that thread included.
    let (tx, rx) = std::sync::mpsc::channel();
    let args = a.verify.clone();
    std::thread::spawn(move || {
        let _ = tx.send(local_any(&args));
    });
    match rx.recv_timeout(bound) {
        Ok(l) => {
            for c in l.checks() {
                let _ = writeln!(
                    out,
                    "guest-client: {} {}: {}",
                    if c.passed { "ok" } else { "FAIL" },
                    c.name,
                    c.reason
                );
            }
            if matches!(&l, Handover::Sev(sev) if sev.report_key.is_some()) {
                let _ = crate::verify::wipe_report_key(&paths_of(&a.verify));
            }
            if let Err(e) = hand_over(&l, a) {
                let _ = writeln!(out, "guest-client: cannot start the reporter: {e}");
            }
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "guest-client: no outcome within {} s; booting on",
                a.boot_timeout
            );
        }
    }
    let _ = out.flush();
    unmount(&mounted_here, out);
    let err = std::process::Command::new(&a.exec).args(&a.args).exec();
    anyhow::anyhow!("cannot exec {}: {err}", a.exec.display())
}

/// Starts `guest-client finish` with the local outcome on its standard input.
fn hand_over(l: &Handover, a: &InitArgs) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("finish")
        .arg("--timeout")
        .arg(a.verify.timeout.to_string())
        .arg("--report-patience")
        .arg(a.report_patience.to_string())
        .args(a.verify.no_report.then_some("--no-report"))
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    let json = serde_json::to_vec(l).map_err(std::io::Error::other)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&json)?;
    }
    // Not waited for: it outlives the exec, and the agent as PID 1 reaps it.
    drop(child);
    Ok(())
}
