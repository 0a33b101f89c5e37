//! An opt-in model of the user's chats, built from the client's [`Event`]s: the app owns
//! a [`ChatView`], feeds it every event ([`ChatView::apply`]) and gets back what changed
//! ([`Change`]). It holds the messages with their current text (edits applied, marked
//! edited), their reaction counts, each conversation's pins, and drops recalled and
//! hidden (deleted-for-me) messages, and the snippets of quotes of recalled ones. It
//! also keeps each conversation's state (`Entry.conv`: archived, unread, muted, draft,
//! retention) and drops the messages of a conversation whose history the user cleared.
//!
//! Entries are applied in the order the SDK delivers them (inbox order, and each group's
//! log order), and every kind is absolute (an edit carries the whole text, a reaction the
//! emoji's count after it), so every device of a user that applied the same entries
//! holds the same view — also one that was offline during the changes and synced later.
//! A view kept across app restarts ([`ChatView::save`], [`ChatView::load`]) belongs next
//! to the device state (the synckey it was built to).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferry_proto::v1;
use serde::{Deserialize, Serialize};

use crate::Event;

/// A conversation: a 1:1 chat with a peer, or a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Conversation {
    Peer(String),
    Group(u64),
}

impl Conversation {
    /// `(peer, group_id)` as requests carry them.
    pub(crate) fn parts(&self) -> (String, u64) {
        match self {
            Conversation::Peer(p) => (p.clone(), 0),
            Conversation::Group(g) => (String::new(), *g),
        }
    }

    /// The key of the conversation in a [`ChatView`]'s maps: `@peer` or `#group_id`.
    pub fn key(&self) -> String {
        match self {
            Conversation::Peer(p) => format!("@{p}"),
            Conversation::Group(g) => format!("#{g}"),
        }
    }
}

/// The quote of a reply, as a view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ViewQuote {
    pub msg_id: u64,
    pub from: String,
    /// Empty once the quoted message was recalled.
    pub text: String,
    pub recalled: bool,
}

/// A message as a view holds it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ViewMessage {
    pub msg_id: u64,
    pub from: String,
    /// The peer for a 1:1 message sent by this user; this user for one received.
    pub to: String,
    pub group_id: u64,
    pub time_ms: i64,
    pub text: String,
    /// When last edited, unix ms (0: never).
    pub edited_ms: i64,
    pub quote: Option<ViewQuote>,
    /// Emoji → how many users hold it.
    pub reactions: BTreeMap<String, u32>,
    /// Set for a forwarded message: the original's author and time.
    #[serde(default)]
    pub forwarded: Option<ViewForwarded>,
}

/// Where a forwarded message came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ViewForwarded {
    pub from: String,
    pub time_ms: i64,
}

/// A conversation's state as the user's devices share it (`Entry.conv`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ViewConv {
    pub archived: bool,
    pub unread: bool,
    /// 0 not muted, -1 until unmuted, else until then (unix ms).
    pub muted_until_ms: i64,
    pub draft: String,
    pub draft_ms: i64,
    /// Messages with an id at or below it are cleared for the user.
    pub cleared_before_msg_id: u64,
    /// The conversation's own retention, seconds (0: none).
    pub retention_secs: u32,
    pub updated_ms: i64,
}

impl ViewConv {
    /// Muted at `now_ms`.
    pub fn muted(&self, now_ms: i64) -> bool {
        self.muted_until_ms == -1 || self.muted_until_ms > now_ms
    }
}

impl ViewMessage {
    /// The conversation the message is in, for a view of user `me`.
    pub fn conversation(&self, me: &str) -> Conversation {
        match self.group_id {
            0 if self.from == me => Conversation::Peer(self.to.clone()),
            0 => Conversation::Peer(self.from.clone()),
            g => Conversation::Group(g),
        }
    }
}

/// What applying an event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new message.
    Message { msg_id: u64 },
    /// A message's text was edited.
    Edited { msg_id: u64, text: String },
    /// A message's count of `emoji` is now `count`.
    Reaction {
        msg_id: u64,
        emoji: String,
        count: u32,
    },
    /// Messages deleted for this user.
    Hidden { msg_ids: Vec<u64> },
    /// A message was pinned (or unpinned) in a conversation.
    Pinned {
        conversation: Conversation,
        msg_id: u64,
        pinned: bool,
    },
    /// A message was recalled.
    Recalled { msg_id: u64 },
    /// A conversation's state changed (see [`ChatView::conv`]).
    Conv { conversation: Conversation },
    /// The user cleared a conversation's history: these messages left the view.
    Cleared {
        conversation: Conversation,
        msg_ids: Vec<u64>,
    },
}

/// The chats of one user, as entries made them. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChatView {
    /// Whose view (to tell a 1:1 message's peer).
    pub me: String,
    /// Every message present, by id.
    pub messages: BTreeMap<u64, ViewMessage>,
    /// Per conversation ([`Conversation::key`]): its pinned message ids.
    pub pins: BTreeMap<String, BTreeSet<u64>>,
    /// Messages hidden or recalled: one arriving later (a group's log is synced after
    /// the inbox that hid it) stays out.
    pub gone: BTreeSet<u64>,
    /// Per conversation ([`Conversation::key`]): its state.
    #[serde(default)]
    pub convs: BTreeMap<String, ViewConv>,
}

impl ChatView {
    pub fn new(me: &str) -> ChatView {
        ChatView {
            me: me.to_owned(),
            ..Default::default()
        }
    }

    /// Loads a view saved at `path`, or a new one for `me` when there is none.
    pub fn load(path: &Path, me: &str) -> std::io::Result<ChatView> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ChatView::new(me)),
            Err(e) => Err(e),
        }
    }

    /// Writes the view atomically (a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
        std::fs::rename(tmp, path)
    }

    /// The pinned messages of a conversation.
    pub fn pinned(&self, conv: &Conversation) -> Vec<u64> {
        self.pins
            .get(&conv.key())
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// A conversation's state (all defaults when it has none).
    pub fn conv(&self, conv: &Conversation) -> ViewConv {
        self.convs.get(&conv.key()).cloned().unwrap_or_default()
    }

    /// Applies one event of the client; returns what changed (nothing for the events a
    /// view does not keep: link changes, typing, friends …).
    pub fn apply(&mut self, ev: &Event) -> Vec<Change> {
        use v1::entry::Kind as E;
        use v1::group_entry::Kind as G;
        match ev {
            Event::Entry(e) => match &e.kind {
                Some(E::Message(m)) => self.message(m),
                Some(E::Recall(r)) => self.recall(r.msg_id),
                Some(E::Edit(x)) => self.edit(x),
                Some(E::Reaction(x)) => self.reaction(x),
                Some(E::Hide(h)) => self.hide(&h.msg_ids),
                Some(E::Pin(p)) => self.pin(Conversation::Peer(p.peer.clone()), p),
                Some(E::Conv(c)) => self.conv_state(c),
                _ => vec![],
            },
            Event::Group { group_id, entry } => match &entry.kind {
                Some(G::Message(m)) => self.message(&v1::Message {
                    group_id: *group_id,
                    ..m.clone()
                }),
                Some(G::Recall(r)) => self.recall(r.msg_id),
                Some(G::Edit(x)) => self.edit(x),
                Some(G::Reaction(x)) => self.reaction(x),
                Some(G::Pin(p)) => self.pin(Conversation::Group(*group_id), p),
                Some(G::Retention(r)) => {
                    let conversation = Conversation::Group(*group_id);
                    self.convs
                        .entry(conversation.key())
                        .or_default()
                        .retention_secs = r.retention_secs;
                    vec![Change::Conv { conversation }]
                }
                _ => vec![],
            },
            _ => vec![],
        }
    }

    fn message(&mut self, m: &v1::Message) -> Vec<Change> {
        if self.gone.contains(&m.msg_id) || self.messages.contains_key(&m.msg_id) {
            return vec![];
        }
        let conv = match m.group_id {
            0 if m.from == self.me => Conversation::Peer(m.to.clone()),
            0 => Conversation::Peer(m.from.clone()),
            g => Conversation::Group(g),
        };
        if m.msg_id <= self.conv(&conv).cleared_before_msg_id {
            return vec![];
        }
        self.messages.insert(
            m.msg_id,
            ViewMessage {
                msg_id: m.msg_id,
                from: m.from.clone(),
                to: m.to.clone(),
                group_id: m.group_id,
                time_ms: m.time_ms,
                text: m.text.clone(),
                edited_ms: m.edited_ms,
                quote: m.quote.as_ref().map(|q| ViewQuote {
                    msg_id: q.msg_id,
                    from: q.from.clone(),
                    text: q.text.clone(),
                    recalled: q.recalled,
                }),
                reactions: BTreeMap::new(),
                forwarded: m.forwarded.as_ref().map(|f| ViewForwarded {
                    from: f.from.clone(),
                    time_ms: f.time_ms,
                }),
            },
        );
        vec![Change::Message { msg_id: m.msg_id }]
    }

    fn conv_state(&mut self, c: &v1::ConvState) -> Vec<Change> {
        let conversation = match c.group_id {
            0 => Conversation::Peer(c.peer.clone()),
            g => Conversation::Group(g),
        };
        let state = ViewConv {
            archived: c.archived,
            unread: c.unread,
            muted_until_ms: c.muted_until_ms,
            draft: c.draft.clone(),
            draft_ms: c.draft_ms,
            cleared_before_msg_id: c.cleared_before_msg_id,
            retention_secs: c.retention_secs,
            updated_ms: c.updated_ms,
        };
        let cleared = state.cleared_before_msg_id;
        self.convs.insert(conversation.key(), state);
        let me = self.me.clone();
        let gone: Vec<u64> = self
            .messages
            .values()
            .filter(|m| m.msg_id <= cleared && m.conversation(&me) == conversation)
            .map(|m| m.msg_id)
            .collect();
        for id in &gone {
            self.messages.remove(id);
        }
        let mut out = vec![Change::Conv {
            conversation: conversation.clone(),
        }];
        if !gone.is_empty() {
            out.push(Change::Cleared {
                conversation,
                msg_ids: gone,
            });
        }
        out
    }

    fn recall(&mut self, msg_id: u64) -> Vec<Change> {
        self.gone.insert(msg_id);
        let had = self.messages.remove(&msg_id).is_some();
        for pins in self.pins.values_mut() {
            pins.remove(&msg_id);
        }
        self.pins.retain(|_, p| !p.is_empty());
        for m in self.messages.values_mut() {
            if let Some(q) = m.quote.as_mut().filter(|q| q.msg_id == msg_id) {
                q.text.clear();
                q.recalled = true;
            }
        }
        if had {
            vec![Change::Recalled { msg_id }]
        } else {
            vec![]
        }
    }

    fn edit(&mut self, e: &v1::Edit) -> Vec<Change> {
        let Some(m) = self.messages.get_mut(&e.msg_id) else {
            return vec![];
        };
        m.text = e.text.clone();
        m.edited_ms = m.edited_ms.max(e.edited_ms);
        vec![Change::Edited {
            msg_id: e.msg_id,
            text: e.text.clone(),
        }]
    }

    fn reaction(&mut self, r: &v1::Reaction) -> Vec<Change> {
        let Some(m) = self.messages.get_mut(&r.msg_id) else {
            return vec![];
        };
        if r.count == 0 {
            m.reactions.remove(&r.emoji);
        } else {
            m.reactions.insert(r.emoji.clone(), r.count);
        }
        vec![Change::Reaction {
            msg_id: r.msg_id,
            emoji: r.emoji.clone(),
            count: r.count,
        }]
    }

    fn hide(&mut self, ids: &[u64]) -> Vec<Change> {
        for id in ids {
            self.gone.insert(*id);
            self.messages.remove(id);
        }
        vec![Change::Hidden {
            msg_ids: ids.to_vec(),
        }]
    }

    fn pin(&mut self, conversation: Conversation, p: &v1::Pin) -> Vec<Change> {
        let key = conversation.key();
        if p.pinned {
            self.pins.entry(key).or_default().insert(p.msg_id);
        } else if let Some(set) = self.pins.get_mut(&key) {
            set.remove(&p.msg_id);
            if set.is_empty() {
                self.pins.remove(&key);
            }
        }
        vec![Change::Pinned {
            conversation,
            msg_id: p.msg_id,
            pinned: p.pinned,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, from: &str, to: &str, text: &str) -> Event {
        Event::Entry(v1::Entry {
            kind: Some(v1::entry::Kind::Message(v1::Message {
                msg_id: id,
                from: from.into(),
                to: to.into(),
                text: text.into(),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    fn entry(kind: v1::entry::Kind) -> Event {
        Event::Entry(v1::Entry {
            kind: Some(kind),
            ..Default::default()
        })
    }

    #[test]
    fn edits_reactions_pins_hides_and_recalls_apply_in_order() {
        let mut v = ChatView::new("ann");
        v.apply(&msg(1, "ann", "bob", "helo"));
        v.apply(&Event::Entry(v1::Entry {
            kind: Some(v1::entry::Kind::Message(v1::Message {
                msg_id: 2,
                from: "bob".into(),
                to: "ann".into(),
                text: "what?".into(),
                quote: Some(Box::new(v1::Quote {
                    msg_id: 1,
                    from: "ann".into(),
                    text: "helo".into(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        }));
        let ch = v.apply(&entry(v1::entry::Kind::Edit(v1::Edit {
            msg_id: 1,
            text: "hello".into(),
            edited_ms: 5,
            ..Default::default()
        })));
        assert_eq!(
            ch,
            [Change::Edited {
                msg_id: 1,
                text: "hello".into()
            }]
        );
        for count in [1, 2, 1] {
            v.apply(&entry(v1::entry::Kind::Reaction(v1::Reaction {
                msg_id: 2,
                emoji: "👍".into(),
                count,
                ..Default::default()
            })));
        }
        assert_eq!(v.messages[&2].reactions["👍"], 1);
        v.apply(&entry(v1::entry::Kind::Pin(v1::Pin {
            msg_id: 1,
            peer: "bob".into(),
            pinned: true,
            ..Default::default()
        })));
        assert_eq!(v.pinned(&Conversation::Peer("bob".into())), [1]);
        assert_eq!(
            v.messages[&1].conversation("ann"),
            Conversation::Peer("bob".into())
        );
        // The recall drops the message, its pin and the snippet of its quote.
        assert_eq!(
            v.apply(&entry(v1::entry::Kind::Recall(v1::Recall {
                msg_id: 1,
                ..Default::default()
            }))),
            [Change::Recalled { msg_id: 1 }]
        );
        assert!(v.pins.is_empty());
        let q = v.messages[&2].quote.clone().unwrap();
        assert!(q.recalled && q.text.is_empty());
        // Hidden, then arriving again (a sync): stays out.
        v.apply(&entry(v1::entry::Kind::Hide(v1::Hide { msg_ids: vec![2] })));
        assert!(v.messages.is_empty());
        assert!(v.apply(&msg(2, "bob", "ann", "what?")).is_empty());
        // Saved and loaded: the same view.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("view.json");
        v.save(&path).unwrap();
        assert_eq!(ChatView::load(&path, "x").unwrap(), v);
        assert_eq!(
            ChatView::load(&dir.path().join("none"), "ann").unwrap(),
            ChatView::new("ann")
        );
    }

    #[test]
    fn conversation_state_applies_and_clearing_drops_older_messages_for_good() {
        let mut v = ChatView::new("ann");
        v.apply(&msg(1, "ann", "bob", "one"));
        v.apply(&msg(2, "bob", "ann", "two"));
        v.apply(&msg(3, "cy", "ann", "elsewhere"));
        let state = |cleared: u64, archived: bool| {
            entry(v1::entry::Kind::Conv(v1::ConvState {
                peer: "bob".into(),
                archived,
                draft: "later".into(),
                muted_until_ms: -1,
                cleared_before_msg_id: cleared,
                ..Default::default()
            }))
        };
        let bob = Conversation::Peer("bob".into());
        assert_eq!(
            v.apply(&state(0, true)),
            [Change::Conv {
                conversation: bob.clone()
            }]
        );
        let s = v.conv(&bob);
        assert!(s.archived && s.muted(0) && s.draft == "later");
        let ch = v.apply(&state(2, false));
        assert_eq!(
            ch[1],
            Change::Cleared {
                conversation: bob.clone(),
                msg_ids: vec![1, 2]
            }
        );
        assert_eq!(v.messages.keys().copied().collect::<Vec<_>>(), [3]);
        // Synced again: stays out; a newer one comes in.
        assert!(v.apply(&msg(2, "bob", "ann", "two")).is_empty());
        assert_eq!(v.apply(&msg(4, "bob", "ann", "four")).len(), 1);
        // A group's retention, from its log.
        v.apply(&Event::Group {
            group_id: 7,
            entry: v1::GroupEntry {
                kind: Some(v1::group_entry::Kind::Retention(v1::ConvRetention {
                    group_id: 7,
                    retention_secs: 3600,
                    by: "x".into(),
                })),
                ..Default::default()
            },
        });
        assert_eq!(v.conv(&Conversation::Group(7)).retention_secs, 3600);
        // A forwarded message keeps its origin.
        v.apply(&Event::Entry(v1::Entry {
            kind: Some(v1::entry::Kind::Message(v1::Message {
                msg_id: 5,
                from: "bob".into(),
                to: "ann".into(),
                forwarded: Some(Box::new(v1::Forwarded {
                    from: "cy".into(),
                    time_ms: 9,
                })),
                ..Default::default()
            })),
            ..Default::default()
        }));
        assert_eq!(v.messages[&5].forwarded.as_ref().unwrap().from, "cy");
    }
}
