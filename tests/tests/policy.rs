//! Rego policy through the real proxy pair: decisions reach the client, denied requests
//! never reach the application, identity comes only from the verified certificate, and
//! bundles swap under load without a failed request.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vigil_e2e::*;

const DECISION_OBJECTS: &str = r#"package vigil.authz

import rego.v1

default allow := {"allowed": false, "http_status": 403, "body": "denied by the test policy"}

allow := {
	"allowed": true,
	"headers": {"x-policy": "checked"},
	"response_headers_to_add": {"x-policy-response": "yes"},
	"request_headers_to_remove": ["x-debug"],
} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}

allow := {"allowed": false, "http_status": 418, "body": "the teapot refuses", "headers": {"x-why": "teapot"}} if {
	input.parsed_path == ["teapot"]
}

allow := {"allowed": true} if {
	input.parsed_path == ["admin"]
	input.attributes.source.principal == "spiffe://vigil.local/ns/demo/sa/admin"
}
"#;

fn write_policy(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).expect("policy dir");
    let tmp = dir.join("policy.rego.tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, dir.join("policy.rego")).expect("swap policy");
}

struct PolicyMesh {
    mesh: Mesh,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    client: WorkloadSpec,
    server: WorkloadSpec,
}

async fn mesh_with_policy(policy_dir: &Path, rule: Option<&str>) -> PolicyMesh {
    mesh_with(policy_dir, rule, "demo", 0).await
}

async fn mesh_with(
    policy_dir: &Path,
    rule: Option<&str>,
    client_namespace: &str,
    body_bytes: u32,
) -> PolicyMesh {
    mesh_with_settings(policy_dir, rule, client_namespace, body_bytes, "").await
}

async fn mesh_with_settings(
    policy_dir: &Path,
    rule: Option<&str>,
    client_namespace: &str,
    body_bytes: u32,
    policy_extra: &str,
) -> PolicyMesh {
    let mut spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", client_namespace),
        WorkloadSpec::new("server", "demo"),
    ])
    .service("server", "http", &["server"], None);
    spec.policy_dir = Some(policy_dir.to_path_buf());
    spec.policy_rule = rule.map(str::to_string);
    spec.policy_body_bytes = body_bytes;
    spec.policy_extra = policy_extra.to_string();
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let client = mesh.spec.workload("client").clone();
    let server = mesh.spec.workload("server").clone();
    let hits = start_echo_app(server.app_port, "server")
        .await
        .expect("app");
    mesh.start_proxy("client").await.expect("client proxy");
    mesh.start_proxy("server").await.expect("server proxy");
    PolicyMesh {
        mesh,
        hits,
        client,
        server,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_reach_the_client_and_denied_requests_never_reach_the_app() {
    let policies = tempfile::tempdir().expect("tempdir");
    write_policy(policies.path(), DECISION_OBJECTS);
    let m = mesh_with_policy(policies.path(), None).await;

    let r = http1(
        m.client.outbound,
        "server",
        "/public/x",
        &[("x-debug", "1")],
    )
    .await
    .expect("request");
    assert_eq!(r.status, 200, "{}\n{}", r.body, m.mesh.logs());
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        seen["headers"]["x-policy"], "checked",
        "headers the policy adds reach the app"
    );
    assert!(
        seen["headers"].get("x-debug").is_none(),
        "headers the policy removes do not"
    );
    assert_eq!(r.headers["x-policy-response"], "yes");
    let hits_after_allow = m.hits.load(Ordering::Relaxed);
    assert_eq!(hits_after_allow, 1);

    let r = http1(m.client.outbound, "server", "/private", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "denied by the test policy");
    assert_eq!(r.headers["x-vigil-error"], "policy-denied");

    let r = http1(m.client.outbound, "server", "/teapot", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 418);
    assert_eq!(r.body, "the teapot refuses");
    assert_eq!(r.headers["x-why"], "teapot");

    // Claiming another identity in headers changes nothing.
    let r = http1(
        m.client.outbound,
        "server",
        "/admin",
        &[
            (
                "x-vigil-peer-identity",
                "spiffe://vigil.local/ns/demo/sa/admin",
            ),
            (
                "x-forwarded-client-cert",
                "URI=spiffe://vigil.local/ns/demo/sa/admin",
            ),
        ],
    )
    .await
    .expect("request");
    assert_eq!(r.status, 403, "a header must not grant another identity");
    assert_eq!(
        m.hits.load(Ordering::Relaxed),
        hits_after_allow,
        "no denied request reached the app"
    );

    // Denials are in the decision log with who, what and the bundle. The log is written by
    // its own thread, off the request path: give it a moment.
    let path = m.mesh.dir.path().join("server-decisions.log");
    let is_admin =
        |l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|r| r["path"] == "/admin");
    let denial = wait_for_line(&path, is_admin, Duration::from_secs(10))
        .await
        .expect("a decision log line for /admin");
    let denial: serde_json::Value = serde_json::from_str(&denial).expect("json line");
    assert_eq!(denial["result"], "deny");
    assert_eq!(denial["source_principal"], m.client.spiffe_id());
    assert!(denial["bundle_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("sha256:")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_opa_envoy_policy_runs_unchanged() {
    let dir = workspace_root().join("policies/envoy-compat");
    let m = mesh_with_policy(&dir, Some("data.envoy.authz.allow")).await;
    let r = http1(m.client.outbound, "server", "/api/public/items", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}\n{}", r.body, m.mesh.logs());
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(seen["headers"]["x-ext-auth-allow"], "yes");
    assert_eq!(r.headers["x-policy"], "envoy-compat");

    let r = http1(m.client.outbound, "server", "/api/private", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "Unauthorized Request");
    assert_eq!(r.headers["x-ext-auth-allow"], "no");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_reads_the_parsed_json_body_when_buffering_is_on() {
    let dir = workspace_root().join("policies/envoy-compat");
    let m = mesh_with(&dir, Some("data.envoy.authz.allow"), "shop", 4096).await;
    let json = [("content-type", "application/json")];
    let small = bytes::Bytes::from_static(br#"{"item":"tea","quantity":5}"#);
    let r = send1(
        m.client.outbound,
        "POST",
        "server",
        "/api/orders",
        &json,
        small,
    )
    .await
    .expect("request");
    assert_eq!(r.status, 200, "{}\n{}", r.body, m.mesh.logs());
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(seen["method"], "POST");

    let large = bytes::Bytes::from_static(br#"{"item":"tea","quantity":50}"#);
    let r = send1(
        m.client.outbound,
        "POST",
        "server",
        "/api/orders",
        &json,
        large,
    )
    .await
    .expect("request");
    assert_eq!(r.status, 403, "{}", r.body);
}

async fn policy_version(admin: std::net::SocketAddr) -> String {
    let (_, config) = get(admin, "/config").await.expect("config");
    let config: serde_json::Value = serde_json::from_str(&config).expect("json");
    config["policy_version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_swap_every_second_under_traffic_and_a_broken_one_is_refused() {
    let policies = tempfile::tempdir().expect("tempdir");
    let variant = |n: u32| {
        format!(
            "package vigil.authz\n\nimport rego.v1\n\n# revision {n}\ndefault allow := false\n\nallow if startswith(input.attributes.source.principal, \"spiffe://vigil.local/\")\n\nrevision := {n}\n"
        )
    };
    write_policy(policies.path(), &variant(0));
    let m = mesh_with_policy(policies.path(), None).await;

    let client = pooled_client();
    let via = m.client.outbound;
    let traffic = tokio::spawn(async move {
        let (mut ok, mut failed, mut first) = (0u64, 0u64, None);
        let end = Instant::now() + Duration::from_secs(9);
        while Instant::now() < end {
            match call(&client, via, "server", "/work").await {
                Ok(r) if r.status == 200 => ok += 1,
                other => {
                    failed += 1;
                    first.get_or_insert(format!("{other:?}"));
                }
            }
        }
        (ok, failed, first)
    });
    let mut versions = std::collections::BTreeSet::new();
    for n in 1..=8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        write_policy(policies.path(), &variant(n));
        versions.insert(policy_version(m.server.admin).await);
    }
    let (ok, failed, first) = traffic.await.expect("traffic");
    assert_eq!(
        failed,
        0,
        "{failed} failed of {}: {first:?}\n{}",
        ok + failed,
        m.mesh.logs()
    );
    assert!(
        versions.len() >= 4,
        "the proxy saw only {} bundle versions: {versions:?}",
        versions.len()
    );

    // A syntax error: refused with its location; the last good bundle stays in force.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let good = policy_version(m.server.admin).await;
    write_policy(
        policies.path(),
        "package vigil.authz\n\nallow if {\n  input.attributes ==\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m
        .mesh
        .control_plane
        .output()
        .contains("policy bundle refused")
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            m.mesh.control_plane.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = m.mesh.control_plane.output();
    assert!(
        output.contains("policy.rego:"),
        "the refusal names the file and line:\n{output}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(policy_version(m.server.admin).await, good);
    let r = http1(m.client.outbound, "server", "/after-broken", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200, "traffic keeps the last good policy");
}

/// OPA-Envoy's `result` object, as its documentation writes it.
const RESULT_OBJECT: &str = r#"package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == "orders"

result["allowed"] := allow

result["headers"] := [{"x-tenant": "acme"}]

result["query_parameters_to_remove"] := ["token"]

result["query_parameters_to_set"] := {"via": "mesh"}

result["dynamic_metadata"] := {"tenant": "acme"}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_result_object_rewrites_the_query_and_its_metadata_reaches_the_access_log() {
    let policies = tempfile::tempdir().expect("tempdir");
    write_policy(policies.path(), RESULT_OBJECT);
    let client = WorkloadSpec::new("client", "demo");
    let mut server = WorkloadSpec::new("server", "demo");
    let dir = tempfile::tempdir().expect("tempdir");
    let access_log = dir.path().join("access.log");
    server.extra_args = vec!["--access-log".into(), access_log.display().to_string()];
    let mut spec = MeshSpec::new(vec![client.clone(), server.clone()]).service(
        "server",
        "http",
        &["server"],
        None,
    );
    spec.policy_dir = Some(policies.path().to_path_buf());
    spec.policy_rule = Some("data.envoy.authz.result".into());
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let hits = start_echo_app(server.app_port, "server")
        .await
        .expect("app");
    mesh.start_proxy("client").await.expect("client proxy");
    mesh.start_proxy("server").await.expect("server proxy");

    let r = http1(
        client.outbound,
        "server",
        "/orders/7?token=s3cr3t&page=2",
        &[],
    )
    .await
    .expect("request");
    assert_eq!(r.status, 200, "{}\n{}", r.body, mesh.logs());
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        seen["path"], "/orders/7?page=2&via=mesh",
        "the app gets the query the decision asked for"
    );
    assert_eq!(seen["headers"]["x-tenant"], "acme");

    // What cannot be parsed as OPA-Envoy parses it is refused, never half-evaluated.
    let before = hits.load(Ordering::Relaxed);
    for path in ["/orders/%zz", "/orders?debug=true;x=1"] {
        let r = http1(client.outbound, "server", path, &[])
            .await
            .expect("request");
        assert_eq!(r.status, 500, "{path}: {}", r.body);
        assert_eq!(r.headers["x-vigil-error"], "policy-error", "{path}");
    }
    assert_eq!(
        hits.load(Ordering::Relaxed),
        before,
        "nothing unparsed reached the app"
    );

    let line = wait_for_line(
        &access_log,
        |l| l.contains("/orders/7"),
        Duration::from_secs(10),
    )
    .await
    .expect("an access log line for /orders/7");
    let line: serde_json::Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(line["dynamic_metadata"]["tenant"], "acme", "{line}");
    assert!(!line.to_string().contains("s3cr3t"), "{line}");
}

const IN_FORCE: &str = r#"package vigil.authz

import rego.v1

default allow := {"allowed": false, "body": "closed: nothing else is open"}

allow := true if input.parsed_path[0] == "public"
"#;

/// The candidate closes /public/secret and opens /private.
const CANDIDATE: &str = r#"package vigil.authz

import rego.v1

default allow := {"allowed": false, "body": "closed: nothing else is open"}

allow := true if {
	input.parsed_path[0] == "public"
	input.parsed_path[1] != "secret"
}

allow := {"allowed": false, "body": "no_secrets: the secret is closed"} if input.parsed_path == ["public", "secret"]

allow := true if input.parsed_path == ["private"]
"#;

/// `vigil policy replay` run on a decision log; exit code and JSON report.
fn replay(log: &Path, candidate: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = std::process::Command::new(binary("vigil"))
        .args(["policy", "replay", "--format", "json", "--log"])
        .arg(log)
        .arg("--policy")
        .arg(candidate)
        .args(extra)
        .output()
        .expect("run vigil policy replay");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "replay printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// Decisions recorded with their input on live traffic replay against a candidate: the
/// report names what changes and why, and the credentials never reach the log.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_decisions_replay_against_a_candidate_policy() {
    let policies = tempfile::tempdir().expect("tempdir");
    let in_force = policies.path().join("in-force");
    let candidate = policies.path().join("candidate");
    write_policy(&in_force, IN_FORCE);
    write_policy(&candidate, CANDIDATE);
    let m = mesh_with_settings(
        &in_force,
        None,
        "demo",
        0,
        "  log_allows: true\n  record_input: {}\n",
    )
    .await;
    let token = [("authorization", "Bearer do-not-log-me")];
    for (path, status) in [
        ("/public/a", 200),
        ("/public/secret?key=hunter2", 200),
        ("/private", 403),
        ("/public/b", 200),
    ] {
        let r = http1(m.client.outbound, "server", path, &token)
            .await
            .expect("request");
        assert_eq!(r.status, status, "{path}: {}", r.body);
    }
    let log = m.mesh.dir.path().join("server-decisions.log");
    let last = |l: &str| l.contains("/public/b");
    wait_for_line(&log, last, Duration::from_secs(10))
        .await
        .expect("the last decision is logged");
    let text = std::fs::read_to_string(&log).expect("decision log");
    assert!(
        !text.contains("do-not-log-me") && !text.contains("hunter2"),
        "credentials and query values are redacted: {text}"
    );
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    assert_eq!(
        first["input"]["attributes"]["request"]["http"]["headers"]["authorization"],
        "REDACTED"
    );
    assert_eq!(
        first["input"]["attributes"]["source"]["principal"],
        m.client.spiffe_id()
    );

    let (code, report) = replay(&log, &candidate, &[]);
    assert_eq!(code, Some(2), "changes fail the replay: {report:#}");
    assert_eq!(report["replayed"], 4, "{report:#}");
    assert_eq!(report["unchanged"], 2, "{report:#}");
    let changes = report["changes"].as_array().expect("changes");
    let change = |from: &str, to: &str| {
        changes
            .iter()
            .find(|c| c["from"] == from && c["to"] == to)
            .unwrap_or_else(|| panic!("no {from} -> {to} in {report:#}"))
    };
    let closed = change("allow", "deny");
    assert_eq!(closed["rule"], "no_secrets");
    assert_eq!(closed["count"], 1);
    assert_eq!(closed["examples"][0]["path"], "/public/secret?key=REDACTED");
    assert_eq!(
        closed["examples"][0]["source_principal"],
        m.client.spiffe_id()
    );
    let opened = change("deny", "allow");
    assert_eq!(opened["rule"], "closed", "named by the recorded reason");
    assert_eq!(opened["examples"][0]["path"], "/private");

    let (code, _) = replay(&log, &candidate, &["--allow-changes"]);
    assert_eq!(code, Some(0), "--allow-changes reports without failing");
    let (code, report) = replay(&log, &in_force, &[]);
    assert_eq!(
        code,
        Some(0),
        "the policy in force changes nothing: {report:#}"
    );
    assert_eq!(report["unchanged"], 4);
}

/// Denies `/x`: the candidate beside the mesh-wide policy.
const CLOSES_X: &str = r#"package vigil.authz

import rego.v1

default allow := true

allow := {"allowed": false, "body": "no_x: /x is closing"} if input.parsed_path == ["x"]
"#;

/// Closes `/admin`: attached to `server` alone.
const CLOSES_ADMIN: &str = r#"package vigil.authz

import rego.v1

default allow := true

allow := {"allowed": false, "body": sprintf("no_admin: closed on %s, one of %d services", [data.vigil.mesh.workload.name, count(data.vigil.mesh.services)])} if {
	input.parsed_path == ["admin"]
}
"#;

/// A policy attached to one workload runs there alone; the mesh-wide one runs elsewhere
/// with a candidate beside it that is counted, logged and never enforced; `vigil check`
/// says which policy each proxy runs.
#[tokio::test(flavor = "multi_thread")]
async fn policies_attach_to_workloads_and_a_candidate_runs_beside_them() {
    let policies = tempfile::tempdir().expect("tempdir");
    let (open, candidate, strict) = (
        policies.path().join("open"),
        policies.path().join("candidate"),
        policies.path().join("strict"),
    );
    write_policy(&open, "package vigil.authz\n\nallow := true\n");
    write_policy(&candidate, CLOSES_X);
    write_policy(&strict, CLOSES_ADMIN);
    let mut spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("server", "demo"),
        WorkloadSpec::new("other", "demo"),
    ])
    .service("server", "http", &["server"], None)
    .service("other", "http", &["other"], None);
    spec.policy_dir = Some(open.clone());
    spec.policy_extra = format!("  candidate: \"{}\"\n", candidate.display());
    spec.extra_yaml = format!(
        "policies:\n  - name: server-strict\n    targets: [{{ namespace: demo, workloads: [server] }}]\n    bundle: {{ dir: \"{}\" }}\n",
        strict.display()
    );
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    for w in ["server", "other"] {
        start_echo_app(mesh.spec.workload(w).app_port, w)
            .await
            .expect("app");
    }
    for w in ["client", "server", "other"] {
        mesh.start_proxy(w).await.expect("proxy");
    }
    let via = mesh.spec.workload("client").outbound;
    let status = |host: &'static str, path: &'static str| async move {
        http1(via, host, path, &[]).await.expect("request").status
    };
    let denied = http1(via, "server", "/admin", &[]).await.expect("request");
    assert_eq!(denied.status, 403, "{}", mesh.logs());
    assert_eq!(
        denied.body, "no_admin: closed on server, one of 2 services",
        "the policy reads its workload's facts and the mesh's services"
    );
    assert_eq!(
        status("other", "/admin").await,
        200,
        "server's policy is its own"
    );
    assert_eq!(status("server", "/x").await, 200);
    assert_eq!(
        status("other", "/x").await,
        200,
        "a candidate is never enforced"
    );

    let config = |w: &str| {
        let admin = mesh.spec.workload(w).admin;
        async move {
            let (_, body) = get(admin, "/config").await.expect("config");
            serde_json::from_str::<serde_json::Value>(&body).expect("json")
        }
    };
    let (server, other) = (config("server").await, config("other").await);
    assert_eq!(server["policy_name"], "server-strict");
    assert!(server["policy_candidate"].is_null(), "{server:#}");
    assert_eq!(other["policy_name"], "default");
    assert_eq!(other["policy_candidate"]["compared"], 2, "{other:#}");
    assert_eq!(other["policy_candidate"]["allow_to_deny"], 1, "{other:#}");
    let exposition = metrics(mesh.spec.workload("other").metrics).await;
    assert_eq!(
        metric_value(
            &exposition,
            r#"vigil_policy_candidate_decisions_total{in_force="allow",candidate="deny",denied_by="no_x"}"#
        ),
        1.0,
        "{exposition}"
    );
    let log = mesh.dir.path().join("other-decisions.log");
    let line = wait_for_line(
        &log,
        |l| l.contains("\"candidate\""),
        Duration::from_secs(10),
    )
    .await
    .expect("the disagreement is logged");
    let record: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(record["path"], "/x");
    assert_eq!(record["result"], "allow");
    assert_eq!(record["candidate"]["result"], "deny");
    assert_eq!(record["candidate"]["reason"], "no_x: /x is closing");

    // The dashboard's Policy page, rendered by Chromium: each bundle with its targets, and
    // per proxy the policy it runs and how the candidate compares.
    let dashboard = mesh.spec.dashboard;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = match get(dashboard, "/api/policy").await {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|p| {
                    p["proxies"].as_array().and_then(|ps| {
                        ps.iter()
                            .find(|x| x["workload"] == "other")
                            .map(|x| x["candidate"]["compared"] == 2)
                    })
                })
                .unwrap_or(false),
            _ => false,
        };
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed other's candidate"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let dom = headless_chromium(
        &format!("http://{dashboard}/#policy"),
        &["--dump-dom".into(), "--virtual-time-budget=5000".into()],
    )
    .expect("chromium");
    let row = |class: &str, attribute: &str| {
        let start = dom
            .find(&format!("<tr class=\"{class}\" {attribute}"))
            .unwrap_or_else(|| panic!("no {class} row {attribute} in the page:\n{dom}"));
        let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
        dom[start..end].to_string()
    };
    let strict = row("bundle", "data-policy=\"server-strict\"");
    assert!(
        strict.contains("namespace demo, workloads server"),
        "{strict}"
    );
    let other_row = row("proxy-policy", "data-workload=\"other\"");
    assert!(
        other_row.contains("default") && other_row.contains("1 of 2"),
        "{other_row}"
    );
    assert!(
        row("proxy-policy", "data-workload=\"server\"").contains("server-strict"),
        "{dom}"
    );

    let out = std::process::Command::new(binary("vigil"))
        .args(["check", "--mesh"])
        .arg(mesh.dir.path().join("mesh.yaml"))
        .arg("--data-dir")
        .arg(mesh.data_dir())
        .output()
        .expect("vigil check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("server-strict sha256:")
            && report.contains("default sha256:")
            && report.contains("on 2 proxies (client, other)"),
        "check names each proxy's policy, one version for all its proxies: {report}"
    );
    assert!(
        report.contains("1 allow->deny"),
        "check reports the candidate: {report}"
    );
}
