//! gRPC across the mesh between a real grpcio client and server (tests/grpc/echo.py):
//! unary calls with trailers, server streaming, bidirectional streaming, an error status
//! and a deadline, each carried client → client proxy → mTLS HTTP/2 → server proxy → app
//! over HTTP/2 with the verified caller identity; a policy denial reaches the caller as
//! gRPC's PERMISSION_DENIED with the policy's message.

use std::path::PathBuf;
use std::process::Command;

use vigil_e2e::*;

/// Mesh callers may call every method but `Forbidden`.
const POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := {"allowed": false, "body": "forbidden by the test policy"}

allow := {"allowed": true} if {
	startswith(input.attributes.source.principal, "spiffe://vigil.local/")
	input.attributes.request.http.path != "/vigil.test.Echo/Forbidden"
}
"#;

fn script() -> PathBuf {
    workspace_root().join("tests").join("grpc").join("echo.py")
}

#[tokio::test]
async fn grpc_calls_of_every_kind_cross_the_mesh() {
    require_python_module("grpc", "grpcio");
    let client = WorkloadSpec::new("client", "demo");
    let server = WorkloadSpec::new("server", "demo");
    let policy = tempfile::tempdir().expect("policy dir");
    std::fs::write(policy.path().join("policy.rego"), POLICY).expect("policy");
    let mut spec = MeshSpec::new(vec![client.clone(), server.clone()]).service(
        "server",
        "http",
        &["server"],
        None,
    );
    spec.policy_dir = Some(policy.path().to_path_buf());
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let app = start_python_app(mesh.dir.path(), "grpc-server", &script(), server.app_port)
        .await
        .expect("grpc-server");
    for name in ["client", "server"] {
        mesh.start_proxy(name).await.expect("proxy");
    }

    let out = Command::new("python3")
        .args([
            script().display().to_string(),
            "call".into(),
            client.outbound.to_string(),
            "server".into(),
        ])
        .output()
        .expect("grpc client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!(
        "client stdout:\n{stdout}\nclient stderr:\n{}\napp:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.output(),
        mesh.logs()
    );
    assert!(out.status.success(), "{context}");
    let calls: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |name: &str| {
        calls
            .iter()
            .find(|c| c["call"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} call reported\n{context}"))
    };
    assert_eq!(
        find("unary")["response"],
        format!("{} hello", client.spiffe_id()),
        "{context}"
    );
    assert_eq!(find("unary")["trailer"], "kept", "{context}");
    assert_eq!(
        find("server_stream")["responses"],
        serde_json::json!(["tick-0", "tick-1", "tick-2", "tick-3", "tick-4"]),
        "{context}"
    );
    assert_eq!(
        find("bidi")["responses"],
        serde_json::json!(["echo:a", "echo:b", "echo:c"]),
        "{context}"
    );
    assert_eq!(find("fail")["code"], "NOT_FOUND", "{context}");
    assert_eq!(find("fail")["details"], "no such thing", "{context}");
    assert_eq!(find("slow")["code"], "DEADLINE_EXCEEDED", "{context}");
    assert_eq!(find("forbidden")["code"], "PERMISSION_DENIED", "{context}");
    assert_eq!(
        find("forbidden")["details"],
        "forbidden by the test policy",
        "{context}"
    );
}
