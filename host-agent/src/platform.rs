//! The platform's SEV-SNP TCB, as the SEV firmware reports it through
//! `/dev/sev` (SNP_PLATFORM_STATUS), and the processor generation it belongs to.
//!
//! Trustee's attestation policy accepts an SNP guest's hardware only when the
//! REPORTED TCB of its attestation report matches the reference values
//! `snp_bootloader`, `snp_tee_svn`, `snp_snp_svn` and `snp_microcode`. The
//! firmware puts its reported TCB (not the installed "current" one, which may be
//! newer) into every report it signs, so [`read_platform`] gives this node's
//! values for those four names, plus the FMC SVN of Turin and later parts and
//! the firmware version for the operator.
//!
//! The 32-byte status is decoded by the `sev` crate ([`decode_snp_status`] for
//! a buffer in hand, e.g. from the simulated platform in tests). Its TCB layout
//! depends on the generation: Milan and Genoa put boot loader, TEE, SNP and
//! microcode in bytes 0, 1, 6 and 7 of each 8-byte TCB; Turin and Venice put
//! FMC, boot loader, TEE and SNP in bytes 0 to 3 and microcode in byte 7.
//! Reading a buffer with the wrong generation does not fail in the crate, so the
//! bytes each layout reserves are checked to be zero here.
//!
//! `/dev/sev` is opened read-write (the crate offers no other way), so the
//! agent needs write access to it. The query runs on its own thread and is
//! abandoned after [`STATUS_TIMEOUT`] if the firmware does not answer.

use serde::{Deserialize, Serialize};
use sev::firmware::host::{Firmware, SnpPlatformStatus};
use sev::parser::ByteParser;
use sev::Generation;
use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// The SEV firmware device: the only path the `sev` crate opens.
pub const SEV_DEVICE: &str = "/dev/sev";

/// Length of the SNP_PLATFORM_STATUS answer.
pub const STATUS_LEN: usize = 32;

/// How long [`read_platform`] waits for the firmware's answer. The kernel
/// serialises firmware commands, so a busy or wedged PSP would otherwise block
/// the caller for as long as the kernel's own command timeout (minutes).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// Offset of the installed ("current") TCB in the status.
const CURRENT_TCB_OFFSET: usize = 0x10;
/// Offset of the reported TCB in the status.
const REPORTED_TCB_OFFSET: usize = 0x18;

/// An AMD EPYC generation with SEV-SNP, which decides the TCB's byte layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ProductName {
    /// Third generation EPYC (Zen 3).
    Milan,
    /// Fourth generation EPYC (Zen 4), including Genoa-X, Bergamo and Siena,
    /// which share Genoa's TCB layout and certificate chain.
    Genoa,
    /// Fifth generation EPYC (Zen 5), whose TCB adds the FMC SVN.
    Turin,
    /// Sixth generation EPYC, with Turin's TCB layout.
    Venice,
}

impl ProductName {
    /// The name AMD's key distribution service and Trustee use ("Milan", ...).
    pub fn name(self) -> &'static str {
        match self {
            ProductName::Milan => "Milan",
            ProductName::Genoa => "Genoa",
            ProductName::Turin => "Turin",
            ProductName::Venice => "Venice",
        }
    }

    /// Whether this generation's TCB carries an FMC SVN (Turin and later).
    pub fn has_fmc(self) -> bool {
        matches!(self, ProductName::Turin | ProductName::Venice)
    }

    /// The `sev` crate's name for this generation.
    fn generation(self) -> Generation {
        match self {
            ProductName::Milan => Generation::Milan,
            ProductName::Genoa => Generation::Genoa,
            ProductName::Turin => Generation::Turin,
            ProductName::Venice => Generation::Venice,
        }
    }

    /// The product of a `sev` crate generation; `None` for generations without
    /// SEV-SNP (Naples, Rome).
    fn from_generation(generation: Generation) -> Option<ProductName> {
        match generation.titlecase().as_str() {
            "Milan" => Some(ProductName::Milan),
            "Genoa" => Some(ProductName::Genoa),
            "Turin" => Some(ProductName::Turin),
            "Venice" => Some(ProductName::Venice),
            _ => None,
        }
    }

    /// Byte positions inside an 8-byte TCB that this generation's layout
    /// reserves.
    fn reserved_tcb_bytes(self) -> &'static [usize] {
        if self.has_fmc() {
            &[4, 5, 6]
        } else {
            &[2, 3, 4, 5]
        }
    }
}

impl fmt::Display for ProductName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProductName {
    type Err = PlatformError;

    /// Reads a product name in any case, as the `sev` crate does: "milan",
    /// "genoa" (also "bergamo" and "siena", which are Genoa to the firmware),
    /// "turin", "venice".
    fn from_str(name: &str) -> Result<ProductName, PlatformError> {
        Generation::try_from(name.to_string())
            .ok()
            .and_then(ProductName::from_generation)
            .ok_or_else(|| PlatformError::UnknownProduct {
                name: name.to_string(),
            })
    }
}

/// The platform's SEV-SNP TCB and firmware version, from SNP_PLATFORM_STATUS.
///
/// The SVNs are those of the REPORTED TCB, the one guests' attestation reports
/// carry and Trustee's `snp_*` reference values are compared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformTcb {
    /// The processor generation ("Milan", "Genoa", "Turin", "Venice").
    pub product: String,
    /// SVN of the PSP boot loader (Trustee's `snp_bootloader`).
    pub bootloader: u8,
    /// SVN of the PSP operating system (Trustee's `snp_tee_svn`).
    pub tee: u8,
    /// SVN of the SNP firmware (Trustee's `snp_snp_svn`).
    pub snp: u8,
    /// Lowest microcode patch level of all cores (Trustee's `snp_microcode`).
    pub microcode: u8,
    /// SVN of the FMC firmware: `Some` on Turin and later, `None` on Milan and
    /// Genoa, whose TCB has no such field.
    pub fmc: Option<u8>,
    /// The firmware's API version, "major.minor".
    pub firmware_version: String,
    /// The firmware's build number.
    pub build_id: u32,
}

impl std::fmt::Display for PlatformTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} firmware {} build {}: boot loader {}, TEE {}, SNP {}, microcode {}",
            self.product,
            self.firmware_version,
            self.build_id,
            self.bootloader,
            self.tee,
            self.snp,
            self.microcode
        )?;
        if let Some(fmc) = self.fmc {
            write!(f, ", FMC {fmc}")?;
        }
        Ok(())
    }
}

/// Why the platform's TCB could not be read or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// A device other than the one the `sev` crate opens was asked for.
    #[error(
        "{}: cannot read the SEV firmware through this path: the sev crate opens only {SEV_DEVICE}",
        device.display()
    )]
    UnsupportedDevice {
        /// The path asked for.
        device: PathBuf,
    },

    /// The device does not exist, or no driver stands behind it.
    #[error(
        "{}: {source}: this node has no SEV firmware device (not an AMD SEV host, SEV \
         disabled in the firmware setup, or the ccp/kvm_amd driver not loaded)",
        device.display()
    )]
    NoDevice {
        /// The device path.
        device: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The device exists but this process may not open it read-write.
    #[error(
        "{}: {source}: the agent lacks read-write access to the SEV firmware device (run it \
         as root or grant access with a group or udev rule)",
        device.display()
    )]
    PermissionDenied {
        /// The device path.
        device: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The path exists but is not a character device.
    #[error("{}: not a character device, so not the SEV firmware device", device.display())]
    NotADevice {
        /// The path.
        device: PathBuf,
    },

    /// Opening the device failed for another reason.
    #[error("{}: cannot open the SEV firmware device: {source}", device.display())]
    Open {
        /// The device path.
        device: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The CPU is not an SEV-SNP generation the `sev` crate knows, so the TCB's
    /// layout is unknown.
    #[error(
        "{}: cannot decode the SNP TCB: {cpu} is not an SEV-SNP processor generation the \
         sev crate knows (Milan, Genoa, Turin, Venice): {reason}",
        device.display()
    )]
    UnknownGeneration {
        /// The device path.
        device: PathBuf,
        /// The CPU, as `/proc/cpuinfo` names it.
        cpu: String,
        /// What the generation detection said.
        reason: String,
    },

    /// The SNP_PLATFORM_STATUS command failed, or its answer was unusable.
    #[error(
        "{}: SNP_PLATFORM_STATUS failed: {reason} (is SEV-SNP enabled in the firmware \
         setup and initialised by the kernel?)",
        device.display()
    )]
    Status {
        /// The device path.
        device: PathBuf,
        /// The firmware's, the kernel's or the decoder's error.
        reason: String,
    },

    /// The firmware did not answer within the time allowed.
    #[error(
        "{}: SNP_PLATFORM_STATUS did not answer within {} s (firmware busy or hung)",
        device.display(),
        after.as_secs()
    )]
    Timeout {
        /// The device path.
        device: PathBuf,
        /// The time waited.
        after: Duration,
    },

    /// The thread that queries the firmware could not be started.
    #[error("{}: cannot start a thread to query the SEV firmware: {source}", device.display())]
    Thread {
        /// The device path.
        device: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The `sev` crate could not decode the status buffer.
    #[error("SNP_PLATFORM_STATUS: cannot decode the {product} status: {reason}")]
    Decode {
        /// The generation whose layout was used.
        product: ProductName,
        /// The decoder's error.
        reason: String,
    },

    /// A byte the generation's TCB layout reserves is not zero: the buffer
    /// most likely comes from another generation.
    #[error(
        "SNP_PLATFORM_STATUS byte {offset:#04x} (byte {index} of the {tcb} TCB) is \
         {value:#04x}, but the {product} TCB layout reserves it: the status is not from a \
         {product} (wrong processor generation?)"
    )]
    ReservedTcbByte {
        /// Offset of the byte in the 32-byte status.
        offset: usize,
        /// Position of the byte inside its 8-byte TCB.
        index: usize,
        /// Which TCB: "current" (installed) or "reported".
        tcb: &'static str,
        /// The byte's value.
        value: u8,
        /// The generation whose layout was used.
        product: ProductName,
    },

    /// The status names API major version 0, which no SEV-SNP firmware has.
    #[error(
        "SNP_PLATFORM_STATUS reports firmware API version 0.{minor}: no SEV-SNP firmware \
         writes that (a buffer the firmware never filled?)"
    )]
    NoFirmwareVersion {
        /// The API minor version in the status.
        minor: u8,
    },

    /// Text that names no SEV-SNP processor generation.
    #[error(
        "{name:?} is not an SEV-SNP processor generation (Milan, Genoa, Bergamo, Siena, \
         Turin, Venice)"
    )]
    UnknownProduct {
        /// The text.
        name: String,
    },
}

/// Decodes a 32-byte SNP_PLATFORM_STATUS answer of a `product` platform.
///
/// Layout: API major and minor version at 0x00 and 0x01, state 0x02, RMP flags
/// 0x03, build id 0x04 (u32 LE), platform policy 0x08, guest count 0x0C, current
/// TCB 0x10, reported TCB 0x18; the TCBs in `product`'s layout. Fails when a
/// byte that layout reserves in either TCB is set (the buffer is from another
/// generation) and when the API major version is 0 (no firmware wrote it).
pub fn decode_snp_status(
    raw: &[u8; STATUS_LEN],
    product: ProductName,
) -> Result<PlatformTcb, PlatformError> {
    check_reserved_tcb_bytes(raw, product)?;
    let status =
        SnpPlatformStatus::from_bytes_with(raw.as_slice(), product.generation()).map_err(|e| {
            PlatformError::Decode {
                product,
                reason: e.to_string(),
            }
        })?;
    tcb_from_status(&status, product)
}

/// Reads this node's SEV-SNP TCB from the SEV firmware through `device`.
///
/// The `sev` crate opens only [`SEV_DEVICE`], so any other path is refused
/// with [`PlatformError::UnsupportedDevice`]; the path is taken to name the
/// device in errors. The processor generation comes from this CPU's CPUID.
/// Blocks for at most [`STATUS_TIMEOUT`] (call it from a blocking thread in
/// async code); errors name the device and what failed, and it never panics.
pub fn read_platform(device: &Path) -> Result<PlatformTcb, PlatformError> {
    if device != Path::new(SEV_DEVICE) {
        return Err(PlatformError::UnsupportedDevice {
            device: device.to_path_buf(),
        });
    }
    check_device(device)?;
    let worker_device = device.to_path_buf();
    let outcome =
        run_bounded(STATUS_TIMEOUT, move || query_firmware(&worker_device)).map_err(|source| {
            PlatformError::Thread {
                device: device.to_path_buf(),
                source,
            }
        })?;
    match outcome {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(PlatformError::Timeout {
            device: device.to_path_buf(),
            after: STATUS_TIMEOUT,
        }),
        Err(RecvTimeoutError::Disconnected) => Err(PlatformError::Status {
            device: device.to_path_buf(),
            reason: "the sev crate panicked while querying the firmware".to_string(),
        }),
    }
}

/// Checks that `device` exists and is a character device, so that opening it
/// cannot block (as opening a FIFO would).
fn check_device(device: &Path) -> Result<(), PlatformError> {
    let metadata = std::fs::metadata(device).map_err(|e| open_error(device, e))?;
    if metadata.file_type().is_char_device() {
        Ok(())
    } else {
        Err(PlatformError::NotADevice {
            device: device.to_path_buf(),
        })
    }
}

/// Classifies an error from looking up or opening the device.
fn open_error(device: &Path, source: std::io::Error) -> PlatformError {
    let device = device.to_path_buf();
    let no_driver = matches!(
        rustix::io::Errno::from_io_error(&source),
        Some(rustix::io::Errno::NXIO | rustix::io::Errno::NODEV)
    );
    match source.kind() {
        std::io::ErrorKind::NotFound => PlatformError::NoDevice { device, source },
        _ if no_driver => PlatformError::NoDevice { device, source },
        std::io::ErrorKind::PermissionDenied => PlatformError::PermissionDenied { device, source },
        _ => PlatformError::Open { device, source },
    }
}

/// Opens the firmware, finds the generation and runs SNP_PLATFORM_STATUS.
fn query_firmware(device: &Path) -> Result<PlatformTcb, PlatformError> {
    let mut firmware = Firmware::open().map_err(|e| open_error(device, e))?;
    let unknown = |reason: String| PlatformError::UnknownGeneration {
        device: device.to_path_buf(),
        cpu: describe_cpu(),
        reason,
    };
    // The crate detects the generation itself after the command, with this
    // same call; asking first tells an unknown CPU from a failed command.
    let generation = Generation::identify_host_generation().map_err(|e| unknown(e.to_string()))?;
    let product = ProductName::from_generation(generation)
        .ok_or_else(|| unknown(format!("{} has no SEV-SNP", generation.titlecase())))?;
    let status = firmware
        .snp_platform_status()
        .map_err(|e| PlatformError::Status {
            device: device.to_path_buf(),
            reason: e.to_string(),
        })?;
    tcb_from_status(&status, product).map_err(|e| PlatformError::Status {
        device: device.to_path_buf(),
        reason: e.to_string(),
    })
}

/// This CPU as `/proc/cpuinfo` gives it, for messages.
fn describe_cpu() -> String {
    match crate::host_cpu::detect() {
        Some(signature) => {
            let (family, model, _) = signature.family_model_stepping();
            format!("this CPU (AMD family {family:#x} model {model:#x})")
        }
        None => "this CPU (not AMD, or /proc/cpuinfo unreadable)".to_string(),
    }
}

/// Runs `work` on its own thread and waits at most `timeout` for its result.
/// A timed-out thread is left to finish (a thread blocked in the kernel cannot
/// be stopped); `Disconnected` means it panicked.
fn run_bounded<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<Result<T, RecvTimeoutError>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("sev-platform-status".to_string())
        .spawn(move || {
            // The receiver is gone only when the caller stopped waiting.
            let _ = sender.send(work());
        })?;
    Ok(receiver.recv_timeout(timeout))
}

/// Fails on the first non-zero byte that `product`'s layout reserves in the
/// current or the reported TCB.
fn check_reserved_tcb_bytes(
    raw: &[u8; STATUS_LEN],
    product: ProductName,
) -> Result<(), PlatformError> {
    for (tcb, base) in [
        ("current", CURRENT_TCB_OFFSET),
        ("reported", REPORTED_TCB_OFFSET),
    ] {
        for &index in product.reserved_tcb_bytes() {
            let offset = base + index;
            match raw.get(offset) {
                Some(&value) if value != 0 => {
                    return Err(PlatformError::ReservedTcbByte {
                        offset,
                        index,
                        tcb,
                        value,
                        product,
                    })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The reported TCB and firmware version of a decoded status.
fn tcb_from_status(
    status: &SnpPlatformStatus,
    product: ProductName,
) -> Result<PlatformTcb, PlatformError> {
    let (major, minor) = status.version;
    if major == 0 {
        return Err(PlatformError::NoFirmwareVersion { minor });
    }
    let tcb = status.reported_tcb_version;
    Ok(PlatformTcb {
        product: product.name().to_string(),
        bootloader: tcb.bootloader,
        tee: tcb.tee,
        snp: tcb.snp,
        microcode: tcb.microcode,
        fmc: tcb.fmc,
        firmware_version: format!("{major}.{minor}"),
        build_id: status.build_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status laid out by hand from the SNP ABI's table, independently of
    /// the `sev` crate: version, state INIT, RMP initialised, `build`, no
    /// policy bits, 2 guests, then the two TCBs as given.
    fn status(version: (u8, u8), build: u32, current: [u8; 8], reported: [u8; 8]) -> [u8; 32] {
        let mut raw = [0u8; 32];
        raw[0] = version.0;
        raw[1] = version.1;
        raw[2] = 1;
        raw[3] = 1;
        raw[4..8].copy_from_slice(&build.to_le_bytes());
        raw[0x0C..0x10].copy_from_slice(&2u32.to_le_bytes());
        raw[0x10..0x18].copy_from_slice(&current);
        raw[0x18..0x20].copy_from_slice(&reported);
        raw
    }

    /// A Milan/Genoa TCB: boot loader, TEE, four reserved bytes, SNP, microcode.
    fn legacy_tcb(bootloader: u8, tee: u8, snp: u8, microcode: u8) -> [u8; 8] {
        [bootloader, tee, 0, 0, 0, 0, snp, microcode]
    }

    /// A Turin TCB: FMC, boot loader, TEE, SNP, three reserved bytes, microcode.
    fn turin_tcb(fmc: u8, bootloader: u8, tee: u8, snp: u8, microcode: u8) -> [u8; 8] {
        [fmc, bootloader, tee, snp, 0, 0, 0, microcode]
    }

    #[test]
    fn decodes_a_genoa_status_reporting_the_reported_tcb() {
        let raw = status(
            (1, 55),
            37,
            legacy_tcb(9, 1, 23, 0xd4),
            legacy_tcb(7, 0, 21, 0xd1),
        );
        let tcb = decode_snp_status(&raw, ProductName::Genoa).unwrap();
        assert_eq!(
            tcb,
            PlatformTcb {
                product: "Genoa".to_string(),
                bootloader: 7,
                tee: 0,
                snp: 21,
                microcode: 0xd1,
                fmc: None,
                firmware_version: "1.55".to_string(),
                build_id: 37,
            }
        );
    }

    #[test]
    fn decodes_a_milan_status() {
        let raw = status(
            (1, 55),
            0x0102_0304,
            legacy_tcb(4, 0, 24, 0xdb),
            legacy_tcb(3, 0, 8, 115),
        );
        let tcb = decode_snp_status(&raw, ProductName::Milan).unwrap();
        assert_eq!(tcb.product, "Milan");
        assert_eq!(
            (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc),
            (3, 0, 8, 115, None)
        );
        assert_eq!(tcb.build_id, 0x0102_0304);
    }

    #[test]
    fn decodes_a_turin_status_with_its_fmc() {
        let raw = status(
            (1, 58),
            5,
            turin_tcb(2, 3, 4, 5, 0x4a),
            turin_tcb(1, 2, 3, 4, 0x48),
        );
        let tcb = decode_snp_status(&raw, ProductName::Turin).unwrap();
        assert_eq!(
            tcb,
            PlatformTcb {
                product: "Turin".to_string(),
                bootloader: 2,
                tee: 3,
                snp: 4,
                microcode: 0x48,
                fmc: Some(1),
                firmware_version: "1.58".to_string(),
                build_id: 5,
            }
        );
    }

    #[test]
    fn venice_uses_the_turin_layout() {
        let tcb = turin_tcb(6, 7, 8, 9, 10);
        let raw = status((1, 60), 1, tcb, tcb);
        let decoded = decode_snp_status(&raw, ProductName::Venice).unwrap();
        assert_eq!(decoded.product, "Venice");
        assert_eq!(
            (
                decoded.fmc,
                decoded.bootloader,
                decoded.tee,
                decoded.snp,
                decoded.microcode
            ),
            (Some(6), 7, 8, 9, 10)
        );
    }

    #[test]
    fn a_turin_status_read_as_genoa_names_the_reserved_byte() {
        let tcb = turin_tcb(1, 2, 3, 4, 0x48);
        let raw = status((1, 58), 5, tcb, tcb);
        let err = decode_snp_status(&raw, ProductName::Genoa).unwrap_err();
        assert!(
            matches!(
                err,
                PlatformError::ReservedTcbByte {
                    offset: 0x12,
                    index: 2,
                    tcb: "current",
                    value: 3,
                    product: ProductName::Genoa,
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("byte 0x12"), "{message}");
        assert!(message.contains("current TCB"), "{message}");
        assert!(
            message.contains("Genoa TCB layout reserves it"),
            "{message}"
        );
    }

    #[test]
    fn a_milan_status_read_as_turin_names_the_reserved_byte() {
        // Only the reported TCB is off: the error points there.
        let raw = status((1, 55), 1, [0; 8], legacy_tcb(3, 0, 8, 115));
        let err = decode_snp_status(&raw, ProductName::Turin).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("byte 0x1e"), "{message}");
        assert!(message.contains("byte 6 of the reported TCB"), "{message}");
        assert!(message.contains("is 0x08"), "{message}");
        assert!(message.contains("not from a Turin"), "{message}");
    }

    #[test]
    fn an_unfilled_buffer_is_refused() {
        let err = decode_snp_status(&[0; 32], ProductName::Milan).unwrap_err();
        assert!(matches!(err, PlatformError::NoFirmwareVersion { minor: 0 }));
        assert!(err.to_string().contains("API version 0.0"), "{err}");
    }

    #[test]
    fn product_names_read_as_the_sev_crate_reads_them() {
        assert_eq!("MILAN".parse::<ProductName>().unwrap(), ProductName::Milan);
        assert_eq!(
            "bergamo".parse::<ProductName>().unwrap(),
            ProductName::Genoa
        );
        assert_eq!("Siena".parse::<ProductName>().unwrap(), ProductName::Genoa);
        assert_eq!("turin".parse::<ProductName>().unwrap(), ProductName::Turin);
        assert_eq!(
            "venice".parse::<ProductName>().unwrap(),
            ProductName::Venice
        );
        for name in ["rome", "naples", "zen", ""] {
            let err = name.parse::<ProductName>().unwrap_err();
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
        assert_eq!(ProductName::Turin.to_string(), "Turin");
        assert!(ProductName::Turin.has_fmc() && !ProductName::Genoa.has_fmc());
    }

    #[test]
    fn serialises_for_the_status_output() {
        let tcb = decode_snp_status(
            &status((1, 58), 5, [0; 8], turin_tcb(1, 2, 3, 4, 0x48)),
            ProductName::Turin,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&tcb).unwrap(),
            serde_json::json!({
                "product": "Turin", "bootloader": 2, "tee": 3, "snp": 4, "microcode": 72,
                "fmc": 1, "firmware_version": "1.58", "build_id": 5
            })
        );
    }

    #[test]
    fn other_device_paths_are_refused_by_name() {
        let err = read_platform(Path::new("/dev/sev-guest")).unwrap_err();
        assert!(matches!(err, PlatformError::UnsupportedDevice { .. }));
        let message = err.to_string();
        assert!(message.starts_with("/dev/sev-guest: "), "{message}");
        assert!(message.contains("only /dev/sev"), "{message}");
    }

    #[test]
    fn open_errors_say_what_is_missing() {
        let dev = Path::new(SEV_DEVICE);
        let absent = open_error(dev, std::io::ErrorKind::NotFound.into());
        assert!(matches!(absent, PlatformError::NoDevice { .. }));
        assert!(absent.to_string().contains("no SEV firmware device"));
        let no_driver = open_error(dev, std::io::Error::from_raw_os_error(6)); // ENXIO
        assert!(matches!(no_driver, PlatformError::NoDevice { .. }));
        let denied = open_error(dev, std::io::Error::from_raw_os_error(13)); // EACCES
        assert!(matches!(denied, PlatformError::PermissionDenied { .. }));
        assert!(denied.to_string().contains("lacks read-write access"));
        let busy = open_error(dev, std::io::Error::from_raw_os_error(16)); // EBUSY
        assert!(matches!(busy, PlatformError::Open { .. }));
        for err in [absent, no_driver, denied, busy] {
            assert!(err.to_string().starts_with("/dev/sev: "), "{err}");
        }
    }

    #[test]
    fn a_path_that_is_no_character_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_device(dir.path()).unwrap_err();
        assert!(matches!(err, PlatformError::NotADevice { .. }));
        assert!(check_device(Path::new("/dev/null")).is_ok());
    }

    #[test]
    fn a_query_that_does_not_answer_is_abandoned() {
        let started = std::time::Instant::now();
        let outcome = run_bounded(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(5));
        })
        .unwrap();
        assert!(matches!(outcome, Err(RecvTimeoutError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(2));
        let answered = run_bounded(Duration::from_secs(5), || 7).unwrap();
        assert_eq!(answered, Ok(7));
        let panicked = run_bounded(Duration::from_secs(5), || -> u8 { panic!("boom") }).unwrap();
        assert!(matches!(panicked, Err(RecvTimeoutError::Disconnected)));
    }
}
