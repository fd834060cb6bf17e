//! gzip in (any, size-limited) and out (a fixed header and level, so the same
//! archive always compresses to the same bytes).

use crate::error::Error;
use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};
use std::io::{Read, Write};
use std::path::Path;

/// Largest uncompressed archive read: guards against gzip bombs.
pub const MAX_ARCHIVE: u64 = 4 << 30;
/// The gzip header's OS byte: 3, Unix, as `gzip -n` writes on Linux.
pub const GZIP_OS_UNIX: u8 = 3;
/// The compression level: 9, as Kata's initrd builder uses (`gzip -9`).
pub const LEVEL: u32 = 9;

/// The uncompressed archive in `file`: gunzipped when it starts with the gzip
/// magic (several members are joined), else taken as it is.
pub fn read_archive(path: &Path) -> Result<Vec<u8>, Error> {
    let file = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let too_large = || Error::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_ARCHIVE,
    };
    if !file.starts_with(&[0x1f, 0x8b]) {
        if file.len() as u64 > MAX_ARCHIVE {
            return Err(too_large());
        }
        return Ok(file);
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(file.as_slice())
        .take(MAX_ARCHIVE + 1)
        .read_to_end(&mut out)
        .map_err(|error| Error::Gzip {
            path: path.to_path_buf(),
            error,
        })?;
    if out.len() as u64 > MAX_ARCHIVE {
        return Err(too_large());
    }
    Ok(out)
}

/// A gzip writer with a reproducible header: no file name, no comment, mtime 0,
/// OS byte [`GZIP_OS_UNIX`], level [`LEVEL`].
pub fn reproducible_encoder<W: Write>(out: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(out, Compression::new(LEVEL))
}
