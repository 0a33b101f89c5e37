//! Who has push targets: user → devices, with what planning needs (the device's
//! preview, so the summary holds no more than the push may show) and the registration's
//! version. Built from the store at start and refreshed every second from the targets
//! registered since, so registrations made on other logic nodes arrive here too.
//!
//! No tokens, endpoints or keys are kept (the worker reads the target with the queued
//! row). A target deleted on another node stays here until this node restarts: harmless,
//! the store ignores enqueues for a device without a target.

use std::sync::Arc;

use dashmap::DashMap;
use ferry_store::PushTargetRow;
use smallvec::SmallVec;

use crate::presence::device_hash;

/// One device with a push target.
#[derive(Debug, Clone)]
pub struct Dev {
    pub id: Arc<str>,
    /// [`device_hash`] of `id`: what presence knows the device by.
    pub hash: u64,
    /// The registration's version (`PushTargetRow::registered_ms`).
    pub registered_ms: i64,
    /// 0 none, 1 sender, 2 full.
    pub preview: u8,
}

/// A user's devices with targets: almost always one, kept inline.
type Devs = SmallVec<[Dev; 1]>;

#[derive(Default)]
pub struct Index {
    users: DashMap<u64, Devs>,
}

impl Index {
    /// Adds or replaces the device of a stored target.
    pub fn put(&self, row: &PushTargetRow) {
        let mut e = self.users.entry(row.user_id).or_default();
        let dev = Dev {
            id: row.device_id.as_str().into(),
            hash: device_hash(&row.device_id),
            registered_ms: row.registered_ms,
            preview: row.preview,
        };
        match e.iter_mut().find(|d| *d.id == *row.device_id) {
            Some(d) if d.registered_ms <= row.registered_ms => *d = dev,
            Some(_) => {}
            None => e.push(dev),
        }
    }

    /// Forgets one device of a user (None: all of them).
    pub fn remove(&self, user: u64, device: Option<&str>) {
        match device {
            None => {
                self.users.remove(&user);
            }
            Some(device) => {
                let empty = match self.users.get_mut(&user) {
                    Some(mut e) => {
                        e.retain(|d| *d.id != *device);
                        e.is_empty()
                    }
                    None => false,
                };
                if empty {
                    self.users.remove_if(&user, |_, v| v.is_empty());
                }
            }
        }
    }

    /// Forgets a device only if its registration is the one given (a provider said the
    /// target is gone; a newer registration stays).
    pub fn remove_if(&self, user: u64, device: &str, registered_ms: i64) {
        if let Some(mut e) = self.users.get_mut(&user) {
            e.retain(|d| !(*d.id == *device && d.registered_ms == registered_ms));
        }
        self.users.remove_if(&user, |_, v| v.is_empty());
    }

    /// Whether `user` has any device with a target (the send path asks this first).
    pub fn has(&self, user: u64) -> bool {
        self.users.contains_key(&user)
    }

    /// Whether no user has a target.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user's devices with targets.
    pub fn devices(&self, user: u64) -> Devs {
        self.users.get(&user).map(|e| e.clone()).unwrap_or_default()
    }

    /// Devices indexed.
    pub fn len(&self) -> usize {
        self.users.iter().map(|e| e.len()).sum()
    }

    /// About how many bytes the index holds: the map's slots (key, value, control byte)
    /// at its capacity, spilled device lists, and each device id's shared allocation
    /// (two counters and the bytes, rounded to the allocator's 16).
    pub fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<(u64, Devs)>() + 1;
        let mut total = self.users.capacity() * slot;
        for e in self.users.iter() {
            if e.spilled() {
                total += e.capacity() * std::mem::size_of::<Dev>();
            }
            for d in e.iter() {
                total += (16 + d.id.len()).div_ceil(16) * 16;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: u64, device: &str, registered_ms: i64) -> PushTargetRow {
        PushTargetRow {
            user_id: user,
            device_id: device.into(),
            registered_ms,
            preview: 1,
            ..Default::default()
        }
    }

    #[test]
    fn devices_come_and_go() {
        let ix = Index::default();
        ix.put(&row(1, "phone", 10));
        ix.put(&row(1, "tablet", 11));
        ix.put(&row(1, "phone", 12));
        assert_eq!(ix.len(), 2);
        // An older registration read late does not undo a newer one.
        ix.put(&row(1, "phone", 9));
        assert_eq!(ix.devices(1)[0].registered_ms, 12);
        // "Gone" for an old registration leaves the new one.
        ix.remove_if(1, "phone", 10);
        assert_eq!(ix.len(), 2);
        ix.remove_if(1, "phone", 12);
        ix.remove(1, Some("tablet"));
        assert!(!ix.has(1));
        ix.put(&row(2, "a", 1));
        ix.put(&row(2, "b", 1));
        ix.remove(2, None);
        assert_eq!(ix.len(), 0);
    }

    /// The memory budget: at most 200 bytes per registered target (one device per user,
    /// the usual case; device ids of 36 characters, a UUID).
    #[test]
    fn a_target_costs_under_200_bytes() {
        let ix = Index::default();
        let n = 50_000;
        for u in 0..n {
            ix.put(&row(u, &format!("{:08x}-0000-4000-8000-{:012x}", u, u), 1));
        }
        let per = ix.bytes() / n as usize;
        assert!(per <= 200, "{per} bytes per target");
        assert!(
            per >= std::mem::size_of::<Dev>(),
            "{per} is not an estimate"
        );
    }
}
