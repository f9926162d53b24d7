//! Keep-alive HTTP/1.1 connections to the local application, one set per traffic worker.
//!
//! A request takes the connection its worker used last (or opens one), and the connection
//! goes back to that worker's set when the response body has been read to its end, from
//! the body itself. A connection the app closed while it sat unused is found closed
//! before the request is written, and the request goes on a fresh connection instead; one
//! unused for the idle timeout is closed; a connection whose response switched protocols
//! (an upgrade) or whose body was not read to its end is never reused.
//!
//! Written here rather than taken from hyper-util's pooled client, which the proxy used
//! before: that client serves any number of origins, and on the benchmark it cost about
//! 7% of the server proxy's CPU: a large future boxed per request, a SipHash of the
//! origin per checkout, an absolute URI built and parsed per request, and a task spawned
//! per request only to put the connection back once the response was read. The app is one
//! address, reached from the worker that took the request.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::body::{self, Body};

/// Most unused connections a worker keeps; more are closed as their responses end.
const MAX_IDLE: usize = 256;

/// One worker's unused connections, most recently used last.
type Idle = Mutex<Vec<Kept>>;

/// An unused connection.
struct Kept {
    port: u16,
    sender: SendRequest<Body>,
    since: Instant,
}

/// Connections to the app on 127.0.0.1.
pub struct AppPool {
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Indexed by worker.
    idle: Arc<[Idle]>,
    reaper: Once,
}

/// Why a request did not reach the app, or its answer did not come back.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("connecting to 127.0.0.1:{port}: {reason}")]
    Connect { port: u16, reason: String },
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl AppPool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, workers: usize) -> Self {
        AppPool {
            connect_timeout,
            idle_timeout,
            idle: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            reaper: Once::new(),
        }
    }

    /// Sends `request` (its URI in origin form, its `Host` set) to the app on `port`. The
    /// response's body puts the connection back when it has been read to its end.
    pub async fn send(
        &self,
        port: u16,
        mut request: Request<Body>,
    ) -> Result<Response<Body>, AppError> {
        let worker = self.worker();
        loop {
            let (mut sender, kept) = match self.take(worker, port) {
                Some(sender) => (sender, true),
                // Boxed: connecting is rare, and inline its state would be copied with
                // every request's future.
                None => (Box::pin(self.connect(port)).await?, false),
            };
            if kept {
                // Ready as soon as its last response was read, unless the app answered
                // before it had the whole request body (still being sent): such a
                // connection is given up rather than waited for.
                let ready = std::future::poll_fn(|cx| Poll::Ready(sender.poll_ready(cx))).await;
                if !matches!(ready, Poll::Ready(Ok(()))) {
                    tracing::debug!(port, "closing an app connection not ready for reuse");
                    continue;
                }
            } else {
                sender.ready().await?;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.returning(worker, port, sender, response)),
                Err(mut e) => match e.take_message() {
                    // The app closed a kept connection before it took the request: the
                    // request was not written, so it goes on another connection.
                    Some(unsent) if kept => request = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// Number of unused connections kept.
    pub fn idle(&self) -> usize {
        self.idle
            .iter()
            .filter_map(|w| w.lock().ok())
            .map(|w| w.len())
            .sum()
    }

    fn worker(&self) -> usize {
        super::workers::current() % self.idle.len()
    }

    /// The worker's most recently used open connection to `port`.
    fn take(&self, worker: usize, port: u16) -> Option<SendRequest<Body>> {
        let mut idle = self.idle[worker].lock().ok()?;
        while let Some(at) = idle.iter().rposition(|k| k.port == port) {
            let kept = idle.swap_remove(at);
            if !kept.sender.is_closed() {
                return Some(kept.sender);
            }
        }
        None
    }

    async fn connect(&self, port: u16) -> Result<SendRequest<Body>, AppError> {
        let failed = |reason: String| AppError::Connect { port, reason };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(port, error = %e, "app connection closed");
            }
        });
        self.reaper.call_once(|| {
            let (idle, timeout) = (Arc::downgrade(&self.idle), self.idle_timeout);
            let sweep =
                super::workers::sweep_idle(idle, timeout, move |kept: &mut Vec<Kept>, now| {
                    kept.retain(|k| {
                        !k.sender.is_closed() && now.saturating_duration_since(k.since) < timeout
                    });
                });
            drop(tokio::spawn(sweep));
        });
        Ok(sender)
    }

    /// The response, its body carrying the connection back to `worker`'s set.
    fn returning(
        &self,
        worker: usize,
        port: u16,
        sender: SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection is the upgraded stream's now.
            return response.map(body::boxed);
        }
        let back = Back {
            idle: self.idle.clone(),
            worker,
            port,
            sender,
        };
        response.map(|incoming| {
            body::boxed(Returning {
                incoming,
                ended: false,
                back: Some(back),
            })
        })
    }
}

/// Where a connection goes back to.
struct Back {
    idle: Arc<[Idle]>,
    worker: usize,
    port: u16,
    sender: SendRequest<Body>,
}

impl Back {
    fn put(self) {
        let Ok(mut idle) = self.idle[self.worker].lock() else {
            return;
        };
        if idle.len() < MAX_IDLE {
            idle.push(Kept {
                port: self.port,
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

/// A response body from the app that puts its connection back once read to its end.
struct Returning {
    incoming: Incoming,
    ended: bool,
    back: Option<Back>,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.incoming).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // Only a body read to its end leaves the connection ready for another request
        // (servers that read a body to the end may never ask for the frame after the
        // last one); a connection given up mid-body is closed with it.
        if self.ended || self.incoming.is_end_stream() {
            if let Some(back) = self.back.take() {
                back.put();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An app on loopback answering every request with `hello`; it closes each
    /// connection after its first answer when `close_after_one`. Returns its port and
    /// how many connections it accepted.
    async fn app(close_after_one: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    loop {
                        match tcp.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                        if head.ends_with(b"\r\n\r\n") {
                            head.clear();
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                            if tcp.write_all(answer).await.is_err() || close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn get() -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "app")
            .body(body::empty())
            .unwrap()
    }

    fn pool(idle_timeout: Duration) -> AppPool {
        AppPool::new(Duration::from_secs(2), idle_timeout, 1)
    }

    async fn read(response: Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (port, accepted) = app(false).await;
        let pool = pool(Duration::from_secs(90));
        for _ in 0..3 {
            let response = pool.send(port, get()).await.unwrap();
            assert_eq!(read(response).await, "hello");
            assert_eq!(pool.idle(), 1, "back once read");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for all three"
        );
    }

    #[tokio::test]
    async fn a_response_given_up_before_its_end_closes_its_connection() {
        let (port, accepted) = app(false).await;
        let pool = pool(Duration::from_secs(90));
        let unread = pool.send(port, get()).await.unwrap();
        drop(unread);
        assert_eq!(pool.idle(), 0, "a connection mid-body is not kept");
        let response = pool.send(port, get()).await.unwrap();
        assert_eq!(read(response).await, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_kept_connection_the_app_closed_is_replaced_without_an_error() {
        let (port, accepted) = app(true).await;
        let pool = pool(Duration::from_secs(90));
        for _ in 0..3 {
            let response = pool.send(port, get()).await.unwrap();
            assert_eq!(read(response).await, "hello");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "a new connection each time"
        );
    }

    #[tokio::test]
    async fn an_app_that_does_not_listen_is_named_in_the_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let error = pool(Duration::from_secs(90))
            .send(port, get())
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("connecting to 127.0.0.1:{port}: ")),
            "{message}"
        );
    }

    #[tokio::test]
    async fn connections_unused_for_the_idle_timeout_are_closed() {
        let (port, _) = app(false).await;
        let pool = pool(Duration::from_millis(200));
        let response = pool.send(port, get()).await.unwrap();
        assert_eq!(read(response).await, "hello");
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle(), 0, "closed after 200 ms unused");
    }
}
