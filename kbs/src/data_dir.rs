//! The kbs's data directory: who may own and write it, the modes of the
//! database files in it, and the lock that keeps a second kbs out.
//!
//! The database holds every secret, session key and connection key, so a
//! directory another user can write (they could swap the database) or that
//! belongs to another user is refused rather than warned about, and database
//! files readable by others are narrowed to 0600 at start. Two kbs processes
//! on one directory would each hand out launch sessions the other does not
//! know are consumed; an advisory lock on `kbs.lock` refuses the second.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The database files the store creates in the directory, and the at-rest
/// key kept beside them when the kbs is given none.
pub const DB_FILES: [&str; 4] = [
    "kbs.sqlite3",
    "kbs.sqlite3-wal",
    "kbs.sqlite3-shm",
    crate::store::AT_REST_KEY_FILE,
];

/// The lock file's name.
const LOCK_FILE: &str = "kbs.lock";

/// Why the data directory cannot be used. Each message names the path and
/// says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// It could not be created or read.
    #[error("data directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// It exists and is not a directory.
    #[error("data directory {0}: not a directory")]
    NotDirectory(PathBuf),
    /// It or a database file belongs to another user.
    #[error(
        "{path} belongs to uid {owner}, not to this kbs (uid {me}): another user could read or \
         replace its secrets; run the kbs as that user, or chown -R {me} {dir}"
    )]
    Foreign {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's uid.
        me: u32,
        /// The data directory.
        dir: PathBuf,
    },
    /// Other users may write it.
    #[error(
        "{path} is writable by other users (mode {mode:04o}): they could replace the database; \
         chmod go-w {path} (0700 for the directory is best)"
    )]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another kbs holds it.
    #[error(
        "data directory {dir} is in use by another kbs{}; stop it, or give this one its own --data-dir",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The pid the holder wrote, if readable.
        holder: Option<u32>,
    },
}

/// The held lock on a data directory; released when dropped (or when the
/// process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// A database file whose mode was narrowed, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowed {
    /// The file.
    pub path: PathBuf,
    /// Its mode before.
    pub was: u32,
}

/// What [`prepare`] found and did.
#[derive(Debug)]
pub struct Prepared {
    /// The lock, to be held while the kbs runs.
    pub lock: DataDirLock,
    /// Database files that were readable by others and are now 0600.
    pub narrowed: Vec<Narrowed>,
    /// The directory lets other users list it (harmless once the files are
    /// 0600, but worth a warning).
    pub listable: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_owner(
    path: &Path,
    meta: &std::fs::Metadata,
    me: u32,
    dir: &Path,
) -> Result<(), DataDirError> {
    if meta.uid() != me {
        return Err(DataDirError::Foreign {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
            dir: dir.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DataDirError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` (0700) if needed, checks it and its database files, narrows
/// their modes, and takes the lock. `me` is the uid the kbs runs as.
pub fn prepare(dir: &Path, me: u32) -> Result<Prepared, DataDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    // Followed if it is a symlink: a data directory linked elsewhere is
    // judged by what it points at.
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(DataDirError::NotDirectory(dir.to_path_buf()));
    }
    check_owner(dir, &meta, me, dir)?;
    let listable = meta.permissions().mode() & 0o055 != 0;

    let lock = lock(dir)?;

    let mut narrowed = Vec::new();
    for name in DB_FILES {
        let path = dir.join(name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        check_owner(&path, &meta, me, dir)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&path))?;
            narrowed.push(Narrowed { path, was: mode });
        }
    }
    Ok(Prepared {
        lock,
        narrowed,
        listable,
    })
}

fn lock(dir: &Path) -> Result<DataDirLock, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(DataDirError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(e) => return Err(io(&path)(e.into())),
    }
    // The holder's pid, for the message a second kbs prints.
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(io(&path))?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[test]
    fn a_new_directory_is_private_and_locked_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let first = prepare(&dir, me()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!first.listable);
        let e = prepare(&dir, me()).unwrap_err();
        assert!(
            matches!(e, DataDirError::Locked { holder: Some(p), .. } if p == std::process::id()),
            "{e}"
        );
        assert!(e.to_string().contains("--data-dir"), "{e}");
        drop(first);
        prepare(&dir, me()).unwrap();
    }

    #[test]
    fn writable_by_others_or_owned_by_another_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&dir, me()).unwrap_err();
        assert!(
            matches!(e, DataDirError::Writable { mode: 0o777, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod go-w"), "{e}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = prepare(&dir, me().wrapping_add(1)).unwrap_err();
        assert!(matches!(e, DataDirError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("chown -R"), "{e}");
    }

    #[test]
    fn database_files_readable_by_others_are_narrowed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, mode) in [("kbs.sqlite3", 0o644), ("kbs.sqlite3-wal", 0o640)] {
            let p = dir.join(name);
            std::fs::write(&p, b"").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let p = prepare(&dir, me()).unwrap();
        assert!(p.listable);
        assert_eq!(p.narrowed.len(), 2, "{:?}", p.narrowed);
        for name in ["kbs.sqlite3", "kbs.sqlite3-wal"] {
            let mode = std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        // A database file others may write is refused, not narrowed.
        drop(p);
        let shm = dir.join("kbs.sqlite3-shm");
        std::fs::write(&shm, b"").unwrap();
        std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = prepare(&dir, me()).unwrap_err();
        assert!(matches!(e, DataDirError::Writable { .. }), "{e}");
    }
}
