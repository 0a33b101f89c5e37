//! What every domain service stands on: the configuration, the store (and the media
//! store, once set), the user name ↔ id caches, who sent a request ([`Core::caller`]),
//! the clock ([`unix_ms`]), the rate limits, and the write-behind of devices' synckeys.
//!
//! Nothing here knows a command: it is shared state and the few lookups every handler
//! starts with. Every cache can be rebuilt from the store.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use ferry_bus::{BusRequest, BusResponse};
use ferry_proto::{cmd, ProtoMessage};
use ferry_store::{MediaStore, Store};

use crate::auth;
use crate::config::LogicConfig;
use crate::error::LogicError;
use crate::limits::Limits;

/// Milliseconds since the Unix epoch: the one clock of the logic layer (message times,
/// token ages, ids, retention cut-offs).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A successful answer to a request of command `req_cmd`.
pub(crate) fn ok<M: ProtoMessage>(req_cmd: u32, msg: &M) -> BusResponse {
    BusResponse {
        cmd: u32::from(cmd::response(req_cmd as u8)),
        body: Bytes::from(msg.encode_to_vec()),
        ..Default::default()
    }
}

/// A logged-in device, as cached from its token.
#[derive(Debug, Clone)]
pub(crate) struct DeviceSession {
    pub user_id: u64,
    pub device_id: Arc<str>,
}

/// Shared state of the logic layer (see the module doc).
pub(crate) struct Core {
    pub cfg: LogicConfig,
    pub store: Arc<dyn Store>,
    /// Where media lives; set once with [`Core::set_media_store`].
    media: OnceLock<Arc<dyn MediaStore>>,
    /// User names never change, so both directions are cached for good.
    ids_by_name: DashMap<String, u64>,
    names_by_id: DashMap<u64, Arc<str>, crate::IdHasher>,
    /// Token buckets for the rate limits (`cfg.limits`).
    pub limits: Limits,
    /// The last synckey recorded per device, so unchanged ones are not rewritten.
    synckeys: DashMap<(u64, Arc<str>), u64>,
    /// Webhook events: who hears what, and queueing them (see `webhooks`).
    pub hooks: Arc<crate::webhooks::Emitter>,
    /// The before-send hook, when `cfg.before_send.url` is set.
    pub before_send: Option<crate::before::BeforeHook>,
}

impl Core {
    pub fn new(cfg: LogicConfig, store: Arc<dyn Store>) -> Core {
        Core {
            before_send: crate::before::BeforeHook::new(&cfg.before_send, cfg.max_text_bytes),
            limits: Limits::new(&cfg.limits),
            cfg,
            hooks: Arc::new(crate::webhooks::Emitter::new(store.clone())),
            store,
            media: OnceLock::new(),
            ids_by_name: DashMap::new(),
            names_by_id: DashMap::default(),
            synckeys: DashMap::new(),
        }
    }

    /// Gives this node its media store (once; later calls are ignored).
    pub fn set_media_store(&self, media: Arc<dyn MediaStore>) {
        let _ = self.media.set(media);
    }

    /// The media store, when set.
    pub fn media_store(&self) -> Option<&Arc<dyn MediaStore>> {
        self.media.get()
    }

    /// The media store, or UNAVAILABLE on a node without one.
    pub fn media(&self) -> Result<&Arc<dyn MediaStore>, LogicError> {
        self.media_store()
            .ok_or_else(|| LogicError::Unavailable("no media store on this node".into()))
    }

    /// When a token issued at `created_ms` expires (0: never).
    pub fn token_expiry(&self, created_ms: i64) -> i64 {
        match self.cfg.token_ttl_secs {
            0 => 0,
            ttl => created_ms.saturating_add((ttl as i64).saturating_mul(1000)),
        }
    }

    /// The stored session behind a token, refused when unknown or expired (an expired
    /// one is deleted on the way).
    pub async fn session_row(&self, token: &str) -> Result<ferry_store::Session, LogicError> {
        let hash = Self::token_hash(token)?;
        let s = self
            .store
            .session(hash)
            .await?
            .ok_or(LogicError::Unauthorized)?;
        self.refuse_expired(hash, &s).await?;
        Ok(s)
    }

    /// What a LOGIN needs of a token's session and its user, in one look-up; refused as
    /// [`Core::session_row`] refuses. The user's name is remembered on the way.
    pub async fn login_view(&self, token: &str) -> Result<ferry_store::LoginView, LogicError> {
        let hash = Self::token_hash(token)?;
        let v = self
            .store
            .login_view(hash)
            .await?
            .ok_or(LogicError::Unauthorized)?;
        self.refuse_expired(hash, &v.session).await?;
        self.remember_name(v.session.user_id, v.user_name.clone());
        Ok(v)
    }

    fn token_hash(token: &str) -> Result<[u8; 32], LogicError> {
        if token.is_empty() {
            return Err(LogicError::Unauthorized);
        }
        Ok(auth::token_hash(token))
    }

    /// Refuses an expired session, deleting it (and its device's push target) first.
    async fn refuse_expired(
        &self,
        hash: [u8; 32],
        s: &ferry_store::Session,
    ) -> Result<(), LogicError> {
        let expires = self.token_expiry(s.created_ms);
        if expires == 0 || unix_ms() < expires {
            return Ok(());
        }
        metrics::counter!("ferry_tokens_expired_total").increment(1);
        if let Err(e) = self.store.delete_session(hash).await {
            tracing::debug!(error = %e, "deleting an expired session failed");
        }
        // The device's push target dies with its session (other nodes' push indexes may
        // keep the device a while: harmless, nothing is queued for a device without a
        // target).
        if let Err(e) = self.store.delete_push_target(s.user_id, &s.device_id).await {
            tracing::debug!(error = %e, "deleting an expired session's push target failed");
        }
        Err(LogicError::Unauthorized)
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
    pub async fn caller(&self, req: &BusRequest) -> Result<DeviceSession, LogicError> {
        if req.user_id != 0 {
            return Ok(DeviceSession {
                user_id: req.user_id,
                device_id: req.device_id.as_str().into(),
            });
        }
        self.session(&req.token).await
    }

    pub async fn user_id(&self, name: &str) -> Result<u64, LogicError> {
        if let Some(id) = self.ids_by_name.get(name) {
            return Ok(*id);
        }
        let user = self
            .store
            .user_by_name(name)
            .await?
            .ok_or_else(|| LogicError::UnknownUser(name.to_owned()))?;
        self.remember_name(user.id, user.name);
        Ok(user.id)
    }

    /// Keeps a user's name ↔ id in the caches; returns the name.
    fn remember_name(&self, id: u64, name: String) -> Arc<str> {
        let shared: Arc<str> = name.as_str().into();
        self.ids_by_name.insert(name, id);
        self.names_by_id.insert(id, shared.clone());
        shared
    }

    pub async fn user_name(&self, id: u64) -> Result<Arc<str>, LogicError> {
        if let Some(n) = self.names_by_id.get(&id) {
            return Ok(n.clone());
        }
        let user = self
            .store
            .user_by_id(id)
            .await?
            .ok_or(LogicError::Unauthorized)?;
        Ok(self.remember_name(id, user.name))
    }

    /// Reads the per-user limit overrides again when this node's copy is older than
    /// [`crate::limits::OVERRIDES_TTL`] (one caller at a time; the others go on with the
    /// copy they have).
    pub async fn refresh_limit_overrides(&self) {
        let o = &self.limits.overrides;
        let now = unix_ms();
        if !o.claim(now) {
            return;
        }
        match self.store.limit_overrides().await {
            Ok(rows) => o.replace(rows, now),
            Err(e) => {
                tracing::debug!(error = %e, "reading the limit overrides failed");
                o.failed();
            }
        }
    }

    /// Forgets what is cached of a deleted user (its name and id, its devices'
    /// synckeys): the name may be registered again, as a new user.
    pub fn forget_user(&self, id: u64, name: &str) {
        self.ids_by_name.remove(name);
        self.names_by_id.remove(&id);
        self.synckeys.retain(|(user, _), _| *user != id);
    }

    /// The synckey this node last recorded for a device (0: none).
    pub fn known_synckey(&self, user: u64, device: &str) -> u64 {
        self.synckeys
            .get(&(user, Arc::from(device)))
            .map(|k| *k)
            .unwrap_or(0)
    }

    /// Remembers what a device has applied, without delaying the answer.
    pub fn record_synckey(&self, user: u64, device: &Arc<str>, synckey: u64) {
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
