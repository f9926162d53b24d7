//! The app's kubelet probes go through the proxy, never around it: `vigil inject` rewrites
//! them to `/app-health/<container>/<probe>` on the proxy's health port (15090) and hands
//! the originals to the proxy, which performs them against the app on loopback.
//!
//! On loopback: a real proxy process, given the probes exactly as `vigil inject` wrote
//! them, reports a real HTTP app up and down, an HTTPS app, a TCP port open and closed,
//! and a real `grpc.health.v1` server serving and not. In network namespaces (root): with `vigil-init`'s
//! rules as injected, a neighbour's plaintext never reaches the app's serving port, while
//! the probe through the health port still sees the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use vigil_e2e::netns::{require_tools, Cluster, Pod};
use vigil_e2e::{
    binary, free_port, get, start_tcp_echo, Mesh, MeshSpec, WorkloadSpec, TRUST_DOMAIN,
};

/// Runs `vigil inject` on one pod (as JSON, which is YAML) and returns the injected pod.
fn inject(pod: &Value) -> Value {
    let mut child = Command::new(binary("vigil"))
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running vigil inject");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(pod.to_string().as_bytes())
            .expect("writing the pod to vigil inject");
    }
    let out = child.wait_with_output().expect("vigil inject finishes");
    assert!(
        out.status.success(),
        "vigil inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_slice(&out.stdout).expect("vigil inject writes one YAML pod")
}

/// What the proxy and its init container get in an injected pod: `vigil-init`'s flags and
/// `VIGIL_APP_PROBES`.
fn sidecar_settings(pod: &Value) -> (Vec<String>, String) {
    let inits = pod["spec"]["initContainers"].as_array().expect("inits");
    let named = |name: &str| {
        inits
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} is injected"))
    };
    let init_args = named("vigil-init")["args"]
        .as_array()
        .expect("vigil-init args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let probes = named("vigil-proxy")["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "VIGIL_APP_PROBES"))
        .and_then(|e| e["value"].as_str())
        .expect("the proxy gets VIGIL_APP_PROBES")
        .to_string();
    (init_args, probes)
}

/// The kubelet's probe of an injected container: the `httpGet` path and port.
fn rewritten(pod: &Value, container: &str, probe: &str) -> (String, u64) {
    let c = pod["spec"]["containers"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == container))
        .expect("container");
    let get = &c[probe]["httpGet"];
    (
        get["path"].as_str().unwrap_or_default().to_string(),
        get["port"].as_u64().unwrap_or_default(),
    )
}

/// An HTTP app whose `/healthz` answers 200 when the probe's own header arrived (400
/// otherwise); aborting the task closes its port, as a crashed app would.
async fn start_health_app(port: u16) -> JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the app");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let ok = req.uri().path() == "/healthz"
                        && req.headers().get("x-probe").is_some_and(|v| v == "kubelet");
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"healthz\n")));
                        if !ok {
                            *r.status_mut() = http::StatusCode::BAD_REQUEST;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}

/// An HTTPS app with a self-signed certificate nobody could verify (the kubelet does not
/// try): every request gets 200.
async fn start_https_app(port: u16) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["web.local".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed certificate");
    let config = rustls::ServerConfig::builder_with_provider(vigil_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the HTTPS app");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"secure\n",
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
}

/// A real `grpc.health.v1.Health` server (tonic-health), whose statuses the test sets.
async fn start_grpc_health(port: u16) -> tonic_health::server::HealthReporter {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the gRPC app");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    reporter
}

/// Waits until nothing accepts on `port` any more.
async fn wait_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "port {port} stays open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rewritten_probes_report_the_app_as_the_kubelet_would_see_it() {
    let mut web = WorkloadSpec::new("web", "demo");
    let http_port = web.app_port;
    let tcp_port = free_port();
    let grpc_port = free_port();
    let closed_port = free_port();
    let https_port = free_port();

    // The pod as its author wrote it: the readiness probe on the serving port.
    let pod = inject(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"containers": [
            {
                "name": "web", "image": "web",
                "ports": [{"name": "http", "containerPort": http_port}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                    "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}]}},
                "livenessProbe": {"httpGet": {"path": "/elsewhere", "port": http_port}},
                "startupProbe": {"httpGet": {"path": "/", "port": https_port, "scheme": "HTTPS"}},
            },
            {
                "name": "cache", "image": "cache",
                "readinessProbe": {"tcpSocket": {"port": tcp_port}},
                "livenessProbe": {"tcpSocket": {"port": closed_port}},
            },
            {
                "name": "api", "image": "api",
                "readinessProbe": {"grpc": {"port": grpc_port}},
                "livenessProbe": {"grpc": {"port": grpc_port, "service": "vigil.Orders"}},
            },
        ]},
    }));
    let (init_args, app_probes) = sidecar_settings(&pod);
    assert!(
        !init_args.iter().any(|a| a == "--exclude-inbound-ports"),
        "the serving port stays intercepted: {init_args:?}"
    );
    assert_eq!(
        rewritten(&pod, "web", "readinessProbe"),
        ("/app-health/web/readyz".to_string(), 15090)
    );

    web.extra_args = vec!["--app-probes".into(), app_probes];
    let metrics = web.metrics;
    let spec = MeshSpec::new(vec![web]).service("web", "http", &["web"], None);
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let app = start_health_app(http_port).await;
    start_tcp_echo(tcp_port).await.expect("tcp app");
    start_https_app(https_port).await;
    let grpc = start_grpc_health(grpc_port).await;
    grpc.set_service_status("vigil.Orders", tonic_health::ServingStatus::Serving)
        .await;
    mesh.start_proxy("web").await.expect("proxy ready");

    let probe = |path: &'static str| async move {
        get(metrics, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the health port: {e}"))
    };
    let expect = [
        ("/app-health/web/readyz", 200),
        // The app answers 400 on other paths: its status is the probe's.
        ("/app-health/web/livez", 400),
        ("/app-health/web/startupz", 200),
        ("/app-health/cache/readyz", 200),
        ("/app-health/cache/livez", 503),
        ("/app-health/api/readyz", 200),
        ("/app-health/api/livez", 200),
        ("/app-health/nobody/readyz", 404),
    ];
    for (path, status) in expect {
        let (got, body) = probe(path).await;
        assert_eq!(got, status, "{path}: {body}\n{}", mesh.logs());
    }
    assert_eq!(
        probe("/ready").await.0,
        200,
        "the proxy's own probe is unchanged"
    );

    // The app goes down, or says it is not serving: the kubelet hears it.
    app.abort();
    wait_closed(http_port).await;
    let (status, body) = probe("/app-health/web/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot connect"), "{body}");
    grpc.set_service_status("vigil.Orders", tonic_health::ServingStatus::NotServing)
        .await;
    let (status, body) = probe("/app-health/api/livez").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NOT_SERVING"), "{body}");
    assert_eq!(probe("/app-health/api/readyz").await.0, 200);
}

#[test]
fn a_proxy_refuses_probe_definitions_it_cannot_use_and_says_why() {
    let out = Command::new(binary("vigil-proxy"))
        .args(["--token", "t", "--trust-bundle", "/nonexistent"])
        .env(
            "VIGIL_APP_PROBES",
            r#"{"/healthz": {"tcpSocket": {"port": 8080}}}"#,
        )
        .output()
        .expect("running vigil-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("VIGIL_APP_PROBES") && stderr.contains("does not start with /app-health/"),
        "{stderr}"
    );
}

// ---- In network namespaces, with interception (root) ----

const APP_PORT: u16 = 8080;
const PROXY_UID: u32 = 1337;
/// The meshed pod's join token (random, as the control plane demands).
const WEB_TOKEN: &str = "7c2f9a4e1b8d60f3a5e9c1d7b2f48a06";

/// One plain HTTP GET from inside `pod` to `target` (the demo client, as a neighbour or
/// the kubelet would send it); the client's report line.
fn call(cluster: &Cluster, pod: &Pod, target: &str, path: &str) -> String {
    let out = cluster
        .run(
            &pod.netns,
            &binary("vigil-demo-app"),
            &[
                "client", "--via", target, "--host", target, "--path", path, "--count", "1",
            ],
        )
        .expect("demo client runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn with_interception_the_serving_port_takes_no_plaintext_while_probes_reach_the_app() {
    require_tools();
    let pod = inject(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"containers": [{
            "name": "web", "image": "web",
            "ports": [{"name": "http", "containerPort": APP_PORT}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
            "livenessProbe": {"tcpSocket": {"port": APP_PORT}},
        }]},
    }));
    let (init_args, app_probes) = sidecar_settings(&pod);
    let readiness = rewritten(&pod, "web", "readinessProbe");
    let liveness = rewritten(&pod, "web", "livenessProbe");

    let mut cluster = Cluster::new().expect("switch namespace");
    let cp = cluster.add_pod("cp", 2).expect("control plane pod");
    let web = cluster.add_pod("web", 11).expect("meshed pod");
    let neighbour = cluster.add_pod("nb", 12).expect("neighbour pod");
    std::fs::write(
        cluster.path("mesh.yaml"),
        format!(
            "trust_domain: {TRUST_DOMAIN}\ncontrol_plane:\n  identity: \"{cp}:15012\"\n  discovery: \"{cp}:15010\"\n  dashboard: \"{cp}:15080\"\n  webhook: \"{cp}:15017\"\nworkloads:\n  - name: web\n    namespace: demo\n    join_token: \"{WEB_TOKEN}\"\n    app_port: {APP_PORT}\n    proxy:\n      inbound: \"{ip}:15006\"\nservices:\n  - name: web\n    namespace: demo\n    port: {APP_PORT}\n    endpoints: [web]\n    virtual_addresses: [\"{ip}:{APP_PORT}\"]\n",
            cp = cp.ip,
            ip = web.ip
        ),
    )
    .expect("mesh file");
    let data = cluster.path("data");
    let control_plane = cluster
        .spawn(
            &cp.netns,
            "control-plane",
            None,
            &binary("vigil"),
            &[
                "control-plane".into(),
                "--mesh".into(),
                cluster.path("mesh.yaml").display().to_string(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
        )
        .expect("control plane");
    cluster
        .wait_for_log(
            control_plane,
            "control plane serving",
            Duration::from_secs(30),
        )
        .expect("control plane serving");

    let app = cluster
        .spawn(
            &web.netns,
            "app-web",
            None,
            &binary("vigil-demo-app"),
            &[
                "server".into(),
                "--listen".into(),
                format!("0.0.0.0:{APP_PORT}"),
                "--name".into(),
                "web".into(),
            ],
        )
        .expect("app");
    // Control: without interception a neighbour reaches the app in plaintext.
    let serving = SocketAddr::from((web.ip, APP_PORT)).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&cluster, &neighbour, &serving, "/before-interception");
        if r.contains(": 200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the app never answered: {r}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The rules exactly as the injected init container writes them.
    let args: Vec<&str> = init_args.iter().map(String::as_str).collect();
    let init = cluster
        .run(&web.netns, &binary("vigil-init"), &args)
        .expect("vigil-init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let bundle = data.join("trust-bundle.pem");
    let proxy_args: Vec<String> = [
        "--trust-domain",
        TRUST_DOMAIN,
        "--token",
        WEB_TOKEN,
        "--trust-bundle",
        &bundle.display().to_string(),
        "--identity-addr",
        &format!("{}:15012", cp.ip),
        "--discovery-addr",
        &format!("{}:15010", cp.ip),
        "--inbound",
        &format!("{}:15006", web.ip),
        "--outbound",
        "127.0.0.1:15001",
        "--admin",
        "127.0.0.1:15000",
        "--metrics",
        "0.0.0.0:15090",
        "--app-probes",
        &app_probes,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cluster
        .spawn(
            &web.netns,
            "proxy-web",
            Some(PROXY_UID),
            &binary("vigil-proxy"),
            &proxy_args,
        )
        .expect("proxy");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(&cluster, &web, "127.0.0.1:15000", "/ready");
        if r.contains(": 200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy not ready: {r}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The neighbour (outside the mesh, like the node) sends plaintext to the serving port:
    // it lands on the proxy's mutual-TLS listener and never reaches the app.
    let plaintext = call(&cluster, &neighbour, &serving, "/plaintext");
    assert!(
        !plaintext.contains("200 OK") && plaintext.contains("failed"),
        "plaintext to the serving port: {plaintext}"
    );

    // The kubelet's rewritten probes, sent from the same neighbour to the health port.
    let health = SocketAddr::from((web.ip, 15090)).to_string();
    for (path, port) in [&readiness, &liveness] {
        assert_eq!(*port, 15090);
        let r = call(&cluster, &neighbour, &health, path);
        assert!(r.contains(": 200 OK"), "{path}: {r}\n{}", cluster.logs());
    }

    // The app dies: both probes report it.
    cluster.process(app).kill();
    for (path, _) in [&readiness, &liveness] {
        let r = call(&cluster, &neighbour, &health, path);
        assert!(
            r.contains(": 503 Service Unavailable"),
            "{path} with the app down: {r}"
        );
    }
}
