//! Real TLS handshakes over in-memory duplex pipes.

use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{id, svid_store, test_ca, trust, TD};
use crate::testing::{self, TestCredential};
use crate::{
    mtls_client_config, mtls_server_config, peer_spiffe_id, reason_of, server_config,
    server_name_for, SpiffeId, SvidInfo, SvidStore, TlsOptions, TrustStore,
};

const LIMIT: Duration = Duration::from_secs(10);

/// What each side saw: the peer's SPIFFE ID, or the rustls error that ended the handshake.
struct Outcome {
    server: Result<Option<SpiffeId>, rustls::Error>,
    client: Result<SpiffeId, rustls::Error>,
}

fn rustls_err(e: std::io::Error) -> rustls::Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => r.clone(),
        None => rustls::Error::General(format!("io: {e}")),
    }
}

/// Handshakes, then exchanges one byte each way, so that a server refusing the client's
/// certificate (which TLS 1.3 reports only after the client thinks it is done) is seen.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    expected: &SpiffeId,
) -> Outcome {
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let connector = TlsConnector::from(client);
    let name = server_name_for(expected);
    let server_side = async move {
        let mut tls = acceptor.accept(s_io).await.map_err(rustls_err)?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| peer_spiffe_id(c).unwrap());
        tls.write_all(b"s").await.map_err(rustls_err)?;
        tls.flush().await.map_err(rustls_err)?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(rustls_err)?;
        Ok(peer)
    };
    let client_side = async move {
        let mut tls = connector.connect(name, c_io).await.map_err(rustls_err)?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap()).unwrap();
        tls.write_all(b"c").await.map_err(rustls_err)?;
        tls.flush().await.map_err(rustls_err)?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(rustls_err)?;
        Ok(peer)
    };
    let (server, client) =
        tokio::time::timeout(LIMIT, async { tokio::join!(server_side, client_side) })
            .await
            .expect("handshake hung");
    Outcome { server, client }
}

struct Mesh {
    ca: crate::CertificateAuthority,
    trust: Arc<TrustStore>,
    server_id: SpiffeId,
    server_svid: Arc<SvidStore>,
}

fn mesh() -> Mesh {
    let ca = test_ca();
    let server_id = id("default", "db");
    let server_svid = svid_store(&ca, &server_id);
    Mesh {
        trust: trust(&ca),
        ca,
        server_id,
        server_svid,
    }
}

impl Mesh {
    fn server(&self) -> Arc<ServerConfig> {
        mtls_server_config(
            self.server_svid.clone(),
            self.trust.clone(),
            &TlsOptions::default(),
        )
    }

    fn client(&self, svid: Option<Arc<SvidStore>>) -> Arc<ClientConfig> {
        mtls_client_config(
            svid,
            self.trust.clone(),
            self.server_id.clone(),
            &TlsOptions::default(),
        )
    }

    /// A client presenting `cred`, against the mTLS server; returns the server's refusal reason.
    async fn refused_client(&self, cred: &TestCredential) -> &'static str {
        let store = SvidStore::new();
        store.set(cred.certified_key().unwrap());
        let out = handshake(self.server(), self.client(Some(store)), &self.server_id).await;
        let err = out.server.expect_err("server must refuse");
        assert!(out.client.is_err(), "client must see the refusal");
        reason_of(&err)
    }
}

#[tokio::test]
async fn good_mtls_pair_sees_each_other() {
    let m = mesh();
    let client_id = id("default", "web");
    let client_svid = svid_store(&m.ca, &client_id);
    let out = handshake(m.server(), m.client(Some(client_svid)), &m.server_id).await;
    assert_eq!(out.server.unwrap(), Some(client_id));
    assert_eq!(out.client.unwrap(), m.server_id);
}

#[tokio::test]
async fn alpn_is_negotiated() {
    let m = mesh();
    let opts = TlsOptions {
        alpn: vec![b"h2".to_vec()],
        ..TlsOptions::default()
    };
    let server = mtls_server_config(m.server_svid.clone(), m.trust.clone(), &opts);
    let client = mtls_client_config(
        Some(svid_store(&m.ca, &id("a", "b"))),
        m.trust.clone(),
        m.server_id.clone(),
        &opts,
    );
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let (s, c) = tokio::join!(
        TlsAcceptor::from(server).accept(s_io),
        TlsConnector::from(client).connect(server_name_for(&m.server_id), c_io)
    );
    assert_eq!(s.unwrap().get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(c.unwrap().get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// The key-exchange group both sides agreed on, for `client` against the mesh server.
async fn negotiated_group(m: &Mesh, client: Arc<ClientConfig>) -> rustls::NamedGroup {
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let (s, c) = tokio::join!(
        TlsAcceptor::from(m.server()).accept(s_io),
        TlsConnector::from(client).connect(server_name_for(&m.server_id), c_io)
    );
    let (s, c) = (s.unwrap(), c.unwrap());
    let group = |kx: Option<&'static dyn rustls::crypto::SupportedKxGroup>| kx.unwrap().name();
    let server_group = group(s.get_ref().1.negotiated_key_exchange_group());
    assert_eq!(
        server_group,
        group(c.get_ref().1.negotiated_key_exchange_group())
    );
    server_group
}

#[tokio::test]
async fn mesh_peers_agree_on_post_quantum_hybrid_key_exchange() {
    let m = mesh();
    let client = m.client(Some(svid_store(&m.ca, &id("default", "web"))));
    assert_eq!(
        negotiated_group(&m, client).await,
        rustls::NamedGroup::X25519MLKEM768
    );
}

#[tokio::test]
async fn classical_only_client_still_gets_x25519() {
    let m = mesh();
    let classical = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let store = svid_store(&m.ca, &id("default", "web"));
    let client = ClientConfig::builder_with_provider(classical)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_cert_resolver(store);
    assert_eq!(
        negotiated_group(&m, Arc::new(client)).await,
        rustls::NamedGroup::X25519
    );
}

#[tokio::test]
async fn refuses_foreign_ca_client() {
    let m = mesh();
    let cred = testing::foreign_ca_leaf(&id("default", "web")).unwrap();
    assert_eq!(m.refused_client(&cred).await, "unknown-ca");
}

#[tokio::test]
async fn refuses_expired_client() {
    let m = mesh();
    let cred = testing::expired_leaf(&m.ca, &id("default", "web")).unwrap();
    assert_eq!(m.refused_client(&cred).await, "expired");
}

#[tokio::test]
async fn refuses_two_uri_sans() {
    let m = mesh();
    let cred =
        testing::two_uri_sans_leaf(&m.ca, &id("default", "web"), &id("kube-system", "admin"))
            .unwrap();
    assert_eq!(m.refused_client(&cred).await, "several-uri-sans");
}

#[tokio::test]
async fn refuses_ca_as_leaf() {
    let m = mesh();
    let cred = testing::ca_as_leaf(&m.ca, &id("default", "web")).unwrap();
    assert_eq!(m.refused_client(&cred).await, "ca-as-leaf");
}

#[tokio::test]
async fn refuses_other_trust_domain() {
    let m = mesh();
    let other = SpiffeId::workload("evil.example", "default", "web").unwrap();
    let cred = testing::other_trust_domain_leaf(&m.ca, &other).unwrap();
    assert_eq!(m.refused_client(&cred).await, "wrong-trust-domain");
}

#[tokio::test]
async fn refuses_too_long_chain() {
    let m = mesh();
    let cred = testing::valid_leaf(&m.ca, &id("default", "web")).unwrap();
    // Leaf + three padding certificates: four > the default limit of three.
    let root_pem = m.ca.trust_bundle().to_pem();
    let padded = TestCredential {
        chain_pem: format!("{}{root_pem}{root_pem}{root_pem}", cred.chain_pem),
        key_pem: cred.key_pem.clone(),
    };
    assert_eq!(m.refused_client(&padded).await, "chain-too-long");
}

#[tokio::test]
async fn refuses_client_without_certificate() {
    let m = mesh();
    let out = handshake(m.server(), m.client(None), &m.server_id).await;
    assert_eq!(reason_of(&out.server.unwrap_err()), "no-client-cert");
    assert_eq!(reason_of(&out.client.unwrap_err()), "no-client-cert");
}

#[tokio::test]
async fn client_refuses_wrong_server_id() {
    let m = mesh();
    let client_svid = svid_store(&m.ca, &id("default", "web"));
    let wanted = id("default", "payments");
    let client = mtls_client_config(
        Some(client_svid),
        m.trust.clone(),
        wanted.clone(),
        &TlsOptions::default(),
    );
    let out = handshake(m.server(), client, &wanted).await;
    let err = out.client.unwrap_err();
    assert_eq!(reason_of(&err), "wrong-spiffe-id");
    let msg = err.to_string();
    assert!(
        msg.contains("/ns/default/sa/payments") && msg.contains("/ns/default/sa/db"),
        "{msg}"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn client_refuses_server_from_foreign_ca() {
    let m = mesh();
    let foreign = testing::foreign_ca_leaf(&m.server_id).unwrap();
    let store = SvidStore::new();
    store.set(foreign.certified_key().unwrap());
    let server = server_config(store, &TlsOptions::default());
    let out = handshake(server, m.client(None), &m.server_id).await;
    assert_eq!(reason_of(&out.client.unwrap_err()), "unknown-ca");
}

#[tokio::test]
async fn plain_server_accepts_client_without_svid() {
    let m = mesh();
    let server = server_config(m.server_svid.clone(), &TlsOptions::default());
    let out = handshake(server, m.client(None), &m.server_id).await;
    assert_eq!(out.server.unwrap(), None);
    assert_eq!(out.client.unwrap(), m.server_id);
}

#[tokio::test]
async fn refuses_tls12_only_client() {
    let m = mesh();
    // A rustls client that only speaks TLS 1.2 (and does not even verify: it must not matter).
    let client = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    let out = handshake(m.server(), Arc::new(client), &m.server_id).await;
    assert_eq!(reason_of(&out.server.unwrap_err()), "protocol-version");
    assert_eq!(reason_of(&out.client.unwrap_err()), "protocol-version");
}

#[tokio::test]
async fn svid_swap_keeps_old_connections_and_serves_new_cert() {
    let m = mesh();
    let server = m.server();
    let client_cfg = m.client(Some(svid_store(&m.ca, &id("default", "web"))));
    let serial = |certs: &[rustls_pki_types::CertificateDer<'_>]| {
        SvidInfo::from_der(&certs[0]).unwrap().serial_hex
    };

    // Connection 1, before the swap.
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let (s1, c1) = tokio::join!(
        TlsAcceptor::from(server.clone()).accept(s_io),
        TlsConnector::from(client_cfg.clone()).connect(server_name_for(&m.server_id), c_io)
    );
    let (mut s1, mut c1) = (s1.unwrap(), c1.unwrap());
    let old_serial = serial(c1.get_ref().1.peer_certificates().unwrap());

    // Renewal: same identity, new key and certificate.
    let renewed = svid_store(&m.ca, &m.server_id).current().unwrap();
    let new_serial = serial(&renewed.cert);
    assert_ne!(old_serial, new_serial);
    m.server_svid.set(renewed);

    // The old connection keeps working in both directions.
    c1.write_all(b"ping").await.unwrap();
    c1.flush().await.unwrap();
    let mut buf = [0u8; 4];
    s1.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    s1.write_all(b"pong").await.unwrap();
    s1.flush().await.unwrap();
    c1.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // A new handshake on the same (unchanged) config presents the new certificate.
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let (s2, c2) = tokio::join!(
        TlsAcceptor::from(server).accept(s_io),
        TlsConnector::from(client_cfg).connect(server_name_for(&m.server_id), c_io)
    );
    s2.unwrap();
    let c2 = c2.unwrap();
    assert_eq!(
        serial(c2.get_ref().1.peer_certificates().unwrap()),
        new_serial
    );
}

#[tokio::test]
async fn trust_rotation_applies_to_new_handshakes() {
    let m = mesh();
    let next = crate::CertificateAuthority::generate(TD).unwrap();
    let next_client = svid_store(&next, &id("default", "web"));
    // Not trusted yet.
    let out = handshake(
        m.server(),
        m.client(Some(next_client.clone())),
        &m.server_id,
    )
    .await;
    assert_eq!(reason_of(&out.server.unwrap_err()), "unknown-ca");
    // Both roots during rotation: the same server config now accepts the new CA's SVIDs.
    let mut roots = m.ca.trust_bundle().roots().to_vec();
    roots.extend(next.trust_bundle().roots().iter().cloned());
    m.trust
        .set(crate::TrustBundle::from_der(roots).unwrap())
        .unwrap();
    let out = handshake(m.server(), m.client(Some(next_client)), &m.server_id).await;
    assert_eq!(out.server.unwrap(), Some(id("default", "web")));
    assert_eq!(m.trust.bundle().roots().len(), 2);
}

/// Test-only verifier for clients whose server check is not what the test is about (the TLS
/// 1.2 client fails before it matters; the classical client tests key exchange).
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
