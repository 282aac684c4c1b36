//! Failed sign-ins are rate-limited per source address: after `max_failures` failures in a
//! row from an address, its next attempt must wait, the wait doubling with each further
//! failure up to `max_backoff`. Refused attempts are refused before any credential is read,
//! so guessing costs the attacker time, not pgwarden CPU.
//!
//! The failures are kept per claimed user, and a success takes away only that user's: a
//! person who mistyped and then signed in is forgiven, but signing in as oneself does not
//! wipe out guesses at someone else's password. An address may have only as many attempts
//! running at once as it has failures left before the limit (one at a time once it has
//! waited out a backoff); further attempts queue for a free slot. So a burst of parallel
//! guesses cannot all be checked before the first of them fails, while a pool opening many
//! connections with the right password is only queued, never refused. Failures long past
//! (twice `max_backoff`) are forgotten.
//!
//! A loopback address is not one client but every process on the host: a sidecar's whole
//! pod. There each claimed user has a limit of its own, so one service retrying a stale
//! secret does not lock every other client out; guesses at any one account are limited all
//! the same.

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

/// Addresses tracked at most; beyond this the oldest are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// Users whose failures are kept apart per address; failures of further users go to one
/// share that no success takes away.
const MAX_USERS_PER_ADDRESS: usize = 32;

#[derive(Debug, Default)]
struct Failures {
    /// Failures per claimed user (`None`: the share of users beyond the limit).
    by_user: HashMap<Option<String>, u32>,
    /// Attempts started and not finished.
    running: u32,
    last: Option<Instant>,
}

impl Failures {
    fn count(&self) -> u32 {
        self.by_user
            .values()
            .fold(0, |sum, n| sum.saturating_add(*n))
    }
}

/// Why an attempt may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotNow {
    /// The address failed too often: refuse, and say how long it must wait.
    Backoff(Duration),
    /// Every attempt the address may have running at once is running: try again when one
    /// of them has ended.
    Busy,
}

/// What failures are counted under: an address, or on loopback an address and a user.
type Key = (IpAddr, Option<String>);

fn key_of(addr: IpAddr, user: &str) -> Key {
    let per_user = match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        // ::1, and IPv4 loopback written as IPv6 (::ffff:127.0.0.1).
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    (addr, per_user.then(|| user.to_owned()))
}

#[derive(Debug, Default)]
pub struct FailureLimiter {
    by_address: Mutex<HashMap<Key, Failures>>,
}

impl FailureLimiter {
    /// Start an attempt by `user` from `addr`: `Err(wait)` if it must wait first. The
    /// attempt ends with [`Attempt::finish`], or when dropped unfinished (a client that gives
    /// up, an authentication timeout) as neither success nor failure.
    pub fn attempt<'a>(
        &'a self,
        settings: &RateLimitSettings,
        addr: IpAddr,
        user: &str,
    ) -> Result<Attempt<'a>, NotNow> {
        let key = key_of(addr, user);
        self.begin(settings, &key)?;
        Ok(Attempt {
            limiter: self,
            settings: *settings,
            key,
            user: user.to_owned(),
            finished: false,
        })
    }

    fn begin(&self, settings: &RateLimitSettings, key: &Key) -> Result<(), NotNow> {
        if settings.max_failures == 0 {
            return Ok(());
        }
        let Ok(mut map) = self.by_address.lock() else {
            return Ok(());
        };
        if let Some(failures) = map.get_mut(key) {
            let since = failures.last.map_or(Duration::MAX, |t| t.elapsed());
            if since > settings.max_backoff * 2 {
                failures.by_user.clear();
            }
            let count = failures.count();
            let slots = match backoff(settings, count) {
                Some(wait) if since < wait => return Err(NotNow::Backoff(wait - since)),
                // Waited out: one guess, then (if it fails) the next, longer wait.
                Some(_) => 1,
                None => settings.max_failures.saturating_sub(count),
            };
            if failures.running >= slots {
                return Err(NotNow::Busy);
            }
        } else {
            make_room(&mut map, settings);
        }
        let failures = map.entry(key.clone()).or_default();
        failures.running = failures.running.saturating_add(1);
        Ok(())
    }

    /// An attempt by `user` counted under `key` ended.
    fn finish(&self, settings: &RateLimitSettings, key: &Key, user: &str, outcome: Outcome) {
        if settings.max_failures == 0 {
            return;
        }
        let Ok(mut map) = self.by_address.lock() else {
            return;
        };
        let Some(failures) = map.get_mut(key) else {
            return;
        };
        failures.running = failures.running.saturating_sub(1);
        match outcome {
            Outcome::SignedIn => {
                failures.by_user.remove(&Some(user.to_owned()));
            }
            Outcome::Refused => {
                let key = if failures.by_user.len() < MAX_USERS_PER_ADDRESS
                    || failures.by_user.contains_key(&Some(user.to_owned()))
                {
                    Some(user.to_owned())
                } else {
                    None
                };
                let n = failures.by_user.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                failures.last = Some(Instant::now());
            }
            Outcome::Other => {}
        }
        if failures.running == 0 && failures.by_user.is_empty() {
            map.remove(key);
        }
    }
}

/// How a sign-in attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    SignedIn,
    /// The credentials were wrong: counts towards the limit.
    Refused,
    /// Anything else (a protocol error, a client that gave up).
    Other,
}

/// A sign-in attempt in progress (see [`FailureLimiter::attempt`]).
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    settings: RateLimitSettings,
    key: Key,
    user: String,
    finished: bool,
}

impl Attempt<'_> {
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.limiter
            .finish(&self.settings, &self.key, &self.user, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.limiter
                .finish(&self.settings, &self.key, &self.user, Outcome::Other);
        }
    }
}

/// Keep the map bounded before adding an address: forget addresses whose failures are long
/// over; if none, the one that failed longest ago.
fn make_room(map: &mut HashMap<Key, Failures>, settings: &RateLimitSettings) {
    if map.len() < MAX_TRACKED {
        return;
    }
    map.retain(|_, f| {
        f.running > 0
            || f.last
                .is_some_and(|t| t.elapsed() < settings.max_backoff * 2)
    });
    if map.len() >= MAX_TRACKED {
        if let Some(oldest) = map
            .iter()
            .min_by_key(|(_, f)| f.last)
            .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
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
        let attempt = |addr: IpAddr, user: &str, outcome: Outcome| {
            limiter.attempt(&s, addr, user)?.finish(outcome);
            Ok::<(), NotNow>(())
        };
        // A pool opening many connections at once with the right password: three at a
        // time, the others queue for a slot and are never refused.
        let mut pool: Vec<_> = (0..3)
            .map(|_| limiter.attempt(&s, addr, "pool").unwrap())
            .collect();
        assert_eq!(limiter.attempt(&s, addr, "pool").unwrap_err(), NotNow::Busy);
        pool.pop().unwrap().finish(Outcome::SignedIn);
        pool.push(limiter.attempt(&s, addr, "pool").unwrap());
        pool.into_iter().for_each(|a| a.finish(Outcome::SignedIn));
        // Two guesses at alice's password, then mallory signs in as herself: alice's
        // guesses still count, and the third failure makes the address wait.
        for _ in 0..2 {
            assert!(attempt(addr, "alice", Outcome::Refused).is_ok());
        }
        assert!(attempt(addr, "mallory", Outcome::SignedIn).is_ok());
        assert!(attempt(addr, "alice", Outcome::Refused).is_ok());
        assert!(matches!(
            limiter.attempt(&s, addr, "alice"),
            Err(NotNow::Backoff(_))
        ));
        assert!(
            matches!(
                limiter.attempt(&s, addr, "mallory"),
                Err(NotNow::Backoff(_))
            ),
            "the address waits"
        );
        assert!(attempt("192.0.2.2".parse().unwrap(), "alice", Outcome::Refused).is_ok());
        // A typo, then the right password: forgiven.
        let typo: IpAddr = "192.0.2.5".parse().unwrap();
        for _ in 0..2 {
            assert!(attempt(typo, "bob", Outcome::Refused).is_ok());
            assert!(attempt(typo, "bob", Outcome::SignedIn).is_ok());
        }
        assert!(limiter.attempt(&s, typo, "bob").is_ok());
        // Attempts still running take the failures left: parallel guesses stop at the limit.
        let other: IpAddr = "192.0.2.4".parse().unwrap();
        assert!(attempt(other, "carol", Outcome::Refused).is_ok());
        let first = limiter.attempt(&s, other, "carol").unwrap();
        let second = limiter.attempt(&s, other, "carol").unwrap();
        assert_eq!(
            limiter.attempt(&s, other, "carol").unwrap_err(),
            NotNow::Busy
        );
        // An attempt abandoned midway is neither a success nor a failure.
        drop(first);
        second.finish(Outcome::Other);
        assert!(limiter.attempt(&s, other, "carol").is_ok());
    }

    #[test]
    fn a_burst_of_guesses_is_checked_only_up_to_the_limit() {
        // No wait at all after the limit, to see what happens once a backoff is over.
        let s = RateLimitSettings {
            max_failures: 3,
            first_backoff: Duration::ZERO,
            max_backoff: Duration::from_secs(3600),
        };
        let limiter = FailureLimiter::default();
        let addr: IpAddr = "192.0.2.9".parse().unwrap();
        let burst: Vec<_> = (0..3)
            .map(|_| limiter.attempt(&s, addr, "svc").unwrap())
            .collect();
        assert_eq!(limiter.attempt(&s, addr, "svc").unwrap_err(), NotNow::Busy);
        burst.into_iter().for_each(|a| a.finish(Outcome::Refused));
        // Past the limit, each guess waits for the one before it to fail.
        let next = limiter.attempt(&s, addr, "svc").unwrap();
        assert_eq!(limiter.attempt(&s, addr, "svc").unwrap_err(), NotNow::Busy);
        next.finish(Outcome::Refused);
        assert!(limiter.attempt(&s, addr, "svc").is_ok());
    }

    #[test]
    fn on_loopback_each_user_has_a_limit_of_its_own() {
        let s = RateLimitSettings {
            max_failures: 2,
            first_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(600),
        };
        let limiter = FailureLimiter::default();
        // A service retrying a stale secret, as often as the limit allows.
        let retry_stale_secret = |addr: IpAddr| {
            for _ in 0..2 {
                limiter
                    .attempt(&s, addr, "stale-svc")
                    .unwrap()
                    .finish(Outcome::Refused);
            }
        };
        for addr in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let addr: IpAddr = addr.parse().unwrap();
            // The service waits…
            retry_stale_secret(addr);
            assert!(matches!(
                limiter.attempt(&s, addr, "stale-svc"),
                Err(NotNow::Backoff(_))
            ));
            // …and the rest of the pod signs in.
            limiter
                .attempt(&s, addr, "web")
                .unwrap()
                .finish(Outcome::SignedIn);
        }
        // Elsewhere the address waits, whoever it claims to be.
        let remote: IpAddr = "192.0.2.77".parse().unwrap();
        retry_stale_secret(remote);
        assert!(matches!(
            limiter.attempt(&s, remote, "web"),
            Err(NotNow::Backoff(_))
        ));
    }
}
