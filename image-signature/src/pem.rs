//! PEM armour (RFC 7468), read as leniently as Go's `encoding/pem` reads it,
//! because cosign's key files are written by Go: text before the first block is
//! skipped, lines may be of any width and end in CRLF. Headers inside the block
//! (the RFC 1421 `Proc-Type:` kind) are refused: no cosign key has them.

use base64::Engine as _;
use thiserror::Error;

/// Why a PEM block could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PemError {
    /// No `-----BEGIN ...-----` line at all.
    #[error("not PEM: no \"-----BEGIN ...-----\" line")]
    NoBegin,
    /// The block is not closed by its `-----END ...-----` line.
    #[error("PEM block \"{label}\" has no \"-----END {label}-----\" line")]
    NoEnd {
        /// The label of the opening line.
        label: String,
    },
    /// The block has RFC 1421 headers.
    #[error("PEM block \"{label}\" has headers (\"{line}\"), which keys never have")]
    Headers {
        /// The label of the block.
        label: String,
        /// The offending line.
        line: String,
    },
    /// The body is not standard padded base64.
    #[error("PEM block \"{label}\": body is not valid base64: {reason}")]
    Base64 {
        /// The label of the block.
        label: String,
        /// What the decoder said.
        reason: String,
    },
}

/// One decoded PEM block.
#[derive(Debug)]
pub struct PemBlock {
    /// The label, such as `PUBLIC KEY`.
    pub label: String,
    /// The decoded body.
    pub body: Vec<u8>,
}

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";
const DASHES: &str = "-----";

/// Decodes the first PEM block of `text`.
pub fn decode_first(text: &str) -> Result<PemBlock, PemError> {
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let line = lines.next().ok_or(PemError::NoBegin)?;
        if let Some(label) = line
            .strip_prefix(BEGIN)
            .and_then(|rest| rest.strip_suffix(DASHES))
        {
            break label.to_string();
        }
    };
    let mut body = String::new();
    let mut closed = false;
    for line in lines {
        if let Some(end) = line.strip_prefix(END).and_then(|r| r.strip_suffix(DASHES)) {
            if end != label {
                return Err(PemError::NoEnd { label });
            }
            closed = true;
            break;
        }
        if line.contains(':') {
            return Err(PemError::Headers {
                label,
                line: line.chars().take(80).collect(),
            });
        }
        body.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
    }
    if !closed {
        return Err(PemError::NoEnd { label });
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| PemError::Base64 {
            label: label.clone(),
            reason: e.to_string(),
        })?;
    Ok(PemBlock { label, body })
}

/// Encodes `body` as a PEM block with 64-column lines and a final newline, the
/// layout Go's `pem.EncodeToMemory` writes.
pub fn encode(label: &str, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(BEGIN);
    out.push_str(label);
    out.push_str(DASHES);
    out.push('\n');
    // base64 output is ASCII, so splitting at byte offsets stays on characters.
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(END);
    out.push_str(label);
    out.push_str(DASHES);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_line_width() {
        let body: Vec<u8> = (0..=255u8).collect();
        let text = encode("TEST BLOCK", &body);
        assert!(text
            .lines()
            .all(|l| l.len() <= 64 || l.starts_with("-----")));
        let b = decode_first(&text).unwrap();
        assert_eq!(b.label, "TEST BLOCK");
        assert_eq!(b.body, body);
        let b = decode_first("").map(|_| ());
        assert_eq!(b, Err(PemError::NoBegin));
    }

    #[test]
    fn lenient_like_go() {
        let text =
            "leading junk\r\n-----BEGIN X-----\r\nAAEC\r\nAw==\r\n-----END X-----\r\ntrailer";
        let b = decode_first(text).unwrap();
        assert_eq!(b.body, vec![0, 1, 2, 3]);
    }

    #[test]
    fn malformed_blocks_are_named() {
        assert!(matches!(
            decode_first("-----BEGIN X-----\nAAAA\n"),
            Err(PemError::NoEnd { label }) if label == "X"
        ));
        assert!(matches!(
            decode_first("-----BEGIN X-----\nAAAA\n-----END Y-----\n"),
            Err(PemError::NoEnd { .. })
        ));
        assert!(matches!(
            decode_first("-----BEGIN X-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END X-----\n"),
            Err(PemError::Headers { .. })
        ));
        let e = decode_first("-----BEGIN X-----\n!!!!\n-----END X-----\n").unwrap_err();
        assert!(e.to_string().contains("not valid base64"), "{e}");
    }
}
