//! WebSocket across the mesh between a real client and server (the Python `websockets`
//! library, tests/websocket/echo.py): the HTTP/1.1 upgrade crosses the proxy pair as an
//! HTTP/2 extended CONNECT, policy is checked on the upgrade request, and messages then
//! flow both ways with the caller's verified identity.

use std::path::PathBuf;
use std::process::Command;

use vigil_e2e::*;

/// Mesh callers may open anything but `/admin`.
const POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := false

allow if {
	startswith(input.attributes.source.principal, "spiffe://vigil.local/")
	input.attributes.request.http.method == "GET"
	not input.parsed_path[0] == "admin"
}
"#;

fn script() -> PathBuf {
    workspace_root()
        .join("tests")
        .join("websocket")
        .join("echo.py")
}

fn call(outbound: std::net::SocketAddr, path: &str) -> (serde_json::Value, String) {
    let out = Command::new("python3")
        .args([
            script().display().to_string(),
            "call".into(),
            outbound.to_string(),
            "server".into(),
            path.into(),
        ])
        .output()
        .expect("websocket client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (line, text)
}

#[tokio::test]
async fn websocket_crosses_the_mesh_under_policy() {
    require_python_module("websockets", "websockets");
    let policy = tempfile::tempdir().expect("policy dir");
    std::fs::write(policy.path().join("policy.rego"), POLICY).expect("policy");
    let client = WorkloadSpec::new("client", "demo");
    let server = WorkloadSpec::new("server", "demo");
    let mut spec = MeshSpec::new(vec![client.clone(), server.clone()]).service(
        "server",
        "http",
        &["server"],
        None,
    );
    spec.policy_dir = Some(policy.path().to_path_buf());
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let app = start_python_app(
        mesh.dir.path(),
        "websocket-server",
        &script(),
        server.app_port,
    )
    .await
    .expect("websocket-server");
    for name in ["client", "server"] {
        mesh.start_proxy(name).await.expect("proxy");
    }

    let (allowed, text) = call(client.outbound, "/chat");
    let id = client.spiffe_id();
    assert_eq!(
        allowed["replies"],
        serde_json::json!([
            format!("{id} /chat one"),
            format!("{id} /chat two"),
            format!("{id} /chat three"),
        ]),
        "{text}\napp:\n{}\n{}",
        app.output(),
        mesh.logs()
    );

    let (refused, text) = call(client.outbound, "/admin");
    assert_eq!(
        refused["refused"], 403,
        "the upgrade request is checked against policy: {text}"
    );
}
