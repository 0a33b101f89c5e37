//! Conversation state (CONV): one user's archive, mark-unread, mute, draft and
//! clear-history of each conversation, synced to all their devices — every change is an
//! `Entry.conv` (the whole state after it) in the user's own inbox, never in anyone
//! else's — and a conversation's own retention, which applies to everyone in it (a 1:1's
//! goes to both parties' inboxes, a group's into its log). Also the forward's check
//! ([`forward_of`]) and the retention pass over conversations with their own retention
//! ([`prune_conversations`]).
//!
//! The mute is the push settings' `PUSH_MODE_MUTED` (one row in the store, read and
//! written through both CONV and push/prefs); this module must not keep a second copy.
//! Who may change what is decided here; what is stored is the store's
//! ([`ferry_store::ConvStore`]).

use std::sync::Arc;

use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::v1::{self, GroupRole};
use ferry_proto::ProtoMessage;
use ferry_store::{ConvChange, ConvDone, ConvKey, ConvRow, NewEvent, RetentionChange, SharedConv};

use crate::core::{ok, unix_ms, Core};
use crate::error::LogicError;
use crate::groups::Groups;
use crate::msgops;
use crate::notify::Notifier;
use crate::push::PushService;

/// The most characters of a draft.
pub(crate) const MAX_DRAFT_CHARS: usize = 4_000;
/// The most conversations one CONV request changes.
pub(crate) const MAX_SETS: usize = 64;
/// The shortest retention a conversation may have, in seconds.
pub(crate) const MIN_RETENTION_SECS: u32 = 60;

/// What a forward copies from the message it forwards.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    pub text: String,
    pub r#type: i32,
    /// The original's media reference, as it was stored (no re-upload).
    pub media: Option<Box<v1::MediaRef>>,
    /// The original's author and time (a forward of a forward keeps the first ones).
    pub forwarded: v1::Forwarded,
}

/// Checks a forward (`r.forward_of`): the message must be one `me` may read (the rule of
/// the message operations, [`msgops::readable`]: a 1:1 of which `me` is a party, a
/// group message from `me`'s join point on) and not recalled; whether `me` hid it does
/// not matter (hiding is `me`'s view, not a loss of the right to read). The request
/// carries neither text nor media of its own, and is not also a reply.
pub(crate) async fn forward_of(
    core: &Core,
    me: u64,
    msg_id: u64,
    r: &v1::SendMsg,
) -> Result<Forward, LogicError> {
    if !r.text.is_empty() || r.media.is_some() {
        return Err(LogicError::InvalidArgument(
            "a forward carries the original's text and media: leave text and media empty".into(),
        ));
    }
    if r.reply_to != 0 {
        return Err(LogicError::InvalidArgument(
            "a message is a reply or a forward, not both".into(),
        ));
    }
    let t = msgops::readable(core, me, msg_id).await?;
    let forwarded = match &t.body.forwarded {
        Some(f) => (**f).clone(),
        None => v1::Forwarded {
            from: t.body.from.clone(),
            time_ms: t.info.time_ms,
        },
    };
    // A system message (the operators') forwarded is the forwarder's text: only the
    // server sends system messages.
    let r#type = match t.body.r#type {
        t if t == v1::MsgType::System as i32 => v1::MsgType::Text as i32,
        t => t,
    };
    Ok(Forward {
        text: t.body.text,
        r#type,
        media: t.body.media,
        forwarded,
    })
}

/// A `ConvSet` checked: the conversation and what changes.
struct Checked {
    key: ConvKey,
    /// The peer's name (empty for a group), as the caller's entry names it.
    peer: String,
    change: ConvChange,
    /// Any of the caller's own fields changes.
    own: bool,
    retention: Option<u32>,
}

/// The conversation service.
pub(crate) struct Conv {
    core: Arc<Core>,
    notifier: Arc<Notifier>,
    /// Membership and roles; a group's log notifies.
    groups: Arc<Groups>,
    /// The mute is push's setting: its cache of settings is told of changes.
    push: Arc<PushService>,
}

impl Conv {
    pub fn new(
        core: Arc<Core>,
        notifier: Arc<Notifier>,
        groups: Arc<Groups>,
        push: Arc<PushService>,
    ) -> Conv {
        Conv {
            core,
            notifier,
            groups,
            push,
        }
    }

    /// The conversation a `ConvSet` (or a read) names: a known peer, or a group the
    /// caller is a member of.
    async fn key(&self, me: u64, peer: &str, group_id: u64) -> Result<ConvKey, LogicError> {
        match (peer.is_empty(), group_id) {
            (false, 0) => Ok(ConvKey::direct(self.core.user_id(peer).await?)),
            (true, g) if g != 0 => {
                self.groups.membership(g, me).await?;
                Ok(ConvKey::group(g))
            }
            _ => Err(LogicError::InvalidArgument(
                "each conversation names a peer or a group, not both".into(),
            )),
        }
    }

    async fn check(&self, me: u64, s: &v1::ConvSet, now: i64) -> Result<Checked, LogicError> {
        let key = self.key(me, &s.peer, s.group_id).await?;
        if let Some(m) = s.muted_until_ms {
            if m < -1 {
                return Err(LogicError::InvalidArgument(
                    "muted_until_ms: 0 (unmute), -1 (until unmuted) or a unix ms".into(),
                ));
            }
        }
        if let Some(d) = &s.draft {
            let n = d.chars().count();
            if n > MAX_DRAFT_CHARS {
                return Err(LogicError::TooLarge(format!(
                    "a draft of {n} characters exceeds the limit of {MAX_DRAFT_CHARS}"
                )));
            }
        }
        if let Some(secs) = s.retention_secs {
            if secs != 0 && secs < MIN_RETENTION_SECS {
                return Err(LogicError::InvalidArgument(format!(
                    "retention_secs: 0 (none) or at least {MIN_RETENTION_SECS}"
                )));
            }
            if key.group_id != 0 {
                let (_, member) = self.groups.membership(key.group_id, me).await?;
                if GroupRole::try_from(member.role).unwrap_or(GroupRole::Member)
                    == GroupRole::Member
                {
                    return Err(LogicError::PermissionDenied(
                        "only the group's owner and admins may set its retention".into(),
                    ));
                }
            } else if key.peer == me {
                return Err(LogicError::InvalidArgument(
                    "notes to oneself have no retention of their own".into(),
                ));
            }
        }
        let own = s.archived.is_some()
            || s.unread.is_some()
            || s.muted_until_ms.is_some()
            || s.draft.is_some()
            || s.clear;
        Ok(Checked {
            key,
            peer: s.peer.clone(),
            change: ConvChange {
                user_id: me,
                key,
                archived: s.archived,
                unread: s.unread,
                muted_until_ms: s.muted_until_ms,
                draft: s.draft.clone(),
                clear: s.clear,
                time_ms: now,
                log_anyway: false,
                entry: entry(&s.peer, key.group_id, now),
            },
            own,
            retention: s.retention_secs,
        })
    }

    /// CONV: applies the changes (every one checked first: one refused, none applied)
    /// and answers with every conversation the caller has a state for.
    pub async fn conv(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::ConvReq::decode(req.body.clone())?;
        if r.set.len() > MAX_SETS {
            return Err(LogicError::TooLarge(format!(
                "at most {MAX_SETS} conversations in one request"
            )));
        }
        let now = unix_ms();
        let mut checked = Vec::with_capacity(r.set.len());
        for s in &r.set {
            checked.push(self.check(me.user_id, s, now).await?);
        }
        for c in checked {
            if c.own {
                self.set(c.change).await?;
            }
            if let Some(secs) = c.retention {
                self.set_retention(me.user_id, c.key, &c.peer, secs, now)
                    .await?;
            }
        }
        self.push.forget_prefs(me.user_id);
        let mut conversations = Vec::new();
        for row in self.core.store.conv_states(me.user_id, now).await? {
            conversations.push(self.view(&row).await?);
        }
        Ok(ok(req.cmd, &v1::ConvResp { conversations }))
    }

    /// A state as the caller sees it (the peer by name).
    async fn view(&self, row: &ConvRow) -> Result<v1::ConvState, LogicError> {
        let peer = match row.key.peer {
            0 => String::new(),
            id => self.core.user_name(id).await?.to_string(),
        };
        Ok(row.to_proto(&peer))
    }

    /// Applies one user's change and tells their devices.
    async fn set(&self, change: ConvChange) -> Result<(), LogicError> {
        let user = change.user_id;
        if let ConvDone::Changed { seq, entry, .. } = self.core.store.set_conv(change).await? {
            metrics::counter!("ferry_conv_changes_total").increment(1);
            self.notifier.notify_entry(user, seq, *entry).await;
        }
        Ok(())
    }

    async fn set_retention(
        &self,
        me: u64,
        key: ConvKey,
        peer: &str,
        secs: u32,
        now: i64,
    ) -> Result<(), LogicError> {
        let by = self.core.user_name(me).await?.to_string();
        let change = if key.group_id != 0 {
            RetentionChange {
                conv: SharedConv::Group(key.group_id),
                retention_secs: secs,
                by_user_id: me,
                time_ms: now,
                group: Some((
                    key.group_id,
                    v1::GroupEntry {
                        kind: Some(v1::group_entry::Kind::Retention(v1::ConvRetention {
                            group_id: key.group_id,
                            retention_secs: secs,
                            by,
                        })),
                        time_ms: now,
                        ..Default::default()
                    },
                )),
                inbox: vec![],
            }
        } else {
            // Each party's entry names the other party.
            RetentionChange {
                conv: SharedConv::direct(me, key.peer),
                retention_secs: secs,
                by_user_id: me,
                time_ms: now,
                group: None,
                inbox: vec![
                    (
                        key,
                        NewEvent {
                            user_id: me,
                            entry: entry(peer, 0, now),
                        },
                    ),
                    (
                        ConvKey::direct(me),
                        NewEvent {
                            user_id: key.peer,
                            entry: entry(&by, 0, now),
                        },
                    ),
                ],
            }
        };
        let group = change.group.clone();
        let Some((logged, events)) = self.core.store.set_retention(change).await? else {
            return Ok(());
        };
        if let (Some(gseq), Some((g, e))) = (logged.gseq, group) {
            self.groups.log_notify(g, Some(e), gseq).await;
        }
        for (ev, seq) in events.into_iter().zip(logged.seqs) {
            self.notifier.notify_entry(ev.user_id, seq, ev.entry).await;
        }
        Ok(())
    }

    /// After a READ of the caller's: reading a conversation clears its mark-unread (an
    /// entry only when it was set). A failure here does not fail the read.
    pub async fn read(&self, req: &BusRequest) {
        let Ok(me) = self.core.caller(req).await else {
            return;
        };
        let Ok(r) = v1::ReadReq::decode(req.body.clone()) else {
            return;
        };
        let (key, peer) = if r.group_id != 0 {
            (ConvKey::group(r.group_id), String::new())
        } else {
            match self.core.user_id(&r.peer).await {
                Ok(id) => (ConvKey::direct(id), r.peer.clone()),
                Err(_) => return,
            }
        };
        let now = unix_ms();
        match self.core.store.conv_state(me.user_id, key, now).await {
            Ok(s) if s.unread => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "reading a conversation's state failed");
                return;
            }
        }
        let change = ConvChange {
            user_id: me.user_id,
            key,
            unread: Some(false),
            time_ms: now,
            entry: entry(&peer, key.group_id, now),
            ..Default::default()
        };
        if let Err(e) = self.set(change).await {
            tracing::warn!(error = %e, "clearing a conversation's unread mark failed");
        }
    }

    /// After push/prefs changed the caller's settings of `keys` (`before`: their mutes
    /// before): each conversation whose mute changed is logged, so the caller's other
    /// devices learn it as if it had been set through CONV.
    pub async fn mutes_changed(
        &self,
        user: u64,
        before: Vec<(ConvKey, String, i64)>,
    ) -> Result<(), LogicError> {
        let now = unix_ms();
        for (key, peer, was) in before {
            let row = self.core.store.conv_state(user, key, now).await?;
            if row.muted_until_ms == was {
                continue;
            }
            self.set(ConvChange {
                user_id: user,
                key,
                time_ms: now,
                log_anyway: true,
                entry: entry(&peer, key.group_id, now),
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// The mutes of the conversations a push/prefs request names, before it applies.
    pub async fn mutes_before(
        &self,
        user: u64,
        set: &[v1::ConversationPush],
    ) -> Result<Vec<(ConvKey, String, i64)>, LogicError> {
        let now = unix_ms();
        let mut out = Vec::with_capacity(set.len());
        for c in set {
            let key = match (c.peer.is_empty(), c.group_id) {
                (false, 0) => ConvKey::direct(self.core.user_id(&c.peer).await?),
                (true, g) if g != 0 => ConvKey::group(g),
                // push/prefs refuses it itself.
                _ => continue,
            };
            let row = self.core.store.conv_state(user, key, now).await?;
            out.push((key, c.peer.clone(), row.muted_until_ms));
        }
        Ok(out)
    }
}

/// An `Entry.conv` for the store to fill with the state after a change.
fn entry(peer: &str, group_id: u64, now: i64) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Conv(v1::ConvState {
            peer: peer.to_owned(),
            group_id,
            ..Default::default()
        })),
        time_ms: now,
        ..Default::default()
    }
}

/// Drops from a group's log page, for a member who cleared its history below
/// `cleared`, the messages at or below it (their places stay, without content, as a
/// recalled or pruned message's), and the edits, reactions and pins of those messages.
pub(crate) fn drop_cleared(entries: &mut [v1::GroupEntry], cleared: u64) {
    if cleared == 0 {
        return;
    }
    use v1::group_entry::Kind;
    for e in entries {
        let id = match &e.kind {
            Some(Kind::Message(m)) => m.msg_id,
            Some(Kind::Edit(x)) => x.msg_id,
            Some(Kind::Reaction(x)) => x.msg_id,
            Some(Kind::Pin(x)) => x.msg_id,
            _ => continue,
        };
        if id != 0 && id <= cleared {
            e.kind = None;
        }
    }
}

/// One pass of the retention of conversations with their own: for each, the messages
/// older than its retention at `now_ms` are deleted (with their operations), and the
/// media they referred to that no other message refers to any more. Returns how many
/// messages went. `now_ms` is handed in, so tests run it at a chosen time.
pub(crate) async fn prune_conversations(core: &Core, now_ms: i64) -> Result<u64, LogicError> {
    let mut total = 0;
    for (conv, secs) in core.store.retentions().await? {
        let cutoff = now_ms - i64::from(secs) * 1000;
        let pruned = core.store.prune_conversation(conv, cutoff).await?;
        total += pruned.messages;
        let Some(media) = core.media_store() else {
            continue;
        };
        for id in pruned.media {
            let meta = match media.meta(&id).await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, media = %id, "reading a pruned message's media failed");
                    continue;
                }
            };
            // A moment may show it too; then it stays.
            if !meta.grant_moments.is_empty() {
                continue;
            }
            if core.store.media_referenced(&id, meta.created_ms).await? {
                continue;
            }
            match media.delete(&id).await {
                Ok(_) => metrics::counter!("ferry_media_pruned_total").increment(1),
                Err(e) => tracing::warn!(error = %e, media = %id, "deleting pruned media failed"),
            }
        }
    }
    if total > 0 {
        metrics::counter!("ferry_conv_pruned_total").increment(total);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::{req, World};
    use ferry_proto::cmd;

    fn world() -> (World, Conv) {
        let w = World::new(LogicConfig {
            open_messaging: true,
            ..Default::default()
        });
        let c = Conv::new(
            w.core.clone(),
            w.notifier.clone(),
            w.groups.clone(),
            w.push.clone(),
        );
        (w, c)
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

    async fn conv(c: &Conv, user: u64, set: Vec<v1::ConvSet>) -> Result<v1::ConvResp, LogicError> {
        let r = c.conv(&req(cmd::CONV, user, &v1::ConvReq { set })).await?;
        Ok(v1::ConvResp::decode(r.body).unwrap())
    }

    fn peer(p: &str) -> v1::ConvSet {
        v1::ConvSet {
            peer: p.into(),
            ..Default::default()
        }
    }

    async fn states(w: &World, user: u64) -> Vec<v1::ConvState> {
        w.core
            .store
            .inbox(user, 0, 100)
            .await
            .unwrap()
            .entries
            .into_iter()
            .filter_map(|e| match e.kind {
                Some(v1::entry::Kind::Conv(c)) => Some(c),
                _ => None,
            })
            .collect()
    }

    async fn group(w: &World, owner: u64, members: &[&str]) -> u64 {
        let create = v1::GroupCreateReq {
            name: "crew".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            share_history: false,
        };
        let resp = w
            .groups
            .create(&req(cmd::GROUP_CREATE, owner, &create))
            .await
            .unwrap();
        v1::GroupResp::decode(resp.body)
            .unwrap()
            .group
            .unwrap()
            .group_id
    }

    #[tokio::test]
    async fn a_change_lands_in_the_callers_inbox_only_and_bad_ones_are_refused() {
        let (w, c) = world();
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        let resp = conv(
            &c,
            ann,
            vec![v1::ConvSet {
                archived: Some(true),
                draft: Some("see you at".into()),
                ..peer("bob")
            }],
        )
        .await
        .unwrap();
        assert_eq!(resp.conversations.len(), 1);
        let s = &resp.conversations[0];
        assert_eq!(
            (s.peer.as_str(), s.archived, s.draft.as_str()),
            ("bob", true, "see you at")
        );
        assert!(s.draft_ms > 0);
        let logged = states(&w, ann).await;
        assert_eq!(logged, std::slice::from_ref(s));
        assert!(states(&w, bob).await.is_empty());
        // The same again: nothing new logged; an empty request reads.
        conv(
            &c,
            ann,
            vec![v1::ConvSet {
                archived: Some(true),
                ..peer("bob")
            }],
        )
        .await
        .unwrap();
        assert_eq!(states(&w, ann).await.len(), 1);
        assert_eq!(conv(&c, ann, vec![]).await.unwrap().conversations.len(), 1);

        let refused = |set: v1::ConvSet| {
            let c = &c;
            async move { conv(c, ann, vec![set]).await.unwrap_err() }
        };
        assert!(matches!(
            refused(peer("nobody")).await,
            LogicError::UnknownUser(_)
        ));
        assert!(matches!(
            refused(v1::ConvSet {
                group_id: 9,
                ..peer("bob")
            })
            .await,
            LogicError::InvalidArgument(_)
        ));
        assert!(matches!(
            refused(v1::ConvSet::default()).await,
            LogicError::InvalidArgument(_)
        ));
        assert!(matches!(
            refused(v1::ConvSet {
                group_id: 9,
                ..Default::default()
            })
            .await,
            LogicError::NotFound(_)
        ));
        let long = "é".repeat(MAX_DRAFT_CHARS + 1);
        assert!(matches!(
            refused(v1::ConvSet {
                draft: Some(long),
                ..peer("bob")
            })
            .await,
            LogicError::TooLarge(_)
        ));
        // Exactly at the limit (in characters, not bytes) is fine.
        conv(
            &c,
            ann,
            vec![v1::ConvSet {
                draft: Some("é".repeat(MAX_DRAFT_CHARS)),
                ..peer("bob")
            }],
        )
        .await
        .unwrap();
        assert!(matches!(
            refused(v1::ConvSet {
                muted_until_ms: Some(-2),
                ..peer("bob")
            })
            .await,
            LogicError::InvalidArgument(_)
        ));
        assert!(matches!(
            refused(v1::ConvSet {
                retention_secs: Some(59),
                ..peer("bob")
            })
            .await,
            LogicError::InvalidArgument(_)
        ));
        assert!(matches!(
            refused(v1::ConvSet {
                retention_secs: Some(3600),
                ..peer("ann")
            })
            .await,
            LogicError::InvalidArgument(_)
        ));
        let many = (0..=MAX_SETS).map(|_| peer("bob")).collect();
        assert!(matches!(
            conv(&c, ann, many).await.unwrap_err(),
            LogicError::TooLarge(_)
        ));
        // One refused, none applied.
        let before = states(&w, ann).await.len();
        let mixed = conv(
            &c,
            ann,
            vec![
                v1::ConvSet {
                    unread: Some(true),
                    ..peer("bob")
                },
                peer("nobody"),
            ],
        )
        .await;
        assert!(mixed.is_err());
        assert_eq!(states(&w, ann).await.len(), before);
    }

    #[tokio::test]
    async fn the_mute_is_the_push_setting_both_ways_and_reading_clears_unread() {
        let (w, c) = world();
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        conv(
            &c,
            ann,
            vec![v1::ConvSet {
                muted_until_ms: Some(-1),
                unread: Some(true),
                ..peer("bob")
            }],
        )
        .await
        .unwrap();
        let prefs = w
            .push
            .prefs(&req(cmd::PUSH_PREFS, ann, &v1::PushPrefsReq::default()))
            .await
            .unwrap();
        let prefs = v1::PushPrefsResp::decode(prefs.body).unwrap();
        assert_eq!(prefs.conversations.len(), 1);
        assert_eq!(
            (
                prefs.conversations[0].peer.as_str(),
                prefs.conversations[0].mode,
                prefs.conversations[0].until_ms
            ),
            ("bob", v1::PushMode::Muted as i32, 0)
        );
        // Unmuted through push/prefs: CONV shows it, and the change is logged.
        let set = vec![v1::ConversationPush {
            peer: "bob".into(),
            mode: v1::PushMode::Default as i32,
            ..Default::default()
        }];
        let before = c.mutes_before(ann, &set).await.unwrap();
        w.push
            .prefs(&req(
                cmd::PUSH_PREFS,
                ann,
                &v1::PushPrefsReq { set: set.clone() },
            ))
            .await
            .unwrap();
        c.mutes_changed(ann, before).await.unwrap();
        let logged = states(&w, ann).await;
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert_eq!(logged[1].muted_until_ms, 0);
        assert!(logged[1].unread);
        // Reading bob's message clears the mark (one entry), reading again logs nothing.
        let ack = send(&w, bob, text("ann", "hi", 1)).await.unwrap();
        let read = v1::ReadReq {
            peer: "bob".into(),
            msg_id: ack.msg_id,
            ..Default::default()
        };
        c.read(&req(cmd::READ, ann, &read)).await;
        c.read(&req(cmd::READ, ann, &read)).await;
        let logged = states(&w, ann).await;
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert!(!logged[2].unread);
    }

    #[tokio::test]
    async fn retention_goes_to_both_parties_or_the_groups_log_and_admins_only() {
        let (w, c) = world();
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.user("cy").await;
        conv(
            &c,
            bob,
            vec![v1::ConvSet {
                retention_secs: Some(3600),
                ..peer("ann")
            }],
        )
        .await
        .unwrap();
        let (a, b) = (states(&w, ann).await, states(&w, bob).await);
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!((a[0].peer.as_str(), a[0].retention_secs), ("bob", 3600));
        assert_eq!((b[0].peer.as_str(), b[0].retention_secs), ("ann", 3600));
        let g = group(&w, ann, &["bob", "cy"]).await;
        let set = v1::ConvSet {
            group_id: g,
            retention_secs: Some(86_400),
            ..Default::default()
        };
        let refused = conv(&c, bob, vec![set.clone()]).await.unwrap_err();
        assert!(
            matches!(&refused, LogicError::PermissionDenied(m) if m.contains("owner and admins")),
            "{refused:?}"
        );
        let resp = conv(&c, ann, vec![set]).await.unwrap();
        assert!(resp
            .conversations
            .iter()
            .any(|s| s.group_id == g && s.retention_secs == 86_400));
        let (log, _, _) = w.core.store.group_log(g, 0, 100).await.unwrap();
        assert!(log.iter().any(|e| matches!(
            &e.kind,
            Some(v1::group_entry::Kind::Retention(r)) if r.retention_secs == 86_400 && r.by == "ann"
        )));
        // bob, a member, sees it in his list.
        let mine = conv(&c, bob, vec![]).await.unwrap();
        assert!(mine
            .conversations
            .iter()
            .any(|s| s.group_id == g && s.retention_secs == 86_400));
    }

    #[tokio::test]
    async fn a_forward_copies_text_and_origin_and_refuses_foreign_or_recalled() {
        let (w, _c) = world();
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        let (cy, dee) = (w.user("cy").await, w.user("dee").await);
        let orig = send(&w, ann, text("bob", "the plan", 1)).await.unwrap();
        let fwd = |to: &str, of: u64, cmid: u64| v1::SendMsg {
            to: to.into(),
            forward_of: of,
            client_msg_id: cmid,
            ..Default::default()
        };
        let ack = send(&w, bob, fwd("cy", orig.msg_id, 2)).await.unwrap();
        let got = w
            .core
            .store
            .message_info(ack.msg_id)
            .await
            .unwrap()
            .unwrap();
        let body = got.body.unwrap();
        assert_eq!(
            (body.text.as_str(), body.from.as_str()),
            ("the plan", "bob")
        );
        let f = body.forwarded.unwrap();
        assert_eq!(f.from, "ann");
        assert!(f.time_ms > 0);
        // Forwarded again by cy: the first author stays.
        let again = send(&w, cy, fwd("dee", ack.msg_id, 3)).await.unwrap();
        let body = w
            .core
            .store
            .message_info(again.msg_id)
            .await
            .unwrap()
            .unwrap()
            .body
            .unwrap();
        assert_eq!(body.forwarded.unwrap().from, "ann");
        // dee cannot forward ann and bob's message.
        let foreign = send(&w, dee, fwd("ann", orig.msg_id, 4)).await;
        assert!(
            matches!(foreign, Err(LogicError::NotFound(_))),
            "{foreign:?}"
        );
        // Text of one's own, or a reply too: refused.
        let with_text = send(
            &w,
            bob,
            v1::SendMsg {
                text: "look".into(),
                ..fwd("cy", orig.msg_id, 5)
            },
        )
        .await;
        assert!(matches!(with_text, Err(LogicError::InvalidArgument(_))));
        let both = send(
            &w,
            bob,
            v1::SendMsg {
                reply_to: orig.msg_id,
                ..fwd("cy", orig.msg_id, 6)
            },
        )
        .await;
        assert!(matches!(both, Err(LogicError::InvalidArgument(_))));
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
        let late = send(&w, bob, fwd("cy", orig.msg_id, 7)).await;
        assert!(
            matches!(&late, Err(LogicError::NotFound(m)) if m.contains("recalled")),
            "{late:?}"
        );
        // A system message forwarded is an ordinary text of the forwarder's.
        let sys = w
            .core
            .store
            .append_message(ferry_store::NewMessage {
                sender_id: ann,
                recipient_id: bob,
                client_msg_id: 77,
                time_ms: unix_ms(),
                message: v1::Message {
                    from: "system".into(),
                    to: "bob".into(),
                    text: "maintenance at 9".into(),
                    r#type: v1::MsgType::System as i32,
                    ..Default::default()
                },
            })
            .await
            .unwrap();
        let relayed = send(&w, bob, fwd("cy", sys.msg_id, 10)).await.unwrap();
        let body = w
            .core
            .store
            .message_info(relayed.msg_id)
            .await
            .unwrap()
            .unwrap()
            .body
            .unwrap();
        assert_eq!(body.r#type, v1::MsgType::Text as i32);
        assert_eq!(body.forwarded.unwrap().from, "system");
        // Into a group the forwarder belongs to.
        let g = group(&w, bob, &["cy"]).await;
        let other = send(&w, ann, text("bob", "again", 8)).await.unwrap();
        let into = send(
            &w,
            bob,
            v1::SendMsg {
                to: String::new(),
                group_id: g,
                ..fwd("", other.msg_id, 9)
            },
        )
        .await
        .unwrap();
        let body = w
            .core
            .store
            .message_info(into.msg_id)
            .await
            .unwrap()
            .unwrap()
            .body
            .unwrap();
        assert_eq!(
            (
                body.group_id,
                body.text.as_str(),
                body.forwarded.unwrap().from.as_str()
            ),
            (g, "again", "ann")
        );
    }

    #[tokio::test]
    async fn a_conversations_retention_prunes_its_old_messages_at_a_chosen_time() {
        let (w, c) = world();
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        w.user("cy").await;
        let kept_elsewhere = send(&w, ann, text("cy", "keep", 1)).await.unwrap();
        let doomed = send(&w, ann, text("bob", "old", 2)).await.unwrap();
        crate::msgops::MsgOps::new(w.core.clone(), w.notifier.clone(), w.groups.clone())
            .react(&req(
                cmd::REACT,
                bob,
                &v1::ReactReq {
                    msg_id: doomed.msg_id,
                    emoji: "👍".into(),
                    add: true,
                },
            ))
            .await
            .unwrap();
        conv(
            &c,
            ann,
            vec![v1::ConvSet {
                retention_secs: Some(60),
                ..peer("bob")
            }],
        )
        .await
        .unwrap();
        // Now: nothing is a minute old yet.
        assert_eq!(prune_conversations(&w.core, unix_ms()).await.unwrap(), 0);
        // Two minutes on: the pair's message goes, with its reaction; cy's stays.
        let later = unix_ms() + 120_000;
        assert_eq!(prune_conversations(&w.core, later).await.unwrap(), 1);
        assert!(w
            .core
            .store
            .message_info(doomed.msg_id)
            .await
            .unwrap()
            .is_none());
        assert!(w
            .core
            .store
            .reaction_counts(doomed.msg_id, bob, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(w
            .core
            .store
            .message_info(kept_elsewhere.msg_id)
            .await
            .unwrap()
            .is_some());
    }

    #[test]
    fn cleared_messages_leave_a_group_page_their_places_stay() {
        let msg = |id: u64| v1::GroupEntry {
            gseq: id,
            kind: Some(v1::group_entry::Kind::Message(v1::Message {
                msg_id: id,
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut page = vec![
            msg(3),
            v1::GroupEntry {
                gseq: 4,
                kind: Some(v1::group_entry::Kind::Reaction(v1::Reaction {
                    msg_id: 3,
                    ..Default::default()
                })),
                ..Default::default()
            },
            v1::GroupEntry {
                gseq: 5,
                kind: Some(v1::group_entry::Kind::Event(v1::GroupEvent::default())),
                ..Default::default()
            },
            msg(6),
        ];
        drop_cleared(&mut page, 0);
        assert!(page.iter().all(|e| e.kind.is_some()));
        drop_cleared(&mut page, 3);
        let kept: Vec<(u64, bool)> = page.iter().map(|e| (e.gseq, e.kind.is_some())).collect();
        assert_eq!(kept, [(3, false), (4, false), (5, true), (6, true)]);
    }
}
