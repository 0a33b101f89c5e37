//! Unit-test wiring: the real SQLite store in a temporary folder and the domain services
//! built on it, with a notifier that records its pushes instead of sending them — so a
//! service is tested through its handlers without a bus, a gateway or a client.

use std::sync::Arc;

use bytes::Bytes;
use ferry_bus::{BusRequest, Push};
use ferry_proto::{v1, ProtoMessage};
use ferry_store::{Durability, SqliteStore, Store};

use crate::accounts::Accounts;
use crate::attach::Attachments;
use crate::config::LogicConfig;
use crate::core::Core;
use crate::friends::Friends;
use crate::groups::Groups;
use crate::inbox::Inbox;
use crate::notify::Notifier;
use crate::push::PushService;

/// The services of one logic node over a fresh store.
pub(crate) struct World {
    pub core: Arc<Core>,
    pub notifier: Arc<Notifier>,
    pub friends: Arc<Friends>,
    pub groups: Arc<Groups>,
    pub inbox: Arc<Inbox>,
    pub push: Arc<PushService>,
    pub accounts: Accounts,
    /// Holds the store's folder until the test ends.
    _dir: tempfile::TempDir,
}

impl World {
    pub fn new(cfg: LogicConfig) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path(), Durability::Os).unwrap());
        let notifier = Arc::new(Notifier::recording(store.clone(), cfg.inline_notify_bytes));
        let core = Arc::new(Core::new(cfg, store));
        notifier.set_hooks(core.hooks.clone());
        let push = Arc::new(PushService::new(core.clone(), notifier.clone()));
        let friends = Arc::new(Friends::new(core.clone(), notifier.clone(), push.clone()));
        let attach = Arc::new(Attachments::new(core.clone()));
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
            attach,
            groups.clone(),
            push.clone(),
        ));
        let accounts = Accounts::new(core.clone(), notifier.clone(), push.clone());
        World {
            core,
            notifier,
            friends,
            groups,
            inbox,
            accounts,
            push,
            _dir: dir,
        }
    }

    /// A new account (the password hash is never checked here).
    pub async fn user(&self, name: &str) -> u64 {
        self.core.store.create_user(name, "-").await.unwrap()
    }

    /// The pushes recorded since the last call.
    pub fn pushes(&self) -> Vec<(String, Push)> {
        self.notifier.taken()
    }
}

/// A request from `user`'s long link (device `d1`), as a gateway forwards it.
pub(crate) fn req<M: ProtoMessage>(cmd: u8, user: u64, body: &M) -> BusRequest {
    BusRequest {
        cmd: u32::from(cmd),
        body: Bytes::from(body.encode_to_vec()),
        user_id: user,
        device_id: "d1".into(),
        ..Default::default()
    }
}

/// The body of a NOTIFY push.
pub(crate) fn notify_of(p: &Push) -> v1::Notify {
    assert_eq!(p.cmd, u32::from(ferry_proto::cmd::NOTIFY));
    v1::Notify::decode(p.body.clone()).unwrap()
}
