//! The route table: which gateways hold links of which user. Kept from the gateways'
//! link events; in one process it is the whole truth, in a cluster each logic node
//! keeps its own copy from the same events.

use dashmap::DashMap;

#[derive(Default)]
pub struct Presence {
    /// user id → (gateway id, links of the user on it).
    routes: DashMap<u64, Vec<(String, u32)>>,
}

impl Presence {
    pub fn online(&self, user: u64, gateway: &str) {
        let mut e = self.routes.entry(user).or_default();
        match e.iter_mut().find(|(g, _)| g == gateway) {
            Some((_, n)) => *n += 1,
            None => e.push((gateway.to_owned(), 1)),
        }
    }

    pub fn offline(&self, user: u64, gateway: &str) {
        let empty = {
            let Some(mut e) = self.routes.get_mut(&user) else {
                return;
            };
            if let Some(i) = e.iter().position(|(g, _)| g == gateway) {
                e[i].1 -= 1;
                if e[i].1 == 0 {
                    e.swap_remove(i);
                }
            }
            e.is_empty()
        };
        if empty {
            self.routes.remove_if(&user, |_, v| v.is_empty());
        }
    }

    /// The gateways to push to for `user`.
    pub fn gateways(&self, user: u64) -> Vec<String> {
        self.routes
            .get(&user)
            .map(|e| e.iter().map(|(g, _)| g.clone()).collect())
            .unwrap_or_default()
    }

    /// Users with at least one link.
    pub fn users_online(&self) -> usize {
        self.routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_links() {
        let p = Presence::default();
        p.online(1, "a");
        p.online(1, "a");
        p.online(1, "b");
        assert_eq!(p.gateways(1), ["a", "b"]);
        p.offline(1, "a");
        assert_eq!(p.gateways(1).len(), 2);
        p.offline(1, "a");
        assert_eq!(p.gateways(1), ["b"]);
        p.offline(1, "b");
        assert!(p.gateways(1).is_empty());
        assert_eq!(p.users_online(), 0);
        p.offline(7, "x");
    }
}
