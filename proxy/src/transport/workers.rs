//! Traffic workers, one thread each, each with a single-threaded runtime of its own.
//!
//! A connection is accepted once and handed to one worker, round robin; from then on
//! everything it causes (its requests, their streams on the peer connection, the
//! connection to the app, the responses) runs on that worker's thread, which also owns
//! its own connections to peers and to the app. A request therefore never wakes another
//! thread: on tokio's work-stealing scheduler the same request path crossed threads at
//! almost every hop (client connection → peer connection task → stream task → app
//! connection task and back), and each crossing cost a futex wake and a context switch,
//! about a third of the proxy's CPU on the benchmark. A single-threaded runtime also
//! queues a woken task behind the ones already ready instead of running it at once, so
//! the requests of many client connections leave in one write on the peer connection.
//!
//! Worker 0 is the thread that called [`Workers::start`] (it also runs the listeners,
//! the admin port and discovery); workers 1.. are threads started here.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A connection's work, made on the worker that runs it (a socket belongs to the
/// runtime that registered it, so it crosses threads as a `std` socket).
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker the current thread is (0 outside any worker thread), so per-worker
/// resources such as peer connections can be chosen without locks or hand-offs.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// The traffic workers.
pub struct Workers {
    /// Queues of workers 1..; worker 0 runs its jobs in place.
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` workers (at least one): the calling thread, which must be inside a
    /// tokio runtime, and `count - 1` new threads.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut queues = Vec::new();
        for index in 1..count.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("vigil-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(index));
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job());
                        }
                    });
                })?;
            queues.push(tx);
        }
        Ok(Workers {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.queues.len() + 1
    }

    /// Runs `serve` for an accepted connection on the next worker.
    pub fn run<F, Fut>(&self, tcp: TcpStream, peer: SocketAddr, serve: F)
    where
        F: FnOnce(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.count();
        if index == 0 {
            tokio::spawn(serve(tcp, peer));
            return;
        }
        let Ok(std) = tcp.into_std() else {
            return;
        };
        let job: Job = Box::new(move || {
            Box::pin(async move {
                match TcpStream::from_std(std) {
                    Ok(tcp) => serve(tcp, peer).await,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "a worker could not take a connection")
                    }
                }
            })
        });
        if self.queues[index - 1].send(job).is_err() {
            tracing::error!(
                worker = index,
                "a traffic worker has stopped; connection dropped"
            );
        }
    }
}

/// Every `timeout / 4` (at least 100 ms), calls `sweep` on each worker's set of `sets`
/// with the time now, until the sets are gone: how the per-worker connection pools close
/// connections left unused for `timeout`.
pub async fn sweep_idle<T>(
    sets: std::sync::Weak<[std::sync::Mutex<T>]>,
    timeout: std::time::Duration,
    sweep: impl Fn(&mut T, tokio::time::Instant),
) {
    let period = (timeout / 4).max(std::time::Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(sets) = sets.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        for set in sets.iter() {
            if let Ok(mut set) = set.lock() {
                sweep(&mut set, now);
            }
        }
    }
}
