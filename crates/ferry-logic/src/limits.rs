//! Rate limits: token buckets keyed by user, user name or client IP.
//!
//! A bucket holds up to `burst` tokens and gains `per_sec` a second; a request takes one
//! or is refused with the time until one is there (the client's `retry_after_ms`). The
//! maps are pruned of full buckets as they grow, so idle keys cost nothing for long.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use smallvec::SmallVec;

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

    /// [`Self::check`] at another rate than the limiter's own (a user's override).
    pub fn check_rate(&self, key: &K, rate: Rate) -> Result<(), u32> {
        self.check_rate_at(key, rate, Instant::now())
    }

    fn check_at(&self, key: &K, now: Instant) -> Result<(), u32> {
        self.check_rate_at(key, self.rate, now)
    }

    fn check_rate_at(&self, key: &K, rate: Rate, now: Instant) -> Result<(), u32> {
        let Rate { per_sec, burst } = rate;
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
    /// Buckets of the users whose send rate an operator overrode (their own rates).
    pub sends_overridden: Limiter<u64>,
    /// Keeps a device's sends in order across a `sends_per_user` refusal.
    pub send_order: SendOrder,
    /// Per-user overrides set through the admin API, as last read from the store.
    pub overrides: Overrides,
}

impl Limits {
    pub fn new(cfg: &LimitsConfig) -> Self {
        Limits {
            auth_per_user: Limiter::new(cfg.auth_per_user),
            auth_per_ip: Limiter::new(cfg.auth_per_ip),
            register_per_ip: Limiter::new(cfg.register_per_ip),
            login_per_ip: Limiter::new(cfg.login_per_ip),
            sends_per_user: Limiter::new(cfg.sends_per_user),
            sends_overridden: Limiter::new(Rate::UNLIMITED),
            send_order: SendOrder::default(),
            overrides: Overrides::default(),
        }
    }

    /// Takes a send token of `user`: at the user's own rate when an operator set one,
    /// else at `sends_per_user`. `Err`: milliseconds until there is one.
    pub fn check_send(&self, user: u64) -> Result<(), u32> {
        match self.overrides.sends(user) {
            Some(rate) => self.sends_overridden.check_rate(&user, rate),
            None => self.sends_per_user.check(&user),
        }
    }
}

/// A user's own limits, set by an operator (`PUT /v1/admin/users/{user}/limits`): each
/// field set replaces the configured rate of that name for this user. Kept in the
/// store as this JSON.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverride {
    /// Messages (1:1 and group) per second and burst, instead of `sends_per_user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sends_per_user: Option<Rate>,
}

impl LimitOverride {
    pub fn is_empty(&self) -> bool {
        self.sends_per_user.is_none()
    }
}

/// How long a node uses the overrides it read before it reads them again: a change made
/// through any node applies on every node within about this long.
pub const OVERRIDES_TTL: Duration = Duration::from_secs(1);

/// The per-user overrides as last read from the store: every node reads the whole
/// (small) table again once [`OVERRIDES_TTL`] has passed, on the next send, so no
/// message between nodes is needed and a deleted override goes too.
#[derive(Default)]
pub(crate) struct Overrides {
    by_user: parking_lot::RwLock<std::collections::HashMap<u64, LimitOverride>>,
    /// Unix ms after which the table is read again (0: never read).
    due_ms: std::sync::atomic::AtomicI64,
    /// A read is under way (one at a time).
    reading: std::sync::atomic::AtomicBool,
}

impl Overrides {
    /// The send rate set for `user`, if any.
    pub fn sends(&self, user: u64) -> Option<Rate> {
        let map = self.by_user.read();
        if map.is_empty() {
            return None;
        }
        map.get(&user).and_then(|o| o.sends_per_user)
    }

    /// True (once, for one caller) when the table is due to be read again at `now_ms`;
    /// that caller must then call [`Self::replace`] or [`Self::failed`].
    pub fn claim(&self, now_ms: i64) -> bool {
        now_ms >= self.due_ms.load(Ordering::Acquire)
            && self
                .reading
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// The table as read at `now_ms` (rows that do not parse are skipped, logged).
    pub fn replace(&self, rows: Vec<(u64, String)>, now_ms: i64) {
        let map = rows
            .into_iter()
            .filter_map(|(user, json)| match serde_json::from_str(&json) {
                Ok(o) => Some((user, o)),
                Err(e) => {
                    tracing::warn!(user, error = %e, "a stored limit override does not parse");
                    None
                }
            })
            .collect();
        *self.by_user.write() = map;
        self.due_ms
            .store(now_ms + OVERRIDES_TTL.as_millis() as i64, Ordering::Release);
        self.reading.store(false, Ordering::Release);
    }

    /// Reading the table failed: try again at the next send.
    pub fn failed(&self) {
        self.reading.store(false, Ordering::Release);
    }

    /// Sets or clears one user's override at once on this node (the one that changed it).
    pub fn set(&self, user: u64, o: Option<LimitOverride>) {
        let mut map = self.by_user.write();
        match o {
            Some(o) => map.insert(user, o),
            None => map.remove(&user),
        };
    }
}

/// How long after its token is due a refused send holds its device's later sends back
/// when it is not sent again: a client that gave it up is not blocked for long.
pub const SEND_ORDER_HOLD: Duration = Duration::from_secs(3);

/// One device's refused send: later sends wait for it.
struct Held {
    device: Arc<str>,
    /// The refused send's `client_msg_id`: the one that may pass.
    client_msg_id: u64,
    /// When the user's bucket has a token again.
    ready: Instant,
    /// When the hold lapses if the refused send never comes back.
    until: Instant,
}

/// Keeps a pipelining device's messages in its sending order across a rate limit
/// (docs/protocol.md §2, *Sending*): once a device's send is refused `RATE_LIMITED`,
/// its later sends are refused too — without taking a token — until the refused
/// `client_msg_id` is sent again (or [`SEND_ORDER_HOLD`] after its token was due). A
/// client that resends its refused sends in their order has them stored in that order;
/// without this, send k refused and k+1 accepted on a token just refilled would store
/// k's retry after k+1.
///
/// Costs a send one atomic load while no device of the node is held back, and memory
/// only for devices held back now (pruned as they lapse).
#[derive(Default)]
pub(crate) struct SendOrder {
    held: DashMap<u64, SmallVec<[Held; 1]>, crate::IdHasher>,
    /// Devices held back (entries of `held`), so the usual case skips the map.
    count: AtomicUsize,
}

impl SendOrder {
    /// Before a send of `client_msg_id` from `device` of `user` takes a token: `Err`
    /// with the milliseconds until the user's bucket is due when an earlier send of the
    /// device was refused and has not come back. The refused send itself passes (and
    /// lifts the hold).
    pub fn check(&self, user: u64, device: &str, client_msg_id: u64) -> Result<(), u32> {
        if self.count.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        self.check_at(user, device, client_msg_id, Instant::now())
    }

    fn check_at(&self, user: u64, device: &str, cmid: u64, now: Instant) -> Result<(), u32> {
        let Some(mut held) = self.held.get_mut(&user) else {
            return Ok(());
        };
        let Some(i) = held.iter().position(|h| *h.device == *device) else {
            return Ok(());
        };
        let h = &held[i];
        if h.client_msg_id != cmid && now < h.until {
            let wait = h.ready.saturating_duration_since(now).as_millis();
            return Err(wait.clamp(1, u128::from(u32::MAX)) as u32);
        }
        held.swap_remove(i);
        self.count.fetch_sub(1, Ordering::AcqRel);
        let empty = held.is_empty();
        drop(held);
        if empty {
            self.held.remove_if(&user, |_, v| v.is_empty());
        }
        Ok(())
    }

    /// A send of `client_msg_id` from `device` of `user` was refused by the user's
    /// bucket, which has a token again in `retry_ms`: the device's later sends wait for
    /// it. A device already held back keeps its first refused send.
    pub fn refused(&self, user: u64, device: &Arc<str>, client_msg_id: u64, retry_ms: u32) {
        self.refused_at(user, device, client_msg_id, retry_ms, Instant::now())
    }

    fn refused_at(&self, user: u64, device: &Arc<str>, cmid: u64, retry_ms: u32, now: Instant) {
        if self.count.load(Ordering::Acquire) > PRUNE_AT {
            self.prune(now);
        }
        let ready = now + Duration::from_millis(u64::from(retry_ms));
        let mut held = self.held.entry(user).or_default();
        if let Some(h) = held.iter_mut().find(|h| *h.device == **device) {
            if now >= h.until {
                // A lapsed hold: this refusal starts a new one.
                *h = Held {
                    device: device.clone(),
                    client_msg_id: cmid,
                    ready,
                    until: ready + SEND_ORDER_HOLD,
                };
            }
            return;
        }
        held.push(Held {
            device: device.clone(),
            client_msg_id: cmid,
            ready,
            until: ready + SEND_ORDER_HOLD,
        });
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops the holds that lapsed.
    fn prune(&self, now: Instant) {
        self.held.retain(|_, v| {
            let before = v.len();
            v.retain(|h| now < h.until);
            self.count.fetch_sub(before - v.len(), Ordering::AcqRel);
            !v.is_empty()
        });
    }

    /// Devices held back now (for tests).
    #[cfg(test)]
    fn holding(&self) -> usize {
        self.count.load(Ordering::Acquire)
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
    fn a_refused_send_holds_its_devices_later_sends_until_it_comes_back() {
        let o = SendOrder::default();
        let (phone, tablet): (Arc<str>, Arc<str>) = ("phone".into(), "tablet".into());
        let t0 = Instant::now();
        assert_eq!(o.check_at(1, "phone", 10, t0), Ok(()), "nothing held");
        o.refused_at(1, &phone, 10, 50, t0);
        // Send 10 was refused: 11 and 12 wait (told when the token is due), whoever
        // else sends does not.
        assert_eq!(o.check_at(1, "phone", 11, t0), Err(50));
        assert_eq!(
            o.check_at(1, "phone", 12, t0 + Duration::from_millis(20)),
            Err(30)
        );
        assert_eq!(o.check_at(1, "tablet", 11, t0), Ok(()));
        assert_eq!(o.check_at(2, "phone", 11, t0), Ok(()));
        // A later refusal of the held device keeps the first refused send.
        o.refused_at(1, &phone, 11, 50, t0);
        assert_eq!(o.check_at(1, "phone", 11, t0), Err(50));
        // 10 comes back: it passes and lifts the hold.
        assert_eq!(
            o.check_at(1, "phone", 10, t0 + Duration::from_millis(60)),
            Ok(())
        );
        assert_eq!(
            o.check_at(1, "phone", 11, t0 + Duration::from_millis(60)),
            Ok(())
        );
        assert_eq!(o.holding(), 0);
        assert!(o.held.is_empty());
        // A refused send that never comes back holds for SEND_ORDER_HOLD after its token.
        o.refused_at(1, &tablet, 20, 100, t0);
        let due = t0 + Duration::from_millis(100);
        assert!(o
            .check_at(1, "tablet", 21, due + SEND_ORDER_HOLD / 2)
            .is_err());
        assert_eq!(o.check_at(1, "tablet", 21, due + SEND_ORDER_HOLD), Ok(()));
        assert_eq!(o.holding(), 0);
    }

    #[test]
    fn lapsed_holds_are_pruned() {
        let o = SendOrder::default();
        let t0 = Instant::now();
        let d: Arc<str> = "d".into();
        for user in 0..=PRUNE_AT as u64 {
            o.refused_at(user, &d, 1, 10, t0);
        }
        assert_eq!(o.holding(), PRUNE_AT + 1);
        o.refused_at(u64::MAX, &d, 1, 10, t0 + SEND_ORDER_HOLD * 2);
        assert_eq!(o.holding(), 1, "only the new hold is left");
    }

    #[test]
    fn peers() {
        assert_eq!(peer_ip("10.0.0.1:443"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(peer_ip("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(peer_ip("10.0.0.2"), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(peer_ip(""), None);
    }
}
