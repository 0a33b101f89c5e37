//! Monitoring: Prometheus `/metrics`, the admin dashboard (`/dashboard`) and the live
//! summary behind it (`/api/admin/summary`, and `/api/admin/events` as server-sent
//! events), mounted into the gateway's HTTP router so they answer on every port.
//!
//! The role crates record through the `metrics` facade; the gateway's own atomic
//! [`Stats`](ferry_gateway::Stats) are rendered here at scrape time. A sampler task
//! parses that page once a second into a [`Summary`]: the dashboard, `ferry admin
//! status` and Prometheus all read the same numbers. Everything but the HTML page and
//! its static files needs the admin token ([`token`]).

pub mod prom;
mod recorder;
mod routes;
pub mod status;
pub mod summary;
pub mod token;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_gateway::Gateway;
use ferry_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use summary::Summary;
use summary::{FileRow, Local, Node, Point, Scrape};

/// How often the sampler scrapes.
const TICK: Duration = Duration::from_secs(1);
/// Rates are over this many ticks.
const RATE_TICKS: usize = 5;
/// Percentiles are over this many ticks.
const QUANTILE_TICKS: usize = 15;
/// Chart points kept (10 minutes).
const HISTORY: usize = 600;
/// A store that does not answer a probe within this is unhealthy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What this process has to show.
pub struct Sources {
    /// This node's name (`ferry serve`: the gateway id).
    pub node_id: String,
    /// The roles the process runs, e.g. `gateway+logic+store`.
    pub role: String,
    pub gateways: Vec<Arc<Gateway>>,
    /// Probed once per tick for the health column.
    pub store: Option<Arc<dyn Store>>,
    /// The folder whose `ferry.db*` files make the storage size.
    pub data_dir: Option<PathBuf>,
}

/// Monitoring options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The admin token: required by the data, the event stream and (unless
    /// `public_metrics`) by `/metrics`.
    pub token: String,
    /// Serve `/metrics` without the token (for a Prometheus on a private network).
    pub public_metrics: bool,
}

/// The monitor of one process. Start with [`Monitor::start`], mount [`Monitor::routes`].
pub struct Monitor {
    sources: Sources,
    opts: Options,
    handle: PrometheusHandle,
    started: Instant,
    started_unix: f64,
    latest: watch::Sender<Arc<Summary>>,
    history: Mutex<VecDeque<Point>>,
    shutdown: CancellationToken,
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl Monitor {
    /// Installs the metrics recorder (once per process) and starts the sampler, which
    /// stops with `shutdown`.
    pub fn start(sources: Sources, opts: Options, shutdown: CancellationToken) -> Arc<Monitor> {
        let handle = recorder::install();
        let (latest, _) = watch::channel(Arc::new(Summary::default()));
        let monitor = Arc::new(Monitor {
            sources,
            opts,
            handle,
            started: Instant::now(),
            started_unix: unix_now().as_secs_f64(),
            latest,
            history: Mutex::new(VecDeque::new()),
            shutdown,
        });
        // A first summary at once, so the data endpoints never answer an empty one.
        let mut scrapes = VecDeque::with_capacity(QUANTILE_TICKS + 1);
        let starting = Node {
            healthy: true,
            detail: "starting".into(),
            ..monitor.node_info()
        };
        monitor.publish(&mut scrapes, starting);
        tokio::spawn(monitor.clone().sample(scrapes));
        monitor
    }

    /// Installs the process's metrics recorder without a monitor (for tools that record
    /// but do not serve). Idempotent.
    pub fn install_recorder() {
        recorder::install();
    }

    fn history(&self) -> MutexGuard<'_, VecDeque<Point>> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn token(&self) -> &str {
        &self.opts.token
    }

    /// `/metrics`, `/dashboard…` and `/api/admin/…`, for [`Gateway::mount`] or any
    /// other HTTP server.
    pub fn routes(self: &Arc<Self>) -> axum::Router {
        routes::router(self.clone())
    }

    /// The newest summary (without history).
    pub fn summary(&self) -> Arc<Summary> {
        self.latest.borrow().clone()
    }

    /// The newest summary with the chart history.
    pub fn summary_with_history(&self) -> Summary {
        let mut s = (*self.summary()).clone();
        s.history = self.history().iter().cloned().collect();
        s
    }

    /// The Prometheus page: the facade's metrics, then the gateway counters, storage
    /// and process figures this process knows first-hand.
    pub fn render_metrics(&self) -> String {
        let mut out = self.handle.render();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        self.render_local(&mut out);
        out
    }

    fn render_local(&self, out: &mut String) {
        type Field = fn(&ferry_gateway::Stats) -> u64;
        let gauges: [(&str, &str, &str, Field); 15] = [
            (
                "ferry_gateway_connections",
                "gauge",
                "TCP connections open (long links, HTTP, not yet logged in).",
                |s| s.connections.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_links",
                "gauge",
                "Logged-in long links.",
                |s| s.links.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_frames_in_total",
                "counter",
                "Long-link frames received.",
                |s| s.frames_in.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_frames_out_total",
                "counter",
                "Long-link writes of answers and pushes.",
                |s| s.frames_out.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_bad_input_total",
                "counter",
                "Connections closed for bad bytes, a refused login or an oversized frame.",
                |s| s.bad_input.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_timeouts_total",
                "counter",
                "Connections dropped for a missed login deadline or heartbeat.",
                |s| s.timeouts.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_slow_consumers_total",
                "counter",
                "Links closed because their push queue was full.",
                |s| s.slow_consumers.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_notifies_skipped_total",
                "counter",
                "NOTIFY pushes not written to a link whose device acknowledged their latest_seq.",
                |s| s.notifies_skipped.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_full_handshakes_total",
                "counter",
                "Full Noise IK handshakes started on long links (X25519 work).",
                |s| s.full_handshakes.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_resumed_handshakes_total",
                "counter",
                "Long links resumed from a ticket (no X25519).",
                |s| s.resumed_handshakes.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_resumes_refused_total",
                "counter",
                "RESUME hellos refused (expired, unknown or replayed ticket); the client does a full handshake.",
                |s| s.resumes_refused.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_handshakes_refused_busy_total",
                "counter",
                "New handshakes refused before any key work: gateway.max_handshakes were in progress and the waiting room was full, or their wait there ran out.",
                |s| s.handshakes_refused_busy.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_handshakes_refused_shed_total",
                "counter",
                "New handshakes refused before any key work: logic was shedding new sessions.",
                |s| s.handshakes_refused_shed.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_handshakes_held_total",
                "counter",
                "New handshakes that waited for their turn in the gateway's waiting room (gateway.handshake_queue), admitted or refused after.",
                |s| s.handshakes_held.load(Ordering::Relaxed),
            ),
            (
                "ferry_gateway_http_requests_total",
                "counter",
                "Short-link HTTP requests.",
                |s| s.http_requests.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, field) in gauges {
            if self.sources.gateways.is_empty() {
                break;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for gw in &self.sources.gateways {
                let id = prom::escape(&gw.config().id);
                let _ = writeln!(out, "{name}{{gateway=\"{id}\"}} {}", field(&gw.stats));
            }
        }
        let files = self.files();
        if !files.is_empty() {
            let _ = writeln!(
                out,
                "# HELP ferry_store_file_bytes Size of the embedded store's files.\n\
                 # TYPE ferry_store_file_bytes gauge"
            );
            for f in &files {
                let _ = writeln!(
                    out,
                    "ferry_store_file_bytes{{file=\"{}\"}} {}",
                    prom::escape(&f.name),
                    f.bytes
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ferry_build_info The running version.\n# TYPE ferry_build_info gauge\n\
             ferry_build_info{{version=\"{}\",node=\"{}\",role=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            prom::escape(&self.sources.node_id),
            prom::escape(&self.sources.role),
        );
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch.\n\
             # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.3}",
            self.started_unix
        );
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size.\n\
                 # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
            );
        }
    }

    /// The store's files in the data folder (`ferry.db`, its WAL and shared memory).
    fn files(&self) -> Vec<FileRow> {
        let Some(dir) = &self.sources.data_dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<FileRow> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let meta = e.metadata().ok()?;
                (name.starts_with("ferry.db") && meta.is_file()).then_some(FileRow {
                    name,
                    bytes: meta.len(),
                })
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        files
    }

    async fn node(&self) -> Node {
        let (healthy, detail) = if self.shutdown.is_cancelled() {
            (false, "shutting down".to_owned())
        } else if let Some(store) = &self.sources.store {
            let t = Instant::now();
            match tokio::time::timeout(PROBE_TIMEOUT, store.user_by_id(0)).await {
                Ok(Ok(_)) => (
                    true,
                    format!(
                        "store answered in {:.1} ms",
                        t.elapsed().as_secs_f64() * 1e3
                    ),
                ),
                Ok(Err(e)) => (false, format!("store failed: {e}")),
                Err(_) => (false, format!("store silent for {PROBE_TIMEOUT:?}")),
            }
        } else {
            (true, "serving".to_owned())
        };
        Node {
            healthy,
            detail,
            ..self.node_info()
        }
    }

    /// This node as the summary lists it, health left to the caller.
    fn node_info(&self) -> Node {
        Node {
            id: self.sources.node_id.clone(),
            role: self.sources.role.clone(),
            healthy: false,
            detail: String::new(),
            uptime_s: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Scrapes once per tick until shutdown, publishing a summary each time.
    async fn sample(self: Arc<Self>, mut scrapes: VecDeque<Scrape>) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let node = self.node().await;
            self.publish(&mut scrapes, node);
        }
    }

    /// Scrapes now and publishes the summary of this scrape against the older ones.
    fn publish(&self, scrapes: &mut VecDeque<Scrape>, node: Node) {
        self.handle.run_upkeep();
        let samples = match prom::parse(&self.render_metrics()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "our own /metrics page does not parse");
                return;
            }
        };
        let local = Local {
            nodes: vec![node],
            files: self.files(),
            time_ms: unix_now().as_millis() as u64,
        };
        let now = Scrape {
            at: Instant::now(),
            samples,
        };
        let back = |ticks: usize| {
            let n = scrapes.len();
            (n > 0).then(|| &scrapes[n.saturating_sub(ticks)])
        };
        let summary = summary::build(&now, back(RATE_TICKS), back(QUANTILE_TICKS), local);
        {
            let mut h = self.history();
            if h.len() == HISTORY {
                h.pop_front();
            }
            h.push_back(summary.point.clone());
        }
        self.latest.send_replace(Arc::new(summary));
        if scrapes.len() == QUANTILE_TICKS {
            scrapes.pop_front();
        }
        scrapes.push_back(now);
    }
}

/// The address to print for the dashboard: a wildcard listen address becomes the
/// loopback address of its family, and the token rides in the fragment (which the
/// browser never sends to the server; the page moves it to its local storage).
pub fn dashboard_url(addr: std::net::SocketAddr, token: &str) -> String {
    let at = crate::web::browsable(addr);
    format!("http://{at}/dashboard#token={token}")
}

/// Resident memory from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
