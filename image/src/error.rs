//! The errors of the guest image tool: every one names the file it is about, and a
//! malformed archive also the byte offset of the bad header.

use std::path::PathBuf;

/// What is wrong at one place of a cpio archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The entry header could not be decoded.
    #[error(transparent)]
    Header(#[from] crate::newc::HeaderError),
    /// `namesize` is 0 (a name has at least its NUL).
    #[error("empty name (namesize 0)")]
    EmptyName,
    /// `namesize` is beyond the limit.
    #[error("name of {0} bytes, longer than the limit of {limit} bytes", limit = crate::archive::MAX_NAME)]
    NameTooLong(u32),
    /// The name runs past the end of the archive.
    #[error("name of {size} bytes but only {remaining} bytes left")]
    NameBeyondData {
        /// Declared `namesize`.
        size: u32,
        /// Bytes left after the header.
        remaining: usize,
    },
    /// The name does not end with exactly one NUL.
    #[error("name is not NUL-terminated or holds a NUL")]
    NameNotTerminated,
    /// The data runs past the end of the archive.
    #[error("data of {size} bytes but only {remaining} bytes left")]
    DataBeyondEnd {
        /// Declared `filesize`.
        size: u32,
        /// Bytes left after the name.
        remaining: usize,
    },
    /// The archive ends without a `TRAILER!!!` entry.
    #[error("no TRAILER!!! entry before the end of the archive")]
    MissingTrailer,
    /// Something other than zero padding follows `TRAILER!!!`.
    #[error("non-zero bytes after the TRAILER!!! entry (a second archive is not supported)")]
    DataAfterTrailer,
}

/// An error of the guest image tool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a source).
        error: std::io::Error,
    },
    /// The gzip stream is broken.
    #[error("{}: not a valid gzip stream: {error}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so not also a source).
        error: std::io::Error,
    },
    /// The archive (uncompressed) is larger than the limit.
    #[error("{}: the uncompressed archive exceeds {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The cpio archive is malformed.
    #[error("{}: malformed cpio archive at byte {offset} (of the uncompressed archive): {kind}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Byte offset of the header of the bad entry, in the uncompressed archive.
        offset: usize,
        /// What is wrong (in the message).
        kind: FormatError,
    },
    /// An `--add` argument is not `SRC:DEST[:MODE]`.
    #[error("--add {spec:?}: {reason}")]
    BadAdd {
        /// The argument as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// An added file cannot be placed at its destination.
    #[error("{}: cannot add {dest}: {reason}", path.display())]
    Conflict {
        /// The archive or rootfs.
        path: PathBuf,
        /// The destination inside it.
        dest: String,
        /// What is in the way.
        reason: String,
    },
    /// A source file is too large for a newc entry (4 GiB - 1).
    #[error("{}: {size} bytes, more than a cpio newc entry holds", path.display())]
    FileTooLarge {
        /// The source file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// `SOURCE_DATE_EPOCH` is not a number of seconds that fits the format.
    #[error("SOURCE_DATE_EPOCH={0:?} is not a whole number of seconds between 0 and 4294967295")]
    SourceDateEpoch(String),
}

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
}
