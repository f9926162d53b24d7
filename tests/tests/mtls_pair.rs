//! The foundation, end to end: a real control plane and real proxies (processes) carry
//! traffic between two applications over mutual TLS on loopback.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_e2e::*;
use vigil_identity::{SpiffeId, SvidStore, TlsOptions, TrustBundle, TrustStore};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_and_http2_reach_the_server_with_the_callers_verified_identity() {
    let mesh = running_echo_pair().await;
    let client = mesh.spec.workload("client").clone();

    // HTTP/1.1 from the app, with a forged identity header that must not survive.
    let r = http1(
        client.outbound,
        "server",
        "/hello?x=1",
        &[(
            "x-vigil-peer-identity",
            "spiffe://vigil.local/ns/demo/sa/admin",
        )],
    )
    .await
    .expect("request through the pair");
    assert_eq!(r.status, 200, "{}\n{}", r.body, mesh.logs());
    let body = json(&r.body);
    assert_eq!(body["app"], "server");
    assert_eq!(body["path"], "/hello?x=1");
    assert_eq!(
        body["peer"],
        client.spiffe_id(),
        "the server sees the client's SPIFFE ID"
    );
    assert_eq!(body["headers"]["host"], "server");

    // HTTP/2 with prior knowledge from the app.
    let r = http2(client.outbound, "server.demo.svc.cluster.local", "/h2")
        .await
        .expect("h2 request");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r.body)["peer"], client.spiffe_id());

    // An unknown service is the proxy's own answer, with its reason.
    let r = http1(client.outbound, "nowhere", "/", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-vigil-error"], "unknown-service");

    // A method outside the standard nine (WebDAV) is still HTTP: routed by Host, with
    // the caller's identity, not tunnelled as opaque bytes.
    let mut tcp = tokio::net::TcpStream::connect(client.outbound)
        .await
        .expect("connect");
    tcp.write_all(
        b"PROPFIND /calendars/ann HTTP/1.1\r\nHost: server\r\nDepth: 1\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let body = json(body);
    assert_eq!(body["method"], "PROPFIND");
    assert_eq!(body["peer"], client.spiffe_id());
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_tcp_is_tunnelled_over_mtls() {
    let (mesh, upstream) = tcp_echo_mesh(&[]).await.expect("a pair with a TCP service");

    let mut tcp = tokio::net::TcpStream::connect(upstream)
        .await
        .expect("connect");
    // Not HTTP: binary bytes, then a second write on the same connection.
    for message in [&b"\x00\x01binary ping\xff"[..], b"second message"] {
        tcp.write_all(message).await.expect("write");
        let mut buf = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("echo timed out\n{}", mesh.logs()))
            .expect("read");
        assert_eq!(buf, message);
    }
}

/// A client TLS config presenting `credential` to the server proxy's inbound port.
fn client_with(
    credential: Option<Arc<rustls::sign::CertifiedKey>>,
    trust: &TrustBundle,
    server: &WorkloadSpec,
) -> Arc<rustls::ClientConfig> {
    let store = credential.map(|key| {
        let s = SvidStore::new();
        s.set(key);
        s
    });
    let trust = TrustStore::new(TRUST_DOMAIN, trust.clone()).expect("trust store");
    let expected = SpiffeId::parse(&server.spiffe_id()).expect("id");
    vigil_identity::mtls_client_config(store, trust, expected, &TlsOptions::default())
}

async fn handshake(config: Arc<rustls::ClientConfig>, server: &WorkloadSpec) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(server.inbound)
        .await
        .map_err(|e| e.to_string())?;
    let name = vigil_identity::server_name_for(&SpiffeId::parse(&server.spiffe_id()).expect("id"));
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 client auth failures arrive after the client's handshake completes:
    // send a request and see whether the server answers or hangs up.
    tls.write_all(b"GET / HTTP/1.1\r\nhost: server\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_clients_are_refused_and_the_proxy_keeps_serving() {
    let mesh = running_echo_pair().await;
    let server = mesh.spec.workload("server").clone();
    let client = mesh.spec.workload("client").clone();
    let ca = vigil_identity::CertificateAuthority::load_or_generate(
        &mesh.data_dir().join("ca"),
        TRUST_DOMAIN,
    )
    .expect("the control plane's CA");
    let trust = ca.trust_bundle();
    let me = SpiffeId::parse(&client.spiffe_id()).expect("id");
    use vigil_identity::testing;

    let good = testing::valid_leaf(&ca, &me)
        .expect("valid")
        .certified_key()
        .expect("key");
    assert_eq!(
        handshake(client_with(Some(good), &trust, &server), &server).await,
        Ok(())
    );

    let refused = [
        ("foreign CA", testing::foreign_ca_leaf(&me)),
        ("expired", testing::expired_leaf(&ca, &me)),
        (
            "two URI SANs",
            testing::two_uri_sans_leaf(
                &ca,
                &me,
                &SpiffeId::parse("spiffe://vigil.local/ns/demo/sa/x").expect("id"),
            ),
        ),
        ("CA as leaf", testing::ca_as_leaf(&ca, &me)),
    ];
    for (what, cred) in refused {
        let key = cred.expect("credential").certified_key().expect("key");
        let result = handshake(client_with(Some(key), &trust, &server), &server).await;
        assert!(
            result.is_err(),
            "{what}: a bad client certificate was accepted"
        );
    }
    let result = handshake(client_with(None, &trust, &server), &server).await;
    assert!(
        result.is_err(),
        "a client without a certificate was accepted"
    );

    // Plaintext HTTP straight at the mTLS port.
    let mut tcp = tokio::net::TcpStream::connect(server.inbound)
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: server\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the proxy answers or closes")
        .unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("200"),
        "plaintext got an answer"
    );

    // Everyone else is still served.
    let r = http1(client.outbound, "server", "/still-there", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    let exposition = metrics(server.metrics).await;
    for reason in [
        "unknown-ca",
        "expired",
        "several-uri-sans",
        "ca-as-leaf",
        "no-client-cert",
    ] {
        assert_eq!(
            metric_value(
                &exposition,
                &format!("vigil_tls_handshake_failures_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "handshake failure {reason} is counted:\n{exposition}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_the_wrong_identity_is_refused_by_the_caller() {
    let spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("server", "demo"),
        WorkloadSpec::new("impostor", "demo"),
    ])
    .service("server", "http", &["server"], None);
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let impostor = mesh.spec.workload("impostor").clone();
    let server_inbound = mesh.spec.workload("server").inbound;
    let hits = start_echo_app(impostor.app_port, "impostor")
        .await
        .expect("app");
    mesh.start_proxy("client").await.expect("client proxy");
    // A valid mesh identity, but not the one discovery expects at that address.
    mesh.start_proxy_as(&impostor, server_inbound)
        .await
        .expect("impostor proxy");

    let client = mesh.spec.workload("client").clone();
    let r = http1(client.outbound, "server", "/secret", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.headers["x-vigil-error"], "peer-identity-mismatch");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "nothing reached the impostor's app"
    );
}

async fn sign(
    mesh: &Mesh,
    token: &str,
    csr_der: Vec<u8>,
) -> Result<vigil_api::SignResponse, tonic::Status> {
    let bundle = TrustBundle::from_pem(
        &std::fs::read_to_string(mesh.data_dir().join("trust-bundle.pem")).expect("bundle"),
    )
    .expect("bundle parses");
    let cp =
        SpiffeId::parse("spiffe://vigil.local/ns/vigil-system/sa/vigil-control-plane").expect("id");
    let tls = vigil_identity::mtls_client_config(
        None,
        TrustStore::new(TRUST_DOMAIN, bundle).expect("trust"),
        cp.clone(),
        &TlsOptions {
            alpn: vec![b"h2".to_vec()],
            ..TlsOptions::default()
        },
    );
    let channel = vigil_proxy::control::control_plane_client::connect(mesh.spec.identity, tls, &cp)
        .await
        .expect("channel to the identity service");
    vigil_api::identity::IdentityClient::new(channel)
        .sign(vigil_api::SignRequest {
            csr_der,
            token: token.into(),
            kind: vigil_api::TokenKind::Join as i32,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_decides_the_identity_never_the_csr() {
    let mesh = Mesh::start(echo_pair()).await.expect("control plane");
    let client = mesh.spec.workload("client").clone();
    let server = mesh.spec.workload("server").clone();

    // A CSR that asks for the server's identity, with the client's token.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(server.spiffe_id()).expect("uri"),
    )];
    let csr = params.serialize_request(&key).expect("csr").der().to_vec();

    let issued = sign(&mesh, &client.token, csr.clone())
        .await
        .expect("signed");
    assert_eq!(issued.spiffe_id, client.spiffe_id());
    let leaf = vigil_identity::SvidInfo::from_der(&issued.cert_chain_der[0]).expect("svid");
    assert_eq!(
        leaf.spiffe_id.to_string(),
        client.spiffe_id(),
        "the certificate carries the token's identity"
    );

    let wrong = sign(&mesh, "not-a-token-of-this-mesh", csr.clone())
        .await
        .expect_err("refused");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(
        wrong.message().contains("join token"),
        "{}",
        wrong.message()
    );

    let garbage = sign(&mesh, &client.token, b"not a csr".to_vec())
        .await
        .expect_err("refused");
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
}

/// Sends requests back to back for `duration`, returning (ok, failed, first failures).
async fn steady_traffic(via: std::net::SocketAddr, duration: Duration) -> (u64, u64, Vec<String>) {
    let client = pooled_client();
    let (mut ok, mut failed, mut failures) = (0u64, 0u64, vec![]);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        match call(&client, via, "server", "/steady").await {
            Ok(r) if r.status == 200 => ok += 1,
            other => {
                failed += 1;
                if failures.len() < 5 {
                    failures.push(format!("{other:?}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, failed, failures)
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_renew_under_traffic_without_losing_a_request() {
    let mut spec = echo_pair();
    spec.lifetime = "10s".into();
    let mesh = running_echo_pair_of(spec).await;
    let client = mesh.spec.workload("client").clone();
    let server = mesh.spec.workload("server").clone();
    let (_, before) = get(server.admin, "/certs").await.expect("certs");
    let serial_before = json(&before)["serial"].clone();

    let (ok, failed, failures) = steady_traffic(client.outbound, Duration::from_secs(60)).await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {failures:?}\n{}",
        ok + failed,
        mesh.logs()
    );
    assert!(ok > 100, "only {ok} requests went through");

    for w in [&client, &server] {
        let (_, certs) = get(w.admin, "/certs").await.expect("certs");
        let certs = json(&certs);
        assert!(
            certs["renewals"].as_u64().unwrap_or(0) >= 5,
            "{} renewed too few times: {certs}",
            w.name
        );
        // Renewals reuse the connection to the identity service: one handshake for it
        // and one for discovery, however many certificates were issued.
        let exposition = metrics(w.metrics).await;
        let handshakes: f64 = exposition
            .lines()
            .filter(|l| {
                l.starts_with("vigil_tls_handshakes_total{")
                    && l.contains(r#"direction="control_plane""#)
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        assert!(
            (2.0..=3.0).contains(&handshakes),
            "{}: {handshakes} control-plane handshakes for {} renewals",
            w.name,
            certs["renewals"]
        );
        assert!(certs.get("private_key").is_none() && !certs.to_string().contains("PRIVATE KEY"));
    }
    let (_, after) = get(server.admin, "/certs").await.expect("certs");
    assert_ne!(
        json(&after)["serial"],
        serial_before,
        "the serving certificate changed"
    );

    // Dozens of keys made and certificates issued: no private key reached a log or an
    // admin endpoint, and the CA key file is readable by its owner only.
    let ca_key_path = mesh.data_dir().join("ca").join("ca-key.pem");
    let ca_key = std::fs::read_to_string(&ca_key_path).expect("the CA key file");
    let mode = std::fs::metadata(&ca_key_path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("metadata");
    assert_eq!(mode, 0o600, "CA key file mode {mode:o}");
    let key_lines: Vec<&str> = ca_key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_lines.is_empty(), "the CA key file holds a PEM key");
    let mut exposed = mesh.logs();
    for w in [&client, &server] {
        for path in ["/certs", "/config"] {
            let (_, body) = get(w.admin, path).await.expect("admin");
            exposed += &body;
        }
    }
    assert!(
        !exposed.contains("PRIVATE KEY"),
        "a private key appeared in a log or an admin endpoint"
    );
    for line in key_lines {
        assert!(
            !exposed.contains(line),
            "part of the CA key appeared in a log or an admin endpoint"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_keeps_flowing_while_the_control_plane_restarts() {
    let mut mesh = running_echo_pair().await;
    let client = mesh.spec.workload("client").clone();
    let traffic = tokio::spawn(steady_traffic(client.outbound, Duration::from_secs(12)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    mesh.stop_control_plane();
    tokio::time::sleep(Duration::from_secs(5)).await;
    mesh.restart_control_plane()
        .await
        .expect("control plane restarts");
    let (ok, failed, failures) = traffic.await.expect("traffic task");
    assert_eq!(
        failed,
        0,
        "{failed} requests failed: {failures:?}\n{}",
        mesh.logs()
    );
    assert!(ok > 50);

    // The proxies found the new control plane again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, config) = get(client.admin, "/config").await.expect("config");
        if json(&config)["control_plane_connected"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy never reconnected\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/certs` of a proxy: what signed its certificate and which roots it trusts.
async fn trust_of(admin: std::net::SocketAddr) -> (String, Vec<String>) {
    let (_, body) = get(admin, "/certs").await.expect("certs");
    let v = json(&body);
    let roots = v["trust_roots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    (v["signer"].as_str().unwrap_or_default().to_string(), roots)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trust_anchor_rotates_under_traffic_without_a_failed_request() {
    // Three proxies: two clients calling one server, short certificate lifetimes.
    let mut spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("other", "demo"),
        WorkloadSpec::new("server", "demo"),
    ])
    .service("server", "http", &["server"], None);
    spec.lifetime = "60s".into();
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    start_echo_app(mesh.spec.workload("server").app_port, "server")
        .await
        .expect("app");
    for w in ["client", "other", "server"] {
        mesh.start_proxy(w).await.expect("proxy");
    }
    let workloads: Vec<_> = ["client", "other", "server"]
        .iter()
        .map(|w| mesh.spec.workload(w).clone())
        .collect();
    let (old_signer, old_roots) = trust_of(workloads[0].admin).await;
    assert_eq!(old_roots, vec![old_signer.clone()]);
    // The old CA as it is on disk now, to show later that nobody trusts it any more.
    let old_ca = vigil_identity::CertificateAuthority::load_or_generate(
        &mesh.data_dir().join("ca"),
        TRUST_DOMAIN,
    )
    .expect("the control plane's CA");

    // Traffic from both clients through the whole rotation.
    let traffic: Vec<_> = ["client", "other"]
        .iter()
        .map(|w| {
            let via = mesh.spec.workload(w).outbound;
            tokio::spawn(steady_traffic(via, Duration::from_secs(40)))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mesh_file = mesh.dir.path().join("mesh.yaml");
    let vigil = |args: Vec<String>| {
        let mut command = tokio::process::Command::new(binary("vigil"));
        command.args(args);
        async move {
            let out = command.output().await.expect("vigil runs");
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };
    let located = |cmd: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--mesh".to_string(),
            mesh_file.display().to_string(),
            "--data-dir".to_string(),
            mesh.data_dir().display().to_string(),
        ]);
        args
    };
    // Each step on its own, with `vigil check` saying where the rotation stands.
    let started = Instant::now();
    let mut said = String::new();
    for (step, check_says) in [
        (
            "stage",
            "CA rotation staged: 3 of 3 proxies trust the new root",
        ),
        ("activate", "3 of 3 proxies hold a certificate from it"),
        ("retire", "trusted by the control plane and every proxy"),
    ] {
        let mut args = located(&["ca", "rotate", "--step", step]);
        args.extend(["--timeout".to_string(), "60s".to_string()]);
        let (ok, out) = vigil(args).await;
        assert!(ok, "vigil ca rotate --step {step}:\n{out}\n{}", mesh.logs());
        said += &out;
        let (_, report) = vigil(located(&["check"])).await;
        assert!(
            report.contains(check_says),
            "after {step}, vigil check does not say {check_says:?}:\n{report}"
        );
    }
    let took = started.elapsed();
    for step in [
        "1/3 staged",
        "2/3 the new CA",
        "3/3 retired",
        "every proxy trusting only the current roots",
    ] {
        assert!(said.contains(step), "no {step:?} in:\n{said}");
    }
    println!("the rotation, step by step with vigil check after each, took {took:?}:\n{said}");

    let mut total = 0;
    for t in traffic {
        let (ok, failed, failures) = t.await.expect("traffic");
        assert_eq!(
            failed,
            0,
            "{failed} of {} failed: {failures:?}\n{}",
            ok + failed,
            mesh.logs()
        );
        total += ok;
    }
    assert!(total > 200, "only {total} requests went through");
    println!("{total} requests, none failed");

    // Every proxy holds a certificate of the new root and trusts nothing else; the control
    // plane's bundle file says the same, and the old CA key is gone.
    let bundle = std::fs::read_to_string(mesh.data_dir().join("trust-bundle.pem")).expect("bundle");
    let bundle = vigil_identity::TrustBundle::from_pem(&bundle).expect("pem");
    let names: Vec<String> = bundle
        .roots()
        .iter()
        .map(vigil_identity::root_name)
        .collect();
    assert_eq!(names.len(), 1);
    assert_ne!(names[0], old_signer, "a new root");
    for w in &workloads {
        let (signer, roots) = trust_of(w.admin).await;
        assert_eq!(
            signer, names[0],
            "{} holds a certificate of the new root",
            w.name
        );
        assert_eq!(roots, names, "{} trusts only the new root", w.name);
    }
    let ca = mesh.data_dir().join("ca");
    let left: Vec<String> = std::fs::read_dir(&ca)
        .expect("ca dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let mut sorted = left.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["ca-key.pem", "ca.pem"],
        "nothing of the old CA is left"
    );

    // A caller with a certificate of the old root is refused now; one of the new is not.
    let server = mesh.spec.workload("server").clone();
    let me = SpiffeId::parse(&workloads[0].spiffe_id()).expect("id");
    let old_leaf = vigil_identity::testing::valid_leaf(&old_ca, &me)
        .expect("leaf")
        .certified_key()
        .expect("key");
    assert!(
        handshake(client_with(Some(old_leaf), &bundle, &server), &server)
            .await
            .is_err(),
        "a certificate of the retired root is still accepted"
    );
    let new_ca = vigil_identity::CertificateAuthority::load_or_generate(&ca, TRUST_DOMAIN)
        .expect("the new CA");
    let new_leaf = vigil_identity::testing::valid_leaf(&new_ca, &me)
        .expect("leaf")
        .certified_key()
        .expect("key");
    assert_eq!(
        handshake(client_with(Some(new_leaf), &bundle, &server), &server).await,
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_gets_its_identity_over_the_spiffe_workload_api() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("workload.sock");
    let mut spec = echo_pair();
    spec.workloads[0].extra_args =
        vec!["--workload-api-socket".into(), socket.display().to_string()];
    // The server's policy wants a JWT-SVID for "server" naming the caller, verified
    // against the mesh's JWT bundle, which the control plane puts in the policy's data.
    std::fs::write(sockets.path().join("policy.rego"), JWT_SVID_POLICY).expect("policy");
    spec.policy_dir = Some(sockets.path().to_path_buf());
    let mesh = running_echo_pair_of(spec).await;
    let client = mesh.spec.workload("client").clone();
    let server = mesh.spec.workload("server").clone();
    let mode = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("the socket exists");
    assert_eq!(mode, 0o600, "the socket is private");

    // As an application would: the spiffe crate's client on the socket.
    let api = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
        .await
        .expect("connects");
    let deadline = Instant::now() + Duration::from_secs(20);
    let svid = loop {
        match api.fetch_x509_svid().await {
            Ok(svid) => break svid,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no X.509-SVID: {e}\n{}",
                    mesh.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(svid.spiffe_id().to_string(), client.spiffe_id());
    let bundles = api.fetch_x509_bundles().await.expect("bundles");
    let domain = spiffe::TrustDomain::new(TRUST_DOMAIN).expect("trust domain");
    let bundle = bundles.get(&domain).expect("the mesh's bundle");
    let roots: Vec<CertificateDer<'static>> = bundle
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    let trust = TrustBundle::from_der(roots).expect("roots");

    // The app's SVID is a real mesh identity, with a key of its own: it passes the
    // server proxy's mutual TLS, and it is not the proxy's certificate.
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    let key = vigil_identity::provider()
        .key_provider
        .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
            svid.private_key().as_ref().to_vec().into(),
        ))
        .expect("a usable key");
    let app_identity = Arc::new(rustls::sign::CertifiedKey::new(chain.clone(), key));
    assert_eq!(
        handshake(client_with(Some(app_identity), &trust, &server), &server).await,
        Ok(())
    );
    let (_, certs) = get(client.admin, "/certs").await.expect("certs");
    let app_leaf = vigil_identity::SvidInfo::from_der(chain[0].as_ref()).expect("an SVID");
    assert_ne!(
        json(&certs)["serial"].as_str(),
        Some(app_leaf.serial_hex.as_str()),
        "the app got a certificate of its own, not the proxy's"
    );

    // JWT-SVIDs: fetched for an audience, valid for it only.
    let jwt = api
        .fetch_jwt_svid(["orders"], None)
        .await
        .expect("a JWT-SVID");
    assert_eq!(jwt.spiffe_id().to_string(), client.spiffe_id());
    let checked = api
        .validate_jwt_token("orders", jwt.token())
        .await
        .expect("valid for its audience");
    assert_eq!(checked.spiffe_id().to_string(), client.spiffe_id());
    assert!(
        api.validate_jwt_token("payments", jwt.token())
            .await
            .is_err(),
        "valid for another audience"
    );
    let jwt_bundles = api.fetch_jwt_bundles().await.expect("JWT bundles");
    assert!(jwt_bundles.get(&domain).is_some(), "the mesh's JWT bundle");

    // What the spiffe crate never sends: no security header, or another workload's ID.
    let path = socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://workload-api")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("a raw channel");
    let mut raw =
        vigil_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let request = || vigil_api::workload::JwtsvidRequest {
        audience: vec!["orders".into()],
        spiffe_id: String::new(),
    };
    let refused = raw.fetch_jwtsvid(request()).await.expect_err("no header");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    let mut as_server = tonic::Request::new(vigil_api::workload::JwtsvidRequest {
        spiffe_id: server.spiffe_id(),
        ..request()
    });
    as_server
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("value"));
    let refused = raw.fetch_jwtsvid(as_server).await.expect_err("not ours");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");

    // A policy verifies the JWT-SVID with io.jwt.decode_verify.
    let for_server = api
        .fetch_jwt_svid(["server"], None)
        .await
        .expect("a JWT-SVID for the server");
    for (token, status) in [
        (Some(for_server.token().to_string()), 200),
        (Some(jwt.token().to_string()), 403),
        (None, 403),
    ] {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("authorization", b)])
            .unwrap_or_default();
        let r = http1(client.outbound, "server", "/", &headers)
            .await
            .expect("a response");
        assert_eq!(r.status, status, "{}\n{}", r.body, mesh.logs());
    }
}

const JWT_SVID_POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := false

# A caller that shows a JWT-SVID for "server" issued to its own identity.
allow if {
	[scheme, token] := split(input.attributes.request.http.headers.authorization, " ")
	scheme == "Bearer"
	[valid, _, claims] := io.jwt.decode_verify(token, {"cert": data.vigil.jwt_svid.jwks, "aud": "server"})
	valid
	claims.sub == input.attributes.source.principal
}
"#;

/// A mesh whose snapshot is split across messages, and then changed by a delta: the
/// proxy assembles the whole view, then applies only what changed, and routes by both.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_snapshot_and_its_deltas_reach_the_proxy_whole() {
    let mut spec = echo_pair();
    for i in 0..600 {
        spec = spec.service(&format!("filler{i}"), "http", &["server"], None);
    }
    let mesh = running_echo_pair_of(spec.clone()).await;
    let client = mesh.spec.workload("client").clone();
    let services = |mesh: &Mesh| {
        let admin = mesh.spec.workload("client").admin;
        async move {
            let (_, body) = get(admin, "/config").await.expect("config");
            let config = json(&body);
            config["snapshot"]["services"]
                .as_array()
                .map_or(0, |s| s.len())
        }
    };
    assert_eq!(services(&mesh).await, 601, "every service of every message");
    let r = http1(client.outbound, "filler599", "/", &[])
        .await
        .expect("request");
    assert_eq!(
        r.status, 200,
        "the last message's services route: {}",
        r.body
    );

    // Drop 100 services and add one: the proxy gets a delta, not the mesh again.
    let mut changed = spec.clone();
    changed.services.retain(|s| {
        s.0.strip_prefix("filler")
            .and_then(|n| n.parse::<usize>().ok())
            .is_none_or(|n| n < 500)
    });
    changed = changed.service("late", "http", &["server"], None);
    mesh.rewrite_mesh_file(&changed.yaml()).expect("rewrite");
    let deadline = Instant::now() + Duration::from_secs(20);
    while services(&mesh).await != 502 {
        assert!(Instant::now() < deadline, "the change never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http1(client.outbound, "late", "/", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200, "an added service routes: {}", r.body);
    let r = http1(client.outbound, "filler550", "/", &[])
        .await
        .expect("request");
    assert_ne!(r.status, 200, "a removed service no longer routes");
    let r = http1(client.outbound, "filler10", "/", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200, "a kept service still routes");
    let log = mesh.logs();
    assert!(
        !log.contains("reconnecting for a whole one"),
        "the delta applied on the proxy's view: {log}"
    );
}

/// Resident file-backed memory (code and read-only data) of a process, in kB.
fn rss_file_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssFile in /proc/<pid>/status")
}

/// A serving proxy gives back the code start-up ran: a second after its snapshot its
/// resident code shrinks to what it runs, and requests go on through it unharmed.
#[tokio::test(flavor = "multi_thread")]
async fn a_serving_proxy_gives_back_the_memory_start_up_used() {
    let mesh = running_echo_pair().await;
    let client = mesh.spec.workload("client").clone();
    let server_pid = mesh.proxies[1].pid().expect("server proxy runs");
    let r = http1(client.outbound, "server", "/warm", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}", mesh.logs());
    let started = rss_file_kb(server_pid);

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = started;
    while now * 2 > started && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = rss_file_kb(server_pid);
    }
    assert!(
        now * 2 <= started,
        "the server proxy's resident code should halve after start-up: {started} kB, then {now} kB\n{}",
        mesh.logs()
    );

    // Its code comes back as it runs: requests, with the caller's identity, still pass.
    for i in 0..20 {
        let r = http1(client.outbound, "server", &format!("/after/{i}"), &[])
            .await
            .expect("request after the release");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(json(&r.body)["peer"], client.spiffe_id());
    }
}
