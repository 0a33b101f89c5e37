//! Device tokens over their life: expiry, renewal (explicit on the short link, implicit
//! at a long-link LOGIN past half the token's life) and revocation by a password change.
//!
//! A token is 32 random bytes; the store keeps only its SHA-256 and when it was issued,
//! so a token expires `token_ttl_secs` after issue without any clock on the client.

use bytes::Bytes;
use ferry_bus::{BusRequest, BusResponse, Push};
use ferry_proto::{cmd, v1, ProtoMessage};

use crate::auth;
use crate::error::LogicError;
use crate::service::{now_ms, ok, Logic};

impl Logic {
    /// Refuses a request from an address over `limit` (`what` names it for the client).
    pub(crate) fn limit_ip(
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
    pub(crate) fn limit_password(&self, username: &str) -> Result<(), LogicError> {
        self.limits
            .auth_per_user
            .check(&username.to_owned())
            .map_err(|ms| {
                metrics::counter!("ferry_rate_limited_total", "limit" => "password").increment(1);
                LogicError::RateLimited("too many sign-in attempts for this user".into(), ms)
            })
    }

    /// When a token issued at `created_ms` expires (0: never).
    pub(crate) fn token_expiry(&self, created_ms: i64) -> i64 {
        match self.config().token_ttl_secs {
            0 => 0,
            ttl => created_ms.saturating_add((ttl as i64).saturating_mul(1000)),
        }
    }

    /// The stored session behind a token, refused when unknown or expired (an expired
    /// one is deleted on the way).
    pub(crate) async fn session_row(
        &self,
        token: &str,
    ) -> Result<ferry_store::Session, LogicError> {
        if token.is_empty() {
            return Err(LogicError::Unauthorized);
        }
        let hash = auth::token_hash(token);
        let s = self
            .store
            .session(hash)
            .await?
            .ok_or(LogicError::Unauthorized)?;
        let expires = self.token_expiry(s.created_ms);
        if expires != 0 && now_ms() >= expires {
            metrics::counter!("ferry_tokens_expired_total").increment(1);
            if let Err(e) = self.store.delete_session(hash).await {
                tracing::debug!(error = %e, "deleting an expired session failed");
            }
            return Err(LogicError::Unauthorized);
        }
        Ok(s)
    }

    /// A new token for a device, replacing its earlier one. Returns it and its expiry.
    pub(crate) async fn issue_token(
        &self,
        user_id: u64,
        device_id: &str,
    ) -> Result<(String, i64), LogicError> {
        let token = auth::new_token();
        self.store
            .put_session(auth::token_hash(&token), user_id, device_id)
            .await?;
        Ok((token, self.token_expiry(now_ms())))
    }

    /// At LOGIN: a renewed token when `s` is past half its life (empty otherwise), and
    /// the expiry of the token the device holds afterwards.
    pub(crate) async fn renew_if_old(
        &self,
        s: &ferry_store::Session,
    ) -> Result<(String, i64), LogicError> {
        let expires = self.token_expiry(s.created_ms);
        if expires == 0 {
            return Ok((String::new(), 0));
        }
        let half = (expires - s.created_ms) / 2;
        if now_ms() < s.created_ms + half {
            return Ok((String::new(), expires));
        }
        metrics::counter!("ferry_tokens_renewed_total").increment(1);
        self.issue_token(s.user_id, &s.device_id).await
    }

    /// `POST /v1/auth/refresh`: a fresh token for the caller's device.
    pub(crate) async fn auth_refresh(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let s = self.session_row(&req.token).await?;
        let (token, token_expires_ms) = self.issue_token(s.user_id, &s.device_id).await?;
        metrics::counter!("ferry_tokens_renewed_total").increment(1);
        Ok(ok(
            req.cmd,
            &v1::AuthResp {
                user_id: s.user_id,
                token,
                latest_seq: self.store.latest_seq(s.user_id).await?,
                token_expires_ms,
            },
        ))
    }

    /// `POST /v1/password`: checks the old password, stores the new one and ends every
    /// session of the user (other devices' links are kicked); the caller's device gets a
    /// new token so it stays signed in.
    pub(crate) async fn password_change(
        &self,
        req: &BusRequest,
    ) -> Result<BusResponse, LogicError> {
        let r = v1::PasswordChangeReq::decode(req.body.clone())?;
        let me = self.caller(req).await?;
        self.limit_password(&self.user_name(me.user_id).await?)?;
        if !(8..=1024).contains(&r.new_password.len()) {
            return Err(LogicError::InvalidArgument(
                "password must be 8-1024 bytes".into(),
            ));
        }
        let user = self
            .store
            .user_by_id(me.user_id)
            .await?
            .ok_or(LogicError::Unauthorized)?;
        let params = self.config().password;
        let (old, new, phc) = (r.old_password, r.new_password, user.password_hash);
        let hash = tokio::task::spawn_blocking(move || {
            auth::verify_password(&old, &phc).then(|| auth::hash_password(&params, &new))
        })
        .await
        .map_err(|e| LogicError::Internal(e.to_string()))?
        .ok_or(LogicError::BadCredentials)?;
        let revoked = self.store.set_password(me.user_id, &hash).await?;
        let kick = Bytes::from(
            v1::Kick {
                code: v1::ErrorCode::Kicked as i32,
                reason: "the password was changed".into(),
            }
            .encode_to_vec(),
        );
        for device in revoked.iter().filter(|d| **d != *me.device_id) {
            self.push_all(Push {
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
                latest_seq: self.store.latest_seq(me.user_id).await?,
                token_expires_ms,
            },
        ))
    }
}
