//! Pooled, multiplexed HTTP/2 connections to peer proxies over mutual TLS, sized to load:
//! each (endpoint, expected identity) starts with one connection carrying every request
//! and TCP tunnel; when even its least busy connection has [`GROW_AT`] requests in flight,
//! the next request opens another, up to [`MAX_PER_PEER`], so no single connection's task
//! (its framing and encryption run on one thread) caps a busy peer. Requests go to the
//! least busy connection; one unused for the idle timeout is closed. Each traffic worker
//! ([`super::workers`]) has connections of its own, so a request and the connection that
//! carries it run on the same thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use vigil_identity::{SpiffeId, SvidStore, TlsOptions, TrustStore};

use crate::control::state::EndpointView;
use crate::http::body::Body;
use crate::http::error::{context, Cause, ProxyError};
use crate::transport::cork::UncorkingExecutor;

/// Peers by address, then by the identity expected there (almost always one): a request
/// finds its peer without copying or hashing the SPIFFE ID.
type Peers<S> = HashMap<SocketAddr, Vec<(SpiffeId, Peer<S>)>>;

/// The peer at `address` expected to prove `id`, if the pool knows it.
fn known_peer_mut<'a, S>(
    peers: &'a mut Peers<S>,
    address: SocketAddr,
    id: &SpiffeId,
) -> Option<&'a mut Peer<S>> {
    let at = peers.get_mut(&address)?;
    at.iter_mut()
        .find(|(known, _)| known == id)
        .map(|(_, peer)| peer)
}

/// The peer at `address` expected to prove `id`, added when there is none.
fn peer_mut<'a, S>(peers: &'a mut Peers<S>, address: SocketAddr, id: &SpiffeId) -> &'a mut Peer<S> {
    let at = peers.entry(address).or_default();
    let index = match at.iter().position(|(known, _)| known == id) {
        Some(index) => index,
        None => {
            at.push((id.clone(), Peer::default()));
            at.len() - 1
        }
    };
    &mut at[index].1
}

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

/// Requests in flight on a peer's least busy connection before another is opened.
pub const GROW_AT: usize = 16;

/// Most connections to one peer.
pub const MAX_PER_PEER: usize = 4;

/// A pooled connection, when a request last went through it, and how many are on it now.
struct Pooled<S> {
    sender: S,
    last_used: Instant,
    in_flight: Arc<AtomicUsize>,
}

/// One peer's connections, and whether one is being opened.
struct Peer<S> {
    connections: Vec<Pooled<S>>,
    opening: bool,
}

impl<S> Default for Peer<S> {
    fn default() -> Self {
        Peer {
            connections: Vec::new(),
            opening: false,
        }
    }
}

/// Where the next request to a peer goes.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    /// The connection at this index.
    Use(usize),
    /// A new connection.
    Open,
}

impl<S> Peer<S> {
    /// The least busy connection, unless none is open yet, or even the least busy one is
    /// past [`GROW_AT`] with room for another and none already being opened.
    fn choose(&self) -> Choice {
        let least = self
            .connections
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| p.in_flight.load(Ordering::Relaxed))
            .map(|(i, p)| (i, p.in_flight.load(Ordering::Relaxed)));
        match least {
            None => Choice::Open,
            Some((_, busy))
                if busy >= GROW_AT && !self.opening && self.connections.len() < MAX_PER_PEER =>
            {
                Choice::Open
            }
            Some((i, _)) => Choice::Use(i),
        }
    }
}

/// Counts a request on its connection until the answer's head arrives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One traffic worker's connections.
type Connections = Mutex<Peers<SendRequest<Body>>>;

/// Connections to peer proxies.
pub struct PeerPool {
    svid: Arc<SvidStore>,
    trust: Arc<TrustStore>,
    /// Chain depth and ALPN (`h2`) for every connection.
    tls: TlsOptions,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Indexed by worker.
    connections: Arc<[Connections]>,
    reaper: Once,
}

impl PeerPool {
    pub fn new(
        svid: Arc<SvidStore>,
        trust: Arc<TrustStore>,
        tls: TlsOptions,
        connect_timeout: Duration,
        idle_timeout: Duration,
        workers: usize,
    ) -> Self {
        PeerPool {
            svid,
            trust,
            tls,
            connect_timeout,
            idle_timeout,
            connections: (0..workers.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
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
        let (mut sender, mut in_flight) = match self.sender(endpoint).await {
            Ok(s) => s,
            Err(e) => return Err(SendError::unsent(e, request)),
        };
        if sender.ready().await.is_err() {
            self.forget(endpoint);
            (sender, in_flight) = match self.sender(endpoint).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::unsent(e, request)),
            };
            if let Err(e) = sender.ready().await {
                let error = ProxyError::ConnectFailed {
                    endpoint: endpoint.address.to_string(),
                    reason: context("new connection closed at once", e),
                };
                return Err(SendError::unsent(error, request));
            }
        }
        let _in_flight = InFlight::new(in_flight);
        sender.try_send_request(request).await.map_err(|mut e| {
            let unsent = e.take_message();
            SendError {
                error: ProxyError::Upstream(e.into_error().into()),
                unsent,
            }
        })
    }

    /// Number of open peer connections.
    pub fn len(&self) -> usize {
        self.connections
            .iter()
            .filter_map(|c| c.lock().ok())
            .map(|c| {
                c.values()
                    .flatten()
                    .map(|(_, p)| p.connections.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Whether no peer connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the peer's connections found dead.
    fn forget(&self, endpoint: &EndpointView) {
        if let Ok(mut c) = self.own().lock() {
            if let Some(peer) = known_peer_mut(&mut c, endpoint.address, &endpoint.spiffe_id) {
                peer.connections.retain(|p| !p.sender.is_closed());
            }
        }
    }

    /// A connection to send on, and its in-flight count: the least busy open one, or a
    /// new one when there is none or all are busy (see the module docs).
    async fn sender(
        &self,
        endpoint: &EndpointView,
    ) -> Result<(SendRequest<Body>, Arc<AtomicUsize>), ProxyError> {
        if let Ok(mut c) = self.own().lock() {
            let peer = peer_mut(&mut c, endpoint.address, &endpoint.spiffe_id);
            peer.connections.retain(|p| !p.sender.is_closed());
            match peer.choose() {
                Choice::Use(i) => {
                    let p = &mut peer.connections[i];
                    p.last_used = Instant::now();
                    return Ok((p.sender.clone(), p.in_flight.clone()));
                }
                Choice::Open => peer.opening = true,
            }
        }
        // Boxed: a connect (TCP, TLS and HTTP/2 handshakes) is rare, and inline its state
        // would be copied with every request's future.
        let opened = Box::pin(self.connect(endpoint)).await;
        let in_flight = Arc::new(AtomicUsize::new(0));
        if let Ok(mut c) = self.own().lock() {
            let peer = peer_mut(&mut c, endpoint.address, &endpoint.spiffe_id);
            peer.opening = false;
            if let Ok(sender) = &opened {
                peer.connections.push(Pooled {
                    sender: sender.clone(),
                    last_used: Instant::now(),
                    in_flight: in_flight.clone(),
                });
            }
        }
        let sender = opened?;
        self.reaper.call_once(|| {
            let (connections, idle) = (Arc::downgrade(&self.connections), self.idle_timeout);
            let sweep = super::workers::sweep_idle(connections, idle, move |peers, now| {
                drop_idle(peers, now, idle, SendRequest::is_closed)
            });
            drop(tokio::spawn(sweep));
        });
        Ok((sender, in_flight))
    }

    /// This worker's connections.
    fn own(&self) -> &Connections {
        &self.connections[super::workers::current() % self.connections.len()]
    }

    async fn connect(&self, endpoint: &EndpointView) -> Result<SendRequest<Body>, ProxyError> {
        let connect_failed = |reason: Cause| ProxyError::ConnectFailed {
            endpoint: endpoint.address.to_string(),
            reason,
        };
        if self.svid.current().is_none() {
            return Err(ProxyError::NotReady);
        }
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint.address))
            .await
            .map_err(|_| connect_failed("timed out".into()))?
            .map_err(|e| connect_failed(e.into()))?;
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
                    reason: context(r, e),
                },
                None => connect_failed(e.into()),
            }
        })?;
        crate::telemetry::metrics::HandshakeDirection::outbound.record(stream.get_ref().1);
        // Each poll's frames leave in one write (and one TLS record). Boxed: hyper makes
        // one future per request, an enum that can also hold the whole connection, so the
        // TLS stream inline made it 2.5 KB instead of 1.4 KB; hyper moves it before it
        // reaches the executor, which boxes it once (`UncorkingExecutor`).
        let io = Box::new(crate::transport::cork::Corked::new(stream));
        let (sender, connection) = hyper::client::conn::http2::Builder::new(UncorkingExecutor)
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| connect_failed(context("HTTP/2 handshake", e)))?;
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

/// Drops `peers`' connections unused for `idle` (or closed). Dropping the last sender
/// lets hyper close the connection once its streams finish.
fn drop_idle<S>(peers: &mut Peers<S>, now: Instant, idle: Duration, closed: impl Fn(&S) -> bool) {
    peers.retain(|address, at| {
        at.retain_mut(|(_, peer)| {
            peer.connections.retain(|p| {
                let keep = !closed(&p.sender) && now.saturating_duration_since(p.last_used) < idle;
                if !keep {
                    tracing::debug!(peer = %address, "closing an idle peer connection");
                }
                keep
            });
            !peer.connections.is_empty() || peer.opening
        });
        !at.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled(closed: bool, last_used: Instant, in_flight: usize) -> Pooled<bool> {
        Pooled {
            sender: closed,
            last_used,
            in_flight: Arc::new(AtomicUsize::new(in_flight)),
        }
    }

    fn peer(connections: Vec<Pooled<bool>>) -> Peer<bool> {
        Peer {
            connections,
            opening: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_past_the_timeout_are_dropped() {
        let id = SpiffeId::parse("spiffe://vigil.local/ns/demo/sa/server").expect("id");
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let idle = Duration::from_secs(90);
        let mut map: Peers<bool> = HashMap::new();
        let start = Instant::now();
        *peer_mut(&mut map, at(1), &id) = peer(vec![pooled(false, start, 0)]);
        tokio::time::advance(Duration::from_secs(60)).await;
        *peer_mut(&mut map, at(2), &id) = peer(vec![pooled(false, Instant::now(), 0)]);
        *peer_mut(&mut map, at(3), &id) = peer(vec![pooled(true, Instant::now(), 0)]);

        drop_idle(&mut map, Instant::now(), idle, |closed| *closed);
        assert_eq!(map.len(), 2, "a closed connection is dropped at once");
        tokio::time::advance(Duration::from_secs(31)).await;
        drop_idle(&mut map, Instant::now(), idle, |closed| *closed);
        assert!(
            map.contains_key(&at(2)) && map.len() == 1,
            "91 s idle is too long"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_expected_to_prove_two_identities_is_two_peers() {
        let (a, b) = (
            SpiffeId::parse("spiffe://vigil.local/ns/demo/sa/a").expect("id"),
            SpiffeId::parse("spiffe://vigil.local/ns/demo/sa/b").expect("id"),
        );
        let address = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut map: Peers<bool> = HashMap::new();
        peer_mut(&mut map, address, &a)
            .connections
            .push(pooled(false, Instant::now(), 0));
        assert!(peer_mut(&mut map, address, &b).connections.is_empty());
        assert_eq!(peer_mut(&mut map, address, &a).connections.len(), 1);
        assert_eq!(map[&address].len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_peer_gets_more_connections_up_to_the_limit() {
        let now = Instant::now();
        assert_eq!(peer(vec![]).choose(), Choice::Open, "none yet");
        let quiet = peer(vec![pooled(false, now, 3), pooled(false, now, 1)]);
        assert_eq!(quiet.choose(), Choice::Use(1), "the least busy one");
        let busy = peer(vec![pooled(false, now, GROW_AT)]);
        assert_eq!(busy.choose(), Choice::Open, "all busy: one more");
        let mut opening = peer(vec![pooled(false, now, GROW_AT)]);
        opening.opening = true;
        assert_eq!(
            opening.choose(),
            Choice::Use(0),
            "one connection opened at a time"
        );
        let full = peer(
            (0..MAX_PER_PEER)
                .map(|_| pooled(false, now, GROW_AT * 4))
                .collect(),
        );
        assert!(
            matches!(full.choose(), Choice::Use(_)),
            "never more than MAX_PER_PEER"
        );
    }
}
