//! The router: [`Logic`] admits a request ([`Admission`]), hands it to the domain
//! service that owns its command (one dispatch table), and turns the outcome into a bus
//! response; link events go to the notifier. It holds no business rules — those live in
//! the services it wires together in [`Logic::new`] — and it runs the background tasks
//! (retention, the media sweep) until [`Logic::shutdown`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_bus::{Bus, BusRequest, BusResponse, Handler, LinkEvent};
use ferry_proto::bus::Answer;
use ferry_proto::{cmd, v1, ProtoMessage};
use ferry_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accounts::Accounts;
use crate::admin_ops::Ops;
use crate::admin_users::AdminUsers;
use crate::admission::{Admission, Class};
use crate::api::Api;
use crate::attach::Attachments;
use crate::bots::Bots;
use crate::config::LogicConfig;
use crate::conv::Conv;
use crate::core::{unix_ms, Core};
use crate::endpoints::Endpoints;
use crate::error::LogicError;
use crate::friends::Friends;
use crate::groups::Groups;
use crate::inbox::Inbox;
use crate::media::Media;
use crate::moments::Moments;
use crate::msgops::MsgOps;
use crate::notify::Notifier;
use crate::profile::Profile;
use crate::push::{PushService, PushStats};
use crate::webhooks::Webhooks;

/// The logic service. Serve it on a bus with [`Logic::start`].
pub struct Logic {
    /// Priority admission (`cfg.admission`): sheds new sessions before connected users.
    pub admission: Admission,
    core: Arc<Core>,
    notifier: Arc<Notifier>,
    bus: Arc<dyn Bus>,
    accounts: Accounts,
    inbox: Arc<Inbox>,
    friends: Arc<Friends>,
    moments: Arc<Moments>,
    profile: Profile,
    groups: Arc<Groups>,
    /// Edits, reactions, hides and pins.
    msgops: MsgOps,
    /// Per-conversation state: archive, unread, mute, draft, clear, retention.
    conv: Conv,
    media: Media,
    endpoints: Endpoints,
    push: Arc<PushService>,
    webhooks: Arc<Webhooks>,
    /// The JSON APIs for other systems (admin, bots).
    api: Api,
    /// Message search, once [`Logic::enable_search`] opened the index.
    search: crate::search::SearchSlot,
    /// Stops the background tasks; fired by [`Logic::shutdown`] or when `Logic` is
    /// dropped.
    shutdown: CancellationToken,
    /// `ferry_request_duration_seconds` of each command, registered at its first request
    /// (by command byte): looking it up by name and label at every request was a share of
    /// the server's CPU per message (see `notify::Meters`).
    durations: Box<[std::sync::OnceLock<metrics::Histogram>; 256]>,
}

impl Logic {
    pub fn new(cfg: LogicConfig, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Arc<Self> {
        let admission = Admission::new(cfg.admission.clone());
        let notifier = Arc::new(Notifier::new(
            bus.clone(),
            store.clone(),
            cfg.inline_notify_bytes,
        ));
        let core = Arc::new(Core::new(cfg, store));
        notifier.set_hooks(core.hooks.clone());
        let webhooks = Arc::new(Webhooks::new(core.clone()));
        let push = Arc::new(PushService::new(core.clone(), notifier.clone()));
        let friends = Arc::new(Friends::new(core.clone(), notifier.clone(), push.clone()));
        let attach = Arc::new(Attachments::new(core.clone()));
        let moments = Arc::new(Moments::new(
            core.clone(),
            notifier.clone(),
            friends.clone(),
            attach.clone(),
        ));
        let groups = Arc::new(Groups::new(
            core.clone(),
            notifier.clone(),
            friends.clone(),
            attach.clone(),
            push.clone(),
        ));
        let inbox = Arc::new(Inbox::new(
            core.clone(),
            notifier.clone(),
            friends.clone(),
            attach.clone(),
            groups.clone(),
            push.clone(),
        ));
        let search = crate::search::SearchSlot::default();
        Arc::new(Logic {
            admission,
            accounts: Accounts::new(core.clone(), notifier.clone(), push.clone()),
            api: Api::new(
                core.clone(),
                Ops::new(core.clone(), notifier.clone(), groups.clone(), push.clone()),
                AdminUsers::new(core.clone(), notifier.clone(), push.clone(), groups.clone()),
                webhooks.clone(),
                Bots::new(
                    core.clone(),
                    notifier.clone(),
                    inbox.clone(),
                    webhooks.clone(),
                    groups.clone(),
                ),
                search.clone(),
            ),
            search,
            inbox,
            msgops: MsgOps::new(core.clone(), notifier.clone(), groups.clone()),
            conv: Conv::new(core.clone(), notifier.clone(), groups.clone(), push.clone()),
            profile: Profile::new(core.clone()),
            media: Media::new(core.clone(), attach, moments.clone()),
            endpoints: Endpoints::new(core.clone(), notifier.clone()),
            webhooks,
            push,
            friends,
            moments,
            groups,
            core,
            notifier,
            bus,
            shutdown: CancellationToken::new(),
            durations: Box::new(std::array::from_fn(|_| std::sync::OnceLock::new())),
        })
    }

    /// Gives this node its media store (once; later calls are ignored). Without one,
    /// media requests answer UNAVAILABLE.
    pub fn set_media_store(&self, media: Arc<dyn ferry_store::MediaStore>) {
        self.core.set_media_store(media);
    }

    /// The media store, when set.
    pub fn media_store(&self) -> Option<&Arc<dyn ferry_store::MediaStore>> {
        self.core.media_store()
    }

    /// Gives this node its push senders, one per provider it pushes through (once;
    /// later calls are ignored). Without any, push registrations are refused.
    pub fn set_push_senders(&self, senders: impl IntoIterator<Item = Arc<dyn ferry_push::Sender>>) {
        self.push.set_senders(senders);
    }

    /// Opens this node's search index in `dir` (`None`: in memory) and, once started,
    /// keeps it following the store (once; later calls are ignored). Without it, SEARCH
    /// answers UNAVAILABLE.
    pub async fn enable_search(&self, dir: Option<&std::path::Path>) -> Result<(), LogicError> {
        if self.search.get().is_none() {
            let _ = self
                .search
                .set(crate::search::Search::open(self.core.clone(), dir).await?);
        }
        Ok(())
    }

    /// What the dashboard shows of push on this node.
    pub fn push_stats(&self) -> PushStats {
        self.push.stats()
    }

    /// The memory of this node's index of push targets, estimated in bytes (`ferry
    /// bench` divides it by the targets registered).
    pub fn push_index_bytes(&self) -> usize {
        self.push.index_bytes()
    }

    /// Serves requests on the bus and starts the background tasks (retention, the
    /// media sweep, push), which run until [`Logic::shutdown`].
    pub fn start(self: &Arc<Self>) {
        self.bus.serve_logic(self.clone());
        self.push.start(self.shutdown.clone());
        self.webhooks.start(self.shutdown.clone());
        self.media.start_sweep(self.shutdown.clone());
        if let Some(s) = self.search.get() {
            s.start(self.shutdown.clone());
        }
        spawn_retention(self.core.clone(), self.shutdown.clone());
    }

    /// Stops the background tasks. Requests are still answered: the bus decides when
    /// they stop coming.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        if let Some(s) = self.search.get() {
            s.close();
        }
    }

    pub fn config(&self) -> &LogicConfig {
        &self.core.cfg
    }

    /// One pass of the retention of conversations with their own (what the hourly
    /// task runs), as if the time were `now_ms`: for tests, which cannot wait an hour
    /// or a day, and for operators. Returns how many messages went.
    pub async fn prune_conversations(&self, now_ms: i64) -> Result<u64, LogicError> {
        crate::conv::prune_conversations(&self.core, now_ms).await
    }

    /// Users with at least one live link.
    pub fn users_online(&self) -> usize {
        self.notifier.users_online()
    }

    async fn search_call(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        match self.search.get() {
            Some(s) => s.search(req).await,
            None => Err(LogicError::Unavailable(
                "search is off on this logic node".into(),
            )),
        }
    }

    /// push/prefs, and the mutes it changed logged as conversation state (the mute is
    /// one setting, seen through both push/prefs and CONV).
    async fn push_prefs(&self, req: &BusRequest) -> Result<BusResponse, LogicError> {
        let me = self.core.caller(req).await?;
        let r = v1::PushPrefsReq::decode(req.body.clone())?;
        let before = if r.set.len() <= crate::push::MAX_PREFS {
            self.conv.mutes_before(me.user_id, &r.set).await?
        } else {
            Vec::new()
        };
        let answer = self.push.prefs(req).await?;
        if let Err(e) = self.conv.mutes_changed(me.user_id, before).await {
            tracing::warn!(error = %e, "logging a mute set through push/prefs failed");
        }
        Ok(answer)
    }

    /// The handler of a request, boxed at its own size: as one `async fn` the dispatch
    /// was a 4 KB future (the largest arm's) that every request built and moved
    /// (`memmove` led the workers' profile of a 1:1 run; median of 3 interleaved
    /// `ferry bench p2p --window 8` runs: 37 873 → 39 958 messages/s).
    fn dispatch<'a>(&'a self, req: &'a BusRequest) -> Handling<'a> {
        let c = req.cmd;
        match u8::try_from(c).unwrap_or(0) {
            cmd::REGISTER => Box::pin(self.accounts.register(req)),
            cmd::AUTH => Box::pin(self.accounts.auth(req)),
            cmd::AUTH_REFRESH => Box::pin(self.accounts.auth_refresh(req)),
            cmd::PASSWORD_CHANGE => Box::pin(self.accounts.password_change(req)),
            cmd::LOGIN => Box::pin(self.accounts.login(req)),
            cmd::SEND => Box::pin(self.inbox.send(req)),
            cmd::SYNC => Box::pin(self.inbox.sync(req)),
            cmd::LOGOUT => Box::pin(self.accounts.logout(req)),
            cmd::FIND_USER => Box::pin(self.accounts.find_user(req)),
            cmd::FRIEND_REQUEST
            | cmd::FRIEND_ACCEPT
            | cmd::FRIEND_DECLINE
            | cmd::FRIEND_REMOVE
            | cmd::FRIEND_BLOCK
            | cmd::FRIEND_UNBLOCK => Box::pin(self.friends.action(req)),
            cmd::FRIEND_LIST => Box::pin(self.friends.list(req)),
            cmd::AVATAR_SET => Box::pin(self.profile.avatar_set(req)),
            cmd::AVATAR_GET => Box::pin(self.profile.avatar_get(req)),
            cmd::REPORT => Box::pin(self.profile.report(req)),
            cmd::MOMENT_POST => Box::pin(self.moments.post(req)),
            cmd::MOMENT_TIMELINE => Box::pin(self.moments.timeline(req)),
            cmd::MOMENT_LIKE => Box::pin(self.moments.like(req)),
            cmd::MOMENT_COMMENT => Box::pin(self.moments.comment(req)),
            cmd::MOMENT_DELETE => Box::pin(self.moments.delete(req)),
            cmd::GROUP_CREATE => Box::pin(self.groups.create(req)),
            cmd::GROUP_ADD | cmd::GROUP_REMOVE => Box::pin(self.groups.members_change(req)),
            cmd::GROUP_LEAVE => Box::pin(self.groups.leave(req)),
            cmd::GROUP_INFO => Box::pin(self.groups.info(req)),
            cmd::GROUP_LIST => Box::pin(self.groups.list(req)),
            cmd::GROUP_UPDATE => Box::pin(self.groups.update(req)),
            cmd::GROUP_ROLE => Box::pin(self.groups.role(req)),
            cmd::GROUP_READS => Box::pin(self.groups.reads(req)),
            cmd::GROUP_SYNC => Box::pin(self.groups.sync(req)),
            cmd::RECALL => Box::pin(self.inbox.recall(req)),
            cmd::SEARCH => Box::pin(self.search_call(req)),
            cmd::EDIT => Box::pin(self.msgops.edit(req)),
            cmd::REACT => Box::pin(self.msgops.react(req)),
            cmd::REACTIONS => Box::pin(self.msgops.reactions(req)),
            cmd::HIDE => Box::pin(self.msgops.hide(req)),
            cmd::PIN => Box::pin(self.msgops.pin(req)),
            cmd::PINS => Box::pin(self.msgops.pins(req)),
            cmd::MEDIA_CREATE => Box::pin(self.media.create(req)),
            cmd::MEDIA_CHUNK => Box::pin(self.media.chunk(req)),
            cmd::MEDIA_STATUS => Box::pin(self.media.status(req)),
            cmd::MEDIA_FINISH => Box::pin(self.media.finish(req)),
            cmd::MEDIA_GET => Box::pin(self.media.get(req)),
            cmd::READ => Box::pin(async move {
                let answer = self.inbox.read(req).await?;
                // Reading a conversation clears its mark-unread.
                self.conv.read(req).await;
                Ok(answer)
            }),
            cmd::ENDPOINTS => Box::pin(std::future::ready(self.endpoints.list(req))),
            cmd::ENDPOINT_REPORT => Box::pin(self.endpoints.report(req)),
            cmd::TYPING => Box::pin(self.inbox.typing(req)),
            cmd::PUSH_REGISTER => Box::pin(self.push.register(req)),
            cmd::PUSH_UNREGISTER => Box::pin(self.push.unregister(req)),
            cmd::PUSH_LIST => Box::pin(self.push.list(req)),
            cmd::PUSH_PREFS => Box::pin(self.push_prefs(req)),
            cmd::CONV => Box::pin(self.conv.conv(req)),
            _ => Box::pin(std::future::ready(Err(LogicError::UnknownCommand(c)))),
        }
    }
}

impl Drop for Logic {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Deletes inbox entries and client log reports past their retention, and the messages
/// of conversations past their own retention (conv.rs), every hour, until `shutdown`
/// fires. Runs with the server-wide retentions off too: a conversation's own applies
/// whatever the server's.
fn spawn_retention(core: Arc<Core>, shutdown: CancellationToken) -> JoinHandle<()> {
    let (inbox_days, report_days) = (core.cfg.retention_days, core.cfg.report_retention_days);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if inbox_days > 0 {
                let cutoff = unix_ms() - i64::from(inbox_days) * 86_400_000;
                match core.store.prune(cutoff).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(entries = n, "pruned old inbox entries")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "prune failed"),
                }
            }
            match crate::conv::prune_conversations(&core, unix_ms()).await {
                Ok(n) if n > 0 => {
                    tracing::info!(
                        messages = n,
                        "pruned messages past their conversation's retention"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning conversations failed"),
            }
            if report_days > 0 {
                let cutoff = unix_ms() - i64::from(report_days) * 86_400_000;
                if let Err(e) = core.store.prune_reports(cutoff).await {
                    tracing::warn!(error = %e, "pruning reports failed");
                }
            }
        }
    })
}

/// A refusal as a bus answer, counted and logged.
fn error_response(c: u32, e: LogicError) -> BusResponse {
    let name = cmd::name(c as u8);
    metrics::counter!("ferry_errors_total", "cmd" => name, "code" => e.code().as_str_name())
        .increment(1);
    match e.code() {
        // Media still uploading is an expected wait, not a failure.
        v1::ErrorCode::Internal | v1::ErrorCode::Unavailable
            if !matches!(e, LogicError::NotReady(..) | LogicError::Overloaded(_)) =>
        {
            tracing::error!(cmd = name, error = %e, "request failed")
        }
        _ => {
            tracing::debug!(cmd = name, error = %e, "request refused")
        }
    }
    BusResponse {
        cmd: u32::from(cmd::ERROR),
        body: Bytes::from(e.to_body().encode_to_vec()),
        ..Default::default()
    }
}

/// When the gateway that sent `req` stops waiting for its answer, on this node's clock.
fn deadline(req: &BusRequest) -> Option<tokio::time::Instant> {
    ferry_bus::deadline_left_ms(req)
        .map(|left| tokio::time::Instant::now() + Duration::from_millis(left))
}

/// A request being handled.
type Handling<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<BusResponse, LogicError>> + Send + 'a>,
>;

#[async_trait]
impl Handler for Logic {
    async fn handle(&self, req: BusRequest) -> BusResponse {
        let started = std::time::Instant::now();
        let admitted = self.admission.admit(Class::of(&req), deadline(&req)).await;
        let resp = match admitted {
            // Its gateway stopped waiting while it queued here: that gateway answered
            // UNAVAILABLE (or sent an idempotent request elsewhere), and its client
            // moved on. Applied now it would surprise — a LOGIN would take the device's
            // session from the link its client made since, and kick that link.
            Ok(_slot) if ferry_bus::deadline_left_ms(&req) == Some(0) => {
                metrics::counter!("ferry_bus_stale_requests_total").increment(1);
                error_response(
                    req.cmd,
                    LogicError::Unavailable("the request waited past its deadline".into()),
                )
            }
            Ok(_slot) if !req.batch.is_empty() => {
                // A link's send lane: applied in order, one answer each.
                if req.cmd != u32::from(cmd::SEND) {
                    error_response(
                        req.cmd,
                        LogicError::BadRequest("only SEND is sent in batches".into()),
                    )
                } else {
                    // Boxed, as the API's handler below: a branch's future is otherwise
                    // part of every request's, which async_trait boxes whole — 6.7 KB
                    // copied for each request, 1.4 KB with these two boxed; a send
                    // batch still copies its own 4.6 KB into this box
                    // (docs/benchmarks.md, *ring for the records*).
                    let answers = Box::pin(self.inbox.send_batch(&req)).await;
                    BusResponse {
                        cmd: u32::from(cmd::response(cmd::SEND)),
                        batch: answers
                            .into_iter()
                            .map(|a| {
                                let r = a.unwrap_or_else(|e| error_response(req.cmd, e));
                                Answer {
                                    cmd: r.cmd,
                                    body: r.body,
                                }
                            })
                            .collect(),
                        ..Default::default()
                    }
                }
            }
            // An API call may hold (a bot's long-poll): it gets its permit, to give back
            // while it waits.
            Ok(slot) if req.cmd == u32::from(cmd::API) => {
                match Box::pin(self.api.handle(&req, slot)).await {
                    Ok(resp) => resp,
                    Err(e) => error_response(req.cmd, e),
                }
            }
            Ok(_slot) => match self.dispatch(&req).await {
                Ok(resp) => resp,
                Err(e) => error_response(req.cmd, e),
            },
            Err(ms) => error_response(req.cmd, LogicError::Overloaded(ms)),
        };
        let byte = req.cmd as u8;
        self.durations[usize::from(byte)]
            .get_or_init(
                || metrics::histogram!("ferry_request_duration_seconds", "cmd" => cmd::name(byte)),
            )
            .record(started.elapsed().as_secs_f64());
        resp
    }

    async fn link_event(&self, ev: LinkEvent) {
        let was_online = self.notifier.user_online(ev.user_id);
        if ev.online {
            self.notifier
                .link_up(ev.user_id, &ev.gateway_id, ev.conn_id, &ev.device_id)
                .await;
        } else {
            self.notifier
                .link_down(ev.user_id, &ev.gateway_id, ev.conn_id);
            let device: Arc<str> = ev.device_id.clone().into();
            self.core.record_synckey(ev.user_id, &device, ev.synckey);
        }
        let online = self.notifier.user_online(ev.user_id);
        if online != was_online {
            crate::webhooks::presence_event(
                &self.core,
                ev.user_id,
                online,
                &ev.gateway_id,
                ev.conn_id,
            )
            .await;
        }
    }

    async fn gateway_down(&self, gateway_id: &str) {
        self.notifier.gateway_down(gateway_id);
    }

    fn overloaded(&self) -> bool {
        self.admission.saturated()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::World;

    /// A request still queued for admission when its gateway's bus deadline passed is
    /// refused, not applied: its gateway answered its client already, and a late
    /// REGISTER or LOGIN would act behind that client's back. One within its deadline
    /// is applied.
    #[tokio::test]
    async fn a_request_past_its_deadline_is_refused_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            ferry_store::SqliteStore::open(dir.path(), ferry_store::Durability::Os).unwrap(),
        );
        let logic = Logic::new(LogicConfig::default(), store, ferry_bus::InProcBus::new());
        let register = |name: &str, deadline_ms: i64| BusRequest {
            cmd: u32::from(cmd::REGISTER),
            body: Bytes::from(
                v1::RegisterReq {
                    username: name.into(),
                    password: "long enough".into(),
                }
                .encode_to_vec(),
            ),
            peer: "127.0.0.1:1".into(),
            deadline_ms: deadline_ms as u64,
            ..Default::default()
        };
        let late = logic.handle(register("late", unix_ms() - 1)).await;
        assert_eq!(late.cmd, u32::from(cmd::ERROR));
        let e = v1::Error::decode(late.body).unwrap();
        assert_eq!(e.code, v1::ErrorCode::Unavailable as i32, "{e:?}");
        assert!(
            logic.core.user_id("late").await.is_err(),
            "the late registration was not applied"
        );

        let on_time = logic.handle(register("on_time", unix_ms() + 5_000)).await;
        assert_eq!(on_time.cmd, u32::from(cmd::response(cmd::REGISTER)));
        assert!(logic.core.user_id("on_time").await.is_ok());
        // No deadline (the in-process bus): applied.
        let local = logic.handle(register("local", 0)).await;
        assert_eq!(local.cmd, u32::from(cmd::response(cmd::REGISTER)));
    }

    #[tokio::test]
    async fn retention_runs_until_shutdown_fires() {
        let w = World::new(LogicConfig::default());
        let shutdown = CancellationToken::new();
        let task = spawn_retention(w.core.clone(), shutdown.clone());
        // The first round runs at once, the next in an hour.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "it waits for the next round");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("retention stops when told")
            .unwrap();
        // The server's retentions off: it still runs, for conversations' own.
        let off = World::new(LogicConfig {
            retention_days: 0,
            report_retention_days: 0,
            ..Default::default()
        });
        let shutdown = CancellationToken::new();
        let task = spawn_retention(off.core.clone(), shutdown.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("retention stops when told")
            .unwrap();
    }
}
