//! Cluster mode's kube client builds its rustls config from rustls's process-wide default
//! provider, unlike Vigil's own configs, which pass `vigil_identity::provider()`. With
//! kube's `aws-lc-rs` feature it installs aws-lc-rs as that default; with its `ring`
//! feature, beside the aws-lc-rs provider Vigil's TLS needs, rustls has two providers, no
//! default, and the control plane would panic on its first call to the Kubernetes API.
//! This builds that client as cluster mode does.

#[tokio::test]
async fn kube_client_builds_its_tls_config_from_the_one_provider() {
    let ca = vigil_identity::CertificateAuthority::generate("cluster.local").expect("a CA");
    let mut config = kube::Config::new("https://127.0.0.1:6443".parse().expect("URL"));
    // The API server's CA, as an in-cluster service account provides it.
    config.root_cert = Some(vec![ca.trust_bundle().roots()[0].to_vec()]);
    let built = std::panic::catch_unwind(|| kube::Client::try_from(config));
    match built {
        Ok(Ok(_client)) => {}
        Ok(Err(e)) => panic!("kube could not build its client: {e}"),
        Err(_) => panic!(
            "kube's TLS setup panicked: rustls has no process-default provider; give kube \
             the aws-lc-rs feature, not ring (control-plane/Cargo.toml)"
        ),
    }
}
