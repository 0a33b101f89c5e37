//! The cluster roles as separate processes: `ferry gateway` (sockets, on the NATS bus)
//! and `ferry logic` (services, on the NATS bus and PostgreSQL). The same `Gateway` and
//! `Logic` as `ferry serve`; only the bus and the store differ.
//!
//! Media in a cluster: metadata in PostgreSQL, bytes either in a folder every logic node
//! mounts (`cluster.media_dir`, `ferry logic --media-dir`; see
//! `ferry_store::PgMediaStore`) or in an S3-compatible bucket (`cluster.media_s3_*`; see
//! `ferry_store::S3MediaStore`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_bus::{Bus, NatsBus, NatsConfig};
use ferry_gateway::Gateway;
use ferry_logic::Logic;
use ferry_store::{PgConfig, PgStore, Store};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::monitor::{self, Monitor};
use crate::Config;

/// `[cluster]` in the configuration file. Every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated.
    pub nats: String,
    /// PostgreSQL connection string (logic nodes only).
    pub postgres: String,
    /// Pooled PostgreSQL connections per logic node.
    pub postgres_pool: usize,
    /// How long a request waits for a pooled PostgreSQL connection before it is refused
    /// UNAVAILABLE (retryable).
    pub postgres_wait_ms: u64,
    /// Writer tasks per logic node storing messages and inbox events in batches (each
    /// holds one pooled connection while it writes).
    pub postgres_writers: usize,
    /// Subject prefix on NATS; clusters sharing one NATS need different ones.
    pub subject_prefix: String,
    /// How long a gateway waits for a logic node to answer.
    pub request_timeout_ms: u64,
    /// How often a gateway tells the logic nodes it is alive.
    pub gateway_heartbeat_ms: u64,
    /// A gateway silent this long is dead: its routes are dropped.
    pub gateway_expiry_ms: u64,
    /// Where a logic node serves `/metrics` and the dashboard (it has no client ports).
    /// Empty: not served. Gateways serve them on their client ports.
    pub logic_http: String,
    /// The media folder shared by every logic node (logic nodes only). Empty: this
    /// node answers media requests UNAVAILABLE.
    pub media_dir: String,
    /// Pooled PostgreSQL connections per logic node for media (apart from the store's).
    pub media_pool: usize,
    /// The S3 bucket media bytes go to (logic nodes only). Empty: not S3 (`media_dir`,
    /// if set). At most one of the two.
    pub media_s3_bucket: String,
    /// `http(s)://host:port` of an S3-compatible server. Empty: AWS (or `AWS_ENDPOINT`).
    pub media_s3_endpoint: String,
    /// The bucket's region. Empty: `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub media_s3_region: String,
    /// Object keys start with it (`ferry/` → `ferry/blobs/<sha256>`).
    pub media_s3_prefix: String,
    /// Empty: `AWS_ACCESS_KEY_ID`, else the instance's credentials.
    pub media_s3_access_key_id: String,
    /// Empty: `AWS_SECRET_ACCESS_KEY`.
    pub media_s3_secret_access_key: String,
    /// Allow an `http://` endpoint.
    pub media_s3_allow_http: bool,
    /// `https://<bucket>.<endpoint>` requests instead of `https://<endpoint>/<bucket>`.
    pub media_s3_virtual_hosted_style: bool,
    /// Bytes per multipart part (5 MiB to 5 GiB).
    pub media_s3_part_size: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: "nats://127.0.0.1:4222".into(),
            postgres: "host=127.0.0.1 user=postgres dbname=ferry".into(),
            postgres_pool: 16,
            postgres_wait_ms: 1_000,
            postgres_writers: 1,
            subject_prefix: "ferry".into(),
            request_timeout_ms: 5_000,
            gateway_heartbeat_ms: 2_000,
            gateway_expiry_ms: 7_000,
            logic_http: String::new(),
            media_dir: String::new(),
            media_pool: 4,
            media_s3_bucket: String::new(),
            media_s3_endpoint: String::new(),
            media_s3_region: String::new(),
            media_s3_prefix: String::new(),
            media_s3_access_key_id: String::new(),
            media_s3_secret_access_key: String::new(),
            media_s3_allow_http: false,
            media_s3_virtual_hosted_style: false,
            media_s3_part_size: 8 * 1024 * 1024,
        }
    }
}

impl ClusterConfig {
    fn nats(&self, name: &str) -> NatsConfig {
        let mut n = NatsConfig::new(&self.nats);
        n.prefix.clone_from(&self.subject_prefix);
        n.request_timeout = Duration::from_millis(self.request_timeout_ms);
        n.heartbeat = Duration::from_millis(self.gateway_heartbeat_ms);
        n.gateway_expiry = Duration::from_millis(self.gateway_expiry_ms);
        n.name = name.to_owned();
        n
    }

    /// The S3 media settings, when `media_s3_bucket` is set.
    pub fn media_s3(&self) -> Option<ferry_store::S3Config> {
        (!self.media_s3_bucket.is_empty()).then(|| ferry_store::S3Config {
            bucket: self.media_s3_bucket.clone(),
            endpoint: self.media_s3_endpoint.clone(),
            region: self.media_s3_region.clone(),
            prefix: self.media_s3_prefix.clone(),
            access_key_id: self.media_s3_access_key_id.clone(),
            secret_access_key: self.media_s3_secret_access_key.clone(),
            allow_http: self.media_s3_allow_http,
            virtual_hosted_style: self.media_s3_virtual_hosted_style,
            part_size: self.media_s3_part_size,
            ..Default::default()
        })
    }

    /// The checks of the media settings beyond their types.
    pub fn validate_media(&self) -> Result<(), String> {
        if !self.media_s3_bucket.is_empty() && !self.media_dir.is_empty() {
            return Err(
                "cluster.media_dir and cluster.media_s3_bucket are both set: media \
                        goes to a shared folder or to S3, set one"
                    .into(),
            );
        }
        let (min, max) = (5 * 1024 * 1024, 5 * 1024 * 1024 * 1024);
        if !(min..=max).contains(&self.media_s3_part_size) {
            return Err(format!(
                "cluster.media_s3_part_size must be {min} to {max} bytes (S3's part sizes), \
                 not {}",
                self.media_s3_part_size
            ));
        }
        Ok(())
    }
}

/// The metrics recorder and the admin dashboard of one cluster process.
fn monitor(
    cfg: &Config,
    node_id: &str,
    role: &str,
    gateways: Vec<Arc<Gateway>>,
    store: Option<Arc<dyn Store>>,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<Monitor>> {
    // A cluster process keeps no data of its own: the token is the configured one, or
    // one kept in the data folder if that exists, or a fresh one printed at start-up.
    let token = if !cfg.admin_token.is_empty() || cfg.data_dir.is_dir() {
        monitor::token::load_or_create(Some(&cfg.admin_token), &cfg.data_dir)?
    } else {
        let mut raw = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    };
    Ok(Monitor::start(
        monitor::Sources {
            node_id: node_id.to_owned(),
            role: role.to_owned(),
            gateways,
            store,
            data_dir: None,
        },
        monitor::Options {
            token,
            public_metrics: cfg.public_metrics,
        },
        shutdown,
    ))
}

/// A gateway process's running parts.
pub struct GatewayNode {
    /// The addresses actually bound (port 0 resolved).
    pub addrs: Vec<SocketAddr>,
    pub gateway: Arc<Gateway>,
    /// `/metrics` and the dashboard, on the client ports.
    pub monitor: Arc<Monitor>,
    bus: Arc<NatsBus>,
    shutdown: CancellationToken,
    serving: Vec<tokio::task::JoinHandle<()>>,
}

impl GatewayNode {
    /// Binds every `cfg.listen` address, joins NATS and starts accepting.
    pub async fn bind(cfg: &Config) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for addr in &cfg.listen {
            listeners.push(ferry_gateway::bind(addr).with_context(|| format!("binding {addr}"))?);
        }
        Self::start(cfg, listeners).await
    }

    pub async fn start(cfg: &Config, listeners: Vec<TcpListener>) -> anyhow::Result<Self> {
        Monitor::install_recorder();
        let id = &cfg.gateway.id;
        let bus = NatsBus::connect(cfg.cluster.nats(&format!("ferry-gateway {id}")))
            .await
            .with_context(|| format!("connecting to NATS at {}", cfg.cluster.nats))?;
        let shutdown = CancellationToken::new();
        let key = crate::server_key::load_or_create(&crate::server_key::path(cfg))?;
        let gateway = Gateway::new(
            cfg.gateway.clone(),
            key,
            bus.clone() as Arc<dyn Bus>,
            shutdown.clone(),
        );
        bus.ready().await.context("subscribing on NATS")?;
        let monitor = monitor(
            cfg,
            id,
            "gateway",
            vec![gateway.clone()],
            None,
            shutdown.clone(),
        )?;
        let _ = gateway.mount(monitor.routes().merge(crate::chat::routes()));
        let mut addrs = Vec::new();
        let mut serving = Vec::new();
        for l in listeners {
            addrs.push(l.local_addr()?);
            serving.push(tokio::spawn(gateway.clone().serve(l)));
        }
        Ok(GatewayNode {
            addrs,
            gateway,
            monitor,
            bus,
            shutdown,
            serving,
        })
    }

    /// Stops accepting, kicks every link (UNAVAILABLE: reconnect elsewhere), waits
    /// (bounded) for them to close, tells the logic nodes it is leaving.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for s in self.serving {
            let _ = s.await;
        }
        self.gateway.drained().await;
        self.bus.close().await;
    }
}

/// A logic process's running parts.
pub struct LogicNode {
    pub logic: Arc<Logic>,
    pub store: Arc<dyn Store>,
    /// Where `/metrics` and the dashboard are served (`cluster.logic_http`), if anywhere.
    pub http: Option<SocketAddr>,
    bus: Arc<NatsBus>,
    shutdown: CancellationToken,
}

impl LogicNode {
    /// Opens PostgreSQL (running migrations), joins NATS and starts serving requests.
    pub async fn start(cfg: &Config) -> anyhow::Result<Self> {
        Monitor::install_recorder();
        let mut pg = PgConfig::new(&cfg.cluster.postgres);
        pg.pool_size = cfg.cluster.postgres_pool;
        pg.wait = Duration::from_millis(cfg.cluster.postgres_wait_ms.max(1));
        pg.writers = cfg.cluster.postgres_writers.max(1);
        let store: Arc<dyn Store> = Arc::new(
            PgStore::connect(&pg)
                .await
                .context("opening the PostgreSQL store")?,
        );
        let name = format!("ferry-logic {}", std::process::id());
        let bus = NatsBus::connect(cfg.cluster.nats(&name))
            .await
            .with_context(|| format!("connecting to NATS at {}", cfg.cluster.nats))?;
        let mut logic_cfg = cfg.logic.clone();
        logic_cfg.admin_token = logic_admin_token(cfg)?;
        let logic = Logic::new(logic_cfg, store.clone(), bus.clone() as Arc<dyn Bus>);
        if let Some(s3) = cfg.cluster.media_s3() {
            let mut media_pg = pg.clone();
            media_pg.pool_size = cfg.cluster.media_pool;
            let media = ferry_store::S3MediaStore::connect(&media_pg, &s3)
                .await
                .with_context(|| format!("opening the media store in S3 bucket {}", s3.bucket))?;
            logic.set_media_store(Arc::new(media));
        } else if !cfg.cluster.media_dir.is_empty() {
            let dir = std::path::Path::new(&cfg.cluster.media_dir);
            let mut media_pg = pg.clone();
            media_pg.pool_size = cfg.cluster.media_pool;
            let media = ferry_store::PgMediaStore::connect(&media_pg, dir)
                .await
                .with_context(|| format!("opening the media store in {}", dir.display()))?;
            logic.set_media_store(Arc::new(media));
        }
        logic.set_push_senders(crate::push_senders(cfg)?);
        // Each logic node keeps its own search index; where the data folder is another
        // node's already, this one keeps it in memory (built from the store at each
        // start).
        let search_dir = cfg.data_dir.join("search");
        if cfg.logic.search {
            logic
                .enable_search(Some(&search_dir))
                .await
                .context("opening the search index")?;
        }
        logic.start();
        bus.ready().await.context("subscribing on NATS")?;
        let shutdown = CancellationToken::new();
        let mut http = None;
        if !cfg.cluster.logic_http.is_empty() {
            let listener = TcpListener::bind(&cfg.cluster.logic_http)
                .await
                .with_context(|| format!("binding {}", cfg.cluster.logic_http))?;
            http = Some(listener.local_addr()?);
            let m = monitor(
                cfg,
                &name,
                "logic",
                Vec::new(),
                Some(store.clone()),
                shutdown.clone(),
            )?;
            let app = m.routes();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the logic node's metrics server stopped");
                }
            });
        }
        Ok(LogicNode {
            logic,
            store,
            http,
            bus,
            shutdown,
        })
    }

    /// Tells the gateways this node is leaving, then sends what is still buffered.
    /// In-flight requests that do not finish are retried by their clients (on another
    /// logic node).
    pub async fn shutdown(self) {
        // Out of every gateway's rotation first: no new request comes here.
        self.bus.leave().await;
        self.shutdown.cancel();
        self.logic.shutdown();
        // Synckeys the store writes behind (bounded: PostgreSQL may be gone).
        let _ = tokio::time::timeout(Duration::from_secs(2), self.store.flush_synckeys()).await;
        // Bounded: with NATS gone, a flush would wait for a reconnect that never comes.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.bus.flush()).await;
    }
}

/// The admin token a logic node's admin API checks: the configured `admin_token`, else
/// the one kept in the data folder when there is one. Neither: the admin API is off on
/// this node (it answers 503 and says why) — every node of a cluster must check the same
/// token, and a random one per process would match no other.
fn logic_admin_token(cfg: &Config) -> anyhow::Result<String> {
    if !cfg.admin_token.is_empty() {
        return monitor::token::load_or_create(Some(&cfg.admin_token), &cfg.data_dir);
    }
    let file = monitor::token::path(&cfg.data_dir);
    if file.is_file() {
        return monitor::token::load_or_create(None, &cfg.data_dir);
    }
    tracing::warn!("no admin_token configured: the admin API is off on this logic node");
    Ok(String::new())
}

/// A gateway id for a process started without one: unique enough for a cluster.
pub fn random_gateway_id() -> String {
    format!("gw-{:08x}", rand::random::<u32>())
}
