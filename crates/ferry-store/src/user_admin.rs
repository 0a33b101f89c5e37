//! The user administration contract (the admin API's users): listing and searching
//! users, disabling (banning) and re-enabling them, their devices, reading everything of
//! a user page by page (exports), and deleting a user with ALL their data in one
//! transaction.
//!
//! **What a deletion does** ([`UserAdminStore::delete_user`]), in one transaction:
//!
//! * Messages they sent are **recalled**, not anonymised: a 1:1 message's recipient gets
//!   a `Recall` entry in their inbox (their devices remove the message, exactly as when
//!   the sender recalls it), a group message gets a `Recall` entry in the group's log;
//!   then the message rows are deleted (the recipients' inbox rows and the group log
//!   rows that pointed at them stay, without content, like a pruned or recalled
//!   message, so no seq or gseq is ever reused).
//! * Friendships, both sides: each peer that had a relation gets a `FriendEvent
//!   REMOVED` for the deleted user in their inbox.
//! * Groups: their memberships go; a group they own passes to the member with the
//!   highest role, the longest-standing first (the same heir as when an owner leaves),
//!   and a group with no other member is dissolved (group, members, log).
//! * Their inbox, synckeys (`devices`), sessions, avatar, client reports, moments (with
//!   every like and comment on them), their likes and comments on others' moments, push
//!   targets, push settings (theirs and others' settings for a chat with them), push
//!   queue rows, and the `users` row.
//! * Then a sweep over EVERY table of the database (the catalog: `sqlite_master`,
//!   `information_schema`): any row whose user column ([`is_user_column`]) holds the id
//!   is deleted too, so tables added later are covered without being named here.
//!
//! Media bytes and metadata live in the [`MediaStore`](crate::MediaStore) (deleted by
//! the caller with [`MediaStore::delete`](crate::MediaStore::delete)).
//! Inbox events that only *name* the user (a friend request, a group event "alice
//! left") stay in the other users' inboxes and group logs: they are the others' history,
//! and no longer point at any account.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::{MessageInfo, ReportInfo, Result};

/// A user as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub id: u64,
    pub name: String,
    pub created_ms: i64,
    /// Disabled (banned): sign-in and login are refused.
    pub disabled: bool,
    /// Why, as given when disabling ("" when enabled).
    pub disabled_reason: String,
    /// A bot account ([`crate::BotStore`]).
    pub bot: bool,
}

/// A device of a user: what it reported (synckey) and whether it holds a session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    pub device_id: String,
    /// Last synckey reported (0: never).
    pub synckey: u64,
    /// When it last reported a synckey, unix ms (0: never).
    pub seen_ms: i64,
    /// When its current session was issued, unix ms (0: no session — logged out).
    pub session_ms: i64,
}

/// A deletion to run (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct UserDeletion {
    pub user_id: u64,
    /// The user's name, as the recall and friend entries name them.
    pub name: String,
    /// The time of the entries written, unix ms.
    pub time_ms: i64,
}

/// What a deletion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Rows deleted per table (tables with none left out).
    pub rows: BTreeMap<String, u64>,
    /// Other users whose inbox got entries (recalls, friend removals), with their newest
    /// seq: to be notified.
    pub inboxes: Vec<(u64, u64)>,
    /// Groups whose log got entries (recalls, the owner's change), with the newest gseq.
    pub groups: Vec<(u64, u64)>,
    /// Groups dissolved (the user was their last member).
    pub dissolved: Vec<u64>,
}

/// A row of some table that still names a user (see [`UserAdminStore::leftover_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub table: String,
    pub column: String,
    pub rows: u64,
}

/// Whether a column holds a user id, by its name: `user_id`, `sender_id`, `author_id`,
/// `owner_id`, `peer_id`, `peer`, `uploader`, `recipient_id` … (any name ending in
/// one of them). What [`UserAdminStore::delete_user`] sweeps and
/// [`UserAdminStore::leftover_rows`] checks.
pub fn is_user_column(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "peer"
        || n == "uploader"
        || [
            "user_id",
            "sender_id",
            "author_id",
            "owner_id",
            "peer_id",
            "recipient_id",
            "uploader_id",
            "member_id",
            "bot_id",
        ]
        .iter()
        .any(|s| n.ends_with(s))
}

/// Makes a `LIKE` pattern matching `q` anywhere, lower-cased, with `\` escaping.
pub(crate) fn like_pattern(q: &str) -> String {
    let mut p = String::from("%");
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The entries a deletion writes (the same in both backends).
pub(crate) mod entries {
    use ferry_proto::v1;

    /// A 1:1 message recalled, for its recipient's inbox.
    pub fn recall(msg_id: u64, by: &str, time_ms: i64) -> v1::Entry {
        v1::Entry {
            kind: Some(v1::entry::Kind::Recall(v1::Recall {
                msg_id,
                group_id: 0,
                by: by.to_owned(),
            })),
            time_ms,
            ..Default::default()
        }
    }

    /// The deleted user is no longer a friend (or anything else) of the inbox owner.
    pub fn friend_removed(peer: &str, time_ms: i64) -> v1::Entry {
        v1::Entry {
            kind: Some(v1::entry::Kind::Friend(v1::FriendEvent {
                kind: v1::friend_event::Kind::Removed as i32,
                peer: peer.to_owned(),
                greeting: String::new(),
            })),
            time_ms,
            ..Default::default()
        }
    }

    /// A group message recalled, for the group's log.
    pub fn group_recall(group: u64, msg_id: u64, by: &str, time_ms: i64) -> v1::GroupEntry {
        v1::GroupEntry {
            kind: Some(v1::group_entry::Kind::Recall(v1::Recall {
                msg_id,
                group_id: group,
                by: by.to_owned(),
            })),
            time_ms,
            ..Default::default()
        }
    }

    /// The deleted user left the group (as an owner leaving: the heir, if any, is in
    /// the same entry's change).
    pub fn group_left(group: u64, name: &str, time_ms: i64) -> v1::GroupEntry {
        v1::GroupEntry {
            kind: Some(v1::group_entry::Kind::Event(v1::GroupEvent {
                kind: v1::group_event::Kind::Left as i32,
                group_id: group,
                users: vec![name.to_owned()],
                by: name.to_owned(),
                text: String::new(),
            })),
            time_ms,
            ..Default::default()
        }
    }

    pub const OWNER: i32 = v1::GroupRole::Owner as i32;
    pub const FRIEND_REMOVED: i32 = v1::FriendState::Removed as i32;
}

/// Users, as the operators manage them.
#[async_trait]
pub trait UserAdminStore: Send + Sync + 'static {
    /// Users with id > `after` whose name contains `q` (case-insensitive; "" matches
    /// all), in id order, at most `limit`.
    async fn list_users(&self, q: &str, after: u64, limit: u32) -> Result<Vec<UserInfo>>;
    async fn user_info(&self, id: u64) -> Result<Option<UserInfo>>;
    /// Why the user is disabled, `None` when enabled (or unknown).
    async fn disabled(&self, id: u64) -> Result<Option<String>>;
    /// Disables the user with `reason` and ends every session, in one transaction
    /// (returns the device ids that had one); or, with `None`, enables the user again
    /// (returns nothing). [`StoreError::NotFound`](crate::StoreError::NotFound) for an
    /// unknown user.
    async fn set_disabled(&self, id: u64, reason: Option<&str>) -> Result<Vec<String>>;
    /// The user's devices: every device that reported a synckey or holds a session.
    async fn user_devices(&self, id: u64) -> Result<Vec<DeviceInfo>>;
    /// Messages the user sent or that are in their inbox (received), with id >
    /// `after_msg_id`, in id order, at most `limit`; recalled ones left out.
    async fn user_messages(
        &self,
        id: u64,
        after_msg_id: u64,
        limit: u32,
    ) -> Result<Vec<MessageInfo>>;
    /// The client reports the user sent, oldest first, ids > `after`.
    async fn user_reports(&self, id: u64, after: u64, limit: u32) -> Result<Vec<ReportInfo>>;
    /// Deletes the user and all their data in one transaction (see the module doc).
    /// [`StoreError::NotFound`](crate::StoreError::NotFound) for an unknown user.
    async fn delete_user(&self, deletion: UserDeletion) -> Result<Deleted>;
    /// Every (table, user column) of the database holding rows that name `id`, with how
    /// many — read from the catalog, so it covers every table there is (empty after a
    /// deletion).
    async fn leftover_rows(&self, id: u64) -> Result<Vec<Leftover>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_columns_by_name() {
        for c in [
            "user_id",
            "sender_id",
            "author_id",
            "owner_id",
            "peer_id",
            "peer",
            "uploader",
            "bot_user_id",
        ] {
            assert!(is_user_column(c), "{c}");
        }
        for c in [
            "id",
            "group_id",
            "msg_id",
            "moment_id",
            "peers",
            "device_id",
        ] {
            assert!(!is_user_column(c), "{c}");
        }
    }

    #[test]
    fn like_patterns_escape() {
        assert_eq!(like_pattern("Al_i%"), "%al\\_i\\%%");
        assert_eq!(like_pattern(""), "%%");
    }
}
