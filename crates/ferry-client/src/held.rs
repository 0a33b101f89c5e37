//! Inline entries that arrived ahead of the synckey, held until the ones before them
//! arrive. Notifies are not ordered — two messages stored in one batch are pushed by
//! different tasks, so seq 8 may arrive before seq 7. When a gap meant "sync at once",
//! `ferry bench p2p` at 20 000 msgs/s open loop sent 34 000–46 000 SYNCs for 160 000
//! messages; holding them, 0–153. The SDK's link and `ferry bench` both hold them here,
//! so they behave alike.
//!
//! Pure bookkeeping: no I/O and no clock; the caller keeps the [`GAP_WAIT`] deadline and
//! syncs when it passes or when [`Held::is_full`].

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_proto::v1;

/// How long held entries wait for the ones before them before the device syncs
/// instead: what is still missing then was lost on the way.
pub const GAP_WAIT: Duration = Duration::from_millis(25);
/// Entries held at most.
const HELD_MAX: usize = 64;

/// Held inline entries, by seq.
#[derive(Debug, Default)]
pub struct Held(BTreeMap<u64, v1::Entry>);

impl Held {
    /// Holds the `entries` after `synckey`, up to [`Held::is_full`].
    pub fn hold(&mut self, entries: Vec<v1::Entry>, synckey: u64) {
        for e in entries {
            if e.seq > synckey && !self.is_full() {
                self.0.insert(e.seq, e);
            }
        }
    }

    /// Takes the held entries that continue `synckey`, in order, and drops those it
    /// already covers.
    pub fn take_run(&mut self, synckey: u64) -> Vec<v1::Entry> {
        self.0 = self.0.split_off(&(synckey + 1));
        let mut run = Vec::new();
        while let Some(e) = self.0.remove(&(synckey + 1 + run.len() as u64)) {
            run.push(e);
        }
        run
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// No room for more: sync rather than wait.
    pub fn is_full(&self) -> bool {
        self.0.len() >= HELD_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(seqs: &[u64]) -> Vec<v1::Entry> {
        seqs.iter()
            .map(|&seq| v1::Entry {
                seq,
                ..Default::default()
            })
            .collect()
    }

    fn seqs(run: &[v1::Entry]) -> Vec<u64> {
        run.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_run_starts_right_after_the_synckey_and_stops_at_a_gap() {
        let mut h = Held::default();
        h.hold(entries(&[3, 2, 6, 5, 1]), 1);
        assert!(
            h.take_run(0).is_empty(),
            "1 was not held (synckey 1 covers it)"
        );
        assert_eq!(seqs(&h.take_run(1)), [2, 3]);
        assert!(!h.is_empty(), "5 and 6 wait for 4");
        // 4 came by sync: the synckey moved past it.
        assert_eq!(seqs(&h.take_run(4)), [5, 6]);
        assert!(h.is_empty());
    }

    #[test]
    fn entries_a_sync_already_brought_are_dropped() {
        let mut h = Held::default();
        h.hold(entries(&[4, 5, 9]), 2);
        assert!(h.take_run(7).is_empty());
        assert_eq!(seqs(&h.take_run(8)), [9]);
        assert!(h.is_empty());
    }

    #[test]
    fn it_fills_up_and_says_so() {
        let mut h = Held::default();
        let many: Vec<u64> = (2..2 + HELD_MAX as u64 + 10).collect();
        h.hold(entries(&many), 0);
        assert!(h.is_full());
        assert_eq!(h.take_run(1).len(), HELD_MAX);
        assert!(!h.is_full());
    }
}
