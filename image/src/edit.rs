//! Adding files to the entries of an archive: a pure step, no I/O.
//!
//! Original entries keep their place and bytes. A file whose path already is a
//! regular file in the archive replaces that entry in place (same inode number);
//! other files are appended, after the directory entries for missing parents.
//! New entries get uid/gid 0, the given mtime, and inode numbers counting up from
//! one past the largest in the archive, in the order of the additions.

use crate::archive::{kind_name, Entry};
use crate::newc::{Header, S_IFDIR, S_IFREG};
use std::collections::HashMap;

/// A file to add, read already.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Destination components, as in [`crate::add::AddSpec::dest`].
    pub dest: Vec<String>,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits; `None`: those of the replaced entry, else by `executable`.
    pub mode: Option<u32>,
    /// The source has an execute bit.
    pub executable: bool,
}

/// What an addition did to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new file entry.
    Added {
        /// Its name in the archive.
        name: String,
        /// Its permission bits.
        mode: u32,
    },
    /// An existing file entry replaced in place.
    Replaced {
        /// Its name in the archive.
        name: String,
        /// Its permission bits now.
        mode: u32,
    },
    /// A missing parent directory, created with mode 0755.
    CreatedDir {
        /// Its name in the archive.
        name: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added { name, mode } => write!(f, "added {name} (mode {mode:04o})"),
            Change::Replaced { name, mode } => {
                write!(
                    f,
                    "replaced {name} (it was in the archive; mode {mode:04o})"
                )
            }
            Change::CreatedDir { name } => write!(f, "created directory {name} (mode 0755)"),
        }
    }
}

/// Why a file cannot be added: its destination and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The destination path.
    pub dest: String,
    /// What is in the way.
    pub reason: String,
}

/// The lookup key of a name: without leading `./` or `/` and trailing `/`
/// (so `.`, `./usr/bin` and `usr/bin/` are the root, `usr/bin` and `usr/bin`).
fn key(name: &[u8]) -> &[u8] {
    let mut n = name;
    loop {
        if let Some(r) = n.strip_prefix(b"./") {
            n = r;
        } else if let Some(r) = n.strip_prefix(b"/") {
            n = r;
        } else {
            break;
        }
    }
    while let Some(r) = n.strip_suffix(b"/") {
        n = r;
    }
    if n == b"." {
        b""
    } else {
        n
    }
}

/// Adds `files` to `entries`, with `mtime` on every new or replaced entry.
pub fn add_files(
    entries: &mut Vec<Entry<'_>>,
    files: Vec<NewFile>,
    mtime: u32,
) -> Result<Vec<Change>, Refused> {
    // New names follow the archive's convention: `./usr/bin` as `find . | cpio`
    // writes them, or `usr/bin`.
    let prefix: &[u8] = match entries.iter().find(|e| key(&e.name) != b"") {
        Some(e) if e.name.starts_with(b"./") => b"./",
        _ => b"",
    };
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        index.entry(key(&e.name).to_vec()).or_insert(i);
    }
    let mut next_ino = entries
        .iter()
        .map(|e| e.header.ino)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let mut take_ino = || {
        let ino = next_ino;
        next_ino = next_ino.saturating_add(1);
        ino
    };
    let mut changes = Vec::new();
    let mut added: Vec<String> = Vec::new();
    for f in files {
        let dest = f.dest.join("/");
        let refuse = |reason: String| Refused {
            dest: dest.clone(),
            reason,
        };
        if added.contains(&dest) {
            return Err(refuse("given twice".to_string()));
        }
        added.push(dest.clone());
        let mut parent = String::new();
        for comp in f.dest.iter().take(f.dest.len().saturating_sub(1)) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match index.get(parent.as_bytes()).and_then(|&i| entries.get(i)) {
                Some(e) if e.is_dir() => {}
                Some(e) => {
                    return Err(refuse(format!(
                        "{parent} is a {} in the archive, not a directory",
                        e.kind()
                    )))
                }
                None => {
                    let name = [prefix, parent.as_bytes()].concat();
                    let header = Header {
                        ino: take_ino(),
                        mode: S_IFDIR | 0o755,
                        nlink: 2,
                        mtime,
                        ..Header::default()
                    };
                    index.insert(parent.as_bytes().to_vec(), entries.len());
                    entries.push(Entry::new(header, name, Vec::new()));
                    changes.push(Change::CreatedDir {
                        name: parent.clone(),
                    });
                }
            }
        }
        let existing = index.get(dest.as_bytes()).copied();
        let slot = existing.and_then(|i| entries.get_mut(i).map(|e| (i, e)));
        match slot {
            Some((_, e)) if !e.is_file() => {
                return Err(refuse(format!(
                    "it is a {} in the archive",
                    kind_name(e.header.mode)
                )))
            }
            Some((_, e)) if e.header.nlink > 1 => {
                return Err(refuse(format!(
                    "it is one of {} hard links to inode {} in the archive",
                    e.header.nlink, e.header.ino
                )))
            }
            Some((_, e)) => {
                let mode = S_IFREG | mode_of(&f, Some(e.header.mode));
                let header = Header {
                    ino: e.header.ino,
                    mode,
                    nlink: 1,
                    mtime,
                    ..Header::default()
                };
                *e = Entry::new(header, e.name.to_vec(), f.data);
                changes.push(Change::Replaced {
                    name: dest.clone(),
                    mode: mode & 0o7777,
                });
            }
            None => {
                let mode = S_IFREG | mode_of(&f, None);
                let header = Header {
                    ino: take_ino(),
                    mode,
                    nlink: 1,
                    mtime,
                    ..Header::default()
                };
                index.insert(dest.as_bytes().to_vec(), entries.len());
                entries.push(Entry::new(
                    header,
                    [prefix, dest.as_bytes()].concat(),
                    f.data,
                ));
                changes.push(Change::Added {
                    name: dest.clone(),
                    mode: mode & 0o7777,
                });
            }
        }
    }
    Ok(changes)
}

fn mode_of(f: &NewFile, replaced: Option<u32>) -> u32 {
    crate::add::choose_mode(f.mode, replaced, f.executable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str, ino: u32) -> Entry<'static> {
        Entry::new(
            Header {
                ino,
                mode: S_IFDIR | 0o755,
                nlink: 2,
                ..Header::default()
            },
            name.as_bytes().to_vec(),
            Vec::new(),
        )
    }

    fn file(dest: &str, mode: Option<u32>) -> NewFile {
        NewFile {
            dest: dest.split('/').map(str::to_string).collect(),
            data: b"x".to_vec(),
            mode,
            executable: false,
        }
    }

    #[test]
    fn keys() {
        assert_eq!(key(b"."), b"");
        assert_eq!(key(b"./usr/bin"), b"usr/bin");
        assert_eq!(key(b"/usr/"), b"usr");
    }

    #[test]
    fn parents_prefix_and_inodes() {
        let mut entries = vec![dir(".", 1), dir("./usr", 7)];
        let changes = add_files(&mut entries, vec![file("usr/bin/a", Some(0o755))], 5).unwrap();
        assert_eq!(
            changes,
            vec![
                Change::CreatedDir {
                    name: "usr/bin".into()
                },
                Change::Added {
                    name: "usr/bin/a".into(),
                    mode: 0o755
                }
            ]
        );
        assert_eq!(&*entries[2].name, b"./usr/bin");
        assert_eq!(entries[2].header.ino, 8);
        assert_eq!(&*entries[3].name, b"./usr/bin/a");
        assert_eq!(entries[3].header.ino, 9);
        assert_eq!(entries[3].header.mtime, 5);
    }

    #[test]
    fn refusals() {
        let mut entries = vec![dir("etc", 1)];
        let e = add_files(&mut entries, vec![file("etc", None)], 0).unwrap_err();
        assert!(e.reason.contains("directory"), "{e:?}");
        let e = add_files(
            &mut entries,
            vec![file("etc/x", None), file("etc/x", None)],
            0,
        )
        .unwrap_err();
        assert!(e.reason.contains("twice"), "{e:?}");
    }
}
