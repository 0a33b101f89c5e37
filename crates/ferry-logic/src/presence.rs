//! The route table: which gateways hold links of which user. Kept from the gateways'
//! link events; in one process it is the whole truth, in a cluster every logic node
//! keeps its own copy from the same events (the NATS bus delivers every gateway's events
//! to every logic node, with snapshots and gateway expiry; see `ferry-bus`'s `nats.rs`).
//!
//! Entries are keyed by (gateway, connection id), so an event applied twice (a snapshot
//! replaying links already known) changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use smallvec::SmallVec;

/// A user's links: almost always one, kept inline in the map entry (a `Vec` put its
/// first link in a 96-byte allocation of its own — ~5 % of a one-process server's
/// memory per idle connection).
type Links = SmallVec<[(Arc<str>, u64); 1]>;

#[derive(Default)]
pub struct Presence {
    /// user id → (gateway id, connection id) of each of the user's links.
    routes: DashMap<u64, Links>,
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

    pub fn online(&self, user: u64, gateway: &str, conn: u64) {
        let name = self.name(gateway);
        let mut e = self.routes.entry(user).or_default();
        if !e.iter().any(|(g, c)| *c == conn && **g == *gateway) {
            e.push((name, conn));
        }
    }

    pub fn offline(&self, user: u64, gateway: &str, conn: u64) {
        let empty = {
            let Some(mut e) = self.routes.get_mut(&user) else {
                return;
            };
            e.retain(|(g, c)| !(*c == conn && **g == *gateway));
            e.is_empty()
        };
        if empty {
            self.routes.remove_if(&user, |_, v| v.is_empty());
        }
    }

    /// Forgets every route through `gateway` (it left, restarted or died).
    pub fn drop_gateway(&self, gateway: &str) {
        self.routes.retain(|_, v| {
            v.retain(|(g, _)| **g != *gateway);
            !v.is_empty()
        });
    }

    /// The gateways to push to for `user`.
    pub fn gateways(&self, user: u64) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        self.each_gateway(user, |g| out.push(g.clone()));
        out
    }

    /// Calls `f` once for each gateway holding links of `user`, allocating nothing (a
    /// group push asks this for every member).
    pub fn each_gateway(&self, user: u64, mut f: impl FnMut(&Arc<str>)) {
        if let Some(e) = self.routes.get(&user) {
            for (i, (g, _)) in e.iter().enumerate() {
                if !e[..i].iter().any(|(o, _)| **o == **g) {
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
            for (g, _) in e.value() {
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
        p.online(1, "a", 1);
        p.online(1, "a", 2);
        p.online(1, "b", 1);
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
        p.online(1, "a", 5);
        p.online(1, "a", 5);
        p.online(2, "a", 6);
        p.online(2, "b", 1);
        p.offline(1, "a", 5);
        assert!(p.gateways(1).is_empty(), "one link, announced twice");
        p.offline(1, "a", 5);
        p.drop_gateway("a");
        assert_eq!(names(&p, 2), ["b"]);
        assert_eq!(p.users_online(), 1);
        p.drop_gateway("b");
        assert_eq!(p.users_online(), 0);
    }
}
