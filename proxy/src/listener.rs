//! The accept loop every listener shares: one task per connection, and a pause instead
//! of a spin when accept fails (EMFILE and friends).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Accepts forever, spawning `handle` for each connection.
pub async fn accept_loop<F, Fut>(listener: TcpListener, name: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut pause = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                pause = Duration::from_millis(5);
                let _ = tcp.set_nodelay(true);
                tokio::spawn(handle(tcp, peer));
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, retry_in = ?pause, "accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
