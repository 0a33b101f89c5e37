//! The route table: which gateways hold links of which user. Kept from the gateways'
//! link events; in one process it is the whole truth, in a cluster every logic node
//! keeps its own copy from the same events (the NATS bus delivers every gateway's events
//! to every logic node, with snapshots and gateway expiry; see `ferry-bus`'s `nats.rs`).
//!
//! Entries are keyed by (gateway, connection id), so an event applied twice (a snapshot
//! replaying links already known) changes nothing. Each link also keeps a 64-bit hash of
//! its device id (no allocation per link), so push can ask whether one device of a user
//! has a live link ([`Presence::device_online`]).

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use smallvec::SmallVec;

/// A user's links: almost always one, kept inline in the map entry (a `Vec` put its
/// first link in a 96-byte allocation of its own — ~5 % of a one-process server's
/// memory per idle connection).
type Links = SmallVec<[Link; 1]>;

/// One link: (gateway, connection id, [`device_hash`] of its device).
type Link = (Arc<str>, u64, u64);

/// A device id as presence keeps it: FNV-1a, 64 bits. Two devices of one user colliding
/// would make one look online while the other is; at 64 bits that does not happen.
pub(crate) fn device_hash(device: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Default)]
pub struct Presence {
    /// user id → (gateway id, connection id, device hash) of each of the user's links.
    routes: DashMap<u64, Links, crate::IdHasher>,
    /// Gateway names, shared by every route through the gateway.
    names: RwLock<HashMap<String, Arc<str>>>,
}

impl Presence {
    fn name(&self, gateway: &str) -> Arc<str> {
        if let Some(n) = self.names.read().get(gateway) {
            return n.clone();
        }
        self.names
            .write()
            .entry(gateway.to_owned())
            .or_insert_with(|| gateway.into())
            .clone()
    }

    pub fn online(&self, user: u64, gateway: &str, conn: u64, device: &str) {
        let name = self.name(gateway);
        let mut e = self.routes.entry(user).or_default();
        if !e.iter().any(|(g, c, _)| *c == conn && **g == *gateway) {
            e.push((name, conn, device_hash(device)));
        }
    }

    /// Whether the device with [`device_hash`] `device` of `user` has a live link.
    pub fn device_online(&self, user: u64, device: u64) -> bool {
        self.routes
            .get(&user)
            .is_some_and(|e| e.iter().any(|(_, _, d)| *d == device))
    }

    pub fn offline(&self, user: u64, gateway: &str, conn: u64) {
        let empty = {
            let Some(mut e) = self.routes.get_mut(&user) else {
                return;
            };
            e.retain(|(g, c, _)| !(*c == conn && **g == *gateway));
            e.is_empty()
        };
        if empty {
            self.routes.remove_if(&user, |_, v| v.is_empty());
        }
    }

    /// Forgets every route through `gateway` (it left, restarted or died).
    pub fn drop_gateway(&self, gateway: &str) {
        self.routes.retain(|_, v| {
            v.retain(|(g, _, _)| **g != *gateway);
            !v.is_empty()
        });
    }

    /// The gateways to push to for `user`.
    pub fn gateways(&self, user: u64) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        self.each_gateway(user, |g| out.push(g.clone()));
        out
    }

    /// The gateways to push to for `user`, leaving out link `conn` of `gateway`: a
    /// gateway is named only if it holds another of the user's links. `None` when no
    /// route to `user` is known at all (not even that link).
    pub fn gateways_except(&self, user: u64, gateway: &str, conn: u64) -> Option<Vec<Arc<str>>> {
        let e = self.routes.get(&user)?;
        let mut out: Vec<Arc<str>> = Vec::new();
        for (g, c, _) in e.iter() {
            if (*c != conn || **g != *gateway) && !out.iter().any(|o| **o == **g) {
                out.push(g.clone());
            }
        }
        Some(out)
    }

    /// Calls `f` once for each gateway holding links of `user`, allocating nothing (a
    /// group push asks this for every member).
    pub fn each_gateway(&self, user: u64, mut f: impl FnMut(&Arc<str>)) {
        if let Some(e) = self.routes.get(&user) {
            for (i, (g, _, _)) in e.iter().enumerate() {
                if !e[..i].iter().any(|(o, _, _)| **o == **g) {
                    f(g);
                }
            }
        }
    }

    /// Users with at least one link.
    pub fn users_online(&self) -> usize {
        self.routes.len()
    }

    /// Links per gateway: the gateways' load, for ranking endpoint lists. Walks every
    /// route, so callers cache it.
    pub fn links_per_gateway(&self) -> HashMap<Arc<str>, usize> {
        let mut out: HashMap<Arc<str>, usize> = HashMap::new();
        for e in self.routes.iter() {
            for (g, _, _) in e.value() {
                *out.entry(g.clone()).or_default() += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &Presence, user: u64) -> Vec<String> {
        p.gateways(user).iter().map(|g| g.to_string()).collect()
    }

    #[test]
    fn counts_links() {
        let p = Presence::default();
        p.online(1, "a", 1, "d");
        p.online(1, "a", 2, "d");
        p.online(1, "b", 1, "d");
        assert_eq!(names(&p, 1), ["a", "b"]);
        p.offline(1, "a", 1);
        assert_eq!(p.gateways(1).len(), 2);
        p.offline(1, "a", 2);
        assert_eq!(names(&p, 1), ["b"]);
        p.offline(1, "b", 1);
        assert!(p.gateways(1).is_empty());
        assert_eq!(p.users_online(), 0);
        p.offline(7, "x", 1);
    }

    #[test]
    fn events_are_idempotent_and_gateways_drop() {
        let p = Presence::default();
        p.online(1, "a", 5, "d");
        p.online(1, "a", 5, "d");
        p.online(2, "a", 6, "d");
        p.online(2, "b", 1, "d");
        p.offline(1, "a", 5);
        assert!(p.gateways(1).is_empty(), "one link, announced twice");
        p.offline(1, "a", 5);
        p.drop_gateway("a");
        assert_eq!(names(&p, 2), ["b"]);
        assert_eq!(p.users_online(), 1);
        p.drop_gateway("b");
        assert_eq!(p.users_online(), 0);
    }

    #[test]
    fn gateways_except_one_link_name_only_gateways_with_others() {
        let p = Presence::default();
        assert_eq!(p.gateways_except(1, "a", 1), None, "no route at all");
        p.online(1, "a", 1, "phone");
        assert_eq!(p.gateways_except(1, "a", 1), Some(vec![]), "only that link");
        p.online(1, "b", 1, "tablet");
        let only_b = p.gateways_except(1, "a", 1).unwrap();
        assert_eq!(only_b.iter().map(|g| &**g).collect::<Vec<_>>(), ["b"]);
        p.online(1, "a", 2, "laptop");
        let mut both: Vec<&str> = Vec::new();
        let gateways = p.gateways_except(1, "a", 1).unwrap();
        both.extend(gateways.iter().map(|g| &**g));
        both.sort_unstable();
        assert_eq!(both, ["a", "b"]);
    }

    #[test]
    fn devices_are_told_apart() {
        let p = Presence::default();
        p.online(1, "a", 1, "phone");
        assert!(p.device_online(1, device_hash("phone")));
        assert!(!p.device_online(1, device_hash("tablet")));
        assert!(!p.device_online(2, device_hash("phone")));
        p.online(1, "b", 2, "tablet");
        p.offline(1, "a", 1);
        assert!(!p.device_online(1, device_hash("phone")));
        assert!(p.device_online(1, device_hash("tablet")));
    }

    #[test]
    fn a_link_costs_no_more_than_a_gateway_pointer_and_two_words() {
        // The map's value holds one link inline: the device hash adds 8 bytes, no
        // allocation.
        assert!(
            std::mem::size_of::<Links>() <= 40,
            "{}",
            std::mem::size_of::<Links>()
        );
    }
}
