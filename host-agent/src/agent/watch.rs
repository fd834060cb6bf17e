//! Which inotify watches the agent holds and which events matter.
//!
//! The agent follows paths, not inodes. Real installs reach their files through
//! symbolic links (`kata-containers -> kata-containers-3.2`, `vmlinuz.container
//! -> vmlinuz-sev -> vmlinuz-6.1.x`) and change them by swapping a link
//! (`ln -sfn`) or renaming a whole directory into place; each of these changes
//! what a path means without any event on the file at its end. So every path of
//! interest is resolved one component at a time, following each link, and each
//! real directory met on the way is watched for the names that matter in it:
//! the next component, each link, the file at the end. Any event on such a name
//! makes the agent resolve every path again and rebuild the watch set.
//!
//! Only directories are watched: a directory watch reports writes, attribute
//! changes, creation, deletion and renames of every entry in it, and unlike a
//! watch on a file it survives the file being replaced by rename, which is how
//! editors and package managers save. A directory is known by its device and
//! inode as well as its path, so a directory replaced by another under the same
//! name gets a new watch. Paths that lead to one directory share its watch
//! descriptor (inotify gives one per inode), so a descriptor maps to every
//! directory path it stands for.
//!
//! The watcher also keeps which files are open for writing: written to since
//! their last close. A pass leaves those alone, so that a file paused half-way
//! through a copy is not registered.

use inotify::{EventMask, WatchDescriptor, WatchMask, Watches};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Links followed on one path before giving up (the kernel's limit).
const MAX_LINK_HOPS: usize = 40;

/// After this long without a write, a file still open for writing is taken as
/// finished: a writer that keeps a file open for ever must not hold back every
/// pass.
pub const WRITE_PAUSE_LIMIT: Duration = Duration::from_secs(30);

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
    /// A file of interest, or a directory or link on the way to one, was
    /// created, replaced, closed after writing, deleted, or changed attributes.
    Changed,
    /// Events were lost: everything must be looked at again.
    Overflow,
}

/// What matters inside one real directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DirInterest {
    /// Entries on the way to a path of interest: directories, links, files.
    names: HashSet<OsString>,
    /// Patterns on the names of configuration files.
    patterns: Vec<glob::Pattern>,
}

impl DirInterest {
    fn matches(&self, name: &OsStr) -> bool {
        self.names.contains(name)
            || name
                .to_str()
                .is_some_and(|n| self.patterns.iter().any(|p| p.matches(n)))
    }
}

/// A directory watched: its descriptor and the inode it was added for.
#[derive(Debug, Clone)]
struct Watched {
    wd: WatchDescriptor,
    id: (u64, u64),
}

/// The watches held and what they are for.
pub struct Watcher {
    watches: Watches,
    dirs: HashMap<PathBuf, Watched>,
    by_wd: HashMap<WatchDescriptor, BTreeSet<PathBuf>>,
    interest: HashMap<PathBuf, DirInterest>,
    files: usize,
    /// Real paths of files written to since their last close, with when.
    writing: HashMap<PathBuf, Instant>,
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

/// One step of a path still to resolve.
enum Step {
    Name(OsString),
    Parent,
}

fn steps_of(path: &Path) -> VecDeque<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Step::Name(n.to_os_string())),
            Component::ParentDir => Some(Step::Parent),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Resolves `path` one component at a time, following links, and notes in
/// `into` every directory entry it depends on under the real directory that
/// holds it. Returns the real path it leads to, when every component exists.
fn resolve_into(path: &Path, into: &mut HashMap<PathBuf, DirInterest>) -> Option<PathBuf> {
    let mut dir = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().ok()?
    };
    let mut pending = steps_of(path);
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            Step::Parent => {
                // `dir` holds no links, so its parent is the lexical one.
                dir.pop();
                continue;
            }
            Step::Name(n) => n,
        };
        into.entry(dir.clone())
            .or_default()
            .names
            .insert(name.clone());
        let here = dir.join(&name);
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            if target.is_absolute() {
                dir = PathBuf::from("/");
            }
            let mut next = steps_of(&target);
            next.extend(pending);
            pending = next;
        } else if meta.is_dir() {
            dir = here;
        } else if pending.is_empty() {
            return Some(here);
        } else {
            // A file where a directory should be: nothing further exists.
            return None;
        }
    }
    Some(dir)
}

/// The real directory of every entry that `interest` depends on, with the
/// names and patterns that matter in it.
fn resolve(interest: &Interest) -> HashMap<PathBuf, DirInterest> {
    let mut out: HashMap<PathBuf, DirInterest> = HashMap::new();
    for file in &interest.files {
        resolve_into(file, &mut out);
    }
    for pattern in &interest.patterns {
        let path = Path::new(pattern.as_str());
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let Some(real) = resolve_into(parent, &mut out) else {
            continue;
        };
        if let Ok(p) = glob::Pattern::new(&name.to_string_lossy()) {
            let dir = out.entry(real).or_default();
            if !dir.patterns.contains(&p) {
                dir.patterns.push(p);
            }
        }
    }
    out
}

fn dir_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Watcher {
    /// A watcher over an inotify instance's watch list.
    pub fn new(watches: Watches) -> Watcher {
        Watcher {
            watches,
            dirs: HashMap::new(),
            by_wd: HashMap::new(),
            interest: HashMap::new(),
            files: 0,
            writing: HashMap::new(),
        }
    }

    /// Files of interest, for metrics.
    pub fn watched_files(&self) -> usize {
        self.files
    }

    /// Directories watched, for metrics.
    pub fn watched_dirs(&self) -> usize {
        self.dirs.len()
    }

    /// Real paths of files of interest written to and not yet closed, unless
    /// their last write is older than [`WRITE_PAUSE_LIMIT`].
    pub fn being_written(&self) -> HashSet<PathBuf> {
        self.writing
            .iter()
            .filter(|(_, at)| at.elapsed() < WRITE_PAUSE_LIMIT)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Resolves every path of `interest` again and brings the watches in line,
    /// adding and removing as needed. Returns the directories that could not
    /// be watched, with why.
    pub fn set_interest(&mut self, interest: &Interest) -> Vec<(PathBuf, std::io::Error)> {
        let wanted = resolve(interest);
        let mut failed = Vec::new();
        for dir in wanted.keys() {
            let id = dir_id(dir);
            if let (Some(w), Some(id)) = (self.dirs.get(dir), id) {
                if w.id == id {
                    continue;
                }
            }
            // New, or another directory now has this name.
            self.detach(dir);
            let Some(id) = id else {
                // Gone since it was resolved: its parent's event will follow.
                continue;
            };
            match self.watches.add(dir, dir_mask()) {
                Ok(wd) => {
                    self.by_wd
                        .entry(wd.clone())
                        .or_default()
                        .insert(dir.clone());
                    self.dirs.insert(dir.clone(), Watched { wd, id });
                }
                Err(e) => failed.push((dir.clone(), e)),
            }
        }
        let stale: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !wanted.contains_key(*d))
            .cloned()
            .collect();
        for dir in stale {
            self.detach(&dir);
        }
        self.interest = wanted;
        self.files = interest.files.len();
        failed
    }

    /// Stops watching `dir` under this path; the descriptor goes when no other
    /// path uses it.
    fn detach(&mut self, dir: &Path) {
        let Some(w) = self.dirs.remove(dir) else {
            return;
        };
        let unused = match self.by_wd.get_mut(&w.wd) {
            Some(paths) => {
                paths.remove(dir);
                paths.is_empty()
            }
            None => true,
        };
        if unused {
            self.by_wd.remove(&w.wd);
            // Fails when the directory is gone, which removed the watch anyway.
            let _ = self.watches.remove(w.wd);
        }
    }

    /// How an event bears on the agent.
    pub fn classify(
        &mut self,
        wd: &WatchDescriptor,
        mask: EventMask,
        name: Option<&OsStr>,
    ) -> Relevance {
        if mask.contains(EventMask::Q_OVERFLOW) {
            // Closes may have been lost with the rest.
            self.writing.clear();
            return Relevance::Overflow;
        }
        if !self.by_wd.contains_key(wd) {
            return Relevance::None;
        }
        if mask.intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
            // The directory itself went away or moved: what its paths mean
            // has changed.
            if mask.contains(EventMask::IGNORED) {
                if let Some(paths) = self.by_wd.remove(wd) {
                    for p in paths {
                        self.dirs.remove(&p);
                    }
                }
            }
            return Relevance::Changed;
        }
        let Some(name) = name else {
            return Relevance::None;
        };
        let mut relevant = Vec::new();
        for dir in self.by_wd.get(wd).into_iter().flatten() {
            if self.interest.get(dir).is_some_and(|i| i.matches(name)) {
                relevant.push(dir.join(name));
            }
        }
        if relevant.is_empty() {
            return Relevance::None;
        }
        let now = Instant::now();
        for path in relevant {
            if mask.contains(EventMask::MODIFY) {
                self.writing.insert(path, now);
            } else if mask.intersects(
                EventMask::CLOSE_WRITE
                    | EventMask::DELETE
                    | EventMask::MOVED_FROM
                    | EventMask::MOVED_TO
                    | EventMask::CREATE,
            ) {
                self.writing.remove(&path);
            }
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
    use std::os::unix::fs::symlink;

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

    fn files(paths: &[&Path]) -> Interest {
        Interest {
            patterns: vec![],
            files: paths.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    fn real(dir: &tempfile::TempDir) -> PathBuf {
        std::fs::canonicalize(dir.path()).unwrap()
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
        let interest = files(&[&kernel]);
        w.set_interest(&interest);
        std::fs::create_dir(dir.path().join("share")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        // After the next resolution the new directory is watched as well.
        w.set_interest(&interest);
        std::fs::create_dir(dir.path().join("share/kata")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        w.set_interest(&interest);
        std::fs::write(&kernel, b"k").unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
    }

    #[test]
    fn every_link_of_a_chain_and_its_directories_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = real(&dir);
        for d in ["kata-3.2/share", "kernels"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        symlink("kata-3.2", root.join("kata")).unwrap();
        std::fs::write(root.join("kernels/vmlinuz-6.1"), b"k").unwrap();
        symlink(
            "../../kernels/vmlinuz-6.1",
            root.join("kata-3.2/share/vmlinuz-sev"),
        )
        .unwrap();
        symlink("vmlinuz-sev", root.join("kata-3.2/share/vmlinuz.container")).unwrap();
        let mut found = HashMap::new();
        let end = resolve_into(&root.join("kata/share/vmlinuz.container"), &mut found);
        assert_eq!(end, Some(root.join("kernels/vmlinuz-6.1")));
        let names = |d: &str| {
            let key = if d == "." { root.clone() } else { root.join(d) };
            let mut n: Vec<String> = found[&key]
                .names
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names("."), ["kata", "kata-3.2", "kernels"]);
        assert_eq!(
            names("kata-3.2/share"),
            ["vmlinuz-sev", "vmlinuz.container"]
        );
        assert_eq!(names("kernels"), ["vmlinuz-6.1"]);

        // Changing the middle link is seen.
        let mut ino = Inotify::init().unwrap();
        let mut w = Watcher::new(ino.watches());
        let interest = files(&[&root.join("kata/share/vmlinuz.container")]);
        assert!(w.set_interest(&interest).is_empty());
        std::fs::write(root.join("kernels/vmlinuz-6.2"), b"k2").unwrap();
        assert!(events(&mut ino, &mut w)
            .iter()
            .all(|r| *r == Relevance::None));
        let tmp = root.join("kata-3.2/share/.tmp");
        symlink("../../kernels/vmlinuz-6.2", &tmp).unwrap();
        std::fs::rename(&tmp, root.join("kata-3.2/share/vmlinuz-sev")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
    }

    #[test]
    fn a_directory_link_swapped_and_a_directory_renamed_into_place_are_rewatched() {
        let dir = tempfile::tempdir().unwrap();
        let root = real(&dir);
        for d in ["v1", "v2"] {
            std::fs::create_dir(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("configuration-a.toml"), d).unwrap();
        }
        symlink("v1", root.join("defaults")).unwrap();
        let mut ino = Inotify::init().unwrap();
        let mut w = Watcher::new(ino.watches());
        // Both a path through the link and one straight to v1: one inode, two
        // paths, one descriptor.
        let interest = Interest {
            patterns: vec![glob::Pattern::new(&format!(
                "{}/defaults/configuration-*.toml",
                root.display()
            ))
            .unwrap()],
            files: [root.join("v1/configuration-a.toml")].into_iter().collect(),
        };
        w.set_interest(&interest);

        // ln -sfn v2 defaults
        let tmp = root.join(".defaults.tmp");
        symlink("v2", &tmp).unwrap();
        std::fs::rename(&tmp, root.join("defaults")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        w.set_interest(&interest);
        std::fs::write(root.join("v2/configuration-b.toml"), b"x").unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        // v1 is still watched for the file named straight.
        std::fs::write(root.join("v1/configuration-a.toml"), b"y").unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));

        // mv v2 v2.old; mv v3 v2
        std::fs::create_dir(root.join("v3")).unwrap();
        std::fs::rename(root.join("v2"), root.join("v2.old")).unwrap();
        std::fs::rename(root.join("v3"), root.join("v2")).unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        w.set_interest(&interest);
        std::fs::write(root.join("v2/configuration-c.toml"), b"z").unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        // The old directory is no longer of interest.
        std::fs::write(root.join("v2.old/configuration-d.toml"), b"z").unwrap();
        assert!(events(&mut ino, &mut w)
            .iter()
            .all(|r| *r == Relevance::None));
    }

    #[test]
    fn a_file_is_being_written_until_it_is_closed() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let root = real(&dir);
        let kernel = root.join("vmlinuz");
        std::fs::write(&kernel, b"").unwrap();
        let mut ino = Inotify::init().unwrap();
        let mut w = Watcher::new(ino.watches());
        w.set_interest(&files(&[&kernel]));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&kernel)
            .unwrap();
        f.write_all(b"half").unwrap();
        assert!(events(&mut ino, &mut w).contains(&Relevance::Writing));
        assert!(w.being_written().contains(&kernel));
        f.write_all(b"the rest").unwrap();
        drop(f);
        assert!(events(&mut ino, &mut w).contains(&Relevance::Changed));
        assert!(w.being_written().is_empty());
    }
}
