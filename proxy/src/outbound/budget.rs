//! The retry budget: how many retries a service may send, so that retries never turn a
//! struggling service's trouble into a storm. Over a sliding window (10 s by default) a
//! service may retry `ratio` of its requests (20%) plus `min_per_second` × the window
//! (1/s), the floor that lets a quiet service retry at all. The floor is kept low because
//! at the few requests a second most services see it, not the ratio, sets the bound: a
//! floor of 10/s let a service at 4 requests/s retry every request twice.
//!
//! Not tower's `TpsBudget`: it turns the ratio into a whole number of requests per retry
//! (`1 / ratio`, truncated), so 0.3 allows 33% and 0.1 can allow 11%, and it panics on
//! values outside its range. This one keeps the ratio exact and takes any checked policy.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::traffic::RetryBudgetPolicy;

/// The window is kept as this many slots, each forgotten whole as it ages out.
const SLOTS: usize = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct Window {
    slots: [Slot; SLOTS],
    current: usize,
    /// When the current slot began.
    started: Instant,
}

/// A service's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries always allowed per window.
    floor: f64,
    slot: Duration,
    window: Mutex<Window>,
}

impl RetryBudget {
    pub fn new(policy: &RetryBudgetPolicy) -> Self {
        RetryBudget {
            ratio: policy.ratio,
            floor: f64::from(policy.min_per_second) * policy.window.as_secs_f64(),
            slot: (policy.window / SLOTS as u32).max(Duration::from_millis(1)),
            window: Mutex::new(Window {
                slots: [Slot::default(); SLOTS],
                current: 0,
                started: Instant::now(),
            }),
        }
    }

    /// Counts a request (once, whatever its retries).
    pub fn deposit(&self) {
        let mut w = self.current();
        let i = w.current;
        w.slots[i].requests += 1;
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut w = self.current();
        let (requests, retries) = w
            .slots
            .iter()
            .fold((0u64, 0u64), |(q, t), s| (q + s.requests, t + s.retries));
        // The epsilon keeps 0.3 × 100 from rounding to 29.99….
        let allowed = self.ratio * requests as f64 + self.floor + 1e-9;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        let i = w.current;
        w.slots[i].retries += 1;
        true
    }

    /// The window with slots older than the window cleared.
    fn current(&self) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = Instant::now().saturating_duration_since(w.started);
        let steps = (elapsed.as_nanos() / self.slot.as_nanos()) as u64;
        for _ in 0..steps.min(SLOTS as u64) {
            w.current = (w.current + 1) % SLOTS;
            let i = w.current;
            w.slots[i] = Slot::default();
        }
        if steps > 0 {
            let advanced = self.slot.as_nanos().saturating_mul(u128::from(steps));
            w.started += Duration::from_nanos(u64::try_from(advanced).unwrap_or(u64::MAX));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&RetryBudgetPolicy {
            ratio,
            min_per_second,
            window: Duration::from_secs(10),
        })
    }

    fn withdraw_all(b: &RetryBudget) -> usize {
        (0..100_000).take_while(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_ratio_allows_that_share_of_recent_requests_exactly() {
        for (ratio, requests, expected) in [(0.2, 100, 20), (0.1, 1000, 100), (0.3, 100, 30)] {
            let b = budget(ratio, 0);
            assert!(!b.withdraw(), "nothing to retry without requests");
            for _ in 0..requests {
                b.deposit();
            }
            assert_eq!(withdraw_all(&b), expected, "ratio {ratio}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_min_per_second_over_the_window_even_when_idle() {
        let b = budget(0.2, 10);
        assert_eq!(withdraw_all(&b), 100, "10/s over 10 s");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(withdraw_all(&b), 0, "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(withdraw_all(&b), 100, "the old retries aged out");
        for _ in 0..50 {
            b.deposit();
        }
        assert_eq!(withdraw_all(&b), 10, "ratio on top of the floor");
    }

    #[tokio::test(start_paused = true)]
    async fn at_a_few_requests_a_second_the_default_bounds_retries_to_under_half() {
        // 4 requests a second, each one failing and asking for a retry, for a minute.
        let b = RetryBudget::new(&RetryBudgetPolicy::default());
        let (mut requests, mut retries) = (0u32, 0u32);
        for _ in 0..240 {
            b.deposit();
            requests += 1;
            retries += u32::from(b.withdraw());
            tokio::time::advance(Duration::from_millis(250)).await;
        }
        let amplification = f64::from(requests + retries) / f64::from(requests);
        // Steady state: 0.2 × 40 + 1 × 10 = 18 retries per 40 requests in a window.
        assert!(amplification <= 1.5, "{amplification}");
        assert!(retries > 0, "a quiet service may still retry");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_age_out_of_the_window_slot_by_slot() {
        let b = budget(0.2, 0);
        for _ in 0..50 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..50 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_millis(5500)).await;
        // The first 50 are older than 10 s now; the second 50 are not.
        assert_eq!(withdraw_all(&b), 10);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!b.withdraw());
    }
}
