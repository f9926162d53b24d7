//! The first bytes of a connection, read under a deadline before hyper sees them.
//!
//! hyper-util's automatic HTTP/1-or-2 server first sniffs up to 24 bytes for the HTTP/2
//! preface, with no deadline of its own and before HTTP/1's header read timeout starts:
//! a client that sends nothing, or stops half-way through the preface, would hold its
//! connection (and its memory) forever. [`read_preface`] reads those bytes under the
//! header read timeout and [`Prefixed`] hands them back to hyper, whose sniffing then
//! finishes at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose first bytes were already read; reads return them first.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Whether the client sent the HTTP/2 preface (prior knowledge); HTTP/1 otherwise.
    /// Meaningful before the first read.
    pub fn is_http2(&self) -> bool {
        self.prefix.as_ref() == H2_PREFACE
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Reads until the bytes either complete the HTTP/2 preface or rule it out (so hyper
/// knows the protocol), within `deadline`. `Ok(None)` when the client closed first;
/// an error of kind `TimedOut` when it was too slow.
pub async fn read_preface<S: AsyncRead + Unpin>(
    mut stream: S,
    deadline: Duration,
) -> io::Result<Option<Prefixed<S>>> {
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let sniff = async {
        let mut chunk = [0u8; H2_PREFACE.len()];
        loop {
            let want = H2_PREFACE.len() - buf.len();
            let n = stream.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Ok::<_, io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() == H2_PREFACE.len() || !H2_PREFACE.starts_with(&buf) {
                return Ok(true);
            }
        }
    };
    match tokio::time::timeout(deadline, sniff).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no request within {deadline:?} ({} bytes received)",
                buf.len()
            ),
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(false)) => Ok(None),
        Ok(Ok(true)) => Ok(Some(Prefixed {
            prefix: Bytes::from(buf),
            inner: stream,
        })),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn http1_bytes_are_handed_back_whole() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = read_preface(server, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("not closed");
        drop(client);
        let mut all = Vec::new();
        got.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn the_whole_http2_preface_is_read_and_handed_back() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(H2_PREFACE).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let mut got = read_preface(server, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("not closed");
        let mut first = vec![0u8; H2_PREFACE.len() + 6];
        got.read_exact(&mut first).await.unwrap();
        assert_eq!(&first[..H2_PREFACE.len()], H2_PREFACE);
        assert_eq!(&first[H2_PREFACE.len()..], b"frames");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_or_half_a_preface_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let err = read_preface(server, Duration::from_secs(2))
            .await
            .err()
            .expect("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..22]).await.unwrap();
        let err = read_preface(server, Duration::from_secs(2))
            .await
            .err()
            .expect("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_client_that_leaves_is_none() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(read_preface(server, Duration::from_secs(1))
            .await
            .unwrap()
            .is_none());
    }
}
