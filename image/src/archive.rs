//! Reading and writing whole newc cpio archives.
//!
//! Reading never panics and never trusts a declared size: every header, name and
//! data length is checked against the bytes that are really left. Entries read
//! from an archive keep their exact original bytes (header, name, padding, data)
//! and are written back verbatim; new entries are encoded from their fields.

use crate::error::FormatError;
use crate::newc::{pad4, Header, HEADER_LEN, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, TRAILER_NAME};
use std::borrow::Cow;
use std::io::{self, Read as _, Write};

/// Longest name accepted, NUL included (Linux's PATH_MAX).
pub const MAX_NAME: u32 = 4096;
/// The written archive is padded with NUL bytes to a multiple of this, as
/// GNU cpio does.
pub const BLOCK: usize = 512;

/// One entry of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The header fields.
    pub header: Header,
    /// The name, without its terminating NUL.
    pub name: Cow<'a, [u8]>,
    /// The data: file contents, or a symbolic link's target.
    pub data: Cow<'a, [u8]>,
    /// The entry's bytes as they stood in the archive read, written back unchanged;
    /// `None` for an entry made or changed here.
    pub raw: Option<&'a [u8]>,
}

impl<'a> Entry<'a> {
    /// A new entry with `name` and `data`; `namesize` and `filesize` are set from
    /// them when written.
    pub fn new(header: Header, name: Vec<u8>, data: Vec<u8>) -> Entry<'a> {
        Entry {
            header,
            name: Cow::Owned(name),
            data: Cow::Owned(data),
            raw: None,
        }
    }

    /// A short word for the entry's file type.
    pub fn kind(&self) -> &'static str {
        kind_name(self.header.mode)
    }

    /// Whether the entry is a regular file.
    pub fn is_file(&self) -> bool {
        self.header.mode & S_IFMT == S_IFREG
    }

    /// Whether the entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.header.mode & S_IFMT == S_IFDIR
    }

    /// The target of a symbolic link.
    pub fn link_target(&self) -> Option<&[u8]> {
        (self.header.mode & S_IFMT == S_IFLNK).then_some(&*self.data)
    }
}

/// A short word for the file type in `mode`.
pub fn kind_name(mode: u32) -> &'static str {
    match mode & S_IFMT {
        S_IFREG => "regular file",
        S_IFDIR => "directory",
        S_IFLNK => "symbolic link",
        0o020_000 => "character device",
        0o060_000 => "block device",
        0o010_000 => "FIFO",
        0o140_000 => "socket",
        _ => "entry of unknown type",
    }
}

/// Parses a whole uncompressed newc archive. The `TRAILER!!!` entry ends it and
/// is not returned; only NUL padding may follow it. On error, returns the byte
/// offset of the header of the bad entry (or of the bytes after the trailer).
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry<'_>>, (usize, FormatError)> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    loop {
        let rest = bytes.get(off..).unwrap_or_default();
        if rest.is_empty() {
            return Err((off, FormatError::MissingTrailer));
        }
        let (entry, len) = parse_entry(rest).map_err(|e| (off, e))?;
        let next = off + len;
        if entry.name.as_ref() == TRAILER_NAME {
            let tail = bytes.get(next..).unwrap_or_default();
            return match tail.iter().position(|&b| b != 0) {
                None => Ok(entries),
                Some(p) => Err((next + p, FormatError::DataAfterTrailer)),
            };
        }
        let raw = bytes.get(off..next).unwrap_or_default();
        entries.push(Entry {
            raw: Some(raw),
            ..entry
        });
        off = next;
    }
}

/// Parses the entry at the start of `rest` (which starts 4-byte aligned); returns
/// it and the number of bytes it takes, padding included.
fn parse_entry(rest: &[u8]) -> Result<(Entry<'_>, usize), FormatError> {
    let header = Header::decode(rest)?;
    if header.namesize == 0 {
        return Err(FormatError::EmptyName);
    }
    if header.namesize > MAX_NAME {
        return Err(FormatError::NameTooLong(header.namesize));
    }
    let after_header = rest.get(HEADER_LEN..).unwrap_or_default();
    let namesize = header.namesize as usize;
    let name_nul = after_header
        .get(..namesize)
        .ok_or(FormatError::NameBeyondData {
            size: header.namesize,
            remaining: after_header.len(),
        })?;
    let name = match name_nul.split_last() {
        Some((0, name)) if !name.contains(&0) => name,
        _ => return Err(FormatError::NameNotTerminated),
    };
    let name_end = HEADER_LEN + namesize;
    let data_start = (name_end + pad4(name_end)).min(rest.len());
    let after_name = rest.get(data_start..).unwrap_or_default();
    let data = after_name
        .get(..header.filesize as usize)
        .ok_or(FormatError::DataBeyondEnd {
            size: header.filesize,
            remaining: after_name.len(),
        })?;
    let data_end = data_start + data.len();
    let len = (data_end + pad4(data_end)).min(rest.len());
    Ok((
        Entry {
            header,
            name: Cow::Borrowed(name),
            data: Cow::Borrowed(data),
            raw: None,
        },
        len,
    ))
}

/// Writes `entries`, then `TRAILER!!!`, then NUL padding to a multiple of
/// [`BLOCK`] bytes. Entries with `raw` bytes are written verbatim; the others
/// get `namesize` and `filesize` from their name and data. Returns the bytes written.
pub fn write<W: Write>(entries: &[Entry<'_>], out: &mut W) -> io::Result<u64> {
    let mut n = 0usize;
    for e in entries {
        match e.raw {
            Some(raw) => {
                out.write_all(raw)?;
                n += raw.len();
            }
            None => n += write_new(e.header, &e.name, &e.data, out)?,
        }
    }
    let trailer = Header {
        nlink: 1,
        ..Header::default()
    };
    n += write_new(trailer, TRAILER_NAME, &[], out)?;
    let pad = (BLOCK - n % BLOCK) % BLOCK;
    zeros(pad, out)?;
    Ok((n + pad) as u64)
}

fn write_new<W: Write>(header: Header, name: &[u8], data: &[u8], out: &mut W) -> io::Result<usize> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "entry too large for newc");
    let header = Header {
        namesize: u32::try_from(name.len() + 1).map_err(|_| too_big())?,
        filesize: u32::try_from(data.len()).map_err(|_| too_big())?,
        check: 0,
        ..header
    };
    let name_end = HEADER_LEN + name.len() + 1;
    let name_pad = pad4(name_end);
    let data_pad = pad4(data.len());
    out.write_all(&header.encode())?;
    out.write_all(name)?;
    zeros(1 + name_pad, out)?;
    out.write_all(data)?;
    zeros(data_pad, out)?;
    Ok(name_end + name_pad + data.len() + data_pad)
}

fn zeros<W: Write>(n: usize, out: &mut W) -> io::Result<()> {
    io::copy(&mut io::repeat(0).take(n as u64), out).map(|_| ())
}
