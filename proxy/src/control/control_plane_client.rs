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
