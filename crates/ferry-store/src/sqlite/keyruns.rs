//! Runs of idempotency keys: a sender's merged `(client_msg_id, message id)` keys, many
//! to a row of `key_runs`, instead of a row of `message_keys` each.
//!
//! A row holds keys of one sender whose client ids all lie above every key of that
//! sender merged before (the SDK's ids grow within a device), so a sender's runs never
//! overlap and the run that may hold a client id is the one with the greatest
//! `first_cmid` at or below it. Client ids are ordered as SQLite orders them (signed).
//! `rest` holds every key after the first as two varints: the client id's step up
//! (≥ 1) and the message id's step, zigzag-encoded (ids of one sender grow, but not
//! strictly with their client ids).
//!
//! Runs are never rewritten: a message deleted later leaves its key in its run, and
//! whoever reads a key reads its message's row as well (it may be gone). A key at or
//! below the sender's highest merged client id goes to `message_keys` instead, where it
//! is found first.

use prost::encoding::{decode_varint, encode_varint};

/// Most bytes of a run's `rest`. With its six integer columns and the record header a
/// row stays within what a 1 KiB page holds of a WITHOUT ROWID row locally, 231 bytes
/// ((1 024 − 12) × 64 / 255 − 23): 216 bytes at most while every id is below 2^47 (31
/// bytes of integers, a 9-byte header), 220 with 8-byte client ids. A run ends when
/// fewer than 20 bytes (the longest step) are left: at 3 bytes a step (a client id step of
/// 1, a message id step below 8 192) it holds 54 keys.
const REST_BYTES: usize = 176;

/// One row of `key_runs` (but its sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Run {
    pub(super) first_cmid: i64,
    pub(super) last_cmid: i64,
    pub(super) first_id: u64,
    /// The greatest message id in the run: a run whose ids are all below every message
    /// left after a prune is dropped with them.
    pub(super) max_id: u64,
    /// How many keys it holds.
    pub(super) n: u32,
    pub(super) rest: Vec<u8>,
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Cuts `keys` (one sender's, client ids strictly ascending as signed numbers) into
/// runs of at most [`REST_BYTES`] bytes of `rest` each.
pub(super) fn encode(keys: &[(i64, u64)]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut it = keys.iter();
    let Some(&(c0, id0)) = it.next() else {
        return runs;
    };
    let mut run = Run {
        first_cmid: c0,
        last_cmid: c0,
        first_id: id0,
        max_id: id0,
        n: 1,
        rest: Vec::new(),
    };
    let mut prev_id = id0;
    for &(c, id) in it {
        debug_assert!(c > run.last_cmid, "client ids ascend within a sender");
        if run.rest.len() + 20 > REST_BYTES {
            runs.push(std::mem::replace(
                &mut run,
                Run {
                    first_cmid: c,
                    last_cmid: c,
                    first_id: id,
                    max_id: id,
                    n: 1,
                    rest: Vec::new(),
                },
            ));
            prev_id = id;
            continue;
        }
        // The true step is in 1..2^64, which the wrapping difference as u64 is.
        encode_varint(c.wrapping_sub(run.last_cmid) as u64, &mut run.rest);
        encode_varint(zigzag(id.wrapping_sub(prev_id) as i64), &mut run.rest);
        run.last_cmid = c;
        run.max_id = run.max_id.max(id);
        run.n += 1;
        prev_id = id;
    }
    runs.push(run);
    runs
}

/// The keys of a run in client id order, decoded as they are read; an item is `None`
/// where `rest` stops decoding (a damaged row), and nothing follows it.
fn decode(
    first_cmid: i64,
    first_id: u64,
    rest: &[u8],
) -> impl Iterator<Item = Option<(i64, u64)>> + '_ {
    let mut buf = rest;
    std::iter::successors(Some(Some((first_cmid, first_id))), move |prev| {
        let (c, id) = (*prev)?;
        if buf.is_empty() {
            return None;
        }
        Some(step(&mut buf).map(|(dc, did)| (c.wrapping_add(dc), id.wrapping_add(did))))
    })
}

/// One key's steps from the one before: the client id's and the message id's.
fn step(buf: &mut &[u8]) -> Option<(i64, u64)> {
    let dc = decode_varint(buf).ok()? as i64;
    let did = unzigzag(decode_varint(buf).ok()?) as u64;
    Some((dc, did))
}

/// Every key of a run, in client id order. `None` when `rest` does not decode (a
/// damaged row): the caller reports it.
pub(super) fn keys(first_cmid: i64, first_id: u64, rest: &[u8]) -> Option<Vec<(i64, u64)>> {
    decode(first_cmid, first_id, rest).collect()
}

/// The message id the run holds for `cmid`, if any (`None`: damaged before it).
pub(super) fn find(first_cmid: i64, first_id: u64, rest: &[u8], cmid: i64) -> Option<Option<u64>> {
    for key in decode(first_cmid, first_id, rest) {
        let (c, id) = key?;
        if c >= cmid {
            return Some((c == cmid).then_some(id));
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_hold_every_key_and_find_each_and_nothing_else() {
        // Client ids with gaps and a jump across zero (ids of 2^63 and more are stored
        // negative); message ids that go up and, now and then, down.
        let mut keys = Vec::new();
        let (mut c, mut id) = (-5_i64, 1_000u64);
        for i in 0..500u64 {
            keys.push((c, id));
            c += 1 + (i % 7 == 0) as i64 * 1_000;
            id = if i % 11 == 0 { id - 3 } else { id + 400 + i };
        }
        keys.push((i64::MAX, u64::MAX >> 1));
        let runs = encode(&keys);
        assert!(runs.len() > 1, "500 keys do not fit one run");
        let mut back = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            assert!(r.rest.len() <= REST_BYTES);
            let ks = keys_of(r);
            assert_eq!(ks.first().unwrap().0, r.first_cmid);
            assert_eq!(ks.last().unwrap().0, r.last_cmid);
            assert_eq!(r.max_id, ks.iter().map(|k| k.1).max().unwrap());
            assert_eq!(r.n as usize, ks.len());
            if let Some(next) = runs.get(i + 1) {
                assert!(next.first_cmid > r.last_cmid, "runs do not overlap");
            }
            back.extend(ks);
        }
        assert_eq!(back, keys);
        for &(c, id) in &keys {
            let r = runs.iter().rev().find(|r| r.first_cmid <= c).unwrap();
            assert_eq!(find(r.first_cmid, r.first_id, &r.rest, c), Some(Some(id)));
            if let Some(next) = c.checked_add(1) {
                let held = keys.iter().find(|k| k.0 == next).map(|k| k.1);
                let r = runs.iter().rev().find(|r| r.first_cmid <= next).unwrap();
                assert_eq!(find(r.first_cmid, r.first_id, &r.rest, next), Some(held));
            }
        }
    }

    /// A sender's usual run: client ids one apart, message ids a few hundred apart (3
    /// bytes a step): 54 keys a row.
    #[test]
    fn a_run_of_three_byte_steps_holds_54_keys() {
        let keys: Vec<(i64, u64)> = (0..200)
            .map(|i| (1 << 40 | i, 1_000 + 400 * i as u64))
            .collect();
        let runs = encode(&keys);
        assert_eq!(runs[0].n, 54);
        assert_eq!(runs[0].rest.len(), 53 * 3);
    }

    fn keys_of(r: &Run) -> Vec<(i64, u64)> {
        keys(r.first_cmid, r.first_id, &r.rest).unwrap()
    }

    #[test]
    fn a_damaged_run_is_reported_not_misread() {
        let runs = encode(&[(1, 10), (2, 11), (3, 12)]);
        let mut rest = runs[0].rest.clone();
        rest.push(0x80); // a varint cut short
        assert_eq!(keys(1, 10, &rest), None);
        assert_eq!(find(1, 10, &rest, 9), None);
        assert_eq!(find(1, 10, &rest, 3), Some(Some(12)));
    }
}
