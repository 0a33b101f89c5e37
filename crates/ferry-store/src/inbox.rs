//! The inbox contract: 1:1 messages and the other entries of a user's inbox, read back
//! by seq; the synckeys devices report; retention; recall.

use async_trait::async_trait;
use ferry_proto::v1;

use crate::Result;

/// A message to make durable.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender_id: u64,
    pub recipient_id: u64,
    /// Idempotency key: `(sender_id, client_msg_id)` is stored once.
    pub client_msg_id: u64,
    /// Store time, unix ms.
    pub time_ms: i64,
    /// The message as it will be delivered; `msg_id` is filled in by the store.
    pub message: v1::Message,
}

/// What [`InboxStore::append_messages`] answers: each message given, back, with what
/// became of it, in the order given.
pub type AppendedBatch = Vec<(NewMessage, Result<Appended>)>;

/// What [`InboxStore::append_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub msg_id: u64,
    /// Seq of the entry in the sender's inbox.
    pub sender_seq: u64,
    /// Seq of the entry in the recipient's inbox (equal to `sender_seq` for a message
    /// to oneself, which is stored once).
    pub recipient_seq: u64,
    pub time_ms: i64,
    /// True when `(sender, client_msg_id)` was already stored: nothing new was written
    /// and the fields above describe the original.
    pub duplicate: bool,
}

/// A page of a user's inbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboxPage {
    /// Entries after the requested seq, in seq order.
    pub entries: Vec<v1::Entry>,
    /// The newest seq in the inbox (0 when it is empty).
    pub latest_seq: u64,
    /// More entries follow the last one returned.
    pub more: bool,
}

/// An inbox entry other than a message (a friend event, a moment event …), appended to
/// one user's inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub user_id: u64,
    /// The entry's `kind` and `time_ms`; the store assigns `seq`.
    pub entry: v1::Entry,
}

/// A stored message, for recall and receipts.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageInfo {
    pub msg_id: u64,
    pub sender_id: u64,
    pub time_ms: i64,
    /// For a group message, its gseq in the group's log; for a 1:1 message, its seq in
    /// the recipient's inbox.
    pub seq: u64,
    /// `None` once recalled.
    pub body: Option<v1::Message>,
}

/// Users' inboxes: messages and events appended, pages read by seq, synckeys, pruning,
/// and the stored messages behind them (receipts, recall).
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Makes a message durable in both inboxes (idempotent on the sender and
    /// `client_msg_id`). Returns once the write is on disk.
    async fn append_message(&self, msg: NewMessage) -> Result<Appended>;
    /// Makes several messages durable **in the order given**: where two of them share a
    /// user, the earlier one gets the lower seq in that user's inbox. Each message stands
    /// alone (one refused — an unknown user — does not refuse the others), so the answer
    /// holds one result per message, in the same order, each with its message given back
    /// (the caller delivers it: a store that takes the messages to another thread hands
    /// them back instead of the caller keeping a copy of each; a store may have filled in
    /// `message.msg_id`). A store may write them in one transaction; this default writes
    /// them one after another.
    async fn append_messages(&self, msgs: Vec<NewMessage>) -> Result<AppendedBatch> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            let r = self.append_message(m.clone()).await;
            // A store that cannot write at all fails the batch: the caller retries it.
            if let Err(e @ crate::StoreError::Unavailable(_)) = r {
                return Err(e);
            }
            out.push((m, r));
        }
        Ok(out)
    }
    /// Appends non-message entries; returns their seqs, in order.
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<u64>>;

    /// Up to `limit` entries of `user_id`'s inbox with seq > `after`.
    async fn inbox(&self, user_id: u64, after: u64, limit: u32) -> Result<InboxPage>;
    /// The newest seq of `user_id`'s inbox.
    async fn latest_seq(&self, user_id: u64) -> Result<u64>;

    /// Records the synckey a device reported (what it has received).
    async fn set_synckey(&self, user_id: u64, device_id: &str, synckey: u64) -> Result<()>;
    /// The last synckey a device reported.
    async fn synckey(&self, user_id: u64, device_id: &str) -> Result<Option<u64>>;
    /// Writes synckeys a store keeps buffered (the PostgreSQL store writes them behind,
    /// at most once a second); for a node shutting down, and tests. Synckeys are only a
    /// record of what devices reported: delivery never reads them.
    async fn flush_synckeys(&self) -> Result<()> {
        Ok(())
    }

    /// Deletes inbox entries stored before `before_ms`; returns how many went. Never
    /// one stored at or after it. An old entry that follows (in seq) one stored at or
    /// after `before_ms` may stay until that one goes (the SQLite store walks each inbox
    /// from its oldest seq and stops at the first entry to keep; the times of concurrent
    /// writes cross by a few ms).
    async fn prune(&self, before_ms: i64) -> Result<u64>;

    async fn message_info(&self, msg_id: u64) -> Result<Option<MessageInfo>>;
    /// Deletes a message's content and logs the recall: in the group's log when
    /// `group` is given (returns its gseq), and in the inboxes of `inbox`.
    async fn recall_message(
        &self,
        msg_id: u64,
        group: Option<(u64, v1::GroupEntry)>,
        inbox: Vec<NewEvent>,
    ) -> Result<(Option<u64>, Vec<u64>)>;
}
