//! Ferry's SDK for Kotlin (Android), Swift (iOS) and Python: a UniFFI facade over
//! `ferry-client`, built as a C-ABI library (`libferry_ffi`) that the generated bindings
//! load (sdk/gen-bindings.sh writes them; docs/sdk.md says how to build for a phone).
//!
//! It is for turning ferry-client's Rust API into one a foreign language can call:
//! records and enums instead of protobuf types, typed exceptions ([`FerryError`], with
//! the server's code) instead of `ClientError`, and a callback or an awaited
//! `next_event` instead of a channel. It must not be a second client: racing, the
//! heartbeat, reconnects, resumption, the sync model and media all stay in ferry-client,
//! and nothing here decides what to show the user or keeps messages.
//!
//! # Threading
//! The library owns its tokio runtime (two worker threads, made at the first call).
//! Every `async` function runs on it: the foreign caller's coroutine (Kotlin, Swift
//! `async`, Python asyncio) only awaits the result, so no call blocks the caller's
//! thread. The synchronous functions (`network_changed`, `app_backgrounded`, getters)
//! only post a command or read a value. Events go to the app either through
//! `Client.next_event` (awaited) or through an [`EventListener`] the app sets, which is
//! called on one thread of its own (`ferry-events`), in order; a listener that blocks
//! holds back events but never the link. Upload and download progress is reported on the
//! runtime's threads: a [`ProgressListener`] must return quickly.
//!
//! # Unsafe code
//! The crate allows `unsafe_code` only because UniFFI's generated scaffolding (the
//! `extern "C"` functions) is unsafe by nature; the code written here has none.

mod error;
mod types;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_client::{ClientConfig, Security, ShortLink};
use tokio::sync::Mutex as AsyncMutex;

pub use error::{ErrorCode, FerryError};
pub use types::*;

uniffi::setup_scaffolding!("ferry");

/// The library's runtime, owned here until [`shutdown`] takes it.
static RUNTIME: parking_lot::Mutex<Option<tokio::runtime::Runtime>> = parking_lot::Mutex::new(None);

/// A handle to the library's runtime: every async call runs there, never on the caller's
/// executor. Made at the first call; after [`shutdown`] a handle still spawns, but its
/// tasks are cancelled at once (the call fails with `Internal`), so nothing panics.
fn runtime() -> &'static tokio::runtime::Handle {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-rt")
            .enable_all()
            .build()
            .expect("the SDK cannot start its runtime (threads or timers unavailable)");
        let handle = rt.handle().clone();
        *RUNTIME.lock() = Some(rt);
        handle
    })
}

/// Stops the SDK's runtime: every client's link ends at once (without a clean close)
/// and every call after it fails. Waits up to a second for the runtime's threads to end.
/// For a process that is exiting: the Python package calls it at interpreter exit, so
/// no SDK thread calls into an interpreter that is being torn down. Apps need not.
#[uniffi::export]
pub fn shutdown() {
    let rt = RUNTIME.lock().take();
    if let Some(rt) = rt {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Runs `f` on the library's runtime and awaits it from whatever executor the binding
/// uses (a tokio `JoinHandle` can be awaited anywhere).
async fn on_runtime<T, F>(f: F) -> Result<T, FerryError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, FerryError>> + Send + 'static,
{
    match runtime().spawn(f).await {
        Ok(r) => r,
        Err(e) => Err(FerryError::Internal {
            detail: format!("SDK task failed: {e}"),
        }),
    }
}

/// How to reach the server and who signs in.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Config {
    /// Gateways, `IP:PORT` (at least one): raced until the server hands out its own list.
    pub servers: Vec<String>,
    pub username: String,
    pub password: String,
    /// The server's public key, 64 hex digits (`ferry serve` prints it), pinned. `None`:
    /// trust the first key the server shows and keep it in `state_dir`.
    #[uniffi(default = None)]
    pub server_key: Option<String>,
    /// Talk plaintext (only to a development server that allows it).
    #[uniffi(default = false)]
    pub plaintext: bool,
    /// A folder of the app's where the device id, token, synckey and trusted key are
    /// kept. `None` keeps them in memory (a new device every run).
    #[uniffi(default = None)]
    pub state_dir: Option<String>,
    /// The network the device is on ("wifi:home", "cell:46001" …): each learns its own
    /// heartbeat. See `Client.network_changed`.
    #[uniffi(default = "default")]
    pub network: String,
    /// The starting heartbeat interval in seconds (`None`: 210, which the smart
    /// heartbeat stretches where the network allows).
    #[uniffi(default = None)]
    pub heartbeat_secs: Option<u32>,
    /// How long the link stays up after `app_backgrounded()` (`None`: 10 s).
    #[uniffi(default = None)]
    pub background_grace_ms: Option<u32>,
    /// The longest wait between reconnect attempts (`None`: 30 s).
    #[uniffi(default = None)]
    pub backoff_max_ms: Option<u32>,
    /// Reported to the server with the connect timings and logs (`None`: this SDK's).
    #[uniffi(default = None)]
    pub client_version: Option<String>,
}

impl Config {
    fn security(&self) -> Result<Security, FerryError> {
        match (&self.server_key, self.plaintext) {
            (Some(_), true) => Err(FerryError::invalid(
                "a pinned server key and plaintext exclude each other",
            )),
            (Some(k), false) => Security::pinned_hex(k).map_err(Into::into),
            (None, true) => Ok(Security::Plaintext),
            (None, false) => Ok(Security::TrustOnFirstUse),
        }
    }

    fn client_config(&self) -> Result<ClientConfig, FerryError> {
        let (first, rest) = self
            .servers
            .split_first()
            .ok_or_else(|| FerryError::invalid("no server given"))?;
        let mut cfg = ClientConfig::new(first, &self.username, &self.password);
        cfg.servers = rest.to_vec();
        cfg.security = self.security()?;
        cfg.state_dir = self.state_dir.as_ref().map(PathBuf::from);
        cfg.network = self.network.clone();
        if let Some(s) = self.heartbeat_secs {
            cfg.heartbeat = Duration::from_secs(s.max(1).into());
        }
        if let Some(ms) = self.background_grace_ms {
            cfg.background_grace = Duration::from_millis(ms.into());
        }
        if let Some(ms) = self.backoff_max_ms {
            cfg.backoff_max = Duration::from_millis(ms.into()).max(cfg.backoff_min);
        }
        cfg.client_version = self
            .client_version
            .clone()
            .unwrap_or_else(|| concat!("ferry-ffi/", env!("CARGO_PKG_VERSION")).into());
        Ok(cfg)
    }
}

/// Creates the account `config.username` with `config.password` on the first server;
/// answers the new user's id. Refused with `USER_EXISTS` or `INVALID_ARGUMENT`.
#[uniffi::export]
pub async fn register(config: Config) -> Result<u64, FerryError> {
    let cfg = config.client_config()?;
    on_runtime(async move {
        let key = match cfg.security {
            Security::Pinned(k) => Some(k),
            Security::Plaintext => None,
            Security::TrustOnFirstUse => Some(ferry_client::fetch_server_key(&cfg.server).await?),
        };
        let short = ShortLink::sealed(&cfg.server, key);
        Ok(short.register(&cfg.username, &cfg.password).await?)
    })
    .await
}

/// Signs in (the stored token, else the password) and starts the link: returns once
/// logged in, or with the error that makes it impossible (`BAD_CREDENTIALS` …). From
/// then on the client reconnects by itself; events wait in a bounded queue until the
/// app takes them (`next_event`) or sets a listener (`set_listener`).
#[uniffi::export]
pub async fn connect(config: Config) -> Result<Arc<Client>, FerryError> {
    let cfg = config.client_config()?;
    on_runtime(async move {
        let (inner, events) = ferry_client::Client::connect(cfg).await?;
        Ok(Arc::new(Client {
            inner,
            events: Arc::new(EventQueue {
                rx: AsyncMutex::new(Some(events)),
                stash: Default::default(),
            }),
        }))
    })
    .await
}

/// The `ferry` object of a push payload (APNs `userInfo`, FCM `data`, a decrypted Web
/// Push / UnifiedPush body, or the object itself): on receipt, foreground the client (or
/// sync) up to at least `seq`.
#[uniffi::export]
pub fn parse_push_payload(payload: String) -> Result<PushData, FerryError> {
    Ok(ferry_client::push::PushData::from_payload(&payload)?.into())
}

/// An APNs target: the device token (hex) for the app's bundle id `topic`.
#[uniffi::export]
pub fn apns_target(token: String, topic: String, sandbox: bool) -> PushTarget {
    ferry_client::push::apns(&token, &topic, sandbox).into()
}

/// An FCM target: the registration token; `project` empty for the server's default.
#[uniffi::export]
pub fn fcm_target(token: String, project: String) -> PushTarget {
    ferry_client::push::fcm(&token, &project).into()
}

/// A UnifiedPush target: the distributor's endpoint and the app's keys (base64url).
#[uniffi::export]
pub fn unified_push_target(endpoint: String, p256dh: String, auth: String) -> PushTarget {
    ferry_client::push::unified_push(&endpoint, &p256dh, &auth).into()
}

/// Receives the client's events, in order, on the SDK's event thread.
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    fn on_event(&self, event: Event);
}

/// Hears an upload's or download's progress: `done` of `total` bytes.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    fn on_progress(&self, done: u64, total: u64);
}

/// A progress callback for ferry-client from an optional listener.
fn progress_fn(p: Option<Arc<dyn ProgressListener>>) -> impl Fn(u64, u64) + Send + Sync {
    move |done, total| {
        if let Some(p) = &p {
            p.on_progress(done, total)
        }
    }
}

/// A signed-in device with its long link. Closing it (`close`, `logout`) or dropping the
/// last reference ends the link.
#[derive(uniffi::Object)]
pub struct Client {
    inner: ferry_client::Client,
    events: Arc<EventQueue>,
}

/// The client's events until a listener takes them.
struct EventQueue {
    /// ferry-client's channel; `None` once a listener has it.
    rx: AsyncMutex<Option<ferry_client::Events>>,
    /// Events taken for a `next_event` call that was cancelled before it could answer,
    /// first in line for the next call.
    stash: parking_lot::Mutex<VecDeque<ferry_client::Event>>,
}

impl EventQueue {
    /// The next event within `wait` (`None`: none came). Runs on the runtime.
    async fn next(&self, wait: Duration) -> Result<Option<ferry_client::Event>, FerryError> {
        let mut rx = self.rx.lock().await;
        if let Some(e) = self.stash.lock().pop_front() {
            return Ok(Some(e));
        }
        let events = rx.as_mut().ok_or_else(|| {
            FerryError::invalid("the events go to the listener set with set_listener")
        })?;
        match tokio::time::timeout(wait, events.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => Err(FerryError::Closed {
                detail: "the client is closed".into(),
            }),
        }
    }
}

impl Client {
    /// Adds (`add`) or removes members: one request, `group/add` or `group/remove`.
    async fn group_members(
        &self,
        group_id: u64,
        users: Vec<String>,
        add: bool,
    ) -> Result<Group, FerryError> {
        let a = self.inner.account();
        on_runtime(async move {
            let users: Vec<&str> = users.iter().map(String::as_str).collect();
            Ok(a.group_members(group_id, &users, add).await?.into())
        })
        .await
    }
}

#[uniffi::export]
impl Client {
    // ---- state ---------------------------------------------------------------------

    pub fn username(&self) -> String {
        self.inner.username()
    }

    pub fn user_id(&self) -> u64 {
        self.inner.user_id()
    }

    /// The id this device picked once (kept in the state folder).
    pub fn device_id(&self) -> String {
        self.inner.device_id()
    }

    /// How far this device has applied its inbox.
    pub fn synckey(&self) -> u64 {
        self.inner.synckey()
    }

    pub fn status(&self) -> Status {
        self.inner.status().into()
    }

    /// `IP:PORT` of the live link, if any.
    pub fn endpoint(&self) -> Option<String> {
        self.inner.endpoint().map(|e| e.addr.to_string())
    }

    /// The heartbeat interval the live link uses, in seconds.
    pub fn heartbeat_secs(&self) -> u64 {
        self.inner.heartbeat_interval().as_secs()
    }

    /// Waits (up to `timeout_ms`) until the link is logged in; `Timeout` if not, `Closed`
    /// if the client stopped. In the background it waits for `app_foregrounded()`.
    pub async fn wait_connected(&self, timeout_ms: u64) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            tokio::time::timeout(Duration::from_millis(timeout_ms), c.wait_connected())
                .await
                .map_err(|_| FerryError::Timeout {
                    detail: format!("not connected within {timeout_ms} ms"),
                })?
                .map_err(Into::into)
        })
        .await
    }

    // ---- events --------------------------------------------------------------------

    /// The next event, waiting up to `timeout_ms`; `None` when none came in time.
    /// `Closed` once the client has stopped and every event was taken. Cancelling the
    /// call loses no event.
    pub async fn next_event(&self, timeout_ms: u64) -> Result<Option<Event>, FerryError> {
        let me = self.inner.username();
        let queue = self.events.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime().spawn(async move {
            let next = queue.next(Duration::from_millis(timeout_ms)).await;
            // The caller went away (cancelled) after this took an event: keep it for
            // the next call.
            if let Err(Ok(Some(e))) = tx.send(next) {
                queue.stash.lock().push_front(e);
            }
        });
        match rx.await {
            Ok(next) => Ok(next?.map(|e| Event::from_client(e, &me))),
            Err(_) => Err(FerryError::Internal {
                detail: "the event task ended without an answer".into(),
            }),
        }
    }

    /// From now on every event goes to `listener` (on the SDK's event thread, in order),
    /// starting with those queued; `next_event` then fails. Once only.
    pub fn set_listener(&self, listener: Arc<dyn EventListener>) -> Result<(), FerryError> {
        let taken = || {
            FerryError::invalid(
                "events are already taken (a listener is set, or next_event is waiting)",
            )
        };
        let mut rx = self.events.rx.try_lock().map_err(|_| taken())?;
        let mut events = rx.take().ok_or_else(taken)?;
        let stashed: Vec<_> = self.events.stash.lock().drain(..).collect();
        drop(rx);
        let me = self.inner.username();
        std::thread::Builder::new()
            .name("ferry-events".into())
            .spawn(move || {
                for e in stashed {
                    listener.on_event(Event::from_client(e, &me));
                }
                while let Some(e) = events.blocking_recv() {
                    listener.on_event(Event::from_client(e, &me));
                }
            })
            .map(|_| ())
            .map_err(|e| FerryError::Internal {
                detail: format!("cannot start the event thread: {e}"),
            })
    }

    // ---- the app's life --------------------------------------------------------------

    /// The device moved to another network (Wi-Fi joined, cell lost …): the link is made
    /// again at once, and the heartbeat goes on with what was learnt for `network`.
    pub fn network_changed(&self, network: String) {
        self.inner.network_changed(network)
    }

    /// The app went to the background: after the grace (`Config.background_grace_ms`)
    /// the link closes cleanly and push takes over until `app_foregrounded()`.
    pub fn app_backgrounded(&self) {
        self.inner.app_backgrounded()
    }

    /// The app came to the foreground: connect at once (if the link was closed) and
    /// sync what arrived meanwhile.
    pub fn app_foregrounded(&self) {
        self.inner.app_foregrounded()
    }

    // ---- messages ------------------------------------------------------------------

    /// Sends a text to a user, retried (with one id) until the server has stored it.
    pub async fn send_text(&self, to: String, text: String) -> Result<SendAck, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.send_text(&to, &text).await?.into()) }).await
    }

    /// Sends a text to a group, with @mentions (user names).
    pub async fn send_group_text(
        &self,
        group_id: u64,
        text: String,
        mentions: Vec<String>,
    ) -> Result<SendAck, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            let mentions: Vec<&str> = mentions.iter().map(String::as_str).collect();
            Ok(c.send_group(group_id, &text, &mentions).await?.into())
        })
        .await
    }

    /// Sends an image (PNG, JPEG or WebP): its thumbnail first, then the message, then
    /// the original, whose upload `progress` follows.
    pub async fn send_image(
        &self,
        to: Destination,
        image: Vec<u8>,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<SentMedia, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            let p = progress_fn(progress);
            Ok(c.send_image(ferry_client::Dest::from(to), image, &p)
                .await?
                .into())
        })
        .await
    }

    /// Sends a file under its name.
    pub async fn send_file(
        &self,
        to: Destination,
        data: Vec<u8>,
        file_name: String,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<SentMedia, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            let p = progress_fn(progress);
            Ok(
                c.send_file(ferry_client::Dest::from(to), data, &file_name, &p)
                    .await?
                    .into(),
            )
        })
        .await
    }

    /// Sends a voice note of `duration_ms`.
    pub async fn send_voice(
        &self,
        to: Destination,
        data: Vec<u8>,
        duration_ms: u32,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<SentMedia, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            let p = progress_fn(progress);
            Ok(
                c.send_voice(ferry_client::Dest::from(to), data, duration_ms, &p)
                    .await?
                    .into(),
            )
        })
        .await
    }

    /// Sends a video with a thumbnail the app made (a frame, JPEG or PNG).
    pub async fn send_video(
        &self,
        to: Destination,
        data: Vec<u8>,
        thumbnail: Option<Vec<u8>>,
        duration_ms: u32,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<SentMedia, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            let p = progress_fn(progress);
            Ok(c.send_video(
                ferry_client::Dest::from(to),
                data,
                thumbnail,
                duration_ms,
                &p,
            )
            .await?
            .into())
        })
        .await
    }

    /// Downloads media this user may read (a message's `media_id` or `thumb_id`); while
    /// it is still being uploaded this waits for it (up to two minutes).
    pub async fn download(
        &self,
        media_id: String,
        progress: Option<Arc<dyn ProgressListener>>,
    ) -> Result<Vec<u8>, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            let p = progress_fn(progress);
            Ok(c.download(&media_id, &p).await?)
        })
        .await
    }

    /// Recalls a message (within the recall window; a group's admins: any).
    pub async fn recall(&self, msg_id: u64) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.recall(msg_id).await?) }).await
    }

    /// Tells `peer` this user read their messages up to `msg_id`.
    pub async fn mark_read(&self, peer: String, msg_id: u64) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            Ok(c.read(ferry_proto::v1::ReadReq {
                peer,
                msg_id,
                ..Default::default()
            })
            .await?)
        })
        .await
    }

    /// Marks a group read up to `gseq`.
    pub async fn mark_group_read(&self, group_id: u64, gseq: u64) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            Ok(c.read(ferry_proto::v1::ReadReq {
                group_id,
                gseq,
                ..Default::default()
            })
            .await?)
        })
        .await
    }

    /// Tells `to` this user is typing (best effort).
    pub async fn typing(&self, to: String) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.typing(&to).await?) }).await
    }

    // ---- message operations (docs/protocol.md §4a) and search ------------------------

    /// Replies with a text to message `reply_to`, in the conversation that message is in
    /// (the 1:1 chat or the group); retried with one id until the server stored it. The
    /// stored reply carries a `Quote` of the message answered (`ChatMessage.quote`).
    /// `NOT_FOUND` when this user may not read that message (or it was recalled).
    pub async fn reply(&self, reply_to: u64, text: String) -> Result<SendAck, FerryError> {
        if reply_to == 0 {
            return Err(FerryError::invalid("reply_to must name a message (not 0)"));
        }
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.reply(reply_to, &text).await?.into()) }).await
    }

    /// Replaces the text (a media message's caption) of a message this user sent, within
    /// the server's edit window; both sides' devices (or the group's) get an `Edit`
    /// event. Safe to retry.
    pub async fn edit(&self, msg_id: u64, text: String) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.edit(msg_id, &text).await?) }).await
    }

    /// Adds a reaction (an emoji: 1–32 bytes, no whitespace) to a message this user may
    /// read. Safe to retry.
    pub async fn react(&self, msg_id: u64, emoji: String) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.react(msg_id, &emoji).await?) }).await
    }

    /// Takes a reaction back. Safe to retry.
    pub async fn unreact(&self, msg_id: u64, emoji: String) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.unreact(msg_id, &emoji).await?) }).await
    }

    /// The reactions on a message: each emoji's count (and whether this user holds it);
    /// with `emoji`, also who reacted with it, `limit` users a page (0: 50) from the
    /// cursor `after` (0 first, then the answer's `next_after`).
    #[uniffi::method(default(emoji = None, after = 0, limit = 0))]
    pub async fn reactions(
        &self,
        msg_id: u64,
        emoji: Option<String>,
        after: u64,
        limit: u32,
    ) -> Result<Reactions, FerryError> {
        if emoji.as_deref() == Some("") {
            return Err(FerryError::invalid(
                "the emoji is empty (leave it out for every emoji's count)",
            ));
        }
        let c = self.inner.clone();
        on_runtime(async move {
            Ok(c.reactions(msg_id, emoji.as_deref(), after, limit)
                .await?
                .into())
        })
        .await
    }

    /// Deletes messages for this user only (1–100): every device of theirs gets a `Hide`
    /// event; nobody else's chat changes. Safe to retry.
    pub async fn hide(&self, msg_ids: Vec<u64>) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.hide(&msg_ids).await?) }).await
    }

    /// Pins a message of a conversation (the 1:1 chat with a user, or a group: its owner
    /// and admins only); both sides (or the group) get a `Pin` event. At most 50 pins.
    pub async fn pin(&self, conversation: Destination, msg_id: u64) -> Result<(), FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.pin(&conv, msg_id).await?) }).await
    }

    /// Unpins a message.
    pub async fn unpin(&self, conversation: Destination, msg_id: u64) -> Result<(), FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.unpin(&conv, msg_id).await?) }).await
    }

    /// A conversation's pinned messages, newest first.
    pub async fn pins(&self, conversation: Destination) -> Result<Vec<PinnedMessage>, FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.pins(&conv).await?.into_iter().map(Into::into).collect()) })
            .await
    }

    /// Searches the messages this user may read (docs/protocol.md, Search); page on
    /// with the answer's `next` as the next query's `page`. The index follows the server's
    /// store within about a second.
    pub async fn search(&self, query: SearchQuery) -> Result<SearchPage, FerryError> {
        let req = query.request()?;
        let me = self.inner.username();
        let a = self.inner.account();
        on_runtime(async move { SearchPage::from_resp(a.search(req).await?, &me) }).await
    }

    // ---- forwarding and conversation state (docs/protocol.md §4b) ---------------------

    /// Forwards message `msg_id` (one this user may read) into `to` (the 1:1 chat with a
    /// user, or a group); retried with one id until the server stored it. The server
    /// copies its text and media (no re-upload); the new message carries `forwarded` (the
    /// original's author and time). `NOT_FOUND` when this user may not read the message,
    /// or it was recalled.
    pub async fn forward(&self, to: Destination, msg_id: u64) -> Result<SendAck, FerryError> {
        if msg_id == 0 {
            return Err(FerryError::invalid("msg_id must name a message (not 0)"));
        }
        let conv = types::conversation(to)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.forward(&conv, msg_id).await?.into()) }).await
    }

    /// Changes conversations' states (at most 64 in one call; only the fields given in
    /// each change) and answers every conversation state of this user. Each change
    /// reaches all of this user's devices as a `Conv` event. One refused: none applied.
    pub async fn conv_set(&self, changes: Vec<ConvChange>) -> Result<Vec<ConvState>, FerryError> {
        let set = changes
            .into_iter()
            .map(ConvChange::request)
            .collect::<Result<Vec<_>, _>>()?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.conv_set(set).await?.into_iter().map(Into::into).collect()) })
            .await
    }

    /// Every conversation state of this user (archived, unread, muted, draft, cleared,
    /// retention).
    pub async fn conversations(&self) -> Result<Vec<ConvState>, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            Ok(c.conversations()
                .await?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    /// Archives (or unarchives) a conversation on every device of this user; answers its
    /// state after the change.
    pub async fn archive(
        &self,
        conversation: Destination,
        archived: bool,
    ) -> Result<ConvState, FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.archive(&conv, archived).await?.into()) }).await
    }

    /// Mutes a conversation until `until_ms` (unix ms; -1: until unmuted; 0 unmutes). The
    /// same setting as the push settings' muted mode.
    pub async fn mute(
        &self,
        conversation: Destination,
        until_ms: i64,
    ) -> Result<ConvState, FerryError> {
        if until_ms < -1 {
            return Err(FerryError::invalid(
                "until_ms is -1 (until unmuted), 0 (unmute) or a unix time in ms",
            ));
        }
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.mute(&conv, until_ms).await?.into()) }).await
    }

    /// Marks a conversation unread (or takes the mark away; reading it does too).
    pub async fn mark_unread(
        &self,
        conversation: Destination,
        unread: bool,
    ) -> Result<ConvState, FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.mark_unread(&conv, unread).await?.into()) }).await
    }

    /// Keeps the composer's unsent text of a conversation on every device of this user
    /// ("" removes it; at most 4 000 characters; the latest write wins).
    pub async fn set_draft(
        &self,
        conversation: Destination,
        draft: String,
    ) -> Result<ConvState, FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.set_draft(&conv, &draft).await?.into()) }).await
    }

    /// Clears a conversation's history for this user: every message up to now, on every
    /// device of theirs (`cleared_before_msg_id`); nobody else's.
    pub async fn clear_history(&self, conversation: Destination) -> Result<ConvState, FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.clear_history(&conv).await?.into()) }).await
    }

    /// Sets a conversation's own retention for everyone in it, in seconds (0 removes it;
    /// else at least 60). In a group: its owner and admins only.
    pub async fn set_retention(
        &self,
        conversation: Destination,
        secs: u32,
    ) -> Result<ConvState, FerryError> {
        let conv = types::conversation(conversation)?;
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.set_retention(&conv, secs).await?.into()) }).await
    }

    // ---- friends -------------------------------------------------------------------

    pub async fn find_user(&self, username: String) -> Result<UserInfo, FerryError> {
        let a = self.inner.account();
        on_runtime(async move {
            let r = a.find_user(&username).await?;
            Ok(UserInfo {
                user_id: r.user_id,
                username: r.username,
                avatar_etag: r.avatar_etag,
            })
        })
        .await
    }

    /// Asks `username` to be friends (accepted at once if they asked first).
    pub async fn request_friend(
        &self,
        username: String,
        greeting: String,
    ) -> Result<FriendActionResult, FerryError> {
        let a = self.inner.account();
        on_runtime(async move { Ok(a.request_friend(&username, &greeting).await?.into()) }).await
    }

    /// Accepts, declines, removes, blocks or unblocks `username`.
    pub async fn friend_action(
        &self,
        action: FriendAction,
        username: String,
    ) -> Result<FriendActionResult, FerryError> {
        let a = self.inner.account();
        on_runtime(async move { Ok(a.friend(action.into(), &username).await?.into()) }).await
    }

    /// The friend list: whole (`since_version` 0) or the changes since a version.
    pub async fn friends(&self, since_version: u64) -> Result<FriendList, FerryError> {
        let a = self.inner.account();
        on_runtime(async move { Ok(a.friends(since_version).await?.into()) }).await
    }

    // ---- groups --------------------------------------------------------------------

    /// Creates a group owned by this user; `share_history`: new members see its past.
    pub async fn create_group(
        &self,
        name: String,
        members: Vec<String>,
        share_history: bool,
    ) -> Result<Group, FerryError> {
        let a = self.inner.account();
        on_runtime(async move {
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            Ok(a.create_group(&name, &members, share_history).await?.into())
        })
        .await
    }

    /// Adds members (admins and the owner).
    pub async fn add_group_members(
        &self,
        group_id: u64,
        users: Vec<String>,
    ) -> Result<Group, FerryError> {
        self.group_members(group_id, users, true).await
    }

    /// Removes members (admins and the owner).
    pub async fn remove_group_members(
        &self,
        group_id: u64,
        users: Vec<String>,
    ) -> Result<Group, FerryError> {
        self.group_members(group_id, users, false).await
    }

    pub async fn leave_group(&self, group_id: u64) -> Result<(), FerryError> {
        let a = self.inner.account();
        on_runtime(async move { Ok(a.leave_group(group_id).await?) }).await
    }

    /// A group with its members (members only).
    pub async fn group_info(&self, group_id: u64) -> Result<Group, FerryError> {
        let a = self.inner.account();
        on_runtime(async move { Ok(a.group_info(group_id).await?.into()) }).await
    }

    /// This user's groups, with their latest gseq.
    pub async fn groups(&self) -> Result<Vec<Group>, FerryError> {
        let a = self.inner.account();
        on_runtime(async move { Ok(a.groups().await?.into_iter().map(Into::into).collect()) }).await
    }

    /// Renames a group and/or sets its announcement (empty: unchanged).
    pub async fn update_group(
        &self,
        group_id: u64,
        name: String,
        announcement: String,
    ) -> Result<Group, FerryError> {
        let a = self.inner.account();
        on_runtime(async move { Ok(a.update_group(group_id, &name, &announcement).await?.into()) })
            .await
    }

    // ---- push ----------------------------------------------------------------------

    /// Registers (or replaces) this device's push target; answers it as stored.
    pub async fn register_push(&self, target: PushTarget) -> Result<PushTarget, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.register_push(target.into()).await?.into()) }).await
    }

    /// Removes this device's push target (`None`) or another device's of this user.
    pub async fn unregister_push(&self, device_id: Option<String>) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move { Ok(c.unregister_push(device_id.as_deref()).await?) }).await
    }

    /// This user's push targets, one per device.
    pub async fn push_targets(&self) -> Result<Vec<PushTarget>, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            Ok(c.push_targets()
                .await?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    // ---- the end -------------------------------------------------------------------

    /// Ends this device's session (`all_devices`: every device's) on the server, then
    /// closes the client; answers how many sessions ended. The stored token is
    /// forgotten: the next `connect` signs in with the password.
    pub async fn logout(&self, all_devices: bool) -> Result<u32, FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            // The link first, so it cannot reconnect between the logout and the close.
            c.close().await;
            Ok(c.account().logout(all_devices).await?)
        })
        .await
    }

    /// Closes the link and saves the device state (the synckey stays where the app's
    /// events got to). The client cannot be used afterwards.
    pub async fn close(&self) -> Result<(), FerryError> {
        let c = self.inner.clone();
        on_runtime(async move {
            c.close().await;
            Ok(())
        })
        .await
    }
}
