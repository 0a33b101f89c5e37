//! The short link's state services for one signed-in device: friends, avatars, log
//! reports, moments and logout. Works without a long link (the CLI uses it that way) and
//! beside one ([`crate::Client::account`]), sharing the device's token.

use std::sync::Arc;

use bytes::Bytes;
use ferry_proto::v1::{self, ErrorCode};
use ferry_proto::{cmd, ProtoMessage};

use crate::short::path;
use md5::Digest as _;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{ClientConfig, ClientError, DeviceState, Shared, ShortLink, Status};

/// A friend action on another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendAction {
    Accept,
    Decline,
    Remove,
    Block,
    Unblock,
}

impl FriendAction {
    fn path(self) -> &'static str {
        match self {
            FriendAction::Accept => path(cmd::FRIEND_ACCEPT),
            FriendAction::Decline => path(cmd::FRIEND_DECLINE),
            FriendAction::Remove => path(cmd::FRIEND_REMOVE),
            FriendAction::Block => path(cmd::FRIEND_BLOCK),
            FriendAction::Unblock => path(cmd::FRIEND_UNBLOCK),
        }
    }
}

/// A signed-in device on the short link.
#[derive(Clone)]
pub struct Account {
    shared: Arc<Shared>,
    short: ShortLink,
}

impl Account {
    /// Loads the device state (if `cfg.state_dir` is set) and signs in when there is no
    /// token yet.
    pub async fn open(cfg: ClientConfig) -> Result<Account, ClientError> {
        let cfg = crate::security::resolve(cfg).await?;
        let state = match &cfg.state_dir {
            Some(dir) => DeviceState::load(dir)?,
            None => DeviceState::fresh(),
        };
        let (status, _) = watch::channel(Status::Stopped);
        let short = ShortLink::sealed(&cfg.server, cfg.security.key());
        let account = Account {
            shared: Arc::new(Shared {
                cfg,
                state: Mutex::new(state),
                status,
                username: Mutex::new(String::new()),
                smart: Default::default(),
            }),
            short,
        };
        if account.shared.state.lock().token.is_empty() {
            account.sign_in().await?;
        }
        Ok(account)
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Account {
        // The live link's address speaks HTTP too (and passed the network).
        let server = match shared.smart.lock().current {
            Some(ep) => ep.addr.to_string(),
            None => shared.cfg.server.clone(),
        };
        let short = ShortLink::sealed(&server, shared.cfg.security.key());
        Account { shared, short }
    }

    /// Gets a new token with the password.
    async fn sign_in(&self) -> Result<(), ClientError> {
        let cfg = &self.shared.cfg;
        let device = self.shared.state.lock().device_id.clone();
        let a = self
            .short
            .auth(&cfg.username, &cfg.password, &device)
            .await?;
        self.store_token(a);
        Ok(())
    }

    pub(crate) fn short(&self) -> &ShortLink {
        &self.short
    }

    pub(crate) fn token(&self) -> String {
        self.shared.state.lock().token.clone()
    }

    /// Calls a short-link method with the device's token, signing in again once if the
    /// token was refused.
    pub async fn call<Req: ProtoMessage, Resp: ProtoMessage + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        match self.short.call(method, Some(&self.token()), req).await {
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
                self.sign_in().await?;
                self.short.call(method, Some(&self.token()), req).await
            }
            other => other,
        }
    }

    pub async fn find_user(&self, username: &str) -> Result<v1::FindUserResp, ClientError> {
        self.call(
            path(cmd::FIND_USER),
            &v1::FindUserReq {
                username: username.into(),
            },
        )
        .await
    }

    /// Asks `username` to be friends (accepts at once if they asked first).
    pub async fn request_friend(
        &self,
        username: &str,
        greeting: &str,
    ) -> Result<v1::FriendActionResp, ClientError> {
        self.call(
            path(cmd::FRIEND_REQUEST),
            &v1::FriendRequestReq {
                username: username.into(),
                greeting: greeting.into(),
            },
        )
        .await
    }

    pub async fn friend(
        &self,
        action: FriendAction,
        username: &str,
    ) -> Result<v1::FriendActionResp, ClientError> {
        self.call(
            action.path(),
            &v1::FriendActionReq {
                username: username.into(),
            },
        )
        .await
    }

    /// The friend list: everything (`since_version` 0) or the changes since a version.
    pub async fn friends(&self, since_version: u64) -> Result<v1::FriendListResp, ClientError> {
        self.call(path(cmd::FRIEND_LIST), &v1::FriendListReq { since_version })
            .await
    }

    /// Uploads an avatar (PNG, JPEG or WebP); returns its ETag.
    pub async fn set_avatar(&self, image: Vec<u8>) -> Result<String, ClientError> {
        let r: v1::AvatarSetResp = self
            .call(
                path(cmd::AVATAR_SET),
                &v1::AvatarSetReq {
                    image: image.into(),
                },
            )
            .await?;
        Ok(r.etag)
    }

    /// Fetches a user's avatar (or its thumbnail). With the ETag of a copy the caller
    /// has, `Ok(None)` means that copy is current.
    pub async fn avatar(
        &self,
        username: &str,
        thumb: bool,
        etag: Option<&str>,
    ) -> Result<Option<(Bytes, String)>, ClientError> {
        let path = format!(
            "{}/{username}{}",
            path(cmd::AVATAR_GET),
            if thumb { "?thumb=1" } else { "" }
        );
        self.short.get(&path, etag).await
    }

    /// Uploads a client log or crash report; its length and MD5 are computed here.
    pub async fn report(
        &self,
        kind: &str,
        file_name: &str,
        data: Vec<u8>,
    ) -> Result<u64, ClientError> {
        let md5 = hex::encode(md5::Md5::digest(&data));
        let r: v1::ReportResp = self
            .call(
                path(cmd::REPORT),
                &v1::ReportReq {
                    client_version: self.shared.cfg.client_version.clone(),
                    kind: kind.into(),
                    file_name: file_name.into(),
                    length: data.len() as u64,
                    md5,
                    data: data.into(),
                },
            )
            .await?;
        Ok(r.report_id)
    }

    pub async fn post_moment(
        &self,
        text: &str,
        media_ids: Vec<String>,
    ) -> Result<v1::MomentPostResp, ClientError> {
        self.call(
            path(cmd::MOMENT_POST),
            &v1::MomentPostReq {
                text: text.into(),
                media_ids,
            },
        )
        .await
    }

    /// A page of the timeline, newest first (`cursor` 0 for the first page).
    pub async fn timeline(
        &self,
        cursor: u64,
        limit: u32,
    ) -> Result<v1::MomentTimelineResp, ClientError> {
        self.call(
            path(cmd::MOMENT_TIMELINE),
            &v1::MomentTimelineReq { cursor, limit },
        )
        .await
    }

    pub async fn like_moment(&self, moment_id: u64, unlike: bool) -> Result<(), ClientError> {
        let _: v1::Empty = self
            .call(
                path(cmd::MOMENT_LIKE),
                &v1::MomentLikeReq { moment_id, unlike },
            )
            .await?;
        Ok(())
    }

    pub async fn comment_moment(&self, moment_id: u64, text: &str) -> Result<u64, ClientError> {
        let r: v1::MomentCommentResp = self
            .call(
                path(cmd::MOMENT_COMMENT),
                &v1::MomentCommentReq {
                    moment_id,
                    text: text.into(),
                },
            )
            .await?;
        Ok(r.comment_id)
    }

    pub async fn delete_moment(&self, moment_id: u64) -> Result<(), ClientError> {
        let _: v1::Empty = self
            .call(path(cmd::MOMENT_DELETE), &v1::MomentDeleteReq { moment_id })
            .await?;
        Ok(())
    }

    /// Trades the device's token for a fresh one (the old one stops working) and stores
    /// it. Returns when the new token expires (unix ms, 0: never).
    pub async fn refresh_token(&self) -> Result<i64, ClientError> {
        let a: v1::AuthResp = self.call(path(cmd::AUTH_REFRESH), &v1::Empty {}).await?;
        self.store_token(a);
        Ok(self.shared.state.lock().token_expires_ms)
    }

    /// Changes the password. Every session of the user ends (other devices are signed
    /// out and must sign in with the new password); this device gets a new token and
    /// stays signed in. A later sign-in of this `Account` or `Client` needs a config with
    /// the new password.
    pub async fn change_password(&self, old: &str, new: &str) -> Result<(), ClientError> {
        let a: v1::AuthResp = self
            .short
            .call(
                path(cmd::PASSWORD_CHANGE),
                Some(&self.token()),
                &v1::PasswordChangeReq {
                    old_password: old.into(),
                    new_password: new.into(),
                },
            )
            .await?;
        self.store_token(a);
        Ok(())
    }

    fn store_token(&self, a: v1::AuthResp) {
        {
            let mut s = self.shared.state.lock();
            s.token = a.token;
            s.token_expires_ms = a.token_expires_ms;
            s.user_id = a.user_id;
        }
        self.shared.save_state();
    }

    /// Ends this device's session (or every device's): the token stops working and
    /// long links are closed by the server. The stored token is forgotten.
    pub async fn logout(&self, all_devices: bool) -> Result<u32, ClientError> {
        let r: v1::LogoutResp = self
            .short
            .call(
                path(cmd::LOGOUT),
                Some(&self.token()),
                &v1::LogoutReq { all_devices },
            )
            .await?;
        {
            let mut s = self.shared.state.lock();
            s.token.clear();
            // The session is over: its resumption secret goes too.
            s.resumption = None;
        }
        self.shared.save_state();
        Ok(r.sessions)
    }

    /// Creates a group with the caller as its owner.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[&str],
        share_history: bool,
    ) -> Result<v1::Group, ClientError> {
        let r: v1::GroupResp = self
            .call(
                path(cmd::GROUP_CREATE),
                &v1::GroupCreateReq {
                    name: name.into(),
                    members: members.iter().map(|m| m.to_string()).collect(),
                    share_history,
                },
            )
            .await?;
        r.group
            .ok_or_else(|| ClientError::protocol("no group in the answer"))
    }

    /// Adds (`add` true) or removes members (admins and the owner).
    pub async fn group_members(
        &self,
        group_id: u64,
        users: &[&str],
        add: bool,
    ) -> Result<v1::Group, ClientError> {
        let r: v1::GroupResp = self
            .call(
                if add {
                    path(cmd::GROUP_ADD)
                } else {
                    path(cmd::GROUP_REMOVE)
                },
                &v1::GroupMembersReq {
                    group_id,
                    usernames: users.iter().map(|u| u.to_string()).collect(),
                },
            )
            .await?;
        r.group
            .ok_or_else(|| ClientError::protocol("no group in the answer"))
    }

    pub async fn leave_group(&self, group_id: u64) -> Result<(), ClientError> {
        let _: v1::GroupResp = self
            .call(path(cmd::GROUP_LEAVE), &v1::GroupReq { group_id })
            .await?;
        Ok(())
    }

    /// A group with its members (members only).
    pub async fn group_info(&self, group_id: u64) -> Result<v1::Group, ClientError> {
        let r: v1::GroupResp = self
            .call(path(cmd::GROUP_INFO), &v1::GroupReq { group_id })
            .await?;
        r.group
            .ok_or_else(|| ClientError::protocol("no group in the answer"))
    }

    /// The caller's groups with their latest gseq.
    pub async fn groups(&self) -> Result<Vec<v1::Group>, ClientError> {
        let r: v1::GroupListResp = self.call(path(cmd::GROUP_LIST), &v1::Empty {}).await?;
        Ok(r.groups)
    }

    /// Renames a group and/or sets its announcement (empty: unchanged).
    pub async fn update_group(
        &self,
        group_id: u64,
        name: &str,
        announcement: &str,
    ) -> Result<v1::Group, ClientError> {
        let r: v1::GroupResp = self
            .call(
                path(cmd::GROUP_UPDATE),
                &v1::GroupUpdateReq {
                    group_id,
                    name: name.into(),
                    announcement: announcement.into(),
                },
            )
            .await?;
        r.group
            .ok_or_else(|| ClientError::protocol("no group in the answer"))
    }

    /// The owner sets a member's role (OWNER hands the group over).
    pub async fn set_group_role(
        &self,
        group_id: u64,
        user: &str,
        role: v1::GroupRole,
    ) -> Result<(), ClientError> {
        let _: v1::GroupResp = self
            .call(
                path(cmd::GROUP_ROLE),
                &v1::GroupRoleReq {
                    group_id,
                    username: user.into(),
                    role: role as i32,
                },
            )
            .await?;
        Ok(())
    }

    /// One page of a group's log over the short link.
    pub async fn group_sync(
        &self,
        group_id: u64,
        after: u64,
        limit: u32,
    ) -> Result<v1::GroupSyncResp, ClientError> {
        self.call(
            path(cmd::GROUP_SYNC),
            &v1::GroupSyncReq {
                group_id,
                after,
                limit,
            },
        )
        .await
    }

    /// Who has read a group message.
    pub async fn group_reads(
        &self,
        group_id: u64,
        gseq: u64,
    ) -> Result<v1::GroupReadsResp, ClientError> {
        self.call(
            path(cmd::GROUP_READS),
            &v1::GroupReadsReq { group_id, gseq },
        )
        .await
    }

    /// Searches the messages this user may read (`POST /v1/search`): build the request
    /// with the words and filters, and page with the answer's `next` as the next
    /// request's `page`.
    pub async fn search(&self, req: v1::SearchReq) -> Result<v1::SearchResp, ClientError> {
        self.call(path(cmd::SEARCH), &req).await
    }

    /// Registers (or replaces) this device's push target (build one with
    /// [`crate::push`]'s `apns`, `fcm`, `web_push`, `unified_push`); answers the target
    /// as the server stored it (with `device_id` and `created_ms`).
    pub async fn register_push(
        &self,
        target: v1::PushTarget,
    ) -> Result<v1::PushTarget, ClientError> {
        let r: v1::PushListResp = self
            .call(
                path(cmd::PUSH_REGISTER),
                &v1::PushRegisterReq {
                    target: Some(target),
                },
            )
            .await?;
        one_target(r)
    }

    /// Removes this device's push target (`None`) or another device's of this user.
    /// Removing what is not there is no error.
    pub async fn unregister_push(&self, device: Option<&str>) -> Result<(), ClientError> {
        let _: v1::Empty = self
            .call(
                path(cmd::PUSH_UNREGISTER),
                &v1::PushUnregisterReq {
                    device_id: device.unwrap_or_default().into(),
                },
            )
            .await?;
        Ok(())
    }

    /// This user's push targets, one per device.
    pub async fn push_targets(&self) -> Result<Vec<v1::PushTarget>, ClientError> {
        let r: v1::PushListResp = self.call(path(cmd::PUSH_LIST), &v1::Empty {}).await?;
        Ok(r.targets)
    }

    /// Sets conversations' push settings (mode `PUSH_MODE_DEFAULT` removes one) and
    /// answers every setting of the user.
    pub async fn set_push_prefs(
        &self,
        set: Vec<v1::ConversationPush>,
    ) -> Result<Vec<v1::ConversationPush>, ClientError> {
        let r: v1::PushPrefsResp = self
            .call(path(cmd::PUSH_PREFS), &v1::PushPrefsReq { set })
            .await?;
        Ok(r.conversations)
    }

    /// Every conversation push setting of the user (expired ones left out).
    pub async fn push_prefs(&self) -> Result<Vec<v1::ConversationPush>, ClientError> {
        self.set_push_prefs(Vec::new()).await
    }

    /// Changes conversations' states over the short link (only the fields set in each
    /// [`v1::ConvSet`]: archive, unread, mute, draft, clear, retention) and answers every
    /// conversation state of the user. See [`crate::Client::conv_set`] and its helpers.
    pub async fn conv_set(&self, set: Vec<v1::ConvSet>) -> Result<Vec<v1::ConvState>, ClientError> {
        let r: v1::ConvResp = self.call(path(cmd::CONV), &v1::ConvReq { set }).await?;
        Ok(r.conversations)
    }

    /// Every conversation state of the user.
    pub async fn conversations(&self) -> Result<Vec<v1::ConvState>, ClientError> {
        self.conv_set(Vec::new()).await
    }

    /// The device's current token (empty after logout).
    pub fn token_now(&self) -> String {
        self.token()
    }
}

/// The one target a `PUSH_REGISTER` answers with.
pub(crate) fn one_target(r: v1::PushListResp) -> Result<v1::PushTarget, ClientError> {
    r.targets
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::protocol("no target in the push/register answer"))
}
