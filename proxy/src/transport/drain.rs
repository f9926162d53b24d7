//! Graceful shutdown. On SIGTERM or `POST /shutdown` the proxy first reports not ready,
//! stops accepting, asks every open connection to finish (HTTP/1 `connection: close`,
//! HTTP/2 GOAWAY), waits for in-flight requests up to a deadline, then exits.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// The shared drain signal and the count of open connections.
pub struct Drain {
    signal: watch::Sender<bool>,
    open: AtomicUsize,
    closed: Notify,
}

/// Held by each connection; dropping it marks the connection finished.
pub struct ConnectionGuard {
    drain: Arc<Drain>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.drain.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.closed.notify_waiters();
        }
    }
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain {
            signal: watch::channel(false).0,
            open: AtomicUsize::new(0),
            closed: Notify::new(),
        })
    }

    /// Whether draining has begun (readiness reports false from then on).
    pub fn draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Begins draining. Idempotent.
    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    /// Resolves once draining has begun, never on its first poll: a connection that
    /// selects on this beside itself gets one turn first, so one handed over as the drain
    /// begins still reads the request its client already sent instead of being asked to
    /// finish before its first read.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.signal.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
            tokio::task::yield_now().await;
        }
    }

    /// Registers an open connection.
    pub fn guard(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            drain: self.clone(),
        }
    }

    /// Open connections right now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until every connection has finished, or `deadline` passes. Returns how many
    /// were still open.
    pub async fn wait(&self, deadline: Duration) -> usize {
        let all_closed = async {
            loop {
                let notified = self.closed.notified();
                if self.open_connections() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, all_closed).await;
        self.open_connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_open_connections_until_the_deadline() {
        let drain = Drain::new();
        let guard = drain.guard();
        assert!(!drain.draining());
        drain.start();
        assert!(drain.draining());
        let d = drain.clone();
        let waiter = tokio::spawn(async move { d.wait(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(guard);
        assert_eq!(waiter.await.expect("join"), 0);

        let _stuck = drain.guard();
        assert_eq!(
            drain.wait(Duration::from_secs(2)).await,
            1,
            "gives up at the deadline"
        );
    }
}
