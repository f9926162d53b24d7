//! Gateway API routes (GAMMA) in the mesh file, through a real control plane and real
//! proxies: an HTTPRoute splits a service 90/10 between two versions (measured over
//! 1,000 requests), sends a header's callers to the canary, rewrites headers on a method
//! and path match and answers what no rule matches with 404; a weight change reaches the
//! proxies with the mesh file; the Gateway API's own recorded GRPCRoute routes gRPC
//! methods to two backends with its header changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vigil_e2e::*;

const CANARY: &str = r#"routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: web-canary, namespace: shop}
    spec:
      parentRefs: [{group: "", kind: Service, name: web, port: 80}]
      rules:
      - name: beta-testers
        matches: [{path: {type: PathPrefix, value: /shop}, headers: [{name: x-beta, value: "yes"}]}]
        backendRefs: [{name: web-v2, port: 80}]
      - name: writes
        matches: [{method: POST, path: {type: PathPrefix, value: /api}}]
        filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-route, value: writes}]
            remove: [x-drop-me]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add: [{name: x-served-by, value: vigil}]
        backendRefs: [{name: web-v1, port: 80}]
      - name: split
        matches: [{path: {type: PathPrefix, value: /shop}}]
        backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
"#;

fn app_of(reply: &Reply) -> String {
    serde_json::from_str::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["app"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("(status {}: {})", reply.status, reply.body))
}

/// How many of `n` GETs of `path` each app answered.
async fn spread(via: std::net::SocketAddr, path: &str, n: usize) -> BTreeMap<String, usize> {
    let client = pooled_client();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = call(&client, via, "web", path).await.expect("request");
        *counts.entry(app_of(&r)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn an_httproute_splits_matches_and_rewrites_through_real_proxies() {
    let spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "shop"),
        WorkloadSpec::new("web-v1", "shop"),
        WorkloadSpec::new("web-v2", "shop"),
    ])
    .service("web", "http", &["web-v1"], None)
    .service("web-v1", "http", &["web-v1"], None)
    .service("web-v2", "http", &["web-v2"], None);
    let mut spec = spec;
    spec.extra_yaml = CANARY.to_string();
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    for (w, name) in [("web-v1", "web-v1"), ("web-v2", "web-v2")] {
        start_echo_app(mesh.spec.workload(w).app_port, name)
            .await
            .expect("app");
    }
    for w in ["client", "web-v1", "web-v2"] {
        mesh.start_proxy(w).await.expect("proxy");
    }
    let client = mesh.spec.workload("client").clone();

    // The split, over 1,000 requests: 10% expected, so 100 ± 9.5 (one standard
    // deviation); 60..=140 fails by chance about once in 30,000 runs.
    let started = Instant::now();
    let counts = spread(client.outbound, "/shop/cart", 1000).await;
    let v2 = counts.get("web-v2").copied().unwrap_or(0);
    let v1 = counts.get("web-v1").copied().unwrap_or(0);
    eprintln!(
        "90/10 split over 1000 requests: web-v1 {v1}, web-v2 {v2} ({:.1}% to the canary) in {:?}",
        v2 as f64 / 10.0,
        started.elapsed()
    );
    assert_eq!(
        v1 + v2,
        1000,
        "every request answered by a version: {counts:?}"
    );
    assert!((60..=140).contains(&v2), "{counts:?}");

    // Beta testers always get the canary: on the split's own path, their header match
    // outranks the split (the Gateway API's precedence: same path, more headers).
    for _ in 0..20 {
        let r = http1(client.outbound, "web", "/shop/cart", &[("x-beta", "yes")])
            .await
            .expect("beta");
        assert_eq!(app_of(&r), "web-v2", "{}", r.body);
    }

    // Writes: method and path, header changes both ways.
    let r = send1(
        client.outbound,
        "POST",
        "web",
        "/api/orders",
        &[("x-drop-me", "secret"), ("x-route", "forged")],
        bytes::Bytes::from_static(b"{}"),
    )
    .await
    .expect("post");
    assert_eq!(r.status, 200, "{}", r.body);
    let echoed: serde_json::Value = serde_json::from_str(&r.body).expect("echo");
    assert_eq!(echoed["app"], "web-v1");
    assert_eq!(echoed["headers"]["x-route"], "writes");
    assert!(echoed["headers"].get("x-drop-me").is_none(), "{}", r.body);
    assert_eq!(
        r.headers.get("x-served-by").map(|v| v.as_bytes()),
        Some(&b"vigil"[..])
    );

    // What no rule matches: 404 from the client's proxy, saying why.
    let r = http1(client.outbound, "web", "/api/orders", &[])
        .await
        .expect("get");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        r.headers.get("x-vigil-error").map(|v| v.as_bytes()),
        Some(&b"no-route"[..])
    );
    // The service's versions are still reachable by name.
    let r = http1(client.outbound, "web-v2", "/api/orders", &[])
        .await
        .expect("direct");
    assert_eq!(app_of(&r), "web-v2");

    // Metrics name the route and the version that served.
    let m = metrics(client.metrics).await;
    let split_v2 = metric_value(
        &m,
        r#"vigil_requests_total{direction="outbound",service="web-v2.shop",route="web-canary/split"}"#,
    );
    assert_eq!(split_v2 as usize, v2, "the split's canary requests");
    let beta = metric_value(
        &m,
        r#"vigil_requests_total{direction="outbound",service="web-v2.shop",route="web-canary/beta-testers"}"#,
    );
    assert_eq!(beta, 20.0, "{m}");
    assert!(
        metric_value(
            &m,
            r#"vigil_requests_total{direction="outbound",service="web.shop",route="default",response_code="404"}"#
        ) >= 1.0,
        "{m}"
    );

    // Promote the canary: the new weights reach the proxies with the mesh file.
    let promoted = mesh
        .spec
        .yaml()
        .replace("weight: 90}", "weight: 0}")
        .replace("weight: 10}", "weight: 100}");
    mesh.rewrite_mesh_file(&promoted).expect("rewrite");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = spread(client.outbound, "/shop/cart", 50).await;
        if counts.get("web-v2") == Some(&50) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still split after the change: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_apis_recorded_grpcroute_routes_grpc_methods() {
    let ns = "gateway-conformance-mesh";
    let spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", ns),
        WorkloadSpec::new("echo-v1", ns),
        WorkloadSpec::new("echo-v2", ns),
    ])
    .service("echo", "http", &["echo-v1"], None)
    .service("echo-v1", "http", &["echo-v1"], None)
    .service("echo-v2", "http", &["echo-v2"], None);
    let route =
        std::fs::read_to_string(workspace_root().join(
            "tests/fixtures/kubernetes/gateway-api/mesh-grpcroute-request-header-modifier.yaml",
        ))
        .expect("recorded route");
    let route: String = route.lines().map(|l| format!("    {l}\n")).collect();
    // The recorded route attaches to port 7070 and sends to 7070: the services are
    // declared on that port.
    let yaml = spec.yaml().replace(
        &format!("    namespace: {ns}\n    protocol: http\n"),
        &format!("    namespace: {ns}\n    port: 7070\n    protocol: http\n"),
    ) + "routes:\n  -\n"
        + &route;
    let mut mesh = Mesh::start_with_yaml(spec, &yaml)
        .await
        .expect("control plane");
    for name in ["echo-v1", "echo-v2"] {
        start_echo_app(mesh.spec.workload(name).app_port, name)
            .await
            .expect("app");
    }
    for w in ["client", "echo-v1", "echo-v2"] {
        mesh.start_proxy(w).await.expect("proxy");
    }
    let client = mesh.spec.workload("client").clone();
    let service = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];

    let call = |method: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let mut headers = grpc.to_vec();
        headers.extend(extra);
        let path = format!("{service}/{method}");
        async move {
            send1(
                client.outbound,
                "POST",
                "echo:7070",
                &path,
                &headers,
                bytes::Bytes::from_static(b"\0\0\0\0\0"),
            )
            .await
            .expect("call")
        }
    };
    let echo = call("Echo", vec![("x-header-set", "some-other-value")]).await;
    let body: serde_json::Value = serde_json::from_str(&echo.body).expect("echo");
    assert_eq!(body["app"], "echo-v1");
    assert_eq!(body["headers"]["x-header-set"], "set-overwrites-values");

    let two = call(
        "EchoTwo",
        vec![("x-header-remove-1", "gone"), ("x-header-add-1", "kept")],
    )
    .await;
    let body: serde_json::Value = serde_json::from_str(&two.body).expect("echo two");
    assert_eq!(body["app"], "echo-v2");
    assert_eq!(body["headers"]["x-header-set-1"], "header-set-1");
    assert!(
        body["headers"].get("x-header-remove-1").is_none(),
        "{}",
        two.body
    );
    assert_eq!(body["headers"]["x-header-add-1"], "kept,header-add-1");

    // A method no rule names: the proxy answers, and a gRPC caller hears it in gRPC.
    let other = call("EchoThree", vec![]).await;
    assert_eq!(
        other.headers.get("x-vigil-error").map(|v| v.as_bytes()),
        Some(&b"no-route"[..]),
        "{other:?}"
    );
    // 404 is gRPC's UNIMPLEMENTED.
    assert_eq!(
        other.headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"12"[..]),
        "{other:?}"
    );
}

/// A GRPCRoute between real grpcio clients and servers (tests/grpc/echo.py), HTTP/2 end to
/// end: one method split 75/25 between two versions, the service's other methods to the
/// new version only.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpcroute_splits_real_grpc_calls_by_method() {
    require_python_module("grpc", "grpcio");
    let mut spec = MeshSpec::new(vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("echo-v1", "demo"),
        WorkloadSpec::new("echo-v2", "demo"),
    ])
    .service("echo", "http", &["echo-v1"], None)
    .service("echo-v2", "http", &["echo-v2"], None);
    spec.extra_yaml = r#"routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: GRPCRoute
    metadata: {name: echo-canary, namespace: demo}
    spec:
      parentRefs: [{group: "", kind: Service, name: echo}]
      rules:
      - matches: [{method: {service: vigil.test.Echo, method: Unary}}]
        backendRefs: [{name: echo, port: 80, weight: 75}, {name: echo-v2, port: 80, weight: 25}]
      - matches: [{method: {service: vigil.test.Echo}}]
        backendRefs: [{name: echo-v2, port: 80}]
"#
    .to_string();
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let script = workspace_root().join("tests/grpc/echo.py");
    let mut apps = Vec::new();
    for name in ["echo-v1", "echo-v2"] {
        let port = mesh.spec.workload(name).app_port;
        apps.push(
            start_python_app(mesh.dir.path(), name, &script, port)
                .await
                .expect("grpc server"),
        );
    }
    for w in ["client", "echo-v1", "echo-v2"] {
        mesh.start_proxy(w).await.expect("proxy");
    }
    let client = mesh.spec.workload("client").clone();
    let count = |method: &str, n: u32| {
        let out = std::process::Command::new("python3")
            .args([
                script.display().to_string(),
                "count".into(),
                client.outbound.to_string(),
                "echo".into(),
                method.into(),
                n.to_string(),
            ])
            .output()
            .expect("grpc client runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let tally: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{e}: {stdout}{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                mesh.logs()
            )
        });
        tally
    };
    // 25% of 400 is 100 ± 8.7 (one standard deviation); 60..=140 fails by chance about
    // once in 10^5 runs.
    let unary = count("Unary", 400);
    eprintln!("GRPCRoute 75/25 over 400 unary calls: {unary}");
    assert_eq!(unary["errors"], serde_json::json!([]), "{unary}");
    let v1 = unary["servers"]["echo-v1"].as_u64().unwrap_or(0);
    let v2 = unary["servers"]["echo-v2"].as_u64().unwrap_or(0);
    assert_eq!(v1 + v2, 400, "{unary}");
    assert!((60..=140).contains(&v2), "{unary}");
    let streams = count("ServerStream", 20);
    assert_eq!(
        streams,
        serde_json::json!({"servers": {"echo-v2": 20}, "errors": []}),
        "the service's other methods go to the new version"
    );
}

/// A proxy whose workload declares what it calls holds only those services: a route's
/// backend outside them is asked for on the first request that goes to it, and served.
#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_proxy_fetches_a_routes_backend_on_first_use() {
    let mut client = WorkloadSpec::new("client", "shop");
    client.calls = Some(vec!["web".into()]);
    let mut spec = MeshSpec::new(vec![
        client,
        WorkloadSpec::new("web-v1", "shop"),
        WorkloadSpec::new("web-v2", "shop"),
    ])
    .service("web", "http", &["web-v1"], None)
    .service("web-v1", "http", &["web-v1"], None)
    .service("web-v2", "http", &["web-v2"], None);
    spec.extra_yaml = CANARY.to_string();
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    for name in ["web-v1", "web-v2"] {
        start_echo_app(mesh.spec.workload(name).app_port, name)
            .await
            .expect("app");
    }
    for w in ["client", "web-v1", "web-v2"] {
        mesh.start_proxy(w).await.expect("proxy");
    }
    let client = mesh.spec.workload("client").clone();
    // Beta testers' route sends everything to web-v2, which the client's view lacks.
    for i in 0..10 {
        let r = http1(client.outbound, "web", "/shop/cart", &[("x-beta", "yes")])
            .await
            .expect("beta");
        assert_eq!(app_of(&r), "web-v2", "request {i}: {} {}", r.status, r.body);
    }
}
