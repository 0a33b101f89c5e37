//! Message operations: edit, reactions, delete-for-me (hide), pins, and the quote of a
//! reply. Each is a change the devices must learn, so each lands as an entry: in both
//! 1:1 parties' inboxes (all their devices) or in the group's log — except a hide, which
//! only the caller's own inbox gets. Every operation may be retried: a repeat (the same
//! text, a reaction already there, a message already hidden or pinned) changes nothing
//! and logs nothing.
//!
//! Who may touch a message is decided once, in [`readable`]: a 1:1 message its two
//! parties, a group message the group's members from their join point on (the same
//! rule as the group's log). What is stored is the store's ([`ferry_store::MsgOpsStore`]).

use std::sync::Arc;

use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::v1::{self, GroupRole};
use ferry_proto::ProtoMessage;
use ferry_store::{
    Logged, MemberRow, MessageEdit, MessageInfo, NewEvent, PinChange, Pinned, Reacted,
    ReactionChange, StoreError,
};

use crate::core::{ok, unix_ms, Core};
use crate::error::LogicError;
use crate::groups::Groups;
use crate::notify::Notifier;

/// The most characters of the quoted text a reply carries.
pub(crate) const QUOTE_CHARS: usize = 200;
/// The most distinct reactions one user holds on one message.
pub(crate) const MAX_REACTIONS_PER_USER: u32 = 20;
/// The most bytes of an emoji (a reaction).
pub(crate) const MAX_EMOJI_BYTES: usize = 32;
/// The most emojis a REACTIONS answer counts.
const MAX_EMOJIS_LISTED: u32 = 100;
/// The most users a REACTIONS page lists, and the default.
const MAX_REACTORS_PAGE: u32 = 100;
const DEFAULT_REACTORS_PAGE: u32 = 50;
/// The most messages one HIDE names.
pub(crate) const MAX_HIDE: usize = 100;
/// The most pinned messages of one conversation.
pub(crate) const MAX_PINS: u32 = 50;

/// Where a message lives.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// A 1:1 message between its sender and its recipient (the same user for a note to
    /// oneself).
    Direct { sender: u64, recipient: u64 },
    /// A group message; `member` is the caller's membership.
    Group { group_id: u64, member: MemberRow },
}

impl Place {
    /// The conversation's key in the store (pins): one per 1:1 pair, one per group.
    pub fn conv(&self) -> String {
        match self {
            Place::Direct { sender, recipient } => {
                format!("u{}-{}", sender.min(recipient), sender.max(recipient))
            }
            Place::Group { group_id, .. } => format!("g{group_id}"),
        }
    }

    /// The 1:1 party who is not `me` (`me` for a note to oneself).
    pub fn peer_of(&self, me: u64) -> Option<u64> {
        match self {
            Place::Direct { sender, recipient } if *sender == me => Some(*recipient),
            Place::Direct { sender, .. } => Some(*sender),
            Place::Group { .. } => None,
        }
    }

    pub fn group_id(&self) -> u64 {
        match self {
            Place::Group { group_id, .. } => *group_id,
            Place::Direct { .. } => 0,
        }
    }
}

/// A message the caller may read, with where it lives.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub info: MessageInfo,
    pub body: v1::Message,
    pub place: Place,
}

fn missing() -> LogicError {
    LogicError::NotFound("no such message".into())
}

fn recalled() -> LogicError {
    LogicError::NotFound("the message was recalled".into())
}

/// The message `msg_id` if `me` may read it: a 1:1 message of which `me` is a party, or
/// a group message of a group `me` belongs to, logged at or after `me`'s join point.
/// Unknown and foreign messages are the same NOT_FOUND (the caller cannot tell them
/// apart); a recalled one is NOT_FOUND "the message was recalled".
pub(crate) async fn readable(core: &Core, me: u64, msg_id: u64) -> Result<Target, LogicError> {
    let info = core.store.message_info(msg_id).await?.ok_or_else(missing)?;
    let Some(mut body) = info.body.clone() else {
        return Err(recalled());
    };
    body.msg_id = msg_id;
    let place = if body.group_id != 0 {
        let member = core
            .store
            .group_member(body.group_id, me)
            .await?
            .ok_or_else(missing)?;
        if info.seq < member.joined_gseq {
            return Err(missing());
        }
        Place::Group {
            group_id: body.group_id,
            member,
        }
    } else {
        let recipient = match core.user_id(&body.to).await {
            Ok(id) => id,
            Err(LogicError::UnknownUser(_)) => return Err(missing()),
            Err(e) => return Err(e),
        };
        if info.sender_id != me && recipient != me {
            return Err(missing());
        }
        Place::Direct {
            sender: info.sender_id,
            recipient,
        }
    };
    Ok(Target { info, body, place })
}

/// The quote a reply carries of `t`: its sender, its text cut to [`QUOTE_CHARS`]
/// characters, and its kind (a media message's kind).
pub(crate) fn quote_of(t: &Target) -> v1::Quote {
    v1::Quote {
        msg_id: t.info.msg_id,
        from: t.body.from.clone(),
        text: t.body.text.chars().take(QUOTE_CHARS).collect(),
        kind: t.body.media.as_ref().map(|m| m.kind).unwrap_or_default(),
        recalled: false,
    }
}

/// Before a reply is stored: the store notes which message it quotes, so that a recall
/// of that message, even one racing the send, empties the quote.
pub(crate) async fn note_reply(
    core: &Core,
    sender: u64,
    m: &v1::Message,
) -> Result<(), LogicError> {
    if let Some(q) = &m.quote {
        core.store
            .note_reply(q.msg_id, sender, m.client_msg_id)
            .await?;
    }
    Ok(())
}

/// After a reply is stored: if the quoted message was recalled meanwhile (after the
/// reply was checked, before it was stored), its quote is emptied now.
pub(crate) async fn recheck_quote(core: &Core, q: &v1::Quote) {
    match core.store.message_info(q.msg_id).await {
        Ok(Some(info)) if info.body.is_some() => {}
        Ok(_) => {
            if let Err(e) = core.store.scrub_quotes(q.msg_id).await {
                tracing::warn!(error = %e, "emptying the quotes of a recalled message failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "checking a quoted message failed"),
    }
}

/// Checks an emoji: 1–32 bytes of UTF-8 (a `String` is), no ASCII control character,
/// no whitespace.
pub(crate) fn check_emoji(e: &str) -> Result<(), LogicError> {
    if e.is_empty() || e.len() > MAX_EMOJI_BYTES {
        return Err(LogicError::InvalidArgument(format!(
            "an emoji is 1-{MAX_EMOJI_BYTES} bytes of UTF-8"
        )));
    }
    if e.chars().any(|c| c.is_ascii_control() || c.is_whitespace()) {
        return Err(LogicError::InvalidArgument(
            "an emoji may not hold control characters or whitespace".into(),
        ));
    }
    Ok(())
}

/// The message operations service.
pub(crate) struct MsgOps {
    core: Arc<Core>,
    notifier: Arc<Notifier>,
    /// A group's log notifies, and membership rules.
    groups: Arc<Groups>,
}

impl MsgOps {
    pub fn new(core: Arc<Core>, notifier: Arc<Notifier>, groups: Arc<Groups>) -> MsgOps {
        MsgOps {
            core,
            notifier,
            groups,
        }
    }

    /// Tells the devices about a change logged for `place`: the group's members online
    /// (the log grew), or each 1:1 party's devices (their inbox grew).
    async fn announce(
        &self,
        place: &Place,
        logged: Logged,
        group: Option<v1::GroupEntry>,
        inbox: Vec<NewEvent>,
    ) {
        if let (Some(gseq), Place::Group { group_id, .. }) = (logged.gseq, place) {
            self.groups.log_notify(*group_id, group, gseq).await;
        }
        for (ev, seq) in inbox.into_iter().zip(logged.seqs) {
            self.notifier.notify_entry(ev.user_id, seq, ev.entry).await;
        }
    }

    /// The entry of a change for `place`: one in the group's log, or one per 1:1 party
    /// (`inbox(party, peer of the party)` builds each).
    fn entries(
        place: &Place,
        group: impl FnOnce() -> v1::group_entry::Kind,
        inbox: impl Fn(u64) -> v1::entry::Kind,
        time_ms: i64,
    ) -> (Option<v1::GroupEntry>, Vec<NewEvent>) {
        match place {
            Place::Group { .. } => (
                Some(v1::GroupEntry {
                    kind: Some(group()),
                    time_ms,
                    ..Default::default()
                }),
                vec![],
            ),
            Place::Direct { sender, recipient } => {
                let mut users = vec![*sender];
                if recipient != sender {
                    users.push(*recipient);
                }
                let events = users
                    .into_iter()
                    .map(|u| NewEvent {
                        user_id: u,
                        entry: v1::Entry {
                            kind: Some(inbox(u)),
                            time_ms,
                            ..Default::default()
                        },
                    })
                    .collect();
                (None, events)
            }
        }
    }

    pub async fn edit(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::EditReq::decode(req.body.clone())?;
        let window = self.core.cfg.edit_window_secs;
        if window == 0 {
            return Err(LogicError::PermissionDenied(
                "editing messages is turned off on this server".into(),
            ));
        }
        let t = readable(&self.core, me.user_id, r.msg_id).await?;
        if t.info.sender_id != me.user_id {
            return Err(LogicError::PermissionDenied(
                "only the sender may edit a message".into(),
            ));
        }
        let mut text = r.text;
        if text.len() > self.core.cfg.max_text_bytes {
            return Err(LogicError::TooLarge(format!(
                "text of {} bytes exceeds the limit of {}",
                text.len(),
                self.core.cfg.max_text_bytes
            )));
        }
        // A media message's caption may be emptied; a text may not.
        if text.trim().is_empty() && t.body.media.is_none() {
            return Err(LogicError::InvalidArgument(
                "a message's text may not be empty".into(),
            ));
        }
        let now = unix_ms();
        if now - t.info.time_ms > i64::from(window) * 1000 {
            return Err(LogicError::PermissionDenied(format!(
                "too late to edit: a message may be edited for {} after it was sent",
                span(window)
            )));
        }
        if text == t.body.text {
            // A retry (or nothing to change): answered, nothing logged.
            return Ok(ok(req.cmd, &v1::Empty {}));
        }
        // The before-send hook screens an edited text as it screens a new one.
        if let Some(hook) = &self.core.before_send {
            let m = v1::Message {
                text: text.clone(),
                edited_ms: now,
                ..t.body.clone()
            };
            if let crate::before::Verdict::Rewrite(new) = hook.check(&m).await? {
                text = new;
            }
        }
        let by = self.core.user_name(me.user_id).await?.to_string();
        let edit = v1::Edit {
            msg_id: r.msg_id,
            group_id: t.place.group_id(),
            text: text.clone(),
            edited_ms: now,
            by,
        };
        let (group, inbox) = Self::entries(
            &t.place,
            || v1::group_entry::Kind::Edit(edit.clone()),
            |_| v1::entry::Kind::Edit(edit.clone()),
            now,
        );
        let logged = self
            .core
            .store
            .edit_message(MessageEdit {
                msg_id: r.msg_id,
                text: text.clone(),
                edited_ms: now,
                group: group.clone().map(|g| (t.place.group_id(), g)),
                inbox: inbox.clone(),
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => recalled(),
                e => e.into(),
            })?;
        if let Some(logged) = logged {
            metrics::counter!("ferry_edits_total").increment(1);
            self.announce(&t.place, logged, group, inbox).await;
            if self.core.hooks.wants("message.edited") {
                self.core
                    .hooks
                    .emit_logged(crate::webhooks::message_edited(&edit, &t.body.text))
                    .await;
            }
        }
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    pub async fn react(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::ReactReq::decode(req.body.clone())?;
        check_emoji(&r.emoji)?;
        let t = readable(&self.core, me.user_id, r.msg_id).await?;
        let by = self.core.user_name(me.user_id).await?.to_string();
        let now = unix_ms();
        let reaction = v1::Reaction {
            msg_id: r.msg_id,
            group_id: t.place.group_id(),
            emoji: r.emoji.clone(),
            by,
            add: r.add,
            // The store writes the count after the change.
            count: 0,
        };
        let (group, inbox) = Self::entries(
            &t.place,
            || v1::group_entry::Kind::Reaction(reaction.clone()),
            |_| v1::entry::Kind::Reaction(reaction.clone()),
            now,
        );
        let done = self
            .core
            .store
            .react(ReactionChange {
                msg_id: r.msg_id,
                user_id: me.user_id,
                emoji: r.emoji,
                add: r.add,
                time_ms: now,
                max_per_user: MAX_REACTIONS_PER_USER,
                group: group.clone().map(|g| (t.place.group_id(), g)),
                inbox: inbox.clone(),
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => recalled(),
                e => e.into(),
            })?;
        match done {
            Reacted::TooMany => Err(LogicError::TooLarge(format!(
                "at most {MAX_REACTIONS_PER_USER} different reactions per user on one message"
            ))),
            Reacted::Unchanged { .. } => Ok(ok(req.cmd, &v1::Empty {})),
            Reacted::Changed { count, logged } => {
                let set = |k: &mut Option<v1::group_entry::Kind>| {
                    if let Some(v1::group_entry::Kind::Reaction(x)) = k {
                        x.count = count;
                    }
                };
                let mut group = group;
                if let Some(g) = &mut group {
                    set(&mut g.kind);
                }
                let mut inbox = inbox;
                for ev in &mut inbox {
                    if let Some(v1::entry::Kind::Reaction(x)) = &mut ev.entry.kind {
                        x.count = count;
                    }
                }
                metrics::counter!("ferry_reactions_total").increment(1);
                self.announce(&t.place, logged, group, inbox).await;
                Ok(ok(req.cmd, &v1::Empty {}))
            }
        }
    }

    pub async fn reactions(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::ReactionsReq::decode(req.body.clone())?;
        readable(&self.core, me.user_id, r.msg_id).await?;
        let counts = self
            .core
            .store
            .reaction_counts(r.msg_id, me.user_id, MAX_EMOJIS_LISTED)
            .await?;
        let mut resp = v1::ReactionsResp {
            counts: counts
                .into_iter()
                .map(|c| v1::ReactionCount {
                    emoji: c.emoji,
                    count: c.count,
                    mine: c.mine,
                })
                .collect(),
            ..Default::default()
        };
        if !r.emoji.is_empty() {
            check_emoji(&r.emoji)?;
            let limit = match r.limit {
                0 => DEFAULT_REACTORS_PAGE,
                n => n.min(MAX_REACTORS_PAGE),
            };
            // One more than the page tells whether another follows.
            let rows = self
                .core
                .store
                .reactors(r.msg_id, &r.emoji, r.after, limit + 1)
                .await?;
            let more = rows.len() > limit as usize;
            for (user, _) in rows.iter().take(limit as usize) {
                // A user deleted meanwhile has left no reactions (their rows went too).
                if let Ok(name) = self.core.user_name(*user).await {
                    resp.users.push(name.to_string());
                }
            }
            if more {
                resp.next_after = rows[limit as usize - 1].0;
            }
        }
        Ok(ok(req.cmd, &resp))
    }

    pub async fn hide(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::HideReq::decode(req.body.clone())?;
        if r.msg_ids.is_empty() {
            return Err(LogicError::InvalidArgument(
                "name at least one message".into(),
            ));
        }
        if r.msg_ids.len() > MAX_HIDE {
            return Err(LogicError::TooLarge(format!(
                "at most {MAX_HIDE} messages at once"
            )));
        }
        let mut ids = Vec::with_capacity(r.msg_ids.len());
        for id in r.msg_ids {
            if ids.contains(&id) {
                continue;
            }
            readable(&self.core, me.user_id, id).await?;
            ids.push(id);
        }
        let entry = v1::Entry {
            kind: Some(v1::entry::Kind::Hide(v1::Hide::default())),
            time_ms: unix_ms(),
            ..Default::default()
        };
        if let Some((seq, new)) = self
            .core
            .store
            .hide_messages(me.user_id, ids, entry.clone())
            .await?
        {
            let entry = v1::Entry {
                kind: Some(v1::entry::Kind::Hide(v1::Hide { msg_ids: new })),
                ..entry
            };
            self.notifier.notify_entry(me.user_id, seq, entry).await;
        }
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    /// The conversation a PIN or PINS names: a 1:1 peer or a group the caller is in.
    async fn conversation(&self, me: u64, peer: &str, group_id: u64) -> Result<Place, LogicError> {
        match (peer.is_empty(), group_id) {
            (true, 0) | (false, 1..) => Err(LogicError::InvalidArgument(
                "name either a peer or a group".into(),
            )),
            (false, 0) => Ok(Place::Direct {
                sender: me,
                recipient: self.core.user_id(peer).await?,
            }),
            (true, g) => {
                let (_, member) = self.groups.membership(g, me).await?;
                Ok(Place::Group {
                    group_id: g,
                    member,
                })
            }
        }
    }

    pub async fn pin(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::PinReq::decode(req.body.clone())?;
        let conv = self.conversation(me.user_id, &r.peer, r.group_id).await?;
        if let Place::Group { member, .. } = &conv {
            if GroupRole::try_from(member.role).unwrap_or(GroupRole::Member) == GroupRole::Member {
                return Err(LogicError::PermissionDenied(
                    "only the group's owner and admins may pin".into(),
                ));
            }
        }
        let t = readable(&self.core, me.user_id, r.msg_id).await?;
        if t.place.conv() != conv.conv() {
            return Err(LogicError::NotFound(
                "no such message in this conversation".into(),
            ));
        }
        let by = self.core.user_name(me.user_id).await?.to_string();
        let now = unix_ms();
        // Each 1:1 party's entry names the other party.
        let mut names = std::collections::HashMap::new();
        if let Place::Direct { sender, recipient } = &t.place {
            for (u, other) in [(*sender, *recipient), (*recipient, *sender)] {
                names.insert(u, self.core.user_name(other).await?.to_string());
            }
        }
        let pin = v1::Pin {
            msg_id: r.msg_id,
            group_id: t.place.group_id(),
            peer: String::new(),
            by,
            pinned: r.pin,
        };
        let (group, inbox) = Self::entries(
            &t.place,
            || v1::group_entry::Kind::Pin(pin.clone()),
            |u| {
                v1::entry::Kind::Pin(v1::Pin {
                    peer: names.get(&u).cloned().unwrap_or_default(),
                    ..pin.clone()
                })
            },
            now,
        );
        let done = self
            .core
            .store
            .pin_message(PinChange {
                conv: t.place.conv(),
                msg_id: r.msg_id,
                by_user_id: me.user_id,
                pin: r.pin,
                time_ms: now,
                max_pins: MAX_PINS,
                group: group.clone().map(|g| (t.place.group_id(), g)),
                inbox: inbox.clone(),
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => recalled(),
                e => e.into(),
            })?;
        match done {
            Pinned::TooMany => Err(LogicError::TooLarge(format!(
                "a conversation holds at most {MAX_PINS} pinned messages; unpin one first"
            ))),
            Pinned::Unchanged => Ok(ok(req.cmd, &v1::Empty {})),
            Pinned::Changed(logged) => {
                self.announce(&t.place, logged, group, inbox).await;
                Ok(ok(req.cmd, &v1::Empty {}))
            }
        }
    }

    pub async fn pins(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::PinsReq::decode(req.body.clone())?;
        let conv = self.conversation(me.user_id, &r.peer, r.group_id).await?;
        let mut resp = v1::PinsResp::default();
        for p in self.core.store.pins(&conv.conv()).await? {
            resp.pins.push(v1::PinnedMessage {
                msg_id: p.msg_id,
                by: self
                    .core
                    .user_name(p.by_user_id)
                    .await
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                time_ms: p.time_ms,
            });
        }
        Ok(ok(req.cmd, &resp))
    }
}

/// A window in words ("48 hours", "90 seconds").
fn span(secs: u32) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emojis_are_checked() {
        for good in ["👍", "🎉", "+1", "👨‍👩‍👧", "x"] {
            assert!(check_emoji(good).is_ok(), "{good}");
        }
        let long = "👍".repeat(9);
        for bad in ["", " ", "a b", "\u{7}", "x\n", "\u{3000}", long.as_str()] {
            assert!(
                matches!(check_emoji(bad), Err(LogicError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_quote_is_cut_on_a_character_boundary() {
        let t = Target {
            info: MessageInfo {
                msg_id: 7,
                sender_id: 1,
                time_ms: 0,
                seq: 1,
                body: None,
            },
            body: v1::Message {
                from: "ann".into(),
                text: "é".repeat(300),
                media: Some(Box::new(v1::MediaRef {
                    kind: v1::MediaKind::MediaImage as i32,
                    ..Default::default()
                })),
                ..Default::default()
            },
            place: Place::Direct {
                sender: 1,
                recipient: 2,
            },
        };
        let q = quote_of(&t);
        assert_eq!(q.text.chars().count(), QUOTE_CHARS);
        assert_eq!(q.text.len(), 2 * QUOTE_CHARS);
        assert_eq!((q.msg_id, q.from.as_str(), q.kind), (7, "ann", 1));
    }

    #[test]
    fn conversations_have_one_key_per_pair_or_group() {
        let a = Place::Direct {
            sender: 9,
            recipient: 3,
        };
        let b = Place::Direct {
            sender: 3,
            recipient: 9,
        };
        assert_eq!(a.conv(), b.conv());
        assert_eq!(a.peer_of(9), Some(3));
        assert_eq!(b.peer_of(9), Some(3));
        assert_eq!(span(172_800), "48 hours");
        assert_eq!(span(90), "90 seconds");
    }

    use crate::config::LogicConfig;
    use crate::testing::{req, World};
    use ferry_proto::cmd;

    fn world(edit_window_secs: u32) -> (World, MsgOps) {
        let w = World::new(LogicConfig {
            open_messaging: true,
            edit_window_secs,
            ..Default::default()
        });
        let ops = MsgOps::new(w.core.clone(), w.notifier.clone(), w.groups.clone());
        (w, ops)
    }

    async fn send(w: &World, from: u64, m: v1::SendMsg) -> Result<v1::SendAck, LogicError> {
        let r = w.inbox.send(&req(cmd::SEND, from, &m)).await?;
        Ok(v1::SendAck::decode(r.body).unwrap())
    }

    fn text(to: &str, t: &str, cmid: u64) -> v1::SendMsg {
        v1::SendMsg {
            to: to.into(),
            text: t.into(),
            client_msg_id: cmid,
            ..Default::default()
        }
    }

    async fn entries(w: &World, user: u64) -> Vec<v1::Entry> {
        w.core.store.inbox(user, 0, 100).await.unwrap().entries
    }

    #[tokio::test]
    async fn an_edit_reaches_both_inboxes_once_and_only_the_sender_may_edit() {
        let (w, ops) = world(60);
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        let ack = send(&w, ann, text("bob", "helo", 1)).await.unwrap();
        let edit = |t: &str| v1::EditReq {
            msg_id: ack.msg_id,
            text: t.into(),
        };
        ops.edit(&req(cmd::EDIT, ann, &edit("hello")))
            .await
            .unwrap();
        // A retry: answered, nothing logged.
        ops.edit(&req(cmd::EDIT, ann, &edit("hello")))
            .await
            .unwrap();
        for user in [ann, bob] {
            let es = entries(&w, user).await;
            assert_eq!(es.len(), 2, "{es:?}");
            let Some(v1::entry::Kind::Message(m)) = &es[0].kind else {
                panic!("{es:?}")
            };
            assert_eq!(m.text, "hello");
            assert!(m.edited_ms > 0);
            assert!(
                matches!(&es[1].kind, Some(v1::entry::Kind::Edit(e)) if e.text == "hello" && e.by == "ann")
            );
        }
        let refused = ops.edit(&req(cmd::EDIT, bob, &edit("hi"))).await;
        assert!(
            matches!(&refused, Err(LogicError::PermissionDenied(m)) if m.contains("only the sender")),
            "{refused:?}"
        );
        let empty = ops.edit(&req(cmd::EDIT, ann, &edit("  "))).await;
        assert!(
            matches!(empty, Err(LogicError::InvalidArgument(_))),
            "{empty:?}"
        );
        let carol = w.user("carol").await;
        let foreign = ops.edit(&req(cmd::EDIT, carol, &edit("x"))).await;
        assert!(
            matches!(foreign, Err(LogicError::NotFound(_))),
            "{foreign:?}"
        );
        // Edits off: refused with the reason.
        let (w2, ops2) = world(0);
        let a2 = w2.user("ann").await;
        w2.user("bob").await;
        let ack2 = send(&w2, a2, text("bob", "x", 1)).await.unwrap();
        let off = ops2
            .edit(&req(
                cmd::EDIT,
                a2,
                &v1::EditReq {
                    msg_id: ack2.msg_id,
                    text: "y".into(),
                },
            ))
            .await;
        assert!(
            matches!(&off, Err(LogicError::PermissionDenied(m)) if m.contains("turned off")),
            "{off:?}"
        );
    }

    #[tokio::test]
    async fn a_reply_quotes_goes_to_the_quoted_conversation_and_loses_its_snippet_on_recall() {
        let (w, _ops) = world(60);
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        let carol = w.user("carol").await;
        let long = "ü".repeat(250);
        let orig = send(&w, ann, text("bob", &long, 1)).await.unwrap();
        // No conversation named: the reply goes to ann, bob's peer there.
        let reply = v1::SendMsg {
            reply_to: orig.msg_id,
            text: "what?".into(),
            client_msg_id: 2,
            ..Default::default()
        };
        let r = send(&w, bob, reply.clone()).await.unwrap();
        let got = w.core.store.message_info(r.msg_id).await.unwrap().unwrap();
        let body = got.body.unwrap();
        assert_eq!(body.to, "ann");
        let q = body.quote.unwrap();
        assert_eq!((q.msg_id, q.from.as_str()), (orig.msg_id, "ann"));
        assert_eq!(q.text.chars().count(), QUOTE_CHARS);
        // Carol is not in that conversation; replying there or elsewhere is refused.
        let foreign = send(
            &w,
            carol,
            v1::SendMsg {
                client_msg_id: 3,
                ..reply.clone()
            },
        )
        .await;
        assert!(
            matches!(foreign, Err(LogicError::NotFound(_))),
            "{foreign:?}"
        );
        let elsewhere = send(
            &w,
            bob,
            v1::SendMsg {
                to: "carol".into(),
                client_msg_id: 4,
                ..reply.clone()
            },
        )
        .await;
        assert!(
            matches!(&elsewhere, Err(LogicError::NotFound(m)) if m.contains("not in this conversation")),
            "{elsewhere:?}"
        );
        // The recall empties the quote on the server.
        w.inbox
            .recall(&req(
                cmd::RECALL,
                ann,
                &v1::RecallReq {
                    msg_id: orig.msg_id,
                },
            ))
            .await
            .unwrap();
        let got = w.core.store.message_info(r.msg_id).await.unwrap().unwrap();
        let q = got.body.unwrap().quote.unwrap();
        assert!(q.recalled && q.text.is_empty(), "{q:?}");
        let late = send(
            &w,
            bob,
            v1::SendMsg {
                client_msg_id: 5,
                ..reply
            },
        )
        .await;
        assert!(
            matches!(&late, Err(LogicError::NotFound(m)) if m.contains("recalled")),
            "{late:?}"
        );
    }

    #[tokio::test]
    async fn reactions_carry_the_count_and_repeats_log_nothing() {
        let (w, ops) = world(60);
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        let ack = send(&w, ann, text("bob", "hi", 1)).await.unwrap();
        let react = |emoji: &str, add: bool| v1::ReactReq {
            msg_id: ack.msg_id,
            emoji: emoji.into(),
            add,
        };
        for (user, add) in [
            (ann, true),
            (bob, true),
            (bob, true),
            (ann, false),
            (ann, false),
        ] {
            ops.react(&req(cmd::REACT, user, &react("👍", add)))
                .await
                .unwrap();
        }
        let counts: Vec<(bool, u32)> = entries(&w, bob)
            .await
            .iter()
            .filter_map(|e| match &e.kind {
                Some(v1::entry::Kind::Reaction(r)) => Some((r.add, r.count)),
                _ => None,
            })
            .collect();
        assert_eq!(counts, [(true, 1), (true, 2), (false, 1)]);
        let bad = ops.react(&req(cmd::REACT, bob, &react("a b", true))).await;
        assert!(
            matches!(bad, Err(LogicError::InvalidArgument(_))),
            "{bad:?}"
        );
        let resp = ops
            .reactions(&req(
                cmd::REACTIONS,
                ann,
                &v1::ReactionsReq {
                    msg_id: ack.msg_id,
                    emoji: "👍".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        let resp = v1::ReactionsResp::decode(resp.body).unwrap();
        assert_eq!(resp.users, ["bob"]);
        assert_eq!(
            (resp.counts[0].count, resp.counts[0].mine, resp.next_after),
            (1, false, 0)
        );
    }
}
