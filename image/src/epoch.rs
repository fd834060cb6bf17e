//! The timestamp put on every added entry: `SOURCE_DATE_EPOCH` when set
//! (reproducible-builds.org), else 0.

use crate::error::Error;

/// The mtime for new entries from the value of `SOURCE_DATE_EPOCH` (`None` or
/// empty: unset, giving 0). It must fit the 32-bit field of a newc header.
pub fn mtime(source_date_epoch: Option<&str>) -> Result<u32, Error> {
    match source_date_epoch.map(str::trim) {
        None | Some("") => Ok(0),
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| Error::SourceDateEpoch(v.to_string())),
    }
}

/// [`mtime`] of this process's environment.
pub fn mtime_from_env() -> Result<u32, Error> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => mtime(Some(&v)),
        Err(std::env::VarError::NotPresent) => mtime(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(Error::SourceDateEpoch(v.to_string_lossy().into_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(mtime(None).unwrap(), 0);
        assert_eq!(mtime(Some("")).unwrap(), 0);
        assert_eq!(mtime(Some("1700000000")).unwrap(), 1_700_000_000);
        assert!(mtime(Some("-1")).is_err());
        assert!(mtime(Some("4294967296")).is_err());
        assert!(mtime(Some("yesterday")).is_err());
    }
}
