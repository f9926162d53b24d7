//! What an allow decision changes in the request target sent upstream: its query string.
//!
//! OPA-Envoy hands `query_parameters_to_set` and `query_parameters_to_remove` to Envoy, which
//! sets (replacing every parameter of that name) and then removes parameters before routing
//! the request. The proxy calls [`upstream_path_and_query`] to do the same. Where Vigil differs
//! from Envoy, it is on the safe side and does not change a decision: names are compared
//! decoded (so `?%74oken=x` loses its `token` too), the parameters set are percent-encoded (so
//! the target stays a valid URI), and the other parameters keep their order.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::decision::Decision;

/// Bytes left as they are in a query parameter Vigil writes: RFC 3986 unreserved characters.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The request target (`path?query`) to send upstream for `decision`: `original` unchanged
/// unless the decision is an allow that sets or removes query parameters.
///
/// ```
/// use vigil_authz::{upstream_path_and_query, Decision};
///
/// let mut decision = Decision::allow();
/// if let Decision::Allow { query_parameters_to_remove, query_parameters_to_set, .. } = &mut decision {
///     query_parameters_to_remove.push("token".into());
///     query_parameters_to_set.push(("via".into(), "vigil mesh".into()));
/// }
/// assert_eq!(
///     upstream_path_and_query("/orders?token=s3cr3t&page=2", &decision),
///     "/orders?page=2&via=vigil%20mesh"
/// );
/// ```
pub fn upstream_path_and_query<'a>(original: &'a str, decision: &Decision) -> Cow<'a, str> {
    let Decision::Allow {
        query_parameters_to_remove: remove,
        query_parameters_to_set: set,
        ..
    } = decision
    else {
        return Cow::Borrowed(original);
    };
    if remove.is_empty() && set.is_empty() {
        return Cow::Borrowed(original);
    }
    let (target, fragment) = match original.split_once('#') {
        Some((t, f)) => (t, Some(f)),
        None => (original, None),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    // (the parameter as written, its decoded name)
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| (p.to_string(), decoded_name(p)))
        .collect();

    // Envoy overwrites in order, so for a name given twice the last value wins.
    let mut assignments: Vec<(&str, &str)> = Vec::new();
    for (name, value) in set {
        match assignments.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => assignments.push((name, value)),
        }
    }
    for (name, value) in assignments {
        let written = format!(
            "{}={}",
            utf8_percent_encode(name, QUERY_COMPONENT),
            utf8_percent_encode(value, QUERY_COMPONENT)
        );
        match params.iter().position(|(_, n)| n == name) {
            Some(first) => {
                params[first].0 = written;
                let mut i = 0;
                params.retain(|(_, n)| {
                    i += 1;
                    i - 1 == first || n != name
                });
            }
            None => params.push((written, name.to_string())),
        }
    }
    params.retain(|(_, n)| !remove.iter().any(|r| r == n));

    let mut out = String::with_capacity(original.len());
    out.push_str(path);
    if !params.is_empty() {
        out.push('?');
        let written: Vec<&str> = params.iter().map(|(p, _)| p.as_str()).collect();
        out.push_str(&written.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Cow::Owned(out)
}

/// A parameter's name, decoded as a form field (`+` is a space); as written if it does not
/// decode.
fn decoded_name(param: &str) -> String {
    let name = param.split_once('=').map_or(param, |(n, _)| n);
    let spaced = name.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map_or_else(|_| name.to_string(), |n| n.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(remove: &[&str], set: &[(&str, &str)]) -> Decision {
        let mut decision = Decision::allow();
        if let Decision::Allow {
            query_parameters_to_remove,
            query_parameters_to_set,
            ..
        } = &mut decision
        {
            *query_parameters_to_remove = remove.iter().map(|s| s.to_string()).collect();
            *query_parameters_to_set = set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
        decision
    }

    #[test]
    fn unchanged_without_query_changes() {
        let target = "/a?b=1&b=2";
        assert!(matches!(
            upstream_path_and_query(target, &Decision::allow()),
            Cow::Borrowed(t) if t == target
        ));
        let deny = Decision::Error { reason: "x".into() };
        assert_eq!(upstream_path_and_query(target, &deny), target);
    }

    #[test]
    fn removes_every_parameter_of_a_name_including_encoded_ones() {
        let d = allow(&["token", "debug"], &[]);
        assert_eq!(
            upstream_path_and_query("/a?token=1&page=2&%74oken=3&debug&tok=4", &d),
            "/a?page=2&tok=4"
        );
        assert_eq!(upstream_path_and_query("/a?token=1", &d), "/a");
        assert_eq!(upstream_path_and_query("/a", &d), "/a");
    }

    #[test]
    fn sets_replacing_in_place_and_appending() {
        let d = allow(
            &[],
            &[("page", "1"), ("via", "vigil mesh/x"), ("page", "9")],
        );
        assert_eq!(
            upstream_path_and_query("/a?page=2&q=x&page=3", &d),
            "/a?page=9&q=x&via=vigil%20mesh%2Fx"
        );
        assert_eq!(
            upstream_path_and_query("/a", &d),
            "/a?page=9&via=vigil%20mesh%2Fx"
        );
    }

    #[test]
    fn remove_applies_after_set_and_fragments_stay() {
        let d = allow(&["a"], &[("a", "1"), ("b", "2")]);
        assert_eq!(
            upstream_path_and_query("/p?a=0&c=3#top", &d),
            "/p?c=3&b=2#top"
        );
    }
}
