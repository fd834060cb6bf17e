//! Kernel parameter tokens as Kata handles them: its `DeserializeParams` /
//! `SerializeParams` round trip, and `strings.Fields` splitting. Every Kata
//! release modelled here treats tokens the same way; the releases differ in
//! which tokens they write and in what order, not in how one token is spelled.

/// Why Kata rejects a kernel parameter token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamError {
    /// `=value`: Kata's `AddKernelParam` refuses an empty key.
    EmptyKey,
}

/// One whitespace-free token after Kata's `DeserializeParams` / `SerializeParams`
/// round trip: split at the first `=`; an empty value drops the `=`.
pub(crate) fn kata_param(token: &str) -> Result<String, ParamError> {
    match token.split_once('=') {
        None => Ok(token.to_string()),
        Some(("", _)) => Err(ParamError::EmptyKey),
        Some((key, "")) => Ok(key.to_string()),
        Some(_) => Ok(token.to_string()),
    }
}

/// Splits a parameter string the way Kata does (`strings.Fields`), dropping
/// tokens Kata would refuse (callers that must fail on them check first).
pub(crate) fn split_params(params: &str) -> impl Iterator<Item = String> + '_ {
    params.split_whitespace().filter_map(|t| kata_param(t).ok())
}

/// `KernelParamFields` of the upstream runtime (3.19 on): splits on ASCII
/// spaces that are not inside double quotes, trims each piece of surrounding
/// whitespace and drops empty ones. The quotes stay in the token, so a
/// `dm-mod.create="..."` value with spaces is one parameter. (The CC builds split
/// the file's `kernel_params` with `strings.Fields` instead.)
pub(crate) fn kernel_param_fields(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quote = false;
    for (i, c) in s.char_indices() {
        if c == '"' {
            in_quote = !in_quote;
        } else if c == ' ' && !in_quote {
            let piece = s.get(start..i).unwrap_or("").trim();
            if !piece.is_empty() {
                out.push(piece.to_string());
            }
            start = i + 1;
        }
    }
    let piece = s.get(start..).unwrap_or("").trim();
    if !piece.is_empty() {
        out.push(piece.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_param_round_trip() {
        assert_eq!(kata_param("quiet"), Ok("quiet".to_string()));
        assert_eq!(kata_param("a=b"), Ok("a=b".to_string()));
        assert_eq!(kata_param("a=b=c"), Ok("a=b=c".to_string()));
        assert_eq!(kata_param("key="), Ok("key".to_string()));
        assert_eq!(kata_param("=x"), Err(ParamError::EmptyKey));
        assert_eq!(kata_param("="), Err(ParamError::EmptyKey));
    }

    #[test]
    fn fields_keep_quoted_spaces_and_tabs_inside_tokens() {
        assert_eq!(
            kernel_param_fields("  a=1 dm=\"x y\"  b\tc \n"),
            ["a=1", "dm=\"x y\"", "b\tc"]
        );
        assert!(kernel_param_fields(" \t ").is_empty());
        // An unterminated quote runs to the end.
        assert_eq!(kernel_param_fields("a \"b c"), ["a", "\"b c"]);
    }
}
