//! Where a value or an error sits in a configuration file.
//!
//! Every value read from a Kata configuration carries the 1-based line it was set
//! on ([`Located`]), and every error names the file, and where known the line,
//! column and dotted key ([`Location`]), so that messages read
//! `file F line L key K: ...`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A value with the 1-based line where it was set in the file (`None` for defaults).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Located<T> {
    /// The value, or Kata's default when the key is absent.
    pub value: T,
    /// The 1-based line of the value in the file; `None` when the default applies.
    pub line: Option<usize>,
}

impl<T> Located<T> {
    /// A value that was not in the file: Kata's default.
    pub fn default_value(value: T) -> Located<T> {
        Located { value, line: None }
    }

    /// A value set on `line` (1-based).
    pub fn at(value: T, line: usize) -> Located<T> {
        Located {
            value,
            line: Some(line),
        }
    }
}

/// The place an error refers to: file, and where known line, column and dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub path: PathBuf,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column (in characters), if known.
    pub column: Option<usize>,
    /// The dotted key, e.g. `hypervisor.qemu.default_vcpus`, if the error is about one.
    pub key: Option<String>,
}

impl Location {
    /// The whole file, no line or key.
    pub fn file(path: &Path) -> Location {
        Location {
            path: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
        }
    }

    /// A key, optionally on a known line.
    pub fn key(path: &Path, key: impl Into<String>, line: Option<usize>) -> Location {
        Location {
            path: path.to_path_buf(),
            line,
            column: None,
            key: Some(key.into()),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file {}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
            if let Some(column) = self.column {
                write!(f, " column {column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, " key {key}")?;
        }
        Ok(())
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
///
/// Offsets past the end, or inside a multi-byte character, are clamped to the
/// nearest preceding character boundary; this never panics.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // After the two-byte 'é': third character on line 2.
        assert_eq!(line_column(text, 9), (2, 3));
        // Inside 'é' clamps back to its start.
        assert_eq!(line_column(text, 8), (2, 2));
        assert_eq!(line_column(text, 10_000), (3, 1));
        assert_eq!(line_column("", 5), (1, 1));
    }

    #[test]
    fn location_display() {
        let mut at = Location::key(Path::new("/c.toml"), "hypervisor.qemu.kernel", Some(3));
        assert_eq!(
            at.to_string(),
            "file /c.toml line 3 key hypervisor.qemu.kernel"
        );
        at.column = Some(7);
        at.key = None;
        assert_eq!(at.to_string(), "file /c.toml line 3 column 7");
        assert_eq!(Location::file(Path::new("x")).to_string(), "file x");
    }
}
