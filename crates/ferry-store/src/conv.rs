//! The conversation contract: one user's state of each conversation (archived, marked
//! unread, muted, a draft, history cleared), a conversation's own message retention,
//! and pruning a conversation's messages past it. Each change a user's devices must
//! learn is logged in the same transaction as the change: an `Entry.conv` carrying the
//! whole state after it, in the user's inbox (both 1:1 parties' for a 1:1 retention), or
//! a `GroupEntry.retention` in the group's log.
//!
//! Mute is not kept here: it is the push settings' `PUSH_MODE_MUTED` row
//! ([`crate::PushStore`]'s `push_prefs` table), read and written through this contract
//! too, so that the two views of one setting never disagree.
//!
//! The store keeps what it is given; who may do what is the logic layer's decision.

use async_trait::async_trait;
use ferry_proto::v1;

use crate::{Logged, NewEvent, Result};

/// A conversation as one user names it: a 1:1 peer (`group_id` 0) or a group (`peer`
/// 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConvKey {
    pub peer: u64,
    pub group_id: u64,
}

impl ConvKey {
    pub fn direct(peer: u64) -> ConvKey {
        ConvKey { peer, group_id: 0 }
    }
    pub fn group(group_id: u64) -> ConvKey {
        ConvKey { peer: 0, group_id }
    }
}

/// A conversation as everyone in it shares it, for its retention: a 1:1 pair (lower id
/// first) or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SharedConv {
    Direct(u64, u64),
    Group(u64),
}

impl SharedConv {
    /// The 1:1 conversation of `a` and `b`, either order.
    pub fn direct(a: u64, b: u64) -> SharedConv {
        SharedConv::Direct(a.min(b), a.max(b))
    }
}

/// One user's state of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConvRow {
    pub key: ConvKey,
    pub archived: bool,
    pub unread: bool,
    /// 0 not muted, -1 until unmuted, else until then (unix ms). From `push_prefs`.
    pub muted_until_ms: i64,
    pub draft: String,
    pub draft_ms: i64,
    /// Messages of the conversation with an id at or below it are cleared for the user.
    pub cleared_before_msg_id: u64,
    /// The conversation's own retention (0: none). From the shared conversation.
    pub retention_secs: u32,
    pub updated_ms: i64,
}

impl ConvRow {
    /// The state as devices see it; `peer` is the peer's name (the store knows ids).
    pub fn to_proto(&self, peer: &str) -> v1::ConvState {
        v1::ConvState {
            peer: peer.to_owned(),
            group_id: self.key.group_id,
            archived: self.archived,
            unread: self.unread,
            muted_until_ms: self.muted_until_ms,
            draft: self.draft.clone(),
            draft_ms: self.draft_ms,
            cleared_before_msg_id: self.cleared_before_msg_id,
            retention_secs: self.retention_secs,
            updated_ms: self.updated_ms,
        }
    }

    /// Same state, whatever the time of the last change.
    fn same(&self, other: &ConvRow) -> bool {
        ConvRow {
            updated_ms: 0,
            ..self.clone()
        } == ConvRow {
            updated_ms: 0,
            ..other.clone()
        }
    }
}

/// A change of one user's state of one conversation: only the fields given change.
#[derive(Debug, Clone, Default)]
pub struct ConvChange {
    pub user_id: u64,
    pub key: ConvKey,
    pub archived: Option<bool>,
    pub unread: Option<bool>,
    /// 0 unmutes (a MUTED push setting goes; another mode stays), -1 mutes until
    /// unmuted, else until then.
    pub muted_until_ms: Option<i64>,
    /// The new draft ("" removes it); taken unless a later one is stored already.
    pub draft: Option<String>,
    /// Sets `cleared_before_msg_id` to the conversation's newest message now.
    pub clear: bool,
    /// Server time of the change (the draft's time too).
    pub time_ms: i64,
    /// Log the entry even when this change changes nothing: the state was changed
    /// elsewhere (push/prefs' mute) and the devices must learn it.
    pub log_anyway: bool,
    /// The entry logged in the user's inbox when anything changed; its `ConvState` is
    /// filled with the state after the change (the store fills every field but `peer`).
    pub entry: v1::Entry,
}

/// What [`ConvStore::set_conv`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ConvDone {
    /// Nothing changed (the values were so already): nothing logged.
    Unchanged(ConvRow),
    /// Changed and logged at `seq` of the user's inbox, as `entry` (boxed: an entry is
    /// several times a row's size).
    Changed {
        row: ConvRow,
        seq: u64,
        entry: Box<v1::Entry>,
    },
}

/// A conversation's retention set or removed (0).
#[derive(Debug, Clone)]
pub struct RetentionChange {
    pub conv: SharedConv,
    pub retention_secs: u32,
    pub by_user_id: u64,
    pub time_ms: i64,
    /// A group's: the `GroupEntry.retention` to log.
    pub group: Option<(u64, v1::GroupEntry)>,
    /// A 1:1's: each party's `Entry.conv` (with `peer` set as that party sees it), filled
    /// by the store with that party's whole state after the change, as in
    /// [`ConvChange::entry`]. `NewEvent::user_id` is the party; the key is its view.
    pub inbox: Vec<(ConvKey, NewEvent)>,
}

/// What a conversation's pruning removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub messages: u64,
    /// Media ids (and thumbnails) the removed messages referred to: candidates for
    /// deletion once no other message refers to them ([`ConvStore::media_referenced`]).
    pub media: Vec<String>,
}

/// Per-user conversation state, conversation retention, and pruning by it.
#[async_trait]
pub trait ConvStore: Send + Sync + 'static {
    /// Applies a change and, when anything changed, logs the entry in the user's inbox.
    async fn set_conv(&self, change: ConvChange) -> Result<ConvDone>;
    /// One user's state of one conversation (all defaults when it has none).
    async fn conv_state(&self, user_id: u64, key: ConvKey, now_ms: i64) -> Result<ConvRow>;
    /// Every conversation the user has a state for, a live mute, or whose retention
    /// applies to them (a 1:1 they are a party of, a group they are a member of), in
    /// key order.
    async fn conv_states(&self, user_id: u64, now_ms: i64) -> Result<Vec<ConvRow>>;
    /// The conversations whose history the user cleared, with the msg_id at or below
    /// which their messages are gone for the user.
    async fn cleared(&self, user_id: u64) -> Result<Vec<(ConvKey, u64)>>;

    /// Sets (or removes, at 0) a conversation's retention and logs it. `None`: it was so
    /// already (nothing written).
    async fn set_retention(
        &self,
        change: RetentionChange,
    ) -> Result<Option<(Logged, Vec<NewEvent>)>>;
    /// Every conversation with a retention of its own.
    async fn retentions(&self) -> Result<Vec<(SharedConv, u32)>>;
    /// Deletes the conversation's messages stored before `before_ms` — from the inboxes
    /// and the messages (a group's log keeps their places, without content, as after
    /// the server-wide prune) — with their edits' history, reactions, pins, hides and
    /// reply records.
    async fn prune_conversation(&self, conv: SharedConv, before_ms: i64) -> Result<Pruned>;
    /// Whether any stored message (created at or after `since_ms`) still refers to the
    /// media `media_id`. A scan of those messages: for the retention task, not a request.
    async fn media_referenced(&self, media_id: &str, since_ms: i64) -> Result<bool>;
}

/// A stored `push_prefs` row's mode and end as a mute (`ConvRow::muted_until_ms`).
pub(crate) fn mute_of(mode: Option<(u8, i64)>, now_ms: i64) -> i64 {
    const MUTED: u8 = v1::PushMode::Muted as u8;
    match mode {
        Some((MUTED, 0)) => -1,
        Some((MUTED, until)) if until > now_ms => until,
        _ => 0,
    }
}

/// Applies `ch` to `row` (the state before); `newest` is the conversation's newest
/// message id (asked for only when clearing). Returns the state after.
pub(crate) fn apply(mut row: ConvRow, ch: &ConvChange, newest: u64) -> ConvRow {
    let before = row.clone();
    if let Some(a) = ch.archived {
        row.archived = a;
    }
    if let Some(u) = ch.unread {
        row.unread = u;
    }
    if let Some(m) = ch.muted_until_ms {
        row.muted_until_ms = m;
    }
    if let Some(d) = &ch.draft {
        if ch.time_ms >= row.draft_ms && *d != row.draft {
            row.draft = d.clone();
            row.draft_ms = if d.is_empty() { 0 } else { ch.time_ms };
        }
    }
    if ch.clear && newest > row.cleared_before_msg_id {
        row.cleared_before_msg_id = newest;
    }
    if !row.same(&before) {
        row.updated_ms = ch.time_ms;
    }
    row
}

/// `row` differs from `before` in anything but the time.
pub(crate) fn changed(before: &ConvRow, after: &ConvRow) -> bool {
    !before.same(after)
}

/// Fills the `ConvState` of an entry with `row` (keeping the entry's `peer`).
pub(crate) fn fill(entry: &mut v1::Entry, row: &ConvRow) {
    if let Some(v1::entry::Kind::Conv(c)) = &mut entry.kind {
        let peer = std::mem::take(&mut c.peer);
        *c = row.to_proto(&peer);
    }
}

/// The push setting a mute change writes: `Some(Some((mode, until)))` to put a MUTED
/// row, `Some(None)` to remove a MUTED one, `None` to leave the row alone.
pub(crate) fn mute_write(muted_until_ms: Option<i64>) -> Option<Option<(u8, i64)>> {
    const MUTED: u8 = v1::PushMode::Muted as u8;
    match muted_until_ms? {
        0 => Some(None),
        -1 => Some(Some((MUTED, 0))),
        t => Some(Some((MUTED, t))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_touches_only_what_it_names_and_a_draft_keeps_the_latest() {
        let row = ConvRow {
            archived: true,
            draft: "later".into(),
            draft_ms: 200,
            ..Default::default()
        };
        let ch = ConvChange {
            unread: Some(true),
            draft: Some("earlier".into()),
            time_ms: 100,
            ..Default::default()
        };
        let after = apply(row.clone(), &ch, 0);
        assert!(after.archived && after.unread);
        assert_eq!((after.draft.as_str(), after.draft_ms), ("later", 200));
        assert_eq!(after.updated_ms, 100);
        // Nothing to change: the same state, no new time.
        let again = apply(after.clone(), &ch, 0);
        assert!(!changed(&after, &again));
        // Clearing moves forward only.
        let clear = ConvChange {
            clear: true,
            time_ms: 300,
            ..Default::default()
        };
        assert_eq!(apply(after.clone(), &clear, 9).cleared_before_msg_id, 9);
        let cleared = apply(after, &clear, 9);
        assert!(!changed(&cleared, &apply(cleared.clone(), &clear, 4)));
    }

    #[test]
    fn mutes_map_to_push_settings() {
        assert_eq!(mute_of(Some((1, 0)), 5), -1);
        assert_eq!(mute_of(Some((1, 10)), 5), 10);
        assert_eq!(mute_of(Some((1, 4)), 5), 0);
        assert_eq!(mute_of(Some((2, 0)), 5), 0);
        assert_eq!(mute_of(None, 5), 0);
        assert_eq!(mute_write(None), None);
        assert_eq!(mute_write(Some(0)), Some(None));
        assert_eq!(mute_write(Some(-1)), Some(Some((1, 0))));
        assert_eq!(mute_write(Some(99)), Some(Some((1, 99))));
    }
}
