//! Rate limits: a token bucket per client address and one per principal, so that one
//! client (a runaway script, a scraper with a stolen token) cannot take the hub from the
//! others. Over the limit: 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept at most per limiter: beyond, idle ones are dropped first.
pub const MAX_BUCKETS: usize = 100_000;

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second, sustained. 0: no limit.
    pub per_second: f64,
    /// Requests allowed at once, from a full bucket.
    pub burst: f64,
}

impl Rate {
    /// `per_second` sustained, with a burst of two seconds' worth.
    pub fn per_second(per_second: u32) -> Rate {
        Rate {
            per_second: f64::from(per_second),
            burst: f64::from(per_second) * 2.0,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key.
pub struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket at `now`; `Err(seconds)` to wait when empty.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let Rate { per_second, burst } = self.rate;
        let mut buckets = self.buckets.lock().expect("rate buckets");
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Full buckets belong to clients idle long enough to have refilled: forget them.
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * per_second
                    < burst
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = Limiter::new(Rate::per_second(10));
        let start = Instant::now();
        for i in 0..20 {
            assert!(
                limiter.check("a", start).is_ok(),
                "request {i} of the burst"
            );
        }
        assert_eq!(limiter.check("a", start), Err(1), "the 21st waits");
        // Another key has its own bucket.
        assert!(limiter.check("b", start).is_ok());
        // Half a second later: five more.
        let later = start + Duration::from_millis(500);
        for _ in 0..5 {
            assert!(limiter.check("a", later).is_ok());
        }
        assert!(limiter.check("a", later).is_err());
        // Idle long enough: full again, never above the burst.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(limiter.check("a", much_later).is_ok());
        }
        assert!(limiter.check("a", much_later).is_err());
    }

    #[test]
    fn zero_is_no_limit() {
        let limiter = Limiter::new(Rate::per_second(0));
        let now = Instant::now();
        for _ in 0..10_000 {
            assert!(limiter.check("a", now).is_ok());
        }
    }

    #[test]
    fn the_number_of_buckets_is_bounded() {
        let limiter = Limiter::new(Rate::per_second(1));
        let now = Instant::now();
        for i in 0..(MAX_BUCKETS + 10) {
            let _ = limiter.check(&format!("client-{i}"), now);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
