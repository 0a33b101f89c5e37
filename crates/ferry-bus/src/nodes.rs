//! Which logic node a gateway sends a request to.
//!
//! Every logic node publishes a heartbeat on `P.alive` every 250 ms (its instance id,
//! whether it is overloaded, whether it is leaving). A gateway keeps what it heard in
//! [`Nodes`]: a node is *live* while its last heartbeat is younger than the expiry (1 s)
//! and no request to it has gone unanswered since ([`Nodes::suspect`]). A request goes to
//! the live node ranked first for its key (the user id) by rendezvous hashing — the
//! same user keeps going to the same node while the set does not change, and a node
//! going away moves only its own users — on the node's own subject `P.req.<node>`.
//! With no node known (the gateway just started, or every heartbeat is late) it goes to
//! the queue group, as before.
//!
//! The heartbeat comes from a task of the logic node's own runtime: a stopped process
//! (SIGSTOP, a long pause, a starved runtime) sends none, whatever its TCP connection to
//! NATS still looks like.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How often a logic node says it is alive.
pub const ALIVE_INTERVAL: Duration = Duration::from_millis(250);
/// A logic node not heard from this long is out of rotation.
pub const ALIVE_EXPIRY: Duration = Duration::from_secs(1);
/// A request to a node not heard from this long is given up on (and, when idempotent,
/// sent to the next node): the node stopped, it is not merely slow.
pub const SILENT_AFTER: Duration = Duration::from_millis(600);

/// What a gateway knows of one logic node.
#[derive(Debug, Clone, Copy)]
struct Node {
    seen: Instant,
    overloaded: bool,
    /// A request to it went unanswered while it was silent: out of rotation until its
    /// next heartbeat.
    suspect: bool,
}

/// The logic nodes a gateway has heard of.
#[derive(Debug, Default)]
pub struct Nodes {
    map: HashMap<u64, Node>,
}

impl Nodes {
    /// A heartbeat from `id`.
    pub fn heard(&mut self, id: u64, overloaded: bool, now: Instant) {
        self.map.insert(
            id,
            Node {
                seen: now,
                overloaded,
                suspect: false,
            },
        );
    }

    /// `id` announced it is leaving (SIGTERM): out of rotation at once.
    pub fn left(&mut self, id: u64) {
        self.map.remove(&id);
    }

    /// A request to `id` went unanswered while it was silent.
    pub fn suspect(&mut self, id: u64) {
        if let Some(n) = self.map.get_mut(&id) {
            n.suspect = true;
        }
    }

    /// Whether `id` has been silent for `silent` (or was never heard of, or left).
    pub fn silent(&self, id: u64, now: Instant, silent: Duration) -> bool {
        self.map
            .get(&id)
            .is_none_or(|n| now.saturating_duration_since(n.seen) >= silent)
    }

    /// The live nodes for `key`, best first: the ones not overloaded by rendezvous
    /// score, then the overloaded ones (better than none). Forgets nodes long dead.
    pub fn ranked(&mut self, key: u64, now: Instant, expiry: Duration) -> Vec<u64> {
        self.map
            .retain(|_, n| now.saturating_duration_since(n.seen) < expiry * 60);
        let mut live: Vec<(bool, u64, u64)> = self
            .map
            .iter()
            .filter(|(_, n)| !n.suspect && now.saturating_duration_since(n.seen) < expiry)
            .map(|(&id, n)| (n.overloaded, u64::MAX - score(key, id), id))
            .collect();
        live.sort_unstable();
        live.into_iter().map(|(_, _, id)| id).collect()
    }

    /// Nodes heard of (live or not).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The rendezvous (highest random weight) score of `node` for `key`.
pub fn score(key: u64, node: u64) -> u64 {
    mix(key ^ mix(node))
}

/// splitmix64's finaliser: a cheap, well-spread 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(now: Instant) -> Nodes {
        let mut n = Nodes::default();
        for id in [11, 22, 33] {
            n.heard(id, false, now);
        }
        n
    }

    #[test]
    fn a_user_keeps_its_node_and_users_spread_over_all() {
        let now = Instant::now();
        let mut n = three(now);
        let mut count: HashMap<u64, usize> = HashMap::new();
        for user in 1..=3000u64 {
            let first = n.ranked(user, now, ALIVE_EXPIRY);
            assert_eq!(first.len(), 3);
            assert_eq!(first, n.ranked(user, now, ALIVE_EXPIRY), "stable");
            *count.entry(first[0]).or_default() += 1;
        }
        for id in [11, 22, 33] {
            let c = count[&id];
            assert!((800..1200).contains(&c), "node {id} got {c} of 3000");
        }
    }

    #[test]
    fn a_silent_node_is_out_of_rotation_and_only_its_users_move() {
        let t0 = Instant::now();
        let mut n = three(t0);
        let before: Vec<u64> = (1..=500)
            .map(|u| n.ranked(u, t0, ALIVE_EXPIRY)[0])
            .collect();
        // 22 stops; the others keep beating.
        let t1 = t0 + Duration::from_millis(1100);
        n.heard(11, false, t1);
        n.heard(33, false, t1);
        assert!(n.silent(22, t1, SILENT_AFTER));
        assert!(!n.silent(11, t1, SILENT_AFTER));
        for (u, was) in (1..=500).zip(before) {
            let now = n.ranked(u, t1, ALIVE_EXPIRY);
            assert_eq!(now.len(), 2);
            assert!(!now.contains(&22));
            if was != 22 {
                assert_eq!(now[0], was, "user {u} moved though its node lives");
            }
        }
        // It comes back with its next heartbeat.
        n.heard(22, false, t1);
        assert_eq!(n.ranked(7, t1, ALIVE_EXPIRY).len(), 3);
    }

    #[test]
    fn overloaded_suspect_and_leaving_nodes() {
        let now = Instant::now();
        let mut n = three(now);
        n.heard(11, true, now);
        for u in 1..200 {
            let r = n.ranked(u, now, ALIVE_EXPIRY);
            assert_eq!(r.last(), Some(&11), "overloaded goes last");
        }
        n.suspect(22);
        assert!(!n.ranked(5, now, ALIVE_EXPIRY).contains(&22));
        n.heard(22, false, now);
        assert!(
            n.ranked(5, now, ALIVE_EXPIRY).contains(&22),
            "a heartbeat clears it"
        );
        n.left(33);
        assert_eq!(n.ranked(5, now, ALIVE_EXPIRY).len(), 2);
        assert!(n.silent(33, now, SILENT_AFTER), "unknown counts as silent");
        // Nobody heard for a minute: forgotten.
        let later = now + Duration::from_secs(120);
        assert!(n.ranked(5, later, ALIVE_EXPIRY).is_empty());
        assert!(n.is_empty());
    }
}
