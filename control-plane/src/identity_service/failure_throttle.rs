//! Slows down guessing of bootstrap credentials: each source address may have a few
//! credentials refused in a burst, then one more every so often (a token bucket per
//! source). Without it the identity service checked about a thousand guesses a second
//! from a single client.
//!
//! Every attempt takes a token before its credential is checked and gives it back when
//! the credential is accepted, so only refusals count, a mesh of many proxies starting at
//! once from one host is never slowed, and a client cannot outrun the bucket by sending
//! its guesses concurrently. A throttled source is refused without its credential being
//! looked at: otherwise a right guess would still show through the throttle. (governor,
//! the usual crate for this, has no way to give a token back.)
//!
//! IPv6 sources are grouped by /64, the block one host usually holds. The table of
//! sources is bounded: when it is full, buckets that have refilled are dropped, and
//! sources beyond that share one bucket, so a flood from many addresses slows itself
//! down rather than growing the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How refusals are allowed from one source.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Refusals allowed back to back.
    pub burst: u32,
    /// Refusals allowed per second once the burst is spent.
    pub per_second: f64,
    /// Sources tracked one by one; the rest share a bucket.
    pub max_sources: usize,
}

impl Default for ThrottleSettings {
    /// Ten refusals at once, then two a second: a proxy with a wrong token, retrying with
    /// backoff, never hits it, and a guesser gets 172,800 tries a day.
    fn default() -> Self {
        ThrottleSettings {
            burst: 10,
            per_second: 2.0,
            max_sources: 4096,
        }
    }
}

/// Which bucket a source address draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    /// The /64 network of an IPv6 address.
    V6Network([u8; 8]),
    /// Everyone once the table is full, and callers whose address is unknown.
    Shared,
}

impl SourceKey {
    fn of(ip: Option<IpAddr>) -> SourceKey {
        match ip {
            Some(IpAddr::V4(v4)) => SourceKey::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut network = [0u8; 8];
                    network.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Network(network)
                }
            },
            None => SourceKey::Shared,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, settings: &ThrottleSettings) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * settings.per_second).min(f64::from(settings.burst));
        self.updated = now;
    }
}

/// A source that used up its refusals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    /// When the source may try again.
    pub retry_after: Duration,
    /// Whether this is the first attempt refused since the source ran out, so a burst of
    /// refusals is logged once, not once per attempt.
    pub first: bool,
}

/// Per-source token buckets for refused credentials.
#[derive(Debug)]
pub struct FailureThrottle {
    settings: ThrottleSettings,
    buckets: Mutex<HashMap<SourceKey, (Bucket, bool)>>,
}

/// One attempt that was let through: its token is spent unless [`Attempt::accepted`] gives
/// it back.
#[derive(Debug)]
#[must_use = "an attempt whose credential was accepted must be given back with accepted()"]
pub struct Attempt<'a> {
    throttle: &'a FailureThrottle,
    key: SourceKey,
}

impl Attempt<'_> {
    /// The credential was accepted (or could not be checked): the attempt costs nothing.
    pub fn accepted(self) {
        let mut buckets = self.throttle.lock();
        if let Some((bucket, _)) = buckets.get_mut(&self.key) {
            bucket.tokens = (bucket.tokens + 1.0).min(f64::from(self.throttle.settings.burst));
        }
    }
}

impl FailureThrottle {
    pub fn new(settings: ThrottleSettings) -> FailureThrottle {
        FailureThrottle {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, (Bucket, bool)>> {
        match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes a token for one attempt from `source`, or says how long it must wait.
    pub fn begin(&self, source: Option<IpAddr>) -> Result<Attempt<'_>, Throttled> {
        let now = Instant::now();
        let settings = &self.settings;
        let mut buckets = self.lock();
        let mut key = SourceKey::of(source);
        if !buckets.contains_key(&key) && buckets.len() >= settings.max_sources {
            let burst = f64::from(settings.burst);
            buckets.retain(|k, (bucket, _)| {
                bucket.refill(now, settings);
                *k == SourceKey::Shared || bucket.tokens < burst
            });
            if buckets.len() >= settings.max_sources {
                key = SourceKey::Shared;
            }
        }
        let (bucket, throttled) = buckets.entry(key).or_insert((
            Bucket {
                tokens: f64::from(settings.burst),
                updated: now,
            },
            false,
        ));
        bucket.refill(now, settings);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            *throttled = false;
            return Ok(Attempt {
                throttle: self,
                key,
            });
        }
        let first = !*throttled;
        *throttled = true;
        let missing = 1.0 - bucket.tokens;
        Err(Throttled {
            retry_after: Duration::from_secs_f64(missing / settings.per_second.max(f64::EPSILON)),
            first,
        })
    }

    /// Sources tracked one by one right now.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    fn throttle() -> FailureThrottle {
        FailureThrottle::new(ThrottleSettings {
            burst: 3,
            per_second: 2.0,
            max_sources: 4,
        })
    }

    /// Refusals that pass in `window` from one source, trying every 10 ms.
    async fn passed_in(t: &FailureThrottle, source: Option<IpAddr>, window: Duration) -> u32 {
        let end = Instant::now() + window;
        let mut passed = 0;
        while Instant::now() < end {
            if t.begin(source).is_ok() {
                passed += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        passed
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_steady_rate() {
        let t = throttle();
        for _ in 0..3 {
            let _ = t.begin(A).expect("within the burst");
        }
        let refused = t.begin(A).expect_err("burst spent");
        assert!(refused.first);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert!(!t.begin(A).expect_err("still spent").first);
        // Another source is not affected.
        let _ = t.begin(B).expect("its own bucket");

        // Ten seconds of trying every 10 ms lets through 2 a second, not 100.
        let passed = passed_in(&t, A, Duration::from_secs(10)).await;
        assert!((19..=20).contains(&passed), "{passed} passed");
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_credentials_cost_nothing() {
        let t = throttle();
        for _ in 0..100 {
            t.begin(A).expect("never throttled").accepted();
        }
        // Attempts in flight at once each hold a token: concurrency does not outrun it.
        let held: Vec<_> = (0..3).map(|_| t.begin(A).expect("burst")).collect();
        assert!(t.begin(A).is_err());
        for attempt in held {
            attempt.accepted();
        }
        let _ = t.begin(A).expect("given back");
    }

    #[tokio::test(start_paused = true)]
    async fn many_sources_share_a_bucket_beyond_the_table() {
        let t = throttle();
        let sources: Vec<Option<IpAddr>> = (0..50u8)
            .map(|i| Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i))))
            .collect();
        let mut passed = 0;
        for s in &sources {
            for _ in 0..3 {
                if t.begin(*s).is_ok() {
                    passed += 1;
                }
            }
        }
        assert!(t.sources() <= 5, "{} sources tracked", t.sources());
        // Four sources with their own burst, then one shared burst for the other 46.
        assert_eq!(passed, 4 * 3 + 3);
    }

    #[test]
    fn ipv6_sources_are_grouped_by_network() {
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_net: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_net: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(SourceKey::of(Some(one)), SourceKey::of(Some(same_net)));
        assert_ne!(SourceKey::of(Some(one)), SourceKey::of(Some(other_net)));
        assert_eq!(SourceKey::of(Some(mapped)), SourceKey::of(A));
    }
}
