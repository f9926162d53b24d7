//! Pooled, multiplexed HTTP/2 connections to peer proxies over mutual TLS. One
//! connection per (endpoint, expected identity) carries every request and TCP tunnel;
//! a connection unused for the idle timeout is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use vigil_identity::{SpiffeId, SvidStore, TlsOptions, TrustStore};

use crate::control::state::EndpointView;
use crate::http::body::Body;
use crate::http::error::ProxyError;

type Key = (SocketAddr, SpiffeId);

/// A request the pool could not complete. `unsent` gives the request back when it never
/// left this proxy (no connection, or the connection closed before it was written), so
/// it can go to another endpoint whatever its method or body.
#[derive(Debug)]
pub struct SendError {
    pub error: ProxyError,
    pub unsent: Option<Request<Body>>,
}

impl SendError {
    /// A failure after the request (or some of it) went out, or that no other try
    /// could mend.
    pub fn new(error: ProxyError) -> Self {
        SendError {
            error,
            unsent: None,
        }
    }

    /// A failure before anything was written: the request comes back.
    pub fn unsent(error: ProxyError, request: Request<Body>) -> Self {
        SendError {
            error,
            unsent: Some(request),
        }
    }
}

impl From<SendError> for ProxyError {
    fn from(e: SendError) -> Self {
        e.error
    }
}

/// A pooled connection and when a request last went through it.
struct Pooled<S> {
    sender: S,
    last_used: Instant,
}

type Connections = Mutex<HashMap<Key, Pooled<SendRequest<Body>>>>;

/// Connections to peer proxies.
pub struct PeerPool {
    svid: Arc<SvidStore>,
    trust: Arc<TrustStore>,
    /// Chain depth and ALPN (`h2`) for every connection.
    tls: TlsOptions,
    connect_timeout: Duration,
    idle_timeout: Duration,
    connections: Arc<Connections>,
    reaper: Once,
}

impl PeerPool {
    pub fn new(
        svid: Arc<SvidStore>,
        trust: Arc<TrustStore>,
        tls: TlsOptions,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        PeerPool {
            svid,
            trust,
            tls,
            connect_timeout,
            idle_timeout,
            connections: Arc::new(Mutex::new(HashMap::new())),
            reaper: Once::new(),
        }
    }

    /// Sends a request to `endpoint`, opening a connection if there is no live one.
    /// A pooled connection that turns out to be dead is replaced once.
    pub async fn send(
        &self,
        endpoint: &EndpointView,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.sender(endpoint).await {
            Ok(s) => s,
            Err(e) => return Err(SendError::unsent(e, request)),
        };
        if sender.ready().await.is_err() {
            self.forget(endpoint);
            sender = match self.sender(endpoint).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::unsent(e, request)),
            };
            if let Err(e) = sender.ready().await {
                let error = ProxyError::ConnectFailed {
                    endpoint: endpoint.address.to_string(),
                    reason: format!("new connection closed at once: {e}"),
                };
                return Err(SendError::unsent(error, request));
            }
        }
        sender.try_send_request(request).await.map_err(|mut e| {
            let unsent = e.take_message();
            SendError {
                error: ProxyError::Upstream(e.into_error().to_string()),
                unsent,
            }
        })
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
        if let Ok(mut c) = self.connections.lock() {
            if let Some(p) = c.get_mut(&key) {
                if !p.sender.is_closed() {
                    p.last_used = Instant::now();
                    return Ok(p.sender.clone());
                }
            }
        }
        let sender = self.connect(endpoint).await?;
        if let Ok(mut c) = self.connections.lock() {
            c.insert(
                key,
                Pooled {
                    sender: sender.clone(),
                    last_used: Instant::now(),
                },
            );
        }
        let (connections, idle) = (Arc::downgrade(&self.connections), self.idle_timeout);
        self.reaper
            .call_once(|| drop(tokio::spawn(close_idle(connections, idle))));
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
            &self.tls,
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

/// Drops connections idle for `idle` until the pool itself is gone. Dropping the last
/// sender lets hyper close the connection once its streams finish.
async fn close_idle(connections: Weak<Connections>, idle: Duration) {
    let period = (idle / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(connections) = connections.upgrade() else {
            return;
        };
        if let Ok(mut c) = connections.lock() {
            drop_idle(&mut c, Instant::now(), idle, SendRequest::is_closed);
        };
    }
}

fn drop_idle<S>(
    connections: &mut HashMap<Key, Pooled<S>>,
    now: Instant,
    idle: Duration,
    closed: impl Fn(&S) -> bool,
) {
    connections.retain(|(address, _), p| {
        let keep = !closed(&p.sender) && now.saturating_duration_since(p.last_used) < idle;
        if !keep {
            tracing::debug!(peer = %address, "closing an idle peer connection");
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connections_idle_past_the_timeout_are_dropped() {
        let id = SpiffeId::parse("spiffe://vigil.local/ns/demo/sa/server").expect("id");
        let key = |port| (SocketAddr::from(([127, 0, 0, 1], port)), id.clone());
        let idle = Duration::from_secs(90);
        let mut map = HashMap::new();
        let start = Instant::now();
        map.insert(
            key(1),
            Pooled {
                sender: false,
                last_used: start,
            },
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        map.insert(
            key(2),
            Pooled {
                sender: false,
                last_used: Instant::now(),
            },
        );
        map.insert(
            key(3),
            Pooled {
                sender: true,
                last_used: Instant::now(),
            },
        );

        drop_idle(&mut map, Instant::now(), idle, |closed| *closed);
        assert_eq!(map.len(), 2, "a closed connection is dropped at once");
        tokio::time::advance(Duration::from_secs(31)).await;
        drop_idle(&mut map, Instant::now(), idle, |closed| *closed);
        assert!(
            map.contains_key(&key(2)) && map.len() == 1,
            "91 s idle is too long"
        );
    }
}
