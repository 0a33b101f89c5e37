//! The records and enums the bindings see, and their conversions from ferry-client's and
//! the protocol's types. Plain data: what they mean is docs/protocol.md's.

use ferry_client::{Event as ClientEvent, SentMedia as ClientSentMedia};
use ferry_proto::v1;

use crate::error::FerryError;

/// The server's acknowledgement of a send: the message is durable.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SendAck {
    pub msg_id: u64,
    /// The message's seq in the sender's inbox (1:1), or its gseq in the group's log.
    pub seq: u64,
    pub time_ms: i64,
}

impl From<v1::SendAck> for SendAck {
    fn from(a: v1::SendAck) -> Self {
        SendAck {
            msg_id: a.msg_id,
            seq: a.seq,
            time_ms: a.time_ms,
        }
    }
}

/// What kind of media an upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MediaKind {
    Unspecified,
    Image,
    Voice,
    Video,
    File,
    Thumbnail,
}

impl From<i32> for MediaKind {
    fn from(k: i32) -> Self {
        match v1::MediaKind::try_from(k).unwrap_or(v1::MediaKind::Unspecified) {
            v1::MediaKind::Unspecified => MediaKind::Unspecified,
            v1::MediaKind::MediaImage => MediaKind::Image,
            v1::MediaKind::MediaVoice => MediaKind::Voice,
            v1::MediaKind::MediaVideo => MediaKind::Video,
            v1::MediaKind::MediaFile => MediaKind::File,
            v1::MediaKind::MediaThumbnail => MediaKind::Thumbnail,
        }
    }
}

/// The media a message refers to: download it with `Client.download(media_id)` (and
/// its thumbnail with `thumb_id`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MediaRef {
    pub media_id: String,
    pub kind: MediaKind,
    pub size: u64,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub duration_ms: u32,
    /// The thumbnail's media id (images, videos); empty when there is none.
    pub thumb_id: String,
    pub file_name: String,
}

impl From<v1::MediaRef> for MediaRef {
    fn from(m: v1::MediaRef) -> Self {
        MediaRef {
            media_id: m.media_id,
            kind: m.kind.into(),
            size: m.size,
            content_type: m.content_type,
            width: m.width,
            height: m.height,
            duration_ms: m.duration_ms,
            thumb_id: m.thumb_id,
            file_name: m.file_name,
        }
    }
}

/// A sent media message: the acknowledgement and the media it refers to.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SentMedia {
    pub ack: SendAck,
    pub media: MediaRef,
}

impl From<ClientSentMedia> for SentMedia {
    fn from(s: ClientSentMedia) -> Self {
        SentMedia {
            ack: s.ack.into(),
            media: s.media.into(),
        }
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Destination {
    User { username: String },
    Group { group_id: u64 },
}

impl From<Destination> for ferry_client::Dest {
    fn from(d: Destination) -> Self {
        match d {
            Destination::User { username } => ferry_client::Dest::User(username),
            Destination::Group { group_id } => ferry_client::Dest::Group(group_id),
        }
    }
}

/// A chat message, 1:1 or in a group.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatMessage {
    /// Its place in this user's inbox (1:1 messages), 0 for a group message.
    pub seq: u64,
    /// Its place in the group's log (group messages), 0 for a 1:1 message.
    pub gseq: u64,
    pub msg_id: u64,
    pub sender: String,
    /// The recipient of a 1:1 message (empty in a group).
    pub recipient: String,
    /// The group (0: a 1:1 message).
    pub group_id: u64,
    pub time_ms: i64,
    pub text: String,
    pub mentions: Vec<String>,
    pub media: Option<MediaRef>,
    /// The id the sender's SDK gave it (the same on every retry).
    pub client_msg_id: u64,
    /// Sent by this user (from this or another of their devices).
    pub outgoing: bool,
    /// For a reply (`Client.reply`): the message it answers, as it was when the reply
    /// was sent.
    pub quote: Option<Quote>,
    /// When the sender last edited the text, unix ms (0: never edited); `text` is then
    /// the edited text.
    pub edited_ms: i64,
    /// For a forward (`Client.forward`): who wrote the original and when.
    pub forwarded: Option<Forwarded>,
}

/// Where a forwarded message came from (docs/protocol.md §4b). A forward of a forward
/// names the first original.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Forwarded {
    /// Who wrote the original ("system" for a forwarded system message).
    pub sender: String,
    /// When the original was sent, unix ms.
    pub time_ms: i64,
}

impl From<v1::Forwarded> for Forwarded {
    fn from(f: v1::Forwarded) -> Self {
        Forwarded {
            sender: f.from,
            time_ms: f.time_ms,
        }
    }
}

/// One user's state of one conversation, shared by all their devices (docs/protocol.md
/// §4b, `ConvState`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConvState {
    /// The 1:1 chat with a user, or a group.
    pub conversation: Destination,
    /// Moved out of the chat list by the user.
    pub archived: bool,
    /// Marked unread by hand (reading the conversation clears it).
    pub unread: bool,
    /// 0 not muted; -1 muted until unmuted; else muted until then (unix ms).
    pub muted_until_ms: i64,
    /// The composer's unsent text ("" none) and when the server took it.
    pub draft: String,
    pub draft_ms: i64,
    /// The user cleared the history: every message of the conversation with an id at or
    /// below this is gone for them (drop it, also when a sync brings it later). 0: never.
    pub cleared_before_msg_id: u64,
    /// The conversation's own retention for everyone in it, seconds (0: the server's).
    pub retention_secs: u32,
    /// When the state last changed, unix ms.
    pub updated_ms: i64,
}

impl From<v1::ConvState> for ConvState {
    fn from(c: v1::ConvState) -> Self {
        ConvState {
            conversation: match c.group_id {
                0 => Destination::User { username: c.peer },
                g => Destination::Group { group_id: g },
            },
            archived: c.archived,
            unread: c.unread,
            muted_until_ms: c.muted_until_ms,
            draft: c.draft,
            draft_ms: c.draft_ms,
            cleared_before_msg_id: c.cleared_before_msg_id,
            retention_secs: c.retention_secs,
            updated_ms: c.updated_ms,
        }
    }
}

/// A change of one conversation's state for `Client.conv_set`: only the fields given
/// change (`None`: left alone; `Some(false)`, `Some(0)` or `Some("")` is a change).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConvChange {
    pub conversation: Destination,
    #[uniffi(default = None)]
    pub archived: Option<bool>,
    #[uniffi(default = None)]
    pub unread: Option<bool>,
    /// 0 unmutes; -1 mutes until unmuted; a future unix ms mutes until then.
    #[uniffi(default = None)]
    pub muted_until_ms: Option<i64>,
    /// The new draft; "" removes it (at most 4 000 characters).
    #[uniffi(default = None)]
    pub draft: Option<String>,
    /// Clear the history for this user, up to the conversation's newest message now.
    #[uniffi(default = false)]
    pub clear: bool,
    /// The conversation's retention in seconds, for everyone in it (0 removes it; else at
    /// least 60; in a group its owner and admins only).
    #[uniffi(default = None)]
    pub retention_secs: Option<u32>,
}

impl ConvChange {
    /// The request's `ConvSet`, or the caller's mistake as `InvalidArgument`.
    pub(crate) fn request(self) -> Result<v1::ConvSet, FerryError> {
        let (peer, group_id) = match conversation(self.conversation)? {
            ferry_client::Conversation::Peer(p) => (p, 0),
            ferry_client::Conversation::Group(g) => (String::new(), g),
        };
        Ok(v1::ConvSet {
            peer,
            group_id,
            archived: self.archived,
            unread: self.unread,
            muted_until_ms: self.muted_until_ms,
            draft: self.draft,
            clear: self.clear,
            retention_secs: self.retention_secs,
        })
    }
}

/// The message a reply answers, as the reply quotes it (docs/protocol.md §4a).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Quote {
    pub msg_id: u64,
    /// Who sent the quoted message.
    pub sender: String,
    /// Its text when the reply was sent, at most 200 characters; empty once the quoted
    /// message was recalled (`recalled`).
    pub text: String,
    /// `Unspecified` for a text; else the kind of media it carried.
    pub kind: MediaKind,
    /// The quoted message was recalled: its snippet is gone. A device holding the reply
    /// when a `Recall` of the quoted message arrives empties the snippet itself.
    pub recalled: bool,
}

impl From<v1::Quote> for Quote {
    fn from(q: v1::Quote) -> Self {
        Quote {
            msg_id: q.msg_id,
            sender: q.from,
            text: q.text,
            kind: q.kind.into(),
            recalled: q.recalled,
        }
    }
}

pub(crate) fn message(m: v1::Message, seq: u64, gseq: u64, me: &str) -> ChatMessage {
    ChatMessage {
        seq,
        gseq,
        outgoing: m.from == me,
        msg_id: m.msg_id,
        sender: m.from,
        recipient: m.to,
        group_id: m.group_id,
        time_ms: m.time_ms,
        text: m.text,
        mentions: m.mentions,
        media: m.media.map(|r| (*r).into()),
        client_msg_id: m.client_msg_id,
        quote: m.quote.map(|q| (*q).into()),
        edited_ms: m.edited_ms,
        forwarded: m.forwarded.map(|f| (*f).into()),
    }
}

/// A change in this user's friendships (`peer` is always the other user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum FriendEventKind {
    RequestReceived,
    RequestSent,
    Added,
    Declined,
    Removed,
    Blocked,
    Unblocked,
}

impl From<v1::friend_event::Kind> for FriendEventKind {
    fn from(k: v1::friend_event::Kind) -> Self {
        use v1::friend_event::Kind as K;
        match k {
            K::RequestReceived => FriendEventKind::RequestReceived,
            K::RequestSent => FriendEventKind::RequestSent,
            K::Added => FriendEventKind::Added,
            K::Declined => FriendEventKind::Declined,
            K::Removed => FriendEventKind::Removed,
            K::Blocked => FriendEventKind::Blocked,
            K::Unblocked => FriendEventKind::Unblocked,
        }
    }
}

/// A change to a group (or to this user's membership of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum GroupEventKind {
    Created,
    Joined,
    Left,
    Removed,
    Renamed,
    Announced,
    RoleChanged,
}

impl From<v1::group_event::Kind> for GroupEventKind {
    fn from(k: v1::group_event::Kind) -> Self {
        use v1::group_event::Kind as K;
        match k {
            K::Created => GroupEventKind::Created,
            K::Joined => GroupEventKind::Joined,
            K::Left => GroupEventKind::Left,
            // A dissolved group removed every member: to the app, this user was removed.
            K::Removed | K::Dissolved => GroupEventKind::Removed,
            K::Renamed => GroupEventKind::Renamed,
            K::Announced => GroupEventKind::Announced,
            K::RoleChanged => GroupEventKind::RoleChanged,
        }
    }
}

/// Activity on a moment of this user's circle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MomentEventKind {
    Posted,
    Liked,
    Commented,
}

impl From<v1::moment_event::Kind> for MomentEventKind {
    fn from(k: v1::moment_event::Kind) -> Self {
        use v1::moment_event::Kind as K;
        match k {
            K::Posted => MomentEventKind::Posted,
            K::Liked => MomentEventKind::Liked,
            K::Commented => MomentEventKind::Commented,
        }
    }
}

/// How the long link is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Transport {
    /// Frames over TCP.
    Tcp,
    /// Frames over HTTP long-poll (where TCP does not pass).
    Http,
}

/// What the SDK tells the app, in order. Inbox entries (`seq` > 0) come each once and in
/// seq order; a group's entries (`gseq` > 0) each once and in gseq order per group.
// The `Message` variant is the large one (a `ChatMessage` with its quote). Boxing it would
// save nothing: an event crosses to the foreign language serialized, one at a time, and
// a UniFFI enum's field cannot be a `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A 1:1 message (`message.seq`) or a group message (`message.gseq`).
    Message { message: ChatMessage },
    /// A message was recalled: remove it (`group_id` 0: a 1:1 message).
    Recall {
        seq: u64,
        gseq: u64,
        group_id: u64,
        msg_id: u64,
        by: String,
    },
    /// `reader` read this user's 1:1 messages up to `msg_id`.
    Receipt {
        seq: u64,
        reader: String,
        msg_id: u64,
    },
    /// `from` is typing to this user (never stored; may be missed).
    Typing { sender: String },
    /// A friend request, acceptance, removal …
    FriendChanged {
        seq: u64,
        kind: FriendEventKind,
        peer: String,
        greeting: String,
        time_ms: i64,
    },
    /// A group changed: from the inbox (`seq`, this user's membership) or from the
    /// group's log (`gseq`).
    GroupChanged {
        seq: u64,
        gseq: u64,
        group_id: u64,
        kind: GroupEventKind,
        users: Vec<String>,
        by: String,
        text: String,
        time_ms: i64,
    },
    /// A moment was posted, liked or commented on.
    MomentChanged {
        seq: u64,
        kind: MomentEventKind,
        moment_id: u64,
        by: String,
        text: String,
        time_ms: i64,
    },
    /// Logged in on a (new) link at `endpoint` (`IP:PORT`); the server's inbox is at
    /// `latest_seq`.
    Connected {
        latest_seq: u64,
        endpoint: String,
        transport: Transport,
    },
    /// The link went down; the SDK is reconnecting on its own.
    Disconnected { reason: String },
    /// The SDK gave up (bad credentials, logged out elsewhere): sign in again.
    Stopped { error: FerryError },
    /// A message's text was edited by its sender (1:1 from the inbox, `seq`; a group's
    /// from its log, `gseq` and `group_id`): replace the text with `text` and mark the
    /// message edited at `edited_ms`. Absolute: applying it twice is harmless.
    Edit {
        seq: u64,
        gseq: u64,
        group_id: u64,
        msg_id: u64,
        text: String,
        edited_ms: i64,
        by: String,
    },
    /// `by` added (`added`) or took back a reaction: set the message's count of `emoji`
    /// to `count` (0: the emoji is gone). Absolute, like every operation entry.
    Reaction {
        seq: u64,
        gseq: u64,
        group_id: u64,
        msg_id: u64,
        emoji: String,
        by: String,
        added: bool,
        count: u32,
    },
    /// This user deleted messages for themselves (from this or another of their
    /// devices): drop them, and keep the ids so that a copy arriving later (a group's log
    /// synced after the inbox) stays out. Only this user's devices get it.
    Hide { seq: u64, msg_ids: Vec<u64> },
    /// A message was pinned (`pinned`) or unpinned in `conversation` (the 1:1 chat with
    /// the peer, or the group) by `by`.
    Pin {
        seq: u64,
        gseq: u64,
        conversation: Destination,
        msg_id: u64,
        by: String,
        pinned: bool,
    },
    /// This user's state of a conversation changed (from any device of theirs, or a 1:1
    /// retention the peer set): `state` is its whole state after the change. Replace what
    /// is kept for that conversation with it, and drop its messages with an id at or
    /// below `state.cleared_before_msg_id` (also ones a sync brings later). Only this
    /// user's devices get it. Applying it twice is harmless.
    Conv { seq: u64, state: ConvState },
    /// A group's owner or an admin (`by`) set the group's retention for every member
    /// (`retention_secs`, 0: the server's only): set it in the state of that group.
    Retention {
        gseq: u64,
        group_id: u64,
        retention_secs: u32,
        by: String,
    },
    /// A place in a group's log without content for this user: a message (or its edit,
    /// reaction or pin) from before they cleared the group's history, or a message the
    /// retention removed. Nothing to show; the group's cursor moves past it. (An entry of
    /// a kind this SDK version does not know, from a newer server, comes the same way.)
    NoContent { gseq: u64, group_id: u64 },
    /// An inbox entry of a kind this SDK version does not know (a newer server): skip it.
    Unknown { seq: u64, gseq: u64 },
}

impl Event {
    /// The binding's event for one of ferry-client's; `me` is this user's name.
    pub(crate) fn from_client(e: ClientEvent, me: &str) -> Event {
        match e {
            ClientEvent::Entry(entry) => inbox_entry(entry, me),
            ClientEvent::Group { group_id, entry } => group_entry(group_id, entry, me),
            ClientEvent::Typing { from } => Event::Typing { sender: from },
            ClientEvent::Connected {
                latest_seq,
                endpoint,
            } => Event::Connected {
                latest_seq,
                endpoint: endpoint.addr.to_string(),
                transport: match endpoint.transport {
                    ferry_client::Transport::Tcp => Transport::Tcp,
                    ferry_client::Transport::Http => Transport::Http,
                },
            },
            ClientEvent::Disconnected { reason } => Event::Disconnected { reason },
            ClientEvent::Stopped { error } => Event::Stopped {
                error: error.into(),
            },
        }
    }
}

fn inbox_entry(e: v1::Entry, me: &str) -> Event {
    use v1::entry::Kind;
    let seq = e.seq;
    match e.kind {
        Some(Kind::Message(m)) => Event::Message {
            message: message(m, seq, 0, me),
        },
        Some(Kind::Recall(r)) => Event::Recall {
            seq,
            gseq: 0,
            group_id: r.group_id,
            msg_id: r.msg_id,
            by: r.by,
        },
        Some(Kind::Read(r)) => Event::Receipt {
            seq,
            reader: r.reader,
            msg_id: r.msg_id,
        },
        Some(Kind::Friend(f)) => Event::FriendChanged {
            seq,
            kind: f.kind().into(),
            peer: f.peer,
            greeting: f.greeting,
            time_ms: e.time_ms,
        },
        Some(Kind::Group(g)) => Event::GroupChanged {
            seq,
            gseq: 0,
            group_id: g.group_id,
            kind: g.kind().into(),
            users: g.users,
            by: g.by,
            text: g.text,
            time_ms: e.time_ms,
        },
        Some(Kind::Moment(m)) => Event::MomentChanged {
            seq,
            kind: m.kind().into(),
            moment_id: m.moment_id,
            by: m.by,
            text: m.text,
            time_ms: e.time_ms,
        },
        Some(Kind::Edit(x)) => edit(seq, 0, x.group_id, x),
        Some(Kind::Reaction(x)) => reaction(seq, 0, x.group_id, x),
        Some(Kind::Hide(h)) => Event::Hide {
            seq,
            msg_ids: h.msg_ids,
        },
        Some(Kind::Pin(p)) => {
            let conversation = match p.group_id {
                0 => Destination::User {
                    username: p.peer.clone(),
                },
                g => Destination::Group { group_id: g },
            };
            pin(seq, 0, conversation, p)
        }
        Some(Kind::Conv(c)) => Event::Conv {
            seq,
            state: c.into(),
        },
        None => Event::Unknown { seq, gseq: 0 },
    }
}

fn edit(seq: u64, gseq: u64, group_id: u64, x: v1::Edit) -> Event {
    Event::Edit {
        seq,
        gseq,
        group_id,
        msg_id: x.msg_id,
        text: x.text,
        edited_ms: x.edited_ms,
        by: x.by,
    }
}

fn reaction(seq: u64, gseq: u64, group_id: u64, x: v1::Reaction) -> Event {
    Event::Reaction {
        seq,
        gseq,
        group_id,
        msg_id: x.msg_id,
        emoji: x.emoji,
        by: x.by,
        added: x.add,
        count: x.count,
    }
}

fn pin(seq: u64, gseq: u64, conversation: Destination, p: v1::Pin) -> Event {
    Event::Pin {
        seq,
        gseq,
        conversation,
        msg_id: p.msg_id,
        by: p.by,
        pinned: p.pinned,
    }
}

fn group_entry(group_id: u64, e: v1::GroupEntry, me: &str) -> Event {
    use v1::group_entry::Kind;
    let gseq = e.gseq;
    match e.kind {
        Some(Kind::Message(mut m)) => {
            m.group_id = group_id;
            Event::Message {
                message: message(m, 0, gseq, me),
            }
        }
        Some(Kind::Recall(r)) => Event::Recall {
            seq: 0,
            gseq,
            group_id,
            msg_id: r.msg_id,
            by: r.by,
        },
        Some(Kind::Event(g)) => Event::GroupChanged {
            seq: 0,
            gseq,
            group_id,
            kind: g.kind().into(),
            users: g.users,
            by: g.by,
            text: g.text,
            time_ms: e.time_ms,
        },
        Some(Kind::Edit(x)) => edit(0, gseq, group_id, x),
        Some(Kind::Reaction(x)) => reaction(0, gseq, group_id, x),
        Some(Kind::Pin(p)) => pin(0, gseq, Destination::Group { group_id }, p),
        Some(Kind::Retention(r)) => Event::Retention {
            gseq,
            group_id,
            retention_secs: r.retention_secs,
            by: r.by,
        },
        // The server sends a place without content (a cleared or pruned message); a kind
        // this version does not know decodes the same way.
        None => Event::NoContent { gseq, group_id },
    }
}

/// The link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Status {
    Connecting,
    Connected,
    /// Closed on purpose after `app_backgrounded()`; push stands in until
    /// `app_foregrounded()`.
    Background,
    Stopped,
}

impl From<ferry_client::Status> for Status {
    fn from(s: ferry_client::Status) -> Self {
        match s {
            ferry_client::Status::Connecting => Status::Connecting,
            ferry_client::Status::Connected => Status::Connected,
            ferry_client::Status::Background => Status::Background,
            ferry_client::Status::Stopped => Status::Stopped,
        }
    }
}

/// A user found by name.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UserInfo {
    pub user_id: u64,
    pub username: String,
    /// The avatar's ETag (empty: no avatar).
    pub avatar_etag: String,
}

/// Where this user stands with another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum FriendState {
    /// No relation.
    Stranger,
    Friend,
    /// This user asked; no answer yet.
    RequestOut,
    /// The other user asked; accept or decline.
    RequestIn,
    Blocked,
    Removed,
}

impl From<i32> for FriendState {
    fn from(s: i32) -> Self {
        use v1::FriendState as S;
        match S::try_from(s).unwrap_or(S::None) {
            S::None => FriendState::Stranger,
            S::Friend => FriendState::Friend,
            S::RequestOut => FriendState::RequestOut,
            S::RequestIn => FriendState::RequestIn,
            S::Blocked => FriendState::Blocked,
            S::Removed => FriendState::Removed,
        }
    }
}

/// What to do about another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum FriendAction {
    Accept,
    Decline,
    Remove,
    Block,
    Unblock,
}

impl From<FriendAction> for ferry_client::FriendAction {
    fn from(a: FriendAction) -> Self {
        match a {
            FriendAction::Accept => ferry_client::FriendAction::Accept,
            FriendAction::Decline => ferry_client::FriendAction::Decline,
            FriendAction::Remove => ferry_client::FriendAction::Remove,
            FriendAction::Block => ferry_client::FriendAction::Block,
            FriendAction::Unblock => ferry_client::FriendAction::Unblock,
        }
    }
}

/// The state a friend action left, and the friend list's new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct FriendActionResult {
    pub state: FriendState,
    pub version: u64,
}

impl From<v1::FriendActionResp> for FriendActionResult {
    fn from(r: v1::FriendActionResp) -> Self {
        FriendActionResult {
            state: r.state.into(),
            version: r.version,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Friend {
    pub user_id: u64,
    pub username: String,
    pub state: FriendState,
    pub greeting: String,
    pub since_ms: i64,
}

/// The friend list, whole (`full`) or the changes since the version asked for.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FriendList {
    pub version: u64,
    pub friends: Vec<Friend>,
    pub full: bool,
}

impl From<v1::FriendListResp> for FriendList {
    fn from(r: v1::FriendListResp) -> Self {
        FriendList {
            version: r.version,
            full: r.full,
            friends: r
                .friends
                .into_iter()
                .map(|f| Friend {
                    user_id: f.user_id,
                    username: f.username,
                    state: f.state.into(),
                    greeting: f.greeting,
                    since_ms: f.since_ms,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum GroupRole {
    Member,
    Admin,
    Owner,
}

impl From<i32> for GroupRole {
    fn from(r: i32) -> Self {
        match v1::GroupRole::try_from(r).unwrap_or(v1::GroupRole::Member) {
            v1::GroupRole::Member => GroupRole::Member,
            v1::GroupRole::Admin => GroupRole::Admin,
            v1::GroupRole::Owner => GroupRole::Owner,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupMember {
    pub username: String,
    pub role: GroupRole,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Group {
    pub group_id: u64,
    pub name: String,
    pub announcement: String,
    pub owner: String,
    pub latest_gseq: u64,
    /// Filled by `group_info`; the group list leaves it empty.
    pub members: Vec<GroupMember>,
    pub share_history: bool,
    /// Where this user's view of the log begins.
    pub joined_gseq: u64,
    pub member_count: u32,
}

impl From<v1::Group> for Group {
    fn from(g: v1::Group) -> Self {
        Group {
            group_id: g.group_id,
            name: g.name,
            announcement: g.announcement,
            owner: g.owner,
            latest_gseq: g.latest_gseq,
            members: g
                .members
                .into_iter()
                .map(|m| GroupMember {
                    username: m.username,
                    role: m.role.into(),
                })
                .collect(),
            share_history: g.share_history,
            joined_gseq: g.joined_gseq,
            member_count: g.member_count,
        }
    }
}

/// A platform push service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PushProvider {
    Apns,
    Fcm,
    WebPush,
    UnifiedPush,
}

/// How much of a message a push shows on the lock screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PushPreview {
    /// "New message" only.
    Hidden,
    /// The sender's name.
    Sender,
    /// The sender and the text.
    Full,
}

/// This device's push target (docs/protocol.md, Push). Build one with `apns_target`,
/// `fcm_target` or `unified_push_target` and adjust the rest.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PushTarget {
    pub provider: PushProvider,
    /// APNs device token (hex) or FCM registration token.
    pub token: String,
    /// Web Push / UnifiedPush endpoint URL and keys.
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    /// APNs topic (bundle id) or Firebase project.
    pub app_id: String,
    pub sandbox: bool,
    pub locale: String,
    pub preview: PushPreview,
    /// Do-not-disturb window in minutes after local midnight (equal: off).
    pub dnd_start_min: u32,
    pub dnd_end_min: u32,
    pub utc_offset_min: i32,
    /// Filled by the server.
    pub device_id: String,
    pub created_ms: i64,
}

impl From<v1::PushTarget> for PushTarget {
    fn from(t: v1::PushTarget) -> Self {
        PushTarget {
            provider: match t.provider() {
                v1::PushProvider::Fcm => PushProvider::Fcm,
                v1::PushProvider::Webpush => PushProvider::WebPush,
                v1::PushProvider::Unifiedpush => PushProvider::UnifiedPush,
                v1::PushProvider::Apns | v1::PushProvider::Unspecified => PushProvider::Apns,
            },
            preview: match t.preview() {
                v1::PushPreview::PreviewNone => PushPreview::Hidden,
                v1::PushPreview::PreviewSender => PushPreview::Sender,
                v1::PushPreview::PreviewFull => PushPreview::Full,
            },
            token: t.token,
            endpoint: t.endpoint,
            p256dh: t.p256dh,
            auth: t.auth,
            app_id: t.app_id,
            sandbox: t.sandbox,
            locale: t.locale,
            dnd_start_min: t.dnd_start_min,
            dnd_end_min: t.dnd_end_min,
            utc_offset_min: t.utc_offset_min,
            device_id: t.device_id,
            created_ms: t.created_ms,
        }
    }
}

impl From<PushTarget> for v1::PushTarget {
    fn from(t: PushTarget) -> Self {
        v1::PushTarget {
            provider: match t.provider {
                PushProvider::Apns => v1::PushProvider::Apns,
                PushProvider::Fcm => v1::PushProvider::Fcm,
                PushProvider::WebPush => v1::PushProvider::Webpush,
                PushProvider::UnifiedPush => v1::PushProvider::Unifiedpush,
            } as i32,
            preview: match t.preview {
                PushPreview::Hidden => v1::PushPreview::PreviewNone,
                PushPreview::Sender => v1::PushPreview::PreviewSender,
                PushPreview::Full => v1::PushPreview::PreviewFull,
            } as i32,
            token: t.token,
            endpoint: t.endpoint,
            p256dh: t.p256dh,
            auth: t.auth,
            app_id: t.app_id,
            sandbox: t.sandbox,
            locale: t.locale,
            dnd_start_min: t.dnd_start_min,
            dnd_end_min: t.dnd_end_min,
            utc_offset_min: t.utc_offset_min,
            device_id: t.device_id,
            created_ms: t.created_ms,
        }
    }
}

/// What a push carries (the `ferry` object): "sync up to at least `seq`". The app
/// shows what the sync brings, not this.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PushData {
    pub seq: u64,
    pub count: u32,
    /// `message`, `group`, `mention`, `friend`, `recall` or `test`.
    pub kind: String,
    pub from: String,
    pub group_id: u64,
    pub text: String,
}

impl From<ferry_client::push::PushData> for PushData {
    fn from(p: ferry_client::push::PushData) -> Self {
        PushData {
            seq: p.seq,
            count: p.count,
            kind: p.kind,
            from: p.from,
            group_id: p.group_id,
            text: p.text,
        }
    }
}

/// How many users hold one emoji on a message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u32,
    /// This user holds this reaction.
    pub mine: bool,
}

/// The reactions on a message (`Client.reactions`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Reactions {
    /// Per emoji, most used first (at most 100).
    pub counts: Vec<ReactionCount>,
    /// When an emoji was asked for: who reacted with it (this page).
    pub users: Vec<String>,
    /// Pass back as `after` for the next page of `users`; 0 when there is none.
    pub next_after: u64,
}

impl From<v1::ReactionsResp> for Reactions {
    fn from(r: v1::ReactionsResp) -> Self {
        Reactions {
            counts: r
                .counts
                .into_iter()
                .map(|c| ReactionCount {
                    emoji: c.emoji,
                    count: c.count,
                    mine: c.mine,
                })
                .collect(),
            users: r.users,
            next_after: r.next_after,
        }
    }
}

/// A pinned message of a conversation (`Client.pins`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PinnedMessage {
    pub msg_id: u64,
    /// Who pinned it.
    pub by: String,
    /// When, unix ms.
    pub time_ms: i64,
}

impl From<v1::PinnedMessage> for PinnedMessage {
    fn from(p: v1::PinnedMessage) -> Self {
        PinnedMessage {
            msg_id: p.msg_id,
            by: p.by,
            time_ms: p.time_ms,
        }
    }
}

/// A conversation as requests name it: `(peer, group_id)`.
pub(crate) fn conversation(d: Destination) -> Result<ferry_client::Conversation, FerryError> {
    match d {
        Destination::User { username } if username.is_empty() => {
            Err(FerryError::invalid("the conversation's user name is empty"))
        }
        Destination::Group { group_id: 0 } => {
            Err(FerryError::invalid("the conversation's group id is 0"))
        }
        Destination::User { username } => Ok(ferry_client::Conversation::Peer(username)),
        Destination::Group { group_id } => Ok(ferry_client::Conversation::Group(group_id)),
    }
}

/// What a message is, for a search filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SearchKind {
    Text,
    Image,
    File,
    Voice,
    Video,
}

impl From<SearchKind> for v1::SearchKind {
    fn from(k: SearchKind) -> Self {
        match k {
            SearchKind::Text => v1::SearchKind::Text,
            SearchKind::Image => v1::SearchKind::Image,
            SearchKind::File => v1::SearchKind::File,
            SearchKind::Voice => v1::SearchKind::Voice,
            SearchKind::Video => v1::SearchKind::Video,
        }
    }
}

/// The order of search hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SearchOrder {
    /// Newest first (the default).
    Newest,
    /// Best match first.
    Relevance,
}

/// What to search for (docs/protocol.md, Search): every field may be left out. The
/// messages searched are those this user may read: their 1:1 messages, sent and
/// received, and those of the groups they are in.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SearchQuery {
    /// The words to find, all of them; `"a phrase"` in quotes; Chinese and Japanese as
    /// written. At most 1 KiB. Empty: every message the filters let through.
    #[uniffi(default = "")]
    pub text: String,
    /// Only the 1:1 conversation with this user.
    #[uniffi(default = None)]
    pub peer: Option<String>,
    /// Only this group.
    #[uniffi(default = None)]
    pub group_id: Option<u64>,
    /// Only messages from this user.
    #[uniffi(default = None)]
    pub sender: Option<String>,
    /// Only messages stored at or after this time, unix ms.
    #[uniffi(default = None)]
    pub after_ms: Option<i64>,
    /// Only messages stored before this time, unix ms.
    #[uniffi(default = None)]
    pub before_ms: Option<i64>,
    /// Only these kinds (empty: any).
    #[uniffi(default = [])]
    pub kinds: Vec<SearchKind>,
    /// `None`: newest first.
    #[uniffi(default = None)]
    pub order: Option<SearchOrder>,
    /// Hits per page, 1–100 (0: the server's 20; more than 100: 100).
    #[uniffi(default = 0)]
    pub limit: u32,
    /// The previous page's `SearchPage.next` (`None`: the first page).
    #[uniffi(default = None)]
    pub page: Option<String>,
    /// Answer each hit with a snippet of its text and where the matches are in it.
    #[uniffi(default = false)]
    pub highlight: bool,
}

impl SearchQuery {
    /// The request, or the caller's mistake as `InvalidArgument`.
    pub(crate) fn request(self) -> Result<v1::SearchReq, FerryError> {
        fn named(what: &str, v: Option<String>) -> Result<String, FerryError> {
            match v {
                Some(s) if s.is_empty() => Err(FerryError::invalid(format!(
                    "search: `{what}` is empty (leave it out for any)"
                ))),
                v => Ok(v.unwrap_or_default()),
            }
        }
        if self.group_id == Some(0) {
            return Err(FerryError::invalid(
                "search: `group_id` 0 names no group (leave it out for any)",
            ));
        }
        // On the wire 0 means "no bound": a bound at or before 1970 would silently be none.
        if self.after_ms.is_some_and(|t| t <= 0) || self.before_ms.is_some_and(|t| t <= 0) {
            return Err(FerryError::invalid(
                "search: a time bound is not after 1970 (leave it out for none)",
            ));
        }
        Ok(v1::SearchReq {
            text: self.text,
            peer: named("peer", self.peer)?,
            group_id: self.group_id.unwrap_or(0),
            sender: named("sender", self.sender)?,
            after_ms: self.after_ms.unwrap_or(0),
            before_ms: self.before_ms.unwrap_or(0),
            kinds: self
                .kinds
                .into_iter()
                .map(|k| v1::SearchKind::from(k) as i32)
                .collect(),
            order: match self.order.unwrap_or(SearchOrder::Newest) {
                SearchOrder::Newest => v1::SearchOrder::Newest,
                SearchOrder::Relevance => v1::SearchOrder::Relevance,
            } as i32,
            limit: self.limit,
            page: named("page", self.page)?,
            highlight: self.highlight,
        })
    }
}

/// A byte range `[start, end)` of a snippet's UTF-8 encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct TextRange {
    pub start: u32,
    pub end: u32,
}

/// One message found.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SearchHit {
    /// The message as stored now (an edited one with its new text); `gseq` is set for a
    /// group message, `seq` is 0 (a hit is not an inbox position).
    pub message: ChatMessage,
    /// With `highlight`: a part of the text around the matches (else empty),
    pub snippet: String,
    /// and where the matches are in it: byte ranges of the snippet's UTF-8 encoding.
    pub ranges: Vec<TextRange>,
}

/// One page of search hits.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// How many messages match in all pages.
    pub total: u64,
    /// Pass as `SearchQuery.page` for the next page; `None` on the last.
    pub next: Option<String>,
}

impl SearchPage {
    pub(crate) fn from_resp(r: v1::SearchResp, me: &str) -> Result<SearchPage, FerryError> {
        let hits = r
            .hits
            .into_iter()
            .map(|h| {
                let m = h.message.ok_or_else(|| FerryError::Protocol {
                    detail: "a search hit without its message".into(),
                })?;
                Ok(SearchHit {
                    message: message(m, 0, h.gseq, me),
                    snippet: h.snippet,
                    ranges: h
                        .ranges
                        .into_iter()
                        .map(|r| TextRange {
                            start: r.start,
                            end: r.end,
                        })
                        .collect(),
                })
            })
            .collect::<Result<_, FerryError>>()?;
        Ok(SearchPage {
            hits,
            total: r.total,
            next: Some(r.next).filter(|n| !n.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    /// The code of a `Stopped` event's error, if the server refused.
    fn stopped_code(e: &Event) -> Option<ErrorCode> {
        match e {
            Event::Stopped {
                error: FerryError::Server { code, .. },
            } => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn inbox_and_group_entries_map_with_their_positions() {
        let m = v1::Message {
            msg_id: 7,
            from: "ann".into(),
            to: "bob".into(),
            text: "hi".into(),
            ..Default::default()
        };
        let e = Event::from_client(
            ClientEvent::Entry(v1::Entry {
                seq: 3,
                kind: Some(v1::entry::Kind::Message(m.clone())),
                time_ms: 0,
            }),
            "bob",
        );
        let Event::Message { message } = e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (
                message.seq,
                message.gseq,
                message.outgoing,
                message.text.as_str()
            ),
            (3, 0, false, "hi")
        );
        let g = Event::from_client(
            ClientEvent::Group {
                group_id: 9,
                entry: v1::GroupEntry {
                    gseq: 4,
                    kind: Some(v1::group_entry::Kind::Message(m)),
                    time_ms: 0,
                },
            },
            "ann",
        );
        let Event::Message { message } = g else {
            panic!("{g:?}")
        };
        assert_eq!(
            (
                message.seq,
                message.gseq,
                message.group_id,
                message.outgoing
            ),
            (0, 4, 9, true)
        );
        let stopped = Event::from_client(
            ClientEvent::Stopped {
                error: ferry_client::ClientError::server(v1::ErrorCode::Kicked, "bye", 0),
            },
            "ann",
        );
        assert_eq!(stopped_code(&stopped), Some(ErrorCode::Kicked));
    }

    #[test]
    fn message_operations_map_to_typed_events() {
        let inbox = |kind| {
            Event::from_client(
                ClientEvent::Entry(v1::Entry {
                    seq: 5,
                    kind: Some(kind),
                    time_ms: 0,
                }),
                "ann",
            )
        };
        let group = |kind| {
            Event::from_client(
                ClientEvent::Group {
                    group_id: 9,
                    entry: v1::GroupEntry {
                        gseq: 6,
                        kind: Some(kind),
                        time_ms: 0,
                    },
                },
                "ann",
            )
        };
        let reply = v1::Message {
            msg_id: 8,
            from: "bob".into(),
            to: "ann".into(),
            text: "yes".into(),
            edited_ms: 44,
            quote: Some(Box::new(v1::Quote {
                msg_id: 7,
                from: "ann".into(),
                text: "tea?".into(),
                kind: v1::MediaKind::MediaImage as i32,
                recalled: false,
            })),
            ..Default::default()
        };
        let Event::Message { message } = inbox(v1::entry::Kind::Message(reply)) else {
            panic!()
        };
        assert_eq!(message.edited_ms, 44);
        assert_eq!(
            message.quote,
            Some(Quote {
                msg_id: 7,
                sender: "ann".into(),
                text: "tea?".into(),
                kind: MediaKind::Image,
                recalled: false,
            })
        );
        let edit = v1::Edit {
            msg_id: 7,
            text: "tea!".into(),
            edited_ms: 50,
            by: "ann".into(),
            ..Default::default()
        };
        assert_eq!(
            inbox(v1::entry::Kind::Edit(edit.clone())),
            Event::Edit {
                seq: 5,
                gseq: 0,
                group_id: 0,
                msg_id: 7,
                text: "tea!".into(),
                edited_ms: 50,
                by: "ann".into(),
            }
        );
        assert!(matches!(
            group(v1::group_entry::Kind::Edit(edit)),
            Event::Edit {
                seq: 0,
                gseq: 6,
                group_id: 9,
                ..
            }
        ));
        let reaction = v1::Reaction {
            msg_id: 7,
            emoji: "👍".into(),
            by: "bob".into(),
            add: true,
            count: 2,
            ..Default::default()
        };
        assert_eq!(
            group(v1::group_entry::Kind::Reaction(reaction)),
            Event::Reaction {
                seq: 0,
                gseq: 6,
                group_id: 9,
                msg_id: 7,
                emoji: "👍".into(),
                by: "bob".into(),
                added: true,
                count: 2,
            }
        );
        assert_eq!(
            inbox(v1::entry::Kind::Hide(v1::Hide {
                msg_ids: vec![1, 2]
            })),
            Event::Hide {
                seq: 5,
                msg_ids: vec![1, 2]
            }
        );
        let pin = v1::Pin {
            msg_id: 7,
            peer: "bob".into(),
            by: "bob".into(),
            pinned: true,
            ..Default::default()
        };
        assert_eq!(
            inbox(v1::entry::Kind::Pin(pin.clone())),
            Event::Pin {
                seq: 5,
                gseq: 0,
                conversation: Destination::User {
                    username: "bob".into()
                },
                msg_id: 7,
                by: "bob".into(),
                pinned: true,
            }
        );
        assert!(matches!(
            group(v1::group_entry::Kind::Pin(pin)),
            Event::Pin {
                conversation: Destination::Group { group_id: 9 },
                gseq: 6,
                ..
            }
        ));
    }

    #[test]
    fn conversation_state_retention_cleared_places_and_forwards_map_to_typed_events() {
        let state = v1::ConvState {
            peer: "bob".into(),
            archived: true,
            muted_until_ms: -1,
            draft: "later".into(),
            draft_ms: 3,
            cleared_before_msg_id: 12,
            updated_ms: 4,
            ..Default::default()
        };
        assert_eq!(
            Event::from_client(
                ClientEvent::Entry(v1::Entry {
                    seq: 5,
                    kind: Some(v1::entry::Kind::Conv(state)),
                    time_ms: 0,
                }),
                "ann",
            ),
            Event::Conv {
                seq: 5,
                state: ConvState {
                    conversation: Destination::User {
                        username: "bob".into()
                    },
                    archived: true,
                    unread: false,
                    muted_until_ms: -1,
                    draft: "later".into(),
                    draft_ms: 3,
                    cleared_before_msg_id: 12,
                    retention_secs: 0,
                    updated_ms: 4,
                },
            }
        );
        let group = |kind| {
            Event::from_client(
                ClientEvent::Group {
                    group_id: 9,
                    entry: v1::GroupEntry {
                        gseq: 6,
                        kind,
                        time_ms: 0,
                    },
                },
                "ann",
            )
        };
        assert_eq!(
            group(Some(v1::group_entry::Kind::Retention(v1::ConvRetention {
                group_id: 9,
                retention_secs: 600,
                by: "ann".into(),
            }))),
            Event::Retention {
                gseq: 6,
                group_id: 9,
                retention_secs: 600,
                by: "ann".into(),
            }
        );
        assert_eq!(
            group(None),
            Event::NoContent {
                gseq: 6,
                group_id: 9
            }
        );
        let Event::Message { message } = group(Some(v1::group_entry::Kind::Message(v1::Message {
            msg_id: 8,
            from: "bob".into(),
            text: "the plan".into(),
            forwarded: Some(Box::new(v1::Forwarded {
                from: "cy".into(),
                time_ms: 77,
            })),
            ..Default::default()
        }))) else {
            panic!()
        };
        assert_eq!(
            message.forwarded,
            Some(Forwarded {
                sender: "cy".into(),
                time_ms: 77
            })
        );
        // A change carries only the fields given; a bad conversation is refused here.
        let set = ConvChange {
            conversation: Destination::Group { group_id: 9 },
            archived: Some(false),
            unread: None,
            muted_until_ms: None,
            draft: Some(String::new()),
            clear: true,
            retention_secs: None,
        };
        assert_eq!(
            set.clone().request().unwrap(),
            v1::ConvSet {
                peer: String::new(),
                group_id: 9,
                archived: Some(false),
                draft: Some(String::new()),
                clear: true,
                ..Default::default()
            }
        );
        let bad = ConvChange {
            conversation: Destination::User {
                username: String::new(),
            },
            ..set
        };
        assert!(matches!(
            bad.request(),
            Err(FerryError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn a_search_query_becomes_its_request_or_a_clear_error() {
        let q = SearchQuery {
            text: "北京".into(),
            peer: Some("bob".into()),
            group_id: None,
            sender: None,
            after_ms: Some(1),
            before_ms: None,
            kinds: vec![SearchKind::Text, SearchKind::File],
            order: Some(SearchOrder::Relevance),
            limit: 5,
            page: None,
            highlight: true,
        };
        let r = q.clone().request().unwrap();
        assert_eq!(
            (r.text.as_str(), r.peer.as_str(), r.after_ms),
            ("北京", "bob", 1)
        );
        assert_eq!(
            r.kinds,
            [v1::SearchKind::Text as i32, v1::SearchKind::File as i32]
        );
        assert_eq!(r.order(), v1::SearchOrder::Relevance);
        assert!(r.highlight && r.page.is_empty() && r.group_id == 0);
        let bad = |f: fn(&mut SearchQuery)| {
            let mut q = q.clone();
            f(&mut q);
            q.request().unwrap_err()
        };
        for e in [
            bad(|q| q.peer = Some(String::new())),
            bad(|q| q.sender = Some(String::new())),
            bad(|q| q.page = Some(String::new())),
            bad(|q| q.group_id = Some(0)),
            bad(|q| q.before_ms = Some(-5)),
        ] {
            assert!(matches!(e, FerryError::InvalidArgument { .. }), "{e:?}");
        }
        let page = SearchPage::from_resp(
            v1::SearchResp {
                hits: vec![v1::SearchHit {
                    message: Some(v1::Message {
                        msg_id: 3,
                        from: "ann".into(),
                        group_id: 9,
                        text: "tea at five".into(),
                        ..Default::default()
                    }),
                    gseq: 4,
                    snippet: "tea at five".into(),
                    ranges: vec![v1::TextRange { start: 0, end: 3 }],
                }],
                total: 1,
                next: String::new(),
            },
            "ann",
        )
        .unwrap();
        assert_eq!(page.next, None);
        let hit = &page.hits[0];
        assert_eq!(
            (hit.message.gseq, hit.message.seq, hit.message.outgoing),
            (4, 0, true)
        );
        assert_eq!(hit.ranges, [TextRange { start: 0, end: 3 }]);
        assert!(matches!(
            SearchPage::from_resp(
                v1::SearchResp {
                    hits: vec![v1::SearchHit::default()],
                    ..Default::default()
                },
                "ann"
            ),
            Err(FerryError::Protocol { .. })
        ));
        assert!(matches!(
            conversation(Destination::Group { group_id: 0 }),
            Err(FerryError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn push_targets_round_trip() {
        let t: PushTarget = ferry_client::push::apns("ab12", "chat.ferry.app", true).into();
        assert_eq!(t.provider, PushProvider::Apns);
        let back: v1::PushTarget = t.clone().into();
        assert_eq!(back.provider(), v1::PushProvider::Apns);
        assert_eq!(PushTarget::from(back), t);
    }
}
