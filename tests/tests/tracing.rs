//! OpenTelemetry traces across three hops (A → B → C), received and decoded by a real
//! OTLP/gRPC receiver in the test; and a dead collector never costs a request.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use vigil_e2e::*;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// B's application: answers by calling C through B's sidecar, passing the trace context on.
async fn start_relay_app(port: u16, via: std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| async move {
                        let mut onward = Request::builder()
                            .uri(format!("http://{via}/from-b"))
                            .header("host", "c");
                        if let Some(tp) = req.headers().get("traceparent") {
                            onward = onward.header("traceparent", tp);
                        }
                        let client = pooled_client();
                        let status = match onward.body(Full::new(Bytes::new())) {
                            Ok(r) => match client.request(r).await {
                                Ok(res) => {
                                    let s = res.status().as_u16();
                                    let _ = res.into_body().collect().await;
                                    s
                                }
                                Err(_) => 599,
                            },
                            Err(_) => 598,
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "c answered {status}"
                        )))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_across_three_hops_is_one_trace_with_the_right_parents() {
    let receiver = Receiver::default();
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector_addr = collector.local_addr().expect("addr");
    let server = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream_from(collector))
            .await;
    });

    let mut workloads = vec![
        WorkloadSpec::new("a", "demo"),
        WorkloadSpec::new("b", "demo"),
        WorkloadSpec::new("c", "demo"),
    ];
    for w in &mut workloads {
        w.extra_args = vec!["--otlp-endpoint".into(), format!("http://{collector_addr}")];
    }
    let spec = MeshSpec::new(workloads)
        .service("b", "http", &["b"], None)
        .service("c", "http", &["c"], None);
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let (a, b, c) = (
        mesh.spec.workload("a").clone(),
        mesh.spec.workload("b").clone(),
        mesh.spec.workload("c").clone(),
    );
    start_relay_app(b.app_port, b.outbound).await;
    start_echo_app(c.app_port, "c").await.expect("c app");
    for w in ["a", "b", "c"] {
        mesh.start_proxy(w).await.expect("proxy");
    }

    let r = http1(a.outbound, "b", "/start", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{}\n{}", r.body, mesh.logs());
    assert_eq!(r.body, "c answered 200");

    // A-outbound, B-inbound, B-outbound, C-inbound.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.spans.lock().expect("lock").clone();
        if spans.len() >= 4 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "only {} spans arrived: {spans:?}\n{}",
            spans.len(),
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let trace = hex(&spans[0].trace_id);
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == trace),
        "all spans share one trace id: {spans:?}"
    );
    let by_name = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span {name:?} in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let a_out = by_name("outbound b.demo");
    let b_in = by_name("inbound b.demo");
    let c_in = by_name("inbound c.demo");
    let b_out = spans
        .iter()
        .find(|s| s.name == "outbound c.demo")
        .expect("B's outbound span");
    assert!(
        a_out.parent_span_id.is_empty(),
        "A's outbound hop is the root"
    );
    assert_eq!(
        b_in.parent_span_id, a_out.span_id,
        "B inbound is A outbound's child"
    );
    assert_eq!(
        b_out.parent_span_id, b_in.span_id,
        "B outbound is B inbound's child"
    );
    assert_eq!(
        c_in.parent_span_id, b_out.span_id,
        "C inbound is B outbound's child"
    );
    let attr = |s: &Span, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default()
    };
    assert!(attr(c_in, "vigil.peer.identity").contains(&b.spiffe_id()));
    assert!(attr(c_in, "vigil.policy.decision").contains("allow"));
    assert!(attr(b_in, "http.response.status_code").contains("200"));
    // The stable OpenTelemetry HTTP conventions, and the peer by its workload too.
    assert!(attr(a_out, "http.request.method").contains("GET"));
    assert!(attr(a_out, "url.path").contains("/start"));
    assert!(attr(a_out, "server.address").contains("\"b\""), "{a_out:?}");
    assert!(attr(b_in, "network.protocol.version").contains('2'));
    assert!(
        attr(c_in, "vigil.peer.workload").contains("\"b\""),
        "{c_in:?}"
    );
    assert!(
        attr(a_out, "vigil.peer.workload").contains("\"b\""),
        "{a_out:?}"
    );
    assert!(attr(c_in, "vigil.outcome").contains("success"));
    assert!(attr(a_out, "error.type").is_empty(), "a 200 is no error");
    let _ = c;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_costs_no_request_and_memory_stays_bounded() {
    let dead = free_addr();
    let mut workloads = vec![
        WorkloadSpec::new("client", "demo"),
        WorkloadSpec::new("server", "demo"),
    ];
    for w in &mut workloads {
        w.extra_args = vec!["--otlp-endpoint".into(), format!("http://{dead}")];
    }
    let spec = MeshSpec::new(workloads).service("server", "http", &["server"], None);
    let mut mesh = Mesh::start(spec).await.expect("control plane");
    let client = mesh.spec.workload("client").clone();
    start_echo_app(mesh.spec.workload("server").app_port, "server")
        .await
        .expect("app");
    mesh.start_proxy("client").await.expect("client proxy");
    mesh.start_proxy("server").await.expect("server proxy");

    let http = pooled_client();
    let rss = |p: &Process| p.rss_kib();
    let warm_up = 2_000;
    let mut failures = 0;
    for _ in 0..warm_up {
        if !matches!(call(&http, client.outbound, "server", "/x").await, Ok(ref r) if r.status == 200)
        {
            failures += 1;
        }
    }
    let after_warm_up = rss(&mesh.proxies[0]);
    for _ in 0..10_000 {
        if !matches!(call(&http, client.outbound, "server", "/x").await, Ok(ref r) if r.status == 200)
        {
            failures += 1;
        }
    }
    let after = rss(&mesh.proxies[0]);
    assert_eq!(failures, 0, "{}", mesh.logs());
    println!("client proxy RSS with the collector down: {after_warm_up} KiB after {warm_up} requests, {after} KiB after 10,000 more");
    // Spans are dropped once the bounded export queue (2,048) is full, so 10,000 more
    // requests must not grow memory by anything like 10,000 spans' worth.
    assert!(
        after < after_warm_up + 8 * 1024,
        "RSS grew from {after_warm_up} KiB to {after} KiB"
    );
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}
