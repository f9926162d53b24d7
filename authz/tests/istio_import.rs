//! The Istio importer on the examples of Istio's own documentation (tests/istio_import/,
//! sources in SOURCES.md): each example is imported, compiled as the proxy would compile it,
//! and checked on the requests the documentation describes, each case quoting the sentence
//! that says what Istio decides. The tests the importer generates must pass as well.

use std::net::SocketAddr;
use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue};
use vigil_authz::{
    import_istio, run_tests_with, AuthzInput, HttpAttributes, InputKind, IstioImport,
    IstioImportOptions, PolicyBundle, PolicyFile, PolicyOptions, TestOptions, Value,
};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/istio_import")
}

fn import(file: &str) -> IstioImport {
    let yaml = std::fs::read_to_string(examples_dir().join(file)).expect("example file");
    let options = IstioImportOptions {
        source_name: file.to_string(),
        ..IstioImportOptions::default()
    };
    import_istio(&yaml, &options).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn policy_files(import: &IstioImport) -> Vec<PolicyFile> {
    import
        .files
        .iter()
        .filter(|f| !f.path.ends_with("_test.rego"))
        .cloned()
        .collect()
}

fn compile(import: &IstioImport, rule: &str) -> PolicyBundle {
    let options = PolicyOptions {
        rule: rule.to_string(),
        ..PolicyOptions::default()
    };
    PolicyBundle::compile(policy_files(import), options)
        .unwrap_or_else(|e| panic!("{e}\n{}", import.files[0].contents))
}

/// A request as the documentation describes it.
#[derive(Clone)]
struct Request {
    source: Option<String>,
    workload_namespace: &'static str,
    source_ip: &'static str,
    port: u16,
    /// `None`: a TCP connection.
    method: Option<&'static str>,
    path: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

fn get(path: &'static str) -> Request {
    Request {
        source: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
        workload_namespace: "foo",
        source_ip: "10.0.0.1",
        port: 8000,
        method: Some("GET"),
        path,
        host: "httpbin.foo:8000",
        headers: Vec::new(),
    }
}

fn tcp(port: u16) -> Request {
    Request {
        method: None,
        port,
        ..get("/")
    }
}

impl Request {
    fn method(mut self, method: &'static str) -> Request {
        self.method = Some(method);
        self
    }
    fn caller_namespace(mut self, namespace: &str) -> Request {
        self.source = Some(format!("spiffe://cluster.local/ns/{namespace}/sa/default"));
        self
    }
    fn workload_in(mut self, namespace: &'static str) -> Request {
        self.workload_namespace = namespace;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Request {
        self.headers.push((name, value));
        self
    }
    fn port(mut self, port: u16) -> Request {
        self.port = port;
        self
    }
    fn source_ip(mut self, ip: &'static str) -> Request {
        self.source_ip = ip;
        self
    }
    fn host(mut self, host: &'static str) -> Request {
        self.host = host;
        self
    }

    fn input_value(&self) -> Value {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let destination = format!(
            "spiffe://cluster.local/ns/{}/sa/httpbin",
            self.workload_namespace
        );
        let input = AuthzInput {
            kind: match self.method {
                Some(method) => InputKind::Http(HttpAttributes {
                    id: "1",
                    method,
                    path: self.path,
                    host: self.host,
                    scheme: "http",
                    protocol: "HTTP/1.1",
                    headers: &headers,
                    body: None,
                }),
                None => InputKind::Tcp,
            },
            source_address: SocketAddr::new(self.source_ip.parse().expect("ip"), 40000),
            destination_address: SocketAddr::new([10, 0, 0, 2].into(), self.port),
            source_principal: self.source.as_deref(),
            destination_principal: Some(&destination),
        };
        input.to_value()
    }
}

/// (request, allowed?, the documentation's sentence that says so).
type Case = (Request, bool, &'static str);

fn check(file: &str, cases: &[Case]) -> IstioImport {
    let import = import(file);
    let bundle = compile(&import, "data.vigil.authz.allow");
    for (request, expected, quote) in cases {
        let decision = bundle.evaluate_value(request.input_value());
        assert_eq!(
            decision.allowed(),
            *expected,
            "{file}: {} {} from {:?} to {} (port {}): {quote}\n{}",
            request.method.unwrap_or("TCP"),
            request.path,
            request.source,
            request.workload_namespace,
            request.port,
            import.files[0].contents
        );
    }
    import
}

fn untranslated_fields(import: &IstioImport) -> Vec<String> {
    import
        .untranslated
        .iter()
        .map(|u| format!("{}: {}", u.policy, u.field))
        .collect()
}

#[test]
fn allow_read_by_principal_or_namespace() {
    const DOC: &str = "It allows requests from: service account \
        cluster.local/ns/default/sa/sleep or namespace test to access the workload with: GET \
        method at paths of prefix /info or, POST method at path /data.";
    let import = check(
        "reference-allow-read-without-jwt.yaml",
        &[
            (get("/info/1"), true, DOC),
            (get("/info"), true, DOC),
            (
                get("/data").method("POST").caller_namespace("test"),
                true,
                DOC,
            ),
            (get("/info?page=2"), true, DOC),
            (get("/data").method("POST"), true, DOC),
            (
                get("/info").method("POST"),
                false,
                "Any other requests will be denied.",
            ),
            (get("/data"), false, "Any other requests will be denied."),
            (
                get("/info").caller_namespace("prod"),
                false,
                "Any other requests will be denied.",
            ),
            (
                Request {
                    source: None,
                    ..get("/info")
                },
                false,
                "principals: ... This field requires mTLS enabled",
            ),
            (
                get("/admin").workload_in("bar"),
                true,
                "\"metadata/namespace\" tells which namespace the policy applies. / If there \
                 are no ALLOW policies for the workload, allow the request.",
            ),
        ],
    );
    assert!(import.untranslated.is_empty(), "{}", import.report());
}

#[test]
fn allow_read_with_jwt_condition_is_closed() {
    let import = check(
        "reference-allow-read.yaml",
        &[(
            get("/info/1"),
            false,
            "when the request has a valid JWT token issued by https://accounts.google.com \
             (Vigil cannot check the token: the ALLOW rule is dropped, and with an ALLOW \
             policy but no match: \"Deny the request.\")",
        )],
    );
    assert_eq!(
        untranslated_fields(&import),
        ["foo/httpbin: spec.rules[0].when[0].key"]
    );
    assert!(import.files[0]
        .contents
        .contains("request.auth.claims[iss]"));
}

#[test]
fn deny_post_from_dev() {
    const DOC: &str = "It denies requests from the dev namespace to the POST method on all \
        workloads in the foo namespace.";
    check(
        "reference-deny-dev-post.yaml",
        &[
            (get("/").method("POST").caller_namespace("dev"), false, DOC),
            (get("/").caller_namespace("dev"), true, DOC),
            (get("/").method("POST").caller_namespace("prod"), true, DOC),
            (
                get("/")
                    .method("POST")
                    .caller_namespace("dev")
                    .workload_in("bar"),
                true,
                DOC,
            ),
        ],
    );
}

#[test]
fn deny_post_on_port_and_tcp() {
    const DOC: &str = "It denies all the requests with POST method on port 8080 on all \
        workloads in the foo namespace.";
    check(
        "reference-deny-post-port.yaml",
        &[
            (get("/").method("POST").port(8080), false, DOC),
            (get("/").method("POST").port(9090), true, DOC),
            (get("/").port(8080), true, DOC),
            (
                tcp(8080),
                false,
                "For a DENY rule, missing attributes are treated as matches. This means all \
                 TCP traffic on port 8080 would be denied in the example above.",
            ),
            (
                tcp(9000),
                true,
                "it is recommended to always scope DENY policies to a specific port",
            ),
        ],
    );
}

#[test]
fn audit_does_not_change_the_decision() {
    const DOC: &str = "AUDIT policies do not affect whether requests are allowed or denied \
        to the workload.";
    let import = check(
        "reference-audit.yaml",
        &[
            (get("/user/profile/me").workload_in("ns1"), true, DOC),
            (get("/other").workload_in("ns1"), true, DOC),
        ],
    );
    let audit = compile(&import, "data.vigil.authz.audit");
    let audited = |r: Request| {
        let value = audit.eval_raw(r.input_value()).expect("audit evaluates");
        serde_json::to_value(value).expect("json")
    };
    // "It will audit any GET requests to the path with the prefix /user/profile."
    assert_eq!(
        audited(get("/user/profile/me").workload_in("ns1")),
        serde_json::json!(["ns1/anyname"])
    );
    assert_eq!(
        audited(get("/user/profile/me").method("POST").workload_in("ns1")),
        serde_json::json!([])
    );
    assert!(import.notes.iter().any(|n| n.contains("app=myapi")));
}

#[test]
fn allow_nothing_allow_all_and_mesh_wide() {
    check(
        "reference-allow-nothing.yaml",
        &[
            (
                get("/"),
                false,
                "It allows nothing and effectively denies all requests to workloads in \
                 namespace foo.",
            ),
            (tcp(9000), false, "effectively denies all requests"),
            (
                get("/").workload_in("bar"),
                true,
                "the following authorization policy applies to all workloads in namespace foo",
            ),
        ],
    );
    check(
        "reference-allow-all.yaml",
        &[
            (
                get("/anything").method("DELETE"),
                true,
                "The following authorization policy allows all requests to workloads in \
                 namespace foo.",
            ),
            (tcp(1234), true, "allows all requests"),
        ],
    );
    let import = check(
        "reference-allow-nothing-mesh-wide.yaml",
        &[
            (
                get("/").workload_in("bar"),
                false,
                "The following authorization policy applies to workloads containing label \
                 version: v1 in all namespaces in the mesh. (The selector is not logic in \
                 Vigil: the bundle applies where it is attached.)",
            ),
            (get("/"), false, "applies ... in all namespaces in the mesh"),
        ],
    );
    assert!(import.notes.iter().any(|n| n.contains("version=v1")));
}

#[test]
fn dry_run_policies_are_not_enforced() {
    let import = check(
        "reference-dry-run.yaml",
        &[(
            get("/headers"),
            true,
            "to dry-run the policy without actually enforcing it",
        )],
    );
    assert_eq!(import.policies, 0);
    assert!(import.untranslated.is_empty());
}

#[test]
fn custom_action_is_reported_and_denies_what_it_covers() {
    let import = check(
        "reference-custom.yaml",
        &[
            (
                get("/admin/users"),
                false,
                "delegates the authorization check to a named extension \"my-custom-authz\" \
                 if the request path has prefix \"/admin/\" (Vigil cannot ask it: closed)",
            ),
            (
                get("/public"),
                true,
                "the extension cannot bypass the authorization decision made by ALLOW and \
                 DENY action (none here)",
            ),
        ],
    );
    assert_eq!(
        untranslated_fields(&import),
        ["istio-system/ext-authz: spec.action"]
    );
}

#[test]
fn source_and_operation_fields_and_together() {
    const OPERATION: &str = "the following operation matches if the host has suffix \
        \".example.com\" and the method is \"GET\" or \"HEAD\" and the path doesn't have \
        prefix \"/admin\".";
    check(
        "reference-source-operation.yaml",
        &[
            (get("/x").host("api.example.com"), true, OPERATION),
            (
                get("/x").method("HEAD").host("api.example.com"),
                true,
                OPERATION,
            ),
            (
                get("/x").host("API.Example.COM"),
                true,
                "hosts: ... The match is case-insensitive.",
            ),
            (get("/admin/x").host("api.example.com"), false, OPERATION),
            (
                get("/x").method("POST").host("api.example.com"),
                false,
                OPERATION,
            ),
            (get("/x").host("example.org"), false, OPERATION),
            (
                Request {
                    source: Some("spiffe://admin".into()),
                    ..get("/x").host("example.org")
                },
                false,
                "the following source matches if the principal is \"admin\" or \"dev\" and \
                 the namespace is \"prod\" or \"test\" (a principal without /ns/ has no \
                 namespace, so both cannot hold)",
            ),
        ],
    );
}

#[test]
fn explicit_deny_with_header_condition() {
    check(
        "task-deny-header.yaml",
        &[
            (
                get("/ip").header("x-token", "guest"),
                false,
                "Verify that GET requests with the HTTP header x-token: guest at path /ip \
                 are denied by the deny-method-get policy.",
            ),
            (
                get("/ip").header("x-token", "admin"),
                true,
                "Verify that GET requests with the HTTP header x-token: admin at path /ip \
                 are allowed by the allow-path-ip policy",
            ),
            (
                get("/get").header("x-token", "admin"),
                false,
                "Verify that GET requests with the HTTP header x-token: admin at path /get \
                 are denied because they don't match the allow-path-ip policy",
            ),
            (
                get("/ip"),
                false,
                "deny requests with a header value that is not admin (no header at all is \
                 not admin)",
            ),
        ],
    );
}

#[test]
fn tcp_traffic() {
    check(
        "task-tcp-allow-ports.yaml",
        &[
            (
                tcp(9000),
                true,
                "Verify that requests to port 9000 are allowed",
            ),
            (
                tcp(9001),
                true,
                "Verify that requests to port 9001 are allowed",
            ),
            (
                tcp(9002),
                false,
                "Verify that requests to port 9002 are denied.",
            ),
        ],
    );
    check(
        "task-tcp-allow-methods.yaml",
        &[
            (
                tcp(9000),
                false,
                "the rule becomes invalid when it uses an HTTP-only field (methods) for TCP \
                 traffic. Istio ignores the invalid ALLOW rule.",
            ),
            (
                tcp(9001),
                false,
                "the requests do not match any ALLOW rules",
            ),
            (
                get("/").port(9000),
                true,
                "methods: [\"GET\"], ports: [\"9000\"] (HTTP)",
            ),
        ],
    );
    check(
        "task-tcp-deny-methods.yaml",
        &[
            (
                tcp(9000),
                false,
                "Istio doesn't understand the HTTP-only fields while creating a DENY rule for \
                 tcp port and due to it's restrictive nature it denies all the traffic to the \
                 tcp ports",
            ),
            (
                tcp(9001),
                false,
                "Verify that the requests to port 9001 are denied.",
            ),
        ],
    );
    check(
        "task-tcp-deny-methods-port.yaml",
        &[
            (
                tcp(9000),
                false,
                "the request matches the ports in the above-mentioned deny policy",
            ),
            (
                tcp(9001),
                true,
                "the requests do not match the ports in the DENY policy",
            ),
        ],
    );
}

#[test]
fn ip_blocks_and_remote_ip_blocks() {
    const DOC: &str = "allow the IP addresses specified in the ipBlocks to access the ingress \
        gateway. IP addresses not in the list will be denied. The ipBlocks supports both \
        single IP address and CIDR notation.";
    let cases = [
        (get("/").source_ip("1.2.3.4"), true, DOC),
        (get("/").source_ip("5.6.7.200"), true, DOC),
        (get("/").source_ip("1.2.3.5"), false, DOC),
        (get("/").source_ip("5.6.8.1"), false, DOC),
    ];
    check("task-ingress-ip-blocks.yaml", &cases);
    // remoteIpBlocks: "A list of IP blocks, populated from X-Forwarded-For header or proxy
    // protocol. To make use of this field, you must configure the numTrustedProxies": a
    // sidecar has no trusted proxy, so the remote IP is the peer's.
    let import = check("task-ingress-remote-ip-blocks.yaml", &cases);
    assert!(import.notes.iter().any(|n| n.contains("remoteIpBlocks")));
}

#[test]
fn generated_tests_of_every_example_pass() {
    let mut files: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("examples")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    for file in files {
        let import = import(&file);
        let dir = tempfile::tempdir().expect("tempdir");
        import.write_to(dir.path()).expect("writes");
        let mut out = Vec::new();
        let summary = run_tests_with(dir.path(), &mut out, &TestOptions::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let text = String::from_utf8_lossy(&out);
        assert!(
            summary.success(),
            "{file}:\n{text}\n{}\n{}",
            import.files[0].contents,
            import.files[1].contents
        );
        assert!(summary.passed >= 1, "{file}:\n{text}");
    }
}
