//! Pooled, multiplexed HTTP/2 connections to peer proxies over mutual TLS. One
//! connection per (endpoint, expected identity) carries every request and TCP tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vigil_identity::{SpiffeId, SvidStore, TlsOptions, TrustStore};

use crate::body::Body;
use crate::error::ProxyError;
use crate::state::EndpointView;

type Key = (SocketAddr, SpiffeId);

/// Connections to peer proxies.
pub struct PeerPool {
    svid: Arc<SvidStore>,
    trust: Arc<TrustStore>,
    connect_timeout: Duration,
    connections: Mutex<HashMap<Key, SendRequest<Body>>>,
}

impl PeerPool {
    pub fn new(svid: Arc<SvidStore>, trust: Arc<TrustStore>, connect_timeout: Duration) -> Self {
        PeerPool {
            svid,
            trust,
            connect_timeout,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// Sends a request to `endpoint`, opening a connection if there is no live one.
    /// A pooled connection that turns out to be dead is replaced once.
    pub async fn send(
        &self,
        endpoint: &EndpointView,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = self.sender(endpoint).await?;
        if sender.ready().await.is_err() {
            self.forget(endpoint);
            sender = self.sender(endpoint).await?;
            sender
                .ready()
                .await
                .map_err(|e| ProxyError::Upstream(e.to_string()))?;
        }
        sender
            .send_request(request)
            .await
            .map_err(|e| ProxyError::Upstream(e.to_string()))
    }

    /// Number of open peer connections.
    pub fn len(&self) -> usize {
        self.connections.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no peer connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, endpoint: &EndpointView) {
        if let Ok(mut c) = self.connections.lock() {
            c.remove(&(endpoint.address, endpoint.spiffe_id.clone()));
        }
    }

    async fn sender(&self, endpoint: &EndpointView) -> Result<SendRequest<Body>, ProxyError> {
        let key = (endpoint.address, endpoint.spiffe_id.clone());
        if let Ok(c) = self.connections.lock() {
            if let Some(s) = c.get(&key) {
                if !s.is_closed() {
                    return Ok(s.clone());
                }
            }
        }
        let sender = self.connect(endpoint).await?;
        if let Ok(mut c) = self.connections.lock() {
            c.insert(key, sender.clone());
        }
        Ok(sender)
    }

    async fn connect(&self, endpoint: &EndpointView) -> Result<SendRequest<Body>, ProxyError> {
        let connect_failed = |reason: String| ProxyError::ConnectFailed {
            endpoint: endpoint.address.to_string(),
            reason,
        };
        if self.svid.current().is_none() {
            return Err(ProxyError::NotReady);
        }
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint.address))
            .await
            .map_err(|_| connect_failed("timed out".into()))?
            .map_err(|e| connect_failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = vigil_identity::mtls_client_config(
            Some(self.svid.clone()),
            self.trust.clone(),
            endpoint.spiffe_id.clone(),
            &TlsOptions {
                alpn: vec![b"h2".to_vec()],
                ..TlsOptions::default()
            },
        );
        let name = vigil_identity::server_name_for(&endpoint.spiffe_id);
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(tls).connect(name, tcp),
        )
        .await
        .map_err(|_| connect_failed("TLS handshake timed out".into()))?
        .map_err(|e| {
            let reason = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(vigil_identity::reason_of);
            match reason {
                Some(r) => ProxyError::PeerIdentity {
                    endpoint: endpoint.address.to_string(),
                    expected: endpoint.spiffe_id.to_string(),
                    reason: format!("{r}: {e}"),
                },
                None => connect_failed(e.to_string()),
            }
        })?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_failed(format!("HTTP/2 handshake: {e}")))?;
        let address = endpoint.address;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %address, error = %e, "peer connection closed");
            }
        });
        tracing::debug!(peer = %address, spiffe_id = %endpoint.spiffe_id, "peer connection opened");
        Ok(sender)
    }
}
