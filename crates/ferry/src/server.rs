//! One process, every role: SQLite store, logic, in-process bus, gateway.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ferry_bus::{Bus, InProcBus};
use ferry_gateway::Gateway;
use ferry_logic::Logic;
use ferry_store::{SqliteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::monitor::{self, Monitor};
use crate::Config;

/// A running server.
pub struct Server {
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub logic: Arc<Logic>,
    /// The store, for admin commands and tests.
    pub store: Arc<dyn Store>,
    /// Metrics and the dashboard, mounted on the gateway's ports.
    pub monitor: Arc<Monitor>,
    shutdown: CancellationToken,
    serving: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds every `cfg.listen` address and starts.
    pub async fn bind(cfg: Config) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for addr in &cfg.listen {
            let l = ferry_gateway::bind(addr).with_context(|| format!("binding {addr}"))?;
            listeners.push(l);
        }
        Self::start(cfg, listeners).await
    }

    /// Starts on listeners the caller bound (tests bind 127.0.0.1:0).
    pub async fn start(cfg: Config, listeners: Vec<TcpListener>) -> anyhow::Result<Server> {
        cfg.logic
            .endpoints
            .validate()
            .map_err(|e| anyhow::anyhow!("logic.endpoints: {e}"))?;
        // Before anything records a metric.
        Monitor::install_recorder();
        let admin_token = monitor::token::load_or_create(Some(&cfg.admin_token), &cfg.data_dir)?;
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&cfg.data_dir, cfg.durability()?)
                .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?,
        );
        let bus: Arc<dyn Bus> = InProcBus::new();
        let mut logic_cfg = cfg.logic.clone();
        logic_cfg.admin_token = admin_token.clone();
        let logic = Logic::new(logic_cfg, store.clone(), bus.clone());
        let media = ferry_store::LocalMediaStore::open(&cfg.data_dir.join("media"))
            .with_context(|| format!("opening the media folder in {}", cfg.data_dir.display()))?;
        logic.set_media_store(Arc::new(media));
        logic.set_push_senders(crate::push_senders(&cfg)?);
        if cfg.logic.search {
            logic
                .enable_search(Some(&cfg.data_dir.join("search")))
                .await
                .context("opening the search index")?;
        }
        logic.start();
        let shutdown = CancellationToken::new();
        let key = crate::server_key::load_or_create(&crate::server_key::path(&cfg))?;
        let gateway = Gateway::new(cfg.gateway.clone(), key, bus, shutdown.clone());
        let monitor = Monitor::start(
            monitor::Sources {
                node_id: cfg.gateway.id.clone(),
                role: "gateway+logic+store".into(),
                gateways: vec![gateway.clone()],
                store: Some(store.clone()),
                data_dir: Some(cfg.data_dir.clone()),
            },
            monitor::Options {
                token: admin_token,
                public_metrics: cfg.public_metrics,
            },
            shutdown.clone(),
        );
        let _ = gateway.mount(monitor.routes().merge(crate::chat::routes()));
        let mut addrs = Vec::new();
        let mut serving = Vec::new();
        for l in listeners {
            addrs.push(l.local_addr()?);
            serving.push(tokio::spawn(gateway.clone().serve(l)));
        }
        Ok(Server {
            addrs,
            gateway,
            logic,
            store,
            monitor,
            shutdown,
            serving,
        })
    }

    /// The first bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Stops accepting, kicks every link and waits (bounded) for them to close.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.logic.shutdown();
        for s in self.serving {
            let _ = s.await;
        }
        self.gateway.drained().await;
    }
}
