//! The `--add SRC:DEST[:MODE]` argument and the file it names.

use crate::error::Error;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

/// One file to put into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddSpec {
    /// The file on the build machine.
    pub source: PathBuf,
    /// Destination path components inside the image (no `.`, `..` or empty ones).
    pub dest: Vec<String>,
    /// Permission bits (`0o7777` at most); `None` chooses them as [`AddSpec::mode_for`] says.
    pub mode: Option<u32>,
}

impl AddSpec {
    /// Parses `SRC:DEST[:MODE]`. MODE is octal (`755` or `0755`); DEST may start
    /// with `/` and may not contain `:`; SRC may. A last part made only of octal
    /// digits is taken as MODE.
    pub fn parse(spec: &str) -> Result<AddSpec, Error> {
        let bad = |reason: &str| Error::BadAdd {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (head, last) = spec
            .rsplit_once(':')
            .ok_or_else(|| bad("expected SRC:DEST[:MODE]"))?;
        let (source, dest, mode) = match head.rsplit_once(':') {
            Some((src, dest))
                if !last.is_empty() && last.bytes().all(|b| (b'0'..=b'7').contains(&b)) =>
            {
                let mode = u32::from_str_radix(last, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad("MODE must be octal permission bits, at most 7777"))?;
                (src, dest, Some(mode))
            }
            _ => (head, last, None),
        };
        if source.is_empty() {
            return Err(bad("SRC is empty"));
        }
        let dest = parse_dest(dest).map_err(bad)?;
        Ok(AddSpec {
            source: PathBuf::from(source),
            dest,
            mode,
        })
    }

    /// The destination as a relative path, components joined by `/`.
    pub fn dest_path(&self) -> String {
        self.dest.join("/")
    }

    /// The permission bits the file gets: MODE if given; else those of the entry it
    /// replaces; else 0755 when the source has an execute bit, 0644 when not.
    pub fn mode_for(&self, replaced: Option<u32>, source_executable: bool) -> u32 {
        choose_mode(self.mode, replaced, source_executable)
    }

    /// Reads the source file: its bytes and whether it has an execute bit.
    pub fn read_source(&self) -> Result<(Vec<u8>, bool), Error> {
        let path = &self.source;
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        if meta.len() > u64::from(u32::MAX) {
            return Err(Error::FileTooLarge {
                path: path.clone(),
                size: meta.len(),
            });
        }
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if data.len() as u64 > u64::from(u32::MAX) {
            return Err(Error::FileTooLarge {
                path: path.clone(),
                size: data.len() as u64,
            });
        }
        Ok((data, meta.permissions().mode() & 0o111 != 0))
    }
}

/// The permission bits of an added file: `given` if any; else those of the
/// `replaced` file's mode; else 0755 when the source is `executable`, 0644 when not.
pub fn choose_mode(given: Option<u32>, replaced: Option<u32>, executable: bool) -> u32 {
    given
        .or(replaced.map(|m| m & 0o7777))
        .unwrap_or(if executable { 0o755 } else { 0o644 })
}

fn parse_dest(dest: &str) -> Result<Vec<String>, &'static str> {
    let rel = dest.trim_start_matches('/');
    if rel.is_empty() {
        return Err("DEST is empty or the root");
    }
    if rel.contains('\0') {
        return Err("DEST contains a NUL byte");
    }
    let parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty() || p == "." || p == "..") {
        return Err("DEST may not have empty, `.` or `..` components");
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a = AddSpec::parse("target/guest-client:/usr/bin/guest-client:0755").unwrap();
        assert_eq!(a.source, PathBuf::from("target/guest-client"));
        assert_eq!(a.dest_path(), "usr/bin/guest-client");
        assert_eq!(a.mode, Some(0o755));
        let b = AddSpec::parse("a:b:c:/etc/x").unwrap();
        assert_eq!(b.source, PathBuf::from("a:b:c"));
        assert_eq!(b.dest, vec!["etc", "x"]);
        assert_eq!(b.mode, None);
        assert_eq!(b.mode_for(None, true), 0o755);
        assert_eq!(b.mode_for(Some(0o100_600), true), 0o600);
        assert_eq!(b.mode_for(None, false), 0o644);
    }

    #[test]
    fn rejects() {
        for s in [
            "nocolon",
            ":/usr/bin/x",
            "a:/",
            "a:/usr/../etc",
            "a:usr//x",
            "a:/x:17777",
            "a:/x:",
        ] {
            assert!(AddSpec::parse(s).is_err(), "{s}");
        }
    }
}
