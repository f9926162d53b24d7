//! Exponential backoff with jitter, shared by every loop that tries again: certificate
//! requests, the discovery watch and outbound retries.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `base` up to `max`. Each is drawn uniformly from the upper
/// half of its step (`[step/2, step]`), so callers that failed together spread out
/// without any delay collapsing to zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// Starts again from `base`, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step();
        self.attempt = self.attempt.saturating_add(1);
        let lo = step.as_secs_f64() / 2.0;
        Duration::from_secs_f64(rand::rng().random_range(lo..=step.as_secs_f64()))
    }

    /// The un-jittered delay of the current attempt: `base * 2^attempt`, at most `max`.
    fn step(&self) -> Duration {
        self.base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delay_lies_in_the_upper_half_of_its_doubling_step_and_the_cap_holds() {
        let base = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        for _ in 0..200 {
            let mut b = Backoff::new(base, max);
            for step_ms in [25u64, 50, 100, 200, 250, 250, 250] {
                let d = b.next_delay();
                let step = Duration::from_millis(step_ms);
                assert!(
                    d >= step / 2 && d <= step,
                    "{d:?} outside [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_delays_and_reset_starts_over() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            b.next_delay();
            seen.insert(b.next_delay().as_micros());
        }
        assert!(seen.len() > 10, "delays are jittered, got {seen:?}");

        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..30 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
