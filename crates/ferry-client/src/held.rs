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

    /// The entries of a notify, held as [`Held::hold`] does, and the run that now
    /// continues `synckey` ([`Held::take_run`]). Nearly every notify continues the
    /// synckey with nothing held (seq 8 arriving before 7 is the exception): its entries
    /// are the run as they are, without passing through the map — an entry is 184
    /// bytes, and the map's first node holds eleven, ≈ 2 KiB (`ferry bench p2p`'s profile:
    /// holding and taking 3.7 % of the load generator's CPU, and a node made and freed
    /// for every notify).
    pub fn accept(&mut self, entries: Vec<v1::Entry>, synckey: u64) -> Vec<v1::Entry> {
        let continues = self.0.is_empty()
            && entries.first().is_some_and(|e| e.seq <= synckey + 1)
            && entries.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        if continues {
            let mut run = entries;
            run.retain(|e| e.seq > synckey);
            return run;
        }
        self.hold(entries, synckey);
        self.take_run(synckey)
    }

    /// Takes the held entries that continue `synckey`, in order, and drops those it
    /// already covers.
    pub fn take_run(&mut self, synckey: u64) -> Vec<v1::Entry> {
        if self
            .0
            .first_key_value()
            .is_some_and(|(&seq, _)| seq <= synckey)
        {
            self.0 = self.0.split_off(&(synckey + 1));
        }
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
    fn a_notify_that_continues_the_synckey_is_the_run() {
        let mut h = Held::default();
        assert_eq!(seqs(&h.accept(entries(&[3, 4, 5]), 2)), [3, 4, 5]);
        assert!(h.is_empty());
        // Some already applied (a sync brought them): the rest.
        assert_eq!(seqs(&h.accept(entries(&[3, 4, 5, 6]), 4)), [5, 6]);
        // All already applied.
        assert!(h.accept(entries(&[3, 4]), 6).is_empty());
        assert!(h.is_empty());
        // More than the map would hold: all of them, none dropped.
        let many: Vec<u64> = (1..=HELD_MAX as u64 + 10).collect();
        assert_eq!(h.accept(entries(&many), 0).len(), many.len());
        assert!(h.is_empty());
    }

    #[test]
    fn a_notify_ahead_of_the_synckey_waits_and_then_releases_what_it_held() {
        let mut h = Held::default();
        assert!(h.accept(entries(&[5, 6]), 3).is_empty(), "4 is missing");
        assert!(!h.is_empty());
        assert!(h.accept(entries(&[8]), 3).is_empty());
        // 4 arrives: 4 to 6 go, 8 waits for 7.
        assert_eq!(seqs(&h.accept(entries(&[4]), 3)), [4, 5, 6]);
        assert!(!h.is_empty());
        // A notify that continues the synckey while something is held: held first.
        assert_eq!(seqs(&h.accept(entries(&[7]), 6)), [7, 8]);
        assert!(h.is_empty());
        // Out of order within a notify is held as hold() holds it.
        assert_eq!(seqs(&h.accept(entries(&[10, 9]), 8)), [9, 10]);
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
