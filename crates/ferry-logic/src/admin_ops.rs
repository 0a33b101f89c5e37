//! Operations of the admin API (Domain::Ops): groups listed, shown and dissolved, any
//! message recalled, system messages broadcast, per-user limit overrides. Every
//! operation reuses the paths users' own requests take (the store's transactions, the
//! inbox entries, the notifies), so devices converge the same way: online ones at once,
//! offline ones at their next sync.
//!
//! What operators do reaches users under the reserved names [`ADMIN`] (recalls,
//! dissolutions: `by`) and [`SYSTEM`] (broadcasts: `from`, with `MSG_TYPE_SYSTEM`).

use std::collections::HashSet;
use std::sync::Arc;

use ferry_proto::v1;
use ferry_store::{GroupSummary, NewEvent, StoreError, SystemMessage};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, Call, Domain, Reply, Route, Scope};
use crate::core::{unix_ms, Core};
use crate::error::LogicError;
use crate::groups::Groups;
use crate::limits::{LimitOverride, Rate};
use crate::notify::Notifier;
use crate::push::PushService;

/// Who users see behind an operator's recall or dissolution (`Recall.by`,
/// `GroupEvent.by`).
pub(crate) const ADMIN: &str = "admin";
/// The sender of a system message (`Message.from`).
pub(crate) const SYSTEM: &str = "system";

/// Groups listed at most per page.
pub(crate) const GROUPS_PAGE_MAX: u32 = 500;
/// Users a broadcast to all stores per round (its memory bound).
const BROADCAST_PAGE: u32 = 500;
/// Names a broadcast may list.
pub(crate) const BROADCAST_TO_MAX: usize = 10_000;

/// A group as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct GroupView {
    #[serde(with = "crate::api::json::id_str")]
    pub id: u64,
    pub name: String,
    pub announcement: String,
    /// The owner's name ("" when the owner's account is gone).
    pub owner: String,
    pub member_count: u64,
    pub share_history: bool,
    pub latest_gseq: u64,
    pub created_ms: i64,
    pub dissolved: bool,
    /// When it was dissolved (0: it was not).
    pub dissolved_ms: i64,
    /// The members (only when one group is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberView>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct MemberView {
    pub name: String,
    /// "owner", "admin" or "member".
    pub role: String,
    pub joined_gseq: u64,
}

/// A page of groups; `next` is the `after` of the next page (absent: this was the last).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct GroupPage {
    pub groups: Vec<GroupView>,
    pub next: Option<String>,
}

/// A message recalled by an operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Recalled {
    #[serde(with = "crate::api::json::id_str")]
    pub msg_id: u64,
    /// The group it was sent to (absent: a 1:1 or system message).
    #[serde(with = "crate::api::json::id_str::opt")]
    pub group_id: Option<u64>,
}

/// A user's limits: the override set (absent: none) and the rates that apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct LimitsView {
    pub user: String,
    #[serde(rename = "override")]
    pub overridden: Option<LimitOverride>,
    pub effective: Effective,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Effective {
    pub sends_per_user: Rate,
}

const GROUP_SCHEMA: &str = r#"{"type":"object","properties":{
    "id":{"type":"string"},"name":{"type":"string"},"announcement":{"type":"string"},
    "owner":{"type":"string"},"member_count":{"type":"integer"},
    "share_history":{"type":"boolean"},"latest_gseq":{"type":"integer"},
    "created_ms":{"type":"integer"},"dissolved":{"type":"boolean"},
    "dissolved_ms":{"type":"integer"},
    "members":{"type":"array","items":{"type":"object","properties":{
        "name":{"type":"string"},"role":{"enum":["owner","admin","member"]},
        "joined_gseq":{"type":"integer"}}}}}}"#;

const LIMITS_SCHEMA: &str = r##"{"type":"object","properties":{
    "user":{"type":"string"},
    "override":{"type":["object","null"],"properties":{"sends_per_user":{"$ref":"#/$defs/rate"}}},
    "effective":{"type":"object","properties":{"sends_per_user":{"$ref":"#/$defs/rate"}}}},
    "$defs":{"rate":{"type":"object","required":["per_sec","burst"],"properties":{
        "per_sec":{"type":"number","minimum":0,"description":"0: unlimited"},
        "burst":{"type":"number","minimum":0}}}}}"##;

/// The operations' routes (Domain::Ops).
pub(crate) const ROUTES: &[Route] = &[
    Route {
        op: "groups.list",
        method: "GET",
        path: "admin/groups",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "Groups in id order, dissolved ones included, with their member counts; search by name.",
        query: &[
            ("q", "Only groups whose name contains this (ignoring ASCII case)."),
            ("after", "Groups with an id above this (paging: the previous page's `next`)."),
            ("limit", "At most this many (1–500, default 100)."),
        ],
        request: None,
        response: r#"{"type":"object","required":["groups"],"properties":{
            "groups":{"type":"array","items":{"type":"object"}},
            "next":{"type":["string","null"],"description":"`after` for the next page; null on the last"}}}"#,
    },
    Route {
        op: "groups.show",
        method: "GET",
        path: "admin/groups/{group}",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "One group (by id) with its members and their roles.",
        query: &[],
        request: None,
        response: GROUP_SCHEMA,
    },
    Route {
        op: "groups.dissolve",
        method: "DELETE",
        path: "admin/groups/{group}",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "Dissolve a group: every member is removed and told (GroupEvent DISSOLVED); its devices drop it.",
        query: &[],
        request: None,
        response: r#"{"type":"object","properties":{"group_id":{"type":"string"},
            "members_removed":{"type":"integer"}}}"#,
    },
    Route {
        op: "messages.recall",
        method: "POST",
        path: "admin/messages/{msg}/recall",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "Recall any message (1:1, group or system), whoever sent it and however old: its content leaves the server and every device removes it.",
        query: &[],
        request: None,
        response: r#"{"type":"object","properties":{"msg_id":{"type":"string"},
            "group_id":{"type":["string","null"]}}}"#,
    },
    Route {
        op: "broadcast.send",
        method: "POST",
        path: "admin/broadcast",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "A system message (from \"system\", type MSG_TYPE_SYSTEM) to every user, or to the users listed in `to`: one each.",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["text"],"properties":{
            "text":{"type":"string","minLength":1},
            "to":{"type":"array","items":{"type":"string"},"description":"User names; absent: every user"}}}"#,
        ),
        response: r#"{"type":"object","properties":{"recipients":{"type":"integer"}}}"#,
    },
    Route {
        op: "limits.get",
        method: "GET",
        path: "admin/users/{user}/limits",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "A user's limit override (null: none) and the limits that apply to them.",
        query: &[],
        request: None,
        response: LIMITS_SCHEMA,
    },
    Route {
        op: "limits.set",
        method: "PUT",
        path: "admin/users/{user}/limits",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "Set (replace) a user's limit override; every logic node applies it within about a second.",
        query: &[],
        request: Some(
            r#"{"type":"object","additionalProperties":false,"properties":{
            "sends_per_user":{"type":"object","required":["per_sec","burst"],"properties":{
                "per_sec":{"type":"number","minimum":0},"burst":{"type":"number","minimum":0}}}}}"#,
        ),
        response: LIMITS_SCHEMA,
    },
    Route {
        op: "limits.clear",
        method: "DELETE",
        path: "admin/users/{user}/limits",
        scope: Scope::Admin,
        domain: Domain::Ops,
        summary: "Remove a user's limit override: the configured limits apply again.",
        query: &[],
        request: None,
        response: "",
    },
];

/// The body of `POST admin/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastReq {
    text: String,
    #[serde(default)]
    to: Option<Vec<String>>,
}

fn id_param(call: &Call<'_>, name: &str, what: &str) -> Result<u64, ApiError> {
    call.param(name)
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no such {what}: {:?}", call.param(name))))
}

/// The admin operations service.
pub(crate) struct Ops {
    core: Arc<Core>,
    notifier: Arc<Notifier>,
    /// Dissolutions and group recalls go through the groups' fan-out.
    groups: Arc<Groups>,
    /// Wakes devices without a live link (recalls, broadcasts).
    push: Arc<PushService>,
}

fn role_name(role: i32) -> String {
    v1::GroupRole::try_from(role)
        .unwrap_or(v1::GroupRole::Member)
        .as_str_name()
        .to_ascii_lowercase()
}

fn no_group() -> LogicError {
    LogicError::NotFound("no such group".into())
}

impl Ops {
    pub fn new(
        core: Arc<Core>,
        notifier: Arc<Notifier>,
        groups: Arc<Groups>,
        push: Arc<PushService>,
    ) -> Ops {
        Ops {
            core,
            notifier,
            groups,
            push,
        }
    }

    /// Answers one of [`ROUTES`].
    pub async fn api(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        match call.route.op {
            "groups.list" => {
                let q = call.query("q").unwrap_or("");
                let after = call.query_parse::<u64>("after")?.unwrap_or(0);
                let limit = call.query_parse::<u32>("limit")?.unwrap_or(100);
                Ok(Reply::json(&self.groups_list(q, after, limit).await?))
            }
            "groups.show" => {
                let g = id_param(call, "group", "group")?;
                Ok(Reply::json(&self.group_show(g).await?))
            }
            "groups.dissolve" => {
                let g = id_param(call, "group", "group")?;
                let n = self.dissolve(g).await?;
                Ok(Reply::json(
                    &serde_json::json!({"group_id": g.to_string(), "members_removed": n}),
                ))
            }
            "messages.recall" => {
                let m = id_param(call, "msg", "message")?;
                Ok(Reply::json(&self.recall(m).await?))
            }
            "broadcast.send" => {
                let r: BroadcastReq = call.json()?;
                let n = self.broadcast(&r.text, r.to.as_deref()).await?;
                Ok(Reply::json(&serde_json::json!({"recipients": n})))
            }
            "limits.get" => Ok(Reply::json(&self.limits_get(call.param("user")).await?)),
            "limits.set" => {
                let o: LimitOverride = call.json()?;
                Ok(Reply::json(&self.limits_put(call.param("user"), o).await?))
            }
            "limits.clear" => {
                self.limits_delete(call.param("user")).await?;
                Ok(Reply::no_content())
            }
            op => Err(ApiError::Internal(format!("no handler for {op}"))),
        }
    }

    /// A name, or "" for an account that is gone.
    async fn name_or_empty(&self, id: u64) -> String {
        self.core
            .user_name(id)
            .await
            .map(|n| n.to_string())
            .unwrap_or_default()
    }

    async fn group_view(&self, g: GroupSummary) -> GroupView {
        GroupView {
            id: g.group.id,
            owner: self.name_or_empty(g.group.owner_id).await,
            name: g.group.name,
            announcement: g.group.announcement,
            member_count: g.members,
            share_history: g.group.share_history,
            latest_gseq: g.group.latest_gseq,
            created_ms: g.group.created_ms,
            dissolved: g.dissolved_ms != 0,
            dissolved_ms: g.dissolved_ms,
            members: None,
        }
    }

    /// `GET admin/groups?q=&after=&limit=`: groups by id, whose name contains `q`.
    pub async fn groups_list(
        &self,
        q: &str,
        after: u64,
        limit: u32,
    ) -> Result<GroupPage, LogicError> {
        let limit = limit.clamp(1, GROUPS_PAGE_MAX);
        let rows = self.core.store.list_groups(q.trim(), after, limit).await?;
        let next = rows
            .last()
            .filter(|_| rows.len() == limit as usize)
            .map(|g| g.group.id.to_string());
        let mut groups = Vec::with_capacity(rows.len());
        for g in rows {
            groups.push(self.group_view(g).await);
        }
        Ok(GroupPage { groups, next })
    }

    /// `GET admin/groups/{group}`: one group with its members.
    pub async fn group_show(&self, group: u64) -> Result<GroupView, LogicError> {
        let g = self
            .core
            .store
            .group_summary(group)
            .await?
            .ok_or_else(no_group)?;
        let mut view = self.group_view(g).await;
        let mut members = Vec::new();
        for m in self.core.store.group_members(group).await? {
            members.push(MemberView {
                name: self.name_or_empty(m.user_id).await,
                role: role_name(m.role),
                joined_gseq: m.joined_gseq,
            });
        }
        view.members = Some(members);
        Ok(view)
    }

    /// `DELETE admin/groups/{group}`: dissolves the group; answers how many members
    /// were removed.
    pub async fn dissolve(&self, group: u64) -> Result<usize, LogicError> {
        let removed = self.groups.dissolve(group, ADMIN).await?;
        metrics::counter!("ferry_admin_dissolved_groups_total").increment(1);
        Ok(removed.len())
    }

    /// `POST admin/messages/{msg}/recall`: recalls any message, 1:1, group or system,
    /// whoever sent it and however long ago. Its content leaves the store; every device
    /// of the people who had it removes it (a recall entry in the 1:1 inboxes, in the
    /// group's log for a group message).
    pub async fn recall(&self, msg_id: u64) -> Result<Recalled, LogicError> {
        let missing = || LogicError::NotFound("no such message (or recalled already)".into());
        let info = self
            .core
            .store
            .message_info(msg_id)
            .await?
            .ok_or_else(missing)?;
        let body = info.body.ok_or_else(missing)?;
        let time_ms = unix_ms();
        let recall = v1::Recall {
            msg_id,
            group_id: body.group_id,
            by: ADMIN.into(),
        };
        if body.group_id != 0 {
            self.groups.recall_any(recall, time_ms).await?;
            metrics::counter!("ferry_recalls_total").increment(1);
            return Ok(Recalled {
                msg_id,
                group_id: Some(body.group_id),
            });
        }
        // 1:1 (or a system message, which has no sender): both inboxes that hold it.
        let mut users = Vec::with_capacity(2);
        if info.sender_id != 0 && self.core.store.user_by_id(info.sender_id).await?.is_some() {
            users.push(info.sender_id);
        }
        match self.core.user_id(&body.to).await {
            Ok(to) if !users.contains(&to) => users.push(to),
            Ok(_) => {}
            // The recipient's account is gone: nobody else to tell.
            Err(LogicError::UnknownUser(_)) => {}
            Err(e) => return Err(e),
        }
        let entry = v1::Entry {
            kind: Some(v1::entry::Kind::Recall(recall)),
            time_ms,
            ..Default::default()
        };
        let events: Vec<NewEvent> = users
            .iter()
            .map(|u| NewEvent {
                user_id: *u,
                entry: entry.clone(),
            })
            .collect();
        let (_, seqs) = self
            .core
            .store
            .recall_message(msg_id, None, events)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => missing(),
                e => e.into(),
            })?;
        for (u, seq) in users.into_iter().zip(seqs) {
            self.push.entry(u, seq, &entry);
            self.notifier.notify_entry(u, seq, entry.clone()).await;
        }
        metrics::counter!("ferry_recalls_total").increment(1);
        Ok(Recalled {
            msg_id,
            group_id: None,
        })
    }

    /// `POST admin/broadcast`: a system message to each user named in `to`, or to every
    /// user when `to` is `None` (read and stored a page of users at a time). Every
    /// recipient gets exactly one message of their own (`from` "system",
    /// `MSG_TYPE_SYSTEM`). Unknown names refuse the whole broadcast before anything is
    /// stored. Answers how many users got it.
    pub async fn broadcast(&self, text: &str, to: Option<&[String]>) -> Result<u64, LogicError> {
        if text.trim().is_empty() {
            return Err(LogicError::InvalidArgument("text is empty".into()));
        }
        if text.len() > self.core.cfg.max_text_bytes {
            return Err(LogicError::TooLarge(format!(
                "text of {} bytes exceeds the limit of {}",
                text.len(),
                self.core.cfg.max_text_bytes
            )));
        }
        let time_ms = unix_ms();
        let mut sent = 0;
        match to {
            Some(names) => {
                if names.len() > BROADCAST_TO_MAX {
                    return Err(LogicError::TooLarge(format!(
                        "at most {BROADCAST_TO_MAX} names; leave `to` out to reach everyone"
                    )));
                }
                let mut seen = HashSet::new();
                let mut users = Vec::new();
                let mut unknown = Vec::new();
                for name in names {
                    match self.core.user_id(name).await {
                        Ok(id) if seen.insert(id) => users.push((id, name.clone())),
                        Ok(_) => {}
                        Err(LogicError::UnknownUser(n)) => unknown.push(n),
                        Err(e) => return Err(e),
                    }
                }
                if !unknown.is_empty() {
                    return Err(LogicError::NotFound(format!(
                        "no such users: {}",
                        unknown.join(", ")
                    )));
                }
                for page in users.chunks(BROADCAST_PAGE as usize) {
                    sent += self.broadcast_page(text, page.to_vec(), time_ms).await?;
                }
            }
            None => {
                let mut after = 0;
                loop {
                    let page = self.core.store.users_after(after, BROADCAST_PAGE).await?;
                    let Some(last) = page.last() else { break };
                    after = last.0;
                    let full = page.len() == BROADCAST_PAGE as usize;
                    sent += self.broadcast_page(text, page, time_ms).await?;
                    if !full {
                        break;
                    }
                }
            }
        }
        metrics::counter!("ferry_admin_broadcast_messages_total").increment(sent);
        Ok(sent)
    }

    /// Stores one page of a broadcast and tells its recipients; answers how many got it.
    async fn broadcast_page(
        &self,
        text: &str,
        users: Vec<(u64, String)>,
        time_ms: i64,
    ) -> Result<u64, LogicError> {
        let msgs: Vec<SystemMessage> = users
            .iter()
            .map(|(id, name)| SystemMessage {
                user_id: *id,
                message: v1::Message {
                    from: SYSTEM.into(),
                    to: name.clone(),
                    r#type: v1::MsgType::System as i32,
                    text: text.to_owned(),
                    ..Default::default()
                },
            })
            .collect();
        let done = self
            .core
            .store
            .append_system_messages(msgs.clone(), time_ms)
            .await?;
        let mut sent = 0;
        for (m, d) in msgs.into_iter().zip(done) {
            let Some((msg_id, seq)) = d else { continue };
            let message = v1::Message {
                msg_id,
                time_ms,
                ..m.message
            };
            self.push.message(m.user_id, seq, &message);
            self.notifier.notify_message(m.user_id, seq, &message).await;
            sent += 1;
        }
        Ok(sent)
    }

    async fn limits_view(&self, user: &str, id: u64) -> Result<LimitsView, LogicError> {
        let overridden = match self.core.store.limit_override(id).await? {
            Some(json) => Some(serde_json::from_str::<LimitOverride>(&json).map_err(|e| {
                LogicError::Internal(format!("the stored override does not parse: {e}"))
            })?),
            None => None,
        };
        let sends = overridden
            .as_ref()
            .and_then(|o| o.sends_per_user)
            .unwrap_or(self.core.cfg.limits.sends_per_user);
        Ok(LimitsView {
            user: user.to_owned(),
            overridden,
            effective: Effective {
                sends_per_user: sends,
            },
        })
    }

    /// `GET admin/users/{user}/limits`.
    pub async fn limits_get(&self, user: &str) -> Result<LimitsView, LogicError> {
        let id = self.core.user_id(user).await?;
        self.limits_view(user, id).await
    }

    /// `PUT admin/users/{user}/limits`: sets the user's override (replacing an earlier
    /// one). It applies on this node at once and on every other within
    /// [`crate::limits::OVERRIDES_TTL`].
    pub async fn limits_put(&self, user: &str, o: LimitOverride) -> Result<LimitsView, LogicError> {
        let id = self.core.user_id(user).await?;
        if o.is_empty() {
            return Err(LogicError::InvalidArgument(
                "set at least one limit (sends_per_user), or DELETE to clear".into(),
            ));
        }
        if let Some(r) = o.sends_per_user {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(r.per_sec) || !ok(r.burst) {
                return Err(LogicError::InvalidArgument(
                    "per_sec and burst are numbers ≥ 0 (per_sec 0: unlimited)".into(),
                ));
            }
        }
        let json = serde_json::to_string(&o).map_err(|e| LogicError::Internal(e.to_string()))?;
        self.core.store.set_limit_override(id, &json).await?;
        self.core.limits.overrides.set(id, Some(o));
        self.limits_view(user, id).await
    }

    /// `DELETE admin/users/{user}/limits`: the configured limits apply again. False when
    /// there was no override.
    pub async fn limits_delete(&self, user: &str) -> Result<bool, LogicError> {
        let id = self.core.user_id(user).await?;
        let had = self.core.store.delete_limit_override(id).await?;
        self.core.limits.overrides.set(id, None);
        Ok(had)
    }
}

#[cfg(test)]
mod tests {
    use ferry_proto::{cmd, ProtoMessage};

    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::{notify_of, req, World};

    fn open() -> LogicConfig {
        LogicConfig {
            open_messaging: true,
            ..Default::default()
        }
    }

    fn ops(w: &World) -> Ops {
        Ops::new(
            w.core.clone(),
            w.notifier.clone(),
            w.groups.clone(),
            w.push.clone(),
        )
    }

    async fn inbox_of(w: &World, user: u64) -> Vec<v1::Entry> {
        w.core.store.inbox(user, 0, 1000).await.unwrap().entries
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

    async fn send(w: &World, from: u64, to: &str, group: u64, cmid: u64) -> u64 {
        let m = v1::SendMsg {
            to: to.into(),
            group_id: group,
            text: format!("m{cmid}"),
            client_msg_id: cmid,
            ..Default::default()
        };
        let resp = w.inbox.send(&req(cmd::SEND, from, &m)).await.unwrap();
        v1::SendAck::decode(resp.body).unwrap().msg_id
    }

    #[tokio::test]
    async fn groups_are_listed_shown_and_dissolved_with_every_member_told() {
        let w = World::new(open());
        let (ann, bob, cat) = (
            w.user("ann").await,
            w.user("bob").await,
            w.user("cat").await,
        );
        let g = group(&w, ann, &["bob", "cat"]).await;
        let other = group(&w, bob, &["ann"]).await;
        let ops = ops(&w);
        let page = ops.groups_list("", 0, 10).await.unwrap();
        assert_eq!(page.groups.len(), 2);
        assert_eq!(page.next, None);
        let one = ops.groups_list("", 0, 1).await.unwrap();
        assert_eq!(one.groups.len(), 1);
        assert_eq!(one.next, Some(one.groups[0].id.to_string()));
        let shown = ops.group_show(g).await.unwrap();
        assert_eq!((shown.owner.as_str(), shown.member_count), ("ann", 3));
        let members = shown.members.unwrap();
        assert_eq!(members[0].name, "ann");
        assert_eq!(members[0].role, "owner");

        w.notifier.link_up(bob, "gw-1", 1, "d1").await;
        w.pushes();
        assert_eq!(ops.dissolve(g).await.unwrap(), 3);
        // Each member's inbox ends with the dissolution; bob (online) was told.
        for u in [ann, bob, cat] {
            let last = inbox_of(&w, u).await.pop().unwrap();
            let Some(v1::entry::Kind::Group(ev)) = last.kind else {
                panic!("not a group event: {last:?}");
            };
            assert_eq!(ev.kind(), v1::group_event::Kind::Dissolved);
            assert_eq!((ev.group_id, ev.by.as_str()), (g, ADMIN));
        }
        let pushes = w.pushes();
        assert!(pushes.iter().any(|(_, p)| p.user_id == bob
            && p.cmd == u32::from(cmd::NOTIFY)
            && notify_of(p).entries.iter().any(|e| matches!(
                &e.kind,
                Some(v1::entry::Kind::Group(ev)) if ev.kind() == v1::group_event::Kind::Dissolved
            ))));
        // Gone for the members: no info, no sends; the other group is untouched.
        let info = w
            .groups
            .info(&req(cmd::GROUP_INFO, ann, &v1::GroupReq { group_id: g }))
            .await;
        assert!(matches!(info, Err(LogicError::NotFound(_))), "{info:?}");
        let sent = w
            .inbox
            .send(&req(
                cmd::SEND,
                bob,
                &v1::SendMsg {
                    group_id: g,
                    text: "anyone?".into(),
                    client_msg_id: 99,
                    ..Default::default()
                },
            ))
            .await;
        assert!(matches!(sent, Err(LogicError::NotFound(_))), "{sent:?}");
        assert_eq!(ops.group_show(other).await.unwrap().member_count, 2);
        let shown = ops.group_show(g).await.unwrap();
        assert!(shown.dissolved && shown.member_count == 0);
        assert!(matches!(
            ops.dissolve(g).await,
            Err(LogicError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn any_message_is_recalled_at_any_age_and_its_content_is_gone() {
        let mut cfg = open();
        cfg.recall_window_secs = 0;
        let w = World::new(cfg);
        let (ann, bob, cat) = (
            w.user("ann").await,
            w.user("bob").await,
            w.user("cat").await,
        );
        let direct = send(&w, ann, "bob", 0, 1).await;
        let g = group(&w, ann, &["bob", "cat"]).await;
        let in_group = send(&w, cat, "", g, 2).await;
        // Past the sender's window: a user's own recall is refused, the admin's is not.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let own = w
            .inbox
            .recall(&req(cmd::RECALL, ann, &v1::RecallReq { msg_id: direct }))
            .await;
        assert!(
            matches!(own, Err(LogicError::PermissionDenied(_))),
            "{own:?}"
        );
        let ops = ops(&w);
        assert_eq!(
            ops.recall(direct).await.unwrap(),
            Recalled {
                msg_id: direct,
                group_id: None
            }
        );
        for u in [ann, bob] {
            let entries = inbox_of(&w, u).await;
            assert!(entries.iter().any(|e| matches!(
                &e.kind,
                Some(v1::entry::Kind::Recall(r)) if r.msg_id == direct && r.by == ADMIN
            )));
            assert!(
                !entries.iter().any(|e| matches!(
                    &e.kind,
                    Some(v1::entry::Kind::Message(m)) if m.msg_id == direct
                )),
                "the content is gone from the store"
            );
        }
        assert_eq!(
            ops.recall(in_group).await.unwrap().group_id,
            Some(g),
            "a group message"
        );
        let (log, _, _) = w.core.store.group_log(g, 0, 100).await.unwrap();
        assert!(log.iter().any(|e| matches!(
            &e.kind,
            Some(v1::group_entry::Kind::Recall(r)) if r.msg_id == in_group
        )));
        assert!(!log.iter().any(|e| matches!(
            &e.kind,
            Some(v1::group_entry::Kind::Message(m)) if m.msg_id == in_group
        )));
        assert!(matches!(
            ops.recall(direct).await,
            Err(LogicError::NotFound(_))
        ));
        assert!(matches!(
            ops.recall(123_456).await,
            Err(LogicError::NotFound(_))
        ));
    }

    fn system_texts(entries: &[v1::Entry]) -> Vec<(String, String)> {
        entries
            .iter()
            .filter_map(|e| match &e.kind {
                Some(v1::entry::Kind::Message(m)) if m.r#type == v1::MsgType::System as i32 => {
                    Some((m.from.clone(), m.text.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_broadcast_reaches_each_listed_or_every_user_once() {
        let w = World::new(open());
        let mut ids = Vec::new();
        // More users than one page of a broadcast to all.
        for i in 0..(BROADCAST_PAGE as usize + 7) {
            ids.push(w.user(&format!("u{i}")).await);
        }
        let ops = ops(&w);
        let to = vec!["u1".to_string(), "u3".to_string(), "u1".to_string()];
        assert_eq!(ops.broadcast("to some", Some(&to)).await.unwrap(), 2);
        let unknown = vec!["u1".to_string(), "nobody".to_string()];
        let refused = ops.broadcast("x", Some(&unknown)).await;
        assert!(matches!(&refused, Err(LogicError::NotFound(m)) if m.contains("nobody")));
        assert_eq!(
            ops.broadcast("to all", None).await.unwrap(),
            ids.len() as u64
        );
        for (i, u) in ids.iter().enumerate() {
            let got = system_texts(&inbox_of(&w, *u).await);
            let mut want = Vec::new();
            if i == 1 || i == 3 {
                want.push((SYSTEM.to_string(), "to some".to_string()));
            }
            want.push((SYSTEM.to_string(), "to all".to_string()));
            assert_eq!(got, want, "user u{i}");
        }
        assert!(matches!(
            ops.broadcast("  ", None).await,
            Err(LogicError::InvalidArgument(_))
        ));
        // Users cannot send one themselves.
        let spoof = v1::SendMsg {
            to: "u2".into(),
            text: "I am the system".into(),
            r#type: v1::MsgType::System as i32,
            client_msg_id: 5,
            ..Default::default()
        };
        let refused = w.inbox.send(&req(cmd::SEND, ids[0], &spoof)).await;
        assert!(
            matches!(refused, Err(LogicError::InvalidArgument(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_limit_override_applies_to_its_user_only_until_cleared() {
        let mut cfg = open();
        cfg.limits.sends_per_user = Rate::new(1000.0, 1000.0);
        let w = World::new(cfg);
        let (ann, _bob) = (w.user("ann").await, w.user("bob").await);
        let ops = ops(&w);
        let slow = LimitOverride {
            sends_per_user: Some(Rate::new(0.001, 2.0)),
        };
        let view = ops.limits_put("ann", slow.clone()).await.unwrap();
        assert_eq!(view.overridden, Some(slow));
        assert_eq!(view.effective.sends_per_user, Rate::new(0.001, 2.0));
        assert!(matches!(
            ops.limits_put("ann", LimitOverride::default()).await,
            Err(LogicError::InvalidArgument(_))
        ));
        let send_as = |from: u64, cmid: u64| {
            let m = v1::SendMsg {
                to: "bob".into(),
                text: "hi".into(),
                client_msg_id: cmid,
                ..Default::default()
            };
            req(cmd::SEND, from, &m)
        };
        assert!(w.inbox.send(&send_as(ann, 1)).await.is_ok());
        assert!(w.inbox.send(&send_as(ann, 2)).await.is_ok());
        let third = w.inbox.send(&send_as(ann, 3)).await;
        assert!(
            matches!(third, Err(LogicError::RateLimited(..))),
            "{third:?}"
        );
        // Another node learns it from the store within the TTL: a fresh core.
        let other = Core::new(w.core.cfg.clone(), w.core.store.clone());
        other.refresh_limit_overrides().await;
        assert_eq!(
            other.limits.overrides.sends(ann),
            Some(Rate::new(0.001, 2.0))
        );
        assert!(ops.limits_delete("ann").await.unwrap());
        assert!(!ops.limits_delete("ann").await.unwrap());
        assert_eq!(ops.limits_get("ann").await.unwrap().overridden, None);
        assert!(w.inbox.send(&send_as(ann, 3)).await.is_ok(), "cleared");
        assert!(matches!(
            ops.limits_get("nobody").await,
            Err(LogicError::UnknownUser(_))
        ));
    }
}
