//! gRPC channels to the control plane over TLS built by `vigil_identity::tls`, so the
//! control plane is verified by SPIFFE ID exactly like any peer proxy, and each handshake
//! is counted by what it negotiated.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use vigil_identity::SpiffeId;

use crate::telemetry::metrics::HandshakeDirection;

/// Connects a gRPC channel to `address`, verifying that the server is `expected`.
pub async fn connect(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    expected: &SpiffeId,
) -> Result<Channel, tonic::transport::Error> {
    let server_name = vigil_identity::server_name_for(expected);
    let connector = TlsConnector::from(tls);
    Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = TcpStream::connect(address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                HandshakeDirection::control_plane.record(tls.get_ref().1);
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}

/// The replicas of one control-plane service (identity or discovery). A proxy keeps to
/// the replica that answers and moves to the next when it stops answering, so two or more
/// control planes serving the same mesh share the proxies and cover for each other.
#[derive(Debug)]
pub struct Replicas {
    addresses: Vec<SocketAddr>,
    current: std::sync::atomic::AtomicUsize,
}

impl Replicas {
    /// Starts at a random replica, so a fleet spreads over the control planes rather than
    /// all landing on the first one listed.
    pub fn new(addresses: Vec<SocketAddr>) -> Replicas {
        let start = if addresses.len() > 1 {
            rand::random_range(0..addresses.len())
        } else {
            0
        };
        Replicas {
            addresses,
            current: start.into(),
        }
    }

    /// The replica to use now.
    pub fn current(&self) -> Option<SocketAddr> {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.addresses.get(i % self.addresses.len().max(1)).copied()
    }

    /// How many replicas there are.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    pub fn all(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// `failed` stopped answering: move on to the next replica, unless another caller
    /// already moved past it.
    pub fn failed(&self, failed: SocketAddr) {
        use std::sync::atomic::Ordering;
        let i = self.current.load(Ordering::Relaxed);
        if self.addresses.get(i % self.addresses.len().max(1)) == Some(&failed) {
            let next = (i + 1) % self.addresses.len().max(1);
            let _ = self
                .current
                .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_replica_hands_over_to_the_next_and_back_around() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let replicas = Replicas::new(vec![a, b, c]);
        let first = replicas.current().unwrap();
        let mut seen = vec![first];
        for _ in 0..3 {
            let now = replicas.current().unwrap();
            replicas.failed(now);
            seen.push(replicas.current().unwrap());
        }
        assert_eq!(
            seen.first(),
            seen.last(),
            "three failures go all the way round"
        );
        seen.pop();
        seen.sort();
        assert_eq!(seen, vec![a, b, c], "every replica is tried once per round");
        // A report about a replica no longer in use changes nothing.
        let now = replicas.current().unwrap();
        let stale = [a, b, c].into_iter().find(|x| *x != now).unwrap();
        replicas.failed(stale);
        assert_eq!(replicas.current(), Some(now));
    }
}
