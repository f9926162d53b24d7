//! A write deadline on client connections. A peer that stops reading (a slow-read attack,
//! or a client that hung) leaves the proxy's writes pending forever, holding the
//! connection, its buffers and the upstream response behind it; idle timeouts do not see
//! it, because a response is still in progress. [`WriteStall`] fails a write that has made
//! no progress for the timeout, which closes the connection.
//!
//! Written by hand: neither tokio, hyper nor tokio-rustls has a write timeout on a stream,
//! and one on the whole response would cut slow-but-live readers off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A stream whose writes fail once they have been stuck for `timeout`.
pub struct WriteStall<S> {
    inner: S,
    timeout: Duration,
    /// Runs while a write is pending; dropped as soon as one makes progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteStall {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Turns a pending write into an error once it has been pending for the timeout; a
    /// finished one clears the clock.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match clock.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer read nothing for {}; closing (--write-stall-timeout)",
                    humantime::format_duration(timeout)
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_stuck_for_the_timeout_fails_and_a_slow_reader_is_kept() {
        // A 64-byte pipe: writes block as soon as the reader falls behind.
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = WriteStall::new(near, Duration::from_secs(10));

        // A reader taking 8 bytes every 5 s: slow, but never stuck for 10 s.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 8];
            while got < 200 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                got += far.read(&mut buf).await.expect("read");
            }
            far
        });
        stream
            .write_all(&[7u8; 200])
            .await
            .expect("a slow reader is kept");
        let mut far = reader.await.expect("reader");

        // Now nobody reads: the write fails after 10 s.
        let started = tokio::time::Instant::now();
        let err = stream
            .write_all(&[7u8; 200])
            .await
            .expect_err("a stalled write fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(10));
        let mut rest = Vec::new();
        drop(stream);
        far.read_to_end(&mut rest).await.expect("drain");
        assert!(rest.len() <= 64);
    }
}
