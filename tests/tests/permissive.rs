//! Permissive mode, for a workload joining the mesh before all its callers have: its
//! inbound port serves plaintext HTTP beside mutual TLS, plaintext callers have no
//! identity (policy sees none, the app gets none, a forged one is dropped), tunnels stay
//! mTLS-only, and the plaintext share is counted so an operator knows when to go strict.

use std::sync::atomic::Ordering;

use vigil_e2e::*;

/// Mesh identities may call anything; callers without one only `/public`.
const POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := false

allow if startswith(input.attributes.source.principal, "spiffe://vigil.local/")

allow if {
	not input.attributes.source.principal
	input.parsed_path == ["public"]
}
"#;

async fn plaintext(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: server\r\nX-Vigil-Peer-Identity: spiffe://vigil.local/ns/demo/sa/forged\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut out),
    )
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn permissive_inbound_serves_plaintext_without_identity_beside_mtls() {
    let policy = tempfile::tempdir().expect("policy dir");
    std::fs::write(policy.path().join("policy.rego"), POLICY).expect("policy");
    let client = WorkloadSpec::new("client", "demo");
    let mut server = WorkloadSpec::new("server", "demo");
    server.extra_args = vec!["--inbound-mode".into(), "permissive".into()];
    let strict = WorkloadSpec::new("strict", "demo");
    let mut spec = MeshSpec::new(vec![client.clone(), server.clone(), strict.clone()]).service(
        "server",
        "http",
        &["server"],
        None,
    );
    spec.policy_dir = Some(policy.path().to_path_buf());
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let hits = start_echo_app(server.app_port, "server")
        .await
        .expect("server app");
    start_echo_app(strict.app_port, "strict")
        .await
        .expect("strict app");
    for name in ["client", "server", "strict"] {
        mesh.start_proxy(name).await.expect("proxy");
    }

    // A caller outside the mesh: served, without identity, where policy allows it.
    let (status, text) = plaintext(server.inbound, "/public").await;
    assert_eq!(status, 200, "{text}\n{}", mesh.logs());
    assert!(
        text.contains("\"peer\":null") && !text.contains("forged"),
        "no identity reaches the app from plaintext, and a forged one is dropped: {text}"
    );
    let before = hits.load(Ordering::Relaxed);
    let (status, text) = plaintext(server.inbound, "/private").await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(hits.load(Ordering::Relaxed), before);

    // Mesh callers keep mutual TLS and their identity.
    let reply = http1(client.outbound, "server", "/private", &[])
        .await
        .expect("call through the mesh");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains(&client.spiffe_id()), "{}", reply.body);

    let metrics = metrics(server.metrics).await;
    assert_eq!(
        metric_value(&metrics, "vigil_inbound_plaintext_connections_total"),
        2.0,
        "{metrics}"
    );

    // The default stays strict: plaintext gets nothing.
    let (status, text) = plaintext(strict.inbound, "/public").await;
    assert_eq!(status, 0, "a strict proxy answered plaintext: {text}");
}
