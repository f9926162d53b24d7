//! The requests of the differential suite: hand-written edge cases plus generated ones.
//!
//! Each request is kept as owned facts and turned into an input document by the same builder
//! the proxy uses ([`AuthzInput`]), so OPA sees exactly the document Vigil evaluates.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use vigil_authz::{AuthzInput, BodyInput, HttpAttributes, InputKind};

/// One request (or TCP connection) as the proxy would see it.
#[derive(Clone, Debug)]
pub struct RequestFacts {
    /// Empty for a TCP connection.
    pub method: String,
    pub target: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<(Vec<u8>, bool)>,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub source_address: SocketAddr,
}

impl RequestFacts {
    fn http(method: &str, target: &str) -> RequestFacts {
        RequestFacts {
            method: method.to_string(),
            target: target.to_string(),
            host: "orders.shop.svc".to_string(),
            headers: Vec::new(),
            body: None,
            source: Some("spiffe://vigil.local/ns/shop/sa/web".to_string()),
            destination: Some("spiffe://vigil.local/ns/shop/sa/orders".to_string()),
            source_address: "10.1.2.3:40000".parse().expect("address"),
        }
    }

    fn header(mut self, name: &str, value: &str) -> RequestFacts {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn from(mut self, principal: Option<&str>) -> RequestFacts {
        self.source = principal.map(str::to_string);
        self
    }

    fn address(mut self, address: &str) -> RequestFacts {
        self.source_address = address.parse().expect("address");
        self
    }

    fn json(self, body: &str) -> RequestFacts {
        self.header("content-type", "application/json")
            .body(body.as_bytes(), false)
    }

    fn body(mut self, bytes: &[u8], truncated: bool) -> RequestFacts {
        self.body = Some((bytes.to_vec(), truncated));
        self
    }

    fn tcp(principal: Option<&str>) -> RequestFacts {
        RequestFacts {
            method: String::new(),
            ..RequestFacts::http("", "").from(principal)
        }
    }

    /// Calls `f` with the facts as the proxy passes them to the policy engine.
    pub fn with_input<T>(&self, f: impl FnOnce(&AuthzInput<'_>) -> T) -> T {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let kind = if self.method.is_empty() {
            InputKind::Tcp
        } else {
            InputKind::Http(HttpAttributes {
                id: "oracle-1",
                method: &self.method,
                path: &self.target,
                host: &self.host,
                scheme: "https",
                protocol: "HTTP/1.1",
                headers: &headers,
                body: self.body.as_ref().map(|(bytes, truncated)| BodyInput {
                    bytes,
                    truncated: *truncated,
                    content_type: None,
                }),
            })
        };
        f(&AuthzInput {
            kind,
            source_address: self.source_address,
            destination_address: "10.1.9.9:8080".parse().expect("address"),
            source_principal: self.source.as_deref(),
            destination_principal: self.destination.as_deref(),
        })
    }
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn bearer(claims: &str) -> String {
    format!(
        "Bearer {}.{}.c2ln",
        b64url(br#"{"alg":"HS256"}"#),
        b64url(claims.as_bytes())
    )
}

/// Edge cases chosen by hand: each one exercises something a policy or the input builder
/// could get wrong.
pub fn hand_written() -> Vec<RequestFacts> {
    let r = RequestFacts::http;
    vec![
        r("GET", "/healthz"),
        r("POST", "/healthz"),
        r("GET", "/metrics?x=1").from(None),
        r("GET", "/admin/users").from(None),
        r("GET", "/admin/users").header("x-role", "admin"),
        r("GET", "/admin").header("x-role", "guest"),
        r("DELETE", "/admin/users/7").header("x-role", "admin"),
        r("GET", "/api/public/status").from(None),
        r("GET", "/public/docs/index.json").from(Some("spiffe://evil.example/ns/shop/sa/web")),
        r("GET", "/api/orders/42/items?page=2&limit=5&sort=asc"),
        // Query values OPA's to_number reads by Go's rules (and format_int, ceil after it).
        r("GET", "/api/orders?limit=%2012"),
        r("GET", "/api/orders?limit=1e3"),
        r("GET", "/api/orders?limit=-0.5"),
        r("GET", "/api/orders?limit=0x1p4"),
        r("GET", "/api/orders?limit=1_000"),
        r("GET", "/api/orders?limit=Inf"),
        r("GET", "/api/orders?limit=4294967296"),
        r("GET", "/STRASSE/%C3%9Fe.txt?limit=%CE%A3"),
        r("GET", "/api/orders?tier=gold&debug=true&_x=1"),
        r("GET", "/api/orders?a=1&a=2&b&=x&c="),
        r("GET", "/healthz/../admin"),
        r("GET", "/%2e%2e/x%20y"),
        r("GET", "/api%2Fproducts"),
        r("GET", "/api/products/%zz"),
        r("GET", "/api/orders?debug=true;x=1"),
        r("GET", "/api/orders?q=%zz&page=1"),
        r("GET", "/caf%C3%A9/men%C3%BC?name=J%C3%BCrgen+M"),
        r("GET", "/a+b/c?x=a+b&y=%20&z=%2B"),
        // Non-ASCII digits, letters and spaces, which Go's \d, \w and \s do not match.
        r("GET", "/api/v%D9%A3/orders"),
        r("GET", "/api/v2/orders"),
        r("GET", "/api/v2/%C3%A9t%C3%A9"),
        r("GET", "/public/a%C2%A0b"),
        r("GET", "/"),
        r("GET", "/api/"),
        r("GET", "///api//orders//"),
        r("GET", "//admin/secrets"),
        r("GET", "/api/orders#fragment?x=1"),
        r("OPTIONS", "*"),
        r("PATCH", "/api/orders/42").json(r#"{"status":"shipped"}"#),
        r("POST", "/api/orders")
            .json(r#"{"items":[{"quantity":5},{"quantity":7}],"user":{"name":"ann"}}"#),
        r("POST", "/api/orders")
            .json(r#"{"items":[{"quantity":50},{"quantity":70.5}],"user":{"name":""}}"#),
        r("POST", "/api/orders").json(r#"{"items":[],"user":null}"#),
        r("POST", "/api/orders").json(r#"{"items":[{"quantity":1e3},{"quantity":-2}]}"#),
        r("POST", "/api/orders").json(r#"{"quantity": NaN}"#),
        r("POST", "/api/orders").json(r#"{"items": [1, 2"#),
        r("POST", "/api/orders").json("   "),
        r("POST", "/api/orders").json(""),
        r("POST", "/api/orders").json("null"),
        r("POST", "/api/orders").json(r#"["a", 1, true, null, {"k": [1]}]"#),
        r("POST", "/api/orders").json(r#""just a string""#),
        r("POST", "/api/orders")
            .header("content-type", "application/json")
            .body(br#"{"items":[{"quantity":1}"#, true),
        r("POST", "/form")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b"a=1&a=2&b=x+y&c=%41", false),
        r("POST", "/form")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b"a=1;b=2", false),
        r("POST", "/upload")
            .header("content-type", "text/plain")
            .body(b"hello", false),
        r("PUT", "/api/orders/1")
            .header("x-priority", "urgent")
            .json(r#"{"items":[{"quantity":2}]}"#),
        r("GET", "/api/orders").header("x-priority", "urgent"),
        r("GET", "/secret/plans").header("x-tenant", "acme"),
        r("TRACE", "/secret"),
        r("GET", "/api/orders")
            .header(
                "authorization",
                &bearer(r#"{"role":"admin","exp":4102444800}"#),
            )
            .header("x-tenant", "shop"),
        r("GET", "/api/orders").header(
            "authorization",
            &bearer(r#"{"role":"viewer","scopes":["read"],"exp":10}"#),
        ),
        r("GET", "/api/orders").header("authorization", "Bearer not.a.jwt"),
        r("GET", "/api/orders").header("authorization", "Bearer letmein"),
        r("GET", "/api/orders").header("x-rate", "exceeded"),
        r("GET", "/api/items/items")
            .header("x-forward-user", "ann")
            .header("x-forward-team", "ops")
            .header("x-debug", "1"),
        r("GET", "/api/orders")
            .header("x-client-version", "v1.10.3")
            .header("x-size", "10KB"),
        r("GET", "/api/orders")
            .header("x-client-version", "1.2.0-rc.1")
            .header("x-size", "1.5Mi"),
        r("GET", "/api/orders").header("x-client-version", "banana"),
        // Values OPA's time.parse_rfc3339_ns and semver.is_valid read by Go's rules.
        r("GET", "/api/orders?a=x%2Ay&b=~")
            .header("x-expires", "2030-01-01T00:00:00z")
            .header("x-client-version", "1.2.3-"),
        r("GET", "/api/orders")
            .header("x-expires", "2030-01-01T1:00:00,5+24:00")
            .header("x-client-version", "01.2.3+build"),
        r("GET", "/api/orders")
            .header("x-expires", "2023-11-14T22:13:20.000000001Z")
            .header("x-client-version", "V1.0.0"),
        r("GET", "/api/orders").header("x-expires", "2030-02-29T00:00:00Z"),
        r("GET", "/api/orders")
            .header("x-stamp", "new-year-eve")
            .header("x-pattern", "^a+$")
            .header("x-cidr", "10.0.0.0/33"),
        r("GET", "/api/orders").header("x-stamp", "before-epoch"),
        r("GET", "/api/orders").header("x-stamp", "epoch"),
        r("GET", "/api/orders").header("x-stamp", "unknown"),
        r("GET", "/api/orders")
            .header("x-data", r#"{"k": [1, 2]}"#)
            .header("x-a", "1")
            .header("x-b", "2"),
        r("GET", "/api/orders")
            .header("x-data", "aGVsbG8=")
            .header("x-a", "1"),
        r("GET", "/api/orders")
            .header("x-kind", "internal")
            .header("user-agent", "  Mozilla/5.0 (X11; Linux) Gecko  "),
        r("GET", "/api/orders")
            .header("accept", "text/html")
            .header("accept", "application/json")
            .header("x-long", &"y".repeat(80)),
        r("GET", "/%FF/x"),
        r("GET", "/api/orders")
            .from(Some("spiffe://vigil.local/ns/ops/sa/admin"))
            .address("[fd00::17]:5000"),
        r("GET", "/api/orders").address("[::ffff:192.168.1.2]:5000"),
        r("POST", "/orders").from(Some("spiffe://vigil.local/ns/frontend/sa/ui")),
        r("GET", "/products").from(Some("spiffe://vigil.local/ns/frontend/sa/ui")),
        r("GET", "/products").from(Some("spiffe://vigil.local/bogus")),
        RequestFacts::tcp(Some("spiffe://vigil.local/ns/shop/sa/web")),
        RequestFacts::tcp(None),
        RequestFacts::tcp(Some("spiffe://evil.example/ns/shop/sa/web")).address("8.8.8.8:53"),
    ]
    .into_iter()
    .chain(signed_tokens())
    .collect()
}

/// Requests carrying the tokens of `policies/jwt-claims`'s tests, signed with the keys of its
/// data (valid, expired, tampered, of another key or issuer, ...), from the tenant's namespace
/// and from another one, so that OPA and Vigil verify real signatures.
fn signed_tokens() -> Vec<RequestFacts> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/jwt-claims");
    let tests = std::fs::read_to_string(dir.join("policy_test.rego")).expect("jwt-claims tests");
    let mut out = Vec::new();
    for line in tests.lines() {
        let Some((_, token)) = line
            .trim()
            .strip_suffix("\",")
            .and_then(|l| l.split_once(": \""))
        else {
            continue;
        };
        for principal in [
            "spiffe://vigil.local/ns/acme/sa/console",
            "spiffe://vigil.local/ns/shop/sa/web",
        ] {
            out.push(
                RequestFacts::http("GET", "/reports")
                    .from(Some(principal))
                    .header("authorization", &format!("Bearer {token}"))
                    .header("x-tenant", "acme"),
            );
        }
    }
    assert!(
        out.len() >= 20,
        "tokens of jwt-claims/policy_test.rego not found"
    );
    out
}

/// A small deterministic generator (xorshift64*), so every run compares the same requests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Requests assembled at random from realistic parts (methods, path segments, query
/// parameters, headers, identities, bodies).
pub fn generated(count: usize) -> Vec<RequestFacts> {
    const METHODS: &[&str] = &[
        "GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH",
    ];
    const SEGMENTS: &[&str] = &[
        "api",
        "public",
        "admin",
        "orders",
        "users",
        "42",
        "7",
        "items",
        "status",
        "healthz",
        "secret",
        "v1",
        "products",
        "x%20y",
        "caf%C3%A9",
        "",
        "..",
        "Upper",
        "a.b-c_d",
        "verylongsegment",
    ];
    const PARAMS: &[&str] = &[
        "page",
        "limit",
        "sort",
        "q",
        "debug",
        "tier",
        "n",
        "token",
        "_internal",
        "a%20b",
    ];
    const VALUES: &[&str] = &[
        "1",
        "2",
        "10",
        "true",
        "yes",
        "gold",
        "x+y",
        "%C3%A9",
        "",
        "abcdefghijklmnopqrstuv",
    ];
    const PRINCIPALS: &[&str] = &[
        "spiffe://vigil.local/ns/shop/sa/web",
        "spiffe://vigil.local/ns/ops/sa/admin",
        "spiffe://vigil.local/ns/frontend/sa/ui",
        "spiffe://vigil.local/ns/acme/sa/console",
        "spiffe://evil.example/ns/shop/sa/web",
        "spiffe://vigil.local/bogus",
    ];
    const ADDRESSES: &[&str] = &[
        "10.1.2.3:1000",
        "192.168.7.7:2000",
        "8.8.4.4:3000",
        "[fd00::1]:4000",
    ];
    const BODIES: &[&str] = &[
        r#"{"items":[{"quantity":3},{"quantity":4}],"user":{"name":"bo"}}"#,
        r#"{"items":[{"quantity":99.5}],"user":{"name":"al"}}"#,
        r#"{"user":{"name":""},"items":"none"}"#,
        r#"[1,2,3]"#,
        r#"true"#,
    ];
    let mut rng = Rng(0x05ee_d0f0_ac1e);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let method = rng.pick(METHODS);
        let depth = 1 + rng.below(4);
        let mut target = String::new();
        for _ in 0..depth {
            target.push('/');
            target.push_str(rng.pick(SEGMENTS));
        }
        if rng.chance(50) {
            let pairs = 1 + rng.below(3);
            let query: Vec<String> = (0..pairs)
                .map(|_| format!("{}={}", rng.pick(PARAMS), rng.pick(VALUES)))
                .collect();
            target.push('?');
            target.push_str(&query.join("&"));
        }
        let mut facts = RequestFacts::http(method, &target);
        facts.source = if rng.chance(15) {
            None
        } else {
            Some(rng.pick(PRINCIPALS).to_string())
        };
        facts.source_address = rng.pick(ADDRESSES).parse().expect("address");
        if rng.chance(30) {
            facts = facts.header("x-role", rng.pick(&["admin", "guest", "viewer"]));
        }
        if rng.chance(25) {
            facts = facts.header("x-tenant", rng.pick(&["shop", "acme", ""]));
        }
        if rng.chance(15) {
            facts = facts.header("x-debug", "1");
        }
        if rng.chance(20) {
            facts = facts.header("user-agent", rng.pick(&["Mozilla/5.0", "curl/8.4.0", "x"]));
        }
        if rng.chance(10) {
            facts = facts.header("x-priority", "urgent");
        }
        if matches!(method, "POST" | "PUT" | "PATCH") && rng.chance(70) {
            facts = facts.json(rng.pick(BODIES));
        }
        out.push(facts);
    }
    out
}
