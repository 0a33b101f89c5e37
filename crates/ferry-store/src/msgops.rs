//! The message operations contract: edits (the text replaced, the history kept),
//! reactions, delete-for-me (hidden messages), pins, and the replies quoting a message
//! (so a recall can empty their quotes). Each change that devices must learn is logged
//! in the same transaction as the change: in a group's log (`group`) and/or in inboxes
//! (`inbox`), like [`InboxStore::recall_message`](crate::InboxStore::recall_message).
//!
//! The store keeps what it is given; who may do what is the logic layer's decision.

use async_trait::async_trait;
use ferry_proto::v1;

use crate::{NewEvent, Result};

/// Where a change was logged: its gseq in the group's log (when given one) and its seqs
/// in the inboxes given, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Logged {
    pub gseq: Option<u64>,
    pub seqs: Vec<u64>,
}

/// An edit of a message's text.
#[derive(Debug, Clone)]
pub struct MessageEdit {
    pub msg_id: u64,
    pub text: String,
    pub edited_ms: i64,
    /// The group whose log gets the `Edit` entry.
    pub group: Option<(u64, v1::GroupEntry)>,
    /// The inbox entries (the 1:1 parties').
    pub inbox: Vec<NewEvent>,
}

/// A reaction added or taken back. The store sets `count` of every `Reaction` entry it
/// logs to the emoji's count after the change.
#[derive(Debug, Clone)]
pub struct ReactionChange {
    pub msg_id: u64,
    pub user_id: u64,
    pub emoji: String,
    pub add: bool,
    pub time_ms: i64,
    /// The most distinct emojis one user may hold on one message.
    pub max_per_user: u32,
    pub group: Option<(u64, v1::GroupEntry)>,
    pub inbox: Vec<NewEvent>,
}

/// What [`MsgOpsStore::react`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reacted {
    /// Changed and logged; `count` is the emoji's count on the message now.
    Changed { count: u32, logged: Logged },
    /// Already so (added twice, or taken back when not there): nothing written.
    Unchanged { count: u32 },
    /// The user already holds `max_per_user` other emojis on the message.
    TooMany,
}

/// One emoji's reactions on a message, for one viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u32,
    /// The viewer holds it.
    pub mine: bool,
}

/// A pin or unpin of a message in a conversation (`conv`: a key the logic layer
/// chooses, one per 1:1 pair or group).
#[derive(Debug, Clone)]
pub struct PinChange {
    pub conv: String,
    pub msg_id: u64,
    pub by_user_id: u64,
    pub pin: bool,
    pub time_ms: i64,
    /// The most pins a conversation holds.
    pub max_pins: u32,
    pub group: Option<(u64, v1::GroupEntry)>,
    pub inbox: Vec<NewEvent>,
}

/// What [`MsgOpsStore::pin_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    Changed(Logged),
    /// Already pinned (or not pinned, for an unpin): nothing written.
    Unchanged,
    /// The conversation already holds `max_pins` pins.
    TooMany,
}

/// A pinned message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRow {
    pub msg_id: u64,
    pub by_user_id: u64,
    pub time_ms: i64,
}

/// Edits, reactions, hidden messages, pins and replies.
#[async_trait]
pub trait MsgOpsStore: Send + Sync + 'static {
    /// Records that the message `(sender_id, client_msg_id)` — stored next, or already —
    /// quotes `quoted_id`, so that recalling `quoted_id` empties its quote. Written
    /// before the reply itself (idempotent), so no reply ever escapes the recall.
    async fn note_reply(&self, quoted_id: u64, sender_id: u64, client_msg_id: u64) -> Result<()>;
    /// Empties the quotes of `quoted_id` in every stored reply (`Quote.text` cleared,
    /// `Quote.recalled` set); returns how many replies changed.
    /// [`InboxStore::recall_message`](crate::InboxStore::recall_message) does it too, in
    /// its own transaction.
    async fn scrub_quotes(&self, quoted_id: u64) -> Result<u64>;

    /// Replaces a message's text, sets its `edited_ms`, keeps the text before in the
    /// history, and logs the edit. `Ok(None)`: the text was already that (nothing
    /// written). `NotFound`: no such message, or recalled.
    async fn edit_message(&self, edit: MessageEdit) -> Result<Option<Logged>>;
    /// A message's earlier texts with when each was replaced, oldest first.
    async fn message_edits(&self, msg_id: u64) -> Result<Vec<(String, i64)>>;

    /// Adds or takes back a reaction and logs it (unless nothing changed). `NotFound`:
    /// no such message, or recalled.
    async fn react(&self, change: ReactionChange) -> Result<Reacted>;
    /// The reactions on a message per emoji (most first, then by emoji), at most `max`,
    /// with whether `viewer` holds each.
    async fn reaction_counts(
        &self,
        msg_id: u64,
        viewer: u64,
        max: u32,
    ) -> Result<Vec<ReactionCount>>;
    /// Who reacted with `emoji` on a message: up to `limit` user ids above `after`, in
    /// id order, with when.
    async fn reactors(
        &self,
        msg_id: u64,
        emoji: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, i64)>>;

    /// Hides messages from `user_id` and logs, in their inbox, `entry` with its `Hide`
    /// listing the ones not hidden before. `None`: all were hidden already (nothing
    /// written); else the entry's seq and the ids newly hidden.
    async fn hide_messages(
        &self,
        user_id: u64,
        msg_ids: Vec<u64>,
        entry: v1::Entry,
    ) -> Result<Option<(u64, Vec<u64>)>>;
    /// Which of `msg_ids` `user_id` has hidden.
    async fn hidden_among(&self, user_id: u64, msg_ids: Vec<u64>) -> Result<Vec<u64>>;

    /// Pins or unpins a message in a conversation and logs it (unless nothing changed).
    async fn pin_message(&self, change: PinChange) -> Result<Pinned>;
    /// A conversation's pins, newest first.
    async fn pins(&self, conv: &str) -> Result<Vec<PinRow>>;
}

/// Sets `count` in a reaction entry (the store's part of [`ReactionChange`]).
pub(crate) fn count_inbox(entry: &mut v1::Entry, count: u32) {
    if let Some(v1::entry::Kind::Reaction(r)) = &mut entry.kind {
        r.count = count;
    }
}

/// Sets `count` in a group's reaction entry.
pub(crate) fn count_group(entry: &mut v1::GroupEntry, count: u32) {
    if let Some(v1::group_entry::Kind::Reaction(r)) = &mut entry.kind {
        r.count = count;
    }
}

/// A reply's body with its quote of a recalled message emptied; `None` when it has no
/// quote of `quoted_id` or it is emptied already.
pub(crate) fn scrubbed(mut body: v1::Message, quoted_id: u64) -> Option<v1::Message> {
    let q = body.quote.as_mut()?;
    if q.msg_id != quoted_id || (q.recalled && q.text.is_empty()) {
        return None;
    }
    q.text.clear();
    q.recalled = true;
    Some(body)
}

/// A message's body with its text edited; `None` when the text is already that.
pub(crate) fn edited(mut body: v1::Message, text: &str, edited_ms: i64) -> Option<v1::Message> {
    if body.text == text {
        return None;
    }
    body.text = text.to_owned();
    body.edited_ms = edited_ms;
    Some(body)
}
