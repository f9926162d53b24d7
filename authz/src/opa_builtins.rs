//! Builtins Vigil evaluates itself, the way OPA does, where regorus's own give other results.
//!
//! The differential suite (`authz/tests/opa_oracle.rs`) found regorus's `sprintf`, `upper`,
//! `to_number`, `net.cidr_contains`, `urlquery.*` and a few more to differ from OPA's on some
//! arguments. Refusing them would keep most OPA-Envoy policies off Vigil, so Vigil carries its
//! own versions, written after OPA's Go code (`topdown/strings.go`, `casts.go`, `cidr.go`,
//! `encoding.go`, `time.go`, `semver.go`) and Go's `fmt`, `strconv`, `net`, `net/url` and
//! `time` packages, and the suite checks each one against OPA on edge cases.
//!
//! A policy calls them unchanged, under the builtin's own name. regorus's tree interpreter gets
//! them as extensions, which it looks up before its builtins ([`register`]). The RVM compiler
//! gets them as host-await builtins, which it also prefers to its own: the VM stops at each call
//! and Vigil answers it with [`call`] (`bundle.rs`, `engine.rs`). Where OPA's builtin fails, the
//! result is undefined, as in OPA outside strict mode; with `strict` (the suite's check that
//! Vigil fails where OPA does) it is an error.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use regorus::{Engine, Value};

use crate::go_net::{ip_string, parse_cidr, parse_ip};
use crate::go_unicode::{NOT_PRINTABLE, TO_LOWER, TO_UPPER};
use crate::go_url::{parsed_query, unescape};
use crate::outcome::{string_operand, Outcome, ABORTS};
use crate::{cidr_merge, digests, tokens};

/// The builtins evaluated here, with their number of arguments.
pub(crate) const REPLACED: &[(&str, u8)] = &[
    ("sprintf", 2),
    ("upper", 1),
    ("lower", 1),
    ("to_number", 1),
    ("net.cidr_contains", 2),
    ("format_int", 2),
    ("ceil", 1),
    ("indexof", 2),
    ("strings.count", 2),
    ("urlquery.encode", 1),
    ("urlquery.encode_object", 1),
    ("urlquery.decode", 1),
    ("urlquery.decode_object", 1),
    ("time.parse_rfc3339_ns", 1),
    ("semver.is_valid", 1),
    ("regex.split", 2),
    ("numbers.range_step", 3),
    ("glob.quote_meta", 1),
    ("time.parse_duration_ns", 1),
    ("time.add_date", 4),
    ("json.filter", 2),
    ("regex.template_match", 4),
    ("indexof_n", 2),
    ("substring", 3),
    ("array.slice", 3),
    ("base64.decode", 1),
    ("semver.compare", 2),
    ("net.cidr_expand", 1),
    ("base64.is_valid", 1),
    ("floor", 1),
    ("strings.replace_n", 2),
];

/// OPA builtins regorus lacks, evaluated here (besides `tokens.rs` and `digests.rs`).
const ADDED: &[(&str, u8)] = &[("net.cidr_merge", 1)];

/// Every builtin Vigil evaluates itself: those of [`REPLACED`], which regorus also has, and
/// OPA's JWT and crypto builtins (`tokens.rs`, `digests.rs`), which it lacks.
pub(crate) fn vigil_builtins() -> impl Iterator<Item = (&'static str, u8)> {
    REPLACED
        .iter()
        .chain(tokens::NAMES)
        .chain(digests::NAMES)
        .chain(ADDED)
        .copied()
}

/// Registers every builtin of [`vigil_builtins`] on `engine`, replacing regorus's.
pub(crate) fn register(engine: &mut Engine, strict: bool) {
    for (name, nargs) in vigil_builtins() {
        let run = move |args: Vec<Value>| -> anyhow::Result<Value> {
            settle(name, &args, strict).map_err(anyhow::Error::msg)
        };
        // Registration fails only for a name registered twice, which REPLACED does not hold.
        if let Err(e) = engine.add_extension(name.to_string(), nargs, Box::new(run)) {
            tracing::error!(builtin = name, error = %e, "could not register builtin");
        }
    }
}

/// One call of a builtin of [`vigil_builtins`], as the VM hands it over: undefined where OPA's
/// builtin fails (outside strict mode), an error where OPA's evaluation itself fails.
pub(crate) fn call(name: &str, args: &[Value]) -> Result<Value, String> {
    settle(name, args, false)
}

/// A call's outcome as the evaluation sees it: a failed builtin is undefined, unless in
/// strict mode or the failure ends OPA's whole evaluation.
fn settle(name: &str, args: &[Value], strict: bool) -> Result<Value, String> {
    match evaluate(name, args) {
        Ok(value) => Ok(value),
        Err(message) if strict || message.starts_with(ABORTS) => Err(format!("{name}: {message}")),
        Err(_) => Ok(Value::Undefined),
    }
}

fn evaluate(name: &str, args: &[Value]) -> Outcome {
    let arg = |i: usize| args.get(i).unwrap_or(&Value::Undefined);
    match name {
        "sprintf" => sprintf(arg(0), arg(1)),
        "upper" => map_chars(arg(0), TO_UPPER),
        "lower" => map_chars(arg(0), TO_LOWER),
        "to_number" => to_number(arg(0)),
        "net.cidr_contains" => cidr_contains(arg(0), arg(1)),
        "format_int" => format_int(arg(0), arg(1)),
        "ceil" => ceil(arg(0)),
        "indexof" => indexof(arg(0), arg(1)),
        "strings.count" => strings_count(arg(0), arg(1)),
        "urlquery.encode" => Ok(Value::from(query_escape(string_operand(arg(0), 1)?))),
        "urlquery.encode_object" => encode_object(arg(0)),
        "urlquery.decode" => {
            unescape(string_operand(arg(0), 1)?, true).map(|s| Value::from(s.as_ref()))
        }
        "urlquery.decode_object" => parsed_query(string_operand(arg(0), 1)?),
        "time.parse_rfc3339_ns" => parse_rfc3339_ns(string_operand(arg(0), 1)?),
        "regex.split" => regex_split(arg(0), arg(1)),
        "numbers.range_step" => range_step(arg(0), arg(1), arg(2)),
        "glob.quote_meta" => Ok(Value::from(glob_quote_meta(string_operand(arg(0), 1)?))),
        "time.parse_duration_ns" => parse_duration_ns(string_operand(arg(0), 1)?),
        "time.add_date" => add_date(arg(0), arg(1), arg(2), arg(3)),
        "json.filter" => json_filter(arg(0), arg(1)),
        "indexof_n" => indexof_n(arg(0), arg(1)),
        "substring" => substring(arg(0), arg(1), arg(2)),
        "array.slice" => array_slice(arg(0), arg(1), arg(2)),
        "base64.decode" => base64_decode(string_operand(arg(0), 1)?),
        "semver.compare" => semver_compare(arg(0), arg(1)),
        "net.cidr_expand" => cidr_expand(string_operand(arg(0), 1)?),
        "base64.is_valid" => Ok(Value::from(
            arg(0).as_string().is_ok_and(|s| base64_decode(s).is_ok()),
        )),
        "floor" => floor(arg(0)),
        "net.cidr_merge" => cidr_merge::cidr_merge(arg(0)),
        "strings.replace_n" => replace_n(arg(0), arg(1)),
        "regex.template_match" => template_match(
            string_operand(arg(0), 1)?,
            string_operand(arg(1), 2)?,
            string_operand(arg(2), 3)?,
            string_operand(arg(3), 4)?,
        ),
        "semver.is_valid" => Ok(Value::from(
            arg(0).as_string().is_ok_and(|s| semver_is_valid(s)),
        )),
        other => tokens::evaluate(other, args)
            .or_else(|| digests::evaluate(other, args))
            .unwrap_or_else(|| Err(format!("{other} is not evaluated by Vigil"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Strings

/// Go's `strings.ToUpper`/`ToLower`: each character mapped on its own (no special casing).
fn map_chars(value: &Value, table: &[(u32, u32)]) -> Outcome {
    let s = string_operand(value, 1)?;
    Ok(Value::from(
        s.chars()
            .map(
                |c| match table.binary_search_by_key(&u32::from(c), |&(from, _)| from) {
                    Ok(i) => char::from_u32(table[i].1).unwrap_or(c),
                    Err(_) => c,
                },
            )
            .collect::<String>(),
    ))
}

/// OPA's `indexof`: the index in characters of the first match; an empty search string fails.
fn indexof(base: &Value, search: &Value) -> Outcome {
    let base = string_operand(base, 1)?;
    let search = string_operand(search, 2)?;
    if search.is_empty() {
        return Err("empty search character".into());
    }
    let index = match base.find(search) {
        Some(byte) => base[..byte].chars().count() as i64,
        None => -1,
    };
    Ok(Value::from(index))
}

/// OPA's `strings.replace_n`: Go's `strings.NewReplacer` over the pairs sorted by key: one pass,
/// at each position the first key (in that order) that starts there wins, an empty key matches
/// between characters.
fn replace_n(patterns: &Value, text: &Value) -> Outcome {
    let fields = patterns
        .as_object()
        .map_err(|_| "operand 1 must be object".to_string())?;
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for (k, v) in fields.iter_sorted() {
        let k = k
            .as_string()
            .map_err(|_| "non-string key found in pattern object".to_string())?;
        let v = v
            .as_string()
            .map_err(|_| "non-string value found in pattern object".to_string())?;
        pairs.push((k.as_ref(), v.as_ref()));
    }
    let s = string_operand(text, 2)?.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let (mut i, mut previous_empty) = (0, false);
    while i <= s.len() {
        let found = pairs.iter().find(|(old, _)| {
            !(old.is_empty() && previous_empty) && s[i..].starts_with(old.as_bytes())
        });
        match found {
            Some((old, new)) => {
                out.extend_from_slice(new.as_bytes());
                previous_empty = old.is_empty();
                i += old.len();
            }
            None => {
                previous_empty = false;
                match s.get(i) {
                    Some(b) => out.push(*b),
                    None => break,
                }
                i += 1;
            }
        }
    }
    Ok(Value::from(String::from_utf8_lossy(&out).into_owned()))
}

/// OPA's `indexof_n`: the character index of every match, overlapping ones included; an empty
/// search string fails.
fn indexof_n(base: &Value, search: &Value) -> Outcome {
    let base: Vec<char> = string_operand(base, 1)?.chars().collect();
    let search: Vec<char> = string_operand(search, 2)?.chars().collect();
    if search.is_empty() {
        return Err("empty search character".into());
    }
    let found: Vec<Value> = (0..base.len())
        .filter(|&i| base[i..].starts_with(&search))
        .map(|i| Value::from(i as u64))
        .collect();
    Ok(Value::from(found))
}

/// An integer operand: OPA refuses a number with a fractional part.
fn int_operand(value: &Value, position: usize) -> Result<i64, String> {
    match go_number(value) {
        Some(GoNumber::Int(i)) => Ok(i),
        _ => Err(format!("operand {position} must be integer number")),
    }
}

/// OPA's `substring`: `length` characters from `start` (all the rest when negative); a negative
/// start fails.
fn substring(base: &Value, start: &Value, length: &Value) -> Outcome {
    let base = string_operand(base, 1)?;
    let start = int_operand(start, 2)?;
    let length = int_operand(length, 3)?;
    if start < 0 {
        return Err("negative offset".into());
    }
    let chars = base
        .chars()
        .skip(usize::try_from(start).unwrap_or(usize::MAX));
    let out: String = match usize::try_from(length) {
        Ok(n) => chars.take(n).collect(),
        Err(_) => chars.collect(),
    };
    Ok(Value::from(out))
}

/// OPA's `array.slice`: elements from `start` (at least 0) up to `stop` (at most the length).
fn array_slice(array: &Value, start: &Value, stop: &Value) -> Outcome {
    let items = match array {
        Value::Array(items) => items.to_vec(),
        _ => return Err("operand 1 must be array".into()),
    };
    let start = int_operand(start, 2)?.max(0);
    let stop = int_operand(stop, 3)?.min(items.len() as i64);
    if start >= stop {
        return Ok(Value::from(Vec::<Value>::new()));
    }
    Ok(Value::from(items[start as usize..stop as usize].to_vec()))
}

/// Go's `base64.StdEncoding.DecodeString`: line breaks ignored, padding required, unused
/// trailing bits ignored; the bytes read as UTF-8 (invalid sequences as U+FFFD, as OPA prints
/// them).
fn base64_decode(text: &str) -> Outcome {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bad = || "illegal base64 data".to_string();
    let data: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    if !data.len().is_multiple_of(4) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3);
    let quanta = data.len() / 4;
    for (q, chunk) in data.chunks(4).enumerate() {
        let padding = chunk.iter().rev().take_while(|b| **b == b'=').count();
        if padding > 2 || (padding > 0 && q + 1 != quanta) {
            return Err(bad());
        }
        let mut bits: u32 = 0;
        for &b in &chunk[..4 - padding] {
            let v = ALPHABET.iter().position(|a| *a == b).ok_or_else(bad)?;
            bits = bits << 6 | v as u32;
        }
        bits <<= 6 * padding as u32;
        let bytes = [(bits >> 16) as u8, (bits >> 8) as u8, bits as u8];
        out.extend_from_slice(&bytes[..3 - padding]);
    }
    Ok(Value::from(String::from_utf8_lossy(&out).into_owned()))
}

/// Go's `strings.Count`: non-overlapping matches; an empty substring counts characters + 1.
fn strings_count(base: &Value, search: &Value) -> Outcome {
    let base = string_operand(base, 1)?;
    let search = string_operand(search, 2)?;
    let count = if search.is_empty() {
        base.chars().count() + 1
    } else {
        base.matches(search).count()
    };
    Ok(Value::from(count as u64))
}

/// Largest compiled program a pattern may make, as regorus's own `regex.*` builtins allow:
/// a pattern from a request cannot make the proxy build an enormous automaton.
const REGEX_SIZE_LIMIT: usize = 100 * 1024;

/// Patterns compiled recently on this thread, so a policy's patterns are compiled once
/// and not on every evaluation. Bounded: cleared when it fills.
const REGEX_CACHE_ENTRIES: usize = 256;

thread_local! {
    static REGEX_CACHE: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `pattern` (already in Rust's syntax) compiled, from the cache when it was seen before.
fn compiled(pattern: &str) -> Result<regex::Regex, String> {
    if let Some(re) = REGEX_CACHE.with(|c| c.borrow().get(pattern).cloned()) {
        return Ok(re);
    }
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("error parsing regexp: {e}"))?;
    REGEX_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= REGEX_CACHE_ENTRIES {
            c.clear();
        }
        c.insert(pattern.to_string(), re.clone());
    });
    Ok(re)
}

/// Go's `regexp.Split(s, -1)`: the text between the matches Go's `FindAllStringIndex` reports
/// (which skips an empty match right after a previous match).
fn regex_split(pattern: &Value, text: &Value) -> Outcome {
    let pattern = string_operand(pattern, 1)?;
    let s = string_operand(text, 2)?;
    let re = compiled(&go_pattern(pattern))?;
    if !pattern.is_empty() && s.is_empty() {
        return Ok(Value::from(vec![Value::from("")]));
    }
    let mut matches = Vec::new();
    let (mut pos, mut previous_end) = (0usize, None);
    while pos <= s.len() {
        let Some(m) = re.find_at(s, pos) else {
            break;
        };
        let accept = !(m.is_empty() && Some(m.start()) == previous_end);
        if m.end() == pos {
            // An empty match here: go on from the next character.
            pos += s[pos..].chars().next().map_or(1, char::len_utf8);
        } else {
            pos = m.end();
        }
        previous_end = Some(m.end());
        if accept {
            matches.push((m.start(), m.end()));
        }
    }
    let mut parts = Vec::new();
    let (mut begin, mut end) = (0, 0);
    for (start, stop) in matches {
        end = start;
        if stop != 0 {
            parts.push(Value::from(&s[begin..end]));
        }
        begin = stop;
    }
    if end != s.len() {
        parts.push(Value::from(&s[begin..]));
    }
    Ok(Value::from(parts))
}

/// Go's (RE2's) Perl classes and word boundaries are ASCII-only where the regex crate's are
/// Unicode: `(textual escape, replacement)`, applied in order after setting escaped
/// backslashes aside. The replacements are classes, which the regex crate also accepts nested
/// inside a class (`[\d.]` becomes `[[0-9].]`).
pub(crate) const GO_PERL_CLASSES: &[(&str, &str)] = &[
    ("\\d", "[0-9]"),
    ("\\D", "[^0-9]"),
    ("\\w", "[0-9A-Za-z_]"),
    ("\\W", "[^0-9A-Za-z_]"),
    ("\\s", "[\\t\\n\\f\\r ]"),
    ("\\S", "[^\\t\\n\\f\\r ]"),
    ("\\b", "(?-u:\\b)"),
    ("\\B", "(?-u:\\B)"),
];

/// Stands for an escaped backslash while the classes are replaced (a private-use character).
pub(crate) const ESCAPED_BACKSLASH: &str = "\u{E000}";

/// A Go regular expression as the regex crate reads it with Go's meaning: ASCII-only Perl
/// classes, and literal braces escaped (Go reads a `{` that starts no repetition as itself,
/// the regex crate refuses it).
pub(crate) fn go_pattern(pattern: &str) -> String {
    escape_literal_braces(&go_perl_classes(pattern))
}

/// [`GO_PERL_CLASSES`] applied, as `data.vigil_go_regex.pattern` does for patterns computed
/// when a request is evaluated.
pub(crate) fn go_perl_classes(pattern: &str) -> String {
    let mut out = pattern.replace("\\\\", ESCAPED_BACKSLASH);
    for (from, to) in GO_PERL_CLASSES {
        out = out.replace(from, to);
    }
    out.replace(ESCAPED_BACKSLASH, "\\\\")
}

fn escape_literal_braces(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    let (mut i, mut in_class) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let mut n = 2;
            // `\p{Greek}`, `\x{10FFFF}`: the braces belong to the escape.
            if matches!(chars.get(i + 1), Some('p' | 'P' | 'x')) && chars.get(i + 2) == Some(&'{') {
                n = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .map_or(chars.len() - i, |p| p + 1);
            }
            out.extend(chars[i..(i + n).min(chars.len())].iter());
            i += n;
            continue;
        }
        if in_class {
            in_class = c != ']';
            out.push(c);
            i += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                out.push(c);
                i += 1;
                // A `]` first in a class is part of it.
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    out.push(']');
                    i += 1;
                }
            }
            '{' => match repetition_len(&chars[i..]) {
                Some(n) => {
                    let counts: String = chars[i + 1..i + n - 1].iter().collect();
                    if counts
                        .split(',')
                        .any(|c| c.parse::<u32>().is_ok_and(|c| c > 1000))
                    {
                        // Go refuses such a repetition; make the regex crate refuse it too.
                        out.push_str("\\p{Go refuses repeat counts above 1000}");
                    } else {
                        out.extend(chars[i..i + n].iter());
                    }
                    i += n;
                }
                None => {
                    out.push_str("\\{");
                    i += 1;
                }
            },
            '}' => {
                out.push_str("\\}");
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The length of a counted repetition (`{2}`, `{2,}`, `{2,5}`) at the start of `chars`.
fn repetition_len(chars: &[char]) -> Option<usize> {
    let mut i = 1;
    let digits = |i: &mut usize| {
        let start = *i;
        while chars.get(*i).is_some_and(char::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if digits(&mut i) == 0 {
        return None;
    }
    if chars.get(i) == Some(&',') {
        i += 1;
        digits(&mut i);
    }
    (chars.get(i) == Some(&'}')).then_some(i + 1)
}

/// OPA's `regex.template_match`: the template's text outside the delimiters matched literally,
/// the parts inside them as regular expressions, the whole value anchored.
fn template_match(template: &str, value: &str, start: &str, end: &str) -> Outcome {
    let (&[open], &[close]) = (start.as_bytes(), end.as_bytes()) else {
        return Err("delimiters have to be exactly one character long".into());
    };
    // Delimiter pairs, as gorilla/mux finds them (nested ones belong to the outer pair).
    let bytes = template.as_bytes();
    let (mut level, mut begin, mut pairs) = (0i64, 0, Vec::new());
    for (i, &b) in bytes.iter().enumerate() {
        if b == open {
            level += 1;
            if level == 1 {
                begin = i;
            }
        } else if b == close {
            level -= 1;
            if level == 0 {
                pairs.push((begin, i + 1));
            } else if level < 0 {
                return Err(format!("unbalanced braces in {template:?}"));
            }
        }
    }
    if level != 0 {
        return Err(format!("unbalanced braces in {template:?}"));
    }
    let mut pattern = String::from("^");
    let mut last = 0;
    for (from, to) in pairs {
        let inner = template
            .get(from + 1..to - 1)
            .ok_or("delimiters split a character")?;
        let literal = template
            .get(last..from)
            .ok_or("delimiters split a character")?;
        compiled(&go_pattern(&format!("^{inner}$")))?;
        pattern.push_str(&regex::escape(literal));
        pattern.push('(');
        pattern.push_str(&go_pattern(inner));
        pattern.push(')');
        last = to;
    }
    pattern.push_str(&regex::escape(template.get(last..).unwrap_or("")));
    pattern.push('$');
    let re = compiled(&pattern)?;
    Ok(Value::from(re.is_match(value)))
}

/// The glob metacharacters gobwas/glob (OPA's glob library) escapes: `*?\[]{}`.
fn glob_quote_meta(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '\\' | '[' | ']' | '{' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// A number as OPA's Go code sees it after converting it.
enum GoNumber {
    /// Fits an `int64`.
    Int(i64),
    /// An integer beyond `int64`, as decimal digits (with a sign).
    Big(String),
    /// Anything else.
    Float(f64),
}

fn go_number(value: &Value) -> Option<GoNumber> {
    let n = value.as_number().ok()?;
    if let Some(i) = n.as_i64() {
        return Some(GoNumber::Int(i));
    }
    // Integers regorus holds exactly (a float this large has no exact big-integer form).
    if let Some(big) = n.as_big() {
        return Some(GoNumber::Big(big.to_string()));
    }
    n.as_f64().map(GoNumber::Float)
}

/// OPA's `ceil`, including its quirk: a negative number above -1 becomes 1.
fn ceil(value: &Value) -> Outcome {
    match go_number(value) {
        Some(GoNumber::Int(_) | GoNumber::Big(_)) => Ok(value.clone()),
        Some(GoNumber::Float(f)) => {
            let truncated = f.trunc();
            // OPA truncates toward zero, then adds one when the truncated value is not negative.
            let result = if truncated >= 0.0 {
                truncated + 1.0
            } else {
                truncated
            };
            Ok(float_value(result))
        }
        None => Err("operand 1 must be number".into()),
    }
}

/// OPA's `floor`, including its quirk: a negative number above -1 becomes 0.
fn floor(value: &Value) -> Outcome {
    match go_number(value) {
        Some(GoNumber::Int(_) | GoNumber::Big(_)) => Ok(value.clone()),
        Some(GoNumber::Float(f)) => {
            let truncated = f.trunc();
            // OPA truncates toward zero, then subtracts one when the truncated value is negative.
            let result = if truncated < 0.0 && truncated != f {
                truncated - 1.0
            } else {
                truncated
            };
            Ok(float_value(result))
        }
        None => Err("operand 1 must be number".into()),
    }
}

fn float_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        Value::from(f as i64)
    } else {
        Value::from(f)
    }
}

/// OPA's `numbers.range_step`: integers from `a` to `b` (included when reached) by a positive
/// `step`, downwards when `a > b`.
fn range_step(a: &Value, b: &Value, step: &Value) -> Outcome {
    let int = |v: &Value, position: usize| match go_number(v) {
        Some(GoNumber::Int(i)) => Ok(i),
        _ => Err(format!("operand {position} must be integer number")),
    };
    let (a, b, step) = (int(a, 1)?, int(b, 2)?, int(step, 3)?);
    if step <= 0 {
        return Err("step must be a positive integer".into());
    }
    let mut out = Vec::new();
    let mut x = i128::from(a);
    let (b, step) = (i128::from(b), i128::from(step));
    while (i128::from(a) <= b && x <= b) || (i128::from(a) > b && x >= b) {
        out.push(Value::from(x as i64));
        x = if i128::from(a) <= b {
            x + step
        } else {
            x - step
        };
    }
    Ok(Value::from(out))
}

/// OPA's `format_int`: the number truncated toward zero, in base 2, 8, 10 or 16.
fn format_int(value: &Value, base: &Value) -> Outcome {
    let number = go_number(value).ok_or("operand 1 must be number")?;
    let base = match go_number(base) {
        Some(GoNumber::Int(b @ (2 | 8 | 10 | 16))) => b as u32,
        _ => return Err("operand 2 must be one of {2, 8, 10, 16}".into()),
    };
    let (negative, magnitude) = match number {
        GoNumber::Int(i) => (i < 0, u128::from(i.unsigned_abs())),
        GoNumber::Float(f) if f.abs() < 9.2e18 => (f < 0.0, f.trunc().abs() as u128),
        // Integers beyond int64 stay exact in OPA (a big.Float of as many bits as needed).
        GoNumber::Big(_) => {
            return value
                .as_number()
                .ok()
                .and_then(|n| n.as_big())
                .map(|big| Value::from(big.to_str_radix(base)))
                .ok_or_else(|| "operand 1 must be number".to_string());
        }
        // A float this large had a text in OPA that Vigil's f64 no longer holds.
        GoNumber::Float(_) => return Err("number out of the range Vigil formats like OPA".into()),
    };
    let digits = radix(magnitude, base);
    Ok(Value::from(if negative && magnitude != 0 {
        format!("-{digits}")
    } else {
        digits
    }))
}

fn radix(mut n: u128, base: u32) -> String {
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        let d = (n % u128::from(base)) as u32;
        out.push(char::from_digit(d, base).unwrap_or('?'));
        n /= u128::from(base);
    }
    out.iter().rev().collect()
}

/// OPA's `to_number`: null and booleans as 0/1, numbers as they are, strings Go's
/// `strconv.ParseFloat` accepts (except infinities and NaN).
fn to_number(value: &Value) -> Outcome {
    match value {
        Value::Null => Ok(Value::from(0i64)),
        Value::Bool(b) => Ok(Value::from(i64::from(*b))),
        Value::Number(_) => Ok(value.clone()),
        Value::String(s) => {
            let lowered = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
            if matches!(lowered.as_str(), "inf" | "infinity" | "nan") {
                return Err("operand 1 must be valid number string".into());
            }
            parse_go_float(s).ok_or_else(|| format!("strconv.ParseFloat: parsing {s:?}"))
        }
        _ => Err("operand 1 must be one of {null, boolean, number, string}".into()),
    }
}

/// Go's `strconv.ParseFloat(s, 64)` syntax (decimal or hexadecimal, `_` between digits), as a
/// number; `None` where Go reports an error (bad syntax, or out of range).
fn parse_go_float(s: &str) -> Option<Value> {
    if !underscores_ok(s) {
        return None;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let (negative, unsigned) = match plain.as_bytes().first()? {
        b'-' => (true, &plain[1..]),
        b'+' => (false, &plain[1..]),
        _ => (false, plain.as_str()),
    };
    let lower = unsigned.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        let f = parse_hex_float(hex)?;
        return Some(float_value(if negative { -f } else { f }));
    }
    // Decimal: digits, an optional fraction, an optional exponent; at least one digit.
    let bytes = lower.as_bytes();
    let mut i = 0;
    let mut digits = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    let integer_only = i == bytes.len();
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    if i < bytes.len() && bytes[i] == b'e' {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    if i != bytes.len() {
        return None;
    }
    if integer_only {
        // Integers keep every digit, as OPA keeps the string.
        let text = if negative {
            format!("-{lower}")
        } else {
            lower.clone()
        };
        return Value::from_numeric_string(&text).ok();
    }
    let f: f64 = lower.parse().ok()?;
    if f.is_infinite() {
        return None;
    }
    Some(float_value(if negative { -f } else { f }))
}

/// Go's rule for `_` in number literals: only between digits, or after a base prefix.
fn underscores_ok(s: &str) -> bool {
    let mut bytes = s.as_bytes();
    if let Some(b'+' | b'-') = bytes.first() {
        bytes = &bytes[1..];
    }
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if bytes.len() >= 2
        && bytes[0] == b'0'
        && matches!(bytes[1].to_ascii_lowercase(), b'b' | b'o' | b'x')
    {
        i = 2;
        saw = b'0';
        hex = bytes[1].eq_ignore_ascii_case(&b'x');
    }
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
        i += 1;
    }
    saw != b'_'
}

/// The value of a hexadecimal float after `0x`: hex digits with an optional point, then a
/// mandatory binary exponent (`p`).
fn parse_hex_float(s: &str) -> Option<f64> {
    let (mantissa, exponent) = s.split_once('p')?;
    let exponent: i32 = match exponent.strip_prefix('+') {
        Some(rest) if !rest.starts_with(['+', '-']) => rest.parse().ok()?,
        _ => exponent.parse().ok()?,
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut value: u128 = 0;
    let mut shift = 0i32;
    for c in whole.chars().chain(fraction.chars()) {
        let d = c.to_digit(16)?;
        if value >> 120 != 0 {
            // Beyond 120 bits a digit no longer changes the f64; keep its weight.
            shift += 4;
            continue;
        }
        value = value * 16 + u128::from(d);
    }
    shift -= 4 * fraction.len() as i32;
    let f = (value as f64) * 2f64.powi(exponent.saturating_add(shift));
    (!f.is_infinite()).then_some(f)
}

// ---------------------------------------------------------------------------------------------
// Networks

/// At most this many addresses are listed by `net.cidr_expand` (OPA lists more, slowly; a
/// decision never waits on that).
const MAX_EXPANDED: u128 = 1 << 16;

/// OPA's `net.cidr_expand`: every address of a network, written as Go's `net.IP.String` does
/// (IPv4-mapped addresses in dotted form).
fn cidr_expand(cidr: &str) -> Outcome {
    let network = parse_cidr(cidr).ok_or_else(|| format!("invalid CIDR address: {cidr}"))?;
    let to_int = |bytes: &[u8]| bytes.iter().fold(0u128, |n, b| n << 8 | u128::from(*b));
    let (first, last) = (to_int(&network.ip), to_int(&network.last()));
    if last - first >= MAX_EXPANDED {
        return Err(format!("{cidr} holds more than {MAX_EXPANDED} addresses"));
    }
    let width = network.ip.len();
    let addresses: std::collections::BTreeSet<Value> = (first..=last)
        .map(|n| Value::from(ip_string(&n.to_be_bytes()[16 - width..])))
        .collect();
    Ok(Value::from(addresses))
}

/// OPA's `net.cidr_contains`: whether a network holds an address, or all of a network.
fn cidr_contains(cidr: &Value, other: &Value) -> Outcome {
    let network_text = string_operand(cidr, 1)?;
    let network = parse_cidr(network_text).ok_or_else(|| format!("invalid CIDR {network_text}"))?;
    let other = string_operand(other, 1)?;
    if let Some(ip) = parse_ip(other) {
        return Ok(Value::from(network.contains(&ip)));
    }
    let inner = parse_cidr(other).ok_or_else(|| {
        format!("not a valid textual representation of an IP address or CIDR: {other}")
    })?;
    let contained = network.contains(&inner.ip) && network.contains(&inner.last());
    Ok(Value::from(contained))
}

// ---------------------------------------------------------------------------------------------
// URL queries

/// Go's `url.QueryEscape`: all but letters, digits and `-_.~` escaped, space as `+`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// OPA's `urlquery.encode_object`: Go's `url.Values.Encode` (keys sorted) of an object whose
/// values are strings, or arrays or sets of strings.
fn encode_object(value: &Value) -> Outcome {
    let bad = || "operand 1 values must be string, array[string], or set[string]".to_string();
    let fields = value
        .as_object()
        .map_err(|_| "operand 1 must be object".to_string())?;
    let mut pairs: Vec<(String, Vec<String>)> = Vec::new();
    for (key, v) in fields.iter() {
        let key = key
            .as_string()
            .map_err(|_| "object keys must be strings".to_string())?;
        let values: Vec<String> = match v {
            Value::String(s) => vec![s.to_string()],
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_string().map(|s| s.to_string()).map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
            Value::Set(items) => items
                .iter_sorted()
                .map(|i| i.as_string().map(|s| s.to_string()).map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        };
        pairs.push((key.to_string(), values));
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (key, values) in &pairs {
        for v in values {
            out.push(format!("{}={}", query_escape(key), query_escape(v)));
        }
    }
    Ok(Value::from(out.join("&")))
}

// ---------------------------------------------------------------------------------------------
// JSON documents

/// The tree of paths `json.filter` keeps (OPA's `pathsToObject`): a leaf keeps the whole value.
enum Keep {
    All,
    Some(BTreeMap<Value, Keep>),
}

/// OPA's `json.filter`: the parts of an object on the given paths (`a/b` strings with `~1` and
/// `~0` escapes, or arrays of segments; array elements are named by their index as a string).
fn json_filter(object: &Value, paths: &Value) -> Outcome {
    if object.as_object().is_err() {
        return Err("operand 1 must be object".into());
    }
    let paths: Vec<&Value> = match paths {
        Value::Array(items) => items.iter().collect(),
        Value::Set(items) => items.iter_sorted().collect(),
        _ => return Err("operand 2 must be one of {set, array}".into()),
    };
    let mut root = BTreeMap::new();
    for path in paths {
        let segments: Vec<Value> = match path {
            Value::String(p) if p.is_empty() => continue,
            Value::String(p) => p
                .trim_start_matches('/')
                .split('/')
                .map(|part| Value::from(part.replace("~1", "/").replace("~0", "~")))
                .collect(),
            Value::Array(items) => items.iter().cloned().collect(),
            _ => return Err("operand 2 must hold string paths or arrays of segments".into()),
        };
        let Some((last, init)) = segments.split_last() else {
            continue;
        };
        // A path under one already kept whole changes nothing.
        if let Some(node) = descend(&mut root, init) {
            node.insert(last.clone(), Keep::All);
        }
    }
    Ok(filter_value(object, &Keep::Some(root)))
}

/// The node of the tree at `path`, made as needed; `None` when a prefix is kept whole.
fn descend<'a>(
    mut node: &'a mut BTreeMap<Value, Keep>,
    path: &[Value],
) -> Option<&'a mut BTreeMap<Value, Keep>> {
    for key in path {
        match node
            .entry(key.clone())
            .or_insert_with(|| Keep::Some(BTreeMap::new()))
        {
            Keep::All => return None,
            Keep::Some(next) => node = next,
        }
    }
    Some(node)
}

fn filter_value(value: &Value, keep: &Keep) -> Value {
    let Keep::Some(keys) = keep else {
        return value.clone();
    };
    match value {
        Value::Array(items) => Value::from(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    keys.get(&Value::from(i.to_string()))
                        .map(|k| filter_value(item, k))
                })
                .collect::<Vec<_>>(),
        ),
        Value::Set(items) => {
            let kept: std::collections::BTreeSet<Value> = items
                .iter_sorted()
                .filter_map(|item| keys.get(item).map(|k| filter_value(item, k)))
                .collect();
            Value::from(kept)
        }
        Value::Object(fields) => Value::from(
            fields
                .iter_sorted()
                .filter_map(|(k, v)| keys.get(k).map(|keep| (k.clone(), filter_value(v, keep))))
                .collect::<BTreeMap<_, _>>(),
        ),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Time and versions

/// OPA's `time.parse_rfc3339_ns`: Go's `time.Parse(time.RFC3339, s)` (whose fallback parser
/// accepts a one-digit hour, `,` before fractional seconds and offsets up to +24:60), in
/// nanoseconds since the epoch, which must fit an int64.
fn parse_rfc3339_ns(s: &str) -> Outcome {
    let bad = || format!("parsing time {s:?} as \"2006-01-02T15:04:05Z07:00\"");
    let b = s.as_bytes();
    let mut i = 0;
    // A run of `n` digits (exactly `n`, or 1..=n when not `fixed`) starting at `i`.
    let digits = |i: &mut usize, n: usize, fixed: bool| -> Option<i64> {
        let start = *i;
        while *i < b.len() && *i - start < n && b[*i].is_ascii_digit() {
            *i += 1;
        }
        let len = *i - start;
        if len == 0 || (fixed && len != n) {
            return None;
        }
        s[start..*i].parse().ok()
    };
    let expect = |i: &mut usize, c: u8| -> Option<()> { (b.get(*i) == Some(&c)).then(|| *i += 1) };
    let parsed = (|| {
        let year = digits(&mut i, 4, true)?;
        expect(&mut i, b'-')?;
        let month = digits(&mut i, 2, true)?;
        expect(&mut i, b'-')?;
        let day = digits(&mut i, 2, true)?;
        expect(&mut i, b'T')?;
        let hour = digits(&mut i, 2, false)?;
        expect(&mut i, b':')?;
        let minute = digits(&mut i, 2, true)?;
        expect(&mut i, b':')?;
        let second = digits(&mut i, 2, true)?;
        let mut nanos = 0i64;
        if i + 1 < b.len() && matches!(b[i], b'.' | b',') && b[i + 1].is_ascii_digit() {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            // Go reads at most nine digits and ignores the rest.
            let kept = &s[start..end.min(start + 9)];
            nanos = kept.parse::<i64>().ok()? * 10i64.pow(9 - kept.len() as u32);
            i = end;
        }
        let offset = match b.get(i) {
            Some(b'Z') => {
                i += 1;
                0
            }
            Some(sign @ (b'+' | b'-')) => {
                let sign = if *sign == b'-' { -1 } else { 1 };
                let rest = b.get(i..i + 6)?;
                if rest[3] != b':' {
                    return None;
                }
                i += 1;
                let h = digits(&mut i, 2, true)?;
                i += 1;
                let m = digits(&mut i, 2, true)?;
                if h > 24 || m > 60 {
                    return None;
                }
                sign * (h * 3600 + m * 60)
            }
            _ => return None,
        };
        if i != b.len() {
            return None;
        }
        Some((year, month, day, hour, minute, second, nanos, offset))
    })();
    let (year, month, day, hour, minute, second, nanos, offset) = parsed.ok_or_else(bad)?;
    if !(1..=12).contains(&month) {
        return Err(format!("parsing time {s:?}: month out of range"));
    }
    if hour > 23 {
        return Err(format!("parsing time {s:?}: hour out of range"));
    }
    if minute > 59 {
        return Err(format!("parsing time {s:?}: minute out of range"));
    }
    if second > 59 {
        return Err(format!("parsing time {s:?}: second out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(format!("parsing time {s:?}: day out of range"));
    }
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    i64::try_from(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
        .map(Value::from)
        .map_err(|_| "time outside of valid range".to_string())
}

/// OPA's `time.parse_duration_ns`: Go's `time.ParseDuration` with OPA's extra units `d`, `w`
/// and `y` (365 days).
fn parse_duration_ns(s: &str) -> Outcome {
    const LIMIT: u64 = 1 << 63;
    let bad = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Value::from(0i64));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let b = rest.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(bad());
        }
        // Whole part.
        let mut i = 0;
        let mut whole: u64 = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            if whole > LIMIT / 10 {
                return Err(bad());
            }
            whole = whole * 10 + u64::from(b[i] - b'0');
            if whole > LIMIT {
                return Err(bad());
            }
            i += 1;
        }
        let pre = i > 0;
        // Fraction: digits beyond what a u64 holds are ignored, as in Go.
        let (mut fraction, mut scale, mut post) = (0u64, 1f64, false);
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let start = i;
            let mut overflow = false;
            while i < b.len() && b[i].is_ascii_digit() {
                if !overflow {
                    if fraction > (LIMIT - 1) / 10 {
                        overflow = true;
                    } else {
                        let next = fraction * 10 + u64::from(b[i] - b'0');
                        if next > LIMIT {
                            overflow = true;
                        } else {
                            fraction = next;
                            scale *= 10.0;
                        }
                    }
                }
                i += 1;
            }
            post = i > start;
        }
        if !pre && !post {
            return Err(bad());
        }
        // Unit: everything up to the next digit or `.`.
        let unit_start = i;
        while i < b.len() && !(b[i] == b'.' || b[i].is_ascii_digit()) {
            i += 1;
        }
        if i == unit_start {
            return Err(format!("time: missing unit in duration {s:?}"));
        }
        let unit: u64 = match &rest[unit_start..i] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 604_800_000_000_000,
            "y" => 31_536_000_000_000_000,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        rest = &rest[i..];
        if whole > LIMIT / unit {
            return Err(bad());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(bad());
            }
        }
        total += value;
        if total > LIMIT {
            return Err(bad());
        }
    }
    if negative {
        return Ok(Value::from((-(i128::from(total))) as i64));
    }
    i64::try_from(total).map(Value::from).map_err(|_| bad())
}

/// OPA's `time.add_date`: Go's `Time.AddDate` in UTC (a day past the end of a month rolls over:
/// January 31 plus one month is March 2 or 3), in nanoseconds that must fit an int64.
fn add_date(ns: &Value, years: &Value, months: &Value, days: &Value) -> Outcome {
    let int = |v: &Value, position: usize| match go_number(v) {
        Some(GoNumber::Int(i)) => Ok(i128::from(i)),
        _ => Err(format!("operand {position} must be integer number")),
    };
    let (ns, years, months, days) = (int(ns, 1)?, int(years, 2)?, int(months, 3)?, int(days, 4)?);
    const DAY: i128 = 86_400_000_000_000;
    let day_number = ns.div_euclid(DAY);
    let within_day = ns.rem_euclid(DAY);
    let (year, month, day) = civil_from_days(day_number);
    let month_index = i128::from(month) - 1 + months;
    let year = i128::from(year) + years + month_index.div_euclid(12);
    let month = month_index.rem_euclid(12) + 1;
    let year = i64::try_from(year).map_err(|_| "time outside of valid range".to_string())?;
    let first = i128::from(days_from_civil(year, month as i64, 1));
    let total = (first + i128::from(day) - 1 + days) * DAY + within_day;
    i64::try_from(total)
        .map(Value::from)
        .map_err(|_| "time outside of valid range".to_string())
}

/// The date of a day number counted from 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(z: i128) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    ((y + i128::from(m <= 2)) as i64, m as i64, d as i64)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A version as OPA's semver fork reads it: (major, minor, patch, prerelease).
fn parse_semver(version: &str) -> Option<([i64; 3], String)> {
    if !semver_is_valid(version) {
        return None;
    }
    let version = version.strip_prefix('v').unwrap_or(version);
    let (version, _metadata) = version.split_once('+').unwrap_or((version, ""));
    let (version, prerelease) = version.split_once('-').unwrap_or((version, ""));
    let mut parts = version.splitn(3, '.').map(|p| p.parse::<i64>().ok());
    let numbers = [parts.next()??, parts.next()??, parts.next()??];
    Some((numbers, prerelease.to_string()))
}

/// OPA's `semver.compare` (coreos/go-semver): numbers, then a version without prerelease
/// above one with, then prerelease identifiers (numeric ones below others); metadata ignored.
fn semver_compare(a: &Value, b: &Value) -> Outcome {
    let a = string_operand(a, 1)?;
    let b = string_operand(b, 2)?;
    let (a_numbers, a_pre) =
        parse_semver(a).ok_or_else(|| format!("{a:?} is not a valid SemVer"))?;
    let (b_numbers, b_pre) =
        parse_semver(b).ok_or_else(|| format!("{b:?} is not a valid SemVer"))?;
    let ordering =
        a_numbers
            .cmp(&b_numbers)
            .then_with(|| match (a_pre.is_empty(), b_pre.is_empty()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                (false, false) => prerelease_order(&a_pre, &b_pre),
            });
    Ok(Value::from(ordering as i64))
}

fn prerelease_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
    for (x, y) in a.iter().zip(&b) {
        // Go's strconv.Atoi: an optional sign, then digits, within int64.
        let (xi, yi) = (x.parse::<i64>().ok(), y.parse::<i64>().ok());
        let ordering = match (xi, yi) {
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(p), Some(q)) => p.cmp(&q).then_with(|| x.cmp(y)),
            (None, None) => x.cmp(y),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a.len().cmp(&b.len())
}

/// OPA's `semver.is_valid` (its fork of coreos/go-semver): an optional `v`, then
/// `major.minor.patch` as int64s (leading zeros allowed), then optional `-prerelease` and
/// `+metadata` of dot-separated `[0-9A-Za-z-]+` identifiers (either may be empty).
fn semver_is_valid(version: &str) -> bool {
    let version = version.strip_prefix('v').unwrap_or(version);
    let (version, metadata) = version.split_once('+').unwrap_or((version, ""));
    let (version, prerelease) = version.split_once('-').unwrap_or((version, ""));
    let identifiers_ok = |id: &str| {
        id.is_empty()
            || id.split('.').all(|part| {
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    let parts: Vec<&str> = version.splitn(3, '.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<i64>().is_ok()
        })
        && identifiers_ok(prerelease)
        && identifiers_ok(metadata)
}

// ---------------------------------------------------------------------------------------------
// sprintf

/// The verbs Vigil formats like Go's `fmt.Sprintf`, without flags, widths or precisions.
pub(crate) const SPRINTF_VERBS: &[char] = &['s', 'v', 'd', 'q'];

/// Whether Vigil formats `format` exactly as OPA: only `%%` and [`SPRINTF_VERBS`]; otherwise
/// the first directive it cannot format.
pub(crate) fn unsupported_directive(format: &str) -> Option<String> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.next() {
            Some('%') => {}
            Some(v) if SPRINTF_VERBS.contains(&v) => {}
            Some(v) => return Some(format!("%{v}")),
            None => return Some("a final %".to_string()),
        }
    }
    None
}

/// An argument of `sprintf` as OPA passes it to Go's `fmt.Sprintf`.
enum GoArg {
    Int(i64),
    Big(String),
    Float(f64),
    Str(String),
}

impl GoArg {
    fn of(value: &Value) -> GoArg {
        match value {
            Value::String(s) => GoArg::Str(s.to_string()),
            Value::Number(_) => match go_number(value) {
                Some(GoNumber::Int(i)) => GoArg::Int(i),
                Some(GoNumber::Big(digits)) => GoArg::Big(digits),
                Some(GoNumber::Float(f)) => GoArg::Float(f),
                None => GoArg::Str(String::new()),
            },
            // Everything else is passed as the text of the Rego value.
            other => GoArg::Str(rego_text(other)),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            GoArg::Int(_) => "int64",
            GoArg::Big(_) => "*big.Int",
            GoArg::Float(_) => "float64",
            GoArg::Str(_) => "string",
        }
    }

    /// `%v`.
    fn plain(&self) -> String {
        match self {
            GoArg::Int(i) => i.to_string(),
            GoArg::Big(d) => d.clone(),
            GoArg::Float(f) => go_float(*f),
            GoArg::Str(s) => s.clone(),
        }
    }

    fn format(&self, verb: char) -> String {
        let bad = || format!("%!{verb}({}={})", self.type_name(), self.plain());
        match (verb, self) {
            ('v', _) => self.plain(),
            ('s', GoArg::Str(_) | GoArg::Big(_)) => self.plain(),
            ('d', GoArg::Int(_) | GoArg::Big(_)) => self.plain(),
            ('q', GoArg::Str(s)) => go_quote(s, '"'),
            ('q', GoArg::Int(i)) => {
                let c = u32::try_from(*i)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or('\u{FFFD}');
                go_quote(&c.to_string(), '\'')
            }
            ('q', GoArg::Big(d)) => format!("%!q(big.Int={d})"),
            _ => bad(),
        }
    }
}

/// OPA's `sprintf`: Go's `fmt.Sprintf` over the arguments converted as OPA converts them.
fn sprintf(format: &Value, args: &Value) -> Outcome {
    let format = string_operand(format, 1)?;
    let args: Vec<GoArg> = match args {
        Value::Array(items) => items.iter().map(GoArg::of).collect(),
        _ => return Err("operand 2 must be array".into()),
    };
    let mut out = String::new();
    let mut next = 0;
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb) if SPRINTF_VERBS.contains(&verb) => {
                match args.get(next) {
                    Some(arg) => out.push_str(&arg.format(verb)),
                    None => {
                        let _ = write!(out, "%!{verb}(MISSING)");
                    }
                }
                next += 1;
            }
            // Refused when the bundle is compiled (see calls.rs); never reached from a policy.
            _ => return Err(format!("format {format:?} is not supported by Vigil")),
        }
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", a.type_name(), a.plain()))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    Ok(Value::from(out))
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)`, which `%v` uses: the shortest digits that
/// read back as `f`, in exponent form when the exponent is below -4 or at least 6.
fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits: "1.2345e7".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        return format!("{sign}{}", exp_form(&digits, exp));
    }
    let n = digits.len() as i32;
    let dp = exp + 1;
    let body = if dp <= 0 {
        format!("0.{}{}", "0".repeat((-dp) as usize), digits)
    } else if dp >= n {
        format!("{}{}", digits, "0".repeat((dp - n) as usize))
    } else {
        format!("{}.{}", &digits[..dp as usize], &digits[dp as usize..])
    };
    format!("{sign}{body}")
}

fn exp_form(digits: &str, exp: i32) -> String {
    let mantissa = if digits.len() > 1 {
        format!("{}.{}", &digits[..1], &digits[1..])
    } else {
        digits.to_string()
    };
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// Go's `strconv.Quote` (`quote` `"`) and `QuoteRune` (`'`).
fn go_quote(s: &str, quote: char) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        if c == quote || c == '\\' {
            out.push('\\');
            out.push(c);
            continue;
        }
        if printable(c) {
            out.push(c);
            continue;
        }
        match c {
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
    out
}

fn printable(c: char) -> bool {
    let c = u32::from(c);
    let i = NOT_PRINTABLE.partition_point(|&(start, _)| start <= c);
    !(i > 0 && NOT_PRINTABLE[i - 1].1 >= c)
}

/// The text OPA gives a Rego value (`ast.Value.String()`): strings quoted, sets as `{...}` or
/// `set()`, objects and sets sorted.
fn rego_text(value: &Value) -> String {
    let mut out = String::new();
    write_rego(value, &mut out);
    out
}

fn write_rego(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(_) => match go_number(value) {
            Some(GoNumber::Int(i)) => out.push_str(&i.to_string()),
            Some(GoNumber::Big(d)) => out.push_str(&d),
            Some(GoNumber::Float(f)) => out.push_str(&go_float(f)),
            None => {}
        },
        Value::String(s) => out.push_str(&go_quote(s, '"')),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_rego(item, out);
            }
            out.push(']');
        }
        Value::Set(items) => {
            if items.is_empty() {
                out.push_str("set()");
                return;
            }
            out.push('{');
            for (i, item) in items.iter_sorted().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_rego(item, out);
            }
            out.push('}');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (k, v)) in fields.iter_sorted().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_rego(k, out);
                out.push_str(": ");
                write_rego(v, out);
            }
            out.push('}');
        }
        Value::Undefined => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    #[test]
    fn go_float_matches_fmt_v() {
        assert_eq!(go_float(12345678.9), "1.23456789e+07");
        assert_eq!(go_float(150000.0), "150000");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(2.5e20), "2.5e+20");
        assert_eq!(go_float(-1.5), "-1.5");
        assert_eq!(go_float(1.0 / 3.0), "0.3333333333333333");
    }

    #[test]
    fn sprintf_reports_missing_and_extra_arguments_like_go() {
        let args = Value::from(vec![Value::from(1i64)]);
        assert_eq!(sprintf(&s("%d %d"), &args), Ok(s("1 %!d(MISSING)")));
        let args = Value::from(vec![Value::from(1i64), Value::from(2i64)]);
        assert_eq!(sprintf(&s("%d"), &args), Ok(s("1%!(EXTRA int64=2)")));
    }

    #[test]
    fn unsupported_directives_are_named() {
        assert_eq!(unsupported_directive("%s-%d %v %q 100%%"), None);
        assert_eq!(unsupported_directive("%5s"), Some("%5".into()));
        assert_eq!(unsupported_directive("50%"), Some("a final %".into()));
    }
}
