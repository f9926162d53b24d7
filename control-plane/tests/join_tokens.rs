//! Guessing join tokens against a real `vigil control-plane` over TLS: a source that has
//! too many tokens refused is slowed to a trickle, other sources are not, the holder of
//! the right token gets its certificate once it waits, and the log names every refusal's
//! reason without ever repeating a token; the control plane's `/metrics` counts them.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn guessing_join_tokens_is_throttled_per_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlaneAddresses::free();
    let token = random_token();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "trust_domain: vigil.local\n{}workloads:\n  - name: web\n    namespace: shop\n    join_token: \"{token}\"\n    app_port: 8080\n",
            cp.yaml()
        ),
    )
    .expect("mesh file");
    let mut vigil = Vigil::control_plane(dir.path(), &mesh, &[], &[]);
    wait_listening(&mut vigil, cp.identity);
    let data = dir.path().join("data");

    // One guesser on 127.0.0.1, trying as fast as the service answers, until the
    // service has turned it away 50 times (or 500 guesses, far more than the burst).
    let guesser = identity_channel(&data, cp.identity, IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    let started = Instant::now();
    let (mut checked, mut throttled, mut attempts) = (0u32, 0u32, 0u32);
    let mut throttled_message = String::new();
    while throttled < 50 && attempts < 500 {
        let guess = format!("guess-{attempts:026}");
        attempts += 1;
        let refused = sign(&guesser, &guess, vec![])
            .await
            .expect_err("a guess is refused");
        match refused.code() {
            tonic::Code::Unauthenticated => {
                assert!(refused.message().contains("join token"), "{refused:?}");
                checked += 1;
            }
            tonic::Code::ResourceExhausted => {
                throttled += 1;
                throttled_message = refused.message().to_string();
            }
            other => panic!("unexpected answer {other:?}: {refused:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{attempts} guesses in {elapsed:.2} s ({:.0}/s answered); {checked} checked ({:.1}/s), {throttled} turned away",
        f64::from(attempts) / elapsed,
        f64::from(checked) / elapsed,
    );
    assert_eq!(
        throttled, 50,
        "the guesser was never slowed down: {checked} guesses checked"
    );
    // A burst of 10, then 2 a second: however slow this machine, no more got checked.
    let allowed = 10.0 + 2.0 * elapsed + 1.0;
    assert!(
        f64::from(checked) <= allowed,
        "{checked} guesses checked in {elapsed:.2} s"
    );
    assert!(
        throttled_message.contains("too many refused join tokens")
            && throttled_message.contains("try again in"),
        "{throttled_message}"
    );

    // Another source is checked as usual meanwhile.
    let other = identity_channel(&data, cp.identity, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    let refused = sign(&other, "guess-from-another-source-0000", vec![])
        .await
        .expect_err("wrong token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // Once its turn comes, the right token from the throttled source gets its certificate.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let key = vigil_identity::WorkloadKey::generate().expect("key");
    let issued = sign(&guesser, &token, key.csr_der().expect("csr"))
        .await
        .expect("the right token is accepted");
    assert_eq!(issued.spiffe_id, "spiffe://vigil.local/ns/shop/sa/web");

    // Every refusal is logged with its reason, and no token ever is.
    let log = vigil.output();
    assert!(log.contains("CSR refused"), "{log}");
    // The detail of a refused credential (the throttle's own warning also says
    // "credentials", so that word alone would prove nothing).
    assert!(log.contains("join token not recognised"), "{log}");
    assert!(log.contains("throttled"), "{log}");
    assert!(!log.contains("guess-"), "a token was logged:\n{log}");
    assert!(!log.contains(&token), "the right token was logged");

    // The refusals are counted on the control plane's /metrics, by reason, for any scraper.
    let exposition = scrape(cp.dashboard).await;
    let value = |reason: &str| -> f64 {
        let series = format!("vigil_identity_refusals_total{{reason=\"{reason}\"}}");
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{exposition}"))
    };
    assert!(
        value("credential") >= f64::from(checked) + 1.0,
        "{exposition}"
    );
    assert!(value("throttled") >= 50.0, "{exposition}");
}

/// GETs the control plane's /metrics as a scraper in the cluster would, by IP address.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("dashboard port");
    tcp.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: 10.1.2.3:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
