//! Counters the proxy keeps about itself, shown on the admin endpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Request and connection counters.
#[derive(Default)]
pub struct Stats {
    inbound_requests: AtomicU64,
    outbound_requests: AtomicU64,
    outbound_tunnels: AtomicU64,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    pub inbound_requests: u64,
    pub outbound_requests: u64,
    pub outbound_tunnels: u64,
    pub handshake_failures: BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn inbound_request(&self) {
        self.inbound_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn outbound_request(&self) {
        self.outbound_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn outbound_tunnel(&self) {
        self.outbound_tunnels.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused TLS handshake by reason.
    pub fn handshake_failure(&self, reason: &'static str) {
        if let Ok(mut m) = self.handshake_failures.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            inbound_requests: self.inbound_requests.load(Ordering::Relaxed),
            outbound_requests: self.outbound_requests.load(Ordering::Relaxed),
            outbound_tunnels: self.outbound_tunnels.load(Ordering::Relaxed),
            handshake_failures: self
                .handshake_failures
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
        }
    }
}
