//! OpenTelemetry traces: one span per proxy hop, W3C `traceparent` (and B3) extracted
//! from and injected into requests, exported over OTLP/gRPC to a configurable endpoint.
//!
//! Off unless an endpoint is given. Export runs in the SDK's batch processor with a
//! bounded queue: when the collector is down spans are dropped, never queued without
//! bound, and the request path never waits on export.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

/// Tracing settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceConfig {
    /// OTLP/gRPC endpoint for traces (e.g. http://127.0.0.1:4317); tracing is off without it.
    #[arg(long = "otlp-endpoint", env = "VIGIL_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Share of new traces to sample, 0.0 to 1.0; a sampled parent is always followed.
    #[arg(
        long = "trace-sampling",
        env = "VIGIL_TRACE_SAMPLING",
        default_value_t = 1.0
    )]
    pub sampling: f64,
}

/// Starts and finishes hop spans. Disabled tracing costs one branch per request.
pub struct Tracing {
    inner: Option<(SdkTracerProvider, SdkTracer)>,
    propagator: TraceContextPropagator,
}

/// A hop span in progress.
pub struct HopSpan {
    cx: Option<Context>,
    /// A client span (outbound) counts a 4xx as an error too; a server span only a 5xx,
    /// as the OpenTelemetry HTTP conventions say.
    client: bool,
}

impl Tracing {
    /// Tracing off.
    pub fn disabled() -> Tracing {
        Tracing {
            inner: None,
            propagator: TraceContextPropagator::new(),
        }
    }

    /// Builds the exporter; must run inside the tokio runtime (the gRPC channel lives there).
    /// Tracing as `config` says: off without an endpoint.
    pub fn new(config: &TraceConfig) -> anyhow::Result<Tracing> {
        let Some(endpoint) = &config.endpoint else {
            return Ok(Tracing::disabled());
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(3))
            .build()?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(2048)
                    .with_max_export_batch_size(512)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampling.clamp(0.0, 1.0),
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("vigil-proxy")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("vigil-proxy");
        Ok(Tracing {
            inner: Some((provider, tracer)),
            propagator: TraceContextPropagator::new(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts a hop span as a child of whatever context `headers` carry (W3C, else B3),
    /// and rewrites `headers` so the next hop is a child of this span.
    pub fn start(
        &self,
        name: String,
        kind: SpanKind,
        headers: &mut HeaderMap,
        attributes: Vec<KeyValue>,
    ) -> HopSpan {
        let Some((_, tracer)) = &self.inner else {
            return HopSpan {
                cx: None,
                client: false,
            };
        };
        let mut parent = self.propagator.extract(&HeaderExtract(headers));
        if !parent.span().span_context().is_valid() {
            if let Some(b3) = b3_context(headers) {
                parent = Context::new().with_remote_span_context(b3);
            }
        }
        let span = tracer
            .span_builder(name)
            .with_kind(kind.clone())
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let cx = parent.with_span(span);
        self.propagator
            .inject_context(&cx, &mut HeaderInject(headers));
        inject_b3(cx.span().span_context(), headers);
        HopSpan {
            cx: Some(cx),
            client: kind == SpanKind::Client,
        }
    }

    /// Flushes what is queued (on shutdown).
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.inner {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(2));
        }
    }
}

impl HopSpan {
    /// Names the span once the service is known.
    pub fn rename(&self, name: String) {
        if let Some(cx) = &self.cx {
            cx.span().update_name(name);
        }
    }

    /// Records the outcome and ends the span.
    pub fn finish(self, status: u16, attributes: Vec<KeyValue>) {
        let Some(cx) = self.cx else { return };
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        for kv in attributes {
            span.set_attribute(kv);
        }
        if status >= 500 || (self.client && status >= 400) {
            // `error.type` names the class of error: the status code, unless the caller
            // set a more precise one (the proxy's reason).
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }
}

struct HeaderExtract<'a>(&'a HeaderMap);

impl Extractor for HeaderExtract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInject<'a>(&'a mut HeaderMap);

impl Injector for HeaderInject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

// B3 by hand: its only propagator ships inside the Zipkin exporter crate, and the format
// is two header shapes of hex fields.
fn b3_context(headers: &HeaderMap) -> Option<SpanContext> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let (trace, span, sampled) = if let Some(single) = get("b3") {
        let mut parts = single.split('-');
        (
            parts.next()?.to_string(),
            parts.next()?.to_string(),
            parts.next().map(str::to_string),
        )
    } else {
        (
            get("x-b3-traceid")?.to_string(),
            get("x-b3-spanid")?.to_string(),
            get("x-b3-sampled").map(str::to_string),
        )
    };
    let trace = format!("{trace:0>32}");
    let trace_id = TraceId::from_hex(&trace).ok()?;
    let span_id = SpanId::from_hex(&span).ok()?;
    let flags = match sampled.as_deref() {
        Some("0") => TraceFlags::default(),
        _ => TraceFlags::SAMPLED,
    };
    let cx = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    cx.is_valid().then_some(cx)
}

fn inject_b3(cx: &SpanContext, headers: &mut HeaderMap) {
    // Only keep B3 current where the caller used it; W3C is always sent.
    if headers.contains_key("b3") {
        let value = format!(
            "{}-{}-{}",
            cx.trace_id(),
            cx.span_id(),
            if cx.is_sampled() { "1" } else { "0" }
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("b3", v);
        }
    }
    if headers.contains_key("x-b3-traceid") {
        for (k, v) in [
            ("x-b3-traceid", cx.trace_id().to_string()),
            ("x-b3-spanid", cx.span_id().to_string()),
            (
                "x-b3-sampled",
                if cx.is_sampled() {
                    "1".into()
                } else {
                    "0".into()
                },
            ),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(k, v);
            }
        }
        headers.remove("x-b3-parentspanid");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_single_and_multi_headers_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let cx = b3_context(&h).expect("single");
        assert_eq!(
            cx.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(cx.is_sampled());

        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("64fe8b2a57d3eff7"));
        h.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let cx = b3_context(&h).expect("multi, 64-bit trace id");
        assert_eq!(
            cx.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(!cx.is_sampled());

        let mut h = HeaderMap::new();
        h.insert("b3", HeaderValue::from_static("garbage"));
        assert!(b3_context(&h).is_none());
    }
}
