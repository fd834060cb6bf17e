//! The one way the guest client reaches an SEV-SNP guest device: ask for an
//! attestation report over given REPORT_DATA, with the certificates the host
//! provides if it provides any.
//!
//! On hardware that is the kernel's configfs-tsm report interface
//! (`/sys/kernel/config/tsm/report`, with the host's certificates as its
//! auxblob) where the kernel has it, else `/dev/sev-guest` through the `sev`
//! crate's guest API (SNP_GET_REPORT, no certificates: give `--certs-dir`).
//!
//! In tests it is the simulator of `sev-sim`, reached over a Unix socket
//! named by the hidden, test-only option `--snp-simulator` (or the
//! environment variable `GUEST_CLIENT_SNP_SIMULATOR`). Its protocol, one
//! request per connection: the client sends "SNPR", a u32 of flags (bit 0:
//! extended report), a u32 VMPL and the 64 bytes of REPORT_DATA; the
//! simulator answers a u32 status (0, or an errno), a u32 length and the
//! report, a u32 length and the certificate table (integers little-endian).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The guest device's node on hardware.
pub const DEVICE: &str = "/dev/sev-guest";
/// The environment variable naming a simulator's socket (tests only).
pub const SIMULATOR_ENV: &str = "GUEST_CLIENT_SNP_SIMULATOR";

/// Largest report the simulator may send (a real one is 1184 bytes).
const MAX_REPORT: usize = 4 << 10;
/// Largest certificate table the simulator may send.
const MAX_TABLE: usize = 64 << 10;

/// What the device answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAnswer {
    /// The attestation report's bytes.
    pub report: Vec<u8>,
    /// The extended report's certificate table, when the host provides one.
    pub cert_table: Option<Vec<u8>>,
}

/// Where SNP reports come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnpDevice {
    /// The guest device of the `sev` crate's guest API.
    Hardware(PathBuf),
    /// A simulator behind a Unix socket (tests).
    Simulator(PathBuf),
}

impl SnpDevice {
    /// The simulator if `simulator` (or the environment) names one, else the
    /// hardware device.
    pub fn choose(simulator: Option<&Path>) -> SnpDevice {
        match simulator
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(SIMULATOR_ENV).map(PathBuf::from))
        {
            Some(socket) => SnpDevice::Simulator(socket),
            None => SnpDevice::Hardware(PathBuf::from(DEVICE)),
        }
    }

    /// Whether the device is there to be asked.
    pub fn present(&self) -> bool {
        match self {
            SnpDevice::Hardware(p) | SnpDevice::Simulator(p) => p.exists(),
        }
    }

    /// What to call the device in messages.
    pub fn describe(&self) -> String {
        match self {
            SnpDevice::Hardware(p) => p.display().to_string(),
            SnpDevice::Simulator(p) => format!("the SNP simulator at {}", p.display()),
        }
    }

    /// An attestation report at VMPL 0 over `report_data`, with the host's
    /// certificates when `extended` and the host has any.
    pub fn report(&self, report_data: [u8; 64], extended: bool) -> Result<DeviceAnswer, String> {
        match self {
            SnpDevice::Hardware(_) => hardware_report(report_data, extended),
            SnpDevice::Simulator(socket) => simulator_report(socket, report_data, extended),
        }
    }
}

/// Where the kernel's TSM report interface (configfs-tsm) makes reports.
pub const TSM_REPORTS: &str = "/sys/kernel/config/tsm/report";

/// On hardware: through configfs-tsm where the kernel has it (its auxblob is
/// the host's certificate table, which [`snp_attestation::decode_cert_table`]
/// reads with bounds), else SNP_GET_REPORT through the `sev` crate, without
/// certificates. The crate's extended report is not used: it reads the
/// host-written certificate table without bounds.
fn hardware_report(report_data: [u8; 64], extended: bool) -> Result<DeviceAnswer, String> {
    let tsm = Path::new(TSM_REPORTS);
    if tsm.is_dir() {
        return tsm_report(tsm, report_data, extended);
    }
    sev_report(report_data)
}

#[cfg(target_os = "linux")]
fn sev_report(report_data: [u8; 64]) -> Result<DeviceAnswer, String> {
    use sev::firmware::guest::Firmware;
    let mut fw = Firmware::open().map_err(|e| format!("cannot open {DEVICE}: {e}"))?;
    let report = fw
        .get_report(None, Some(report_data), Some(0))
        .map_err(|e| format!("{DEVICE} gave no attestation report: {e}"))?;
    Ok(DeviceAnswer {
        report,
        cert_table: None,
    })
}

#[cfg(not(target_os = "linux"))]
fn sev_report(_: [u8; 64]) -> Result<DeviceAnswer, String> {
    Err(format!("{DEVICE} exists only on Linux"))
}

/// One report through configfs-tsm: a fresh entry, REPORT_DATA in, the
/// report (and the certificate table) out, checked against the entry's
/// generation so that a concurrent writer cannot slip another request in.
fn tsm_report(dir: &Path, report_data: [u8; 64], extended: bool) -> Result<DeviceAnswer, String> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let entry = dir.join(format!("guest-client-{}-{n}", std::process::id()));
    let err = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", entry.display());
    std::fs::create_dir(&entry).map_err(|e| err("cannot create", e))?;
    let result = (|| {
        let _ = std::fs::write(entry.join("privlevel"), "0");
        std::fs::write(entry.join("inblob"), report_data).map_err(|e| err("inblob", e))?;
        let generation =
            std::fs::read_to_string(entry.join("generation")).map_err(|e| err("generation", e))?;
        let report = read_capped(&entry.join("outblob"), MAX_REPORT)?;
        let cert_table = if extended {
            match read_capped(&entry.join("auxblob"), MAX_TABLE) {
                Ok(t) if !t.is_empty() => Some(t),
                _ => None,
            }
        } else {
            None
        };
        let after =
            std::fs::read_to_string(entry.join("generation")).map_err(|e| err("generation", e))?;
        if after != generation {
            return Err(format!(
                "{}: written to by someone else while the report was read",
                entry.display()
            ));
        }
        Ok(DeviceAnswer { report, cert_table })
    })();
    let _ = std::fs::remove_dir(&entry);
    result
}

fn read_capped(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v = Vec::new();
    (&mut f)
        .take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut v)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if v.len() > max {
        return Err(format!("{}: more than {max} bytes", path.display()));
    }
    Ok(v)
}

fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_bounded(s: &mut impl Read, max: usize, what: &str) -> Result<Vec<u8>, String> {
    let len = read_u32(s).map_err(|e| format!("the SNP simulator's {what} length: {e}"))?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(format!(
            "the SNP simulator sent a {what} of {len} bytes (at most {max})"
        ));
    }
    let mut v = vec![0u8; len];
    s.read_exact(&mut v)
        .map_err(|e| format!("the SNP simulator's {what}: {e}"))?;
    Ok(v)
}

fn simulator_report(
    socket: &Path,
    report_data: [u8; 64],
    extended: bool,
) -> Result<DeviceAnswer, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the SNP simulator at {}: {e}",
            socket.display()
        )
    })?;
    let limit = Some(Duration::from_secs(10));
    let _ = s.set_read_timeout(limit);
    let _ = s.set_write_timeout(limit);
    let mut req = Vec::with_capacity(76);
    req.extend_from_slice(b"SNPR");
    req.extend_from_slice(&u32::from(extended).to_le_bytes());
    req.extend_from_slice(&0u32.to_le_bytes());
    req.extend_from_slice(&report_data);
    s.write_all(&req)
        .map_err(|e| format!("cannot ask the SNP simulator: {e}"))?;
    let status = read_u32(&mut s).map_err(|e| format!("the SNP simulator did not answer: {e}"))?;
    if status != 0 {
        return Err(format!(
            "the guest device refused the request: {}",
            std::io::Error::from_raw_os_error(i32::try_from(status).unwrap_or(i32::MAX))
        ));
    }
    let report = read_bounded(&mut s, MAX_REPORT, "report")?;
    let table = read_bounded(&mut s, MAX_TABLE, "certificate table")?;
    Ok(DeviceAnswer {
        report,
        cert_table: (!table.is_empty()).then_some(table),
    })
}
