//! The accept loop every listener shares: one task per connection, a pause instead of a
//! spin when accept fails (EMFILE and friends), connection limits per listener and per
//! source address, and no new connections once the proxy is draining.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::ConnectionLimits;
use crate::transport::drain::Drain;
use crate::transport::workers::Workers;

/// Counts a listener's open connections, in total and by source IP.
struct Admission {
    limits: ConnectionLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Releases a connection's place when it ends.
struct Place {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut open) = self.admission.open.lock() {
            open.0 = open.0.saturating_sub(1);
            if let Some(n) = open.1.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    open.1.remove(&self.source);
                }
            }
        }
    }
}

impl Admission {
    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Place, &'static str> {
        let mut open = self.open.lock().map_err(|_| "internal")?;
        if open.0 >= self.limits.max_connections {
            return Err("listener connection limit");
        }
        let per_source = open.1.entry(source).or_insert(0);
        if *per_source >= self.limits.max_per_source {
            return Err("per-source connection limit");
        }
        *per_source += 1;
        open.0 += 1;
        Ok(Place {
            admission: self.clone(),
            source,
        })
    }
}

/// Accepts until draining starts (never, without a `drain`: the admin and metrics
/// listeners stay up to report the drain), spawning `handle` for each admitted connection
/// on this thread.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    drain: Option<Arc<Drain>>,
    limits: ConnectionLimits,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept(listener, name, drain, limits, None, handle).await
}

/// [`accept_loop`] for a traffic listener: each admitted connection is served on the next
/// of `workers`.
pub async fn accept_traffic<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    drain: Arc<Drain>,
    limits: ConnectionLimits,
    workers: Arc<Workers>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept(listener, name, Some(drain), limits, Some(workers), handle).await
}

async fn accept<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    drain: Option<Arc<Drain>>,
    limits: ConnectionLimits,
    workers: Option<Arc<Workers>>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admission = Arc::new(Admission {
        limits,
        open: Mutex::new((0, HashMap::new())),
    });
    let mut pause = Duration::from_millis(5);
    let tracked = drain.clone();
    let stop = async move {
        match drain {
            Some(d) => d.started().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let start = |tcp: TcpStream, peer: SocketAddr| {
        let place = match admission.admit(peer.ip()) {
            Ok(place) => place,
            Err(reason) => {
                tracing::warn!(listener = name, %peer, reason, "connection refused");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Counted from accept, so a drain waits for connections still in their TLS
        // handshake or protocol detection too.
        let open = tracked.as_ref().map(|d| d.guard());
        // `map`, not an async block around `task.await`: the block would hold the
        // connection's future twice (once captured, once being awaited), doubling the
        // memory every connection costs.
        let handle = handle.clone();
        let serve = move |tcp, peer| {
            handle(tcp, peer).map(move |()| {
                drop(place);
                drop(open);
            })
        };
        match &workers {
            Some(workers) => workers.run(tcp, peer, serve),
            None => {
                tokio::spawn(serve(tcp, peer));
            }
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => None,
            accepted = listener.accept() => Some(accepted),
        };
        let Some(accepted) = accepted else {
            tracing::info!(listener = name, "draining: no longer accepting connections");
            for (tcp, peer) in queued(listener) {
                start(tcp, peer);
            }
            return;
        };
        match accepted {
            Ok((tcp, peer)) => {
                pause = Duration::from_millis(5);
                start(tcp, peer);
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, retry_in = ?pause, "accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Connections the kernel completes and queues before the proxy accepts them. tokio's
/// `TcpListener::bind` asks for 1,024 and some kernels give 128; a burst of clients, or a
/// moment without file descriptors, would have SYNs dropped and clients retrying for
/// seconds. The kernel caps this at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Most queued connections taken when a listener closes.
const MAX_QUEUED: usize = 4096;

/// Closes `listener`, first taking the connections the kernel has already completed.
/// Their clients have connected and likely sent a request; closing the listener with
/// them still queued would reset them, so they are served once (with `connection:
/// close` or a GOAWAY) like every other connection open when the drain began.
fn queued(listener: TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    let Ok(listener) = listener.into_std() else {
        return Vec::new();
    };
    let mut taken = Vec::new();
    // Non-blocking: stops at the first WouldBlock, when the queue is empty.
    while taken.len() < MAX_QUEUED {
        let Ok((tcp, peer)) = listener.accept() else {
            break;
        };
        if let Ok(tcp) = tcp
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(tcp))
        {
            taken.push((tcp, peer));
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_per_source_and_in_total() {
        let a = Arc::new(Admission {
            limits: ConnectionLimits {
                max_connections: 3,
                max_per_source: 2,
            },
            open: Mutex::new((0, HashMap::new())),
        });
        let one: IpAddr = "10.0.0.1".parse().expect("ip");
        let two: IpAddr = "10.0.0.2".parse().expect("ip");
        let p1 = a.admit(one).expect("first");
        let _p2 = a.admit(one).expect("second");
        assert_eq!(a.admit(one).err(), Some("per-source connection limit"));
        let _p3 = a.admit(two).expect("other source");
        assert_eq!(a.admit(two).err(), Some("listener connection limit"));
        drop(p1);
        assert!(a.admit(one).is_ok(), "a closed connection frees its place");
    }

    #[tokio::test]
    async fn closing_takes_the_queued_connections_then_refuses_new_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        // The kernel completes these handshakes and queues them; nobody accepts yet.
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        assert_eq!(queued(listener).len(), clients.len());
        assert!(std::net::TcpStream::connect(addr).is_err(), "closed");
    }
}
