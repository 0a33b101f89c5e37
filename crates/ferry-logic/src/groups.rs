//! Groups: one log per group (per-group seq, the same order for every member), read from
//! each member's join point; membership changes also land in the affected users' inboxes.
//! Also recall, read receipts and typing indicators. See docs/groups.md for the design.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse, Push};
use ferry_proto::v1::{self, group_event::Kind as K, GroupRole};
use ferry_proto::{cmd, ProtoMessage};
use ferry_store::{GroupChange, GroupRow, MemberRow, NewEvent, NewMessage, StoreError};

use crate::error::LogicError;
use crate::service::{now_ms, ok, DeviceSession, Logic};

const MAX_GROUP_NAME: usize = 64;
const MAX_ANNOUNCEMENT: usize = 4096;
const MAX_MENTIONS: usize = 50;
/// How long a node trusts its cached member list of a group that another node may
/// have changed.
const MEMBERS_TTL: Duration = Duration::from_secs(5);

/// At most this many notifies are coalesced into one `GROUP_NOTIFY`; more wait for the
/// next round.
const MAX_BATCH: usize = 64;
/// How long a notifier waits for its group notify to be pushed.
const PUSH_WAIT: Duration = Duration::from_secs(5);

/// Cached members of a group, for fan-out: (user id, the first gseq they may read).
pub(crate) struct Members {
    ids: Arc<Vec<(u64, u64)>>,
    at: Instant,
}

pub(crate) type MemberCache = dashmap::DashMap<u64, Members>;

/// A notify waiting in a group's feed.
pub(crate) struct Waiting {
    gseq: u64,
    /// The entry to inline, when small.
    entry: Option<v1::GroupEntry>,
    /// Held back once already, behind a hole.
    held: bool,
    /// Told when the notify is out.
    done: tokio::sync::oneshot::Sender<()>,
}

/// Group notifies waiting to go out, per group (see [`Logic::notify_group`]).
#[derive(Default)]
pub(crate) struct Feed {
    items: Vec<Waiting>,
}

pub(crate) type Feeds = parking_lot::Mutex<HashMap<u64, Feed>>;

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

/// What one round of a group's feed pushes.
#[derive(Debug, PartialEq)]
struct Round {
    /// The entries to inline: consecutive, ending at `latest` (else none).
    entries: Vec<v1::GroupEntry>,
    /// The newest gseq the round announces.
    latest: u64,
    /// How many of the batch the round covers; the rest waits behind a hole.
    cut: usize,
}

/// Plans a round over `batch` (sorted by gseq) after a push that reached `last` (0: none
/// known). It stops before a hole — a gseq more than one past what came before — unless
/// the notify there has waited a round already (`held`), so members are not sent past
/// an entry that is only late; a hole at the very start holds back the whole batch.
fn plan_round(last: u64, batch: &[Waiting]) -> Round {
    let mut entries: Vec<v1::GroupEntry> = Vec::with_capacity(batch.len());
    let mut prev = last;
    let mut cut = batch.len();
    for (i, w) in batch.iter().enumerate() {
        let follows = prev == 0 || w.gseq <= prev + 1;
        if !follows && !w.held {
            cut = i;
            break;
        }
        if w.gseq <= prev {
            continue; // announced already (a duplicate send notifies again)
        }
        match &w.entry {
            Some(e) if follows => entries.push(e.clone()),
            _ => entries.clear(),
        }
        prev = w.gseq;
    }
    if entries.last().map(|e| e.gseq) != Some(prev) {
        entries.clear();
    }
    Round {
        entries,
        latest: prev,
        cut,
    }
}

/// Whether a member who may read from gseq `joined` may get a batch whose first entry
/// is `first` inline: never one that starts before they joined.
fn sees_batch(joined: u64, first: Option<u64>) -> bool {
    first.is_none_or(|f| joined <= f)
}

fn gone() -> LogicError {
    LogicError::NotFound("no such group".into())
}

impl Logic {
    /// The caller's membership, or NOT_FOUND (a non-member cannot tell whether the group
    /// exists).
    async fn membership(&self, group: u64, user: u64) -> Result<(GroupRow, MemberRow), LogicError> {
        let m = self
            .store
            .group_member(group, user)
            .await?
            .ok_or_else(gone)?;
        let g = self.store.group(group).await?.ok_or_else(gone)?;
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

    /// Members of a group with the first gseq each may read, from a short-lived cache.
    async fn member_ids(&self, group: u64) -> Result<Arc<Vec<(u64, u64)>>, LogicError> {
        if let Some(m) = self.group_members.get(&group) {
            if m.at.elapsed() < MEMBERS_TTL {
                return Ok(m.ids.clone());
            }
        }
        let ids: Arc<Vec<(u64, u64)>> = Arc::new(
            self.store
                .group_members(group)
                .await?
                .into_iter()
                .map(|m| (m.user_id, m.joined_gseq))
                .collect(),
        );
        self.group_members.insert(
            group,
            Members {
                ids: ids.clone(),
                at: Instant::now(),
            },
        );
        Ok(ids)
    }

    fn forget_members(&self, group: u64) {
        self.group_members.remove(&group);
    }

    /// Resolves user names; with friends-only messaging, only the caller's friends may
    /// be put into a group by them.
    async fn resolve_members(
        &self,
        me: u64,
        names: &[String],
    ) -> Result<Vec<(u64, String)>, LogicError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let id = self.user_id(name).await?;
            if id == me || !seen.insert(id) {
                continue;
            }
            if !self.config().open_messaging && !self.are_friends(me, id).await? {
                return Err(LogicError::PermissionDenied(format!(
                    "{name} is not your friend; only friends can be added"
                )));
            }
            out.push((id, name.clone()));
        }
        Ok(out)
    }

    /// Tells every member online that the group's log reached `gseq`, with `entry`
    /// inline when it is small. `extra`: users told besides the members (the ones just
    /// removed, who see their removal); such a notify goes out at once, on its own.
    ///
    /// Everything else is coalesced per group: the first notify goes out at once, and
    /// the ones that arrive while it is being pushed wait and go out together, as one
    /// `GROUP_NOTIFY` carrying all their entries — so a burst into a big group costs
    /// each member's link one frame, not one per message. Nothing is held back longer
    /// than the push before it takes.
    pub(crate) async fn notify_group(
        &self,
        group: u64,
        mut entry: Option<v1::GroupEntry>,
        gseq: u64,
        extra: &[u64],
    ) {
        if let Some(e) = &mut entry {
            e.gseq = gseq;
        }
        let entry = entry.filter(|e| e.encoded_len() <= self.config().inline_notify_bytes);
        if !extra.is_empty() {
            self.push_group(group, entry.into_iter().collect(), gseq, extra)
                .await;
            return;
        }
        let (done, pushed) = tokio::sync::oneshot::channel();
        let start = {
            let mut feeds = self.group_feeds.lock();
            let (start, feed) = match feeds.entry(group) {
                std::collections::hash_map::Entry::Occupied(o) => (false, o.into_mut()),
                std::collections::hash_map::Entry::Vacant(v) => (true, v.insert(Feed::default())),
            };
            feed.items.push(Waiting {
                gseq,
                entry,
                held: false,
                done,
            });
            start
        };
        if start {
            match self.me.upgrade() {
                Some(me) => {
                    tokio::spawn(async move { me.flush_feed(group).await });
                }
                None => self.flush_feed(group).await,
            }
        }
        // Wait until this notify is out: a group's senders go no faster than its
        // members can be told (bounded: the message is stored whatever happens here).
        let _ = tokio::time::timeout(PUSH_WAIT, pushed).await;
    }

    /// Pushes what waits in `group`'s feed, up to [`MAX_BATCH`] notifies a round, until
    /// nothing does.
    ///
    /// Notifiers arrive in about gseq order, not exactly (they run concurrently), so a
    /// round may find a hole: 7 and 9 waiting, 8 not yet. It pushes up to the hole and
    /// holds the rest back for one round, so members are not sent past an entry they
    /// lack (which would make every one of them sync). A hole that stays (8 was too big
    /// to inline, or came from another logic node) is pushed past on the next round.
    async fn flush_feed(&self, group: u64) {
        let mut last: u64 = 0;
        loop {
            let mut batch = {
                let mut feeds = self.group_feeds.lock();
                let Some(feed) = feeds.get_mut(&group) else {
                    return;
                };
                if feed.items.is_empty() {
                    feeds.remove(&group);
                    return;
                }
                feed.items.sort_by_key(|w| w.gseq);
                let n = feed.items.len().min(MAX_BATCH);
                feed.items.drain(..n).collect::<Vec<_>>()
            };
            let Round {
                entries,
                latest,
                cut,
            } = plan_round(last, &batch);
            if cut < batch.len() {
                let mut back = batch.split_off(cut);
                for w in &mut back {
                    w.held = true;
                }
                let mut feeds = self.group_feeds.lock();
                feeds.entry(group).or_default().items.extend(back);
            }
            if batch.is_empty() {
                // All of it waits behind a hole: give the missing notify a moment.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            if latest > last {
                self.push_group(group, entries, latest, &[]).await;
                last = latest;
            }
            for w in batch {
                let _ = w.done.send(());
            }
        }
    }

    /// Waits (boundedly) until `group`'s feed has pushed everything queued so far: a
    /// membership change waits for it, so the messages before the change reach the
    /// members of that time.
    async fn drain_feed(&self, group: u64) {
        let until = Instant::now() + PUSH_WAIT;
        while self.group_feeds.lock().contains_key(&group) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// One `GROUP_NOTIFY` to every member online (and to `extra`): one push per
    /// gateway, whatever the group's size. A member who joined after the batch's first
    /// entry gets the notify without entries (and syncs from their join point).
    async fn push_group(
        &self,
        group: u64,
        entries: Vec<v1::GroupEntry>,
        latest: u64,
        extra: &[u64],
    ) {
        let members = match self.member_ids(group).await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "no group notify: members unknown");
                return;
            }
        };
        let first = entries.first().map(|e| e.gseq);
        let inline = entries.len() as u64;
        let notify = |entries| {
            Bytes::from(
                v1::GroupNotify {
                    group_id: group,
                    latest_gseq: latest,
                    entries,
                }
                .encode_to_vec(),
            )
        };
        let full = notify(entries);
        let mut bare: Option<Bytes> = None;
        // (gateway, full body?) → users.
        let mut by_gateway: HashMap<(Arc<str>, bool), Vec<u64>> = HashMap::new();
        let everyone = members
            .iter()
            .map(|&(user, joined)| (user, sees_batch(joined, first)))
            .chain(extra.iter().map(|&user| (user, true)));
        for (user, whole) in everyone {
            self.each_gateway_of(user, |gw| {
                by_gateway
                    .entry((gw.clone(), whole))
                    .or_default()
                    .push(user);
            });
        }
        let mut delivered = 0;
        for ((gw, whole), users) in by_gateway {
            delivered += users.len() as u64;
            let body = if whole {
                full.clone()
            } else {
                bare.get_or_insert_with(|| notify(Vec::new())).clone()
            };
            let push = Push {
                user_id: users[0],
                more_user_ids: users[1..].to_vec(),
                cmd: u32::from(cmd::GROUP_NOTIFY),
                body,
                ..Default::default()
            };
            self.push_to(&gw, push).await;
        }
        metrics::counter!("ferry_group_notifies_total").increment(delivered);
        metrics::counter!("ferry_group_notify_entries_total").increment(delivered * inline);
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
            owner: self.user_name(g.owner_id).await?.to_string(),
            latest_gseq: g.latest_gseq,
            share_history: g.share_history,
            joined_gseq: m.joined_gseq,
            ..Default::default()
        };
        if with_members {
            let members = self.store.group_members(g.id).await?;
            out.member_count = members.len() as u32;
            for mm in members {
                out.members.push(v1::GroupMember {
                    username: self.user_name(mm.user_id).await?.to_string(),
                    role: mm.role,
                });
            }
        } else {
            out.member_count = self.member_ids(g.id).await?.len() as u32;
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
        self.drain_feed(group).await;
        let gseq = self.store.change_group(change).await.map_err(|e| match e {
            StoreError::NotFound => gone(),
            e => e.into(),
        })?;
        self.forget_members(group);
        for ev in inbox {
            if let Ok(seq) = self.store.latest_seq(ev.user_id).await {
                self.notify_entry(ev.user_id, seq, ev.entry).await;
            }
        }
        self.notify_group(group, Some(entry), gseq, removed).await;
        Ok(gseq)
    }

    pub(crate) async fn group_create(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupCreateReq::decode(req.body.clone())?;
        let name = r.name.trim().to_owned();
        if name.is_empty() || name.len() > MAX_GROUP_NAME {
            return Err(LogicError::InvalidArgument(format!(
                "a group name is 1-{MAX_GROUP_NAME} bytes"
            )));
        }
        let members = self.resolve_members(me.user_id, &r.members).await?;
        if members.len() + 1 > self.config().group_max_members {
            return Err(LogicError::TooLarge(format!(
                "a group has at most {} members",
                self.config().group_max_members
            )));
        }
        let my_name = self.user_name(me.user_id).await?;
        let time_ms = now_ms();
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
        self.store
            .create_group(group, all, log_entry(ev, time_ms), inbox.clone())
            .await?;
        for e in inbox {
            if let Ok(seq) = self.store.latest_seq(e.user_id).await {
                self.notify_entry(e.user_id, seq, e.entry).await;
            }
        }
        self.group_resp(req.cmd, id, me.user_id).await
    }

    pub(crate) async fn group_members_change(
        &self,
        req: &BusRequest,
    ) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupMembersReq::decode(req.body.clone())?;
        let (g, mine) = self.require_admin(r.group_id, me.user_id).await?;
        let my_name = self.user_name(me.user_id).await?;
        let time_ms = now_ms();
        let adding = req.cmd == u32::from(cmd::GROUP_ADD);
        let current: HashSet<u64> = self.member_ids(g.id).await?.iter().map(|m| m.0).collect();
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
            if current.len() + change.add.len() > self.config().group_max_members {
                return Err(LogicError::TooLarge(format!(
                    "a group has at most {} members",
                    self.config().group_max_members
                )));
            }
        } else {
            for name in &r.usernames {
                let id = self.user_id(name).await?;
                if !current.contains(&id) {
                    continue;
                }
                let theirs = self.store.group_member(g.id, id).await?;
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
        self.apply_group_change(change, &removed).await?;
        self.group_resp(req.cmd, g.id, me.user_id).await
    }

    pub(crate) async fn group_leave(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupReq::decode(req.body.clone())?;
        let (g, mine) = self.membership(r.group_id, me.user_id).await?;
        let my_name = self.user_name(me.user_id).await?;
        let time_ms = now_ms();
        let mut change = GroupChange {
            group_id: g.id,
            remove: vec![me.user_id],
            ..Default::default()
        };
        if role_of(&mine) == GroupRole::Owner {
            // Hand the group to an admin, else to the longest-standing member.
            let members = self.store.group_members(g.id).await?;
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
        self.apply_group_change(change, &[me.user_id]).await?;
        Ok(ok(req.cmd, &v1::GroupResp { group: None }))
    }

    pub(crate) async fn group_info(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupReq::decode(req.body.clone())?;
        self.group_resp(req.cmd, r.group_id, me.user_id).await
    }

    pub(crate) async fn group_list(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let mut groups = Vec::new();
        for (g, m) in self.store.user_groups(me.user_id).await? {
            groups.push(self.group_view(&g, &m, false).await?);
        }
        Ok(ok(req.cmd, &v1::GroupListResp { groups }))
    }

    pub(crate) async fn group_update(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupUpdateReq::decode(req.body.clone())?;
        let (g, _) = self.require_admin(r.group_id, me.user_id).await?;
        let my_name = self.user_name(me.user_id).await?;
        let name = r.name.trim();
        if name.len() > MAX_GROUP_NAME || r.announcement.len() > MAX_ANNOUNCEMENT {
            return Err(LogicError::TooLarge(format!(
                "name ≤ {MAX_GROUP_NAME} bytes, announcement ≤ {MAX_ANNOUNCEMENT} bytes"
            )));
        }
        let time_ms = now_ms();
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

    pub(crate) async fn group_role(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupRoleReq::decode(req.body.clone())?;
        let (g, mine) = self.membership(r.group_id, me.user_id).await?;
        if role_of(&mine) != GroupRole::Owner {
            return Err(LogicError::PermissionDenied(
                "only the owner sets roles".into(),
            ));
        }
        let target = self.user_id(&r.username).await?;
        if target == me.user_id {
            return Err(LogicError::InvalidArgument("pick another member".into()));
        }
        self.store
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
        let my_name = self.user_name(me.user_id).await?;
        let time_ms = now_ms();
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

    pub(crate) async fn group_sync(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupSyncReq::decode(req.body.clone())?;
        let (_, m) = self.membership(r.group_id, me.user_id).await?;
        let limit = match r.limit {
            0 => self.config().sync_page,
            n => n.min(self.config().sync_page_max),
        };
        // Nothing from before the member joined.
        let after = r.after.max(m.joined_gseq.saturating_sub(1));
        let (mut entries, latest, mut more) =
            self.store.group_log(r.group_id, after, limit).await?;
        let mut bytes = 0;
        if let Some(cut) = entries.iter().position(|e| {
            bytes += e.encoded_len() + 4;
            bytes > self.config().sync_page_bytes
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
    pub(crate) async fn send_group(
        &self,
        me: &DeviceSession,
        r: v1::SendMsg,
        req_cmd: u32,
    ) -> Result<BusResponse, LogicError> {
        self.store
            .group_member(r.group_id, me.user_id)
            .await?
            .ok_or_else(gone)?;
        if r.mentions.len() > MAX_MENTIONS {
            return Err(LogicError::InvalidArgument(format!(
                "at most {MAX_MENTIONS} mentions"
            )));
        }
        let media = self
            .attach_media(me.user_id, r.media, &[], &[r.group_id])
            .await?;
        let from = self.user_name(me.user_id).await?;
        let time_ms = now_ms();
        let message = v1::Message {
            from: from.to_string(),
            time_ms,
            r#type: r.r#type,
            text: r.text,
            client_msg_id: r.client_msg_id,
            group_id: r.group_id,
            mentions: r.mentions,
            media,
            ..Default::default()
        };
        let done = self
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
        if !done.duplicate {
            metrics::counter!("ferry_group_messages_total").increment(1);
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
        self.notify_group(r.group_id, Some(entry), done.recipient_seq, &[])
            .await;
        Ok(ok(
            req_cmd,
            &v1::SendAck {
                msg_id: done.msg_id,
                seq: done.recipient_seq,
                time_ms: done.time_ms,
            },
        ))
    }

    pub(crate) async fn group_reads(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::GroupReadsReq::decode(req.body.clone())?;
        self.membership(r.group_id, me.user_id).await?;
        let members = self.store.group_members(r.group_id).await?;
        let read: Vec<&MemberRow> = members.iter().filter(|m| m.read_gseq >= r.gseq).collect();
        let mut resp = v1::GroupReadsResp {
            read_count: read.len() as u32,
            member_count: members.len() as u32,
            ..Default::default()
        };
        if members.len() <= self.config().receipts_list_max {
            for m in read {
                resp.readers
                    .push(self.user_name(m.user_id).await?.to_string());
            }
        }
        Ok(ok(req.cmd, &resp))
    }

    pub(crate) async fn read(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::ReadReq::decode(req.body.clone())?;
        if r.group_id != 0 {
            self.membership(r.group_id, me.user_id).await?;
            self.store
                .set_group_read(r.group_id, me.user_id, r.gseq)
                .await?;
            return Ok(ok(req.cmd, &v1::Empty {}));
        }
        // A 1:1 receipt goes to the peer's inbox, for a message the peer sent the caller.
        let peer = self.user_id(&r.peer).await?;
        let info = self.store.message_info(r.msg_id).await?;
        let mine = info.as_ref().is_some_and(|i| {
            i.sender_id == peer && i.body.as_ref().is_some_and(|b| b.group_id == 0)
        });
        if !mine {
            return Err(LogicError::NotFound(
                "no such message from that user".into(),
            ));
        }
        let time_ms = now_ms();
        let entry = v1::Entry {
            kind: Some(v1::entry::Kind::Read(v1::ReadReceipt {
                reader: self.user_name(me.user_id).await?.to_string(),
                msg_id: r.msg_id,
            })),
            time_ms,
            ..Default::default()
        };
        let seqs = self
            .store
            .append_events(vec![NewEvent {
                user_id: peer,
                entry: entry.clone(),
            }])
            .await?;
        self.notify_entry(peer, seqs[0], entry).await;
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    pub(crate) async fn recall(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::RecallReq::decode(req.body.clone())?;
        let missing = || LogicError::NotFound("no such message".into());
        let info = self
            .store
            .message_info(r.msg_id)
            .await?
            .ok_or_else(missing)?;
        let body = info.body.clone().ok_or_else(missing)?;
        let window = i64::from(self.config().recall_window_secs) * 1000;
        let by = self.user_name(me.user_id).await?.to_string();
        let time_ms = now_ms();
        let recall = v1::Recall {
            msg_id: r.msg_id,
            group_id: body.group_id,
            by,
        };
        if body.group_id != 0 {
            let (_, m) = self
                .membership(body.group_id, me.user_id)
                .await
                .map_err(|_| missing())?;
            let admin = role_of(&m) != GroupRole::Member;
            if info.sender_id != me.user_id && !admin {
                return Err(LogicError::PermissionDenied(
                    "only the sender or a group admin may recall".into(),
                ));
            }
            // The window binds the sender; admins may remove a message at any time.
            if info.sender_id == me.user_id && !admin && time_ms - info.time_ms > window {
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
                .store
                .recall_message(r.msg_id, Some((body.group_id, entry.clone())), vec![])
                .await
                .map_err(|e| match e {
                    StoreError::NotFound => missing(),
                    e => e.into(),
                })?;
            if let Some(gseq) = gseq {
                self.notify_group(body.group_id, Some(entry), gseq, &[])
                    .await;
            }
        } else {
            if info.sender_id != me.user_id {
                return Err(LogicError::PermissionDenied(
                    "only the sender may recall".into(),
                ));
            }
            if time_ms - info.time_ms > window {
                return Err(LogicError::PermissionDenied(
                    "too late to recall this message".into(),
                ));
            }
            let to = self.user_id(&body.to).await?;
            let entry = v1::Entry {
                kind: Some(v1::entry::Kind::Recall(recall)),
                time_ms,
                ..Default::default()
            };
            let mut users = vec![me.user_id];
            if to != me.user_id {
                users.push(to);
            }
            let events: Vec<NewEvent> = users
                .iter()
                .map(|u| NewEvent {
                    user_id: *u,
                    entry: entry.clone(),
                })
                .collect();
            let (_, seqs) = self
                .store
                .recall_message(r.msg_id, None, events)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound => missing(),
                    e => e.into(),
                })?;
            for (u, seq) in users.into_iter().zip(seqs) {
                self.notify_entry(u, seq, entry.clone()).await;
            }
        }
        metrics::counter!("ferry_recalls_total").increment(1);
        Ok(ok(req.cmd, &v1::Empty {}))
    }

    pub(crate) async fn typing(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::Typing::decode(req.body.clone())?;
        let to = self.user_id(&r.to).await?;
        if to != me.user_id && self.may_message(me.user_id, to, &r.to).await.is_ok() {
            let body = v1::Typing {
                to: self.user_name(me.user_id).await?.to_string(),
            };
            self.push_all(Push {
                user_id: to,
                cmd: u32::from(cmd::TYPING_PUSH),
                body: Bytes::from(body.encode_to_vec()),
                ..Default::default()
            })
            .await;
        }
        Ok(ok(req.cmd, &v1::Empty {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(gseq: u64, inline: bool, held: bool) -> Waiting {
        let entry = inline.then(|| v1::GroupEntry {
            gseq,
            ..Default::default()
        });
        Waiting {
            gseq,
            entry,
            held,
            done: tokio::sync::oneshot::channel().0,
        }
    }

    fn gseqs(r: &Round) -> Vec<u64> {
        r.entries.iter().map(|e| e.gseq).collect()
    }

    #[test]
    fn a_round_inlines_consecutive_entries_up_to_a_hole() {
        // A new flusher (nothing pushed yet) takes what it finds.
        let r = plan_round(0, &[waiting(7, true, false), waiting(8, true, false)]);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![7, 8], 8, 2));
        // 4 follows 3; 6 does not (5 is late): the round stops before it.
        let b = [
            waiting(4, true, false),
            waiting(6, true, false),
            waiting(7, true, false),
        ];
        let r = plan_round(3, &b);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![4], 4, 1));
        // A hole at the very start holds back the whole batch, once.
        let r = plan_round(3, &[waiting(5, true, false), waiting(6, true, false)]);
        assert_eq!((r.entries.len(), r.latest, r.cut), (0, 3, 0));
        // Held once already: pushed past the hole, and members sync for the rest.
        let r = plan_round(3, &[waiting(5, true, true), waiting(6, true, true)]);
        assert_eq!((r.latest, r.cut), (6, 2));
        assert_eq!(gseqs(&r), vec![6]);
    }

    #[test]
    fn duplicates_and_entries_too_big_to_inline() {
        // A duplicate send notifies again: announced once.
        let b = [
            waiting(3, true, false),
            waiting(4, true, false),
            waiting(4, true, false),
        ];
        let r = plan_round(3, &b);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![4], 4, 3));
        // 5 is too big to ride inline: the notify goes without entries up to it, and
        // what follows it can still ride (a member at 5 applies 6 at once).
        let r = plan_round(4, &[waiting(5, false, false), waiting(6, true, false)]);
        assert_eq!((gseqs(&r), r.latest, r.cut), (vec![6], 6, 2));
        let r = plan_round(4, &[waiting(5, true, false), waiting(6, false, false)]);
        assert_eq!((r.entries.len(), r.latest), (0, 6));
        // Nothing new: nothing announced.
        let r = plan_round(9, &[waiting(8, true, false)]);
        assert_eq!((r.entries.len(), r.latest, r.cut), (0, 9, 1));
    }

    #[test]
    fn a_batch_never_shows_a_member_history_from_before_they_joined() {
        assert!(sees_batch(9, Some(9)));
        assert!(sees_batch(3, Some(9)));
        assert!(!sees_batch(10, Some(9)));
        assert!(sees_batch(10, None));
    }
}
