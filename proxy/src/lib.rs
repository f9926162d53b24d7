//! `vigil-proxy`: the Vigil sidecar.
//!
//! Beside every workload, it terminates mutual TLS with SPIFFE identities issued by the
//! control plane ([`control::identity`]), keeps a live view of the mesh from discovery
//! ([`control::discovery`], [`control::state`]), checks every inbound request against Rego
//! policy ([`authz`]) and carries the application's outbound calls to peer proxies over
//! pooled HTTP/2 ([`outbound`], [`transport::pool`]), making them survive bad endpoints with
//! the service's [`traffic`] policy: balancing, retries, timeouts, circuit breaking,
//! limits. The request paths read top to bottom in [`inbound`] and [`outbound::stack`].
//!
//! The modules follow the request's concerns: [`transport`] (connections, first bytes,
//! serving, tunnels, the peer pool), [`http`] (bodies, headers, limits, the proxy's own
//! errors, upgrades), [`inbound`] and [`outbound`] (the two request paths), [`control`]
//! (identity and discovery), [`telemetry`] (metrics, request records, tap, traces, logs)
//! and [`admin`] (the admin port and the app's probes).
//!
//! ```no_run
//! # async fn run(config: vigil_proxy::config::ProxyConfig) -> anyhow::Result<()> {
//! vigil_proxy::run(config, Box::new(std::io::stdout()), None).await
//! # }
//! ```
// `residency` alone may use `unsafe` (madvise, malloc_trim), and says why.
#![deny(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod cni;
pub mod config;
pub mod control;
pub mod http;
pub mod inbound;
pub mod interception;
pub mod outbound;
pub mod probes;
pub mod residency;
pub mod telemetry;
pub use vigil_api::traffic;
pub mod transport;
pub mod workload_api;

use std::sync::Arc;

use crate::telemetry::{observe, trace};
use crate::transport::{drain, listener};

use anyhow::Context;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::authz::Authorizer;
use crate::config::ProxyConfig;
use crate::control::discovery::Discovery;
use crate::control::identity::WorkloadIdentity;
use crate::http::body::Body;
use crate::outbound::endpoint::EndpointStates;
use crate::outbound::service_state::ServiceStates;
use crate::telemetry::metrics::Metrics;
use crate::transport::pool::PeerPool;

/// Peer connections unused this long are closed.
const PEER_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Everything a request handler needs, shared by every listener.
pub struct Proxy {
    pub config: ProxyConfig,
    pub identity: Arc<WorkloadIdentity>,
    pub discovery: Arc<Discovery>,
    pub authz: Arc<Authorizer>,
    pub pool: Arc<PeerPool>,
    /// Each peer's load estimate and circuit breaker, across snapshots.
    pub endpoints: EndpointStates,
    /// Each service's retry budget and in-flight limit, across snapshots.
    pub services: ServiceStates,
    /// Each service's ready stacks, built once per snapshot.
    pub targets: outbound::target::Targets,
    /// HTTP/1.1 connections to the local application, one set per traffic worker.
    app: transport::app::AppPool,
    /// HTTP/2 connections to the local application and HTTP/1.1 ones to egress
    /// destinations, one set per traffic worker.
    clients: Vec<Clients>,
    /// The threads that carry traffic.
    pub workers: Arc<transport::workers::Workers>,
    pub metrics: Arc<Metrics>,
    /// Hop spans (OpenTelemetry), off unless configured.
    pub traces: trace::Tracing,
    /// Graceful shutdown state.
    pub drain: Arc<drain::Drain>,
    /// Where finished requests are reported (metrics, tap, access log).
    pub observer: observe::Observer,
}

/// One worker's pooled clients besides its HTTP/1.1 app connections
/// ([`transport::app`]). Each worker keeps its own, so a request and its connection always
/// run on the same thread.
struct Clients {
    /// HTTP/1.1 keep-alive connections to egress destinations, which may be any address.
    egress: Client<HttpConnector, Body>,
    /// HTTP/2 (prior knowledge, cleartext) connections to the app, for requests that were
    /// HTTP/2 end to end, such as gRPC.
    app_h2: Client<HttpConnector, Body>,
}

impl Clients {
    fn new(config: &ProxyConfig) -> Clients {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        Clients {
            egress: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(APP_IDLE_TIMEOUT)
                .build(connector.clone()),
            app_h2: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(APP_IDLE_TIMEOUT)
                .http2_only(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .build(connector),
        }
    }
}

/// App connections unused this long are closed.
const APP_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

impl Proxy {
    /// Serves a traffic listener until draining starts: each connection admitted under
    /// the proxy's connection limits runs `handle` on the next worker.
    pub async fn serve_traffic<F, Fut>(
        &self,
        listener: tokio::net::TcpListener,
        name: &'static str,
        handle: F,
    ) where
        F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        listener::accept_traffic(
            listener,
            name,
            self.drain.clone(),
            self.config.limits,
            self.workers.clone(),
            handle,
        )
        .await
    }

    /// HTTP/1.1 connections to the local application.
    pub fn app(&self) -> &transport::app::AppPool {
        &self.app
    }

    /// This worker's HTTP/2 client to the local application.
    pub fn app_h2(&self) -> &Client<HttpConnector, Body> {
        &self.clients[transport::workers::current() % self.clients.len()].app_h2
    }

    /// This worker's HTTP/1.1 client to egress destinations.
    pub fn egress(&self) -> &Client<HttpConnector, Body> {
        &self.clients[transport::workers::current() % self.clients.len()].egress
    }

    /// Why the proxy is not ready, if it is not: empty means ready.
    pub fn readiness_problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if self.drain.draining() {
            problems.push("shutting down");
        }
        if self.identity.svid.current().is_none() {
            problems.push("no workload certificate yet");
        }
        if self.discovery.mesh.load().is_none() {
            problems.push("no snapshot from the control plane yet");
        }
        if self.authz.version().is_none() {
            problems.push("no policy bundle yet");
        }
        problems
    }
}

/// Binds every listener, obtains the workload certificate, starts discovery and runs
/// until the process stops. Decision-log lines go to `decision_log`.
pub async fn run(
    config: ProxyConfig,
    decision_log: Box<dyn std::io::Write + Send>,
    access_log: Option<observe::AccessLog>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let identity = WorkloadIdentity::new(config.clone(), metrics.clone())?;
    let discovery = Discovery::new();
    let authz = Authorizer::new(decision_log, metrics.clone())
        .context("starting the decision log writer")?;
    let workers = Arc::new(
        transport::workers::Workers::start(config.worker_threads)
            .context("starting the traffic worker threads")?,
    );
    let pool = Arc::new(PeerPool::new(
        identity.svid.clone(),
        identity.trust.clone(),
        config.tls_options(&[b"h2"]),
        config.connect_timeout,
        PEER_IDLE_TIMEOUT,
        workers.count(),
    ));
    let proxy = Arc::new(Proxy {
        endpoints: EndpointStates::with_pool(pool.clone()),
        services: ServiceStates::default(),
        targets: Default::default(),
        pool,
        config: config.clone(),
        identity: identity.clone(),
        discovery: discovery.clone(),
        authz: authz.clone(),
        app: transport::app::AppPool::new(
            config.connect_timeout,
            APP_IDLE_TIMEOUT,
            workers.count(),
        ),
        clients: (0..workers.count())
            .map(|_| Clients::new(&config))
            .collect(),
        workers,
        metrics: metrics.clone(),
        drain: drain::Drain::new(),
        traces: trace::Tracing::new(&config.trace)?,
        observer: observe::Observer::new(metrics.clone(), access_log),
    });

    let bind = |addr, what: &'static str| async move {
        listener::bind(addr)
            .with_context(|| format!("binding the {what} listener on {addr}: is another proxy using it? pass a different --{what}"))
    };
    let admin = bind(config.admin, "admin").await?;
    let metrics_listener = bind(config.metrics, "metrics").await?;
    let inbound = bind(config.inbound, "inbound").await?;
    let outbound = bind(config.outbound, "outbound").await?;
    let mut upstreams = Vec::new();
    for (addr, service) in &config.upstreams {
        upstreams.push((bind(*addr, "upstream").await?, service.clone()));
    }
    tokio::spawn(admin::serve(admin, proxy.clone()));
    tokio::spawn(admin::serve_metrics(metrics_listener, proxy.clone()));

    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(identity.clone().run(first_tx));
    tracing::info!(control_plane = ?config.identity_addresses, "requesting a workload certificate");
    first_rx
        .await
        .context("the identity task stopped before a certificate was issued")?;
    tokio::spawn(residency::run(discovery.applied()));
    tokio::spawn(
        discovery
            .clone()
            .run(config.clone(), identity.clone(), authz.clone()),
    );

    if let Some(path) = config.workload_api_socket.clone() {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            if let Err(e) = workload_api::serve(&path, proxy).await {
                tracing::error!(error = %format!("{e:#}"), "the SPIFFE Workload API is not served");
            }
        });
    }
    tokio::spawn(inbound::serve(inbound, proxy.clone()));
    for (listener, service) in upstreams {
        tokio::spawn(outbound::serve(listener, proxy.clone(), Some(service)));
    }
    tracing::info!(inbound = %config.inbound, outbound = %config.outbound, admin = %config.admin, "proxy listening");
    tokio::spawn(outbound::serve(outbound, proxy.clone(), None));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
        _ = proxy.drain.started() => tracing::info!("shutdown requested on the admin port: draining"),
    }
    proxy.drain.start();
    let left = proxy.drain.wait(config.drain_timeout).await;
    if left > 0 {
        tracing::warn!(connections = left, deadline = ?config.drain_timeout, "drain deadline passed; closing the rest");
    } else {
        tracing::info!("drained; exiting");
    }
    proxy.traces.shutdown();
    Ok(())
}
