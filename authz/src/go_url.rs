//! The parts of Go's `net/url` package that OPA-Envoy's request input and OPA's `urlquery`
//! builtins show through their output: %-unescaping and query parsing, with Go's errors.

use std::borrow::Cow;
use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use regorus::Value;

/// Go's `url.PathUnescape` (`plus_is_space` false) or `url.QueryUnescape` (true): a `%` must
/// start a two-digit hex escape.
pub(crate) fn unescape(text: &str, plus_is_space: bool) -> Result<Cow<'_, str>, String> {
    check_escapes(text)?;
    if plus_is_space && text.contains('+') {
        let spaced = text.replace('+', " ");
        return Ok(Cow::Owned(
            percent_decode_str(&spaced).decode_utf8_lossy().into_owned(),
        ));
    }
    Ok(percent_decode_str(text).decode_utf8_lossy())
}

/// The error [`unescape`] gives for `text`, if any: a `%` not followed by two hex digits.
fn check_escapes(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let valid = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !valid {
                let escape: String = text[i..].chars().take(3).collect();
                return Err(format!("invalid URL escape {escape:?}"));
            }
        }
    }
    Ok(())
}

/// `a=1&a=2&b` becomes `{"a": ["1", "2"], "b": [""]}`, as Go's `url.ParseQuery` does; where it
/// reports an error (a `;` separator, a bad %-escape), so does this.
pub(crate) fn parsed_query(query: &str) -> Result<Value, String> {
    let mut grouped: BTreeMap<Value, Vec<Value>> = BTreeMap::new();
    for pair in query_pairs(query) {
        let (name, value) = pair?;
        let name = unescape(name, true)?;
        let value = unescape(value, true)?;
        grouped
            .entry(Value::from(name.as_ref()))
            .or_default()
            .push(Value::from(value.as_ref()));
    }
    Ok(Value::from(
        grouped
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    ))
}

/// The error [`parsed_query`] gives for `query`, if any, without building it: for a bundle
/// that cannot observe `parsed_query`, whose requests still fail on a query that does not
/// parse.
pub(crate) fn check_query(query: &str) -> Result<(), String> {
    for pair in query_pairs(query) {
        let (name, value) = pair?;
        check_escapes(name)?;
        check_escapes(value)?;
    }
    Ok(())
}

/// The `name=value` pairs of a query, empty ones skipped; a pair holding `;` is an error.
fn query_pairs(query: &str) -> impl Iterator<Item = Result<(&str, &str), String>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            if pair.contains(';') {
                return Err("invalid semicolon separator in query".to_string());
            }
            Ok(pair.split_once('=').unwrap_or((pair, "")))
        })
}
