//! Reading the files a launch is built from: firmware into memory, kernel and
//! initrd streamed through SHA-256.
//!
//! Kernels and initrds can be hundreds of megabytes; they are never held in memory,
//! only hashed in fixed-size chunks, so memory use does not grow with their size.
//! Firmware is small and must be parsed, so it is read whole, with a size limit.
//!
//! Nothing here can block on a file: each is opened non-blocking and refused
//! unless it is a regular file (a FIFO named as a kernel would otherwise
//! hold the open for ever), and kernels and initrds over their size limits
//! are refused from their metadata, before a byte is read (a sparse file of
//! tens of gigabytes would otherwise be hashed for minutes).

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Largest firmware image accepted. OVMF builds are 2 to 8 MiB; the limit keeps a
/// wrong path (a disk image, say) from being read into memory.
pub const MAX_FIRMWARE_LEN: u64 = 64 << 20;
/// Largest kernel accepted. Kata's guest kernels are 5 to 60 MiB; QEMU loads
/// the whole file into guest memory.
pub const MAX_KERNEL_LEN: u64 = 512 << 20;
/// Largest initrd accepted. Kata's initrds are tens to a few hundred MiB;
/// QEMU loads the whole file into guest memory.
pub const MAX_INITRD_LEN: u64 = 2 << 30;
const CHUNK: usize = 256 << 10;

/// How kernels and initrds are read: their size limits, and a flag another
/// thread raises to stop a long read (a file it depends on changed, or the
/// agent is stopping).
#[derive(Debug, Clone)]
pub struct ReadControl {
    /// Largest kernel accepted, in bytes.
    pub max_kernel: u64,
    /// Largest initrd accepted, in bytes.
    pub max_initrd: u64,
    /// Raised to stop reads in progress; they fail with [`ArtefactError::Stopped`].
    pub stop: Arc<AtomicBool>,
}

impl Default for ReadControl {
    fn default() -> Self {
        ReadControl {
            max_kernel: MAX_KERNEL_LEN,
            max_initrd: MAX_INITRD_LEN,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl ReadControl {
    /// The size limit of a kernel or initrd (firmware is checked by its
    /// readers, with their own error).
    fn limit_of(&self, kind: ArtefactKind) -> u64 {
        match kind {
            ArtefactKind::Kernel => self.max_kernel,
            ArtefactKind::Initrd => self.max_initrd,
            ArtefactKind::Firmware => u64::MAX,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Which artefact a file is, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtefactKind {
    /// The OVMF firmware image.
    Firmware,
    /// The guest kernel.
    Kernel,
    /// The guest initrd.
    Initrd,
}

impl std::fmt::Display for ArtefactKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArtefactKind::Firmware => "firmware",
            ArtefactKind::Kernel => "kernel",
            ArtefactKind::Initrd => "initrd",
        })
    }
}

/// A file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtefactError {
    /// The file could not be opened or read.
    // The OS error is part of the message, not a source, so that printing the
    // error chain does not repeat it.
    #[error("cannot read {kind} {}: {cause}", path.display())]
    Io {
        /// Which artefact.
        kind: ArtefactKind,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        cause: io::Error,
    },
    /// The path names a directory or another non-file.
    #[error("{kind} {} is not a regular file", path.display())]
    NotAFile {
        /// Which artefact.
        kind: ArtefactKind,
        /// Its path.
        path: PathBuf,
    },
    /// A kernel or initrd larger than its limit.
    #[error("{kind} {} is {len} bytes, more than the {limit}-byte limit for a guest {kind}", path.display())]
    TooLarge {
        /// Which artefact.
        kind: ArtefactKind,
        /// Its path.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A read stopped half-way because something it depends on changed or the
    /// agent is stopping; it will be read again.
    #[error("reading {kind} {} was stopped before the end", path.display())]
    Stopped {
        /// Which artefact.
        kind: ArtefactKind,
        /// Its path.
        path: PathBuf,
    },
    /// The firmware is implausibly large.
    #[error("firmware {} is {len} bytes, more than the {MAX_FIRMWARE_LEN}-byte limit for an OVMF image", path.display())]
    FirmwareTooLarge {
        /// Its path.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

fn open(
    kind: ArtefactKind,
    path: &Path,
    control: &ReadControl,
) -> Result<(File, u64), ArtefactError> {
    let io = |cause| ArtefactError::Io {
        kind,
        path: path.to_path_buf(),
        cause,
    };
    // Non-blocking: opening a FIFO for reading would otherwise wait for a
    // writer. Reads of a regular file are not affected by the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ArtefactError::NotAFile {
            kind,
            path: path.to_path_buf(),
        });
    }
    let limit = control.limit_of(kind);
    if meta.len() > limit {
        return Err(ArtefactError::TooLarge {
            kind,
            path: path.to_path_buf(),
            len: meta.len(),
            limit,
        });
    }
    Ok((file, meta.len()))
}

/// Largest Kata configuration read. Kata's own are about 30 KiB.
pub const MAX_CONFIG_LEN: u64 = 4 << 20;

/// Reads a configuration file as text, without blocking on it: refused
/// unless it is a regular file of at most [`MAX_CONFIG_LEN`] bytes. The
/// errors are I/O errors, for callers that name the file themselves.
pub fn read_config_text(path: &Path) -> io::Result<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {MAX_CONFIG_LEN}-byte limit for a configuration"),
        )
    };
    if meta.len() > MAX_CONFIG_LEN {
        return Err(too_large());
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_LEN + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_LEN {
        return Err(too_large());
    }
    Ok(text)
}

/// Reads a firmware image whole.
pub fn read_firmware(path: &Path) -> Result<Vec<u8>, ArtefactError> {
    let (file, len) = open(ArtefactKind::Firmware, path, &ReadControl::default())?;
    if len > MAX_FIRMWARE_LEN {
        return Err(ArtefactError::FirmwareTooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // Read one byte past the limit so that a file that grew since stat is caught.
    file.take(MAX_FIRMWARE_LEN + 1)
        .read_to_end(&mut data)
        .map_err(|cause| ArtefactError::Io {
            kind: ArtefactKind::Firmware,
            path: path.to_path_buf(),
            cause,
        })?;
    if data.len() as u64 > MAX_FIRMWARE_LEN {
        return Err(ArtefactError::FirmwareTooLarge {
            path: path.to_path_buf(),
            len: data.len() as u64,
        });
    }
    Ok(data)
}

/// SHA-256 of a file, read in fixed-size chunks.
pub fn sha256_file(kind: ArtefactKind, path: &Path) -> Result<[u8; 32], ArtefactError> {
    let control = ReadControl::default();
    let (mut file, _) = open(kind, path, &control)?;
    sha256_open(kind, path, &mut file, &control)
}

/// Opens an artefact, refusing anything but a regular file; returns it with its
/// metadata, so that callers can tell the file they hashed from a later one.
pub fn open_artefact(
    kind: ArtefactKind,
    path: &Path,
    control: &ReadControl,
) -> Result<(File, std::fs::Metadata), ArtefactError> {
    let (file, _) = open(kind, path, control)?;
    let meta = file.metadata().map_err(|cause| ArtefactError::Io {
        kind,
        path: path.to_path_buf(),
        cause,
    })?;
    Ok((file, meta))
}

/// Reads an opened firmware image whole, within the size limit.
pub fn read_firmware_open(path: &Path, file: &mut File) -> Result<Vec<u8>, ArtefactError> {
    let mut data = Vec::new();
    file.take(MAX_FIRMWARE_LEN + 1)
        .read_to_end(&mut data)
        .map_err(|cause| ArtefactError::Io {
            kind: ArtefactKind::Firmware,
            path: path.to_path_buf(),
            cause,
        })?;
    if data.len() as u64 > MAX_FIRMWARE_LEN {
        return Err(ArtefactError::FirmwareTooLarge {
            path: path.to_path_buf(),
            len: data.len() as u64,
        });
    }
    Ok(data)
}

/// SHA-256 of an opened file (`path` only names it in errors), stopping when
/// `control`'s flag is raised.
pub fn sha256_open(
    kind: ArtefactKind,
    path: &Path,
    file: &mut File,
    control: &ReadControl,
) -> Result<[u8; 32], ArtefactError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let limit = control.limit_of(kind);
    let mut total: u64 = 0;
    loop {
        if control.stopped() {
            return Err(ArtefactError::Stopped {
                kind,
                path: path.to_path_buf(),
            });
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(buf.get(..n).unwrap_or_default());
                // A file still growing past its limit since it was opened.
                total = total.saturating_add(n as u64);
                if total > limit {
                    return Err(ArtefactError::TooLarge {
                        kind,
                        path: path.to_path_buf(),
                        len: total,
                        limit,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(cause) => {
                return Err(ArtefactError::Io {
                    kind,
                    path: path.to_path_buf(),
                    cause,
                })
            }
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn directory_and_missing_file_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = sha256_file(ArtefactKind::Kernel, dir.path()).unwrap_err();
        assert!(matches!(e, ArtefactError::NotAFile { .. }), "{e}");
        assert!(e.to_string().contains("kernel"));
        let missing = dir.path().join("nope");
        let e = read_firmware(&missing).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_at_once_and_a_huge_sparse_file_unread() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("vmlinuz");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        // No writer ever opens it: a blocking open would never return.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(sha256_file(ArtefactKind::Kernel, &path));
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("hashing a FIFO blocked")
            .unwrap_err();
        assert!(matches!(e, ArtefactError::NotAFile { .. }), "{e}");
        assert!(e.to_string().contains("vmlinuz"), "{e}");

        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_config_text(&path));
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading a FIFO as a configuration blocked")
            .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        let sparse = dir.path().join("initrd.img");
        let f = File::create(&sparse).unwrap();
        f.set_len(40 << 30).unwrap();
        let started = std::time::Instant::now();
        let e = sha256_file(ArtefactKind::Initrd, &sparse).unwrap_err();
        assert!(matches!(e, ArtefactError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("initrd.img"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let e = sha256_file(ArtefactKind::Kernel, &sparse).unwrap_err();
        assert!(e.to_string().contains("limit for a guest kernel"), "{e}");
        let e = read_config_text(&sparse).unwrap_err();
        assert!(e.to_string().contains("limit for a configuration"), "{e}");
    }

    #[test]
    fn hashes_match_a_one_shot_digest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let want: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(sha256_file(ArtefactKind::Kernel, &p).unwrap(), want);
    }

    #[test]
    fn limits_are_configurable_and_a_raised_flag_stops_a_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![7u8; CHUNK * 3]).unwrap();
        let control = ReadControl {
            max_initrd: CHUNK as u64,
            ..ReadControl::default()
        };
        let e = open(ArtefactKind::Initrd, &p, &control).unwrap_err();
        assert!(
            e.to_string().contains(&format!("{CHUNK}-byte limit")),
            "{e}"
        );
        let (mut f, _) = open(ArtefactKind::Kernel, &p, &control).unwrap();
        control.stop.store(true, Ordering::Relaxed);
        let e = sha256_open(ArtefactKind::Kernel, &p, &mut f, &control).unwrap_err();
        assert!(matches!(e, ArtefactError::Stopped { .. }), "{e}");
    }
}
