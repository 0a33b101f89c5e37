//! Bots (issue 23): bot accounts — users with the `bot` flag, who sign in with no
//! password — and their long-lived, scoped API tokens, used over plain HTTP+JSON
//! (`/v1/bot/...`), so a bot needs no Noise client. See docs/bots.md.
//!
//! A token is `fbot_` and 64 hex digits; the store keeps its SHA-256 only. Its scopes
//! say what it may do: `send` (bot/send, bot/typing), `read` (bot/updates, bot/webhook),
//! `group_admin` (bot/groups: create a group, add and remove members). A bot's sends go through the one
//! send path of every user ([`Inbox::send`]): rate limits, blocks, the before-send hook,
//! webhooks all apply. Bots are open to messaging: a bot may message any user and any
//! user may message a bot, friends or not (a block still holds) — see
//! `Friends::may_message`.
//!
//! `bot/updates` is a long poll on the bot's inbox: it answers at once when there are
//! entries after `after`, and otherwise holds until one arrives (woken in-process by the
//! notifier when the bot's inbox grows on this node, and re-reading the store every
//! second for entries another logic node appended), the timeout, or the call's deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use ferry_bus::BusRequest;
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::api::json::{entry_json, group_entry_json, is_own_update};
use crate::api::{ApiError, Call, Domain, Reply, Route, Scope};
use crate::auth;
use crate::core::{unix_ms, Core};
use crate::error::LogicError;
use crate::inbox::Inbox;
use crate::notify::Notifier;

/// The scopes a token may carry.
pub(crate) const SCOPES: &[&str] = &["send", "read", "group_admin"];
/// A token's scopes when none are asked for.
const DEFAULT_SCOPES: &[&str] = &["send", "read"];
/// The longest a `bot/updates` call holds, in seconds.
pub(crate) const MAX_POLL_SECS: u64 = 50;
/// How often a held `bot/updates` re-reads the store (entries appended by another
/// logic node wake no waiter here).
const RECHECK: Duration = Duration::from_secs(1);
/// `last_used_ms` is written at most this often per token.
const TOUCH_EVERY_MS: i64 = 60_000;
/// The device id of a bot's API calls (rate limits and the send order key on it).
const BOT_DEVICE: &str = "bot-api";

/// An error of the bot API, mapped by the API layer to its HTTP status.
#[derive(Debug)]
pub(crate) enum BotError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Logic(LogicError),
}

impl From<LogicError> for BotError {
    fn from(e: LogicError) -> Self {
        BotError::Logic(e)
    }
}

impl From<StoreError> for BotError {
    fn from(e: StoreError) -> Self {
        BotError::Logic(e.into())
    }
}

/// Who waits on which inbox (held `bot/updates` calls), so the notifier can wake them
/// when the inbox grows. Costs the notifier one atomic load while nobody waits.
#[derive(Default)]
pub(crate) struct InboxWatchers {
    by_user: DashMap<u64, (Arc<Notify>, usize)>,
    count: AtomicUsize,
}

impl InboxWatchers {
    /// `user`'s inbox grew: wakes whoever waits on it.
    pub fn wake(&self, user: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(w) = self.by_user.get(&user) {
            w.0.notify_waiters();
        }
    }

    /// Whether any call waits.
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Waits on `user`'s inbox until the guard is dropped.
    fn watch(&self, user: u64) -> Watch<'_> {
        let notify = {
            let mut e = self
                .by_user
                .entry(user)
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            e.1 += 1;
            e.0.clone()
        };
        self.count.fetch_add(1, Ordering::AcqRel);
        Watch {
            watchers: self,
            user,
            notify,
        }
    }
}

struct Watch<'a> {
    watchers: &'a InboxWatchers,
    user: u64,
    notify: Arc<Notify>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.watchers.count.fetch_sub(1, Ordering::AcqRel);
        self.watchers.by_user.remove_if_mut(&self.user, |_, e| {
            e.1 -= 1;
            e.1 == 0
        });
    }
}

/// An authenticated bot call.
#[derive(Debug, Clone)]
pub(crate) struct BotAuth {
    pub bot_id: u64,
    pub token_id: u64,
    pub scopes: Vec<String>,
}

/// `POST bot/send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    #[serde(default)]
    pub to: String,
    #[serde(default, with = "crate::api::json::id_str")]
    pub group_id: u64,
    #[serde(default)]
    pub text: String,
    #[serde(default, with = "crate::api::json::id_str")]
    pub client_msg_id: u64,
    #[serde(default)]
    pub mentions: Vec<String>,
}

/// `POST bot/typing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TypingBody {
    #[serde(default)]
    pub to: String,
    #[serde(default, with = "crate::api::json::id_str")]
    pub group_id: u64,
}

/// The bots service.
pub(crate) struct Bots {
    core: Arc<Core>,
    /// Its watchers are woken when a bot's inbox grows.
    notifier: Arc<Notifier>,
    /// The send path every user's messages take.
    inbox: Arc<Inbox>,
    /// A bot's own webhook endpoint (`bot/webhook`): its updates POSTed, signed.
    webhooks: Arc<crate::webhooks::Webhooks>,
    /// Groups a bot with `group_admin` makes and runs, by the rules every owner follows.
    groups: Arc<crate::groups::Groups>,
}

fn scopes_of(asked: Option<Vec<String>>) -> Result<Vec<String>, BotError> {
    let scopes = asked.unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        if !SCOPES.contains(&s.as_str()) {
            return Err(BotError::BadRequest(format!(
                "unknown scope {s:?}; scopes are {}",
                SCOPES.join(", ")
            )));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

fn token_json(t: &ferry_store::BotToken) -> Value {
    json!({
        "id": t.id, "scopes": t.scopes, "created_ms": t.created_ms,
        "last_used_ms": t.last_used_ms,
    })
}

fn user_json(id: u64, name: &str, created_ms: i64) -> Value {
    json!({"id": id.to_string(), "name": name, "created_ms": created_ms, "bot": true})
}

/// Where a bot's `bot/updates` goes on from: its inbox after seq `inbox`, and each of
/// its groups' logs after a gseq. Written `12` (the inbox only) or `12,g5:30,g9:2`
/// (then group 5 after gseq 30, group 9 after 2). A group the cursor does not name is
/// read from the first entry the bot may read; a group the bot left drops out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub inbox: u64,
    pub groups: BTreeMap<u64, u64>,
}

/// The most groups a cursor may name (a bot in more groups still works: the cursor
/// names the ones it is in, and this bounds what a caller may send).
const CURSOR_GROUPS_MAX: usize = 10_000;

impl Cursor {
    pub fn parse(s: &str) -> Result<Cursor, BotError> {
        let bad = || BotError::BadRequest(format!("after={s:?} is not a cursor (next_after)"));
        let mut parts = s.split(',');
        let inbox = match parts.next() {
            None | Some("") => 0,
            Some(n) => n.parse().map_err(|_| bad())?,
        };
        let mut groups = BTreeMap::new();
        for p in parts {
            let (g, q) = p
                .strip_prefix('g')
                .and_then(|p| p.split_once(':'))
                .ok_or_else(bad)?;
            let g: u64 = g.parse().map_err(|_| bad())?;
            let q: u64 = q.parse().map_err(|_| bad())?;
            groups.insert(g, q);
            if groups.len() > CURSOR_GROUPS_MAX {
                return Err(bad());
            }
        }
        Ok(Cursor { inbox, groups })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inbox)?;
        for (g, q) in &self.groups {
            write!(f, ",g{g}:{q}")?;
        }
        Ok(())
    }
}

impl Bots {
    pub fn new(
        core: Arc<Core>,
        notifier: Arc<Notifier>,
        inbox: Arc<Inbox>,
        webhooks: Arc<crate::webhooks::Webhooks>,
        groups: Arc<crate::groups::Groups>,
    ) -> Bots {
        Bots {
            core,
            notifier,
            inbox,
            webhooks,
            groups,
        }
    }

    /// `POST bot/groups`, `bot/groups/{group}/add|remove` (scope `group_admin`): through
    /// the group requests of every user, so the bot is the owner of what it creates and
    /// may change only what an owner or admin may.
    async fn group_call(&self, call: &Call<'_>, a: &BotAuth) -> Result<Reply, ApiError> {
        let resp = match call.route.op {
            "bot.group_create" => {
                let b: GroupCreateBody = call.json()?;
                let req = v1::GroupCreateReq {
                    name: b.name,
                    members: b.members,
                    share_history: b.share_history,
                };
                self.groups
                    .create(&Self::request(a, cmd::GROUP_CREATE, &req))
                    .await?
            }
            op => {
                let b: GroupMembersBody = call.json()?;
                let group_id = call
                    .param("group")
                    .parse()
                    .map_err(|_| ApiError::BadRequest("a group id is a number".into()))?;
                let c = if op == "bot.group_add" {
                    cmd::GROUP_ADD
                } else {
                    cmd::GROUP_REMOVE
                };
                let req = v1::GroupMembersReq {
                    group_id,
                    usernames: b.users,
                };
                self.groups
                    .members_change(&Self::request(a, c, &req))
                    .await?
            }
        };
        let g = v1::GroupResp::decode(resp.body)
            .map_err(LogicError::from)?
            .group
            .unwrap_or_default();
        let v = json!({
            "group_id": g.group_id.to_string(), "name": g.name, "owner": g.owner,
            "announcement": g.announcement, "latest_gseq": g.latest_gseq,
        });
        Ok(if call.route.op == "bot.group_create" {
            Reply::created(&v)
        } else {
            Reply::json(&v)
        })
    }

    /// The bot named `name`, or NOT_FOUND (also for a user who is not a bot).
    async fn bot_id(&self, name: &str) -> Result<u64, BotError> {
        let missing = || BotError::NotFound(format!("no bot named {name:?}"));
        let id = self.core.user_id(name).await.map_err(|_| missing())?;
        if !self.core.store.is_bot(id).await? {
            return Err(missing());
        }
        Ok(id)
    }

    /// A new token for `bot_id`: (its id, the token).
    async fn issue(&self, bot_id: u64, scopes: Vec<String>) -> Result<(u64, String), BotError> {
        let token = format!("fbot_{}", auth::new_token());
        let id = self
            .core
            .store
            .add_bot_token(bot_id, auth::token_hash(&token), scopes)
            .await?;
        Ok((id, token))
    }

    /// `POST admin/bots {"name","scopes"}`: a bot account and its first token.
    pub async fn create(&self, name: &str, scopes: Option<Vec<String>>) -> Result<Value, BotError> {
        if !crate::accounts::valid_username(name) {
            return Err(BotError::BadRequest(
                "a bot's name must be 1-32 characters of A-Z a-z 0-9 _ . - (and not \"system\")"
                    .into(),
            ));
        }
        let scopes = scopes_of(scopes)?;
        // No password can match "!" (not a PHC string): a bot signs in with its tokens.
        let id = match self.core.store.create_bot(name, "!").await {
            Ok(id) => id,
            Err(StoreError::UserExists) => {
                return Err(BotError::Conflict(format!("the name {name:?} is taken")))
            }
            Err(e) => return Err(e.into()),
        };
        let (token_id, token) = self.issue(id, scopes.clone()).await?;
        tracing::info!(bot = name, bot_id = id, "bot created");
        Ok(json!({
            "bot": user_json(id, name, unix_ms()),
            "token": token,
            "token_id": token_id,
            "scopes": scopes,
        }))
    }

    /// `GET admin/bots`: every bot with its tokens (never the tokens themselves).
    pub async fn list(&self) -> Result<Value, BotError> {
        let mut bots = Vec::new();
        for b in self.core.store.bots().await? {
            let tokens: Vec<Value> = self
                .core
                .store
                .bot_tokens(b.id)
                .await?
                .iter()
                .map(token_json)
                .collect();
            let mut v = user_json(b.id, &b.name, b.created_ms);
            v["tokens"] = json!(tokens);
            bots.push(v);
        }
        Ok(json!({ "bots": bots }))
    }

    /// `POST admin/bots/{bot}/tokens {"scopes"}`: another token.
    pub async fn add_token(
        &self,
        bot: &str,
        scopes: Option<Vec<String>>,
    ) -> Result<Value, BotError> {
        let id = self.bot_id(bot).await?;
        let scopes = scopes_of(scopes)?;
        let (token_id, token) = self.issue(id, scopes.clone()).await?;
        Ok(json!({"id": token_id, "token": token, "scopes": scopes}))
    }

    /// `DELETE admin/bots/{bot}/tokens/{id}`.
    pub async fn revoke(&self, bot: &str, token_id: u64) -> Result<(), BotError> {
        let id = self.bot_id(bot).await?;
        if !self.core.store.revoke_bot_token(id, token_id).await? {
            return Err(BotError::NotFound(format!("{bot} has no token {token_id}")));
        }
        tracing::info!(bot, token_id, "bot token revoked");
        Ok(())
    }

    /// The bot behind a bearer token, with `scope` (when given) among its token's:
    /// 401 for no token or one that is not a live bot token (a user's session token, a
    /// revoked one), 403 for a token without the scope.
    pub async fn authenticate(
        &self,
        token: &str,
        scope: Option<&str>,
    ) -> Result<BotAuth, BotError> {
        if token.is_empty() {
            return Err(BotError::Unauthorized(
                "a bot token is required: Authorization: Bearer <token>".into(),
            ));
        }
        let t = self
            .core
            .store
            .bot_token(auth::token_hash(token))
            .await?
            .ok_or_else(|| BotError::Unauthorized("unknown or revoked bot token".into()))?;
        if let Some(s) = scope {
            if !t.scopes.iter().any(|x| x == s) {
                return Err(BotError::Forbidden(format!(
                    "this token lacks the {s:?} scope"
                )));
            }
        }
        let now = unix_ms();
        if now - t.last_used_ms >= TOUCH_EVERY_MS {
            let (store, id) = (self.core.store.clone(), t.id);
            tokio::spawn(async move {
                if let Err(e) = store.touch_bot_token(id, now).await {
                    tracing::debug!(error = %e, "recording a bot token's use failed");
                }
            });
        }
        Ok(BotAuth {
            bot_id: t.bot_id,
            token_id: t.id,
            scopes: t.scopes,
        })
    }

    /// `GET bot/me`.
    pub async fn me(&self, a: &BotAuth) -> Result<Value, BotError> {
        let name = self.core.user_name(a.bot_id).await?;
        Ok(json!({
            "id": a.bot_id.to_string(), "name": &*name, "bot": true,
            "token_id": a.token_id, "scopes": a.scopes,
        }))
    }

    /// A request from the bot, as a gateway would forward one of a logged-in device's.
    fn request<M: ProtoMessage>(a: &BotAuth, c: u8, body: &M) -> BusRequest {
        BusRequest {
            cmd: u32::from(c),
            body: Bytes::from(body.encode_to_vec()),
            user_id: a.bot_id,
            device_id: BOT_DEVICE.into(),
            ..Default::default()
        }
    }

    /// `POST bot/send`: through the send path of every user.
    pub async fn send(&self, a: &BotAuth, b: SendBody) -> Result<Value, BotError> {
        if b.to.is_empty() == (b.group_id == 0) {
            return Err(BotError::BadRequest(
                "give either \"to\" (a user name) or \"group_id\"".into(),
            ));
        }
        if b.text.is_empty() {
            return Err(BotError::BadRequest("\"text\" is empty".into()));
        }
        let client_msg_id = match b.client_msg_id {
            0 => rand::random::<u64>().max(1),
            n => n,
        };
        let msg = v1::SendMsg {
            client_msg_id,
            to: b.to,
            text: b.text,
            group_id: b.group_id,
            mentions: b.mentions,
            ..Default::default()
        };
        let resp = self.inbox.send(&Self::request(a, cmd::SEND, &msg)).await?;
        let ack = v1::SendAck::decode(resp.body).map_err(LogicError::from)?;
        metrics::counter!("ferry_bot_sends_total").increment(1);
        Ok(json!({
            "msg_id": ack.msg_id.to_string(), "seq": ack.seq, "time_ms": ack.time_ms,
            "client_msg_id": client_msg_id.to_string(),
        }))
    }

    /// `POST bot/typing`: "typing…" shown to a user (1:1 only: the protocol has no
    /// typing in groups).
    pub async fn typing(&self, a: &BotAuth, b: TypingBody) -> Result<(), BotError> {
        if b.group_id != 0 || b.to.is_empty() {
            return Err(BotError::BadRequest(
                "typing goes to a user (\"to\"); groups have no typing".into(),
            ));
        }
        self.inbox
            .typing(&Self::request(a, cmd::TYPING, &v1::Typing { to: b.to }))
            .await?;
        Ok(())
    }

    /// `GET bot/updates?after=&timeout=&limit=`: what the bot has not seen after the
    /// cursor `after` — its inbox entries, then the entries of its groups' logs (its own
    /// doings left out) — held up to `timeout` (≤ [`MAX_POLL_SECS`]) or `deadline` while
    /// there are none. At most `limit` entries are read a round.
    pub async fn updates(
        &self,
        a: &BotAuth,
        after: Cursor,
        timeout: Duration,
        limit: u32,
        deadline: Option<Instant>,
    ) -> Result<Value, BotError> {
        let limit = limit.clamp(1, self.core.cfg.sync_page_max);
        let mut until = Instant::now() + timeout.min(Duration::from_secs(MAX_POLL_SECS));
        if let Some(d) = deadline {
            // Leave the answer time to travel back before the caller gives up.
            until = until.min(d.checked_sub(Duration::from_millis(200)).unwrap_or(d));
        }
        let me = self.core.user_name(a.bot_id).await?;
        let watch = self.notifier.watchers.watch(a.bot_id);
        let mut cur = after;
        loop {
            // Registered before the reads: an entry stored after them wakes this round.
            let woken = watch.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (updates, more) = self.read_updates(a.bot_id, &me, &mut cur, limit).await?;
            let now = Instant::now();
            if !updates.is_empty() || now >= until {
                metrics::counter!("ferry_bot_updates_total").increment(updates.len() as u64);
                return Ok(json!({"updates": updates, "next_after": cur.to_string()}));
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(RECHECK.min(until - now)) => {}
            }
        }
    }

    /// One round of [`Self::updates`]: reads up to `limit` entries after `cur` and moves
    /// it past them; answers the updates among them and whether more wait.
    async fn read_updates(
        &self,
        bot: u64,
        me: &str,
        cur: &mut Cursor,
        limit: u32,
    ) -> Result<(Vec<Value>, bool), BotError> {
        let mut updates = Vec::new();
        let mut room = limit;
        let page = self.core.store.inbox(bot, cur.inbox, room).await?;
        let mut more = page.more;
        room -= (page.entries.len() as u32).min(room);
        for e in &page.entries {
            cur.inbox = e.seq;
            let u = entry_json(e);
            if !is_own_update(&u, me) {
                updates.push(u);
            }
        }
        // The groups the bot is in now: one it left drops out of the cursor.
        let mut groups = BTreeMap::new();
        for (g, m) in self.core.store.user_groups(bot).await? {
            let first = m.joined_gseq.saturating_sub(1);
            let mut at = cur.groups.get(&g.id).copied().unwrap_or(first).max(first);
            if g.latest_gseq > at {
                if room == 0 {
                    more = true;
                } else {
                    let (entries, _, rest) = self.core.store.group_log(g.id, at, room).await?;
                    more |= rest;
                    room -= (entries.len() as u32).min(room);
                    for e in &entries {
                        at = e.gseq;
                        let u = group_entry_json(g.id, e);
                        if !is_own_update(&u, me) {
                            updates.push(u);
                        }
                    }
                }
            }
            groups.insert(g.id, at);
        }
        cur.groups = groups;
        Ok((updates, more))
    }

    /// Parses `bot/updates`' query: (after, timeout, limit).
    pub fn updates_query(q: &HashMap<&str, &str>) -> Result<(Cursor, Duration, u32), BotError> {
        fn num(q: &HashMap<&str, &str>, k: &str, default: u64) -> Result<u64, BotError> {
            match q.get(k) {
                None | Some(&"") => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| BotError::BadRequest(format!("{k}={v:?} is not a number"))),
            }
        }
        let after = Cursor::parse(q.get("after").copied().unwrap_or(""))?;
        let timeout = num(q, "timeout", 0)?;
        if timeout > MAX_POLL_SECS {
            return Err(BotError::BadRequest(format!(
                "timeout is at most {MAX_POLL_SECS} seconds"
            )));
        }
        let limit = num(q, "limit", 100)?.min(u64::from(u32::MAX)) as u32;
        Ok((after, Duration::from_secs(timeout), limit))
    }
}

// ---- the API (routes of the lead's api/ router) ----

impl From<BotError> for ApiError {
    fn from(e: BotError) -> Self {
        match e {
            BotError::BadRequest(m) => ApiError::BadRequest(m),
            BotError::Unauthorized(m) => ApiError::Unauthorized(m),
            BotError::Forbidden(m) => ApiError::Forbidden(m),
            BotError::NotFound(m) => ApiError::NotFound(m),
            BotError::Conflict(m) => ApiError::Conflict(m),
            BotError::Logic(e) => ApiError::Logic(e),
        }
    }
}

/// A group as the bot API answers it.
const GROUP_SCHEMA: &str = r#"{"type":"object","properties":{"group_id":{"type":"string"},"name":{"type":"string"},"owner":{"type":"string"},"announcement":{"type":"string"},"latest_gseq":{"type":"integer"}}}"#;

/// The bots' routes: admin (bot accounts and tokens) and the bot API.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        op: "bot.group_create",
        method: "POST",
        path: "bot/groups",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "Create a group the bot owns (scope group_admin)",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string"},"members":{"type":"array","items":{"type":"string"}},"share_history":{"type":"boolean"}}}"#,
        ),
        response: GROUP_SCHEMA,
    },
    Route {
        op: "bot.group_add",
        method: "POST",
        path: "bot/groups/{group}/add",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "Add users to a group the bot owns or administers (scope group_admin)",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["users"],"properties":{"users":{"type":"array","items":{"type":"string"}}}}"#,
        ),
        response: GROUP_SCHEMA,
    },
    Route {
        op: "bot.group_remove",
        method: "POST",
        path: "bot/groups/{group}/remove",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "Remove users from a group the bot owns or administers (scope group_admin)",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["users"],"properties":{"users":{"type":"array","items":{"type":"string"}}}}"#,
        ),
        response: GROUP_SCHEMA,
    },
    Route {
        op: "bot.webhook_set",
        method: "PUT",
        path: "bot/webhook",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "POST the bot's updates (bot.update events, signed) to a URL (scope read); answers the signing secret",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["url"],"properties":{"url":{"type":"string"}}}"#,
        ),
        response: r#"{"type":"object","properties":{"id":{"type":"integer"},"url":{"type":"string"},"secret":{"type":"string"}}}"#,
    },
    Route {
        op: "bot.webhook_get",
        method: "GET",
        path: "bot/webhook",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "The bot's webhook, with its delivery counts (scope read)",
        query: &[],
        request: None,
        response: r#"{"type":"object","properties":{"id":{"type":"integer"},"url":{"type":"string"},"enabled":{"type":"boolean"},"delivered":{"type":"integer"},"failed":{"type":"integer"}}}"#,
    },
    Route {
        op: "bot.webhook_delete",
        method: "DELETE",
        path: "bot/webhook",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "Stop POSTing the bot's updates (scope read)",
        query: &[],
        request: None,
        response: "",
    },
    Route {
        op: "bots.create",
        method: "POST",
        path: "admin/bots",
        scope: Scope::Admin,
        domain: Domain::Bots,
        summary: "Create a bot account and its first API token (shown once)",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string"},"scopes":{"type":"array","items":{"enum":["send","read","group_admin"]}}}}"#,
        ),
        response: r#"{"type":"object","properties":{"bot":{"type":"object"},"token":{"type":"string"},"token_id":{"type":"integer"},"scopes":{"type":"array","items":{"type":"string"}}}}"#,
    },
    Route {
        op: "bots.list",
        method: "GET",
        path: "admin/bots",
        scope: Scope::Admin,
        domain: Domain::Bots,
        summary: "Every bot with its tokens (ids, scopes, last use; never the tokens)",
        query: &[],
        request: None,
        response: r#"{"type":"object","properties":{"bots":{"type":"array","items":{"type":"object"}}}}"#,
    },
    Route {
        op: "bots.token_create",
        method: "POST",
        path: "admin/bots/{bot}/tokens",
        scope: Scope::Admin,
        domain: Domain::Bots,
        summary: "Another API token for a bot (shown once)",
        query: &[],
        request: Some(
            r#"{"type":"object","properties":{"scopes":{"type":"array","items":{"enum":["send","read","group_admin"]}}}}"#,
        ),
        response: r#"{"type":"object","properties":{"id":{"type":"integer"},"token":{"type":"string"},"scopes":{"type":"array","items":{"type":"string"}}}}"#,
    },
    Route {
        op: "bots.token_revoke",
        method: "DELETE",
        path: "admin/bots/{bot}/tokens/{id}",
        scope: Scope::Admin,
        domain: Domain::Bots,
        summary: "Revoke a bot's token",
        query: &[],
        request: None,
        response: "",
    },
    Route {
        op: "bot.me",
        method: "GET",
        path: "bot/me",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "The bot the token belongs to, and the token's scopes",
        query: &[],
        request: None,
        response: r#"{"type":"object","properties":{"id":{"type":"string"},"name":{"type":"string"},"bot":{"type":"boolean"},"token_id":{"type":"integer"},"scopes":{"type":"array","items":{"type":"string"}}}}"#,
    },
    Route {
        op: "bot.send",
        method: "POST",
        path: "bot/send",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "Send a text to a user or a group (scope send)",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["text"],"properties":{"to":{"type":"string"},"group_id":{"type":"string"},"text":{"type":"string"},"client_msg_id":{"type":"string"},"mentions":{"type":"array","items":{"type":"string"}}}}"#,
        ),
        response: r#"{"type":"object","properties":{"msg_id":{"type":"string"},"seq":{"type":"integer"},"time_ms":{"type":"integer"},"client_msg_id":{"type":"string"}}}"#,
    },
    Route {
        op: "bot.updates",
        method: "GET",
        path: "bot/updates",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "Long-poll the bot's updates: its inbox and the logs of its groups (scope read)",
        query: &[
            (
                "after",
                "the cursor of the last answer (next_after); default: from the start",
            ),
            (
                "timeout",
                "seconds to hold while there is nothing new, 0-50 (default 0)",
            ),
            ("limit", "updates per answer (default 100)"),
        ],
        request: None,
        response: r#"{"type":"object","properties":{"updates":{"type":"array","items":{"type":"object"}},"next_after":{"type":"string"}}}"#,
    },
    Route {
        op: "bot.typing",
        method: "POST",
        path: "bot/typing",
        scope: Scope::Bot,
        domain: Domain::Bots,
        summary: "Show typing to a user (scope send)",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["to"],"properties":{"to":{"type":"string"}}}"#,
        ),
        response: "",
    },
];

/// `POST bot/groups`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCreateBody {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    share_history: bool,
}

/// `POST bot/groups/{group}/add|remove`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupMembersBody {
    users: Vec<String>,
}

/// `PUT bot/webhook`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

impl Bots {
    /// Answers one of [`ROUTES`]. Bot routes authenticate the token first (401/403
    /// before any other answer).
    pub(crate) async fn api(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        match call.route.op {
            "bots.create" => {
                let b: CreateBody = call.json()?;
                Ok(Reply::created(&self.create(&b.name, b.scopes).await?))
            }
            "bots.list" => Ok(Reply::json(&self.list().await?)),
            "bots.token_create" => {
                let b: TokenBody = call.json()?;
                Ok(Reply::created(
                    &self.add_token(call.param("bot"), b.scopes).await?,
                ))
            }
            "bots.token_revoke" => {
                let id = call
                    .param("id")
                    .parse()
                    .map_err(|_| ApiError::BadRequest("a token id is a number".into()))?;
                self.revoke(call.param("bot"), id).await?;
                Ok(Reply::no_content())
            }
            "bot.group_create" | "bot.group_add" | "bot.group_remove" => {
                let a = self.authenticate(call.token, Some("group_admin")).await?;
                self.group_call(call, &a).await
            }
            "bot.webhook_set" => {
                let a = self.authenticate(call.token, Some("read")).await?;
                let b: WebhookBody = call.json()?;
                let (id, secret) = self.webhooks.set_owner_endpoint(a.bot_id, &b.url).await?;
                Ok(Reply::json(
                    &json!({"id": id, "url": b.url, "secret": secret}),
                ))
            }
            "bot.webhook_get" => {
                let a = self.authenticate(call.token, Some("read")).await?;
                match self.webhooks.owner_endpoint(a.bot_id).await? {
                    Some(e) => Ok(Reply::json(&json!({
                        "id": e.id, "url": e.url, "enabled": e.enabled,
                        "delivered": e.delivered, "failed": e.failed,
                    }))),
                    None => Err(ApiError::NotFound("this bot has no webhook".into())),
                }
            }
            "bot.webhook_delete" => {
                let a = self.authenticate(call.token, Some("read")).await?;
                if self.webhooks.delete_owner_endpoint(a.bot_id).await? {
                    Ok(Reply::no_content())
                } else {
                    Err(ApiError::NotFound("this bot has no webhook".into()))
                }
            }
            "bot.me" => {
                let a = self.authenticate(call.token, None).await?;
                Ok(Reply::json(&self.me(&a).await?))
            }
            "bot.send" => {
                let a = self.authenticate(call.token, Some("send")).await?;
                let b: SendBody = call.json()?;
                Ok(Reply::json(&self.send(&a, b).await?))
            }
            "bot.updates" => {
                let a = self.authenticate(call.token, Some("read")).await?;
                // A held poll must not keep a seat of admission control.
                call.release_admission();
                let q: HashMap<&str, &str> = call
                    .query
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let (after, timeout, limit) = Self::updates_query(&q)?;
                Ok(Reply::json(
                    &self
                        .updates(&a, after, timeout, limit, call.deadline)
                        .await?,
                ))
            }
            "bot.typing" => {
                let a = self.authenticate(call.token, Some("send")).await?;
                let b: TypingBody = call.json()?;
                self.typing(&a, b).await?;
                Ok(Reply::no_content())
            }
            op => Err(ApiError::NotFound(format!("no bots operation {op}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::{req, World};

    fn bots(w: &World) -> Bots {
        Bots::new(
            w.core.clone(),
            w.notifier.clone(),
            w.inbox.clone(),
            Arc::new(crate::webhooks::Webhooks::new(w.core.clone())),
            w.groups.clone(),
        )
    }

    fn cursor(v: &Value) -> Cursor {
        Cursor::parse(v["next_after"].as_str().unwrap()).unwrap()
    }

    fn token(v: &Value) -> String {
        v["token"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn tokens_are_scoped_revocable_and_not_session_tokens() {
        let w = World::new(LogicConfig::default());
        let b = bots(&w);
        let created = b.create("helper", None).await.unwrap();
        assert_eq!(created["bot"]["name"], "helper");
        assert_eq!(created["scopes"], json!(["send", "read"]));
        let t = token(&created);
        assert!(t.starts_with("fbot_"));
        let a = b.authenticate(&t, Some("send")).await.unwrap();
        assert_eq!(b.me(&a).await.unwrap()["name"], "helper");
        // Taken names, bad names, unknown scopes.
        assert!(matches!(
            b.create("helper", None).await,
            Err(BotError::Conflict(_))
        ));
        assert!(matches!(
            b.create("no spaces", None).await,
            Err(BotError::BadRequest(_))
        ));
        assert!(matches!(
            b.create("x", Some(vec!["root".into()])).await,
            Err(BotError::BadRequest(_))
        ));
        // A read-only token may read, not send.
        let ro = b
            .add_token("helper", Some(vec!["read".into()]))
            .await
            .unwrap();
        let ro_t = token(&ro);
        assert!(b.authenticate(&ro_t, Some("read")).await.is_ok());
        assert!(matches!(
            b.authenticate(&ro_t, Some("send")).await,
            Err(BotError::Forbidden(_))
        ));
        // No token, a wrong one, a user's session token.
        assert!(matches!(
            b.authenticate("", None).await,
            Err(BotError::Unauthorized(_))
        ));
        assert!(matches!(
            b.authenticate("fbot_00", None).await,
            Err(BotError::Unauthorized(_))
        ));
        let ann = w.user("ann").await;
        let session = auth::new_token();
        w.core
            .store
            .put_session(auth::token_hash(&session), ann, "d1")
            .await
            .unwrap();
        assert!(matches!(
            b.authenticate(&session, None).await,
            Err(BotError::Unauthorized(_))
        ));
        // Revoked: refused; the other token still works.
        let id = created["token_id"].as_u64().unwrap();
        b.revoke("helper", id).await.unwrap();
        assert!(matches!(
            b.authenticate(&t, None).await,
            Err(BotError::Unauthorized(_))
        ));
        assert!(matches!(
            b.revoke("helper", id).await,
            Err(BotError::NotFound(_))
        ));
        assert!(b.authenticate(&ro_t, None).await.is_ok());
        // A user is not a bot.
        assert!(matches!(
            b.add_token("ann", None).await,
            Err(BotError::NotFound(_))
        ));
        let list = b.list().await.unwrap();
        assert_eq!(list["bots"].as_array().unwrap().len(), 1);
        assert_eq!(list["bots"][0]["tokens"].as_array().unwrap().len(), 1);
        assert!(list.to_string().find(&ro_t).is_none(), "no token listed");
    }

    #[tokio::test]
    async fn bots_and_users_message_each_other_without_being_friends() {
        // Friends-only messaging (the default) between users; bots are open.
        let w = World::new(LogicConfig::default());
        let b = bots(&w);
        let t = token(&b.create("echo", None).await.unwrap());
        let a = b.authenticate(&t, Some("send")).await.unwrap();
        let ann = w.user("ann").await;
        let sent = b
            .send(
                &a,
                SendBody {
                    to: "ann".into(),
                    group_id: 0,
                    text: "hello human".into(),
                    client_msg_id: 5,
                    mentions: vec![],
                },
            )
            .await
            .unwrap();
        assert!(sent["msg_id"].as_str().unwrap().parse::<u64>().unwrap() > 0);
        // Idempotent on client_msg_id.
        let again = b
            .send(
                &a,
                SendBody {
                    to: "ann".into(),
                    group_id: 0,
                    text: "hello human".into(),
                    client_msg_id: 5,
                    mentions: vec![],
                },
            )
            .await
            .unwrap();
        assert_eq!(again["msg_id"], sent["msg_id"]);
        assert_eq!(w.core.store.latest_seq(ann).await.unwrap(), 1);
        // Ann answers the bot.
        let reply = v1::SendMsg {
            to: "echo".into(),
            text: "hi bot".into(),
            client_msg_id: 1,
            ..Default::default()
        };
        w.inbox.send(&req(cmd::SEND, ann, &reply)).await.unwrap();
        // The bot's updates: ann's message, not its own.
        let u = b
            .updates(&a, Cursor::default(), Duration::ZERO, 100, None)
            .await
            .unwrap();
        let ups = u["updates"].as_array().unwrap();
        assert_eq!(ups.len(), 1, "{u}");
        assert_eq!(ups[0]["type"], "message");
        assert_eq!(ups[0]["message"]["from"], "ann");
        assert_eq!(ups[0]["message"]["text"], "hi bot");
        let next = cursor(&u);
        assert_eq!(next.inbox, ups[0]["seq"].as_u64().unwrap());
        // Nothing after it.
        let u = b
            .updates(&a, next.clone(), Duration::ZERO, 100, None)
            .await
            .unwrap();
        assert!(u["updates"].as_array().unwrap().is_empty());
        assert_eq!(cursor(&u), next);
        // Two users who are not friends still may not.
        let _bob = w.user("bob").await;
        let r = w
            .inbox
            .send(&req(
                cmd::SEND,
                ann,
                &v1::SendMsg {
                    to: "bob".into(),
                    text: "x".into(),
                    client_msg_id: 2,
                    ..Default::default()
                },
            ))
            .await;
        assert!(matches!(r, Err(LogicError::PermissionDenied(_))));
        // Bad sends.
        for bad in [
            SendBody {
                to: String::new(),
                group_id: 0,
                text: "x".into(),
                client_msg_id: 0,
                mentions: vec![],
            },
            SendBody {
                to: "ann".into(),
                group_id: 0,
                text: String::new(),
                client_msg_id: 0,
                mentions: vec![],
            },
        ] {
            assert!(matches!(
                b.send(&a, bad).await,
                Err(BotError::BadRequest(_))
            ));
        }
        assert!(matches!(
            b.send(
                &a,
                SendBody {
                    to: "nobody".into(),
                    group_id: 0,
                    text: "x".into(),
                    client_msg_id: 0,
                    mentions: vec![]
                }
            )
            .await,
            Err(BotError::Logic(LogicError::UnknownUser(_)))
        ));
    }

    #[tokio::test]
    async fn updates_wake_promptly_and_time_out() {
        let w = World::new(LogicConfig::default());
        let b = Arc::new(bots(&w));
        let t = token(&b.create("poller", None).await.unwrap());
        let a = b.authenticate(&t, Some("read")).await.unwrap();
        let ann = w.user("ann").await;
        // Nothing comes: it holds for the timeout, then answers empty.
        let started = Instant::now();
        let u = b
            .updates(
                &a,
                Cursor::default(),
                Duration::from_millis(1_300),
                10,
                None,
            )
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(u["updates"].as_array().unwrap().is_empty());
        assert!(
            took >= Duration::from_millis(1_250) && took < Duration::from_millis(3_000),
            "{took:?}"
        );
        // A held poll answers as soon as a message arrives (well before the re-check).
        let poll = {
            let (b, a) = (b.clone(), a.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let u = b
                    .updates(&a, Cursor::default(), Duration::from_secs(20), 10, None)
                    .await
                    .unwrap();
                (u, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!poll.is_finished());
        let sent_at = Instant::now();
        w.inbox
            .send(&req(
                cmd::SEND,
                ann,
                &v1::SendMsg {
                    to: "poller".into(),
                    text: "wake up".into(),
                    client_msg_id: 1,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        let (u, _) = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .unwrap()
            .unwrap();
        assert!(
            sent_at.elapsed() < Duration::from_millis(500),
            "woken in {:?}",
            sent_at.elapsed()
        );
        assert_eq!(u["updates"][0]["message"]["text"], "wake up");
        // The call's deadline bounds the hold too.
        let started = Instant::now();
        b.updates(
            &a,
            cursor(&u),
            Duration::from_secs(30),
            10,
            Some(Instant::now() + Duration::from_millis(700)),
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        // Entries appended behind the notifier's back (another logic node) are found by
        // the re-check.
        let poll = {
            let (b, a, after) = (b.clone(), a.clone(), cursor(&u));
            tokio::spawn(async move {
                b.updates(&a, after, Duration::from_secs(20), 10, None)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.core
            .store
            .append_message(ferry_store::NewMessage {
                sender_id: ann,
                recipient_id: a.bot_id,
                client_msg_id: 99,
                time_ms: unix_ms(),
                message: v1::Message {
                    from: "ann".into(),
                    to: "poller".into(),
                    text: "elsewhere".into(),
                    client_msg_id: 99,
                    ..Default::default()
                },
            })
            .await
            .unwrap();
        let u = tokio::time::timeout(Duration::from_secs(3), poll)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(u["updates"][0]["message"]["text"], "elsewhere");
        assert_eq!(w.notifier.watchers.count.load(Ordering::SeqCst), 0);
        assert!(w.notifier.watchers.by_user.is_empty());
    }

    #[tokio::test]
    async fn group_messages_are_updates_with_a_cursor_per_group() {
        let w = World::new(LogicConfig::default());
        let b = Arc::new(bots(&w));
        let a = b
            .authenticate(&token(&b.create("gb", None).await.unwrap()), None)
            .await
            .unwrap();
        let ann = w.user("ann").await;
        let create = v1::GroupCreateReq {
            name: "g".into(),
            members: vec!["gb".into()],
            share_history: false,
        };
        let made = w
            .groups
            .create(&req(cmd::GROUP_CREATE, ann, &create))
            .await
            .unwrap();
        let g = v1::GroupResp::decode(made.body)
            .unwrap()
            .group
            .unwrap()
            .group_id;
        // The bot hears of its membership once (its inbox), not again from the log.
        let u = b
            .updates(&a, Cursor::default(), Duration::ZERO, 100, None)
            .await
            .unwrap();
        let ups = u["updates"].as_array().unwrap();
        assert_eq!(ups.len(), 1, "{u}");
        assert_eq!(
            (&ups[0]["type"], &ups[0]["kind"]),
            (&json!("group"), &json!("created"))
        );
        assert!(ups[0]["seq"].is_u64(), "{u}");
        let c = cursor(&u);
        assert_eq!(c.groups.get(&g), Some(&1), "{u}");
        // Two messages from ann and one from the bot: two updates, in order.
        let say = |text: &str| v1::SendMsg {
            group_id: g,
            text: text.into(),
            client_msg_id: rand::random::<u64>().max(1),
            ..Default::default()
        };
        for text in ["one", "two"] {
            w.inbox
                .send(&req(cmd::SEND, ann, &say(text)))
                .await
                .unwrap();
        }
        let mine = SendBody {
            to: String::new(),
            group_id: g,
            text: "mine".into(),
            client_msg_id: 0,
            mentions: vec![],
        };
        b.send(&a, mine).await.unwrap();
        // A page of one, then the rest.
        let u = b.updates(&a, c, Duration::ZERO, 1, None).await.unwrap();
        assert_eq!(u["updates"].as_array().unwrap().len(), 1, "{u}");
        let first = &u["updates"][0];
        assert_eq!(first["message"]["text"], "one");
        assert_eq!(first["group_id"], g.to_string());
        assert_eq!(first["message"]["group_id"], g.to_string());
        assert_eq!(first["gseq"], 2);
        let u = b
            .updates(&a, cursor(&u), Duration::ZERO, 100, None)
            .await
            .unwrap();
        let texts: Vec<&str> = u["updates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["message"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["two"], "the bot's own message is left out: {u}");
        let c = cursor(&u);
        assert_eq!(c.groups.get(&g), Some(&4));
        // A held poll wakes when the group's log grows.
        let poll = {
            let (b, a, c) = (b.clone(), a.clone(), c.clone());
            tokio::spawn(async move { b.updates(&a, c, Duration::from_secs(20), 10, None).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        w.inbox
            .send(&req(cmd::SEND, ann, &say("three")))
            .await
            .unwrap();
        let u = tokio::time::timeout(Duration::from_secs(3), poll)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "woken, not re-checked"
        );
        assert_eq!(u["updates"][0]["message"]["text"], "three", "{u}");
        // Removed: the inbox says so, and the group drops out of the cursor.
        let remove = v1::GroupMembersReq {
            group_id: g,
            usernames: vec!["gb".into()],
        };
        w.groups
            .members_change(&req(cmd::GROUP_REMOVE, ann, &remove))
            .await
            .unwrap();
        w.inbox
            .send(&req(cmd::SEND, ann, &say("after")))
            .await
            .unwrap();
        let u = b
            .updates(&a, cursor(&u), Duration::ZERO, 100, None)
            .await
            .unwrap();
        let ups = u["updates"].as_array().unwrap();
        assert_eq!(ups.len(), 1, "{u}");
        assert_eq!(
            (&ups[0]["type"], &ups[0]["kind"]),
            (&json!("group"), &json!("removed"))
        );
        assert!(cursor(&u).groups.is_empty(), "{u}");
    }

    #[test]
    fn the_updates_query_is_checked() {
        let q: HashMap<&str, &str> = [("after", "5"), ("timeout", "30")].into();
        let (after, t, limit) = Bots::updates_query(&q).unwrap();
        assert_eq!(after.inbox, 5);
        assert!(after.groups.is_empty());
        assert_eq!((t, limit), (Duration::from_secs(30), 100));
        let q: HashMap<&str, &str> = [("after", "5,g7:3,g12:0")].into();
        let (after, _, _) = Bots::updates_query(&q).unwrap();
        assert_eq!(after.groups, BTreeMap::from([(7, 3), (12, 0)]));
        assert_eq!(after.to_string(), "5,g7:3,g12:0");
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
        for bad in ["5,7:3", "5,g7", "5,gx:1", "-1", "5,g7:3,"] {
            let q: HashMap<&str, &str> = [("after", bad)].into();
            assert!(Bots::updates_query(&q).is_err(), "{bad}");
        }
        let q: HashMap<&str, &str> = [("timeout", "51")].into();
        assert!(Bots::updates_query(&q).is_err());
        let q: HashMap<&str, &str> = [("after", "x")].into();
        assert!(Bots::updates_query(&q).is_err());
    }
}
