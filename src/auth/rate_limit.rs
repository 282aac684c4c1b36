//! Failed sign-ins are rate-limited per source address: after `max_failures` failures in a
//! row, the address must wait before its next attempt, the wait doubling with each further
//! failure up to `max_backoff`. A success clears the address. Refused attempts are refused
//! before any credential is read, so guessing costs the attacker time, not pgwarden CPU.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `[auth.rate_limit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Failures allowed before backoff starts (0: never limit).
    pub max_failures: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Addresses tracked at most; beyond this the oldest entries are forgotten first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct FailureLimiter {
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

impl FailureLimiter {
    /// `Err(wait)` if `addr` must wait before trying again.
    pub fn check(&self, settings: &RateLimitSettings, addr: IpAddr) -> Result<(), Duration> {
        let Ok(map) = self.by_address.lock() else {
            return Ok(());
        };
        let Some(failures) = map.get(&addr) else {
            return Ok(());
        };
        match backoff(settings, failures.count) {
            Some(wait) if failures.last.elapsed() < wait => Err(wait - failures.last.elapsed()),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, settings: &RateLimitSettings, addr: IpAddr) {
        if settings.max_failures == 0 {
            return;
        }
        let Ok(mut map) = self.by_address.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&addr) {
            // Forget addresses whose backoff is long over; if none, the oldest one.
            map.retain(|_, f| f.last.elapsed() < settings.max_backoff * 2);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last).map(|(a, _)| *a) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(addr).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = Instant::now();
    }

    pub fn succeeded(&self, addr: IpAddr) {
        if let Ok(mut map) = self.by_address.lock() {
            map.remove(&addr);
        }
    }
}

/// The wait after `count` failures in a row, if any.
fn backoff(settings: &RateLimitSettings, count: u32) -> Option<Duration> {
    if settings.max_failures == 0 || count < settings.max_failures {
        return None;
    }
    let doublings = (count - settings.max_failures).min(20);
    Some(
        settings
            .first_backoff
            .saturating_mul(1 << doublings)
            .min(settings.max_backoff),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = RateLimitSettings {
            max_failures: 3,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        };
        assert_eq!(backoff(&s, 2), None);
        assert_eq!(backoff(&s, 3), Some(Duration::from_secs(1)));
        assert_eq!(backoff(&s, 4), Some(Duration::from_secs(2)));
        assert_eq!(backoff(&s, 50), Some(Duration::from_secs(10)));
        let limiter = FailureLimiter::default();
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(&s, addr).is_ok());
            limiter.failed(&s, addr);
        }
        assert!(limiter.check(&s, addr).is_err());
        assert!(limiter.check(&s, "192.0.2.2".parse().unwrap()).is_ok());
        limiter.succeeded(addr);
        assert!(limiter.check(&s, addr).is_ok());
    }
}
