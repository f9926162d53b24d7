//! Serving one accepted connection until it ends, the same way on both traffic
//! listeners: HTTP connections finish gracefully when the proxy drains or when they have
//! been idle too long, and opaque TCP tunnels close when no byte has crossed them for the
//! idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::http::body::Body;
use crate::transport::drain::Drain;
use crate::transport::preface::Prefixed;

/// When a connection last did something, and whether it is doing something now.
struct Activity {
    origin: Instant,
    /// Milliseconds from `origin` to the last activity.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing is in flight and nothing has happened for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let due = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle;
            let now = Instant::now();
            if now >= due {
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                // Busy: look again once a request that ends now would have gone idle.
                tokio::time::sleep_until(now + idle).await;
            } else {
                tokio::time::sleep_until(due).await;
            }
        }
    }
}

/// Counts a request in flight on its connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<C: Finishing> Finishing for crate::transport::cork::Uncorking<C> {
    fn finish(self: Pin<&mut Self>) {
        self.inner().finish();
    }
}

/// A served connection that can be asked to finish: hyper's HTTP/1 (with upgrades) and
/// HTTP/2 server connections. hyper-util's `GracefulConnection` would do, but it does not
/// cover HTTP/1 connections with upgrades, which both listeners need.
trait Finishing: Future<Output = Result<(), hyper::Error>> {
    fn finish(self: Pin<&mut Self>);
}

impl<I, S> Finishing for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Finishing for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves HTTP/1 or HTTP/2 on `io`, answering each request with `handle`. The protocol
/// comes from the first bytes [`read_preface`](crate::transport::preface::read_preface) already read
/// under a deadline (the HTTP/2 preface or not), so the connection goes straight to
/// hyper's HTTP/1 or HTTP/2 server: one look at the bytes, no second sniffing. Once
/// draining starts, or after `idle` with no request, HTTP/1 gets `connection: close` and
/// HTTP/2 a GOAWAY, and requests in flight finish.
pub async fn http<S, F, Fut>(
    config: &crate::config::ProxyConfig,
    drain: &Arc<Drain>,
    io: Prefixed<S>,
    handle: F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let _open = drain.guard();
    let activity = Arc::new(Activity::new());
    let busy = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let request = Busy::new(&busy);
        // Boxed: hyper's HTTP/1 dispatcher keeps the request future inline in the
        // connection's own future, so unboxed its size (the whole request path) was held
        // by every idle keep-alive connection, about 27 KB each.
        let response = Box::pin(handle(req));
        async move {
            let response = response.await;
            drop(request);
            Ok::<_, Infallible>(response)
        }
    });
    let served = if io.is_http2() {
        // Each poll's frames leave in one write (and one TLS record).
        let io = crate::transport::cork::Corked::new(io);
        let conn = http2_server(config).serve_connection(TokioIo::new(io), service);
        let conn = crate::transport::cork::Uncorking::new(conn);
        until_finished(conn, config, drain, &activity).await
    } else {
        let conn = http1_server(config)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        until_finished(conn, config, drain, &activity).await
    };
    served.map_err(Into::into)
}

async fn until_finished<C: Finishing>(
    conn: C,
    config: &crate::config::ProxyConfig,
    drain: &Drain,
    activity: &Activity,
) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    tokio::select! {
        // The connection first, so one accepted as the drain starts still reads its
        // request before it is asked to finish.
        biased;
        served = conn.as_mut() => served,
        _ = drain.started() => {
            conn.as_mut().finish();
            conn.await
        }
        _ = activity.idle_for(config.idle_timeout) => {
            tracing::debug!(idle = ?config.idle_timeout, "closing an idle connection");
            conn.as_mut().finish();
            conn.await
        }
    }
}

/// hyper's own HTTP/1 header-count limit (its default).
const HYPER_MAX_HEADERS: usize = 100;

/// The HTTP/1 server settings both traffic listeners use: head size and read-time limits
/// (slowloris).
fn http1_server(config: &crate::config::ProxyConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    // hyper parses up to 100 headers into a stack array; any explicit limit, even 100,
    // moves that array to the heap for every request (about 5% slower, says hyper).
    if config.request_limits.max_headers != HYPER_MAX_HEADERS {
        builder.max_headers(config.request_limits.max_headers);
    }
    builder
}

/// The HTTP/2 server settings both traffic listeners use: stream and header-list limits,
/// reset-flood protection, and extended CONNECT for upgrades between proxies.
fn http2_server(
    config: &crate::config::ProxyConfig,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        // Extended CONNECT (RFC 8441): HTTP/1.1 upgrades between proxies.
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.http2.max_concurrent_streams)
        .max_pending_accept_reset_streams(config.http2.max_pending_resets)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(std::time::Duration::from_secs(60));
    builder
}

/// Whether a connection ended because the client sent bytes that are no valid HTTP
/// request (hyper then answered 400, 414 or 431 itself before closing).
pub fn malformed_request(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<hyper::Error>()
        .is_some_and(|e| e.is_parse() || e.is_parse_status() || e.is_parse_too_large())
}

/// Joins two upgraded streams once both sides have switched, until either ends or no
/// byte crosses for `idle`.
pub fn splice(
    a: hyper::upgrade::OnUpgrade,
    b: hyper::upgrade::OnUpgrade,
    idle: Duration,
    direction: &'static str,
) {
    tokio::spawn(async move {
        match tokio::try_join!(a, b) {
            Ok((a, b)) => {
                let tunneled = tunnel(&mut TokioIo::new(a), &mut TokioIo::new(b), idle).await;
                tracing::debug!(
                    direction,
                    sent = tunneled.forward,
                    received = tunneled.backward,
                    result = ?tunneled.result,
                    "upgraded connection ended"
                );
            }
            Err(e) => tracing::debug!(direction, error = %e, "upgrade did not complete"),
        }
    });
}

/// How a tunnel ended, and what crossed it.
#[derive(Debug)]
pub struct Tunneled {
    /// Bytes read from the first stream (and written to the second).
    pub forward: u64,
    /// Bytes read from the second stream (and written to the first).
    pub backward: u64,
    /// `Ok` when both sides closed; the error otherwise, `TimedOut` when it went idle.
    pub result: io::Result<()>,
}

/// Copies bytes both ways between `a` and `b` until both close, either fails, or no byte
/// has crossed either way for `idle`.
pub async fn tunnel<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Tunneled
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut a = Metered::new(a, &activity);
    let mut b = Metered::new(b, &activity);
    let result = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut a, &mut b) => copied.map(|_| ()),
        _ = activity.idle_for(idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no bytes either way for {}", humantime::format_duration(idle)),
        )),
    };
    Tunneled {
        forward: a.read,
        backward: b.read,
        result,
    }
}

/// A stream that counts the bytes read from it and marks each read as activity.
struct Metered<'a, S> {
    inner: &'a mut S,
    activity: &'a Activity,
    read: u64,
}

impl<'a, S> Metered<'a, S> {
    fn new(inner: &'a mut S, activity: &'a Activity) -> Self {
        Metered {
            inner,
            activity,
            read: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_closes_after_the_idle_timeout_with_its_counts() {
        let (mut near, mut a) = tokio::io::duplex(64);
        let (mut b, mut far) = tokio::io::duplex(64);
        let run = tokio::spawn(async move {
            let t = tunnel(&mut a, &mut b, Duration::from_secs(30)).await;
            (t.forward, t.backward, t.result.map_err(|e| e.kind()))
        });
        near.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        // Traffic at 20 s keeps it open past 30 s from the start...
        tokio::time::sleep(Duration::from_secs(20)).await;
        far.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        near.read_exact(&mut got).await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(!run.is_finished());
        // ...and 30 s of silence after it closes it.
        let (forward, backward, result) = run.await.unwrap();
        assert_eq!((forward, backward), (4, 5));
        assert_eq!(result, Err(io::ErrorKind::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_a_request_in_flight_is_not_idle() {
        let activity = Arc::new(Activity::new());
        let request = Busy::new(&activity);
        let idle = activity.idle_for(Duration::from_secs(5));
        tokio::pin!(idle);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), idle.as_mut())
                .await
                .is_err(),
            "a long request keeps its connection"
        );
        drop(request);
        let ended = Instant::now();
        idle.await;
        assert!(ended.elapsed() >= Duration::from_secs(5));
    }
}
