//! `guest-image rootfs`: copies files into a rootfs directory, for guests that
//! boot a disk image. Symbolic links inside the rootfs are never followed (they
//! would resolve on the build machine, not in the guest): a destination through
//! one is refused, so name the real path (`usr/bin`, not `bin` on a merged-usr
//! rootfs).

use crate::add::AddSpec;
use crate::edit::Change;
use crate::error::Error;
use crate::initrd::write_atomically;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// Copies every file of `adds` into the rootfs at `root`, creating missing
/// parent directories (0755), with `mtime` on every file written.
pub fn add(root: &Path, adds: &[AddSpec], mtime: u32) -> Result<Vec<Change>, Error> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            root,
            std::io::Error::new(ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    let mut changes = Vec::new();
    for a in adds {
        add_one(root, a, mtime, &mut changes)?;
    }
    Ok(changes)
}

fn add_one(root: &Path, a: &AddSpec, mtime: u32, changes: &mut Vec<Change>) -> Result<(), Error> {
    let dest_name = a.dest_path();
    let conflict = |reason: String| Error::Conflict {
        path: root.to_path_buf(),
        dest: dest_name.clone(),
        reason,
    };
    let (data, executable) = a.read_source()?;
    let mut dir = root.to_path_buf();
    let mut rel = String::new();
    let (last, parents) = a
        .dest
        .split_last()
        .ok_or_else(|| conflict("empty destination".to_string()))?;
    for comp in parents {
        dir.push(comp);
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(comp);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(conflict(format!(
                    "{rel} is a symbolic link in the rootfs; give the path it points to"
                )))
            }
            Ok(_) => return Err(conflict(format!("{rel} is not a directory"))),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io(&dir, e))?;
                changes.push(Change::CreatedDir { name: rel.clone() });
            }
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    let target = dir.join(last);
    let replaced = match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => Some(m.permissions().mode()),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(conflict("it is a symbolic link in the rootfs".to_string()))
        }
        Ok(_) => return Err(conflict("it exists and is not a regular file".to_string())),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&target, e)),
    };
    let mode = a.mode_for(replaced, executable);
    write_atomically(&target, |f| {
        use std::io::Write as _;
        f.write_all(&data)?;
        f.set_modified(UNIX_EPOCH + Duration::from_secs(u64::from(mtime)))
    })?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(&target, e))?;
    changes.push(match replaced {
        Some(_) => Change::Replaced {
            name: dest_name.clone(),
            mode,
        },
        None => Change::Added {
            name: dest_name.clone(),
            mode,
        },
    });
    Ok(())
}
