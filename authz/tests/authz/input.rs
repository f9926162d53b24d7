use http::{HeaderMap, HeaderValue};
use serde_json::json;
use vigil_authz::{AuthzInput, BodyInput, HttpAttributes, InputKind};

use crate::addr;

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("User-Agent", HeaderValue::from_static("curl/8.0"));
    h.append("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
    h.append("x-forwarded-for", HeaderValue::from_static("10.2.2.2"));
    h.insert("Content-Type", HeaderValue::from_static("application/json"));
    h
}

fn http<'a>(headers: &'a HeaderMap, path: &'a str, body: Option<BodyInput<'a>>) -> AuthzInput<'a> {
    AuthzInput {
        kind: InputKind::Http(HttpAttributes {
            id: "req-1",
            method: "POST",
            path,
            host: "orders.shop:8080",
            scheme: "https",
            protocol: "HTTP/2",
            headers,
            body,
        }),
        source_address: addr("10.0.0.1:40000"),
        destination_address: addr("[::ffff:10.0.0.2]:8080"),
        source_principal: Some("spiffe://vigil.local/ns/shop/sa/web"),
        destination_principal: Some("spiffe://vigil.local/ns/shop/sa/orders"),
    }
}

#[test]
fn http_document_matches_opa_envoy() {
    let h = headers();
    let body = br#"{"quantity": 3, "items": ["a"]}"#;
    let input = http(
        &h,
        "/api/v1/orders%2F7/caf%C3%A9?verbose&tag=a&tag=b+c&q=%26x",
        Some(BodyInput {
            bytes: body,
            truncated: false,
            content_type: None,
        }),
    );
    let expected = json!({
        "attributes": {
            "source": {
                "address": {"socketAddress": {"address": "10.0.0.1", "portValue": 40000}},
                "principal": "spiffe://vigil.local/ns/shop/sa/web"
            },
            "destination": {
                "address": {"socketAddress": {"address": "10.0.0.2", "portValue": 8080}},
                "principal": "spiffe://vigil.local/ns/shop/sa/orders"
            },
            "request": {"http": {
                "id": "req-1",
                "method": "POST",
                "path": "/api/v1/orders%2F7/caf%C3%A9?verbose&tag=a&tag=b+c&q=%26x",
                "host": "orders.shop:8080",
                "scheme": "https",
                "protocol": "HTTP/2",
                "headers": {
                    ":authority": "orders.shop:8080",
                    ":method": "POST",
                    ":path": "/api/v1/orders%2F7/caf%C3%A9?verbose&tag=a&tag=b+c&q=%26x",
                    "content-type": "application/json",
                    "user-agent": "curl/8.0",
                    "x-forwarded-for": "10.1.1.1, 10.2.2.2"
                },
                "body": "{\"quantity\": 3, \"items\": [\"a\"]}"
            }}
        },
        "parsed_path": ["api", "v1", "orders", "7", "café"],
        "parsed_query": {"verbose": [""], "tag": ["a", "b c"], "q": ["&x"]},
        "parsed_body": {"quantity": 3, "items": ["a"]},
        "truncated_body": false,
        "version": {"encoding": "protojson", "ext_authz": "v3"}
    });
    assert_eq!(input.to_json(), expected);
    let document = input.document().expect("parses");
    assert_eq!(serde_json::to_value(document).expect("json"), expected);
}

#[test]
fn form_body_and_truncation() {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    let form = b"a=1&a=2&b=x+y";
    let doc = http(
        &h,
        "/",
        Some(BodyInput {
            bytes: form,
            truncated: false,
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
        }),
    )
    .to_json();
    assert_eq!(doc["parsed_body"], json!({"a": ["1", "2"], "b": ["x y"]}));
    assert_eq!(doc["parsed_path"], json!([""]));
    assert_eq!(doc["parsed_query"], json!({}));
    assert_eq!(doc["truncated_body"], json!(false));

    // A truncated body is passed as text but not parsed.
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    let doc = http(
        &h,
        "/x/",
        Some(BodyInput {
            bytes: b"{\"a\": 1",
            truncated: true,
            content_type: None,
        }),
    )
    .to_json();
    assert_eq!(doc["truncated_body"], json!(true));
    assert_eq!(doc["parsed_body"], json!(null));
    assert_eq!(
        doc["attributes"]["request"]["http"]["body"],
        json!("{\"a\": 1")
    );
    assert_eq!(doc["parsed_path"], json!(["x", ""]));

    // Without a body there is no body; parsed_body is null and truncated_body false, as
    // OPA-Envoy always sets them.
    let doc = http(&h, "/x", None).to_json();
    assert_eq!(doc["parsed_body"], json!(null));
    assert_eq!(doc["truncated_body"], json!(false));
    assert!(doc["attributes"]["request"]["http"].get("body").is_none());
}

#[test]
fn tcp_document_and_missing_principals() {
    let input = AuthzInput {
        kind: InputKind::Tcp,
        source_address: addr("[2001:db8::1]:5000"),
        destination_address: addr("10.0.0.2:5432"),
        source_principal: None,
        destination_principal: Some("spiffe://vigil.local/ns/db/sa/postgres"),
    };
    let expected = json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "2001:db8::1", "portValue": 5000}}},
            "destination": {
                "address": {"socketAddress": {"address": "10.0.0.2", "portValue": 5432}},
                "principal": "spiffe://vigil.local/ns/db/sa/postgres"
            }
        },
        "version": {"encoding": "protojson", "ext_authz": "v3"}
    });
    assert_eq!(input.to_json(), expected);

    // A policy reading the absent principal sees undefined, not "".
    let bundle = crate::bundle(
        r#"package vigil.authz
        allow := {"allowed": false, "body": "no principal"} if not input.attributes.source.principal
        allow := true if input.attributes.source.principal == """#,
    );
    let d = bundle.evaluate(&input);
    assert_eq!(d.outcome(), "deny");
    assert_eq!(d.reason(), "no principal");
}

/// What OPA-Envoy cannot parse fails closed: the decision is an error, whatever the policy.
#[test]
fn unparseable_requests_fail_closed() {
    let allow_all = crate::bundle("package vigil.authz\nallow := true");
    let mut json = HeaderMap::new();
    json.insert("content-type", HeaderValue::from_static("application/json"));
    let nan = BodyInput {
        bytes: br#"{"quantity": NaN}"#,
        truncated: false,
        content_type: None,
    };
    let cases = [
        (
            http(&json, "/api/orders?debug=true;x=1", None),
            "query string",
        ),
        (http(&json, "/api/orders?q=%zz", None), "query string"),
        (http(&json, "/api/products/%zz", None), "request path"),
        (http(&json, "//admin/secrets", None), "request path"),
        (http(&json, "/api/orders", Some(nan)), "request body"),
    ];
    for (input, what) in cases {
        let error = input.document().expect_err("does not parse");
        assert!(error.to_string().starts_with(what), "{error}");
        let decision = allow_all.evaluate(&input);
        assert_eq!(decision.outcome(), "error", "{decision:?}");
        assert!(decision.reason().starts_with(what), "{decision:?}");
        // The display form leaves the unparseable part out instead.
        assert!(input.to_json()["attributes"].is_object());
    }
    // %2F is decoded before the path is split, as OPA-Envoy does.
    let doc = http(&json, "/api%2Fproducts", None)
        .document()
        .expect("parses");
    assert_eq!(
        serde_json::to_value(&doc).expect("json")["parsed_path"],
        json!(["api", "products"])
    );
}
