//! Post-quantum key exchange end to end: two real proxies and the control plane agree on
//! the X25519MLKEM768 hybrid, the proxies' metrics say so, and a client that only knows
//! classical X25519 is still served on the inbound port.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, NamedGroup, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_e2e::*;
use vigil_identity::{SpiffeId, SvidStore, TlsOptions, TrustStore};

/// `(group, cipher_suite, count)` of every `vigil_tls_handshakes_total` series of
/// `direction` in a proxy's exposition.
fn handshakes(exposition: &str, direction: &str) -> Vec<(String, String, f64)> {
    let wanted = format!("direction=\"{direction}\"");
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("vigil_tls_handshakes_total{"))
        .filter(|rest| rest.split(',').any(|l| l == wanted))
        .map(|rest| {
            let (labels, count) = rest.split_once("} ").expect("labels then value");
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("no {name} label in {line}", line = rest))
                    .to_string()
            };
            (
                label("group"),
                label("cipher_suite"),
                count.trim().parse().expect("a number"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn proxies_and_control_plane_negotiate_post_quantum_key_exchange() {
    let mesh = running_echo_pair().await;
    let client = mesh.spec.workload("client").clone();

    let r = http1(client.outbound, "server", "/pq", &[])
        .await
        .expect("request through the pair");
    assert_eq!(r.status, 200, "{}\n{}", r.body, mesh.logs());

    let exposition = metrics(client.metrics).await;
    for direction in ["outbound", "control_plane"] {
        let seen = handshakes(&exposition, direction);
        assert!(
            !seen.is_empty(),
            "no {direction} handshakes counted:\n{exposition}"
        );
        for (group, cipher_suite, count) in &seen {
            assert_eq!(
                group, "X25519MLKEM768",
                "{direction} handshakes must be post-quantum:\n{exposition}"
            );
            assert!(cipher_suite.starts_with("TLS13_"), "{cipher_suite}");
            assert!(*count >= 1.0);
        }
    }
    // The server proxy counts the same handshake from its side.
    let server = metrics(mesh.spec.workload("server").metrics).await;
    let inbound = handshakes(&server, "inbound");
    assert!(
        !inbound.is_empty() && inbound.iter().all(|(g, _, _)| g == "X25519MLKEM768"),
        "inbound handshakes must be counted as post-quantum:\n{server}"
    );
}

/// Checks the server's SPIFFE ID and handshake signature, without chain verification:
/// the test is about key exchange, and a client built outside `vigil_identity` cannot
/// reuse its SVID verifier.
#[derive(Debug)]
struct ExpectServerId(SpiffeId, Arc<CryptoProvider>);

impl ServerCertVerifier for ExpectServerId {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match vigil_identity::peer_spiffe_id(std::slice::from_ref(end_entity)) {
            Ok(id) if id == self.0 => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General("not the server proxy".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// Handshakes with the inbound port, sends one request and returns the group agreed on
/// once the server has answered (a refused client certificate shows only then).
async fn served_group(config: Arc<rustls::ClientConfig>, server: &WorkloadSpec) -> NamedGroup {
    let tcp = tokio::net::TcpStream::connect(server.inbound)
        .await
        .expect("connect to the inbound port");
    let name = vigil_identity::server_name_for(&SpiffeId::parse(&server.spiffe_id()).expect("id"));
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the inbound port");
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .expect("a key exchange group")
        .name();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: server\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    group
}

#[tokio::test(flavor = "multi_thread")]
async fn classical_x25519_client_is_still_served_on_the_inbound_port() {
    let mesh = running_echo_pair().await;
    let server = mesh.spec.workload("server").clone();
    let client = mesh.spec.workload("client").clone();
    let ca = vigil_identity::CertificateAuthority::load_or_generate(
        &mesh.data_dir().join("ca"),
        TRUST_DOMAIN,
    )
    .expect("the control plane's CA");
    let me = SpiffeId::parse(&client.spiffe_id()).expect("id");
    let svid = || {
        let store = SvidStore::new();
        store.set(
            vigil_identity::testing::valid_leaf(&ca, &me)
                .expect("valid leaf")
                .certified_key()
                .expect("key"),
        );
        store
    };

    // A peer whose TLS stack has no ML-KEM: it offers X25519 alone.
    let classical = Arc::new(CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let server_id = SpiffeId::parse(&server.spiffe_id()).expect("id");
    let config = rustls::ClientConfig::builder_with_provider(classical.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectServerId(server_id.clone(), classical)))
        .with_client_cert_resolver(svid());
    assert_eq!(
        served_group(Arc::new(config), &server).await,
        NamedGroup::X25519
    );

    // Vigil's own client, on the same port, gets the hybrid.
    let trust = TrustStore::new(TRUST_DOMAIN, ca.trust_bundle()).expect("trust store");
    let vigil_client =
        vigil_identity::mtls_client_config(Some(svid()), trust, server_id, &TlsOptions::default());
    assert_eq!(
        served_group(vigil_client, &server).await,
        NamedGroup::X25519MLKEM768
    );
}
