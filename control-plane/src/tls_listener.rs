//! TLS for the control plane's gRPC listeners.
//!
//! tonic is given already-handshaken streams, so the rustls configs come from the one
//! place that builds them (`vigil_identity::tls`) and a slow or hostile client's handshake
//! runs in its own task, with a deadline, never in front of anyone else's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use vigil_identity::SpiffeId;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes run at once per listener. When thousands of proxies reconnect together
/// (a control-plane restart), the rest wait their turn on an accepted socket instead of
/// all sharing the CPU until every one of them times out.
const CONCURRENT_HANDSHAKES: usize = 128;

/// What a gRPC handler learns about its caller, from the verified TLS session only.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub address: SocketAddr,
    /// The caller's verified SPIFFE ID (mTLS listeners only).
    pub spiffe_id: Option<SpiffeId>,
}

/// A handshaken TLS connection handed to tonic.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections, handshakes each in its own task and yields the ones that
/// succeed. Failures are logged with the reason and do not disturb anyone else.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    name: &'static str,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let admission = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, address) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let admission = admission.clone();
            tokio::spawn(async move {
                let Ok(_turn) = admission.acquire_owned().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(listener = name, peer = %address, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(listener = name, peer = %address, "TLS handshake timed out");
                        return;
                    }
                };
                let spiffe_id = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| vigil_identity::peer_spiffe_id(certs).ok());
                let conn = TlsConnection {
                    stream,
                    peer: PeerInfo { address, spiffe_id },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
