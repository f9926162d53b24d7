//! Bad TLS at the inbound mTLS port: plaintext, garbage, a TLS 1.2-only client, and
//! client certificates from a foreign CA, expired, or with two URI SANs. Each is refused
//! during the handshake and counted by reason in `vigil_tls_handshake_failures_total`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_identity::{testing, SpiffeId};

use crate::support::*;

/// Sends a request over an established TLS session and says whether anything came back
/// (TLS 1.3 client-auth failures surface after the client's side of the handshake).
async fn served(config: Arc<rustls::ClientConfig>, pair: &Pair) -> Result<(), String> {
    let mut tls = tls_connect(config, pair.server.inbound)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /tls HTTP/1.1\r\nhost: server\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// A client that offers only TLS 1.2 (and trusts the mesh CA).
fn tls12_only(pair: &Pair) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for root in pair.ca().trust_bundle().roots() {
        let _ = roots.add(root.clone());
    }
    let config = rustls::ClientConfig::builder_with_provider(vigil_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("ring does TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Bytes that are not TLS, then whether the proxy answered anything.
async fn not_tls(pair: &Pair, bytes: &[u8]) -> Exchange {
    let mut tcp = TcpStream::connect(pair.server.inbound)
        .await
        .expect("connect");
    let _ = tcp.write_all(bytes).await;
    read_until_closed(&mut tcp, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_is_refused_and_counted_while_the_mesh_keeps_serving() {
    let _one_at_a_time = serial().await;
    let mut pair = Pair::start(PairOptions::default()).await;
    let steady = Steady::start(pair.client.outbound, "server");
    let metrics = pair.server.metrics;
    let ca = pair.ca();
    let me = SpiffeId::parse(&pair.client.spiffe_id()).expect("id");
    let other = SpiffeId::parse("spiffe://vigil.local/ns/demo/sa/other").expect("id");

    let good = client_svid(&pair);
    assert_eq!(
        served(mesh_client(Some(good), &pair, &[]), &pair).await,
        Ok(()),
        "the baseline: a valid SVID is served"
    );

    let mut problems = Vec::new();
    let mut expect_refused = |what: &str, result: Result<(), String>| {
        if result.is_ok() {
            problems.push(format!("{what}: served"));
        }
    };
    let elsewhere = SpiffeId::parse("spiffe://evil.example/ns/demo/sa/client").expect("id");
    // Leaf and three more certificates: over the default depth of three.
    let padded = testing::valid_leaf(&ca, &me).map(|leaf| {
        let root = ca.trust_bundle().to_pem();
        testing::TestCredential {
            chain_pem: format!("{}{root}{root}{root}", leaf.chain_pem),
            key_pem: leaf.key_pem,
        }
    });
    let bad_certs = [
        ("foreign CA", testing::foreign_ca_leaf(&me), "unknown-ca"),
        (
            "another trust domain, signed by our CA",
            testing::other_trust_domain_leaf(&ca, &elsewhere),
            "wrong-trust-domain",
        ),
        (
            "a CA certificate as the leaf",
            testing::ca_as_leaf(&ca, &me),
            "ca-as-leaf",
        ),
        (
            "a chain longer than the depth limit",
            padded,
            "chain-too-long",
        ),
        ("expired", testing::expired_leaf(&ca, &me), "expired"),
        (
            "two URI SANs",
            testing::two_uri_sans_leaf(&ca, &me, &other),
            "several-uri-sans",
        ),
    ];
    let mut reasons = Vec::new();
    for (what, credential, reason) in bad_certs {
        let before = handshake_failures(metrics, reason).await;
        let key = credential
            .expect("credential")
            .certified_key()
            .expect("key");
        expect_refused(
            what,
            served(mesh_client(Some(key), &pair, &[]), &pair).await,
        );
        reasons.push((what, reason, before));
    }

    let before = handshake_failures(metrics, "protocol-version").await;
    let result = tls_connect(tls12_only(&pair), pair.server.inbound).await;
    expect_refused(
        "a TLS 1.2-only client",
        result.map(|_| ()).map_err(|e| e.to_string()),
    );
    reasons.push(("a TLS 1.2-only client", "protocol-version", before));

    let before = handshake_failures(metrics, "not-tls").await;
    let plaintext = not_tls(&pair, b"GET / HTTP/1.1\r\nhost: server\r\n\r\n").await;
    let garbage: Vec<u8> = (0u32..2048)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let noise = not_tls(&pair, &garbage).await;
    for (what, got) in [("plaintext HTTP", &plaintext), ("garbage bytes", &noise)] {
        if !got.closed || got.text().contains("HTTP/1.1 ") {
            problems.push(format!(
                "{what}: not closed without an HTTP answer: {got:?}"
            ));
        }
    }
    let not_tls_count = settled_failures(metrics, "not-tls", before + 2.0).await - before;
    if not_tls_count != 2.0 {
        problems.push(format!(
            "plaintext and garbage are counted as reason=\"not-tls\": {not_tls_count}\n{}",
            vigil_e2e::metrics(metrics).await
        ));
    }
    for (what, reason, before) in reasons {
        let after = settled_failures(metrics, reason, before + 1.0).await;
        if after != before + 1.0 {
            problems.push(format!(
                "{what}: reason=\"{reason}\" went {before} -> {after}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        pair.app.started("/tls"),
        1,
        "only the valid client reached the app"
    );
    assert!(pair.proxy("server").running());
    steady.finish(|| pair.mesh.logs()).await;
}
