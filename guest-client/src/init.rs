//! `guest-client init`: the init wrapper for initrd guests, where the Kata
//! agent is PID 1. It verifies and reports within a time bound, then replaces
//! itself with the agent, which keeps PID 1.

use crate::cli::{print_human, verify, InitArgs};
use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::Duration;

/// File systems the checks need and the kernel does not mount for PID 1.
const MOUNTS: [(&str, &str, &str); 3] = [
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("securityfs", "/sys/kernel/security", "securityfs"),
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
            rustix::mount::MountFlags::NOSUID
                | rustix::mount::MountFlags::NODEV
                | rustix::mount::MountFlags::NOEXEC,
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

/// Verifies, reports and execs; returns only if the exec failed.
pub fn run(a: &InitArgs, out: &mut dyn Write) -> anyhow::Error {
    let pid1 = std::process::id() == 1;
    let mounted_here = if pid1 { mount_missing(out) } else { Vec::new() };
    let bound = Duration::from_secs(a.boot_timeout);
    // On a thread of its own, so that nothing it waits on (a mount, modprobe,
    // the network) can hold the boot past the bound: the exec below replaces
    // the whole process, that thread included.
    let (tx, rx) = std::sync::mpsc::channel();
    let args = a.verify.clone();
    std::thread::spawn(move || {
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(verify(&args)))
            .map_err(|e| format!("cannot start the runtime: {e}"));
        let _ = tx.send(outcome);
    });
    let outcome = rx
        .recv_timeout(bound)
        .map_err(|_| format!("no outcome within {} s; booting on", a.boot_timeout))
        .and_then(|r| r);
    match outcome {
        Ok(o) => {
            let _ = print_human(&o, out);
        }
        Err(e) => {
            let _ = writeln!(out, "guest-client: {e}");
        }
    }
    let _ = out.flush();
    unmount(&mounted_here, out);
    let err = std::process::Command::new(&a.exec).args(&a.args).exec();
    anyhow::anyhow!("cannot exec {}: {err}", a.exec.display())
}
