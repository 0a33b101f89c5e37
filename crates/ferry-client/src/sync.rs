//! The sync state machine of one logged-in link: pushes and answers in, frames to send
//! and events for the app out. No sockets, no tasks and no clock — the session loop
//! hands it frames, the time (`now`) and how many events the app can take (`room`), then
//! sends [`SyncMachine::out`] and delivers [`SyncMachine::take_events`].
//!
//! The rules (docs/protocol.md §2 and §4):
//! - An inbox entry is applied once, in seq order: only when its seq is above the
//!   synckey, and the synckey moves as it is applied. Group entries likewise per group,
//!   by gseq against the group's cursor.
//! - A NOTIFY whose inline entries are contiguous and end at `latest_seq` is applied, or
//!   held (see [`Held`]) until the entries before it arrive; after [`GAP_WAIT`], or when
//!   the hold is full, or when the entries are not inline, the device sends SYNC.
//! - A SendAck carrying the sender's own entry (the link logged in with
//!   `echo_in_ack`) is taken as a NOTIFY of that one entry.
//! - A SYNC answer is applied, its `synckey` adopted (it may jump past pruned entries),
//!   and SYNC is sent again while `more`, while `latest_seq` is above the synckey, or when
//!   a notify came during the sync. One SYNC is in flight at a time; one GROUP_SYNC per
//!   group.
//! - **Only entries handed to the app count as applied.** When the app has no room
//!   left, the machine stops (it is *stalled*): the synckey stays at the last entry
//!   handed over, what was not handed over is dropped, and once the session loop sees
//!   room again it calls [`SyncMachine::resume`], which syncs from the synckey. So a
//!   slow app loses nothing and the link stays alive meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::BytesMut;
use ferry_proto::frame::{encode_msg, encode_raw};
use ferry_proto::v1;
use ferry_proto::{cmd, Frame, ProtoMessage};
use tokio::time::Instant;

use crate::{Event, Held, GAP_WAIT};

/// A frame the server should not have sent: the link is not to be trusted any more.
#[derive(Debug, PartialEq)]
pub(crate) struct SyncError(pub String);

/// The inbox and group sync of one link (see the module docs).
#[derive(Debug)]
pub(crate) struct SyncMachine {
    /// The highest seq handed to the app.
    synckey: u64,
    /// Per group: the highest gseq handed to the app.
    group_cursors: BTreeMap<u64, u64>,
    /// The synckey or a cursor moved since [`SyncMachine::take_changed`].
    changed: bool,
    next_id: u32,
    /// The id of the SYNC in flight, if any.
    sync_req: Option<u32>,
    /// A notify came while a sync was in flight: sync again after it.
    resync: bool,
    /// Inline entries that arrived ahead of the synckey, waiting for the ones before
    /// them (see [`GAP_WAIT`]).
    held: Held,
    /// When to give up waiting for the held entries' gap and sync.
    gap_deadline: Option<Instant>,
    /// GROUP_SYNCs in flight: request id → group.
    group_syncs: HashMap<u32, u64>,
    /// Groups with a sync in flight, and those to sync again after it.
    group_busy: HashSet<u64>,
    group_again: HashSet<u64>,
    /// The GROUP_LIST sent after login.
    group_list_req: Option<u32>,
    /// Events the app can still take now (set by the session loop).
    room: usize,
    /// The app had no room: nothing is applied until [`SyncMachine::resume`].
    stalled: bool,
    /// Inbox entries were left out by a stall: sync at resume.
    inbox_behind: bool,
    /// Groups whose entries were left out by a stall: sync them at resume.
    groups_behind: HashSet<u64>,
    /// Events for the app, in order.
    events: Vec<Event>,
    /// Frames to send, encoded. The session loop also queues the app's requests and
    /// heartbeats here, so one write carries them all.
    pub out: BytesMut,
}

impl SyncMachine {
    /// A machine starting from the device's stored synckey and group cursors.
    pub fn new(synckey: u64, group_cursors: BTreeMap<u64, u64>) -> Self {
        SyncMachine {
            synckey,
            group_cursors,
            changed: false,
            next_id: 2,
            sync_req: None,
            resync: false,
            held: Held::default(),
            gap_deadline: None,
            group_syncs: HashMap::new(),
            group_busy: HashSet::new(),
            group_again: HashSet::new(),
            group_list_req: None,
            room: usize::MAX,
            stalled: false,
            inbox_behind: false,
            groups_behind: HashSet::new(),
            events: Vec::new(),
            out: BytesMut::new(),
        }
    }

    pub fn synckey(&self) -> u64 {
        self.synckey
    }

    pub fn group_cursors(&self) -> &BTreeMap<u64, u64> {
        &self.group_cursors
    }

    /// Whether the synckey or a cursor moved since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// A request id for a frame of this link (the app's requests take theirs here too).
    /// 0 and 1 are never used: 0 marks pushes, 1 is the LOGIN.
    pub fn next_req_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(2);
        id
    }

    /// How many more events the app can take now.
    pub fn set_room(&mut self, room: usize) {
        self.room = room;
    }

    /// The events for the app, in order. They fit the room last set.
    pub fn take_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// The app ran out of room: waiting for [`SyncMachine::resume`].
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// When the held entries' gap expires (see [`SyncMachine::tick`]).
    pub fn deadline(&self) -> Option<Instant> {
        self.gap_deadline
    }

    /// Just logged in: ask which groups moved while away, and sync when the server
    /// holds entries beyond the synckey.
    pub fn logged_in(&mut self, latest_seq: u64) {
        let id = self.next_req_id();
        encode_raw(cmd::GROUP_LIST, id, &[], &mut self.out);
        self.group_list_req = Some(id);
        if latest_seq > self.synckey {
            self.start_sync();
        }
    }

    /// The time is `now`: a gap before held entries that did not fill by its deadline
    /// was lost on the way, so sync.
    pub fn tick(&mut self, now: Instant) {
        if self.gap_deadline.is_some_and(|t| now >= t) {
            self.gap_deadline = None;
            self.start_sync();
        }
    }

    /// The app has room again (set with [`SyncMachine::set_room`] first): fetch what the
    /// stall left out.
    pub fn resume(&mut self) {
        if !self.stalled {
            return;
        }
        self.stalled = false;
        if std::mem::take(&mut self.inbox_behind) {
            self.start_sync();
        }
        let groups: Vec<u64> = self.groups_behind.drain().collect();
        for g in groups {
            self.start_group_sync(g);
        }
    }

    /// Takes one incoming frame. Frames that are not the machine's (answers to the app's
    /// requests, heartbeat answers, KICK) come back as `Ok(Some(frame))`.
    pub fn on_frame(&mut self, f: Frame, now: Instant) -> Result<Option<Frame>, SyncError> {
        let bad = |what: &str, e: prost::DecodeError| SyncError(format!("undecodable {what}: {e}"));
        match f.cmd {
            cmd::NOTIFY => {
                let n = v1::Notify::decode(f.body).map_err(|e| bad("notify", e))?;
                self.on_notify(n, now);
            }
            _ if Some(f.req_id) == self.sync_req => {
                self.sync_req = None;
                if f.cmd == cmd::ERROR {
                    let e = v1::Error::decode(f.body).unwrap_or_default();
                    return Err(SyncError(format!("sync refused: {}", e.message)));
                }
                let r = v1::SyncResp::decode(f.body).map_err(|e| bad("sync answer", e))?;
                self.on_sync(r, now);
            }
            cmd::GROUP_NOTIFY => {
                let n = v1::GroupNotify::decode(f.body).map_err(|e| bad("group notify", e))?;
                self.on_group_notify(n);
            }
            cmd::TYPING_PUSH => {
                // Never stored and may be missed: without room it is dropped, and
                // that does not stall the machine.
                if let Ok(t) = v1::Typing::decode(f.body) {
                    if !self.stalled && self.room > 0 {
                        self.room -= 1;
                        self.events.push(Event::Typing { from: t.to });
                    }
                }
            }
            _ if self.group_syncs.contains_key(&f.req_id) => {
                let group = self.group_syncs.remove(&f.req_id).unwrap_or_default();
                self.on_group_sync(group, f)?;
            }
            _ if Some(f.req_id) == self.group_list_req => {
                self.group_list_req = None;
                if f.cmd == cmd::response(cmd::GROUP_LIST) {
                    let list =
                        v1::GroupListResp::decode(f.body).map_err(|e| bad("group list", e))?;
                    for g in list.groups {
                        if g.latest_gseq > self.group_cursor(g.group_id) {
                            self.start_group_sync(g.group_id);
                        }
                    }
                }
            }
            c if c == cmd::response(cmd::SEND) => {
                // The link asked for its own messages' entries in their SendAck
                // (`LoginReq.echo_in_ack`): the entry counts as a notify of it. The ack
                // itself goes on to the send that waits for it.
                if let Ok(v1::SendAck { entry: Some(e), .. }) = v1::SendAck::decode(f.body.clone())
                {
                    let latest_seq = e.seq;
                    self.on_notify(
                        v1::Notify {
                            latest_seq,
                            entries: vec![e],
                        },
                        now,
                    );
                }
                return Ok(Some(f));
            }
            _ => return Ok(Some(f)),
        }
        Ok(None)
    }

    fn on_notify(&mut self, n: v1::Notify, now: Instant) {
        if n.latest_seq <= self.synckey {
            return;
        }
        if self.stalled {
            self.inbox_behind = true;
            return;
        }
        // Entries inline up to latest_seq are applied, or held until the ones before
        // them arrive; anything else is fetched by a sync.
        let inline = n.entries.last().map(|e| e.seq) == Some(n.latest_seq)
            && n.entries.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        if !inline {
            self.start_sync();
            return;
        }
        let run = self.held.accept(n.entries, self.synckey);
        if self.held.is_full() {
            self.start_sync();
        }
        self.apply(run);
        self.drain_held(now);
    }

    fn on_sync(&mut self, r: v1::SyncResp, now: Instant) {
        // The answer's synckey may jump past pruned entries, but only when every entry
        // it covers reached the app.
        if self.apply(r.entries) && r.synckey > self.synckey {
            self.synckey = r.synckey;
            self.changed = true;
        }
        self.drain_held(now);
        if self.stalled {
            // Resumed by a sync from the synckey; chaining now would only be dropped.
            self.inbox_behind = true;
            return;
        }
        if r.more || self.resync || r.latest_seq > self.synckey {
            self.start_sync();
        }
    }

    fn start_sync(&mut self) {
        if self.sync_req.is_some() {
            self.resync = true;
            return;
        }
        let id = self.next_req_id();
        let req = v1::SyncReq {
            synckey: self.synckey,
            limit: 0,
        };
        encode_msg(cmd::SYNC, id, &req, &mut self.out);
        self.sync_req = Some(id);
        self.resync = false;
        self.gap_deadline = None;
    }

    /// Applies the held entries that now continue the synckey, drops those already
    /// applied, and starts the gap timer when some are still waiting.
    fn drain_held(&mut self, now: Instant) {
        let run = self.held.take_run(self.synckey);
        self.apply(run);
        if self.stalled {
            // All of it will come again by the sync at resume.
            self.held = Held::default();
        }
        if self.held.is_empty() {
            self.gap_deadline = None;
        } else if self.sync_req.is_none() {
            self.gap_deadline.get_or_insert(now + GAP_WAIT);
        }
    }

    /// Takes room for one entry event; without room the machine stalls.
    fn room_for_entry(&mut self) -> bool {
        if !self.stalled && self.room == 0 {
            self.stalled = true;
        }
        if self.stalled {
            return false;
        }
        self.room -= 1;
        true
    }

    /// Hands the entries that continue the synckey to the app. False when the app ran
    /// out of room before all of them (the rest are dropped, to be synced at resume).
    fn apply(&mut self, entries: Vec<v1::Entry>) -> bool {
        for e in entries {
            if e.seq <= self.synckey {
                continue;
            }
            if !self.room_for_entry() {
                self.inbox_behind = true;
                return false;
            }
            self.synckey = e.seq;
            self.changed = true;
            // Joining a group: fetch its log from where this user may read.
            if let Some(v1::entry::Kind::Group(g)) = &e.kind {
                use v1::group_event::Kind as K;
                if matches!(g.kind(), K::Created | K::Joined) {
                    self.start_group_sync(g.group_id);
                }
            }
            self.events.push(Event::Entry(e));
        }
        true
    }

    fn group_cursor(&self, group: u64) -> u64 {
        self.group_cursors.get(&group).copied().unwrap_or(0)
    }

    fn start_group_sync(&mut self, group: u64) {
        if self.stalled {
            self.groups_behind.insert(group);
            return;
        }
        if !self.group_busy.insert(group) {
            self.group_again.insert(group);
            return;
        }
        let id = self.next_req_id();
        let req = v1::GroupSyncReq {
            group_id: group,
            after: self.group_cursor(group),
            limit: 0,
        };
        encode_msg(cmd::GROUP_SYNC, id, &req, &mut self.out);
        self.group_syncs.insert(id, group);
    }

    /// Hands a group's entries that continue its cursor to the app. False when the app
    /// ran out of room before all of them.
    fn apply_group(&mut self, group: u64, entries: Vec<v1::GroupEntry>) -> bool {
        for e in entries {
            if e.gseq <= self.group_cursor(group) {
                continue;
            }
            if !self.room_for_entry() {
                self.groups_behind.insert(group);
                return false;
            }
            self.group_cursors.insert(group, e.gseq);
            self.changed = true;
            self.events.push(Event::Group {
                group_id: group,
                entry: e,
            });
        }
        true
    }

    fn on_group_notify(&mut self, n: v1::GroupNotify) {
        let cursor = self.group_cursor(n.group_id);
        if n.latest_gseq <= cursor {
            return;
        }
        let continues = cursor > 0
            && n.entries.first().map(|e| e.gseq) == Some(cursor + 1)
            && n.entries.last().map(|e| e.gseq) == Some(n.latest_gseq)
            && n.entries.windows(2).all(|w| w[1].gseq == w[0].gseq + 1);
        if continues && !self.group_busy.contains(&n.group_id) && !self.stalled {
            self.apply_group(n.group_id, n.entries);
            return;
        }
        self.start_group_sync(n.group_id);
    }

    fn on_group_sync(&mut self, group: u64, f: Frame) -> Result<(), SyncError> {
        self.group_busy.remove(&group);
        let again = self.group_again.remove(&group);
        if f.cmd == cmd::ERROR {
            // No longer a member (or the group is gone): forget it.
            self.group_cursors.remove(&group);
            self.groups_behind.remove(&group);
            self.changed = true;
            return Ok(());
        }
        let r = v1::GroupSyncResp::decode(f.body)
            .map_err(|e| SyncError(format!("undecodable group sync: {e}")))?;
        if self.apply_group(group, r.entries) && r.cursor > self.group_cursor(group) {
            self.group_cursors.insert(group, r.cursor);
            self.changed = true;
        }
        if r.more || again || r.latest_gseq > self.group_cursor(group) {
            self.start_group_sync(group);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(seq: u64) -> v1::Entry {
        v1::Entry {
            seq,
            ..Default::default()
        }
    }

    /// A NOTIFY carrying entry `seq` inline (as the server sends one per message).
    fn notify(seq: u64) -> Frame {
        let body = v1::Notify {
            latest_seq: seq,
            entries: vec![entry(seq)],
        };
        Frame::new(cmd::NOTIFY, 0, body.encode_to_vec())
    }

    fn sync_answer(id: u32, seqs: &[u64], synckey: u64, latest_seq: u64, more: bool) -> Frame {
        let r = v1::SyncResp {
            entries: seqs.iter().map(|&s| entry(s)).collect(),
            synckey,
            latest_seq,
            more,
        };
        Frame::new(cmd::response(cmd::SYNC), id, r.encode_to_vec())
    }

    /// The seqs of the inbox entries handed to the app since the last call.
    fn applied(m: &mut SyncMachine) -> Vec<u64> {
        m.take_events()
            .filter_map(|ev| match ev {
                Event::Entry(e) => Some(e.seq),
                _ => None,
            })
            .collect()
    }

    /// The frames queued to send since the last call.
    fn sent(m: &mut SyncMachine) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = Frame::parse(&mut m.out, ferry_proto::MAX_BODY_LEN).unwrap() {
            frames.push(f);
        }
        assert!(m.out.is_empty(), "only whole frames");
        frames
    }

    /// The one SYNC sent since the last call: its id and synckey.
    fn one_sync(m: &mut SyncMachine) -> (u32, u64) {
        let frames = sent(m);
        assert_eq!(frames.len(), 1, "one frame: {frames:?}");
        let f = frames.into_iter().next().unwrap();
        assert_eq!(f.cmd, cmd::SYNC);
        (f.req_id, v1::SyncReq::decode(f.body).unwrap().synckey)
    }

    fn feed(m: &mut SyncMachine, f: Frame) {
        assert_eq!(
            m.on_frame(f, Instant::now()),
            Ok(None),
            "the machine's frame"
        );
    }

    #[test]
    fn in_order_inline_entries_are_applied_at_once() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        for seq in 1..=3 {
            feed(&mut m, notify(seq));
        }
        assert_eq!(applied(&mut m), [1, 2, 3]);
        assert_eq!(m.synckey(), 3);
        assert!(m.take_changed() && !m.take_changed());
        assert!(sent(&mut m).is_empty() && m.deadline().is_none());
    }

    #[test]
    fn reordered_notifies_are_applied_in_order_without_a_sync() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        feed(&mut m, notify(2));
        assert!(applied(&mut m).is_empty());
        assert!(m.deadline().is_some(), "seq 2 waits for seq 1");
        feed(&mut m, notify(1));
        feed(&mut m, notify(3));
        assert_eq!(applied(&mut m), [1, 2, 3]);
        assert_eq!(m.synckey(), 3);
        assert!(
            sent(&mut m).is_empty() && m.sync_req.is_none(),
            "no SYNC was sent"
        );
        assert!(m.held.is_empty() && m.deadline().is_none());
    }

    #[test]
    fn a_gap_that_does_not_fill_in_time_is_synced() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        feed(&mut m, notify(1));
        feed(&mut m, notify(3));
        assert_eq!(applied(&mut m), [1]);
        let deadline = m.deadline().expect("waiting for seq 2");
        m.tick(deadline - Duration::from_millis(1));
        assert!(sent(&mut m).is_empty(), "not yet");
        m.tick(deadline);
        let (id, synckey) = one_sync(&mut m);
        assert_eq!(synckey, 1);
        // The answer brings 2; the held 3 follows it.
        feed(&mut m, sync_answer(id, &[2], 2, 3, false));
        assert_eq!(applied(&mut m), [2, 3]);
        assert!(sent(&mut m).is_empty(), "3 was held: nothing left to fetch");
        assert_eq!(m.synckey(), 3);
    }

    /// A SendAck with the sender's own entry (`LoginReq.echo_in_ack`): the entry is
    /// applied like a notify's, in seq order with the notifies, and the ack goes on to
    /// the send waiting for it.
    #[test]
    fn a_send_ack_with_its_entry_is_applied_in_order() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        let ack = |id: u32, seq: u64| {
            let body = v1::SendAck {
                msg_id: 100 + seq,
                seq,
                time_ms: 1,
                entry: Some(entry(seq)),
            };
            Frame::new(cmd::response(cmd::SEND), id, body.encode_to_vec())
        };
        let f = m.on_frame(ack(7, 1), Instant::now()).unwrap();
        assert_eq!(f.map(|f| f.req_id), Some(7), "the ack goes on");
        assert_eq!(applied(&mut m), [1]);
        // Ahead of a notify still on its way: held, then applied after it.
        assert!(m.on_frame(ack(8, 3), Instant::now()).unwrap().is_some());
        assert!(applied(&mut m).is_empty());
        feed(&mut m, notify(2));
        assert_eq!(applied(&mut m), [2, 3]);
        // An ack without an entry (an older server, a duplicate) changes nothing.
        let plain = v1::SendAck {
            msg_id: 9,
            seq: 4,
            time_ms: 1,
            entry: None,
        };
        let f = Frame::new(cmd::response(cmd::SEND), 9, plain.encode_to_vec());
        assert!(m.on_frame(f, Instant::now()).unwrap().is_some());
        assert!(applied(&mut m).is_empty());
        assert_eq!(m.synckey(), 3);
        assert!(sent(&mut m).is_empty(), "no SYNC was needed");
    }

    #[test]
    fn a_notify_without_its_entry_inline_syncs_at_once() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        let body = v1::Notify {
            latest_seq: 4,
            entries: Vec::new(),
        };
        feed(&mut m, Frame::new(cmd::NOTIFY, 0, body.encode_to_vec()));
        assert_eq!(one_sync(&mut m).1, 0);
    }

    #[test]
    fn a_full_hold_syncs_without_waiting() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        // Seq 1 never comes inline; 2..=65 fill the hold.
        for seq in 2..=65 {
            feed(&mut m, notify(seq));
        }
        assert_eq!(one_sync(&mut m).1, 0);
        assert!(applied(&mut m).is_empty());
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut m = SyncMachine::new(5, BTreeMap::new());
        feed(&mut m, notify(4));
        feed(&mut m, notify(5));
        assert!(applied(&mut m).is_empty() && !m.take_changed());
        m.logged_in(8);
        let frames = sent(&mut m);
        assert_eq!(frames.len(), 2, "GROUP_LIST and SYNC");
        let id = frames[1].req_id;
        // A notify of 6 arrives while the sync is in flight, then the answer repeats it.
        feed(&mut m, notify(6));
        feed(&mut m, sync_answer(id, &[5, 6, 7, 8], 8, 8, false));
        assert_eq!(applied(&mut m), [6, 7, 8], "each once");
    }

    #[test]
    fn a_more_page_continues_from_the_new_synckey() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        m.logged_in(5);
        let id = sent(&mut m)[1].req_id;
        feed(&mut m, sync_answer(id, &[1, 2], 2, 5, true));
        assert_eq!(applied(&mut m), [1, 2]);
        let (id, synckey) = one_sync(&mut m);
        assert_eq!(synckey, 2);
        feed(&mut m, sync_answer(id, &[3, 4, 5], 5, 5, false));
        assert_eq!(applied(&mut m), [3, 4, 5]);
        assert!(sent(&mut m).is_empty(), "caught up");
    }

    #[test]
    fn a_notify_during_a_sync_syncs_again_after_it() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        feed(
            &mut m,
            Frame::new(
                cmd::NOTIFY,
                0,
                v1::Notify {
                    latest_seq: 2,
                    entries: vec![],
                }
                .encode_to_vec(),
            ),
        );
        let (id, _) = one_sync(&mut m);
        feed(
            &mut m,
            Frame::new(
                cmd::NOTIFY,
                0,
                v1::Notify {
                    latest_seq: 3,
                    entries: vec![],
                }
                .encode_to_vec(),
            ),
        );
        assert!(sent(&mut m).is_empty(), "one SYNC in flight at a time");
        // The answer was cut before 3 and does not know of it: the notify says sync again.
        feed(&mut m, sync_answer(id, &[1, 2], 2, 2, false));
        assert_eq!(one_sync(&mut m).1, 2);
    }

    #[test]
    fn pruned_entries_move_the_synckey_past_them() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        m.logged_in(12);
        let id = sent(&mut m)[1].req_id;
        // Entries 1..=9 were pruned: the answer starts at 10 and says synckey 12.
        feed(&mut m, sync_answer(id, &[10, 11], 12, 12, false));
        assert_eq!(applied(&mut m), [10, 11]);
        assert_eq!(m.synckey(), 12);
    }

    #[test]
    fn a_refused_sync_ends_the_link() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        m.logged_in(1);
        let id = sent(&mut m)[1].req_id;
        let e = v1::Error {
            message: "busy".into(),
            ..Default::default()
        };
        let r = m.on_frame(
            Frame::new(cmd::ERROR, id, e.encode_to_vec()),
            Instant::now(),
        );
        assert_eq!(r, Err(SyncError("sync refused: busy".into())));
    }

    #[test]
    fn other_frames_are_handed_back() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        let f = Frame::new(cmd::response(cmd::SEND), 7, Vec::new());
        assert_eq!(m.on_frame(f.clone(), Instant::now()), Ok(Some(f)));
    }

    #[test]
    fn without_room_the_synckey_stops_at_what_the_app_got_and_resume_syncs() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        m.set_room(2);
        for seq in 1..=4 {
            feed(&mut m, notify(seq));
        }
        assert_eq!(applied(&mut m), [1, 2]);
        assert!(m.stalled());
        assert_eq!(m.synckey(), 2, "3 and 4 were not handed over");
        assert!(sent(&mut m).is_empty(), "no SYNC while the app is full");
        // The app drained: sync from what it has.
        m.set_room(100);
        m.resume();
        let (id, synckey) = one_sync(&mut m);
        assert_eq!(synckey, 2);
        feed(&mut m, sync_answer(id, &[3, 4], 4, 4, false));
        assert_eq!(applied(&mut m), [3, 4]);
        assert!(!m.stalled());
    }

    #[test]
    fn a_sync_answer_cut_by_a_stall_keeps_its_synckey_and_does_not_chain() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        m.logged_in(10);
        let id = sent(&mut m)[1].req_id;
        m.set_room(3);
        feed(&mut m, sync_answer(id, &[4, 5, 6, 7, 8], 10, 10, true));
        assert_eq!(applied(&mut m), [4, 5, 6]);
        assert_eq!(
            m.synckey(),
            6,
            "not the answer's 10: 7 and 8 never reached the app"
        );
        assert!(sent(&mut m).is_empty(), "`more` waits for room");
        m.set_room(10);
        m.resume();
        assert_eq!(one_sync(&mut m).1, 6);
    }

    #[test]
    fn typing_without_room_is_dropped_and_does_not_stall() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        m.set_room(0);
        let t = v1::Typing { to: "ann".into() };
        feed(&mut m, Frame::new(cmd::TYPING_PUSH, 0, t.encode_to_vec()));
        assert_eq!(m.take_events().count(), 0);
        assert!(!m.stalled());
        m.set_room(1);
        feed(&mut m, Frame::new(cmd::TYPING_PUSH, 0, t.encode_to_vec()));
        assert_eq!(
            m.take_events().collect::<Vec<_>>(),
            [Event::Typing { from: "ann".into() }]
        );
    }

    fn group_entry(gseq: u64) -> v1::GroupEntry {
        v1::GroupEntry {
            gseq,
            ..Default::default()
        }
    }

    fn group_gseqs(m: &mut SyncMachine) -> Vec<(u64, u64)> {
        m.take_events()
            .filter_map(|ev| match ev {
                Event::Group { group_id, entry } => Some((group_id, entry.gseq)),
                _ => None,
            })
            .collect()
    }

    fn group_notify(group_id: u64, gseqs: &[u64], latest: u64) -> Frame {
        let n = v1::GroupNotify {
            group_id,
            latest_gseq: latest,
            entries: gseqs.iter().map(|&g| group_entry(g)).collect(),
        };
        Frame::new(cmd::GROUP_NOTIFY, 0, n.encode_to_vec())
    }

    fn one_group_sync(m: &mut SyncMachine) -> (u32, v1::GroupSyncReq) {
        let frames = sent(m);
        assert_eq!(frames.len(), 1, "one frame: {frames:?}");
        let f = frames.into_iter().next().unwrap();
        assert_eq!(f.cmd, cmd::GROUP_SYNC);
        (f.req_id, v1::GroupSyncReq::decode(f.body).unwrap())
    }

    fn group_answer(id: u32, gseqs: &[u64], cursor: u64, latest: u64, more: bool) -> Frame {
        let r = v1::GroupSyncResp {
            group_id: 0,
            entries: gseqs.iter().map(|&g| group_entry(g)).collect(),
            cursor,
            latest_gseq: latest,
            more,
        };
        Frame::new(cmd::response(cmd::GROUP_SYNC), id, r.encode_to_vec())
    }

    #[test]
    fn group_notifies_continue_the_cursor_or_sync_the_group() {
        let mut m = SyncMachine::new(0, BTreeMap::from([(9, 3)]));
        feed(&mut m, group_notify(9, &[4, 5], 5));
        assert_eq!(group_gseqs(&mut m), [(9, 4), (9, 5)]);
        assert!(sent(&mut m).is_empty());
        // A gap (6 missing): sync the group from its cursor, in pages.
        feed(&mut m, group_notify(9, &[7], 7));
        let (id, req) = one_group_sync(&mut m);
        assert_eq!((req.group_id, req.after), (9, 5));
        // A notify while that sync is in flight is left to it.
        feed(&mut m, group_notify(9, &[6], 6));
        assert!(group_gseqs(&mut m).is_empty() && sent(&mut m).is_empty());
        feed(&mut m, group_answer(id, &[6], 6, 7, true));
        assert_eq!(group_gseqs(&mut m), [(9, 6)]);
        let (id, req) = one_group_sync(&mut m);
        assert_eq!(req.after, 6);
        feed(&mut m, group_answer(id, &[6, 7], 7, 7, false));
        assert_eq!(group_gseqs(&mut m), [(9, 7)], "6 once");
        assert!(sent(&mut m).is_empty());
        assert_eq!(m.group_cursors()[&9], 7);
    }

    #[test]
    fn joining_a_group_fetches_its_log_and_a_refusal_forgets_it() {
        let mut m = SyncMachine::new(0, BTreeMap::new());
        let joined = v1::Entry {
            seq: 1,
            kind: Some(v1::entry::Kind::Group(v1::GroupEvent {
                group_id: 4,
                kind: v1::group_event::Kind::Joined as i32,
                ..Default::default()
            })),
            ..Default::default()
        };
        let n = v1::Notify {
            latest_seq: 1,
            entries: vec![joined],
        };
        feed(&mut m, Frame::new(cmd::NOTIFY, 0, n.encode_to_vec()));
        let (id, req) = one_group_sync(&mut m);
        assert_eq!((req.group_id, req.after), (4, 0));
        feed(&mut m, group_answer(id, &[1, 2], 2, 2, false));
        assert_eq!(group_gseqs(&mut m), [(4, 1), (4, 2)]);
        // Removed from the group: its next sync is refused, and the cursor goes.
        feed(&mut m, group_notify(4, &[], 3));
        let (id, _) = one_group_sync(&mut m);
        feed(&mut m, Frame::new(cmd::ERROR, id, Vec::new()));
        assert!(m.group_cursors().get(&4).is_none());
    }

    #[test]
    fn a_stalled_group_is_synced_at_resume() {
        let mut m = SyncMachine::new(0, BTreeMap::from([(9, 1)]));
        m.set_room(1);
        feed(&mut m, group_notify(9, &[2, 3], 3));
        assert_eq!(group_gseqs(&mut m), [(9, 2)]);
        assert!(m.stalled());
        assert_eq!(m.group_cursors()[&9], 2);
        m.set_room(10);
        m.resume();
        let (_, req) = one_group_sync(&mut m);
        assert_eq!((req.group_id, req.after), (9, 2));
    }
}
