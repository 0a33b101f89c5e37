//! Admin users (the admin API's `admin/users…` routes, `Domain::Users`): list and
//! search users, create one (the registration rules: name, password, argon2id), show one
//! with their devices (online or not), disable (ban) and enable, force a logout, delete a
//! user with all their data, and export it as a tar stream.
//!
//! * **Disable** stores the reason, ends every session in the same transaction (and the
//!   push targets with them) and kicks every live link; sign-in (`auth`), token refresh
//!   and LOGIN are then refused with "this account is disabled: <reason>" until enabled.
//! * **Delete** first disables and kicks (so nothing new arrives), deletes the media they
//!   uploaded from the media store, then runs the store's one-transaction deletion (see
//!   `ferry_store::UserAdminStore`): messages they sent are **recalled** (1:1: a recall
//!   entry in the recipient's inbox; group: a recall entry in the group's log), groups
//!   they own pass to the heir an owner leaving would get (an admin before a member, the
//!   longest-standing first) or are dissolved when they were alone. Recipients, former
//!   friends and groups are told at once.
//! * **Export** streams a ustar archive in parts, resumed from a cursor (see
//!   `admin_users/export.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ferry_bus::Push;
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::{StoreError, UserDeletion, UserInfo};
use serde::Serialize;

use crate::accounts::valid_username;
use crate::api::{ApiError, Call, Domain, Reply, Route, Scope};
use crate::auth;
use crate::core::{unix_ms, Core};
use crate::error::LogicError;
use crate::groups::Groups;
use crate::notify::Notifier;
use crate::presence::device_hash;
use crate::push::PushService;

mod export;

/// The most users one list answers.
pub(crate) const LIST_MAX: u32 = 1000;
/// Users a list answers when not told.
pub(crate) const LIST_DEFAULT: u32 = 100;

/// A user as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct UserJson {
    #[serde(with = "crate::api::json::id_str")]
    pub id: u64,
    pub name: String,
    pub created_ms: i64,
    pub disabled: bool,
    /// Why it is disabled (null when enabled).
    pub disabled_reason: Option<String>,
    pub bot: bool,
}

impl From<UserInfo> for UserJson {
    fn from(u: UserInfo) -> Self {
        UserJson {
            id: u.id,
            name: u.name,
            created_ms: u.created_ms,
            disabled: u.disabled,
            disabled_reason: u.disabled.then_some(u.disabled_reason),
            bot: u.bot,
        }
    }
}

/// A device of a user, for `GET admin/users/{user}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct DeviceJson {
    pub device_id: String,
    /// The last synckey it reported (what it has received).
    pub synckey: u64,
    /// When it last reported one, unix ms (0: never).
    pub last_seen_ms: i64,
    /// It holds a session (is signed in).
    pub signed_in: bool,
    /// It has a live long link now.
    pub online: bool,
}

/// A user with their devices.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct UserDetail {
    #[serde(flatten)]
    pub user: UserJson,
    pub devices: Vec<DeviceJson>,
}

/// A page of users; `next` is the `after` of the next page (null at the end).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct UserPage {
    pub users: Vec<UserJson>,
    #[serde(with = "crate::api::json::id_str::opt")]
    pub next: Option<u64>,
}

/// What a deletion removed: rows per table, and `media` (uploads deleted from the
/// media store).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct DeletedJson {
    pub deleted: BTreeMap<String, u64>,
}

/// The users domain.
pub(crate) struct AdminUsers {
    pub(crate) core: Arc<Core>,
    notifier: Arc<Notifier>,
    push: Arc<PushService>,
    groups: Arc<Groups>,
}

impl AdminUsers {
    pub fn new(
        core: Arc<Core>,
        notifier: Arc<Notifier>,
        push: Arc<PushService>,
        groups: Arc<Groups>,
    ) -> AdminUsers {
        AdminUsers {
            core,
            notifier,
            push,
            groups,
        }
    }

    /// The user named `name`, read from the store (never a cache: it may have just
    /// been deleted).
    pub(crate) async fn resolve(&self, name: &str) -> Result<UserInfo, LogicError> {
        let user = self
            .core
            .store
            .user_by_name(name)
            .await?
            .ok_or_else(|| LogicError::UnknownUser(name.to_owned()))?;
        self.core
            .store
            .user_info(user.id)
            .await?
            .ok_or_else(|| LogicError::UnknownUser(name.to_owned()))
    }

    /// Users whose name contains `q` (case-insensitive), id > `after`, in id order.
    pub async fn list(&self, q: &str, after: u64, limit: u32) -> Result<UserPage, LogicError> {
        let limit = limit.clamp(1, LIST_MAX);
        let users = self.core.store.list_users(q, after, limit).await?;
        let next = (users.len() == limit as usize)
            .then(|| users.last().map(|u| u.id))
            .flatten();
        Ok(UserPage {
            users: users.into_iter().map(UserJson::from).collect(),
            next,
        })
    }

    /// Creates a user with the registration's rules.
    pub async fn create(&self, name: &str, password: &str) -> Result<UserJson, LogicError> {
        if !valid_username(name) {
            return Err(LogicError::InvalidArgument(
                "user name must be 1-32 characters of A-Z a-z 0-9 _ . - (and not \"system\")"
                    .into(),
            ));
        }
        if !(8..=1024).contains(&password.len()) {
            return Err(LogicError::InvalidArgument(
                "password must be 8-1024 bytes".into(),
            ));
        }
        let params = self.core.cfg.password;
        let pw = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || auth::hash_password(&params, &pw))
            .await
            .map_err(|e| LogicError::Internal(e.to_string()))?;
        let id = match self.core.store.create_user(name, &hash).await {
            Ok(id) => id,
            Err(StoreError::UserExists) => return Err(LogicError::UserExists),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user = %name, user_id = id, "user created by an operator");
        let info = self
            .core
            .store
            .user_info(id)
            .await?
            .ok_or_else(|| LogicError::Internal("the new user is gone".into()))?;
        Ok(info.into())
    }

    /// A user with their devices, each online or not.
    pub async fn get(&self, name: &str) -> Result<UserDetail, LogicError> {
        let user = self.resolve(name).await?;
        let devices = self
            .core
            .store
            .user_devices(user.id)
            .await?
            .into_iter()
            .map(|d| DeviceJson {
                online: self
                    .notifier
                    .device_online(user.id, device_hash(&d.device_id)),
                signed_in: d.session_ms > 0,
                last_seen_ms: d.seen_ms,
                synckey: d.synckey,
                device_id: d.device_id,
            })
            .collect();
        Ok(UserDetail {
            user: user.into(),
            devices,
        })
    }

    /// Disables a user: every session ends, every live link is kicked, and sign-in is
    /// refused until [`Self::enable`].
    pub async fn disable(&self, name: &str, reason: &str) -> Result<UserJson, LogicError> {
        let user = self.resolve(name).await?;
        let reason = match reason.trim() {
            "" => "disabled by an operator",
            r => r,
        };
        if reason.len() > 1024 {
            return Err(LogicError::InvalidArgument(
                "the reason is at most 1024 bytes".into(),
            ));
        }
        // Push targets first (as a logout does): a failure leaves the user enabled.
        self.push.forget_user(user.id).await?;
        let revoked = self.core.store.set_disabled(user.id, Some(reason)).await?;
        self.kick(user.id, &format!("this account is disabled: {reason}"))
            .await;
        tracing::info!(user = %name, sessions = revoked.len(), %reason, "user disabled");
        Ok(self.resolve(name).await?.into())
    }

    pub async fn enable(&self, name: &str) -> Result<UserJson, LogicError> {
        let user = self.resolve(name).await?;
        self.core.store.set_disabled(user.id, None).await?;
        tracing::info!(user = %name, "user enabled");
        Ok(self.resolve(name).await?.into())
    }

    /// Ends every session of a user and kicks every live link; returns how many
    /// sessions ended.
    pub async fn logout(&self, name: &str) -> Result<usize, LogicError> {
        let user = self.resolve(name).await?;
        self.push.forget_user(user.id).await?;
        let revoked = self.core.store.delete_user_sessions(user.id).await?;
        self.kick(user.id, "logged out by an operator").await;
        tracing::info!(user = %name, sessions = revoked.len(), "user logged out by an operator");
        Ok(revoked.len())
    }

    /// Deletes a user and all their data (see the module doc).
    pub async fn delete(&self, name: &str) -> Result<DeletedJson, LogicError> {
        let user = self.resolve(name).await?;
        // Nothing new from them from here on: no session, no sign-in, no live link.
        self.push.forget_user(user.id).await?;
        self.core
            .store
            .set_disabled(user.id, Some("being deleted"))
            .await?;
        self.kick(user.id, "this account was deleted").await;
        let mut media = 0u64;
        if let Some(store) = self.core.media_store() {
            // Ends: each page starts after the last id of the one before.
            let mut after = String::new();
            loop {
                let page = store.uploaded_by(user.id, &after, 100).await?;
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                for m in page {
                    if store.delete(&m.id).await? {
                        media += 1;
                    }
                }
            }
        }
        let done = self
            .core
            .store
            .delete_user(UserDeletion {
                user_id: user.id,
                name: user.name.clone(),
                time_ms: unix_ms(),
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => LogicError::UnknownUser(name.to_owned()),
                e => e.into(),
            })?;
        self.core.forget_user(user.id, &user.name);
        self.push.forget_user(user.id).await?;
        crate::webhooks::deleted_event(&self.core, &user.name, user.id).await;
        // Tell the others: recipients (recalls), former friends, groups.
        for &(u, _) in &done.inboxes {
            self.notifier.notify_latest(u).await;
        }
        self.groups.changed_elsewhere(&done.groups).await;
        let mut deleted = done.rows;
        if media > 0 {
            deleted.insert("media".into(), media);
        }
        tracing::info!(user = %name, user_id = user.id, ?deleted, "user deleted");
        Ok(DeletedJson { deleted })
    }

    /// KICK{KICKED, reason} to every live link of `user`, which is then closed.
    async fn kick(&self, user: u64, reason: &str) {
        let body = Bytes::from(
            v1::Kick {
                code: v1::ErrorCode::Kicked as i32,
                reason: reason.to_owned(),
            }
            .encode_to_vec(),
        );
        self.notifier
            .push_all(Push {
                user_id: user,
                device_id: String::new(),
                cmd: u32::from(cmd::KICK),
                body,
                close: true,
                ..Default::default()
            })
            .await;
    }
}

const USER_SCHEMA: &str = r#"{"type":"object","required":["id","name","created_ms","disabled","disabled_reason","bot"],"properties":{
    "id":{"type":"string"},"name":{"type":"string"},"created_ms":{"type":"integer"},
    "disabled":{"type":"boolean"},"disabled_reason":{"type":["string","null"]},"bot":{"type":"boolean"}}}"#;

/// The users routes (docs/admin-api.md, Users).
pub(crate) const ROUTES: &[Route] = &[
    Route {
        op: "users.list",
        method: "GET",
        path: "admin/users",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "List or search users, in id order.",
        query: &[
            ("q", "Part of the name, any case (default: every user)."),
            ("after", "Users with an id above this (paging: the last answer's `next`)."),
            ("limit", "At most this many (1–1000, default 100)."),
        ],
        request: None,
        response: r#"{"type":"object","required":["users","next"],"properties":{
            "users":{"type":"array","items":{"type":"object"}},
            "next":{"type":["string","null"],"description":"`after` for the next page; null at the end"}}}"#,
    },
    Route {
        op: "users.create",
        method: "POST",
        path: "admin/users",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "Create a user (the registration's rules for the name and password).",
        query: &[],
        request: Some(
            r#"{"type":"object","required":["name","password"],"properties":{
            "name":{"type":"string","pattern":"^[A-Za-z0-9_.-]{1,32}$"},
            "password":{"type":"string","minLength":8,"maxLength":1024}}}"#,
        ),
        response: USER_SCHEMA,
    },
    Route {
        op: "users.get",
        method: "GET",
        path: "admin/users/{user}",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "One user, with their devices (signed in, online).",
        query: &[],
        request: None,
        response: r#"{"type":"object","required":["id","name","devices"],"properties":{
            "id":{"type":"string"},"name":{"type":"string"},"created_ms":{"type":"integer"},
            "disabled":{"type":"boolean"},"disabled_reason":{"type":["string","null"]},"bot":{"type":"boolean"},
            "devices":{"type":"array","items":{"type":"object","properties":{
                "device_id":{"type":"string"},"synckey":{"type":"integer"},"last_seen_ms":{"type":"integer"},
                "signed_in":{"type":"boolean"},"online":{"type":"boolean"}}}}}}"#,
    },
    Route {
        op: "users.disable",
        method: "POST",
        path: "admin/users/{user}/disable",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "Disable (ban) a user: every session ends, live links are kicked, sign-in is refused with the reason.",
        query: &[],
        request: Some(r#"{"type":"object","properties":{"reason":{"type":"string","maxLength":1024}}}"#),
        response: USER_SCHEMA,
    },
    Route {
        op: "users.enable",
        method: "POST",
        path: "admin/users/{user}/enable",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "Let a disabled user sign in again.",
        query: &[],
        request: None,
        response: USER_SCHEMA,
    },
    Route {
        op: "users.logout",
        method: "POST",
        path: "admin/users/{user}/logout",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "End every session of a user and kick their live links.",
        query: &[],
        request: None,
        response: r#"{"type":"object","required":["sessions_revoked"],"properties":{"sessions_revoked":{"type":"integer"}}}"#,
    },
    Route {
        op: "users.delete",
        method: "DELETE",
        path: "admin/users/{user}",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "Delete a user and all their data; messages they sent are recalled.",
        query: &[],
        request: None,
        response: r#"{"type":"object","required":["deleted"],"properties":{
            "deleted":{"type":"object","additionalProperties":{"type":"integer"},
            "description":"rows deleted per table; `media`: uploads deleted"}}}"#,
    },
    Route {
        op: "users.export",
        method: "GET",
        path: "admin/users/{user}/export",
        scope: Scope::Admin,
        domain: Domain::Users,
        summary: "A user's data as a tar archive (application/x-tar, streamed): user.json, friends.json, groups.json, moments.json, reports.json, messages.jsonl, media/<id>, reports/<id>.",
        query: &[],
        request: None,
        response: "",
    },
];

#[derive(serde::Deserialize)]
struct CreateReq {
    name: String,
    password: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct DisableReq {
    reason: String,
}

impl AdminUsers {
    /// Answers a users route.
    pub(crate) async fn api(&self, call: &Call<'_>) -> Result<Reply, ApiError> {
        let user = call.param("user");
        Ok(match call.route.op {
            "users.list" => {
                let q = call.query("q").unwrap_or("");
                let after = call.query_parse::<u64>("after")?.unwrap_or(0);
                let limit = call.query_parse::<u32>("limit")?.unwrap_or(LIST_DEFAULT);
                if !(1..=LIST_MAX).contains(&limit) {
                    return Err(ApiError::BadRequest(format!("limit must be 1-{LIST_MAX}")));
                }
                Reply::json(&self.list(q, after, limit).await?)
            }
            "users.create" => {
                let r: CreateReq = call.json()?;
                Reply::created(&self.create(&r.name, &r.password).await?)
            }
            "users.get" => Reply::json(&self.get(user).await?),
            "users.disable" => {
                let r: DisableReq = call.json()?;
                Reply::json(&self.disable(user, &r.reason).await?)
            }
            "users.enable" => Reply::json(&self.enable(user).await?),
            "users.logout" => {
                let n = self.logout(user).await?;
                Reply::json(&serde_json::json!({ "sessions_revoked": n }))
            }
            "users.delete" => Reply::json(&self.delete(user).await?),
            "users.export" => {
                let (body, next) = self.export_part(user, call.cursor).await?;
                Reply::part("application/x-tar", body, next)
            }
            op => return Err(ApiError::Internal(format!("users has no route {op}"))),
        })
    }
}

/// The refusal of a disabled account's sign-in, token refresh or LOGIN.
pub(crate) fn disabled_error(reason: &str) -> LogicError {
    LogicError::PermissionDenied(format!("this account is disabled: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogicConfig;
    use crate::testing::World;

    fn users(w: &World) -> AdminUsers {
        AdminUsers::new(
            w.core.clone(),
            w.notifier.clone(),
            w.push.clone(),
            w.groups.clone(),
        )
    }

    fn cfg() -> LogicConfig {
        LogicConfig {
            password: auth::PasswordParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_follows_the_registration_rules_and_lists_page() {
        let w = World::new(cfg());
        let u = users(&w);
        let alice = u.create("alice", "password1").await.unwrap();
        assert_eq!((alice.name.as_str(), alice.disabled), ("alice", false));
        let stored = w.core.store.user_by_name("alice").await.unwrap().unwrap();
        assert!(auth::verify_password("password1", &stored.password_hash));
        assert!(matches!(
            u.create("alice", "password1").await,
            Err(LogicError::UserExists)
        ));
        assert!(matches!(
            u.create("no spaces", "password1").await,
            Err(LogicError::InvalidArgument(_))
        ));
        assert!(matches!(
            u.create("bob", "short").await,
            Err(LogicError::InvalidArgument(_))
        ));
        u.create("alina", "password1").await.unwrap();
        u.create("bob", "password1").await.unwrap();
        let page = u.list("ali", 0, 1).await.unwrap();
        assert_eq!(page.users[0].name, "alice");
        assert_eq!(page.next, Some(alice.id));
        let page = u.list("ali", page.next.unwrap(), 1).await.unwrap();
        assert_eq!(page.users[0].name, "alina");
        let page = u.list("ali", page.next.unwrap(), 1).await.unwrap();
        assert!(page.users.is_empty());
        assert_eq!(page.next, None);
    }

    #[tokio::test]
    async fn disable_revokes_kicks_and_refuses_sign_in_until_enabled() {
        let w = World::new(cfg());
        let u = users(&w);
        let id = u.create("carol", "password1").await.unwrap().id;
        w.core
            .store
            .put_session(auth::token_hash("tok"), id, "phone")
            .await
            .unwrap();
        w.notifier.link_up(id, "gw1", 1, "phone").await;
        let d = u.get("carol").await.unwrap();
        assert_eq!(d.devices.len(), 1);
        assert!(d.devices[0].online && d.devices[0].signed_in);

        let shown = u.disable("carol", "spam").await.unwrap();
        assert_eq!(shown.disabled_reason.as_deref(), Some("spam"));
        let pushes = w.pushes();
        let kick = pushes
            .iter()
            .find(|(_, p)| p.cmd == u32::from(cmd::KICK) && p.user_id == id)
            .expect("the live link is kicked");
        assert!(kick.1.close);
        let body = v1::Kick::decode(kick.1.body.clone()).unwrap();
        assert!(body.reason.contains("disabled: spam"), "{}", body.reason);
        assert!(w
            .core
            .store
            .session(auth::token_hash("tok"))
            .await
            .unwrap()
            .is_none());

        let auth_req = |pw: &str| ferry_bus::BusRequest {
            cmd: u32::from(cmd::AUTH),
            body: Bytes::from(
                v1::AuthReq {
                    username: "carol".into(),
                    password: pw.into(),
                    device_id: "phone".into(),
                }
                .encode_to_vec(),
            ),
            ..Default::default()
        };
        let err = w.accounts.auth(&auth_req("password1")).await.unwrap_err();
        assert!(
            err.to_string().contains("this account is disabled: spam"),
            "{err}"
        );
        assert_eq!(err.code(), v1::ErrorCode::PermissionDenied);
        // A wrong password is still just a wrong password.
        assert!(matches!(
            w.accounts.auth(&auth_req("wrong-password")).await,
            Err(LogicError::BadCredentials)
        ));
        u.enable("carol").await.unwrap();
        assert!(w.accounts.auth(&auth_req("password1")).await.is_ok());
        assert!(!u.get("carol").await.unwrap().user.disabled);
    }

    #[tokio::test]
    async fn logout_ends_every_session_and_delete_removes_everything() {
        let w = World::new(cfg());
        let u = users(&w);
        let a = u.create("dave", "password1").await.unwrap().id;
        let b = u.create("erin", "password1").await.unwrap().id;
        for d in ["phone", "laptop"] {
            w.core
                .store
                .put_session(auth::token_hash(d), a, d)
                .await
                .unwrap();
        }
        assert_eq!(u.logout("dave").await.unwrap(), 2);
        assert_eq!(u.logout("dave").await.unwrap(), 0);
        assert!(matches!(
            u.logout("nobody").await,
            Err(LogicError::UnknownUser(_))
        ));

        // A message to erin, then dave is deleted: erin is told (a recall).
        w.core.user_id("dave").await.unwrap();
        w.core
            .store
            .append_message(ferry_store::NewMessage {
                sender_id: a,
                recipient_id: b,
                client_msg_id: 1,
                time_ms: 1,
                message: v1::Message {
                    from: "dave".into(),
                    to: "erin".into(),
                    text: "hi".into(),
                    ..Default::default()
                },
            })
            .await
            .unwrap();
        w.notifier.link_up(b, "gw1", 7, "tablet").await;
        w.pushes();
        let out = u.delete("dave").await.unwrap();
        assert_eq!(out.deleted.get("messages"), Some(&1));
        assert_eq!(out.deleted.get("users"), Some(&1));
        assert!(w.core.store.leftover_rows(a).await.unwrap().is_empty());
        assert!(
            w.core.user_id("dave").await.is_err(),
            "the name cache forgot dave"
        );
        let told = w
            .pushes()
            .into_iter()
            .any(|(_, p)| p.user_id == b && p.cmd == u32::from(cmd::NOTIFY));
        assert!(told, "erin is told her inbox changed");
        let page = w.core.store.inbox(b, 0, 10).await.unwrap();
        assert!(matches!(
            page.entries.last().and_then(|e| e.kind.clone()),
            Some(v1::entry::Kind::Recall(_))
        ));
        assert!(matches!(
            u.delete("dave").await,
            Err(LogicError::UnknownUser(_))
        ));
        // The name can be registered again, as a new user.
        let again = u.create("dave", "password1").await.unwrap();
        assert!(again.id > b);
    }
}
