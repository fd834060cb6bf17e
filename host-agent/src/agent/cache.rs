//! Artefacts hashed once: SHA-256 of kernels and initrds, and firmware images
//! with their started measurements, kept until the file changes.
//!
//! A file is known by its device, inode, size and change time (nanoseconds): a
//! replacement by rename is a new inode, a write in place moves the change
//! time. The key is read from the open file before and after hashing, so a file
//! written while it is read is never cached under a key it does not match.

use crate::artefacts::{
    open_artefact, read_firmware_open, sha256_open, ArtefactError, ArtefactKind, ReadControl,
};
use sev_core::{FirmwareImage, KernelHashes, LaunchDigest, MeasureError, SevMode, VmShape};
use std::collections::HashMap;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identity of a file's contents, as far as the file system tells without reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl FileKey {
    /// The key of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// Why an artefact could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading failed.
    #[error(transparent)]
    Artefact(#[from] ArtefactError),
    /// The file changed while it was read; it will be read again on its next event.
    #[error("{kind} {} changed while it was being read", path.display())]
    Changed {
        /// Which artefact.
        kind: ArtefactKind,
        /// Its path.
        path: PathBuf,
    },
    /// The file is open for writing: it is read once its writer closes it.
    #[error("{kind} {} is being written", path.display())]
    BeingWritten {
        /// Which artefact.
        kind: ArtefactKind,
        /// Its path.
        path: PathBuf,
    },
    /// The firmware cannot be measured as asked.
    #[error("firmware {}: {cause}", path.display())]
    Measure {
        /// Its path.
        path: PathBuf,
        /// Why.
        cause: MeasureError,
    },
}

/// A firmware image in memory and the measurements started over it, with the
/// path it was read from for messages.
pub struct CachedFirmware {
    path: PathBuf,
    image: FirmwareImage,
}

impl CachedFirmware {
    /// The image.
    pub fn image(&self) -> &FirmwareImage {
        &self.image
    }

    /// The launch digest for `mode` and `shape` with `hashes` (None: firmware only).
    pub fn digest(
        &self,
        mode: SevMode,
        hashes: Option<&KernelHashes>,
        shape: &VmShape,
    ) -> Result<LaunchDigest, CacheError> {
        self.image
            .digest(mode, hashes, shape)
            .map_err(|cause| self.measure_error(cause))
    }

    /// A measurement failure of this firmware, naming its path.
    pub fn measure_error(&self, cause: MeasureError) -> CacheError {
        CacheError::Measure {
            path: self.path.clone(),
            cause,
        }
    }
}

/// Counters, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Files read and hashed.
    pub misses: u64,
}

/// The cache. Cheap to share: entries are reference-counted.
#[derive(Default)]
pub struct ArtefactCache {
    hashes: HashMap<PathBuf, (FileKey, [u8; 32])>,
    firmware: HashMap<PathBuf, (FileKey, Arc<CachedFirmware>)>,
    stats: CacheStats,
    control: ReadControl,
    /// Real paths of files open for writing, left unread.
    busy: HashSet<PathBuf>,
}

fn stat_key(kind: ArtefactKind, path: &Path) -> Result<FileKey, CacheError> {
    let meta = std::fs::metadata(path).map_err(|cause| ArtefactError::Io {
        kind,
        path: path.to_path_buf(),
        cause,
    })?;
    if !meta.is_file() {
        return Err(ArtefactError::NotAFile {
            kind,
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(FileKey::of(&meta))
}

/// Reads an artefact through `read`, checking that the open file did not change
/// while it was read.
fn read_stable<T>(
    kind: ArtefactKind,
    path: &Path,
    control: &ReadControl,
    read: impl FnOnce(&mut std::fs::File) -> Result<T, ArtefactError>,
) -> Result<(FileKey, T), CacheError> {
    let (mut file, before) = open_artefact(kind, path, control)?;
    let value = read(&mut file)?;
    let after = file.metadata().map_err(|cause| ArtefactError::Io {
        kind,
        path: path.to_path_buf(),
        cause,
    })?;
    let key = FileKey::of(&before);
    if FileKey::of(&after) != key {
        return Err(CacheError::Changed {
            kind,
            path: path.to_path_buf(),
        });
    }
    Ok((key, value))
}

/// Hashes a kernel or initrd without the cache (for hashing several in parallel).
pub fn hash_uncached(
    kind: ArtefactKind,
    path: &Path,
    control: &ReadControl,
) -> Result<(FileKey, [u8; 32]), CacheError> {
    read_stable(kind, path, control, |f| sha256_open(kind, path, f, control))
}

impl ArtefactCache {
    /// An empty cache with the default size limits.
    pub fn new() -> ArtefactCache {
        ArtefactCache::default()
    }

    /// An empty cache reading under `control`.
    pub fn with_control(control: ReadControl) -> ArtefactCache {
        ArtefactCache {
            control,
            ..ArtefactCache::default()
        }
    }

    /// How files are read.
    pub fn control(&self) -> &ReadControl {
        &self.control
    }

    /// Sets the real paths of files open for writing: reading one of them
    /// (or a link to one) fails with [`CacheError::BeingWritten`].
    pub fn set_busy(&mut self, busy: HashSet<PathBuf>) {
        self.busy = busy;
    }

    /// Refuses a file whose writer has not closed it yet.
    pub fn check_not_busy(&self, kind: ArtefactKind, path: &Path) -> Result<(), CacheError> {
        if self.busy.is_empty() {
            return Ok(());
        }
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if self.busy.contains(&real) {
            return Err(CacheError::BeingWritten {
                kind,
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Whether `path`'s hash is cached and still matches the file.
    pub fn is_fresh(&self, kind: ArtefactKind, path: &Path) -> bool {
        let cached = match kind {
            ArtefactKind::Firmware => self.firmware.get(path).map(|(k, _)| *k),
            _ => self.hashes.get(path).map(|(k, _)| *k),
        };
        match (cached, stat_key(kind, path)) {
            (Some(c), Ok(now)) => c == now,
            _ => false,
        }
    }

    /// Stores a hash computed by [`hash_uncached`].
    pub fn insert_hash(&mut self, path: &Path, key: FileKey, hash: [u8; 32]) {
        self.stats.misses += 1;
        self.hashes.insert(path.to_path_buf(), (key, hash));
    }

    /// SHA-256 of a kernel or initrd.
    pub fn sha256(&mut self, kind: ArtefactKind, path: &Path) -> Result<[u8; 32], CacheError> {
        self.check_not_busy(kind, path)?;
        let now = stat_key(kind, path)?;
        if let Some((key, hash)) = self.hashes.get(path) {
            if *key == now {
                self.stats.hits += 1;
                return Ok(*hash);
            }
        }
        let (key, hash) = hash_uncached(kind, path, &self.control)?;
        self.insert_hash(path, key, hash);
        Ok(hash)
    }

    /// A firmware image, read once per version of the file.
    pub fn firmware(&mut self, path: &Path) -> Result<Arc<CachedFirmware>, CacheError> {
        let kind = ArtefactKind::Firmware;
        self.check_not_busy(kind, path)?;
        let now = stat_key(kind, path)?;
        if let Some((key, fw)) = self.firmware.get(path) {
            if *key == now {
                self.stats.hits += 1;
                return Ok(Arc::clone(fw));
            }
        }
        let (key, bytes) = read_stable(kind, path, &self.control, |f| read_firmware_open(path, f))?;
        self.stats.misses += 1;
        let image = FirmwareImage::new(bytes).map_err(|e| CacheError::Measure {
            path: path.to_path_buf(),
            cause: e.into(),
        })?;
        let fw = Arc::new(CachedFirmware {
            path: path.to_path_buf(),
            image,
        });
        self.firmware
            .insert(path.to_path_buf(), (key, Arc::clone(&fw)));
        Ok(fw)
    }

    /// Forgets every file not in `keep`, so that the cache does not grow with
    /// files no configuration names any more.
    pub fn retain(&mut self, keep: &std::collections::HashSet<PathBuf>) {
        self.hashes.retain(|p, _| keep.contains(p));
        self.firmware.retain(|p, _| keep.contains(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, b"one").unwrap();
        let mut c = ArtefactCache::new();
        let a = c.sha256(ArtefactKind::Initrd, &p).unwrap();
        let b = c.sha256(ArtefactKind::Initrd, &p).unwrap();
        assert_eq!(a, b);
        assert_eq!(c.stats(), CacheStats { hits: 1, misses: 1 });
        assert!(c.is_fresh(ArtefactKind::Initrd, &p));

        // Replaced by rename: a new inode, so hashed again.
        let tmp = dir.path().join("initrd.new");
        std::fs::write(&tmp, b"two").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert!(!c.is_fresh(ArtefactKind::Initrd, &p));
        let d = c.sha256(ArtefactKind::Initrd, &p).unwrap();
        assert_ne!(a, d);
        assert_eq!(c.stats().misses, 2);

        // Written in place with the same size: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&p, b"six").unwrap();
        let e = c.sha256(ArtefactKind::Initrd, &p).unwrap();
        assert_ne!(d, e);
        assert_eq!(c.stats().misses, 3);
    }

    #[test]
    fn missing_and_directories_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ArtefactCache::new();
        let e = c.sha256(ArtefactKind::Kernel, dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = c.firmware(&dir.path().join("none")).err().unwrap();
        assert!(e.to_string().contains("none"), "{e}");
    }

    #[test]
    fn retain_forgets_unused_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, b"k").unwrap();
        let mut c = ArtefactCache::new();
        c.sha256(ArtefactKind::Kernel, &p).unwrap();
        c.retain(&Default::default());
        assert!(!c.is_fresh(ArtefactKind::Kernel, &p));
    }
}
