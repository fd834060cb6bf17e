//! What `kbs-load` reads about processes from /proc (CPU time, resident
//! memory) and the file-descriptor limits it sets: its own, so that a flood
//! of thousands of connections fits, and the broker's, as its systemd unit
//! sets it.

use anyhow::Context;
use rustix::process::{getrlimit, prlimit, setrlimit, Pid, Resource, Rlimit};

/// The broker's file limit in production: `LimitNOFILE=` in
/// systemd/kbs.service. The broker inherits the load generator's, which is
/// raised for the floods, or may be the common default of 1024, at which the
/// broker's own default cap of 1,024 connections would run it out of
/// descriptors: neither is what it gets in production.
pub const KBS_NOFILE: u64 = 4096;

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// A process's resident memory, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS: resident now, KiB.
    pub rss_kib: u64,
    /// VmHWM: the most it has been resident since it started, KiB.
    pub hwm_kib: u64,
}

/// Reads VmRSS and VmHWM of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Raises this process's soft file limit to its hard limit when it is below
/// `needed`; fails if even the hard limit is.
pub fn raise_own_nofile(needed: u64) -> anyhow::Result<()> {
    let limit = getrlimit(Resource::Nofile);
    // None is unlimited.
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < needed {
        anyhow::bail!(
            "the floods and launches need about {needed} file descriptors; the hard limit is {hard} \
             (raise it, e.g. `ulimit -Hn {needed}` as root, or flood with fewer connections)"
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .context("cannot raise the file descriptor limit")?;
    Ok(())
}

/// Sets the file limit of the process `pid` (soft and hard) to `n`, or to
/// its hard limit if that is lower.
pub fn set_nofile(pid: u32, n: u64) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("process id out of range")?;
    let pid = Pid::from_raw(raw).context("process id 0")?;
    let limit = getrlimit(Resource::Nofile);
    let n = n.min(limit.maximum.unwrap_or(u64::MAX));
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: Some(n),
        },
    )
    .with_context(|| format!("cannot set the file limit of process {raw}"))?;
    Ok(())
}

/// How many sockets the process `pid` has open, from the links in
/// /proc/PID/fd. Less those it had before any traffic (its listeners), these
/// are the connections it holds, whoever made them. Cheaper than reading
/// /proc/net/tcp, which a flood fills with tens of thousands of TIME-WAIT
/// entries.
pub fn sockets(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        // A descriptor closed while this reads is skipped.
        let Ok(entry) = entry else { continue };
        if std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:")
        }) {
            n += 1;
        }
    }
    Ok(n)
}
