//! Walking around request policy: a caller that may reach a service at all tries to reach
//! a path the policy forbids, or to claim another identity, by making its bytes look like
//! something other than an HTTP request (a leading CRLF, an extension-method request line
//! longer than protocol detection reads, plain garbage), or, holding a valid SVID, by
//! asking the server proxy for an opaque tunnel straight to the application's HTTP port.
//! Each must end at the proxy (403 from policy, 400 for what is no request, a refused
//! tunnel), and the application must see only the requests policy allowed, each with the
//! caller's verified identity.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_e2e::*;
use vigil_identity::{CertificateAuthority, SpiffeId, SvidStore, TlsOptions, TrustStore};

use crate::support::{raw_exchange, serial, tls_connect};

/// Mesh callers may call anything but `/admin`.
const POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := false

allow if {
	startswith(input.attributes.source.principal, "spiffe://vigil.local/")
	not admin
}

admin if input.parsed_path[0] == "admin"
"#;

const FORGED: &str = "spiffe://vigil.local/ns/demo/sa/admin";

struct Bypass {
    mesh: Mesh,
    client: WorkloadSpec,
    server: WorkloadSpec,
    /// The client proxy's listener bound to the HTTP service `server`.
    upstream: SocketAddr,
    /// The server workload's port declared as TCP (an echo app).
    tcp_port: u16,
    /// Requests that reached the server's HTTP application.
    app_hits: Arc<std::sync::atomic::AtomicU64>,
    _policy: tempfile::TempDir,
}

async fn start() -> Bypass {
    let policy = tempfile::tempdir().expect("policy dir");
    std::fs::write(policy.path().join("policy.rego"), POLICY).expect("policy");
    let mut client = WorkloadSpec::new("client", "demo");
    let mut server = WorkloadSpec::new("server", "demo");
    let tcp_port = free_port();
    server.tcp_ports = vec![tcp_port];
    let upstream = free_addr();
    client.upstreams = vec![(upstream, "server".into())];
    let mut spec = MeshSpec::new(vec![client.clone(), server.clone()])
        .service("server", "http", &["server"], None)
        .service("server-tcp", "tcp", &["server"], Some(tcp_port));
    spec.policy_dir = Some(policy.path().to_path_buf());
    let mut mesh = Mesh::start(spec).await.expect("control plane starts");
    let app_hits = start_echo_app(server.app_port, "server")
        .await
        .expect("server app");
    start_tcp_echo(tcp_port).await.expect("tcp echo app");
    for name in ["client", "server"] {
        if let Err(e) = mesh.start_proxy(name).await {
            panic!("{name} proxy did not start: {e}\n{}", mesh.logs());
        }
    }
    Bypass {
        mesh,
        client,
        server,
        upstream,
        tcp_port,
        app_hits,
        _policy: policy,
    }
}

fn request(prefix: &str, line: &str) -> Vec<u8> {
    format!("{prefix}{line}\r\nHost: server\r\nX-Vigil-Peer-Identity: {FORGED}\r\nX-Client-Spiffe-Id: {FORGED}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn no_byte_sequence_turns_an_http_service_into_an_unchecked_tunnel() {
    let _one = serial().await;
    let t = start().await;
    let hits = || t.app_hits.load(Ordering::Relaxed);
    let long_method_line = format!("PROPFIND /admin/{} HTTP/1.1", "a".repeat(2100));
    let cases: Vec<(&str, SocketAddr, Vec<u8>)> = vec![
        (
            "plain GET /admin",
            t.upstream,
            request("", "GET /admin HTTP/1.1"),
        ),
        (
            "GET /admin after one CRLF",
            t.upstream,
            request("\r\n", "GET /admin HTTP/1.1"),
        ),
        (
            "GET /admin after one CRLF, explicit outbound port",
            t.client.outbound,
            request("\r\n", "GET /admin HTTP/1.1"),
        ),
        (
            "extension method, request line over 2 KiB",
            t.upstream,
            request("", &long_method_line),
        ),
    ];
    for (what, addr, bytes) in &cases {
        let before = hits();
        let exchange = raw_exchange(*addr, bytes).await;
        assert_eq!(
            exchange.status(),
            Some(403),
            "{what}: expected the policy's 403, got:\n{}\n{}",
            exchange.text(),
            t.mesh.logs()
        );
        assert!(
            exchange.text().contains("policy-denied"),
            "{what}: {}",
            exchange.text()
        );
        assert_eq!(hits(), before, "{what} reached the application");
    }

    // Bytes that are no HTTP request at all get a 400 from the proxy, never the app.
    let before = hits();
    let garbage = raw_exchange(t.upstream, b"\x00\x01\x02 not http\r\n\r\n").await;
    assert_eq!(garbage.status(), Some(400), "garbage: {}", garbage.text());
    assert_eq!(hits(), before, "garbage reached the application");
    let metrics = metrics(t.client.metrics).await;
    assert!(
        metric_value(
            &metrics,
            "vigil_proxy_errors_total{direction=\"outbound\",reason=\"malformed-request\"}"
        ) >= 1.0,
        "malformed requests are counted:\n{metrics}"
    );

    // An allowed request reaches the app with the verified identity, not the forged one.
    let allowed = raw_exchange(t.upstream, &request("\r\n", "GET /ok HTTP/1.1")).await;
    assert_eq!(allowed.status(), Some(200), "{}", allowed.text());
    let text = allowed.text();
    assert!(
        text.contains(&t.client.spiffe_id()) && !text.contains(FORGED),
        "the app sees the caller's verified identity only: {text}"
    );
    assert!(hits() >= 1);

    // A browser page rebinding its own name to 127.0.0.1 cannot read the admin port's tap.
    let rebound = raw_exchange(
        t.client.admin,
        b"GET /tap HTTP/1.1\r\nHost: rebind.example:15000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(rebound.status(), Some(403), "{}", rebound.text());
}

/// A TLS client holding the client workload's valid SVID, as a compromised or custom
/// peer would, speaking HTTP/2 to the server proxy's inbound port.
async fn h2_to_inbound(t: &Bypass) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let ca = CertificateAuthority::load_or_generate(&t.mesh.data_dir().join("ca"), TRUST_DOMAIN)
        .expect("the control plane's CA");
    let me = SpiffeId::parse(&t.client.spiffe_id()).expect("id");
    let key = vigil_identity::testing::valid_leaf(&ca, &me)
        .expect("valid leaf")
        .certified_key()
        .expect("key");
    let store = SvidStore::new();
    store.set(key);
    let trust = TrustStore::new(TRUST_DOMAIN, ca.trust_bundle()).expect("trust store");
    let expected = SpiffeId::parse(&t.server.spiffe_id()).expect("id");
    let config = vigil_identity::mtls_client_config(
        Some(store),
        trust,
        expected,
        &TlsOptions {
            alpn: vec![b"h2".to_vec()],
            ..TlsOptions::default()
        },
    );
    let tls = tls_connect(config, t.server.inbound)
        .await
        .expect("mTLS handshake with a valid SVID");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

async fn connect_to(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    port: u16,
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("127.0.0.1:{port}"))
        .body(Empty::new())
        .expect("request");
    send.send_request(req).await.expect("CONNECT answered")
}

#[tokio::test]
async fn inbound_never_tunnels_to_the_applications_http_port() {
    let _one = serial().await;
    let t = start().await;
    let mut send = h2_to_inbound(&t).await;

    let refused = connect_to(&mut send, t.server.app_port).await;
    let status = refused.status();
    let reason = refused
        .headers()
        .get("x-vigil-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = refused.into_body().collect().await.map(|b| b.to_bytes());
    assert_eq!(
        (status.as_u16(), reason.as_str()),
        (403, "tunnel-target-refused"),
        "a tunnel to the HTTP port must be refused: {body:?}\n{}",
        t.mesh.logs()
    );
    assert_eq!(t.app_hits.load(Ordering::Relaxed), 0);

    // Control: the port the workload declares as TCP takes a tunnel.
    let accepted = connect_to(&mut send, t.tcp_port).await;
    assert_eq!(accepted.status(), 200, "{}", t.mesh.logs());
    let mut tunnel = TokioIo::new(hyper::upgrade::on(accepted).await.expect("upgraded"));
    tunnel
        .write_all(b"ping through the tunnel\n")
        .await
        .expect("write");
    let mut echoed = vec![0u8; 23];
    tunnel.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"ping through the tunnel");
}
