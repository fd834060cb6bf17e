//! Which inotify watches the agent holds and which events matter.
//!
//! Only directories are watched: a directory watch reports writes, attribute
//! changes, creation, deletion and renames of every file in it, and unlike a
//! watch on the file itself it survives the file being replaced by rename, which
//! is how editors and package managers save. For a file under a directory that
//! does not exist yet, the nearest existing ancestor is watched, so that its
//! creation is seen.

use inotify::{EventMask, WatchDescriptor, WatchMask, Watches};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// What the agent wants to hear about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    /// Glob patterns of configuration files (wildcards in the file name only).
    pub patterns: Vec<glob::Pattern>,
    /// Files named by configurations (artefacts, configurations themselves).
    pub files: BTreeSet<PathBuf>,
}

/// How an event bears on the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relevance {
    /// Not at all (another file in a watched directory).
    None,
    /// A file of interest is being written in place: read it once it is closed,
    /// or once it has been quiet for a while.
    Writing,
    /// A file of interest (or a directory on the way to one) was created,
    /// replaced, closed after writing, deleted, or changed attributes.
    Changed,
    /// Events were lost: everything must be looked at again.
    Overflow,
}

/// The watches held and what they are for.
pub struct Watcher {
    watches: Watches,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_dir: HashMap<PathBuf, WatchDescriptor>,
    files: HashSet<PathBuf>,
    patterns: Vec<glob::Pattern>,
    /// Directories that do not exist yet but lead to a file of interest.
    missing: HashSet<PathBuf>,
}

fn dir_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// The existing directory to watch for `path` to appear under, and the missing
/// directories between it and `path`'s parent.
fn watch_point(path: &Path) -> Option<(PathBuf, Vec<PathBuf>)> {
    let mut missing = Vec::new();
    let mut dir = path.parent()?;
    loop {
        if dir.is_dir() {
            return Some((dir.to_path_buf(), missing));
        }
        missing.push(dir.to_path_buf());
        dir = dir.parent()?;
    }
}

impl Watcher {
    /// A watcher over an inotify instance's watch list.
    pub fn new(watches: Watches) -> Watcher {
        Watcher {
            watches,
            by_wd: HashMap::new(),
            by_dir: HashMap::new(),
            files: HashSet::new(),
            patterns: Vec::new(),
            missing: HashSet::new(),
        }
    }

    /// Files of interest, for metrics.
    pub fn watched_files(&self) -> usize {
        self.files.len()
    }

    /// Directories watched, for metrics.
    pub fn watched_dirs(&self) -> usize {
        self.by_dir.len()
    }

    /// Brings the watches in line with `interest`, adding and removing as needed.
    /// Returns the directories that could not be watched, with why.
    pub fn set_interest(&mut self, interest: &Interest) -> Vec<(PathBuf, std::io::Error)> {
        let mut files: HashSet<PathBuf> = HashSet::new();
        for f in &interest.files {
            files.insert(f.clone());
            // A symbolic link is replaced when its target is: follow it too.
            if let Ok(target) = std::fs::canonicalize(f) {
                files.insert(target);
            }
        }
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let mut missing = HashSet::new();
        let pattern_files = interest.patterns.iter().map(|p| PathBuf::from(p.as_str()));
        for f in files.iter().cloned().chain(pattern_files) {
            if let Some((dir, on_the_way)) = watch_point(&f) {
                dirs.insert(dir);
                missing.extend(on_the_way);
            }
        }
        let mut failed = Vec::new();
        for dir in &dirs {
            if self.by_dir.contains_key(dir) {
                continue;
            }
            match self.watches.add(dir, dir_mask()) {
                Ok(wd) => {
                    self.by_wd.insert(wd.clone(), dir.clone());
                    self.by_dir.insert(dir.clone(), wd);
                }
                Err(e) => failed.push((dir.clone(), e)),
            }
        }
        let stale: Vec<PathBuf> = self
            .by_dir
            .keys()
            .filter(|d| !dirs.contains(*d))
            .cloned()
            .collect();
        for dir in stale {
            if let Some(wd) = self.by_dir.remove(&dir) {
                self.by_wd.remove(&wd);
                // Fails when the directory is gone, which removed the watch anyway.
                let _ = self.watches.remove(wd);
            }
        }
        self.files = files;
        self.patterns.clone_from(&interest.patterns);
        self.missing = missing;
        failed
    }

    /// How an event bears on the agent.
    pub fn classify(
        &mut self,
        wd: &WatchDescriptor,
        mask: EventMask,
        name: Option<&OsStr>,
    ) -> Relevance {
        if mask.contains(EventMask::Q_OVERFLOW) {
            return Relevance::Overflow;
        }
        let Some(dir) = self.by_wd.get(wd).cloned() else {
            return Relevance::None;
        };
        if mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
            // The directory itself went away: its watch is gone.
            if mask.contains(EventMask::IGNORED) {
                self.by_wd.remove(wd);
                self.by_dir.remove(&dir);
            }
            return Relevance::Changed;
        }
        let Some(name) = name else {
            return Relevance::None;
        };
        let path = dir.join(name);
        let interesting = self.files.contains(&path)
            || self.missing.contains(&path)
            || self.patterns.iter().any(|p| p.matches_path(&path));
        if !interesting {
            return Relevance::None;
        }
        if mask == EventMask::MODIFY {
            Relevance::Writing
        } else {
            Relevance::Changed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inotify::Inotify;

    fn events(ino: &mut Inotify, w: &mut Watcher) -> Vec<Relevance> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(evs) = ino.read_events(&mut buf) {
            let evs: Vec<_> = evs
                .map(|e| (e.wd.clone(), e.mask, e.name.map(OsStr::to_os_string)))
                .collect();
            if evs.is_empty() {
                break;
            }
            for (wd, mask, name) in evs {
                out.push(w.classify(&wd, mask, name.as_deref()));
            }
        }
        out
    }

    #[test]
    fn renames_and_writes_of_files_of_interest_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let mut ino = Inotify::init().unwrap();
        let mut w = Watcher::new(ino.watches());
        let initrd = dir.path().join("initrd.img");
        std::fs::write(&initrd, b"a").unwrap();
        let interest = Interest {
            patterns: vec![glob::Pattern::new(&format!(
                "{}/configuration-*.toml",
                dir.path().display()
            ))
            .unwrap()],
            files: [initrd.clone()].into_iter().collect(),
        };
        assert!(w.set_interest(&interest).is_empty());
        assert_eq!(w.watched_dirs(), 1);

        std::fs::write(dir.path().join("unrelated.txt"), b"x").unwrap();
        assert!(events(&mut ino, &mut w)
            .iter()
            .all(|r| *r == Relevance::None));

        let tmp = dir.path().join(".configuration-qemu-sev.toml.tmp");
        std::fs::write(&tmp, b"x").unwrap();
        std::fs::rename(&tmp, dir.path().join("configuration-qemu-sev.toml")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));

        std::fs::write(&initrd, b"b").unwrap();
        let seen = events(&mut ino, &mut w);
        assert!(seen.contains(&Relevance::Writing), "{seen:?}");
        assert!(seen.contains(&Relevance::Changed), "{seen:?}");
    }

    #[test]
    fn a_missing_directory_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut ino = Inotify::init().unwrap();
        let mut w = Watcher::new(ino.watches());
        let kernel = dir.path().join("share/kata/vmlinuz");
        let interest = Interest {
            patterns: vec![],
            files: [kernel.clone()].into_iter().collect(),
        };
        w.set_interest(&interest);
        std::fs::create_dir(dir.path().join("share")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        // After the next recomputation the new directory is watched instead.
        w.set_interest(&interest);
        std::fs::create_dir(dir.path().join("share/kata")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        w.set_interest(&interest);
        std::fs::write(&kernel, b"k").unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        assert_eq!(w.watched_dirs(), 1);
    }
}
