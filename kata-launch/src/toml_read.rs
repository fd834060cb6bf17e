//! The raw layer of configuration parsing: serde structs that keep every modelled
//! key as an untyped TOML value with its byte span, and a [`Reader`] that checks
//! each value's type and range itself, so that a bad value is reported with its
//! dotted key and line rather than as a bare serde message.
//!
//! Unknown keys are ignored on purpose: real Kata configurations carry dozens of
//! keys that do not affect the launch.

use crate::config::ConfigError;
use crate::location::{line_column, Located, Location};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::{Spanned, Value};

/// One modelled key: absent, or a value of any type with its byte span.
pub(crate) type RawField = Option<Spanned<Value>>;

/// The top level of a configuration file.
#[derive(Debug, Deserialize)]
pub(crate) struct RawRoot {
    pub(crate) hypervisor: Option<RawHypervisors>,
    /// Kata reads every `[agent.<name>]` table; in practice there is one, `kata`.
    pub(crate) agent: Option<BTreeMap<String, RawAgent>>,
    pub(crate) runtime: Option<RawRuntime>,
}

/// The `[hypervisor.*]` tables; only QEMU is modelled.
#[derive(Debug, Deserialize)]
pub(crate) struct RawHypervisors {
    pub(crate) qemu: Option<RawQemu>,
}

/// `[hypervisor.qemu]`, the keys that shape the launch (Kata `pkg/katautils/config.go`).
#[derive(Debug, Deserialize)]
pub(crate) struct RawQemu {
    pub(crate) path: RawField,
    pub(crate) firmware: RawField,
    pub(crate) kernel: RawField,
    pub(crate) initrd: RawField,
    pub(crate) image: RawField,
    pub(crate) rootfs_type: RawField,
    pub(crate) kernel_params: RawField,
    pub(crate) kernel_verity_params: RawField,
    pub(crate) guest_extension_images: RawField,
    pub(crate) default_vcpus: RawField,
    pub(crate) default_maxvcpus: RawField,
    pub(crate) machine_type: RawField,
    pub(crate) cpu_features: RawField,
    pub(crate) confidential_guest: RawField,
    pub(crate) sev_snp_guest: RawField,
    pub(crate) snp_guest_policy: RawField,
    pub(crate) enable_iommu: RawField,
    pub(crate) use_legacy_serial: RawField,
    pub(crate) block_device_driver: RawField,
    pub(crate) disable_image_nvdimm: RawField,
    pub(crate) enable_debug: RawField,
    pub(crate) guest_pre_attestation: RawField,
    pub(crate) guest_pre_attestation_kbs_uri: RawField,
    pub(crate) guest_pre_attestation_kbs_mode: RawField,
    pub(crate) guest_pre_attestation_keyset: RawField,
    pub(crate) sev_cert_chain: RawField,
    pub(crate) sev_guest_policy: RawField,
    pub(crate) disable_guest_selinux: RawField,
    pub(crate) enable_annotations: RawField,
}

/// `[agent.<name>]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawAgent {
    pub(crate) enable_debug: RawField,
    pub(crate) enable_tracing: RawField,
    pub(crate) debug_console_enabled: RawField,
    pub(crate) cdh_api_timeout: RawField,
    pub(crate) launch_process_timeout: RawField,
    pub(crate) visible_cdi_devices: RawField,
}

/// `[runtime]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawRuntime {
    pub(crate) static_sandbox_resource_mgmt: RawField,
}

/// The TOML type name of a value, for messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Reads typed values out of one table, naming `table.key` and the line in errors.
pub(crate) struct Reader<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
    /// Dotted name of the table, e.g. `hypervisor.qemu`.
    pub(crate) table: String,
}

impl Reader<'_> {
    /// The dotted key `table.key`.
    pub(crate) fn dotted(&self, key: &str) -> String {
        format!("{}.{key}", self.table)
    }

    /// The 1-based line where a field's value starts.
    pub(crate) fn line_of(&self, field: &Spanned<Value>) -> usize {
        line_column(self.text, field.span().start).0
    }

    /// The location of `key` on `line`.
    pub(crate) fn at(&self, key: &str, line: Option<usize>) -> Location {
        Location::key(self.path, self.dotted(key), line)
    }

    fn wrong_type(&self, key: &str, field: &Spanned<Value>, expected: &'static str) -> ConfigError {
        ConfigError::WrongType {
            at: self.at(key, Some(self.line_of(field))),
            expected,
            found: type_name(field.get_ref()),
        }
    }

    /// A value that has the right type but is not acceptable.
    pub(crate) fn invalid(
        &self,
        key: &str,
        line: Option<usize>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::InvalidValue {
            at: self.at(key, line),
            reason: reason.into(),
        }
    }

    /// A string; `default` when absent.
    pub(crate) fn string(
        &self,
        key: &str,
        field: &RawField,
        default: &str,
    ) -> Result<Located<String>, ConfigError> {
        match field {
            None => Ok(Located::default_value(default.to_string())),
            Some(spanned) => match spanned.get_ref() {
                Value::String(s) => Ok(Located::at(s.clone(), self.line_of(spanned))),
                _ => Err(self.wrong_type(key, spanned, "a string")),
            },
        }
    }

    /// A path; absent and empty (Kata's "not set") both give `None`.
    pub(crate) fn opt_path(
        &self,
        key: &str,
        field: &RawField,
    ) -> Result<Located<Option<PathBuf>>, ConfigError> {
        let s = self.string(key, field, "")?;
        let value = if s.value.is_empty() {
            None
        } else {
            Some(PathBuf::from(s.value))
        };
        Ok(Located {
            value,
            line: s.line,
        })
    }

    /// A boolean; `default` when absent.
    pub(crate) fn boolean(
        &self,
        key: &str,
        field: &RawField,
        default: bool,
    ) -> Result<Located<bool>, ConfigError> {
        match field {
            None => Ok(Located::default_value(default)),
            Some(spanned) => match spanned.get_ref() {
                Value::Boolean(b) => Ok(Located::at(*b, self.line_of(spanned))),
                _ => Err(self.wrong_type(key, spanned, "a boolean")),
            },
        }
    }

    /// An integer that must fit `T` (Kata decodes into fixed-width Go integers,
    /// and its TOML decoder rejects values out of range); `default` when absent.
    pub(crate) fn integer<T>(
        &self,
        key: &str,
        field: &RawField,
        default: T,
        range: &'static str,
    ) -> Result<Located<T>, ConfigError>
    where
        T: TryFrom<i64>,
    {
        match field {
            None => Ok(Located::default_value(default)),
            Some(spanned) => match spanned.get_ref() {
                Value::Integer(i) => {
                    let line = self.line_of(spanned);
                    T::try_from(*i).map(|v| Located::at(v, line)).map_err(|_| {
                        self.invalid(key, Some(line), format!("{i} is out of range ({range})"))
                    })
                }
                _ => Err(self.wrong_type(key, spanned, "an integer")),
            },
        }
    }

    /// A number Kata decodes into a Go `float32` (integers and floats both
    /// accepted); `default` when absent.
    pub(crate) fn float32(
        &self,
        key: &str,
        field: &RawField,
        default: f32,
    ) -> Result<Located<f32>, ConfigError> {
        match field {
            None => Ok(Located::default_value(default)),
            Some(spanned) => {
                let line = self.line_of(spanned);
                // Kata's TOML decoder converts to float32 by rounding to nearest, as `as` does.
                #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                let value = match spanned.get_ref() {
                    Value::Integer(i) => *i as f32,
                    Value::Float(f) => *f as f32,
                    _ => return Err(self.wrong_type(key, spanned, "a number")),
                };
                if !value.is_finite() {
                    return Err(self.invalid(key, Some(line), "the value is not a finite number"));
                }
                Ok(Located::at(value, line))
            }
        }
    }

    /// `[[table.key]]` entries, each table's keys read as strings (absent ones
    /// empty): for arrays of small string tables such as `guest_extension_images`.
    pub(crate) fn string_tables(
        &self,
        key: &str,
        field: &RawField,
        keys: &[&str],
    ) -> Result<Located<Vec<Vec<String>>>, ConfigError> {
        let Some(spanned) = field else {
            return Ok(Located::default_value(Vec::new()));
        };
        let expected = "an array of tables";
        let Value::Array(items) = spanned.get_ref() else {
            return Err(self.wrong_type(key, spanned, expected));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let Value::Table(table) = item else {
                return Err(self.wrong_type(key, spanned, expected));
            };
            let mut values = Vec::with_capacity(keys.len());
            for k in keys {
                match table.get(*k) {
                    None => values.push(String::new()),
                    Some(Value::String(s)) => values.push(s.clone()),
                    Some(other) => {
                        return Err(ConfigError::WrongType {
                            at: self.at(&format!("{key}.{k}"), Some(self.line_of(spanned))),
                            expected: "a string",
                            found: type_name(other),
                        })
                    }
                }
            }
            out.push(values);
        }
        Ok(Located::at(out, self.line_of(spanned)))
    }

    /// An array of strings; empty when absent.
    pub(crate) fn strings(
        &self,
        key: &str,
        field: &RawField,
    ) -> Result<Located<Vec<String>>, ConfigError> {
        match field {
            None => Ok(Located::default_value(Vec::new())),
            Some(spanned) => match spanned.get_ref() {
                Value::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Value::String(s) => out.push(s.clone()),
                            _ => return Err(self.wrong_type(key, spanned, "an array of strings")),
                        }
                    }
                    Ok(Located::at(out, self.line_of(spanned)))
                }
                _ => Err(self.wrong_type(key, spanned, "an array of strings")),
            },
        }
    }
}

/// The 1-based line of a table header such as `[hypervisor.qemu]`, if the file has one.
///
/// Only for messages: headers may be written with spaces or quotes
/// (`[ hypervisor . "qemu" ]`), which are ignored here.
pub(crate) fn header_line(text: &str, dotted: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let trimmed = line.trim_start();
            if !trimmed.starts_with('[') || trimmed.starts_with("[[") {
                return false;
            }
            let Some(close) = trimmed.find(']') else {
                return false;
            };
            let inner: String = trimmed
                .get(1..close)
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
                .collect();
            inner == dotted
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_line_finds_spaced_and_quoted_headers() {
        let text = "# c\n[hypervisor]\n[ hypervisor . \"qemu\" ]\nx = 1\n";
        assert_eq!(header_line(text, "hypervisor.qemu"), Some(3));
        assert_eq!(header_line(text, "hypervisor"), Some(2));
        assert_eq!(header_line(text, "agent.kata"), None);
    }
}
