//! `guest-image initrd`: reads an initrd, adds files, writes the new initrd
//! reproducibly.

use crate::add::AddSpec;
use crate::archive;
use crate::edit::{add_files, Change, NewFile};
use crate::error::Error;
use crate::gz;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// What building a new initrd did.
#[derive(Debug, Clone)]
pub struct Built {
    /// The additions, in order.
    pub changes: Vec<Change>,
    /// Entries in the new archive, the trailer not counted.
    pub entries: usize,
    /// Size of the uncompressed archive written.
    pub archive_bytes: u64,
}

/// Reads `input` (gzip'd or plain newc cpio), adds `adds` with `mtime` on every
/// new entry, and writes the gzip'd archive to `output` (atomically, mode 0644).
/// The same inputs always give the same output bytes.
pub fn build(input: &Path, output: &Path, adds: &[AddSpec], mtime: u32) -> Result<Built, Error> {
    let bytes = gz::read_archive(input)?;
    let mut entries = archive::parse(&bytes).map_err(|(offset, kind)| Error::Malformed {
        path: input.to_path_buf(),
        offset,
        kind,
    })?;
    let mut files = Vec::with_capacity(adds.len());
    for a in adds {
        let (data, executable) = a.read_source()?;
        files.push(NewFile {
            dest: a.dest.clone(),
            data,
            mode: a.mode,
            executable,
        });
    }
    let changes = add_files(&mut entries, files, mtime).map_err(|r| Error::Conflict {
        path: input.to_path_buf(),
        dest: r.dest,
        reason: r.reason,
    })?;
    let archive_bytes = write_atomically(output, |file| {
        let mut enc = gz::reproducible_encoder(std::io::BufWriter::new(file));
        let n = archive::write(&entries, &mut enc)?;
        enc.finish()?.flush()?;
        Ok(n)
    })?;
    Ok(Built {
        changes,
        entries: entries.len(),
        archive_bytes,
    })
}

/// Writes `path` through a temporary file in the same directory, renamed over it
/// when `write` succeeds; the file gets mode 0644.
pub fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<T>,
) -> Result<T, Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    let value = write(tmp.as_file_mut()).map_err(|e| Error::io(path, e))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(value)
}
