//! Property tests of the OPA-Envoy input document: arbitrary header names, values, paths,
//! hosts and bodies never make the builder panic, header names come out lower-case, and
//! what the request said is what the policy sees.

use std::net::SocketAddr;

use proptest::prelude::*;
use vigil_authz::{AuthzInput, BodyInput, HttpAttributes, InputKind};

/// Header names as a client could send them: tokens in any case.
fn header_name() -> impl Strategy<Value = Vec<u8>> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}".prop_map(String::into_bytes)
}

/// Any bytes; the `http` crate decides which are a valid value.
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..48)
}

fn headers() -> impl Strategy<Value = http::HeaderMap> {
    proptest::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(&name),
                http::HeaderValue::from_bytes(&value),
            ) {
                map.append(n, v);
            }
        }
        map
    })
}

fn build(
    method: &str,
    path: &str,
    host: &str,
    headers: &http::HeaderMap,
    body: Option<(&[u8], bool, Option<&str>)>,
) -> serde_json::Value {
    let source: SocketAddr = ([10, 1, 2, 3], 40000).into();
    AuthzInput {
        kind: InputKind::Http(HttpAttributes {
            id: "id-1",
            method,
            path,
            host,
            scheme: "https",
            protocol: "HTTP/1.1",
            headers,
            body: body.map(|(bytes, truncated, content_type)| BodyInput {
                bytes,
                truncated,
                content_type,
            }),
        }),
        source_address: source,
        destination_address: ([127, 0, 0, 1], 15006).into(),
        source_principal: Some("spiffe://vigil.local/ns/a/sa/b"),
        destination_principal: None,
    }
    .to_json()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn header_names_come_out_lower_case_and_complete(
        headers in headers(),
        method in "[A-Z]{1,8}",
        path in "\\PC{0,64}",
        host in "\\PC{0,32}",
    ) {
        let doc = build(&method, &path, &host, &headers, None);
        let http = &doc["attributes"]["request"]["http"];
        let seen = http["headers"].as_object().expect("headers object");
        for name in seen.keys() {
            prop_assert_eq!(name, &name.to_ascii_lowercase());
        }
        for name in headers.keys() {
            prop_assert!(seen.contains_key(name.as_str()), "{} missing", name);
        }
        prop_assert_eq!(http["method"].as_str(), Some(method.as_str()));
        prop_assert_eq!(http["path"].as_str(), Some(path.as_str()));
        prop_assert_eq!(seen[":path"].as_str(), Some(path.as_str()));
        prop_assert_eq!(seen[":authority"].as_str(), Some(host.as_str()));
        // Null where the target does not parse (the proxy then fails closed; see
        // `unparseable_requests_fail_closed`).
        prop_assert!(doc["parsed_path"].is_array() || doc["parsed_path"].is_null());
        prop_assert!(doc["parsed_query"].is_object() || doc["parsed_query"].is_null());
    }

    #[test]
    fn repeated_headers_are_joined_in_order(values in proptest::collection::vec("[a-z0-9]{0,8}", 2..5)) {
        let mut map = http::HeaderMap::new();
        for v in &values {
            map.append("x-multi", http::HeaderValue::from_str(v).expect("value"));
        }
        let doc = build("GET", "/", "h", &map, None);
        let joined = values.join(", ");
        prop_assert_eq!(
            doc["attributes"]["request"]["http"]["headers"]["x-multi"].as_str(),
            Some(joined.as_str())
        );
    }

    #[test]
    fn any_target_and_body_never_panics(
        path in proptest::collection::vec(any::<char>(), 0..96).prop_map(|c| c.into_iter().collect::<String>()),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        truncated in any::<bool>(),
        kind in 0u8..4,
    ) {
        let content_type = match kind {
            0 => None,
            1 => Some("application/json"),
            2 => Some("application/x-www-form-urlencoded"),
            _ => Some("text/plain; charset=utf-8"),
        };
        let doc = build("POST", &path, "h", &http::HeaderMap::new(), Some((&body, truncated, content_type)));
        prop_assert_eq!(doc["truncated_body"].as_bool(), Some(truncated));
        if truncated {
            prop_assert!(doc["parsed_body"].is_null(), "a truncated body is never parsed");
        }
    }

    #[test]
    fn query_strings_become_lists(pairs in proptest::collection::vec(("[a-z]{1,6}", "[a-z0-9]{0,6}"), 1..6)) {
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let doc = build("GET", &format!("/p?{}", query.join("&")), "h", &http::HeaderMap::new(), None);
        for (k, v) in &pairs {
            let values = doc["parsed_query"][k].as_array().expect("a list per name");
            prop_assert!(values.iter().any(|x| x.as_str() == Some(v.as_str())));
        }
    }
}
