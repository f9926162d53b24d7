//! A control plane installed outside `vigil-system`: the pods it injects dial its Service
//! in its own namespace and expect its identity there, and its webhook certificate names
//! that Service, so the API server's call to the webhook verifies.

use std::sync::Arc;

use serde_json::Value;

use super::tests::{arg_after, patched, proxy_of};
use super::webhook::review;
use super::*;
use crate::fixtures::fixture_json;

const NAMESPACE: &str = "mesh-ops";

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

fn injected(cfg: &InjectConfig) -> Value {
    let request = fixture_json("admission/admissionreview-v1-pod-create-kubectl-apply-2025.json");
    let response = review(request.to_string().as_bytes(), cfg).expect("answered");
    assert!(
        response["response"]["patch"].is_string(),
        "the pod is patched: {response}"
    );
    patched(&request, &response)
}

#[test]
fn pods_injected_by_a_control_plane_in_another_namespace_dial_and_expect_it_there() {
    let pod = injected(&InjectConfig::for_namespace(NAMESPACE));
    let proxy = proxy_of(&pod);
    assert_eq!(
        arg_after(proxy, "--identity-addr"),
        Some("vigil-control-plane.mesh-ops.svc:15012")
    );
    assert_eq!(
        arg_after(proxy, "--discovery-addr"),
        Some("vigil-control-plane.mesh-ops.svc:15010")
    );
    assert_eq!(
        env_value(proxy, CONTROL_PLANE_NAMESPACE_ENV),
        Some(NAMESPACE),
        "the proxy is told whose identity to expect"
    );
    let text = pod.to_string();
    assert!(
        !text.contains("vigil-system"),
        "nothing in the pod names the default namespace:\n{text}"
    );

    let default = injected(&InjectConfig::default());
    assert_eq!(
        env_value(proxy_of(&default), CONTROL_PLANE_NAMESPACE_ENV),
        Some("vigil-system")
    );
}

/// A TLS 1.3 handshake with the control plane's serving certificate (as issued for
/// `namespace`) by a client that verifies `dns_name` against the mesh root, as the API
/// server does when it calls the webhook.
async fn handshake(namespace: &str, dns_name: &'static str) -> Result<(), std::io::Error> {
    let ca = vigil_identity::CertificateAuthority::generate("cluster.local").expect("ca");
    let id = crate::own_identity::control_plane_id("cluster.local", namespace).expect("id");
    let svid = vigil_identity::SvidStore::new();
    svid.set(crate::own_identity::issue_own(&ca, &id).expect("own certificate"));
    let server = vigil_identity::server_config(svid, &vigil_identity::TlsOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await;
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    for root in ca.trust_bundle().roots() {
        roots.add(root.clone()).expect("root");
    }
    let client = rustls::ClientConfig::builder_with_provider(vigil_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(dns_name).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_webhook_certificate_names_the_service_in_the_configured_namespace() {
    handshake(NAMESPACE, "vigil-control-plane.mesh-ops.svc")
        .await
        .expect("the API server verifies the webhook by its Service name in mesh-ops");
    handshake(NAMESPACE, "vigil-control-plane.mesh-ops")
        .await
        .expect("the short Service name verifies too");
    let err = handshake(NAMESPACE, "vigil-control-plane.vigil-system.svc")
        .await
        .expect_err("the default namespace's name is not in the certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn the_control_plane_identity_names_its_namespace() {
    let id = crate::own_identity::control_plane_id("corp.example", NAMESPACE).expect("id");
    assert_eq!(
        id.to_string(),
        "spiffe://corp.example/ns/mesh-ops/sa/vigil-control-plane"
    );
    let err = crate::own_identity::control_plane_id("corp.example", "Not/A_Label")
        .expect_err("a namespace that is no DNS label");
    assert!(format!("{err:#}").contains("namespace"), "{err:#}");
}
