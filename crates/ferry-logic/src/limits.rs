//! Rate limits: token buckets keyed by user, user name or client IP.
//!
//! A bucket holds up to `burst` tokens and gains `per_sec` a second; a request takes one
//! or is refused with the time until one is there (the client's `retry_after_ms`). The
//! maps are pruned of full buckets as they grow, so idle keys cost nothing for long.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::Instant;

use dashmap::DashMap;

/// One rate: `per_sec` tokens a second, up to `burst` at once. `per_sec` 0: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rate: { per_sec = 20.0, burst = 60.0 }"
)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0.0,
        burst: 0.0,
    };

    pub const fn new(per_sec: f64, burst: f64) -> Rate {
        Rate { per_sec, burst }
    }
}

/// The limits logic enforces. Every field has a default; `per_sec = 0` turns one off.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Password attempts (`auth`, `password`) per user name: brute force on one account.
    pub auth_per_user: Rate,
    /// Password attempts per client IP: guessing across accounts.
    pub auth_per_ip: Rate,
    /// Registrations per client IP.
    pub register_per_ip: Rate,
    /// Long-link LOGINs per client IP (reconnect storms through one address).
    pub login_per_ip: Rate,
    /// Messages (1:1 and group) per user.
    pub sends_per_user: Rate,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            // 10 at once, then one every 6 s (10 a minute).
            auth_per_user: Rate::new(1.0 / 6.0, 10.0),
            auth_per_ip: Rate::new(2.0, 60.0),
            register_per_ip: Rate::new(0.5, 20.0),
            // Carrier NAT puts many phones behind one address: generous.
            login_per_ip: Rate::new(200.0, 2_000.0),
            sends_per_user: Rate::new(20.0, 60.0),
        }
    }
}

impl LimitsConfig {
    /// No limits at all (tests and benchmarks that measure something else).
    pub fn unlimited() -> Self {
        LimitsConfig {
            auth_per_user: Rate::UNLIMITED,
            auth_per_ip: Rate::UNLIMITED,
            register_per_ip: Rate::UNLIMITED,
            login_per_ip: Rate::UNLIMITED,
            sends_per_user: Rate::UNLIMITED,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets for one kind of key.
pub struct Limiter<K: Hash + Eq> {
    rate: Rate,
    buckets: DashMap<K, Bucket>,
}

/// Keys kept before full buckets are swept out.
const PRUNE_AT: usize = 4_096;

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Rate) -> Self {
        Limiter {
            rate,
            buckets: DashMap::new(),
        }
    }

    /// Takes a token for `key`: `Ok` when there was one, else how many milliseconds
    /// until there is.
    pub fn check(&self, key: &K) -> Result<(), u32> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), u32> {
        let Rate { per_sec, burst } = self.rate;
        if per_sec <= 0.0 {
            return Ok(());
        }
        let burst = burst.max(1.0);
        let outcome = {
            let mut b = self.buckets.entry(key.clone()).or_insert(Bucket {
                tokens: burst,
                last: now,
            });
            let gained = now.saturating_duration_since(b.last).as_secs_f64() * per_sec;
            b.tokens = (b.tokens + gained).min(burst);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Ok(())
            } else {
                let wait = (1.0 - b.tokens) / per_sec;
                Err((wait * 1000.0).ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
            }
        };
        if self.buckets.len() > PRUNE_AT {
            // A bucket that would be full again holds no information.
            self.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < burst
            });
        }
        outcome
    }

    /// Keys tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Every limiter logic keeps.
pub(crate) struct Limits {
    pub auth_per_user: Limiter<String>,
    pub auth_per_ip: Limiter<IpAddr>,
    pub register_per_ip: Limiter<IpAddr>,
    pub login_per_ip: Limiter<IpAddr>,
    pub sends_per_user: Limiter<u64>,
}

impl Limits {
    pub fn new(cfg: &LimitsConfig) -> Self {
        Limits {
            auth_per_user: Limiter::new(cfg.auth_per_user),
            auth_per_ip: Limiter::new(cfg.auth_per_ip),
            register_per_ip: Limiter::new(cfg.register_per_ip),
            login_per_ip: Limiter::new(cfg.login_per_ip),
            sends_per_user: Limiter::new(cfg.sends_per_user),
        }
    }
}

/// The IP of a `peer` string (`IP:PORT` as the gateway reports it), if it has one.
pub(crate) fn peer_ip(peer: &str) -> Option<IpAddr> {
    peer.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| peer.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_and_tells_how_long_to_wait() {
        let l = Limiter::new(Rate::new(10.0, 3.0));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at(&1u64, t0), Ok(()));
        }
        assert_eq!(l.check_at(&1u64, t0), Err(100));
        // Another key has its own bucket.
        assert_eq!(l.check_at(&2u64, t0), Ok(()));
        // 50 ms gives half a token: still 50 ms to go.
        assert_eq!(l.check_at(&1u64, t0 + Duration::from_millis(50)), Err(50));
        assert_eq!(l.check_at(&1u64, t0 + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn unlimited_never_refuses_and_tracks_nothing() {
        let l = Limiter::new(Rate::UNLIMITED);
        for _ in 0..10_000 {
            assert!(l.check(&7u64).is_ok());
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn full_buckets_are_pruned() {
        let l = Limiter::new(Rate::new(1000.0, 2.0));
        let t0 = Instant::now();
        for k in 0..PRUNE_AT as u64 {
            let _ = l.check_at(&k, t0);
        }
        let _ = l.check_at(&u64::MAX, t0 + Duration::from_secs(1));
        assert!(l.tracked() < 10, "{} left", l.tracked());
    }

    #[test]
    fn peers() {
        assert_eq!(peer_ip("10.0.0.1:443"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(peer_ip("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(peer_ip("10.0.0.2"), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(peer_ip(""), None);
    }
}
