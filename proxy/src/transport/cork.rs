//! Gathering an HTTP/2 connection's writes until its task has nothing more to say.
//!
//! h2 hands each DATA frame larger than 256 bytes to its transport as a write of its own
//! and flushes the transport before it takes the next frame. Under TLS every such write
//! is a record and a `writev`: a server proxy answering 30 streams at once wrote 30
//! records and made 30 system calls, one per response body, where one of each would do
//! (and the peer proxy then read and decrypted 30 records). Buffering alone does not help,
//! because h2 flushes between frames.
//!
//! So the stream handed to hyper ([`Corked`]) keeps what is written, and a flush made
//! while its task is being polled through [`Uncorking`] is put off until that poll is
//! over: the driver then polls the connection once more with flushes made real, and
//! everything written during the first poll leaves in one write. h2 flushes at the end of
//! every poll, so nothing is held past the poll that wrote it and nothing waits on a
//! timer. A flush made outside a driver is real; a full buffer is written through at once
//! (backpressure is the socket's); shutting down writes what is kept. The driver's state
//! is the thread's, so a flush only ever counts for the task being polled on it.
//!
//! No crate does this: tokio's `BufWriter` writes on every flush, and h2's threshold for
//! writing a frame by itself is not configurable.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes kept before they are written regardless: one TLS record's worth.
const CAPACITY: usize = 16 * 1024;

/// What the task being polled on this thread says about flushes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Driving {
    /// Not polled through [`Uncorking`]: flushes are real.
    No,
    /// First poll: flushes are put off.
    Corked,
    /// First poll, and a flush was put off.
    Wanted,
    /// The poll after it: flushes are real.
    Uncorked,
}

thread_local! {
    static DRIVING: Cell<Driving> = const { Cell::new(Driving::No) };
    /// The thread's buffer for gathering writes, lent to a stream from its first kept
    /// write until it is all written. Everything kept normally leaves before the poll that
    /// kept it ends, so one buffer serves all of a worker's connections: no allocation
    /// per write, and an idle connection holds none.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

impl Driving {
    /// Whether a flush with bytes kept is to be put off (and remembered).
    fn put_off() -> bool {
        DRIVING.with(|d| match d.get() {
            Driving::Corked | Driving::Wanted => {
                d.set(Driving::Wanted);
                true
            }
            Driving::No | Driving::Uncorked => false,
        })
    }

    /// Sets the state, giving the one it replaces.
    fn replace(state: Driving) -> Driving {
        DRIVING.with(|d| d.replace(state))
    }
}

/// A stream whose flushes wait for the end of its task's poll (see the module docs).
pub struct Corked<S> {
    io: S,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
}

impl<S> Corked<S> {
    pub fn new(io: S) -> Self {
        Corked {
            io,
            buf: Vec::new(),
            written: 0,
        }
    }
}

pin_project_lite::pin_project! {
    /// A future (a connection, or any task hyper starts for one) polled so that the
    /// [`Corked`] writes it makes during a poll leave together before the poll ends.
    pub struct Uncorking<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Uncorking<F> {
    pub fn new(inner: F) -> Self {
        Uncorking { inner }
    }

    /// The future inside.
    pub fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }
}

impl<F: Future> Future for Uncorking<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut inner = self.project().inner;
        let outer = Driving::replace(Driving::Corked);
        let mut polled = inner.as_mut().poll(cx);
        if Driving::replace(Driving::Uncorked) == Driving::Wanted && polled.is_pending() {
            // Everything the first poll wrote is kept: poll again with flushes made real
            // (h2 flushes at the end of each poll), so it all leaves now, in one write.
            polled = inner.as_mut().poll(cx);
        }
        Driving::replace(outer);
        polled
    }
}

/// hyper's executor for client connections: every task it starts for one (the
/// connection itself among them) is polled through [`Uncorking`].
#[derive(Clone, Copy, Debug, Default)]
pub struct UncorkingExecutor;

impl<F> hyper::rt::Executor<F> for UncorkingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // Boxed first: hyper's HTTP/2 client starts a task per request whose future is
        // about 1.4 KB, and tokio moves a task's whole future (or the slot it leaves) by
        // value about seven times between spawn and completion. Boxed, the task holds a
        // pointer, and the future is copied once, into its box.
        tokio::spawn(Uncorking::new(Box::pin(fut)));
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Writes out everything kept, or `Pending` with the socket's waker set.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Lent back to the thread: an idle connection holds no buffer.
        if self.buf.capacity() > 0 {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            SPARE.with(|spare| {
                let kept = spare.take();
                spare.set(if kept.capacity() >= buf.capacity() {
                    kept
                } else {
                    buf
                });
            });
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Keeps `data`, which fits.
    fn keep(&mut self, data: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = SPARE.take();
            self.buf.reserve(CAPACITY);
        }
        self.buf.extend_from_slice(data);
    }

    /// Room for `len` more bytes: the kept bytes written out first when they would not
    /// fit.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if self.buf.len() + len > CAPACITY && !self.buf.is_empty() {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_room(cx, data.len()))?;
        if data.len() >= CAPACITY {
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        this.keep(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum::<usize>();
        ready!(this.poll_room(cx, len))?;
        if len >= CAPACITY {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.keep(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.written < self.buf.len() && Driving::put_off() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;

    /// A sink that records each write it is given.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A connection that writes and flushes each message as it takes it, then flushes
    /// once more when it has nothing left to do, as h2 does.
    fn connection(
        mut stream: Corked<Writes>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<&'static [u8]>,
    ) -> impl Future<Output = io::Result<()>> {
        std::future::poll_fn(move |cx| loop {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(message)) => {
                    let n = ready!(Pin::new(&mut stream).poll_write(cx, message))?;
                    assert_eq!(n, message.len());
                    ready!(Pin::new(&mut stream).poll_flush(cx))?;
                }
                Poll::Ready(None) => return Pin::new(&mut stream).poll_shutdown(cx),
                Poll::Pending => {
                    ready!(Pin::new(&mut stream).poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        })
    }

    #[tokio::test]
    async fn writes_flushed_during_one_poll_leave_together_before_it_ends() {
        let sink = Writes::default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for m in [b"one ".as_slice(), b"two ", b"three"] {
            tx.send(m).unwrap();
        }
        let driven = tokio::spawn(Uncorking::new(connection(Corked::new(sink.clone()), rx)));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![b"one two three".to_vec()],
            "three flushed writes in one poll are one write, made before the poll ends"
        );
        tx.send(b"four").unwrap();
        drop(tx);
        driven.await.unwrap().unwrap();
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![b"one two three".to_vec(), b"four".to_vec()],
            "the next poll's write is its own, and shutting down writes what is kept"
        );
    }

    #[tokio::test]
    async fn without_a_driver_every_flush_is_real() {
        let sink = Writes::default();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for m in [b"one ".as_slice(), b"two "] {
            tx.send(m).unwrap();
        }
        drop(tx);
        tokio::spawn(connection(Corked::new(sink.clone()), rx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![b"one ".to_vec(), b"two ".to_vec()]
        );
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let sink = Writes::default();
        let mut stream = Corked::new(sink.clone());
        stream.write_all(b"frame").await.unwrap();
        assert!(stream.buf.capacity() >= CAPACITY, "kept until flushed");
        stream.flush().await.unwrap();
        assert_eq!(stream.buf.capacity(), 0, "given back once written");
        assert_eq!(*sink.0.lock().unwrap(), vec![b"frame".to_vec()]);
    }

    #[tokio::test]
    async fn streams_on_one_thread_share_one_buffer() {
        let sink = Writes::default();
        let (mut first, mut second) = (Corked::new(sink.clone()), Corked::new(sink.clone()));
        first.write_all(b"one").await.unwrap();
        let lent = first.buf.as_ptr();
        first.flush().await.unwrap();
        let spare = SPARE.with(|s| {
            let buf = s.take();
            let at = buf.as_ptr();
            s.set(buf);
            at
        });
        assert_eq!(spare, lent, "given back to the thread once written");
        second.write_all(b"two").await.unwrap();
        assert_eq!(
            second.buf.as_ptr(),
            lent,
            "the buffer is lent again, not allocated"
        );
        second.flush().await.unwrap();
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
    }

    #[tokio::test]
    async fn a_write_larger_than_the_buffer_goes_through_after_what_was_kept() {
        let sink = Writes::default();
        let mut stream = Corked::new(sink.clone());
        stream.write_all(b"head").await.unwrap();
        let big = vec![7u8; CAPACITY];
        stream.write_all(&big).await.unwrap();
        let writes = sink.0.lock().unwrap().clone();
        assert_eq!(writes, vec![b"head".to_vec(), big]);
    }
}
