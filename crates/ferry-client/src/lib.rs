//! Ferry's client SDK: what an app embeds to talk to Ferry.
//!
//! [`Client::connect`] logs in (password → device token over the short link, then the
//! token on the long link), keeps the link alive with heartbeats, reconnects with
//! exponential back-off and jitter when it dies, and resumes from the device's stored
//! synckey. It connects smartly (see [`smart`]): it races the candidate endpoints,
//! prefers the last one that worked, bans those that keep failing, falls back to the
//! long link over HTTP long-poll when TCP does not pass, learns the longest heartbeat
//! interval each network allows, and reports its connect timings so the server can
//! rank endpoint lists. The app receives every inbox entry once and in order as
//! [`Event::Entry`].
//! [`Client::send_text`] retries until the server acknowledges, with one
//! `client_msg_id`, so a retry never duplicates.
//!
//! The SDK must not decide what to show the user or keep messages itself: it delivers
//! entries and keeps only the device's id, token and synckey. An app that wants a
//! ready model of its chats feeds the events to a [`ChatView`] it owns (opt-in, see
//! [`view`]): messages with their edits, reaction counts and pins, recalled and hidden
//! ones dropped.
//!
//! # Inside
//! - `connect`: from nothing to a logged-in link (sign-in, racing, login, resumption).
//! - `session`: the task that owns the link: reads, writes, routes answers, reconnects.
//! - `heartbeat`: when to beat, when the link is dead, what the smart heartbeat learns.
//! - `sync`: the sync state machine — frames in, frames to send and events out, no I/O.
//! - [`Held`]: inline entries that came ahead of the synckey (shared with `ferry bench`).
//!
//! # Events and a slow app
//! [`Client::connect`] returns a *bounded* channel ([`ClientConfig::event_capacity`],
//! 1024 by default). The SDK never blocks its link on the app and never drops an entry:
//! - An inbox or group entry counts as applied only once it is in the channel; the
//!   synckey (and a group's cursor) moves with what the app got, never past it.
//! - When the channel is full the SDK *stalls*: it stops applying, forgets the entries
//!   it could not hand over, and keeps the link alive (heartbeats, requests and their
//!   answers go on). Once the app has drained half the channel, it syncs from the
//!   synckey, which fetches exactly what was left out, in order. A slow app therefore
//!   costs a SYNC, not a lost message; an app that never drains gets nothing more, and
//!   the server keeps its entries.
//! - Typing events (never stored, best effort) are dropped when the channel is full.
//! - A few slots are kept for [`Event::Connected`], [`Event::Disconnected`] and
//!   [`Event::Stopped`], so a channel full of entries still carries link changes; only
//!   an app that stopped draining across several reconnects loses some of them
//!   ([`Client::status`] is always current, and the channel closes when the client
//!   stops).
//! - An app that drops the receiver is not waited for: entries are applied and dropped.
//!
//! # The app's lifecycle and platform push
//! A phone app is suspended in the background; its link would die anyway. The app tells
//! the SDK: [`Client::app_backgrounded`] closes the link cleanly after
//! [`ClientConfig::background_grace`] (telling the server the synckey first) and stops
//! reconnecting, so the server's platform push (APNs, FCM, Web Push, UnifiedPush) takes
//! over; [`Client::app_foregrounded`] connects at once and syncs. The device's push
//! target is registered with [`Client::register_push`] (targets built with [`push`]),
//! per-conversation settings with [`Client::set_push_prefs`] — over the long link when
//! it is up, else the short link. See docs/protocol.md, Push.
//!
//! Errors are [`ClientError`]s: an [`ErrorKind`], the error that caused it
//! (`source()`), and for a refusal the server's code, message and retry hint.

mod account;
mod connect;
mod error;
mod heartbeat;
mod held;
mod media;
pub mod push;
mod security;
mod session;
mod short;
pub mod smart;
mod state;
mod sync;
mod transport;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proto::v1;
use ferry_proto::{cmd, Frame, ProtoMessage};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

pub use account::{Account, FriendAction};
pub use error::{ClientError, ErrorKind, Refusal};
pub use held::{Held, GAP_WAIT};
pub use media::{thumbnail, Dest, MediaSend, Progress, SentMedia, UPLOAD_WINDOW};
pub use security::{fetch as fetch_server_key, Security};
pub use short::ShortLink;
pub use smart::{Endpoint, HeartbeatState, SmartConfig, Transport};
pub use state::{DeviceState, StoredTicket};
pub use view::{Change, ChatView, Conversation, ViewConv, ViewForwarded, ViewMessage};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `IP:PORT` of a gateway.
    pub server: String,
    /// More gateways (`IP:PORT`). When a link to one is lost or cannot be made, the
    /// client moves on to the next, round the list (`server` first).
    pub servers: Vec<String>,
    pub username: String,
    pub password: String,
    /// Where the device id, token and synckey are kept; `None` keeps them in memory.
    pub state_dir: Option<PathBuf>,
    /// The safe heartbeat interval a network starts with (mars: 3.5 min). The smart
    /// heartbeat stretches it up to `smart.heartbeat_max` on networks that allow it.
    pub heartbeat: Duration,
    /// How long to wait for any answer to a request.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Reconnect back-off: starts at `backoff_min`, doubles to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub client_version: String,
    /// Racing, bans, long-poll fallback, reports and the smart heartbeat.
    pub smart: SmartConfig,
    /// The network the device starts on ("wifi:home", "cell:46001" …): each network
    /// learns its own heartbeat. See [`Client::network_changed`].
    pub network: String,
    /// How the server's key is known: pinned, trusted on first use (the default), or
    /// plaintext for a development server. See [`Security`].
    pub security: Security,
    /// How many events the channel [`Client::connect`] returns holds (at least 16).
    /// When it is full the SDK stops applying entries until the app drains half of it,
    /// then syncs what it left out: nothing is lost (see "Events and a slow app" in the
    /// crate docs).
    pub event_capacity: usize,
    /// How long after [`Client::app_backgrounded`] the long link stays up (a quick app
    /// switch keeps it; then the server's push takes over). 10 s by default.
    pub background_grace: Duration,
}

impl ClientConfig {
    pub fn new(
        server: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        ClientConfig {
            server: server.into(),
            servers: Vec::new(),
            username: username.into(),
            password: password.into(),
            state_dir: None,
            heartbeat: Duration::from_secs(210),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            client_version: concat!("ferry-client/", env!("CARGO_PKG_VERSION")).into(),
            smart: SmartConfig::default(),
            network: "default".into(),
            security: Security::TrustOnFirstUse,
            event_capacity: 1024,
            background_grace: Duration::from_secs(10),
        }
    }

    /// Every gateway to try, `server` first, without repeats.
    pub fn all_servers(&self) -> Vec<String> {
        let mut all = vec![self.server.clone()];
        for s in &self.servers {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        all
    }
}

/// The app's end of the event channel (bounded: see "Events and a slow app" in the
/// crate docs).
pub type Events = mpsc::Receiver<Event>;

/// The smallest event channel: room for the link events kept back
/// ([`session::LINK_EVENTS`]) and for entries to flow between stalls.
const MIN_EVENTS: usize = 16;

/// What the client tells the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The next inbox entry, in seq order, each once.
    Entry(v1::Entry),
    /// The next entry of a group's log, in gseq order per group, each once.
    Group {
        group_id: u64,
        entry: v1::GroupEntry,
    },
    /// A peer is typing to this user (never stored; may be missed).
    Typing { from: String },
    /// Logged in on a (new) link, at `endpoint`.
    Connected { latest_seq: u64, endpoint: Endpoint },
    /// The link went down; the client is reconnecting.
    Disconnected { reason: String },
    /// The client gave up (bad credentials, or the session was ended).
    Stopped { error: ClientError },
}

/// Link status, for waiting until connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Connected,
    /// The app is in the background: the link was closed on purpose and is not
    /// re-made until [`Client::app_foregrounded`] (pushes stand in meanwhile).
    Background,
    Stopped,
}

pub(crate) enum Cmd {
    Request {
        cmd: u8,
        body: Bytes,
        reply: oneshot::Sender<Frame>,
    },
    /// The device moved to another network.
    Network(String),
    /// The app went to the background ([`Client::app_backgrounded`]).
    Background,
    /// The app came to the foreground ([`Client::app_foregrounded`]).
    Foreground,
    Close,
}

/// What the smart connection keeps while the client runs.
pub(crate) struct SmartRuntime {
    pub bans: smart::Bans,
    /// Connect attempts not yet reported, and when they ended.
    pub samples: std::collections::VecDeque<(tokio::time::Instant, v1::ConnectSample)>,
    /// The endpoint of the live link.
    pub current: Option<Endpoint>,
    pub network: String,
    /// The bootstrap servers, resolved.
    pub bootstrap: Vec<std::net::SocketAddr>,
    /// How often to refresh the endpoint list (the server says).
    pub refresh_every: Duration,
    /// When the endpoint list was last fetched (none yet: at the first login).
    pub refreshed_at: Option<tokio::time::Instant>,
    /// A refresh is on its way: a login meanwhile does not start another.
    pub refreshing: bool,
    /// The heartbeat interval in use.
    pub heartbeat: Duration,
    /// When a TCP link last worked on this network: the moment it ended, set where
    /// every link's end is handled (none since the client started or the network
    /// changed).
    pub tcp_worked_at: Option<tokio::time::Instant>,
    /// When the latest LOGIN this client sent without getting a session for it went
    /// out (see `connect::LoginInFlight`).
    pub login_unanswered_at: Option<tokio::time::Instant>,
}

impl Default for SmartRuntime {
    fn default() -> Self {
        SmartRuntime {
            bans: Default::default(),
            samples: Default::default(),
            current: None,
            network: "default".into(),
            bootstrap: Vec::new(),
            refresh_every: Duration::from_secs(600),
            refreshed_at: None,
            refreshing: false,
            heartbeat: Duration::ZERO,
            tcp_worked_at: None,
            login_unanswered_at: None,
        }
    }
}

pub(crate) struct Shared {
    pub cfg: ClientConfig,
    pub state: Mutex<DeviceState>,
    pub status: watch::Sender<Status>,
    pub username: Mutex<String>,
    pub smart: Mutex<SmartRuntime>,
}

impl Shared {
    /// The next `client_msg_id` of this device ([`DeviceState::take_msg_id`]), the
    /// state saved first when the id opens a new reserved block.
    pub(crate) fn next_client_msg_id(&self) -> u64 {
        let (id, save) = self.state.lock().take_msg_id();
        if save {
            self.save_state();
        }
        id
    }

    pub fn save_state(&self) {
        if let Some(dir) = &self.cfg.state_dir {
            let s = self.state.lock().clone();
            if let Err(e) = s.save(dir) {
                tracing::warn!(error = %e, "could not save device state");
            }
        }
    }
}

/// A connected client. Cheap to clone; the link lives until [`Client::close`] or the
/// last clone is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedSender<Cmd>,
    driver: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Client {
    /// Logs in and starts the link. Returns after the first successful login, or the
    /// error that makes logging in impossible (bad credentials). Entries and link
    /// changes arrive on the returned receiver.
    pub async fn connect(cfg: ClientConfig) -> Result<(Client, Events), ClientError> {
        let cfg = security::resolve(cfg).await?;
        let state = match &cfg.state_dir {
            Some(dir) => DeviceState::load(dir)?,
            None => DeviceState::fresh(),
        };
        let (status, _) = watch::channel(Status::Connecting);
        let smart = SmartRuntime {
            network: cfg.network.clone(),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(state),
            status,
            username: Mutex::new(String::new()),
            smart: Mutex::new(smart),
        });
        let (cmds_tx, cmds_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(shared.cfg.event_capacity.max(MIN_EVENTS));
        let (first_tx, first_rx) = oneshot::channel();
        let driver = tokio::spawn(session::drive(shared.clone(), cmds_rx, events_tx, first_tx));
        let client = Client {
            shared,
            cmds: cmds_tx,
            driver: Arc::new(Mutex::new(Some(driver))),
        };
        match first_rx.await {
            Ok(Ok(())) => Ok((client, events_rx)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::closed()),
        }
    }

    /// The short-link services (friends, avatars, moments …) for this device.
    pub fn account(&self) -> Account {
        Account::from_shared(self.shared.clone())
    }

    /// The device's current synckey.
    pub fn synckey(&self) -> u64 {
        self.shared.state.lock().synckey
    }

    pub fn device_id(&self) -> String {
        self.shared.state.lock().device_id.clone()
    }

    pub fn user_id(&self) -> u64 {
        self.shared.state.lock().user_id
    }

    pub fn username(&self) -> String {
        self.shared.username.lock().clone()
    }

    pub fn status(&self) -> Status {
        *self.shared.status.borrow()
    }

    /// The endpoint (address and transport) of the live link, if any.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.shared.smart.lock().current
    }

    /// The heartbeat interval the live link uses.
    pub fn heartbeat_interval(&self) -> Duration {
        self.shared.smart.lock().heartbeat
    }

    /// The smart heartbeat learnt for `network` (None: never connected on it).
    pub fn heartbeat_state(&self, network: &str) -> Option<HeartbeatState> {
        self.shared.state.lock().heartbeats.get(network).cloned()
    }

    /// The endpoint list last received from the server, best first.
    pub fn endpoint_list(&self) -> Vec<Endpoint> {
        let s = self.shared.state.lock();
        s.endpoints.iter().filter_map(|e| e.parse().ok()).collect()
    }

    /// Tells the client the device is on another network (Wi-Fi joined, cell lost …):
    /// the link is re-made at once, bans are forgotten, and the heartbeat continues
    /// with what was learnt for `network` before (or starts safe).
    pub fn network_changed(&self, network: impl Into<String>) {
        let _ = self.cmds.send(Cmd::Network(network.into()));
    }

    /// The app went to the background. After [`ClientConfig::background_grace`] the
    /// client tells the server what it has applied (a last heartbeat with its synckey,
    /// which the badge and the pushes count from), closes the long link cleanly and
    /// stops reconnecting: from then on the server pushes to the device's push target
    /// ([`Client::register_push`]) instead. Until the grace is over nothing changes, so
    /// a quick app switch keeps the link. Calling it again changes nothing (the first
    /// grace stands).
    ///
    /// While in the background ([`Status::Background`]) requests on the long link fail
    /// at once and [`Client::send_msg`] waits for the foreground; the short-link
    /// services ([`Client::account`], the push requests) still work.
    pub fn app_backgrounded(&self) {
        let _ = self.cmds.send(Cmd::Background);
    }

    /// The app came to the foreground: a pending background close is cancelled (the link
    /// never dropped), and a client in the background (or waiting out a reconnect
    /// back-off) connects at once, as smartly as ever, and syncs — the inbox from its
    /// synckey and every group that moved — so what arrived meanwhile (and was pushed)
    /// reaches the app as events. Calling it when in the foreground changes nothing.
    pub fn app_foregrounded(&self) {
        let _ = self.cmds.send(Cmd::Foreground);
    }

    /// Registers (or replaces) this device's push target, over the long link when it is
    /// up and the short link otherwise; answers the target as stored. See
    /// [`crate::push`] for building one, and [`Account::register_push`].
    pub async fn register_push(
        &self,
        target: v1::PushTarget,
    ) -> Result<v1::PushTarget, ClientError> {
        let req = v1::PushRegisterReq {
            target: Some(target),
        };
        let r: v1::PushListResp = self.call(cmd::PUSH_REGISTER, &req).await?;
        account::one_target(r)
    }

    /// Removes this device's push target (`None`) or another device's of this user.
    pub async fn unregister_push(&self, device: Option<&str>) -> Result<(), ClientError> {
        let req = v1::PushUnregisterReq {
            device_id: device.unwrap_or_default().into(),
        };
        let _: v1::Empty = self.call(cmd::PUSH_UNREGISTER, &req).await?;
        Ok(())
    }

    /// This user's push targets, one per device.
    pub async fn push_targets(&self) -> Result<Vec<v1::PushTarget>, ClientError> {
        let r: v1::PushListResp = self.call(cmd::PUSH_LIST, &v1::Empty {}).await?;
        Ok(r.targets)
    }

    /// Sets conversations' push settings (`PUSH_MODE_DEFAULT` removes one); answers
    /// every setting of the user.
    pub async fn set_push_prefs(
        &self,
        set: Vec<v1::ConversationPush>,
    ) -> Result<Vec<v1::ConversationPush>, ClientError> {
        let r: v1::PushPrefsResp = self
            .call(cmd::PUSH_PREFS, &v1::PushPrefsReq { set })
            .await?;
        Ok(r.conversations)
    }

    /// Every conversation push setting of the user.
    pub async fn push_prefs(&self) -> Result<Vec<v1::ConversationPush>, ClientError> {
        self.set_push_prefs(Vec::new()).await
    }

    /// A request both links serve: on the long link while it is up; on the short link
    /// when it is not (in the background, reconnecting) or was lost before answering.
    /// Only for requests that may be sent twice (the push requests set state).
    async fn call<Req: ProtoMessage, Resp: ProtoMessage + Default>(
        &self,
        c: u8,
        req: &Req,
    ) -> Result<Resp, ClientError> {
        if self.status() == Status::Connected {
            match self.request(c, Bytes::from(req.encode_to_vec())).await {
                Ok(f) => {
                    return Resp::decode(f.body).map_err(|e| ClientError::protocol_source("", e))
                }
                Err(e) if matches!(e.kind(), ErrorKind::Io | ErrorKind::Closed) => {
                    tracing::debug!(error = %e, "long link gone; asking over the short link");
                }
                Err(e) => return Err(e),
            }
        }
        self.account().call(short::path(c), req).await
    }

    /// Waits until the link is logged in (or the client stopped). In the background it
    /// waits for [`Client::app_foregrounded`].
    pub async fn wait_connected(&self) -> Result<(), ClientError> {
        let mut rx = self.shared.status.subscribe();
        loop {
            match *rx.borrow_and_update() {
                Status::Connected => return Ok(()),
                Status::Stopped => return Err(ClientError::closed()),
                Status::Connecting | Status::Background => {}
            }
            rx.changed().await.map_err(|_| ClientError::closed())?;
        }
    }

    /// Sends one request on the current link and waits for its answer.
    pub async fn request(&self, c: u8, body: Bytes) -> Result<Frame, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Request {
                cmd: c,
                body,
                reply: tx,
            })
            .map_err(|_| ClientError::closed())?;
        match tokio::time::timeout(self.shared.cfg.request_timeout, rx).await {
            Err(_) => Err(ClientError::timeout()),
            Ok(Err(_)) => Err(ClientError::io("link lost before the answer")),
            Ok(Ok(f)) if f.cmd == cmd::ERROR => Err(ClientError::from_error(
                v1::Error::decode(f.body).map_err(|e| ClientError::protocol_source("", e))?,
            )),
            Ok(Ok(f)) => Ok(f),
        }
    }

    /// Sends a text message, retrying (on this link or the next) until the server
    /// acknowledges it as durable. A refusal (unknown user, too large) is returned.
    pub async fn send_text(&self, to: &str, text: &str) -> Result<v1::SendAck, ClientError> {
        let msg = v1::SendMsg {
            client_msg_id: self.shared.next_client_msg_id(),
            to: to.into(),
            text: text.into(),
            r#type: v1::MsgType::Text as i32,
            ..Default::default()
        };
        self.send_msg(&msg).await
    }

    /// Sends a text to a group (with @mentions), retrying until acknowledged. The ack's
    /// `seq` is the message's gseq in the group's log.
    pub async fn send_group(
        &self,
        group_id: u64,
        text: &str,
        mentions: &[&str],
    ) -> Result<v1::SendAck, ClientError> {
        let msg = v1::SendMsg {
            client_msg_id: self.shared.next_client_msg_id(),
            group_id,
            text: text.into(),
            mentions: mentions.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        };
        self.send_msg(&msg).await
    }

    /// Recalls a message (within the recall window; admins may recall any group message).
    pub async fn recall(&self, msg_id: u64) -> Result<(), ClientError> {
        self.request(
            cmd::RECALL,
            Bytes::from(v1::RecallReq { msg_id }.encode_to_vec()),
        )
        .await
        .map(|_| ())
    }

    /// Replies to message `reply_to` with a text, in the conversation that message is in
    /// (the 1:1 chat or the group), retrying until acknowledged. The stored reply quotes
    /// it ([`v1::Message::quote`]).
    pub async fn reply(&self, reply_to: u64, text: &str) -> Result<v1::SendAck, ClientError> {
        let msg = v1::SendMsg {
            client_msg_id: self.shared.next_client_msg_id(),
            reply_to,
            text: text.into(),
            ..Default::default()
        };
        self.send_msg(&msg).await
    }

    /// Replaces the text (a media message's caption) of a message this user sent, within
    /// the server's edit window. Both parties' devices (or the group's) get an
    /// [`v1::Edit`] entry. Safe to retry.
    pub async fn edit(&self, msg_id: u64, text: &str) -> Result<(), ClientError> {
        let req = v1::EditReq {
            msg_id,
            text: text.into(),
        };
        self.call::<_, v1::Empty>(cmd::EDIT, &req).await.map(|_| ())
    }

    /// Adds a reaction (an emoji) to a message. Safe to retry.
    pub async fn react(&self, msg_id: u64, emoji: &str) -> Result<(), ClientError> {
        self.set_reaction(msg_id, emoji, true).await
    }

    /// Takes a reaction back. Safe to retry.
    pub async fn unreact(&self, msg_id: u64, emoji: &str) -> Result<(), ClientError> {
        self.set_reaction(msg_id, emoji, false).await
    }

    async fn set_reaction(&self, msg_id: u64, emoji: &str, add: bool) -> Result<(), ClientError> {
        let req = v1::ReactReq {
            msg_id,
            emoji: emoji.into(),
            add,
        };
        self.call::<_, v1::Empty>(cmd::REACT, &req)
            .await
            .map(|_| ())
    }

    /// The reactions on a message: per-emoji counts (and whether this user holds each);
    /// with `emoji`, also who reacted with it, `limit` at a time from the cursor `after`
    /// (0 first, then the answer's `next_after`).
    pub async fn reactions(
        &self,
        msg_id: u64,
        emoji: Option<&str>,
        after: u64,
        limit: u32,
    ) -> Result<v1::ReactionsResp, ClientError> {
        let req = v1::ReactionsReq {
            msg_id,
            emoji: emoji.unwrap_or_default().into(),
            after,
            limit,
        };
        self.call(cmd::REACTIONS, &req).await
    }

    /// Deletes messages for this user only (every device of theirs drops them; the
    /// others keep them). At most 100 at once. Safe to retry.
    pub async fn hide(&self, msg_ids: &[u64]) -> Result<(), ClientError> {
        let req = v1::HideReq {
            msg_ids: msg_ids.to_vec(),
        };
        self.call::<_, v1::Empty>(cmd::HIDE, &req).await.map(|_| ())
    }

    /// Pins a message of a conversation (in a group: owner and admins only).
    pub async fn pin(&self, conv: &Conversation, msg_id: u64) -> Result<(), ClientError> {
        self.set_pin(conv, msg_id, true).await
    }

    /// Unpins a message.
    pub async fn unpin(&self, conv: &Conversation, msg_id: u64) -> Result<(), ClientError> {
        self.set_pin(conv, msg_id, false).await
    }

    async fn set_pin(
        &self,
        conv: &Conversation,
        msg_id: u64,
        pin: bool,
    ) -> Result<(), ClientError> {
        let (peer, group_id) = conv.parts();
        let req = v1::PinReq {
            peer,
            group_id,
            msg_id,
            pin,
        };
        self.call::<_, v1::Empty>(cmd::PIN, &req).await.map(|_| ())
    }

    /// Forwards a message this user may read into `to` (a peer or a group): the server
    /// copies its text and media (no re-upload), and the new message carries
    /// `forwarded` (the original's author and time).
    pub async fn forward(
        &self,
        to: &Conversation,
        msg_id: u64,
    ) -> Result<v1::SendAck, ClientError> {
        let (peer, group_id) = to.parts();
        let msg = v1::SendMsg {
            client_msg_id: self.shared.next_client_msg_id(),
            to: peer,
            group_id,
            forward_of: msg_id,
            ..Default::default()
        };
        self.send_msg(&msg).await
    }

    /// Changes conversations' states (only the fields set in each [`v1::ConvSet`]) and
    /// answers every conversation state of the user. Each change reaches this user's
    /// other devices as an `Entry.conv` (apply them with a [`ChatView`]).
    pub async fn conv_set(&self, set: Vec<v1::ConvSet>) -> Result<Vec<v1::ConvState>, ClientError> {
        let r: v1::ConvResp = self.call(cmd::CONV, &v1::ConvReq { set }).await?;
        Ok(r.conversations)
    }

    /// Every conversation state of the user (archived, unread, muted, draft, cleared,
    /// retention).
    pub async fn conversations(&self) -> Result<Vec<v1::ConvState>, ClientError> {
        self.conv_set(Vec::new()).await
    }

    async fn conv_one(
        &self,
        conv: &Conversation,
        f: impl FnOnce(&mut v1::ConvSet),
    ) -> Result<v1::ConvState, ClientError> {
        let (peer, group_id) = conv.parts();
        let mut set = v1::ConvSet {
            peer: peer.clone(),
            group_id,
            ..Default::default()
        };
        f(&mut set);
        let all = self.conv_set(vec![set]).await?;
        Ok(all
            .into_iter()
            .find(|c| c.peer == peer && c.group_id == group_id)
            .unwrap_or(v1::ConvState {
                peer,
                group_id,
                ..Default::default()
            }))
    }

    /// Archives (or unarchives) a conversation on every device of this user.
    pub async fn archive(
        &self,
        conv: &Conversation,
        archived: bool,
    ) -> Result<v1::ConvState, ClientError> {
        self.conv_one(conv, |s| s.archived = Some(archived)).await
    }

    /// Mutes a conversation until `until_ms` (unix ms; -1: until unmuted; 0 unmutes).
    /// The same setting as the push settings' `PUSH_MODE_MUTED`.
    pub async fn mute(
        &self,
        conv: &Conversation,
        until_ms: i64,
    ) -> Result<v1::ConvState, ClientError> {
        self.conv_one(conv, |s| s.muted_until_ms = Some(until_ms))
            .await
    }

    /// Marks a conversation unread (or clears the mark; reading it clears it too).
    pub async fn mark_unread(
        &self,
        conv: &Conversation,
        unread: bool,
    ) -> Result<v1::ConvState, ClientError> {
        self.conv_one(conv, |s| s.unread = Some(unread)).await
    }

    /// Keeps the composer's unsent text of a conversation on every device ("" removes
    /// it; at most 4 000 characters; the latest write wins).
    pub async fn set_draft(
        &self,
        conv: &Conversation,
        draft: &str,
    ) -> Result<v1::ConvState, ClientError> {
        let draft = draft.to_owned();
        self.conv_one(conv, move |s| s.draft = Some(draft)).await
    }

    /// Clears a conversation's history for this user (every message up to now, on every
    /// device of theirs; nobody else's).
    pub async fn clear_history(&self, conv: &Conversation) -> Result<v1::ConvState, ClientError> {
        self.conv_one(conv, |s| s.clear = true).await
    }

    /// Sets a conversation's own retention for everyone in it, in seconds (0 removes it;
    /// at least 60). In a group: owner and admins only.
    pub async fn set_retention(
        &self,
        conv: &Conversation,
        secs: u32,
    ) -> Result<v1::ConvState, ClientError> {
        self.conv_one(conv, |s| s.retention_secs = Some(secs)).await
    }

    /// A conversation's pinned messages, newest first.
    pub async fn pins(&self, conv: &Conversation) -> Result<Vec<v1::PinnedMessage>, ClientError> {
        let (peer, group_id) = conv.parts();
        let resp: v1::PinsResp = self
            .call(cmd::PINS, &v1::PinsReq { peer, group_id })
            .await?;
        Ok(resp.pins)
    }

    /// Reports that this user read up to `msg_id` from `peer` (1:1) or up to `gseq` in a group.
    pub async fn read(&self, receipt: v1::ReadReq) -> Result<(), ClientError> {
        self.request(cmd::READ, Bytes::from(receipt.encode_to_vec()))
            .await
            .map(|_| ())
    }

    /// Tells `to` that this user is typing (best effort, never stored).
    pub async fn typing(&self, to: &str) -> Result<(), ClientError> {
        self.request(
            cmd::TYPING,
            Bytes::from(v1::Typing { to: to.into() }.encode_to_vec()),
        )
        .await
        .map(|_| ())
    }

    /// This device's cursor in a group's log.
    pub fn group_cursor(&self, group_id: u64) -> u64 {
        self.shared
            .state
            .lock()
            .group_cursors
            .get(&group_id)
            .copied()
            .unwrap_or(0)
    }

    /// Sends a prepared `SendMsg` until acknowledged. Use the same `client_msg_id` to
    /// retry a send across restarts of the app.
    pub async fn send_msg(&self, msg: &v1::SendMsg) -> Result<v1::SendAck, ClientError> {
        let body = Bytes::from(msg.encode_to_vec());
        let mut pause = Duration::from_millis(50);
        loop {
            match self.request(cmd::SEND, body.clone()).await {
                Ok(f) => {
                    return v1::SendAck::decode(f.body)
                        .map_err(|e| ClientError::protocol_source("", e))
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "send not acknowledged; retrying");
                    if let Some(wait) = e.retry_after() {
                        pause = pause.max(wait);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    self.wait_connected().await?;
                }
            }
        }
    }

    /// Closes the link and saves the device state.
    pub async fn close(&self) {
        let _ = self.cmds.send(Cmd::Close);
        let handle = self.driver.lock().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.shared.save_state();
    }
}

/// `client_msg_id`s stay below 2^48, so each is at most a 7-byte varint (the "hello"
/// of docs/protocol.md §1.6 is 40 bytes with one).
pub const MAX_CLIENT_MSG_ID: u64 = 1 << 48;

/// A one-off `client_msg_id`, for a program without a device's counter (a test, a
/// bench): random below [`MAX_CLIENT_MSG_ID`], non-zero. A [`Client`]'s sends use its
/// device's counter instead (no two of its ids collide).
pub fn new_client_msg_id() -> u64 {
    rand::random_range(1..MAX_CLIENT_MSG_ID)
}
