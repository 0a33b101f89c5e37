//! The request handler: one entry point per client command.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use ferry_bus::{Bus, BusRequest, BusResponse, Handler, LinkEvent, Push};
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::{NewMessage, Store, StoreError};

use crate::auth::{self, PasswordParams};
use crate::error::LogicError;
use crate::presence::Presence;

/// Logic settings. Every field has a default.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LogicConfig {
    /// Longest text message, in bytes.
    pub max_text_bytes: usize,
    /// Entries per sync page when the client asks for 0, and the most it may ask for.
    pub sync_page: u32,
    pub sync_page_max: u32,
    /// A sync answer stops adding entries past this many bytes (frames are ≤ 1 MiB).
    pub sync_page_bytes: usize,
    /// Entries whose encoding is at most this many bytes ride inside the notify.
    pub inline_notify_bytes: usize,
    /// The heartbeat interval told to clients at login, in seconds.
    pub heartbeat_secs: u32,
    /// Inbox entries older than this many days are deleted (0: keep forever).
    pub retention_days: u32,
    /// Client log reports older than this many days are deleted (0: keep forever).
    pub report_retention_days: u32,
    /// Let anyone message anyone. Off by default: only friends can message each other.
    pub open_messaging: bool,
    /// Largest group, owner included.
    pub group_max_members: usize,
    /// A sender may recall a message this many seconds after sending it.
    pub recall_window_secs: u32,
    /// Groups up to this size list who read a message; larger ones give a count.
    pub receipts_list_max: usize,
    pub password: PasswordParams,
    /// A device token stops working this many seconds after it was issued (0: never).
    /// A long-link LOGIN past half this age answers with a renewed token.
    pub token_ttl_secs: u64,
    /// Rate limits on password attempts, registrations, logins and sends.
    pub limits: crate::limits::LimitsConfig,
    /// Overload control: how many requests at once, and who is shed first.
    pub admission: crate::admission::AdmissionConfig,
    /// Media uploads and downloads.
    pub media: crate::media::MediaConfig,
    /// Endpoint lists (regions, gateways) and connect reports.
    pub endpoints: crate::endpoints::EndpointsConfig,
}

impl Default for LogicConfig {
    fn default() -> Self {
        LogicConfig {
            max_text_bytes: 8 * 1024,
            sync_page: 200,
            sync_page_max: 1000,
            sync_page_bytes: 256 * 1024,
            inline_notify_bytes: 1024,
            heartbeat_secs: 30,
            retention_days: 30,
            report_retention_days: 14,
            open_messaging: false,
            group_max_members: 10_000,
            recall_window_secs: 120,
            receipts_list_max: 100,
            password: PasswordParams::default(),
            token_ttl_secs: 30 * 86_400,
            limits: crate::limits::LimitsConfig::default(),
            admission: crate::admission::AdmissionConfig::default(),
            media: crate::media::MediaConfig::default(),
            endpoints: crate::endpoints::EndpointsConfig::default(),
        }
    }
}

/// A logged-in device, as cached from its token.
#[derive(Debug, Clone)]
pub(crate) struct DeviceSession {
    pub user_id: u64,
    pub device_id: Arc<str>,
}

/// The logic service. Serve it on a bus with [`Logic::start`].
pub struct Logic {
    cfg: LogicConfig,
    pub(crate) store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    presence: Presence,
    /// User names never change, so both directions are cached for good.
    ids_by_name: DashMap<String, u64>,
    names_by_id: DashMap<u64, Arc<str>>,
    /// Member ids per group, for fan-out (short-lived: another node may change them).
    pub(crate) group_members: crate::groups::MemberCache,
    /// How each user stands towards each peer they were checked against on a send
    /// (short-lived: another node may change it).
    pub(crate) relations: crate::social::RelationCache,
    /// Group notifies waiting to be pushed, coalesced per group.
    pub(crate) group_feeds: crate::groups::Feeds,
    /// This service itself, for the tasks it spawns.
    pub(crate) me: std::sync::Weak<Logic>,
    /// The newest moment id this node gave out (ids are time-ordered).
    pub(crate) moment_clock: std::sync::atomic::AtomicU64,
    /// Token buckets for the rate limits (`cfg.limits`).
    pub(crate) limits: crate::limits::Limits,
    /// Priority admission (`cfg.admission`): sheds new sessions before connected users.
    pub admission: crate::admission::Admission,
    /// The last synckey recorded per device, so unchanged ones are not rewritten.
    synckeys: DashMap<(u64, Arc<str>), u64>,
    /// Endpoint lists and the connect reports that rank them.
    endpoints: crate::endpoints::Endpoints,
    /// Where media lives; set once with [`Logic::set_media_store`].
    media: std::sync::OnceLock<Arc<dyn ferry_store::MediaStore>>,
    /// Uploads whose owner was checked lately (see `media.rs`).
    pub(crate) uploads: crate::media::UploadCache,
    /// Users whose inbox grew while this node knew no route to them: the seq, and when.
    /// A link that logs in races the news of its route to the logic nodes (in a cluster
    /// by a few milliseconds, more under load); an entry stored in between would get no
    /// notify. When the route arrives, such a user is notified (see `link_event`).
    unrouted: DashMap<u64, (u64, std::time::Instant)>,
    /// Insertions into `unrouted`, to prune it every few thousand.
    unrouted_inserts: std::sync::atomic::AtomicU64,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn valid_username(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub(crate) fn ok<M: ProtoMessage>(req_cmd: u32, msg: &M) -> BusResponse {
    BusResponse {
        cmd: u32::from(cmd::response(req_cmd as u8)),
        body: Bytes::from(msg.encode_to_vec()),
        ..Default::default()
    }
}

impl Logic {
    pub fn new(cfg: LogicConfig, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Arc<Self> {
        Arc::new_cyclic(|me| Logic {
            me: me.clone(),
            group_feeds: Default::default(),
            endpoints: crate::endpoints::Endpoints::new(cfg.endpoints.clone()),
            limits: crate::limits::Limits::new(&cfg.limits),
            admission: crate::admission::Admission::new(cfg.admission.clone()),
            cfg,
            store,
            bus,
            presence: Presence::default(),
            ids_by_name: DashMap::new(),
            names_by_id: DashMap::new(),
            synckeys: DashMap::new(),
            group_members: DashMap::new(),
            relations: Default::default(),
            moment_clock: std::sync::atomic::AtomicU64::new(0),
            media: std::sync::OnceLock::new(),
            uploads: Default::default(),
            unrouted: DashMap::new(),
            unrouted_inserts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Gives this node its media store (once; later calls are ignored). Without one,
    /// media requests answer UNAVAILABLE.
    pub fn set_media_store(&self, media: Arc<dyn ferry_store::MediaStore>) {
        let _ = self.media.set(media);
    }

    /// The media store, when set.
    pub fn media_store(&self) -> Option<&Arc<dyn ferry_store::MediaStore>> {
        self.media.get()
    }

    /// Serves requests on the bus and starts the retention task.
    pub fn start(self: &Arc<Self>) {
        self.bus.serve_logic(self.clone());
        self.start_media_sweep();
        if self.cfg.retention_days > 0 || self.cfg.report_retention_days > 0 {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    let Some(me) = me.upgrade() else { break };
                    if me.cfg.retention_days > 0 {
                        let cutoff = now_ms() - i64::from(me.cfg.retention_days) * 86_400_000;
                        match me.store.prune(cutoff).await {
                            Ok(n) if n > 0 => {
                                tracing::info!(entries = n, "pruned old inbox entries")
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "prune failed"),
                        }
                    }
                    if me.cfg.report_retention_days > 0 {
                        let cutoff =
                            now_ms() - i64::from(me.cfg.report_retention_days) * 86_400_000;
                        if let Err(e) = me.store.prune_reports(cutoff).await {
                            tracing::warn!(error = %e, "pruning reports failed");
                        }
                    }
                }
            });
        }
    }

    pub fn config(&self) -> &LogicConfig {
        &self.cfg
    }

    /// Users with at least one live link.
    pub fn users_online(&self) -> usize {
        self.presence.users_online()
    }

    /// The handler of a request, boxed at its own size: as one `async fn` the dispatch
    /// was a 4 KB future (the largest arm's) that every request built and moved
    /// (`memmove` led the workers' profile of a 1:1 run; median of 3 interleaved
    /// `ferry bench p2p --window 8` runs: 37 873 → 39 958 messages/s).
    fn dispatch<'a>(&'a self, req: &'a BusRequest) -> Handling<'a> {
        let c = req.cmd;
        match u8::try_from(c).unwrap_or(0) {
            cmd::REGISTER => Box::pin(self.register(req)),
            cmd::AUTH => Box::pin(self.auth(req)),
            cmd::AUTH_REFRESH => Box::pin(self.auth_refresh(req)),
            cmd::PASSWORD_CHANGE => Box::pin(self.password_change(req)),
            cmd::LOGIN => Box::pin(self.login(req)),
            cmd::SEND => Box::pin(self.send(req)),
            cmd::SYNC => Box::pin(self.sync(req)),
            cmd::LOGOUT => Box::pin(self.logout(req)),
            cmd::FIND_USER => Box::pin(self.find_user(req)),
            cmd::FRIEND_REQUEST
            | cmd::FRIEND_ACCEPT
            | cmd::FRIEND_DECLINE
            | cmd::FRIEND_REMOVE
            | cmd::FRIEND_BLOCK
            | cmd::FRIEND_UNBLOCK => Box::pin(self.friend_action(req)),
            cmd::FRIEND_LIST => Box::pin(self.friend_list(req)),
            cmd::AVATAR_SET => Box::pin(self.avatar_set(req)),
            cmd::AVATAR_GET => Box::pin(self.avatar_get(req)),
            cmd::REPORT => Box::pin(self.report(req)),
            cmd::MOMENT_POST => Box::pin(self.moment_post(req)),
            cmd::MOMENT_TIMELINE => Box::pin(self.moment_timeline(req)),
            cmd::MOMENT_LIKE => Box::pin(self.moment_like(req)),
            cmd::MOMENT_COMMENT => Box::pin(self.moment_comment(req)),
            cmd::MOMENT_DELETE => Box::pin(self.moment_delete(req)),
            cmd::GROUP_CREATE => Box::pin(self.group_create(req)),
            cmd::GROUP_ADD | cmd::GROUP_REMOVE => Box::pin(self.group_members_change(req)),
            cmd::GROUP_LEAVE => Box::pin(self.group_leave(req)),
            cmd::GROUP_INFO => Box::pin(self.group_info(req)),
            cmd::GROUP_LIST => Box::pin(self.group_list(req)),
            cmd::GROUP_UPDATE => Box::pin(self.group_update(req)),
            cmd::GROUP_ROLE => Box::pin(self.group_role(req)),
            cmd::GROUP_READS => Box::pin(self.group_reads(req)),
            cmd::GROUP_SYNC => Box::pin(self.group_sync(req)),
            cmd::RECALL => Box::pin(self.recall(req)),
            cmd::MEDIA_CREATE => Box::pin(self.media_create(req)),
            cmd::MEDIA_CHUNK => Box::pin(self.media_chunk(req)),
            cmd::MEDIA_STATUS => Box::pin(self.media_status(req)),
            cmd::MEDIA_FINISH => Box::pin(self.media_finish(req)),
            cmd::MEDIA_GET => Box::pin(self.media_get(req)),
            cmd::READ => Box::pin(self.read(req)),
            cmd::ENDPOINTS => Box::pin(std::future::ready(self.endpoint_list(req))),
            cmd::ENDPOINT_REPORT => Box::pin(self.endpoint_report(req)),
            cmd::TYPING => Box::pin(self.typing(req)),
            _ => Box::pin(std::future::ready(Err(LogicError::UnknownCommand(c)))),
        }
    }

    async fn register(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::RegisterReq::decode(req.body.clone())?;
        self.limit_ip(&self.limits.register_per_ip, req, "registrations")?;
        if !valid_username(&r.username) {
            return Err(LogicError::InvalidArgument(
                "user name must be 1-32 characters of A-Z a-z 0-9 _ . -".into(),
            ));
        }
        if !(8..=1024).contains(&r.password.len()) {
            return Err(LogicError::InvalidArgument(
                "password must be 8-1024 bytes".into(),
            ));
        }
        if self.user_id(&r.username).await.is_ok() {
            return Err(LogicError::UserExists);
        }
        let params = self.cfg.password;
        let hash = tokio::task::spawn_blocking(move || auth::hash_password(&params, &r.password))
            .await
            .map_err(|e| LogicError::Internal(e.to_string()))?;
        let id = match self.store.create_user(&r.username, &hash).await {
            Ok(id) => id,
            Err(StoreError::UserExists) => return Err(LogicError::UserExists),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user = %r.username, user_id = id, "registered");
        Ok(ok(req.cmd, &v1::RegisterResp { user_id: id }))
    }

    async fn auth(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::AuthReq::decode(req.body.clone())?;
        self.limit_ip(&self.limits.auth_per_ip, req, "sign-in attempts")?;
        self.limit_password(&r.username)?;
        if r.device_id.is_empty() || r.device_id.len() > 64 {
            return Err(LogicError::InvalidArgument(
                "device_id must be 1-64 bytes".into(),
            ));
        }
        let user = self
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
        let latest_seq = self.store.latest_seq(user.id).await?;
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

    /// The session behind a token. Always read from the store, never cached, so a
    /// logout or a re-auth takes effect at once on every logic node.
    async fn session(&self, token: &str) -> Result<DeviceSession, LogicError> {
        let s = self.session_row(token).await?;
        Ok(DeviceSession {
            user_id: s.user_id,
            device_id: s.device_id.into(),
        })
    }

    /// Who sent a request: the link's user, or the token's owner.
    pub(crate) async fn caller(&self, req: &BusRequest) -> Result<DeviceSession, LogicError> {
        if req.user_id != 0 {
            return Ok(DeviceSession {
                user_id: req.user_id,
                device_id: req.device_id.as_str().into(),
            });
        }
        self.session(&req.token).await
    }

    pub(crate) async fn user_id(&self, name: &str) -> Result<u64, LogicError> {
        if let Some(id) = self.ids_by_name.get(name) {
            return Ok(*id);
        }
        let user = self
            .store
            .user_by_name(name)
            .await?
            .ok_or_else(|| LogicError::UnknownUser(name.to_owned()))?;
        self.ids_by_name.insert(user.name.clone(), user.id);
        self.names_by_id.insert(user.id, user.name.into());
        Ok(user.id)
    }

    pub(crate) async fn user_name(&self, id: u64) -> Result<Arc<str>, LogicError> {
        if let Some(n) = self.names_by_id.get(&id) {
            return Ok(n.clone());
        }
        let user = self
            .store
            .user_by_id(id)
            .await?
            .ok_or(LogicError::Unauthorized)?;
        let name: Arc<str> = user.name.as_str().into();
        self.ids_by_name.insert(user.name, id);
        self.names_by_id.insert(id, name.clone());
        Ok(name)
    }

    async fn login(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::LoginReq::decode(req.body.clone())?;
        self.limit_ip(&self.limits.login_per_ip, req, "logins")?;
        let s = self.session_row(&r.token).await?;
        let (token, token_expires_ms) = self.renew_if_old(&s).await?;
        let s = DeviceSession {
            user_id: s.user_id,
            device_id: s.device_id.into(),
        };
        let username = self.user_name(s.user_id).await?;
        let latest_seq = self.store.latest_seq(s.user_id).await?;
        self.record_synckey(s.user_id, &s.device_id, r.synckey);
        let mut resp = ok(
            req.cmd,
            &v1::LoginResp {
                user_id: s.user_id,
                username: username.to_string(),
                latest_seq,
                heartbeat_secs: self.cfg.heartbeat_secs,
                server_time_ms: now_ms(),
                token,
                token_expires_ms,
                idle_timeout_ms: req.idle_timeout_ms,
            },
        );
        resp.user_id = s.user_id;
        resp.device_id = s.device_id.to_string();
        metrics::counter!("ferry_logins_total").increment(1);
        Ok(resp)
    }

    async fn send(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let started = std::time::Instant::now();
        let me = self.caller(req).await?;
        if let Err(ms) = self.limits.sends_per_user.check(&me.user_id) {
            metrics::counter!("ferry_rate_limited_total", "limit" => "sends").increment(1);
            return Err(LogicError::RateLimited(
                "too many messages; slow down".into(),
                ms,
            ));
        }
        let r = v1::SendMsg::decode(req.body.clone())?;
        if r.text.len() > self.cfg.max_text_bytes {
            return Err(LogicError::TooLarge(format!(
                "text of {} bytes exceeds the limit of {}",
                r.text.len(),
                self.cfg.max_text_bytes
            )));
        }
        if r.client_msg_id == 0 {
            return Err(LogicError::InvalidArgument(
                "client_msg_id must be non-zero".into(),
            ));
        }
        if r.group_id != 0 {
            // Boxed: a 2 KB future that would make every 1:1 send as large.
            return Box::pin(self.send_group(&me, r, req.cmd)).await;
        }
        let to = self.user_id(&r.to).await?;
        if to != me.user_id {
            self.may_message(me.user_id, to, &r.to).await?;
        }
        let media = self.attach_media(me.user_id, r.media, &[to], &[]).await?;
        let from = self.user_name(me.user_id).await?;
        let time_ms = now_ms();
        let message = v1::Message {
            msg_id: 0,
            from: from.to_string(),
            to: r.to,
            time_ms,
            r#type: r.r#type,
            text: r.text,
            client_msg_id: r.client_msg_id,
            media,
            ..Default::default()
        };
        let done = self
            .store
            .append_message(NewMessage {
                sender_id: me.user_id,
                recipient_id: to,
                client_msg_id: r.client_msg_id,
                time_ms,
                message: message.clone(),
            })
            .await?;
        if !done.duplicate {
            let message = v1::Message {
                msg_id: done.msg_id,
                ..message
            };
            metrics::counter!("ferry_messages_in_total").increment(1);
            if self.notify(to, done.recipient_seq, &message).await > 0 {
                // Send received → durable → notify handed to the recipient's gateway(s).
                metrics::histogram!("ferry_delivery_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            if to != me.user_id {
                self.notify(me.user_id, done.sender_seq, &message).await;
            }
        } else {
            metrics::counter!("ferry_messages_duplicate_total").increment(1);
            // The first attempt may have died (its logic node killed, its gateway gone)
            // between storing and notifying: notify again, without the entry (this
            // attempt's copy of the message is not the stored one). Devices that have it
            // ignore the notify.
            self.notify_latest(to).await;
            if to != me.user_id {
                self.notify_latest(me.user_id).await;
            }
        }
        Ok(ok(
            req.cmd,
            &v1::SendAck {
                msg_id: done.msg_id,
                seq: done.sender_seq,
                time_ms: done.time_ms,
            },
        ))
    }

    /// Whether `from` may message `to`: never when `to` blocked `from`; otherwise only
    /// friends, unless the server opens messaging to everyone.
    pub(crate) async fn may_message(
        &self,
        from: u64,
        to: u64,
        to_name: &str,
    ) -> Result<(), LogicError> {
        use v1::FriendState;
        if self.cfg.open_messaging {
            if self.relation(to, from).await? == FriendState::Blocked {
                return Err(LogicError::PermissionDenied(format!(
                    "{to_name} does not accept messages from you"
                )));
            }
            return Ok(());
        }
        // Friendship is symmetric and a block ends it, so one row answers both questions.
        if self.are_friends(from, to).await? {
            Ok(())
        } else {
            Err(LogicError::PermissionDenied(format!(
                "{to_name} is not your friend; send a friend request first"
            )))
        }
    }

    /// Tells every gateway holding `user`'s links that the inbox reached `seq` with a
    /// message, inline when small. Returns how many gateways took the push.
    async fn notify(&self, user: u64, seq: u64, message: &v1::Message) -> usize {
        let entry = v1::Entry {
            seq,
            kind: Some(v1::entry::Kind::Message(message.clone())),
            ..Default::default()
        };
        self.notify_entry(user, seq, entry).await
    }

    /// Tells every gateway holding `user`'s links that the inbox reached `seq`, with
    /// `entry` inline when it is small. Returns how many gateways took the push.
    pub(crate) async fn notify_entry(&self, user: u64, seq: u64, mut entry: v1::Entry) -> usize {
        let gateways = self.presence.gateways(user);
        if gateways.is_empty() {
            self.note_unrouted(user, seq);
            return 0;
        }
        entry.seq = seq;
        let entries = if entry.encoded_len() <= self.cfg.inline_notify_bytes {
            vec![entry]
        } else {
            Vec::new()
        };
        let inline = entries.len() as u64;
        let body = Bytes::from(
            v1::Notify {
                latest_seq: seq,
                entries,
            }
            .encode_to_vec(),
        );
        let push = Push {
            user_id: user,
            cmd: u32::from(cmd::NOTIFY),
            body,
            ..Default::default()
        };
        let pushed = self.push_via(&gateways, push).await;
        metrics::counter!("ferry_notifies_total").increment(pushed as u64);
        metrics::counter!("ferry_entries_out_total", "via" => "notify")
            .increment(inline * pushed as u64);
        pushed
    }

    /// A notify without inline entries: the devices sync.
    pub(crate) async fn notify_latest(&self, user: u64) {
        match self.store.latest_seq(user).await {
            Ok(seq) => {
                let body = Bytes::from(
                    v1::Notify {
                        latest_seq: seq,
                        entries: Vec::new(),
                    }
                    .encode_to_vec(),
                );
                self.push_all(Push {
                    user_id: user,
                    device_id: String::new(),
                    cmd: u32::from(cmd::NOTIFY),
                    body,
                    close: false,
                    ..Default::default()
                })
                .await;
            }
            Err(e) => tracing::debug!(error = %e, "no notify: latest seq unknown"),
        }
    }

    /// Calls `f` once for each gateway holding links of `user`.
    pub(crate) fn each_gateway_of(&self, user: u64, f: impl FnMut(&Arc<str>)) {
        self.presence.each_gateway(user, f)
    }

    /// One push to one gateway; a failure is counted, not fatal.
    pub(crate) async fn push_to(&self, gateway: &str, push: Push) -> bool {
        match self.bus.push(gateway, push).await {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("ferry_notify_failures_total").increment(1);
                tracing::debug!(gateway = %gateway, error = %e, "push failed");
                false
            }
        }
    }

    /// Remembers that `user`'s inbox reached `seq` with no route known here. Entries
    /// older than a minute are dropped now and then: a route is never that late.
    fn note_unrouted(&self, user: u64, seq: u64) {
        let now = std::time::Instant::now();
        self.unrouted.insert(user, (seq, now));
        let n = self
            .unrouted_inserts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 4096 == 4095 {
            self.unrouted
                .retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
    }

    /// Sends a push to every gateway holding links of `push.user_id`. Returns how many
    /// took it. A failed push is not fatal: the device syncs on its next login or notify.
    pub(crate) async fn push_all(&self, push: Push) -> usize {
        let gateways = self.presence.gateways(push.user_id);
        self.push_via(&gateways, push).await
    }

    /// Sends a push to each of `gateways`; returns how many took it.
    async fn push_via(&self, gateways: &[Arc<str>], push: Push) -> usize {
        let mut pushed = 0;
        for gw in gateways {
            if self.push_to(gw, push.clone()).await {
                pushed += 1;
            }
        }
        pushed
    }

    async fn sync(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::SyncReq::decode(req.body.clone())?;
        let limit = match r.limit {
            0 => self.cfg.sync_page,
            n => n.min(self.cfg.sync_page_max),
        };
        let mut page = self.store.inbox(me.user_id, r.synckey, limit).await?;
        metrics::counter!("ferry_syncs_total").increment(1);
        metrics::histogram!("ferry_sync_lag_entries")
            .record(page.latest_seq.saturating_sub(r.synckey) as f64);
        // Keep the answer well under the frame limit.
        let mut bytes = 0;
        if let Some(cut) = page.entries.iter().position(|e| {
            bytes += e.encoded_len() + 4;
            bytes > self.cfg.sync_page_bytes
        }) {
            page.entries.truncate(cut.max(1));
            page.more = true;
        }
        let synckey = match page.entries.last() {
            Some(e) => e.seq,
            // Nothing after the synckey: either the device is up to date, or everything
            // between was pruned. Either way it may jump to the newest seq.
            None => r.synckey.max(page.latest_seq),
        };
        self.record_synckey(me.user_id, &me.device_id, r.synckey);
        metrics::counter!("ferry_entries_out_total", "via" => "sync")
            .increment(page.entries.len() as u64);
        Ok(ok(
            req.cmd,
            &v1::SyncResp {
                entries: page.entries,
                synckey,
                more: page.more,
                latest_seq: page.latest_seq,
            },
        ))
    }

    fn origin(req: &BusRequest) -> crate::endpoints::Origin<'_> {
        crate::endpoints::Origin {
            peer: &req.peer,
            local_addr: &req.local_addr,
            listen: &req.listen,
            gateway_id: &req.gateway_id,
        }
    }

    /// The ranked endpoint list for the client behind `req` (no token needed).
    fn endpoint_list(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let r = v1::EndpointsReq::decode(req.body.clone())?;
        let list = self.endpoints.list(&Self::origin(req), r.version, || {
            self.presence.links_per_gateway()
        });
        Ok(ok(req.cmd, &list))
    }

    /// Connect timings from a signed-in client.
    async fn endpoint_report(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.caller(req).await?;
        let r = v1::EndpointReportReq::decode(req.body.clone())?;
        let accepted = self.endpoints.report(me.user_id, &Self::origin(req), r)?;
        metrics::counter!("ferry_endpoint_samples_total").increment(u64::from(accepted));
        Ok(ok(req.cmd, &v1::EndpointReportResp { accepted }))
    }

    /// Remembers what a device has applied, without delaying the answer.
    fn record_synckey(&self, user: u64, device: &Arc<str>, synckey: u64) {
        if synckey == 0 {
            return;
        }
        let key = (user, device.clone());
        let changed = match self.synckeys.insert(key, synckey) {
            Some(old) => old != synckey,
            None => true,
        };
        if changed {
            let store = self.store.clone();
            let device = device.clone();
            tokio::spawn(async move {
                if let Err(e) = store.set_synckey(user, &device, synckey).await {
                    tracing::debug!(error = %e, "recording synckey failed");
                }
            });
        }
    }
}

/// A request being handled.
type Handling<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<BusResponse, LogicError>> + Send + 'a>,
>;

#[async_trait]
impl Handler for Logic {
    async fn handle(&self, req: BusRequest) -> BusResponse {
        let started = std::time::Instant::now();
        let name = cmd::name(req.cmd as u8);
        let admitted = self
            .admission
            .admit(crate::admission::Class::of(&req))
            .await;
        let outcome = match admitted {
            Ok(_slot) => self.dispatch(&req).await,
            Err(ms) => Err(LogicError::Overloaded(ms)),
        };
        let resp = match outcome {
            Ok(resp) => resp,
            Err(e) => {
                metrics::counter!("ferry_errors_total", "cmd" => name, "code" => e.code().as_str_name())
                    .increment(1);
                match e.code() {
                    // Media still uploading is an expected wait, not a failure.
                    v1::ErrorCode::Internal | v1::ErrorCode::Unavailable
                        if !matches!(e, LogicError::NotReady(..) | LogicError::Overloaded(_)) =>
                    {
                        tracing::error!(cmd = cmd::name(req.cmd as u8), error = %e, "request failed")
                    }
                    _ => {
                        tracing::debug!(cmd = cmd::name(req.cmd as u8), error = %e, "request refused")
                    }
                }
                BusResponse {
                    cmd: u32::from(cmd::ERROR),
                    body: Bytes::from(e.to_body().encode_to_vec()),
                    ..Default::default()
                }
            }
        };
        metrics::histogram!("ferry_request_duration_seconds", "cmd" => name)
            .record(started.elapsed().as_secs_f64());
        resp
    }

    async fn link_event(&self, ev: LinkEvent) {
        if ev.online {
            self.presence.online(ev.user_id, &ev.gateway_id, ev.conn_id);
            // Entries stored here while the route was on its way: tell the user now.
            if let Some((_, (seq, _))) = self.unrouted.remove(&ev.user_id) {
                let body = Bytes::from(
                    v1::Notify {
                        latest_seq: seq,
                        entries: Vec::new(),
                    }
                    .encode_to_vec(),
                );
                self.push_all(Push {
                    user_id: ev.user_id,
                    cmd: u32::from(cmd::NOTIFY),
                    body,
                    ..Default::default()
                })
                .await;
            }
        } else {
            self.presence
                .offline(ev.user_id, &ev.gateway_id, ev.conn_id);
            let device: Arc<str> = ev.device_id.into();
            self.record_synckey(ev.user_id, &device, ev.synckey);
        }
    }
    async fn gateway_down(&self, gateway_id: &str) {
        self.presence.drop_gateway(gateway_id);
    }
}
