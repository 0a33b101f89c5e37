//! Accounts: registration, sign-in (`auth`) and the long link's LOGIN, device tokens
//! over their life, password changes, logout and user lookup.
//!
//! A token is 32 random bytes; the store keeps only its SHA-256 and when it was issued,
//! so a token expires `token_ttl_secs` after issue without any clock on the client. It
//! is renewed explicitly on the short link (`auth/refresh`) and implicitly at a
//! long-link LOGIN past half its life, and revoked by a password change or a logout.

use std::sync::Arc;

use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse, Push};
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::StoreError;

use crate::auth;
use crate::core::{ok, unix_ms, Core, DeviceSession};
use crate::error::LogicError;
use crate::notify::Notifier;
use crate::push::PushService;

/// A user name anyone may take: 1–32 of `A-Z a-z 0-9 _ . -`, and not `system`, the
/// sender name of system messages (an admin broadcast, docs/protocol.md).
pub(crate) fn valid_username(name: &str) -> bool {
    !name.eq_ignore_ascii_case("system")
        && (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Accounts and device sessions.
pub(crate) struct Accounts {
    core: Arc<Core>,
    /// Kicks the links of a device that logged out or lost its token.
    notifier: Arc<Notifier>,
    /// Push targets end with their sessions.
    push: Arc<PushService>,
}

impl Accounts {
    pub fn new(core: Arc<Core>, notifier: Arc<Notifier>, push: Arc<PushService>) -> Accounts {
        Accounts {
            core,
            notifier,
            push,
        }
    }

    pub async fn register(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::RegisterReq::decode(req.body.clone())?;
        self.limit_ip(&self.core.limits.register_per_ip, req, "registrations")?;
        if !valid_username(&r.username) {
            return Err(LogicError::InvalidArgument(
                "user name must be 1-32 characters of A-Z a-z 0-9 _ . - (and not \"system\")"
                    .into(),
            ));
        }
        if !(8..=1024).contains(&r.password.len()) {
            return Err(LogicError::InvalidArgument(
                "password must be 8-1024 bytes".into(),
            ));
        }
        if self.core.user_id(&r.username).await.is_ok() {
            return Err(LogicError::UserExists);
        }
        let params = self.core.cfg.password;
        let hash = tokio::task::spawn_blocking(move || auth::hash_password(&params, &r.password))
            .await
            .map_err(|e| LogicError::Internal(e.to_string()))?;
        let id = match self.core.store.create_user(&r.username, &hash).await {
            Ok(id) => id,
            Err(StoreError::UserExists) => return Err(LogicError::UserExists),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user = %r.username, user_id = id, "registered");
        if self.core.hooks.wants("user.registered") {
            self.core
                .hooks
                .emit_logged(crate::webhooks::Event::new(
                    "user.registered",
                    format!("user-{id}-registered"),
                    serde_json::json!({"user": {"id": id.to_string(), "name": &r.username}}),
                ))
                .await;
        }
        Ok(ok(req.cmd, &v1::RegisterResp { user_id: id }))
    }

    pub async fn auth(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::AuthReq::decode(req.body.clone())?;
        self.limit_ip(&self.core.limits.auth_per_ip, req, "sign-in attempts")?;
        self.limit_password(&r.username)?;
        if r.device_id.is_empty() || r.device_id.len() > 64 {
            return Err(LogicError::InvalidArgument(
                "device_id must be 1-64 bytes".into(),
            ));
        }
        let user = self
            .core
            .store
            .user_by_name(&r.username)
            .await?
            .ok_or(LogicError::BadCredentials)?;
        let (pw, phc) = (r.password, user.password_hash.clone());
        let good = tokio::task::spawn_blocking(move || auth::verify_password(&pw, &phc))
            .await
            .map_err(|e| LogicError::Internal(e.to_string()))?;
        if !good {
            return Err(LogicError::BadCredentials);
        }
        let (token, token_expires_ms) = self.issue_token(user.id, &r.device_id).await?;
        self.refuse_disabled(user.id, Some(&token)).await?;
        let latest_seq = self.core.store.latest_seq(user.id).await?;
        Ok(ok(
            req.cmd,
            &v1::AuthResp {
                user_id: user.id,
                token,
                latest_seq,
                token_expires_ms,
            },
        ))
    }

    pub async fn login(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::LoginReq::decode(req.body.clone())?;
        self.limit_ip(&self.core.limits.login_per_ip, req, "logins")?;
        // One look-up for the session, its user's name, whether the user is disabled and
        // the newest seq: after a restart every device logs in at once.
        let v = self.core.login_view(&r.token).await?;
        // Entries stored from here until the new link's route arrives are told to it then.
        self.notifier
            .login_answered(v.session.user_id, &v.session.device_id);
        if let Some(reason) = &v.disabled {
            return Err(crate::admin_users::disabled_error(reason));
        }
        let (token, token_expires_ms) = self.renew_if_old(&v.session).await?;
        let (username, latest_seq) = (v.user_name, v.latest_seq);
        let s = DeviceSession {
            user_id: v.session.user_id,
            device_id: v.session.device_id.into(),
        };
        self.core.record_synckey(s.user_id, &s.device_id, r.synckey);
        let protocol = ferry_proto::protocol_for(r.protocol.min(req.link_protocol.max(1)));
        let mut resp = ok(
            req.cmd,
            &v1::LoginResp {
                user_id: s.user_id,
                username,
                latest_seq,
                heartbeat_secs: self.core.cfg.heartbeat_secs,
                server_time_ms: unix_ms(),
                token,
                token_expires_ms,
                idle_timeout_ms: req.idle_timeout_ms,
                protocol,
            },
        );
        resp.user_id = s.user_id;
        resp.device_id = s.device_id.to_string();
        resp.link_protocol = protocol;
        // One link per device: the newest login replaces the device's older links (a
        // zombie of a lost network, a second copy of the app), on whatever gateway.
        self.notifier
            .replace_device(s.user_id, &s.device_id, &req.gateway_id, req.conn_id)
            .await;
        metrics::counter!("ferry_logins_total").increment(1);
        Ok(resp)
    }

    /// `POST /v1/auth/refresh`: a fresh token for the caller's device, replacing its
    /// old one. On a long link the caller is the link's device: the link stays logged in
    /// as it was (a link is a device's session, not a token's), and the next LOGIN uses
    /// the new token.
    pub async fn auth_refresh(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let s = if req.user_id != 0 {
            self.core.caller(req).await?
        } else {
            let row = self.core.session_row(&req.token).await?;
            DeviceSession {
                user_id: row.user_id,
                device_id: row.device_id.into(),
            }
        };
        let (token, token_expires_ms) = self.issue_token(s.user_id, &s.device_id).await?;
        self.refuse_disabled(s.user_id, Some(&token)).await?;
        metrics::counter!("ferry_tokens_renewed_total").increment(1);
        Ok(ok(
            req.cmd,
            &v1::AuthResp {
                user_id: s.user_id,
                token,
                latest_seq: self.core.store.latest_seq(s.user_id).await?,
                token_expires_ms,
            },
        ))
    }

    /// `POST /v1/password`: checks the old password, stores the new one and ends every
    /// session of the user (other devices' links are kicked); the caller's device gets a
    /// new token so it stays signed in.
    pub async fn password_change(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::PasswordChangeReq::decode(req.body.clone())?;
        let me = self.core.caller(req).await?;
        self.limit_password(&self.core.user_name(me.user_id).await?)?;
        if !(8..=1024).contains(&r.new_password.len()) {
            return Err(LogicError::InvalidArgument(
                "password must be 8-1024 bytes".into(),
            ));
        }
        let user = self
            .core
            .store
            .user_by_id(me.user_id)
            .await?
            .ok_or(LogicError::Unauthorized)?;
        let params = self.core.cfg.password;
        let (old, new, phc) = (r.old_password, r.new_password, user.password_hash);
        let hash = tokio::task::spawn_blocking(move || {
            auth::verify_password(&old, &phc).then(|| auth::hash_password(&params, &new))
        })
        .await
        .map_err(|e| LogicError::Internal(e.to_string()))?
        .ok_or(LogicError::BadCredentials)?;
        // Every session ends, and every push target with it (the caller's device
        // registers again). Targets first: a failure leaves the password unchanged.
        self.push.forget_user(me.user_id).await?;
        let revoked = self.core.store.set_password(me.user_id, &hash).await?;
        let kick = Bytes::from(
            v1::Kick {
                code: v1::ErrorCode::Kicked as i32,
                reason: "the password was changed".into(),
            }
            .encode_to_vec(),
        );
        for device in revoked.iter().filter(|d| **d != *me.device_id) {
            self.notifier
                .push_all(Push {
                    user_id: me.user_id,
                    device_id: device.clone(),
                    cmd: u32::from(cmd::KICK),
                    body: kick.clone(),
                    close: true,
                    ..Default::default()
                })
                .await;
        }
        let (token, token_expires_ms) = self.issue_token(me.user_id, &me.device_id).await?;
        tracing::info!(
            user_id = me.user_id,
            revoked = revoked.len(),
            "password changed"
        );
        Ok(ok(
            req.cmd,
            &v1::AuthResp {
                user_id: me.user_id,
                token,
                latest_seq: self.core.store.latest_seq(me.user_id).await?,
                token_expires_ms,
            },
        ))
    }

    pub async fn logout(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::LogoutReq::decode(req.body.clone())?;
        let me = self.core.caller(req).await?;
        // Push targets first: a failure here leaves the session, so the client can
        // retry the logout (the other way round, a target could outlive its session).
        let (ended, device) = if r.all_devices {
            self.push.forget_user(me.user_id).await?;
            let devices = self.core.store.delete_user_sessions(me.user_id).await?;
            (devices.len() as u32, String::new())
        } else if !req.token.is_empty() {
            self.push.forget_device(me.user_id, &me.device_id).await?;
            let gone = self
                .core
                .store
                .delete_session(auth::token_hash(&req.token))
                .await?;
            (u32::from(gone), me.device_id.to_string())
        } else {
            return Err(LogicError::InvalidArgument(
                "logging out one device needs its token: use POST /v1/logout".into(),
            ));
        };
        // Close the device's (or every device's) long links now.
        let kick = v1::Kick {
            code: v1::ErrorCode::Kicked as i32,
            reason: "logged out".into(),
        };
        self.notifier
            .push_all(Push {
                user_id: me.user_id,
                device_id: device,
                cmd: u32::from(cmd::KICK),
                body: Bytes::from(kick.encode_to_vec()),
                close: true,
                ..Default::default()
            })
            .await;
        tracing::info!(user_id = me.user_id, sessions = ended, "logged out");
        Ok(ok(req.cmd, &v1::LogoutResp { sessions: ended }))
    }

    pub async fn find_user(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        self.core.caller(req).await?;
        let r = v1::FindUserReq::decode(req.body.clone())?;
        let id = self.core.user_id(&r.username).await?;
        let etag = self
            .core
            .store
            .avatar(id)
            .await?
            .map(|a| a.etag)
            .unwrap_or_default();
        Ok(ok(
            req.cmd,
            &v1::FindUserResp {
                user_id: id,
                username: r.username,
                avatar_etag: etag,
            },
        ))
    }

    /// Refuses a disabled user (admin API: `admin/users/{user}/disable`). Checked after
    /// a new token (`issued`) is stored, which is then deleted: a disable that commits
    /// at the same time either sees the session and ends it, or is seen here.
    async fn refuse_disabled(&self, user_id: u64, issued: Option<&str>) -> Result<(), LogicError> {
        let Some(reason) = self.core.store.disabled(user_id).await? else {
            return Ok(());
        };
        if let Some(token) = issued {
            self.core
                .store
                .delete_session(auth::token_hash(token))
                .await?;
        }
        Err(crate::admin_users::disabled_error(&reason))
    }

    /// A new token for a device, replacing its earlier one. Returns it and its expiry.
    async fn issue_token(
        &self,
        user_id: u64,
        device_id: &str,
    ) -> Result<(String, i64), LogicError> {
        let token = auth::new_token();
        self.core
            .store
            .put_session(auth::token_hash(&token), user_id, device_id)
            .await?;
        Ok((token, self.core.token_expiry(unix_ms())))
    }

    /// At LOGIN: a renewed token when `s` is past half its life (empty otherwise), and
    /// the expiry of the token the device holds afterwards.
    async fn renew_if_old(&self, s: &ferry_store::Session) -> Result<(String, i64), LogicError> {
        let expires = self.core.token_expiry(s.created_ms);
        if expires == 0 {
            return Ok((String::new(), 0));
        }
        let half = (expires - s.created_ms) / 2;
        if unix_ms() < s.created_ms + half {
            return Ok((String::new(), expires));
        }
        metrics::counter!("ferry_tokens_renewed_total").increment(1);
        self.issue_token(s.user_id, &s.device_id).await
    }

    /// Refuses a request from an address over `limit` (`what` names it for the client).
    fn limit_ip(
        &self,
        limit: &crate::limits::Limiter<std::net::IpAddr>,
        req: &BusRequest,
        what: &str,
    ) -> Result<(), LogicError> {
        let Some(ip) = crate::limits::peer_ip(&req.peer) else {
            return Ok(());
        };
        limit.check(&ip).map_err(|ms| {
            metrics::counter!("ferry_rate_limited_total", "limit" => "ip").increment(1);
            LogicError::RateLimited(format!("too many {what} from your address"), ms)
        })
    }

    /// Refuses a password attempt on an account over its limit.
    fn limit_password(&self, username: &str) -> Result<(), LogicError> {
        self.core
            .limits
            .auth_per_user
            .check(&username.to_owned())
            .map_err(|ms| {
                metrics::counter!("ferry_rate_limited_total", "limit" => "password").increment(1);
                LogicError::RateLimited("too many sign-in attempts for this user".into(), ms)
            })
    }
}

#[cfg(test)]
mod name_tests {
    use super::valid_username;

    #[test]
    fn names_follow_the_rules_and_system_is_reserved() {
        assert!(valid_username("alice_1.b-c"));
        assert!(!valid_username(""));
        assert!(!valid_username(&"a".repeat(33)));
        assert!(!valid_username("al ice"));
        assert!(!valid_username("system"));
        assert!(!valid_username("System"));
        assert!(valid_username("systems"));
    }
}

#[cfg(test)]
mod protocol_tests {
    use ferry_proto::{cmd, v1, ProtoMessage};

    use crate::testing::{notify_of, req, World};

    /// `LoginResp.protocol` is the highest the client, logic and the link's gateway all
    /// speak: a gateway from before protocol 2 (which names none) gets 1 agreed on its
    /// links, whatever the client asked, so a cluster can be upgraded node by node.
    #[tokio::test]
    async fn the_login_answers_no_more_than_the_gateway_speaks() {
        let w = World::new(crate::LogicConfig::default());
        let user = w.user("pia").await;
        let (token, _) = w.accounts.issue_token(user, "d1").await.unwrap();
        for (asked, link, answered) in [
            (2, 0, 1),
            (2, 1, 1),
            (0, 2, 1),
            (1, 2, 1),
            (2, 2, 2),
            (9, 2, 2),
            (9, 9, ferry_proto::PROTOCOL_VERSION),
        ] {
            let login = v1::LoginReq {
                token: token.clone(),
                protocol: asked,
                ..Default::default()
            };
            let mut r = req(cmd::LOGIN, 0, &login);
            r.link_protocol = link;
            r.peer = "127.0.0.1:1".into();
            let resp = w.accounts.login(&r).await.unwrap();
            assert_eq!(resp.link_protocol, answered, "the gateway is told");
            let got = v1::LoginResp::decode(resp.body).unwrap().protocol;
            assert_eq!(got, answered, "asked {asked}, link {link}");
        }
    }

    /// A device logs in again while its user still has a route elsewhere (a link this
    /// login replaces, or a racing attempt cut short, closing on another gateway). A
    /// message stored after the LOGIN read `latest_seq` and before the new link's route
    /// arrived went only to that old route; the new link is told once its route comes.
    #[tokio::test]
    async fn an_entry_stored_while_a_login_waits_for_its_route_reaches_the_new_link() {
        let w = World::new(crate::LogicConfig {
            open_messaging: true,
            ..Default::default()
        });
        let (ann, bob) = (w.user("ann").await, w.user("bob").await);
        let (token, _) = w.accounts.issue_token(bob, "d1").await.unwrap();
        w.notifier.link_up(bob, "gw-old", 1, "d1").await;
        let login = v1::LoginReq {
            token,
            ..Default::default()
        };
        let mut r = req(cmd::LOGIN, 0, &login);
        r.peer = "127.0.0.1:1".into();
        r.gateway_id = "gw-new".into();
        r.conn_id = 2;
        let resp = w.accounts.login(&r).await.unwrap();
        let answered = v1::LoginResp::decode(resp.body).unwrap().latest_seq;
        w.pushes();

        let send = v1::SendMsg {
            to: "bob".into(),
            text: "in between".into(),
            client_msg_id: 7,
            ..Default::default()
        };
        w.inbox.send(&req(cmd::SEND, ann, &send)).await.unwrap();
        // Bob's pushes since the last look.
        let to_bob = || -> Vec<_> {
            w.pushes()
                .into_iter()
                .filter(|(_, p)| p.user_id == bob)
                .collect()
        };
        let first = to_bob();
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].0, "gw-old", "only the old route was known");
        let seq = notify_of(&first[0].1).latest_seq;
        assert!(seq > answered);

        // Another device of bob's comes up first: told, but the wait for d1's route
        // goes on.
        w.notifier.link_up(bob, "gw-tab", 9, "d2").await;
        let tab = to_bob();
        assert_eq!(tab.len(), 2, "{tab:?}");
        w.notifier.link_down(bob, "gw-tab", 9);

        // The old link goes, the new one's route arrives: it is told.
        w.notifier.link_down(bob, "gw-old", 1);
        w.notifier.link_up(bob, "gw-new", 2, "d1").await;
        let told = to_bob();
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].0, "gw-new");
        assert_eq!(notify_of(&told[0].1).latest_seq, seq);

        // Told once: the next route of bob (another device) hears nothing more.
        w.notifier.link_up(bob, "gw-new", 3, "d2").await;
        assert!(to_bob().is_empty());
    }
}
