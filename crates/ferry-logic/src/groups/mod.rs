//! Groups: one log per group (per-group seq, the same order for every member), read from
//! each member's join point; membership changes also land in the affected users' inboxes.
//! The group side of recall and read receipts lives here too (the inbox hands group
//! messages over). The fan-out to members online is in [`feed`]. See docs/groups.md for
//! the design.

mod feed;

use std::collections::HashSet;
use std::sync::Arc;

use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::v1::{self, group_event::Kind as K, GroupRole};
use ferry_proto::{cmd, ProtoMessage};
use ferry_store::{GroupChange, GroupRow, MemberRow, NewEvent, NewMessage, StoreError};

use crate::attach::Attachments;
use crate::core::{ok, unix_ms, Core, DeviceSession};
use crate::error::LogicError;
use crate::friends::Friends;
use crate::notify::Notifier;
use crate::push::PushService;
use feed::Fanout;

const MAX_GROUP_NAME: usize = 64;
const MAX_ANNOUNCEMENT: usize = 4096;
const MAX_MENTIONS: usize = 50;

fn event(kind: K, group: u64, users: Vec<String>, by: &str, text: &str) -> v1::GroupEvent {
    v1::GroupEvent {
        kind: kind as i32,
        group_id: group,
        users,
        by: by.to_owned(),
        text: text.to_owned(),
    }
}

fn log_entry(ev: v1::GroupEvent, time_ms: i64) -> v1::GroupEntry {
    v1::GroupEntry {
        kind: Some(v1::group_entry::Kind::Event(ev)),
        time_ms,
        ..Default::default()
    }
}

fn inbox_entry(ev: v1::GroupEvent, time_ms: i64) -> v1::Entry {
    v1::Entry {
        kind: Some(v1::entry::Kind::Group(ev)),
        time_ms,
        ..Default::default()
    }
}

fn role_of(m: &MemberRow) -> GroupRole {
    GroupRole::try_from(m.role).unwrap_or(GroupRole::Member)
}

fn gone() -> LogicError {
    LogicError::NotFound("no such group".into())
}

/// The groups service.
pub(crate) struct Groups {
    core: Arc<Core>,
    /// Tells the users whose inbox a membership change reaches.
    notifier: Arc<Notifier>,
    /// With friends-only messaging, only friends may be put into a group.
    friends: Arc<Friends>,
    /// Checks and grants the media a group message refers to.
    attach: Arc<Attachments>,
    /// Member lists and the coalesced notifies to members online.
    fanout: Arc<Fanout>,
    /// Wakes members' devices that have no live link.
    push: Arc<PushService>,
}

impl Groups {
    pub fn new(
        core: Arc<Core>,
        notifier: Arc<Notifier>,
        friends: Arc<Friends>,
        attach: Arc<Attachments>,
        push: Arc<PushService>,
    ) -> Groups {
        Groups {
            fanout: Arc::new(Fanout::new(core.clone(), notifier.clone())),
            core,
            notifier,
            friends,
            attach,
            push,
        }
    }

    /// The caller's membership, or NOT_FOUND (a non-member cannot tell whether the group
    /// exists).
    pub(crate) async fn membership(
        &self,
        group: u64,
        user: u64,
    ) -> Result<(GroupRow, MemberRow), LogicError> {
        let m = self
            .core
            .store
            .group_member(group, user)
            .await?
            .ok_or_else(gone)?;
        let g = self.core.store.group(group).await?.ok_or_else(gone)?;
        Ok((g, m))
    }

    async fn require_admin(
        &self,
        group: u64,
        user: u64,
    ) -> Result<(GroupRow, MemberRow), LogicError> {
        let (g, m) = self.membership(group, user).await?;
        if role_of(&m) == GroupRole::Member {
            return Err(LogicError::PermissionDenied(
                "only the group's owner and admins may do that".into(),
            ));
        }
        Ok((g, m))
    }

    /// Resolves user names; with friends-only messaging, only the caller's friends may
    /// be put into a group by them — and bots, which are open to everyone (a bot puts
    /// anyone in; anyone puts a bot in), as they are to messages.
    async fn resolve_members(
        &self,
        me: u64,
        names: &[String],
    ) -> Result<Vec<(u64, String)>, LogicError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let id = self.core.user_id(name).await?;
            if id == me || !seen.insert(id) {
                continue;
            }
            if !self.core.cfg.open_messaging
                && !self.friends.are_friends(me, id).await?
                && !self.core.store.is_bot(me).await?
                && !self.core.store.is_bot(id).await?
            {
                return Err(LogicError::PermissionDenied(format!(
                    "{name} is not your friend; only friends can be added"
                )));
            }
            out.push((id, name.clone()));
        }
        Ok(out)
    }

    async fn group_view(
        &self,
        g: &GroupRow,
        m: &MemberRow,
        with_members: bool,
    ) -> Result<v1::Group, LogicError> {
        let mut out = v1::Group {
            group_id: g.id,
            name: g.name.clone(),
            announcement: g.announcement.clone(),
            owner: self.core.user_name(g.owner_id).await?.to_string(),
            latest_gseq: g.latest_gseq,
            share_history: g.share_history,
            joined_gseq: m.joined_gseq,
            ..Default::default()
        };
        if with_members {
            let members = self.core.store.group_members(g.id).await?;
            out.member_count = members.len() as u32;
            for mm in members {
                out.members.push(v1::GroupMember {
                    username: self.core.user_name(mm.user_id).await?.to_string(),
                    role: mm.role,
                });
            }
        } else {
            out.member_count = self.fanout.member_ids(g.id).await?.len() as u32;
        }
        Ok(out)
    }

    async fn group_resp(
        &self,
        req_cmd: u32,
        group: u64,
        me: u64,
    ) -> Result<BusResponse, LogicError> {
        let (g, m) = self.membership(group, me).await?;
        Ok(ok(
            req_cmd,
            &v1::GroupResp {
                group: Some(self.group_view(&g, &m, true).await?),
            },
        ))
    }

    /// Applies a change, then tells the affected users' inboxes and every member.
    async fn apply_group_change(
        &self,
        change: GroupChange,
        removed: &[u64],
    ) -> Result<u64, LogicError> {
        let group = change.group_id;
        let entry = change.event.clone();
        let inbox = change.inbox.clone();
        self.fanout.drain(group).await;
        let gseq = self
            .core
            .store
            .change_group(change)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => gone(),
                e => e.into(),
            })?;
        self.fanout.forget_members(group);
        for ev in inbox {
            if let Ok(seq) = self.core.store.latest_seq(ev.user_id).await {
                self.notifier.notify_entry(ev.user_id, seq, ev.entry).await;
            }
        }
        self.fanout.notify(group, Some(entry), gseq, removed).await;
        Ok(gseq)
    }

    pub async fn create(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupCreateReq::decode(req.body.clone())?;
        let name = r.name.trim().to_owned();
        if name.is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(LogicError::InvalidArgument(format!(
                "a group name is 1-{MAX_GROUP_NAME} bytes"
            )));
        }
        let members = self.resolve_members(me.user_id, &r.members).await?;
        if members.len() + 1 > self.core.cfg.group_max_members {
            return Err(LogicError::TooLarge(format!(
                "a group has at most {} members",
                self.core.cfg.group_max_members
            )));
        }
        let my_name = self.core.user_name(me.user_id).await?;
        let time_ms = unix_ms();
        let id = (rand::random::<u64>() >> 1).max(1);
        let mut all: Vec<(u64, i32)> = vec![(me.user_id, GroupRole::Owner as i32)];
        all.extend(
            members
                .iter()
                .map(|(id, _)| (*id, GroupRole::Member as i32)),
        );
        let names: Vec<String> = members.iter().map(|(_, n)| n.clone()).collect();
        let ev = event(K::Created, id, names, &my_name, &name);
        let inbox: Vec<NewEvent> = all
            .iter()
            .map(|(u, _)| NewEvent {
                user_id: *u,
                entry: inbox_entry(ev.clone(), time_ms),
            })
            .collect();
        let group = GroupRow {
            id,
            name,
            announcement: String::new(),
            owner_id: me.user_id,
            share_history: r.share_history,
            latest_gseq: 0,
            created_ms: time_ms,
        };
        self.core
            .store
            .create_group(group, all, log_entry(ev, time_ms), inbox.clone())
            .await?;
        for e in inbox {
            if let Ok(seq) = self.core.store.latest_seq(e.user_id).await {
                self.notifier.notify_entry(e.user_id, seq, e.entry).await;
            }
        }
        if self.core.hooks.wants("group.created") {
            let mut names = vec![my_name.to_string()];
            names.extend(members.iter().map(|(_, n)| n.clone()));
            self.core
                .hooks
                .emit_logged(crate::webhooks::Event::new(
                    "group.created",
                    format!("group-{id}-created"),
                    serde_json::json!({
                        "group_id": id.to_string(),
                        "name": r.name.trim(),
                        "owner": &*my_name,
                        "members": names,
                    }),
                ))
                .await;
        }
        self.group_resp(req.cmd, id, me.user_id).await
    }

    pub async fn members_change(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupMembersReq::decode(req.body.clone())?;
        let (g, mine) = self.require_admin(r.group_id, me.user_id).await?;
        let my_name = self.core.user_name(me.user_id).await?;
        let time_ms = unix_ms();
        let adding = req.cmd == u32::from(cmd::GROUP_ADD);
        let current: HashSet<u64> = self
            .fanout
            .member_ids(g.id)
            .await?
            .iter()
            .map(|m| m.0)
            .collect();
        let mut change = GroupChange {
            group_id: g.id,
            ..Default::default()
        };
        let mut names = Vec::new();
        let mut removed = Vec::new();
        if adding {
            for (id, name) in self.resolve_members(me.user_id, &r.usernames).await? {
                if !current.contains(&id) {
                    change.add.push((id, GroupRole::Member as i32));
                    names.push(name);
                }
            }
            if current.len() + change.add.len() > self.core.cfg.group_max_members {
                return Err(LogicError::TooLarge(format!(
                    "a group has at most {} members",
                    self.core.cfg.group_max_members
                )));
            }
        } else {
            for name in &r.usernames {
                let id = self.core.user_id(name).await?;
                if !current.contains(&id) {
                    continue;
                }
                let theirs = self.core.store.group_member(g.id, id).await?;
                let their_role = theirs.as_ref().map(role_of).unwrap_or(GroupRole::Member);
                if id == g.owner_id
                    || (their_role == GroupRole::Admin && role_of(&mine) != GroupRole::Owner)
                {
                    return Err(LogicError::PermissionDenied(format!(
                        "{name} can only be removed by the owner"
                    )));
                }
                change.remove.push(id);
                removed.push(id);
                names.push(name.clone());
            }
        }
        if names.is_empty() {
            return self.group_resp(req.cmd, g.id, me.user_id).await;
        }
        let kind = if adding { K::Joined } else { K::Removed };
        let names_changed = names.clone();
        let ev = event(kind, g.id, names, &my_name, "");
        let affected: Vec<u64> = if adding {
            change.add.iter().map(|(u, _)| *u).collect()
        } else {
            removed.clone()
        };
        change.inbox = affected
            .iter()
            .map(|u| NewEvent {
                user_id: *u,
                entry: inbox_entry(ev.clone(), time_ms),
            })
            .collect();
        change.event = log_entry(ev, time_ms);
        let gseq = self.apply_group_change(change, &removed).await?;
        let t = if adding {
            "group.member_added"
        } else {
            "group.member_removed"
        };
        member_event(&self.core, t, g.id, gseq, &names_changed, &my_name).await;
        self.group_resp(req.cmd, g.id, me.user_id).await
    }

    pub async fn leave(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupReq::decode(req.body.clone())?;
        let (g, mine) = self.membership(r.group_id, me.user_id).await?;
        let my_name = self.core.user_name(me.user_id).await?;
        let time_ms = unix_ms();
        let mut change = GroupChange {
            group_id: g.id,
            remove: vec![me.user_id],
            ..Default::default()
        };
        if role_of(&mine) == GroupRole::Owner {
            // Hand the group to an admin, else to the longest-standing member.
            let members = self.core.store.group_members(g.id).await?;
            let heir = members
                .iter()
                .filter(|m| m.user_id != me.user_id)
                .max_by_key(|m| (m.role, std::cmp::Reverse(m.joined_gseq)));
            if let Some(h) = heir {
                change.roles.push((h.user_id, GroupRole::Owner as i32));
            }
        }
        let ev = event(K::Left, g.id, vec![my_name.to_string()], &my_name, "");
        change.inbox = vec![NewEvent {
            user_id: me.user_id,
            entry: inbox_entry(ev.clone(), time_ms),
        }];
        change.event = log_entry(ev, time_ms);
        let gseq = self.apply_group_change(change, &[me.user_id]).await?;
        member_event(
            &self.core,
            "group.member_removed",
            g.id,
            gseq,
            &[my_name.to_string()],
            &my_name,
        )
        .await;
        Ok(ok(req.cmd, &v1::GroupResp { group: None }))
    }

    pub async fn info(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupReq::decode(req.body.clone())?;
        self.group_resp(req.cmd, r.group_id, me.user_id).await
    }

    pub async fn list(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let mut groups = Vec::new();
        for (g, m) in self.core.store.user_groups(me.user_id).await? {
            groups.push(self.group_view(&g, &m, false).await?);
        }
        Ok(ok(req.cmd, &v1::GroupListResp { groups }))
    }

    pub async fn update(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupUpdateReq::decode(req.body.clone())?;
        let (g, _) = self.require_admin(r.group_id, me.user_id).await?;
        let my_name = self.core.user_name(me.user_id).await?;
        let name = r.name.trim();
        if name.len() > MAX_GROUP_NAME || r.announcement.len() > MAX_ANNOUNCEMENT {
            return Err(LogicError::TooLarge(format!(
                "name ≤ {MAX_GROUP_NAME} bytes, announcement ≤ {MAX_ANNOUNCEMENT} bytes"
            )));
        }
        let time_ms = unix_ms();
        if !name.is_empty() && name != g.name {
            let ev = event(K::Renamed, g.id, vec![], &my_name, name);
            let change = GroupChange {
                group_id: g.id,
                name: Some(name.to_owned()),
                event: log_entry(ev, time_ms),
                ..Default::default()
            };
            self.apply_group_change(change, &[]).await?;
        }
        if !r.announcement.is_empty() && r.announcement != g.announcement {
            let ev = event(K::Announced, g.id, vec![], &my_name, &r.announcement);
            let change = GroupChange {
                group_id: g.id,
                announcement: Some(r.announcement.clone()),
                event: log_entry(ev, time_ms),
                ..Default::default()
            };
            self.apply_group_change(change, &[]).await?;
        }
        self.group_resp(req.cmd, g.id, me.user_id).await
    }

    pub async fn role(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupRoleReq::decode(req.body.clone())?;
        let (g, mine) = self.membership(r.group_id, me.user_id).await?;
        if role_of(&mine) != GroupRole::Owner {
            return Err(LogicError::PermissionDenied(
                "only the owner sets roles".into(),
            ));
        }
        let target = self.core.user_id(&r.username).await?;
        if target == me.user_id {
            return Err(LogicError::InvalidArgument("pick another member".into()));
        }
        self.core
            .store
            .group_member(g.id, target)
            .await?
            .ok_or_else(|| LogicError::NotFound(format!("{} is not a member", r.username)))?;
        let role = GroupRole::try_from(r.role)
            .map_err(|_| LogicError::InvalidArgument("unknown role".into()))?;
        let mut roles = vec![(target, role as i32)];
        if role == GroupRole::Owner {
            // Handing over: the old owner stays as an admin.
            roles.push((me.user_id, GroupRole::Admin as i32));
        }
        let my_name = self.core.user_name(me.user_id).await?;
        let time_ms = unix_ms();
        let ev = event(
            K::RoleChanged,
            g.id,
            vec![r.username.clone()],
            &my_name,
            role.as_str_name(),
        );
        let change = GroupChange {
            group_id: g.id,
            roles,
            event: log_entry(ev, time_ms),
            ..Default::default()
        };
        self.apply_group_change(change, &[]).await?;
        self.group_resp(req.cmd, g.id, me.user_id).await
    }

    pub async fn sync(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupSyncReq::decode(req.body.clone())?;
        let (_, m) = self.membership(r.group_id, me.user_id).await?;
        let limit = match r.limit {
            0 => self.core.cfg.sync_page,
            n => n.min(self.core.cfg.sync_page_max),
        };
        // Nothing from before the member joined.
        let after = r.after.max(m.joined_gseq.saturating_sub(1));
        let (mut entries, latest, mut more) =
            self.core.store.group_log(r.group_id, after, limit).await?;
        // Messages the member cleared from their history stay out (conv.rs).
        if entries
            .iter()
            .any(|e| matches!(e.kind, Some(v1::group_entry::Kind::Message(_))))
        {
            let key = ferry_store::ConvKey::group(r.group_id);
            let cleared = self
                .core
                .store
                .cleared(me.user_id)
                .await?
                .into_iter()
                .find_map(|(k, id)| (k == key).then_some(id))
                .unwrap_or(0);
            crate::conv::drop_cleared(&mut entries, cleared);
        }
        let mut bytes = 0;
        if let Some(cut) = entries.iter().position(|e| {
            bytes += e.encoded_len() + 4;
            bytes > self.core.cfg.sync_page_bytes
        }) {
            entries.truncate(cut.max(1));
            more = true;
        }
        // With nothing left to see, the cursor may jump to the newest gseq.
        let cursor = entries.last().map(|e| e.gseq).unwrap_or(after.max(latest));
        metrics::counter!("ferry_group_syncs_total").increment(1);
        Ok(ok(
            req.cmd,
            &v1::GroupSyncResp {
                group_id: r.group_id,
                entries,
                cursor,
                more,
                latest_gseq: latest,
            },
        ))
    }

    /// A group message: membership checked against the store, logged once, pushed to
    /// every member.
    pub async fn send(
        &self,
        me: &DeviceSession,
        r: v1::SendMsg,
        quote: Option<v1::Quote>,
        fwd: Option<crate::conv::Forward>,
        req_cmd: u32,
    ) -> Result<BusResponse, LogicError> {
        self.core
            .store
            .group_member(r.group_id, me.user_id)
            .await?
            .ok_or_else(gone)?;
        if r.mentions.len() > MAX_MENTIONS {
            return Err(LogicError::InvalidArgument(format!(
                "at most {MAX_MENTIONS} mentions"
            )));
        }
        let (media, forwarded) = self
            .attach
            .of_send(me.user_id, r.media, fwd, &[], &[r.group_id])
            .await?;
        let from = self.core.user_name(me.user_id).await?;
        let time_ms = unix_ms();
        let mut message = v1::Message {
            forwarded,
            from: from.to_string(),
            time_ms,
            r#type: r.r#type,
            text: r.text,
            client_msg_id: r.client_msg_id,
            group_id: r.group_id,
            mentions: r.mentions,
            media,
            quote: quote.map(Box::new),
            ..Default::default()
        };
        crate::before::screen(&self.core, me.user_id, &mut message).await?;
        crate::msgops::note_reply(&self.core, me.user_id, &message).await?;
        let done = self
            .core
            .store
            .append_group_message(
                r.group_id,
                NewMessage {
                    sender_id: me.user_id,
                    recipient_id: 0,
                    client_msg_id: r.client_msg_id,
                    time_ms,
                    message: message.clone(),
                },
            )
            .await
            .map_err(|e| match e {
                StoreError::NotFound => gone(),
                e => e.into(),
            })?;
        // Webhook events are durable before the ack (a duplicate queues the same id
        // again: ignored, or queued now if the first attempt died before it could).
        if self.core.hooks.wants("message.sent") {
            let stored = v1::Message {
                msg_id: done.msg_id,
                time_ms: done.time_ms,
                ..message.clone()
            };
            self.core
                .hooks
                .emit(vec![crate::webhooks::message_sent(&stored)])
                .await?;
        }
        if !done.duplicate {
            if let Some(q) = &message.quote {
                crate::msgops::recheck_quote(&self.core, q).await;
            }
            metrics::counter!("ferry_group_messages_total").increment(1);
            if let Ok(members) = self.fanout.member_ids(r.group_id).await {
                self.push
                    .group_message(me.user_id, members, &message, done.time_ms);
            }
        }
        // A duplicate is notified again too: the first attempt may have died between
        // storing the message and notifying the members. The entry carries the stored
        // time, which a duplicate answers with.
        let entry = v1::GroupEntry {
            kind: Some(v1::group_entry::Kind::Message(v1::Message {
                msg_id: done.msg_id,
                time_ms: done.time_ms,
                ..message
            })),
            time_ms: done.time_ms,
            ..Default::default()
        };
        self.fanout
            .notify(r.group_id, Some(entry), done.recipient_seq, &[])
            .await;
        Ok(ok(
            req_cmd,
            &v1::SendAck {
                msg_id: done.msg_id,
                seq: done.recipient_seq,
                time_ms: done.time_ms,
                // Group entries reach every member's links by GROUP_NOTIFY.
                entry: None,
            },
        ))
    }

    pub async fn reads(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::GroupReadsReq::decode(req.body.clone())?;
        self.membership(r.group_id, me.user_id).await?;
        let members = self.core.store.group_members(r.group_id).await?;
        let read: Vec<&MemberRow> = members.iter().filter(|m| m.read_gseq >= r.gseq).collect();
        let mut resp = v1::GroupReadsResp {
            read_count: read.len() as u32,
            member_count: members.len() as u32,
            ..Default::default()
        };
        if members.len() <= self.core.cfg.receipts_list_max {
            for m in read {
                resp.readers
                    .push(self.core.user_name(m.user_id).await?.to_string());
            }
        }
        Ok(ok(req.cmd, &resp))
    }

    /// A read receipt in a group: the member's read mark moves to `gseq`.
    pub async fn mark_read(&self, group: u64, user: u64, gseq: u64) -> Result<(), LogicError> {
        self.membership(group, user).await?;
        self.core.store.set_group_read(group, user, gseq).await?;
        Ok(())
    }

    /// Tells the members online that the group's log grew to `gseq` (with `entry`
    /// inline when small): for entries logged by another domain (message operations).
    pub(crate) async fn log_notify(&self, group: u64, entry: Option<v1::GroupEntry>, gseq: u64) {
        self.fanout.notify(group, entry, gseq, &[]).await;
    }

    /// Groups whose members or log were changed by another domain (a user deleted by
    /// an operator), each with its newest gseq: their cached members are forgotten and
    /// every member online is told the log grew.
    pub async fn changed_elsewhere(&self, groups: &[(u64, u64)]) {
        for &(group, gseq) in groups {
            self.fanout.forget_members(group);
            self.fanout.notify(group, None, gseq, &[]).await;
        }
    }

    /// Recalls a group message (`recall.group_id`) that `sender` sent at `sent_ms`, on
    /// behalf of `me`: the sender within `window_ms`, an admin at any time. A
    /// non-member is told the message does not exist.
    pub async fn recall(
        &self,
        me: u64,
        sender: u64,
        sent_ms: i64,
        recall: v1::Recall,
        time_ms: i64,
        window_ms: i64,
    ) -> Result<(), LogicError> {
        let missing = || LogicError::NotFound("no such message".into());
        let (group, msg_id) = (recall.group_id, recall.msg_id);
        let (_, m) = self.membership(group, me).await.map_err(|_| missing())?;
        let admin = role_of(&m) != GroupRole::Member;
        if sender != me && !admin {
            return Err(LogicError::PermissionDenied(
                "only the sender or a group admin may recall".into(),
            ));
        }
        // The window binds the sender; admins may remove a message at any time.
        if sender == me && !admin && time_ms - sent_ms > window_ms {
            return Err(LogicError::PermissionDenied(
                "too late to recall this message".into(),
            ));
        }
        let entry = v1::GroupEntry {
            kind: Some(v1::group_entry::Kind::Recall(recall)),
            time_ms,
            ..Default::default()
        };
        let (gseq, _) = self
            .core
            .store
            .recall_message(msg_id, Some((group, entry.clone())), vec![])
            .await
            .map_err(|e| match e {
                StoreError::NotFound => missing(),
                e => e.into(),
            })?;
        if let Some(gseq) = gseq {
            self.fanout.notify(group, Some(entry), gseq, &[]).await;
        }
        if self.core.hooks.wants("message.recalled") {
            let (from, by) = (
                self.core.user_name(sender).await?,
                self.core.user_name(me).await?,
            );
            self.core
                .hooks
                .emit_logged(crate::webhooks::message_recalled(msg_id, group, &from, &by))
                .await;
        }
        Ok(())
    }
}

impl Groups {
    /// Dissolves a group on the operators' behalf (the admin API): the dissolution is
    /// logged, every member removed and told in their inbox (`GroupEvent.DISSOLVED`, so
    /// their devices drop it), and the members online get the group's last notify.
    /// Returns the members removed.
    pub async fn dissolve(&self, group: u64, by: &str) -> Result<Vec<u64>, LogicError> {
        let time_ms = unix_ms();
        let ev = event(K::Dissolved, group, vec![], by, "");
        let entry = log_entry(ev.clone(), time_ms);
        self.fanout.drain(group).await;
        let done = self
            .core
            .store
            .dissolve_group(group, entry.clone(), inbox_entry(ev.clone(), time_ms))
            .await
            .map_err(|e| match e {
                StoreError::NotFound => gone(),
                e => e.into(),
            })?;
        self.fanout.forget_members(group);
        let members: Vec<u64> = done.members.iter().map(|(u, _)| *u).collect();
        for (user, seq) in &done.members {
            self.notifier
                .notify_entry(*user, *seq, inbox_entry(ev.clone(), time_ms))
                .await;
        }
        if !members.is_empty() {
            self.fanout
                .notify(group, Some(entry), done.gseq, &members)
                .await;
        }
        Ok(members)
    }

    /// Recalls a group message on the operators' behalf, whoever sent it and however
    /// long ago: its content leaves the store and the recall is logged and told to the
    /// members online (the others see it at their next group sync).
    pub async fn recall_any(&self, recall: v1::Recall, time_ms: i64) -> Result<(), LogicError> {
        let missing = || LogicError::NotFound("no such message".into());
        let (group, msg_id) = (recall.group_id, recall.msg_id);
        let entry = v1::GroupEntry {
            kind: Some(v1::group_entry::Kind::Recall(recall)),
            time_ms,
            ..Default::default()
        };
        let (gseq, _) = self
            .core
            .store
            .recall_message(msg_id, Some((group, entry.clone())), vec![])
            .await
            .map_err(|e| match e {
                StoreError::NotFound => missing(),
                e => e.into(),
            })?;
        if let Some(gseq) = gseq {
            self.fanout.notify(group, Some(entry), gseq, &[]).await;
        }
        Ok(())
    }
}

/// Queues `group.member_added` / `group.member_removed` (`t`) for `users` of `group`,
/// by `by`; the id names the group log entry (`gseq`) that records the change.
async fn member_event(
    core: &Core,
    t: &'static str,
    group: u64,
    gseq: u64,
    users: &[String],
    by: &str,
) {
    if !core.hooks.wants(t) {
        return;
    }
    core.hooks
        .emit_logged(crate::webhooks::Event::new(
            t,
            format!("group-{group}-{gseq}"),
            serde_json::json!({"group_id": group.to_string(), "users": users, "by": by}),
        ))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::{req, World};

    #[tokio::test]
    async fn a_group_message_is_one_push_per_gateway_with_the_entry_inline() {
        let w = World::new(LogicConfig {
            open_messaging: true,
            ..Default::default()
        });
        let owner = w.user("owner").await;
        let (m1, m2) = (w.user("m1").await, w.user("m2").await);
        w.notifier.link_up(m1, "gw-1", 1, "d1").await;
        w.notifier.link_up(m2, "gw-1", 2, "d1").await;
        w.notifier.link_up(owner, "gw-2", 3, "d1").await;
        let create = v1::GroupCreateReq {
            name: "crew".into(),
            members: vec!["m1".into(), "m2".into()],
            share_history: false,
        };
        let resp = w
            .groups
            .create(&req(cmd::GROUP_CREATE, owner, &create))
            .await
            .unwrap();
        let group = v1::GroupResp::decode(resp.body).unwrap().group.unwrap();
        assert_eq!(group.member_count, 3);
        // Each member's inbox got the creation (one NOTIFY each).
        let created = w.pushes();
        assert_eq!(created.len(), 3, "{created:?}");
        assert!(created.iter().all(|(_, p)| p.cmd == u32::from(cmd::NOTIFY)));

        let send = v1::SendMsg {
            group_id: group.group_id,
            text: "hi all".into(),
            client_msg_id: 5,
            ..Default::default()
        };
        let ack = v1::SendAck::decode(w.inbox.send(&req(cmd::SEND, m1, &send)).await.unwrap().body)
            .unwrap();
        let mut pushes = w.pushes();
        pushes.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(pushes.len(), 2, "one push per gateway: {pushes:?}");
        let mut users_1 = vec![pushes[0].1.user_id];
        users_1.extend(&pushes[0].1.more_user_ids);
        users_1.sort_unstable();
        let mut want = vec![m1, m2];
        want.sort_unstable();
        assert_eq!((pushes[0].0.as_str(), users_1), ("gw-1", want));
        assert_eq!((pushes[1].0.as_str(), pushes[1].1.user_id), ("gw-2", owner));
        for (_, p) in &pushes {
            assert_eq!(p.cmd, u32::from(cmd::GROUP_NOTIFY));
            let n = v1::GroupNotify::decode(p.body.clone()).unwrap();
            assert_eq!((n.group_id, n.latest_gseq), (group.group_id, ack.seq));
            let Some(v1::group_entry::Kind::Message(m)) = &n.entries[0].kind else {
                panic!("not a message: {n:?}");
            };
            assert_eq!((m.from.as_str(), m.text.as_str()), ("m1", "hi all"));
        }
    }
}
