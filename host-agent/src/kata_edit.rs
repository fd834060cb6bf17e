//! Editing Kata configuration text in place: comments, order and layout kept.
//!
//! The operator switches guest pre-attestation (`[hypervisor.qemu]
//! guest_pre_attestation*`) and image signature verification (the
//! `agent.enable_signature_verification=` token of `kernel_params`) on and off.
//! The seed did this by rewriting the whole file and lost its comments; here the
//! text goes through `toml_edit`, only the values that must change are replaced
//! (keeping the spacing around them and any trailing comment), and missing keys
//! are added at the end of the `[hypervisor.qemu]` table. Every other byte of the
//! file comes out as it went in; when `toml_edit` could not promise that for some
//! file, the edit is refused rather than reformatting the operator's file.
//!
//! Everything here is pure (text in, text out); reading and writing files is
//! `kata_cmd`'s job. Errors name the file and, where known, the line and key.

use kata_launch::KbsMode;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, ImDocument, Item, TableLike, Value};

/// The table every key edited here lives in.
pub const QEMU_TABLE: &str = "hypervisor.qemu";
/// `[hypervisor.qemu]` key: pre-attestation on or off.
pub const GUEST_PRE_ATTESTATION: &str = "guest_pre_attestation";
/// `[hypervisor.qemu]` key: the key broker's `HOST:PORT`, verbatim.
pub const KBS_URI: &str = "guest_pre_attestation_kbs_uri";
/// `[hypervisor.qemu]` key: `online` or `offline`.
pub const KBS_MODE: &str = "guest_pre_attestation_kbs_mode";
/// `[hypervisor.qemu]` key: extra guest kernel parameters, one string.
pub const KERNEL_PARAMS: &str = "kernel_params";
/// The guest agent's kernel parameter that turns image signature verification on.
pub const SIGNATURE_VERIFICATION_PARAM: &str = "agent.enable_signature_verification";

/// What to do with guest pre-attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreAttestation {
    /// `guest_pre_attestation = true` with this key broker.
    On {
        /// `HOST:PORT` of the key broker, as the shim and the guest will dial it.
        kbs_uri: String,
        /// The mode to set; `None` keeps a valid mode already in the file and
        /// sets `online` (what the stock SEV initrd is built for) when there is none.
        mode: Option<KbsMode>,
    },
    /// `guest_pre_attestation = false`; the URI and mode stay, so switching back
    /// on later needs no arguments beyond the address.
    Off,
}

/// One value that an edit changed or added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key, e.g. `hypervisor.qemu.guest_pre_attestation`.
    pub key: String,
    /// 1-based line of the key in the edited text, when known.
    pub line: Option<usize>,
    /// The old value as TOML writes it (`true`, `"online"`); for `kernel_params`
    /// only the signature-verification token(s), not the whole string. `None`
    /// when the key or token was added.
    pub old: Option<String>,
    /// The new value, in the same form as `old`.
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        match &self.old {
            Some(old) => write!(f, ": {old} -> {}", self.new),
            None => write!(f, ": added {}", self.new),
        }
    }
}

/// The outcome of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The whole new text (equal to the input when nothing changed).
    pub text: String,
    /// Whether `text` differs from the input; when false, callers must not
    /// rewrite the file (a rewrite would wake every watcher for nothing).
    pub changed: bool,
    /// The values that changed, in the order they were edited.
    pub changes: Vec<Change>,
}

/// A `--kbs-uri` that is not `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid KBS address {uri:?}: {reason} \
     (expected HOST:PORT, e.g. 10.0.0.5:44444 or [fd00::5]:44444)"
)]
pub struct KbsUriError {
    /// The address as given.
    pub uri: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The host part of a key broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KbsHost {
    /// An IPv4 or (bracketed) IPv6 address.
    Ip(IpAddr),
    /// A DNS name.
    Name(String),
}

impl KbsHost {
    /// Whether only this machine can reach the host (a guest never can).
    pub fn is_loopback(&self) -> bool {
        match self {
            KbsHost::Ip(ip) => ip.is_loopback(),
            KbsHost::Name(name) => {
                name.eq_ignore_ascii_case("localhost")
                    || name.to_ascii_lowercase().ends_with(".localhost")
            }
        }
    }
}

/// A checked `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsEndpoint {
    /// The host.
    pub host: KbsHost,
    /// The TCP port (never 0).
    pub port: u16,
}

/// Why a configuration text could not be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KataEditError {
    /// The text is not valid TOML.
    #[error("file {} line {line} column {column}: invalid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// There is no `[hypervisor.qemu]` table to edit.
    #[error("file {}: no [hypervisor.qemu] table (not a Kata QEMU configuration?)", path.display())]
    NoQemuTable {
        /// The file.
        path: PathBuf,
    },
    /// A key holds a value of the wrong TOML type.
    #[error("{}: expected {expected}, found {found}", at(path, *line, key))]
    WrongType {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value, when known.
        line: Option<usize>,
        /// Dotted key.
        key: String,
        /// The type Kata expects.
        expected: &'static str,
        /// The type in the file.
        found: &'static str,
    },
    /// A key has the right type but a value that cannot be kept.
    #[error("{}: {reason}", at(path, *line, key))]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value, when known.
        line: Option<usize>,
        /// Dotted key.
        key: String,
        /// What is wrong and what to do about it.
        reason: String,
    },
    /// `toml_edit` would rewrite bytes outside the edited values, so the file is
    /// left alone rather than reformatted.
    #[error(
        "file {} line {line}: cannot edit this file without reformatting other lines \
         ({reason}); edit it by hand",
        path.display()
    )]
    NotLossless {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first byte that would change.
        line: usize,
        /// What about the file causes it, where known.
        reason: &'static str,
    },
    /// The key broker address is not `HOST:PORT`.
    #[error(transparent)]
    KbsUri(#[from] KbsUriError),
}

/// `file F[ line L] key K`, the way `kata_launch` names places.
fn at(path: &Path, line: Option<usize>, key: &str) -> kata_launch::Location {
    kata_launch::Location::key(path, key, line)
}

/// Switches guest pre-attestation on or off in the text of a Kata configuration.
///
/// On: `guest_pre_attestation = true`, `guest_pre_attestation_kbs_uri` set to the
/// (checked) address, `guest_pre_attestation_kbs_mode` set as
/// [`PreAttestation::On`] says. Off: `guest_pre_attestation = false` only, and
/// nothing at all when the key is absent (Kata's default is already false).
/// `path` only names the file in errors.
pub fn set_guest_pre_attestation(
    path: &Path,
    text: &str,
    setting: &PreAttestation,
) -> Result<Edit, KataEditError> {
    if let PreAttestation::On { kbs_uri, .. } = setting {
        validate_kbs_uri(kbs_uri)?;
    }
    let mut ed = Editor::open(path, text)?;
    match setting {
        PreAttestation::On { kbs_uri, mode } => {
            ed.set(GUEST_PRE_ATTESTATION, Wanted::Bool(true))?;
            ed.set(KBS_URI, Wanted::Str(kbs_uri))?;
            match mode {
                Some(m) => ed.set(KBS_MODE, Wanted::Str(m.as_str()))?,
                None => ed.keep_or_default_mode()?,
            }
        }
        PreAttestation::Off => {
            if ed.exists(GUEST_PRE_ATTESTATION)? {
                ed.set(GUEST_PRE_ATTESTATION, Wanted::Bool(false))?;
            }
        }
    }
    ed.finish()
}

/// Sets `agent.enable_signature_verification=true|false` in `[hypervisor.qemu]
/// kernel_params`.
///
/// Every occurrence of the token gets the new value in place (a bare
/// `agent.enable_signature_verification` gains `=value`); other tokens and the
/// spacing of the string are untouched. Without the token, ` token=value` is
/// appended after the last parameter (before any trailing spaces); without
/// `kernel_params`, the key is added. `path` only names the file in errors.
pub fn set_signature_verification(
    path: &Path,
    text: &str,
    enabled: bool,
) -> Result<Edit, KataEditError> {
    let mut ed = Editor::open(path, text)?;
    ed.set_signature_param(enabled)?;
    ed.finish()
}

/// Whether a configuration is one whose guests take part in SEV pre-attestation:
/// `[hypervisor.qemu] confidential_guest = true` and `sev_snp_guest` not true
/// (Kata CC-0.8.0 pre-attests SEV and SEV-ES guests only). A file without a
/// `[hypervisor.qemu]` table (another hypervisor's) is not.
pub fn is_sev_pre_attestation_config(path: &Path, text: &str) -> Result<bool, KataEditError> {
    let (_, normal) = Layout::normalize(text);
    let doc = parse(path, normal)?;
    let Some(qemu) = qemu_table(doc.as_table()) else {
        return Ok(false);
    };
    let flag = |key: &str| -> Result<bool, KataEditError> {
        match qemu.get(key) {
            None => Ok(false),
            Some(item) => item.as_bool().ok_or_else(|| KataEditError::WrongType {
                path: path.to_path_buf(),
                line: item.span().map(|s| line_of(doc.raw(), s.start)),
                key: dotted(key),
                expected: "a boolean",
                found: item.type_name(),
            }),
        }
    };
    Ok(flag("confidential_guest")? && !flag("sev_snp_guest")?)
}

/// Checks a key broker address: `HOST:PORT` with a DNS name, an IPv4 address or
/// a bracketed IPv6 address, and a port from 1 to 65535. No scheme, no path.
pub fn validate_kbs_uri(uri: &str) -> Result<KbsEndpoint, KbsUriError> {
    let fail = |reason: &str| KbsUriError {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    if uri.contains("://") {
        return Err(fail("no scheme is allowed"));
    }
    let (host, port) = if let Some(rest) = uri.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| fail("no closing ']' after the IPv6 address"))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| fail("not an IPv6 address between the brackets"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| fail("no ':PORT' after the IPv6 address"))?;
        (KbsHost::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = uri.rsplit_once(':').ok_or_else(|| fail("no ':PORT'"))?;
        if host.contains(':') {
            return Err(fail("put an IPv6 address in brackets"));
        }
        (parse_host(host).map_err(&fail)?, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("the port is not a number"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| fail("the port is larger than 65535"))?;
    if port == 0 {
        return Err(fail("the port is 0"));
    }
    Ok(KbsEndpoint { host, port })
}

/// A DNS name or dotted IPv4 address.
fn parse_host(host: &str) -> Result<KbsHost, &'static str> {
    if host.is_empty() {
        return Err("the host is empty");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(KbsHost::Ip(IpAddr::V4(ip)));
    }
    if host.len() > 253 {
        return Err("the host name is longer than 253 characters");
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err("the host is neither an IP address nor a valid DNS name");
        }
    }
    // All-numeric names are mistyped IPv4 addresses (`10.0.0.256`), not names.
    if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("not a valid IPv4 address");
    }
    Ok(KbsHost::Name(host.to_string()))
}

/// What a key should hold.
#[derive(Debug, Clone, Copy)]
enum Wanted<'a> {
    Bool(bool),
    Str(&'a str),
}

impl Wanted<'_> {
    fn type_name(self) -> &'static str {
        match self {
            Wanted::Bool(_) => "a boolean",
            Wanted::Str(_) => "a string",
        }
    }

    fn to_value(self) -> Value {
        match self {
            Wanted::Bool(b) => Value::from(b),
            Wanted::Str(s) => Value::from(s),
        }
    }

    /// Whether `v` already holds this value (compared decoded, so a literal
    /// `'x'` in the file counts as `"x"` and is left as written).
    fn matches(self, v: &Value) -> Option<bool> {
        match self {
            Wanted::Bool(b) => v.as_bool().map(|old| old == b),
            Wanted::Str(s) => v.as_str().map(|old| old == s),
        }
    }
}

/// How the text differs from what `toml_edit` reads and writes, undone after
/// the edit: it drops a byte-order mark, writes `\n` after every key, and always
/// ends the last key with a newline.
#[derive(Debug, Clone, Copy)]
struct Layout {
    bom: bool,
    crlf: bool,
    added_final_newline: bool,
}

impl Layout {
    fn normalize(text: &str) -> (Layout, String) {
        let (bom, body) = match text.strip_prefix('\u{feff}') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        // Only a file with CRLF everywhere can be converted back exactly.
        let crlf = body.contains("\r\n") && !body.replace("\r\n", "").contains('\n');
        let mut s = if crlf {
            body.replace("\r\n", "\n")
        } else {
            body.to_string()
        };
        let added_final_newline = !s.is_empty() && !s.ends_with('\n');
        if added_final_newline {
            s.push('\n');
        }
        (
            Layout {
                bom,
                crlf,
                added_final_newline,
            },
            s,
        )
    }

    fn restore(self, mut s: String) -> String {
        if self.added_final_newline && s.ends_with('\n') {
            s.pop();
        }
        if self.crlf {
            s = s.replace('\n', "\r\n");
        }
        if self.bom {
            s.insert(0, '\u{feff}');
        }
        s
    }
}

fn parse(path: &Path, normal: String) -> Result<ImDocument<String>, KataEditError> {
    // A clone for the error's position: the parser keeps the text it failed on.
    let copy = normal.clone();
    ImDocument::parse(normal).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_column(&copy, s.start));
        KataEditError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim_end().replace('\n', "; "),
        }
    })
}

fn qemu_table(root: &toml_edit::Table) -> Option<&dyn TableLike> {
    root.get("hypervisor")?
        .as_table_like()?
        .get("qemu")?
        .as_table_like()
}

fn qemu_table_mut(doc: &mut DocumentMut) -> Option<&mut dyn TableLike> {
    doc.as_table_mut()
        .get_mut("hypervisor")?
        .as_table_like_mut()?
        .get_mut("qemu")?
        .as_table_like_mut()
}

/// The 1-based lines of the values of every `[hypervisor.qemu]` key.
fn qemu_lines(doc: &ImDocument<String>) -> HashMap<String, usize> {
    let mut lines = HashMap::new();
    if let Some(qemu) = qemu_table(doc.as_table()) {
        for (key, item) in qemu.iter() {
            let span = item
                .span()
                .or_else(|| qemu.get_key_value(key).and_then(|(k, _)| k.span()));
            if let Some(span) = span {
                lines.insert(key.to_string(), line_of(doc.raw(), span.start));
            }
        }
    }
    lines
}

fn dotted(key: &str) -> String {
    format!("{QEMU_TABLE}.{key}")
}

fn line_of(text: &str, offset: usize) -> usize {
    line_column(text, offset).0
}

/// 1-based line and column (in characters) of a byte offset; never panics.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// A configuration being edited, with what is needed to name places in errors.
struct Editor<'p> {
    path: &'p Path,
    /// The text as given, handed back untouched when nothing changes.
    input: &'p str,
    layout: Layout,
    /// The normalised input, to tell whether anything changed.
    before: String,
    /// Lines of the `[hypervisor.qemu]` values in the input, for errors.
    lines: HashMap<String, usize>,
    doc: DocumentMut,
    changes: Vec<Change>,
}

impl<'p> Editor<'p> {
    fn open(path: &'p Path, text: &'p str) -> Result<Editor<'p>, KataEditError> {
        let (layout, normal) = Layout::normalize(text);
        let parsed = parse(path, normal.clone())?;
        let lines = qemu_lines(&parsed);
        let doc = parsed.into_mut();
        // The guarantee that only edited values change rests on toml_edit writing
        // back the unedited document byte for byte; check it rather than trust it.
        let round_trip = doc.to_string();
        if round_trip != normal {
            return Err(KataEditError::NotLossless {
                path: path.to_path_buf(),
                line: first_difference_line(&normal, &round_trip),
                reason: if normal.contains('\r') {
                    "mixed line endings"
                } else {
                    "layout toml_edit does not keep"
                },
            });
        }
        let mut ed = Editor {
            path,
            input: text,
            layout,
            before: normal,
            lines,
            doc,
            changes: Vec::new(),
        };
        ed.table()?;
        Ok(ed)
    }

    fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(key).copied()
    }

    fn table(&mut self) -> Result<&mut dyn TableLike, KataEditError> {
        let path = self.path;
        qemu_table_mut(&mut self.doc).ok_or_else(|| KataEditError::NoQemuTable {
            path: path.to_path_buf(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &'static str) -> KataEditError {
        KataEditError::WrongType {
            path: self.path.to_path_buf(),
            line: self.line(key),
            key: dotted(key),
            expected,
            found,
        }
    }

    fn exists(&mut self, key: &str) -> Result<bool, KataEditError> {
        Ok(self.table()?.contains_key(key))
    }

    /// The value of `key` as a plain value (not a table), if present.
    fn current(
        &mut self,
        key: &str,
        expected: &'static str,
    ) -> Result<Option<Value>, KataEditError> {
        let found = match self.table()?.get(key) {
            None => return Ok(None),
            Some(Item::Value(v)) => return Ok(Some(v.clone())),
            Some(other) => other.type_name(),
        };
        Err(self.wrong_type(key, expected, found))
    }

    /// Sets `key` to `want`: the value alone is replaced (its surrounding spaces
    /// and trailing comment stay), or the key is added at the end of the table.
    fn set(&mut self, key: &str, want: Wanted<'_>) -> Result<(), KataEditError> {
        match self.current(key, want.type_name())? {
            Some(old) => match want.matches(&old) {
                Some(true) => Ok(()),
                Some(false) => {
                    self.replace(key, want.to_value())?;
                    self.changes.push(Change {
                        key: dotted(key),
                        line: None,
                        old: Some(bare(&old)),
                        new: bare(&want.to_value()),
                    });
                    Ok(())
                }
                None => Err(self.wrong_type(key, want.type_name(), old.type_name())),
            },
            None => {
                self.table()?.insert(key, Item::Value(want.to_value()));
                self.changes.push(Change {
                    key: dotted(key),
                    line: None,
                    old: None,
                    new: bare(&want.to_value()),
                });
                Ok(())
            }
        }
    }

    /// Puts `new` in place of the value of `key`, keeping the old value's decor.
    fn replace(&mut self, key: &str, mut new: Value) -> Result<(), KataEditError> {
        if let Some(slot) = self.table()?.get_mut(key).and_then(Item::as_value_mut) {
            *new.decor_mut() = slot.decor().clone();
            *slot = new;
        }
        Ok(())
    }

    /// Pre-attestation on without `--mode`: a valid mode in the file stays; an
    /// absent or empty one (Kata then fails SEV pre-attestation) becomes `online`.
    fn keep_or_default_mode(&mut self) -> Result<(), KataEditError> {
        let online = Wanted::Str(KbsMode::Online.as_str());
        let Some(old) = self.current(KBS_MODE, "a string")? else {
            return self.set(KBS_MODE, online);
        };
        match old.as_str() {
            None => Err(self.wrong_type(KBS_MODE, "a string", old.type_name())),
            Some("") => self.set(KBS_MODE, online),
            Some(s) if KbsMode::from_name(s).is_some() => Ok(()),
            Some(s) => Err(KataEditError::InvalidValue {
                path: self.path.to_path_buf(),
                line: self.line(KBS_MODE),
                key: dotted(KBS_MODE),
                reason: format!(
                    "{s:?} is not a pre-attestation mode (expected \"online\" or \"offline\"); \
                     choose one with --mode"
                ),
            }),
        }
    }

    fn set_signature_param(&mut self, enabled: bool) -> Result<(), KataEditError> {
        let Some(old) = self.current(KERNEL_PARAMS, "a string")? else {
            let token = signature_token(enabled);
            self.table()?
                .insert(KERNEL_PARAMS, Item::Value(Value::from(token.as_str())));
            self.changes.push(Change {
                key: dotted(KERNEL_PARAMS),
                line: None,
                old: None,
                new: bare(&Value::from(token.as_str())),
            });
            return Ok(());
        };
        let Some(decoded) = old.as_str() else {
            return Err(self.wrong_type(KERNEL_PARAMS, "a string", old.type_name()));
        };
        let edited = set_param_token(decoded, enabled);
        if edited.params == decoded {
            return Ok(());
        }
        let new = rewrite_string_value(&old, enabled, &edited.params);
        self.replace(KERNEL_PARAMS, new)?;
        self.changes.push(Change {
            key: dotted(KERNEL_PARAMS),
            line: None,
            old: (!edited.old_tokens.is_empty()).then(|| edited.old_tokens.join(" ")),
            new: edited.new_tokens.join(" "),
        });
        Ok(())
    }

    fn finish(self) -> Result<Edit, KataEditError> {
        let after = self.doc.to_string();
        let changed = after != self.before;
        let mut changes = self.changes;
        if changed {
            // Lines in the edited text, where the operator will look for them.
            let lines = ImDocument::parse(after.clone())
                .map(|d| qemu_lines(&d))
                .unwrap_or_default();
            for c in &mut changes {
                let leaf = c.key.rsplit('.').next().unwrap_or("");
                c.line = lines.get(leaf).copied();
            }
        }
        let text = if changed {
            self.layout.restore(after)
        } else {
            self.input.to_string()
        };
        Ok(Edit {
            text,
            changed,
            changes,
        })
    }
}

/// A value as TOML writes it by default, without the file's spacing.
fn bare(v: &Value) -> String {
    let mut v = v.clone();
    v.decor_mut().clear();
    v.to_string()
}

fn signature_token(enabled: bool) -> String {
    format!("{SIGNATURE_VERIFICATION_PARAM}={enabled}")
}

/// `kernel_params` with the signature-verification token set.
#[derive(Debug, PartialEq, Eq)]
struct ParamEdit {
    params: String,
    old_tokens: Vec<String>,
    new_tokens: Vec<String>,
}

/// Sets every `agent.enable_signature_verification[=...]` token of a
/// parameter string, or appends one after the last token. Whitespace between
/// and around tokens is kept exactly.
fn set_param_token(params: &str, enabled: bool) -> ParamEdit {
    let token = signature_token(enabled);
    let mut out = String::with_capacity(params.len() + token.len() + 1);
    let mut old_tokens = Vec::new();
    let mut new_tokens = Vec::new();
    let mut last_token_end = 0;
    let mut rest = params;
    while !rest.is_empty() {
        let ws_len = rest.len() - rest.trim_start().len();
        let (ws, after_ws) = rest.split_at(ws_len);
        out.push_str(ws);
        let tok_len = after_ws.find(char::is_whitespace).unwrap_or(after_ws.len());
        let (tok, after_tok) = after_ws.split_at(tok_len);
        if !tok.is_empty() {
            let name = tok.split_once('=').map_or(tok, |(n, _)| n);
            if name == SIGNATURE_VERIFICATION_PARAM {
                old_tokens.push(tok.to_string());
                new_tokens.push(token.clone());
                out.push_str(&token);
            } else {
                out.push_str(tok);
            }
            last_token_end = out.len();
        }
        rest = after_tok;
    }
    if new_tokens.is_empty() {
        // Append after the last parameter; trailing spaces stay at the end.
        let sep = if last_token_end == 0 { "" } else { " " };
        out.insert_str(last_token_end, &format!("{sep}{token}"));
        new_tokens.push(token);
    }
    ParamEdit {
        params: out,
        old_tokens,
        new_tokens,
    }
}

/// The new `kernel_params` value, written the way the old one was (same quotes,
/// same escapes in the other tokens) when the token edit can be made on the raw
/// TOML text; otherwise a fresh string of the wanted content.
fn rewrite_string_value(old: &Value, enabled: bool, wanted: &str) -> Value {
    let raw = match old {
        Value::String(f) => f.as_repr().and_then(|r| r.as_raw().as_str()),
        _ => None,
    };
    if let Some(raw) = raw {
        for delim in ["\"\"\"", "'''", "\"", "'"] {
            let body = raw.strip_prefix(delim).and_then(|r| r.strip_suffix(delim));
            if let Some(body) = body {
                let edited = set_param_token(body, enabled);
                let candidate = format!("{delim}{}{delim}", edited.params);
                // Escapes could make the raw tokens differ from the decoded ones;
                // only keep the raw edit when it decodes to exactly the wanted text.
                if let Ok(v) = candidate.parse::<Value>() {
                    if v.as_str() == Some(wanted) {
                        return v;
                    }
                }
                break;
            }
        }
    }
    Value::from(wanted)
}

/// 1-based line of the first difference; split on `\n` only, so that a lost
/// `\r` counts as a difference.
fn first_difference_line(a: &str, b: &str) -> usize {
    a.split('\n')
        .zip(b.split('\n'))
        .position(|(x, y)| x != y)
        .unwrap_or_else(|| a.split('\n').count().min(b.split('\n').count()))
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "configuration-qemu-sev.toml";

    fn path() -> &'static Path {
        Path::new(P)
    }

    /// A cut-down shipped configuration, with its quirks: no spaces around `=`
    /// and a trailing space after the mode, a trailing space inside
    /// kernel_params, comments everywhere, commented-out keys.
    const SHIPPED: &str = r#"# Copyright (c) 2017-2019 Intel Corporation
#
# XXX: Type: qemu

[hypervisor.qemu]
path = "/opt/confidential-containers/bin/qemu-system-x86_64"
confidential_guest = true

# Enable pre-attestation for AMD SEV and SEV-ES guests.
guest_pre_attestation = true

#guest_pre_attestation = false
guest_pre_attestation_kbs_uri = "localhost:44444"

# The simple-kbs can be run in "online" and "offline" modes
guest_pre_attestation_kbs_mode="online" 

kernel_params = "agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=false "

# Path to the firmware.
firmware = "/opt/confidential-containers/share/ovmf/AMDSEV.fd"

[agent.kata]
# enable_debug = true
enable_debug = false
"#;

    fn on(uri: &str, mode: Option<KbsMode>) -> PreAttestation {
        PreAttestation::On {
            kbs_uri: uri.to_string(),
            mode,
        }
    }

    /// Lines of `a` and `b` that differ (1-based), for equal line counts.
    fn changed_lines(a: &str, b: &str) -> Vec<usize> {
        assert_eq!(a.lines().count(), b.lines().count(), "{b}");
        a.lines()
            .zip(b.lines())
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, _)| i + 1)
            .collect()
    }

    #[test]
    fn pre_attestation_on_replaces_only_the_uri() {
        let e = set_guest_pre_attestation(path(), SHIPPED, &on("10.0.0.5:44444", None)).unwrap();
        assert!(e.changed);
        assert_eq!(changed_lines(SHIPPED, &e.text), vec![13]);
        assert!(e
            .text
            .contains("\nguest_pre_attestation_kbs_uri = \"10.0.0.5:44444\"\n"));
        assert!(e.text.contains("\n#guest_pre_attestation = false\n"));
        assert_eq!(
            e.changes,
            vec![Change {
                key: "hypervisor.qemu.guest_pre_attestation_kbs_uri".into(),
                line: Some(13),
                old: Some("\"localhost:44444\"".into()),
                new: "\"10.0.0.5:44444\"".into(),
            }]
        );
        assert_eq!(
            e.changes[0].to_string(),
            "hypervisor.qemu.guest_pre_attestation_kbs_uri (line 13): \"localhost:44444\" -> \"10.0.0.5:44444\""
        );
    }

    #[test]
    fn mode_keeps_its_decor() {
        let e = set_guest_pre_attestation(
            path(),
            SHIPPED,
            &on("localhost:44444", Some(KbsMode::Offline)),
        )
        .unwrap();
        assert_eq!(changed_lines(SHIPPED, &e.text), vec![16]);
        assert!(e
            .text
            .contains("\nguest_pre_attestation_kbs_mode=\"offline\" \n"));
    }

    #[test]
    fn second_run_changes_nothing() {
        let s = on("10.0.0.5:44444", Some(KbsMode::Online));
        let first = set_guest_pre_attestation(path(), SHIPPED, &s).unwrap();
        let second = set_guest_pre_attestation(path(), &first.text, &s).unwrap();
        assert!(!second.changed);
        assert!(second.changes.is_empty());
        assert_eq!(second.text, first.text);
    }

    #[test]
    fn off_sets_only_the_flag() {
        let e = set_guest_pre_attestation(path(), SHIPPED, &PreAttestation::Off).unwrap();
        assert_eq!(changed_lines(SHIPPED, &e.text), vec![10]);
        assert!(e.text.contains("\nguest_pre_attestation = false\n"));
        assert!(e.text.contains("\"localhost:44444\""));
        assert_eq!(e.changes.len(), 1);
        assert_eq!(e.changes[0].old.as_deref(), Some("true"));
        assert_eq!(e.changes[0].new, "false");
    }

    #[test]
    fn off_without_the_key_is_already_off() {
        let text = "[hypervisor.qemu]\npath = \"/q\"\n";
        let e = set_guest_pre_attestation(path(), text, &PreAttestation::Off).unwrap();
        assert!(!e.changed);
        assert_eq!(e.text, text);
    }

    #[test]
    fn missing_keys_are_added_at_the_end_of_the_table() {
        let text = "# top\n[hypervisor.qemu]\npath = \"/q\" # the binary\n\n# about the agent\n[agent.kata]\nenable_debug = false\n";
        let e = set_guest_pre_attestation(path(), text, &on("[fd00::5]:44444", None)).unwrap();
        assert_eq!(
            e.text,
            "# top\n[hypervisor.qemu]\npath = \"/q\" # the binary\nguest_pre_attestation = true\nguest_pre_attestation_kbs_uri = \"[fd00::5]:44444\"\nguest_pre_attestation_kbs_mode = \"online\"\n\n# about the agent\n[agent.kata]\nenable_debug = false\n"
        );
        let lines: Vec<_> = e.changes.iter().map(|c| (c.line, c.old.clone())).collect();
        assert_eq!(
            lines,
            vec![(Some(4), None), (Some(5), None), (Some(6), None)]
        );
        assert_eq!(
            e.changes[2].to_string(),
            "hypervisor.qemu.guest_pre_attestation_kbs_mode (line 6): added \"online\""
        );
    }

    #[test]
    fn empty_mode_becomes_online_and_bad_mode_is_refused() {
        let text = "[hypervisor.qemu]\nguest_pre_attestation_kbs_mode = \"\"\n";
        let e = set_guest_pre_attestation(path(), text, &on("kbs.example:44444", None)).unwrap();
        assert!(e
            .text
            .contains("guest_pre_attestation_kbs_mode = \"online\"\n"));

        let text = "[hypervisor.qemu]\nguest_pre_attestation_kbs_mode = \"Online\"\n";
        let err =
            set_guest_pre_attestation(path(), text, &on("kbs.example:44444", None)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("--mode"), "{msg}");
        // An explicit mode replaces it.
        let e = set_guest_pre_attestation(
            path(),
            text,
            &on("kbs.example:44444", Some(KbsMode::Online)),
        )
        .unwrap();
        assert!(e.text.contains("kbs_mode = \"online\"\n"));
    }

    #[test]
    fn wrong_types_are_errors_naming_file_line_and_key() {
        let text = "[hypervisor.qemu]\n\nguest_pre_attestation = \"yes\"\n";
        let err = set_guest_pre_attestation(path(), text, &PreAttestation::Off).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("file {P} line 3 key hypervisor.qemu.guest_pre_attestation: expected a boolean, found string")
        );
        let text = "[hypervisor.qemu]\nkernel_params = [\"a\"]\n";
        let err = set_signature_verification(path(), text, true).unwrap_err();
        assert!(
            matches!(err, KataEditError::WrongType { line: Some(2), .. }),
            "{err}"
        );
        let text = "[hypervisor.qemu]\n[hypervisor.qemu.guest_pre_attestation_kbs_uri]\n";
        let err = set_guest_pre_attestation(path(), text, &on("a:1", None)).unwrap_err();
        assert!(
            matches!(err, KataEditError::WrongType { found: "table", .. }),
            "{err}"
        );
    }

    #[test]
    fn no_qemu_table_is_an_error() {
        let text = "[hypervisor.clh]\npath = \"/c\"\n";
        let err = set_signature_verification(path(), text, true).unwrap_err();
        assert_eq!(
            err,
            KataEditError::NoQemuTable {
                path: path().into()
            }
        );
        assert!(err.to_string().contains("[hypervisor.qemu]"));
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let text = "[hypervisor.qemu]\npath = \"/q\"\nkernel_params = \n";
        let err = set_signature_verification(path(), text, true).unwrap_err();
        match &err {
            KataEditError::Syntax { line, .. } => assert_eq!(*line, 3),
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with(&format!("file {P} line 3 column")),
            "{err}"
        );
    }

    #[test]
    fn signature_token_is_replaced_in_place() {
        let e = set_signature_verification(path(), SHIPPED, true).unwrap();
        assert_eq!(changed_lines(SHIPPED, &e.text), vec![18]);
        assert!(e.text.contains("\nkernel_params = \"agent.config_file=/etc/agent-config.toml agent.enable_signature_verification=true \"\n"));
        assert_eq!(
            e.changes[0].to_string(),
            "hypervisor.qemu.kernel_params (line 18): agent.enable_signature_verification=false -> agent.enable_signature_verification=true"
        );
        let again = set_signature_verification(path(), &e.text, true).unwrap();
        assert!(!again.changed);
        let off = set_signature_verification(path(), &e.text, false).unwrap();
        assert_eq!(off.text, SHIPPED);
    }

    #[test]
    fn signature_token_is_appended_or_added() {
        let text = "[hypervisor.qemu]\nkernel_params = 'a=1  b '  # keep\n";
        let e = set_signature_verification(path(), text, false).unwrap();
        assert_eq!(
            e.text,
            "[hypervisor.qemu]\nkernel_params = 'a=1  b agent.enable_signature_verification=false '  # keep\n"
        );
        assert_eq!(e.changes[0].old, None);

        let text = "[hypervisor.qemu]\nkernel_params = \"\"\n";
        let e = set_signature_verification(path(), text, true).unwrap();
        assert!(e
            .text
            .contains("kernel_params = \"agent.enable_signature_verification=true\"\n"));

        let text = "[hypervisor.qemu]\npath = \"/q\"\n\n[agent.kata]\n";
        let e = set_signature_verification(path(), text, true).unwrap();
        assert_eq!(
            e.text,
            "[hypervisor.qemu]\npath = \"/q\"\nkernel_params = \"agent.enable_signature_verification=true\"\n\n[agent.kata]\n"
        );
        assert_eq!(
            e.changes[0].to_string(),
            "hypervisor.qemu.kernel_params (line 3): added \"agent.enable_signature_verification=true\""
        );
    }

    #[test]
    fn every_occurrence_of_the_token_is_set() {
        let p = set_param_token(
            "agent.enable_signature_verification=false\tx=1 agent.enable_signature_verification  agent.enable_signature_verification_x=1",
            true,
        );
        assert_eq!(
            p.params,
            "agent.enable_signature_verification=true\tx=1 agent.enable_signature_verification=true  agent.enable_signature_verification_x=1"
        );
        assert_eq!(p.old_tokens.len(), 2);
        assert_eq!(
            set_param_token("  ", true).params,
            "agent.enable_signature_verification=true  "
        );
    }

    #[test]
    fn escapes_in_kernel_params_are_kept() {
        let text = "[hypervisor.qemu]\nkernel_params = \"a=\\\"q\\\" agent.enable_signature_verification=false\"\n";
        let e = set_signature_verification(path(), text, true).unwrap();
        assert_eq!(
            e.text,
            "[hypervisor.qemu]\nkernel_params = \"a=\\\"q\\\" agent.enable_signature_verification=true\"\n"
        );
        // An escaped separator: the raw edit would disagree, so a fresh string is written.
        let text = "[hypervisor.qemu]\nkernel_params = \"a\\tagent.enable_signature_verification=false\"\n";
        let e = set_signature_verification(path(), text, true).unwrap();
        let doc: DocumentMut = e.text.parse().unwrap();
        let v = doc
            .get("hypervisor")
            .and_then(|h| h.get("qemu"))
            .and_then(|q| q.get("kernel_params"))
            .and_then(|k| k.as_str())
            .unwrap()
            .to_string();
        assert_eq!(v, "a\tagent.enable_signature_verification=true");
    }

    #[test]
    fn layout_quirks_are_kept() {
        let text = "\u{feff}[hypervisor.qemu]\r\n# c\r\nguest_pre_attestation = false\r\nx = 1";
        let e = set_guest_pre_attestation(path(), text, &on("10.0.0.5:44444", None)).unwrap();
        assert_eq!(
            e.text,
            "\u{feff}[hypervisor.qemu]\r\n# c\r\nguest_pre_attestation = true\r\nx = 1\r\nguest_pre_attestation_kbs_uri = \"10.0.0.5:44444\"\r\nguest_pre_attestation_kbs_mode = \"online\""
        );
        let e = set_guest_pre_attestation(path(), "[hypervisor.qemu]\na = 1", &PreAttestation::Off)
            .unwrap();
        assert_eq!(e.text, "[hypervisor.qemu]\na = 1");
    }

    #[test]
    fn mixed_line_endings_are_refused() {
        let text = "[hypervisor.qemu]\na = 1\r\nguest_pre_attestation = false\n";
        let err = set_guest_pre_attestation(path(), text, &on("10.0.0.5:1", None)).unwrap_err();
        assert!(
            matches!(err, KataEditError::NotLossless { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn dotted_and_inline_tables_work() {
        let text = "hypervisor.qemu.guest_pre_attestation = false\n";
        let e = set_guest_pre_attestation(path(), text, &on("10.0.0.5:1", None)).unwrap();
        assert!(e
            .text
            .starts_with("hypervisor.qemu.guest_pre_attestation = true\n"));
        let text = "[hypervisor]\nqemu = { kernel_params = \"\" }\n";
        let e = set_signature_verification(path(), text, true).unwrap();
        assert_eq!(
            e.text,
            "[hypervisor]\nqemu = { kernel_params = \"agent.enable_signature_verification=true\" }\n"
        );
    }

    #[test]
    fn bad_uri_is_refused_before_editing() {
        let err =
            set_guest_pre_attestation(path(), "not toml [", &on("http://x:1", None)).unwrap_err();
        assert!(matches!(err, KataEditError::KbsUri(_)), "{err}");
    }

    #[test]
    fn kbs_uri_validation() {
        for good in [
            "10.0.0.5:44444",
            "[fd00::5]:44444",
            "kbs.example.com:1",
            "localhost:65535",
        ] {
            assert!(validate_kbs_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "10.0.0.5",
            "10.0.0.5:",
            "10.0.0.5:0",
            "10.0.0.5:65536",
            "10.0.0.5:4a",
            ":44444",
            "fd00::5:44444",
            "[fd00::5]44444",
            "[fd00::zz]:1",
            "http://10.0.0.5:44444",
            "10.0.0.256:1",
            "-bad.example:1",
            "a b:1",
            "kbs/x:1",
        ] {
            assert!(validate_kbs_uri(bad).is_err(), "{bad}");
        }
        let e = validate_kbs_uri("[::1]:44444").unwrap();
        assert!(e.host.is_loopback());
        assert_eq!(e.port, 44444);
        assert!(validate_kbs_uri("localhost:1").unwrap().host.is_loopback());
        assert!(!validate_kbs_uri("10.0.0.5:1").unwrap().host.is_loopback());
        let msg = validate_kbs_uri("10.0.0.5").unwrap_err().to_string();
        assert!(msg.contains("HOST:PORT"), "{msg}");
    }

    #[test]
    fn sev_pre_attestation_configs() {
        assert!(is_sev_pre_attestation_config(path(), SHIPPED).unwrap());
        let snp = "[hypervisor.qemu]\nconfidential_guest = true\nsev_snp_guest = true\n";
        assert!(!is_sev_pre_attestation_config(path(), snp).unwrap());
        let plain = "[hypervisor.qemu]\nconfidential_guest = false\n";
        assert!(!is_sev_pre_attestation_config(path(), plain).unwrap());
        assert!(!is_sev_pre_attestation_config(path(), "[hypervisor.clh]\n").unwrap());
        let bad = "[hypervisor.qemu]\nconfidential_guest = 1\n";
        let err = is_sev_pre_attestation_config(path(), bad).unwrap_err();
        assert!(
            matches!(err, KataEditError::WrongType { line: Some(2), .. }),
            "{err}"
        );
    }
}
