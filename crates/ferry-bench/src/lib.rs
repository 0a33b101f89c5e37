//! `ferry bench`: the load generator that holds Ferry to its numbers.
//!
//! What it is for: measuring a Ferry server (or an XMPP server, for comparison) from
//! the outside, the way clients see it — connections and memory, messages per second,
//! latency, logins, recovery from a crash, media upload, group fan-out, overload, and
//! loss or duplication under network and disk faults — and printing the figures as a
//! table and as JSON. The fault proxy ([`faultproxy`]), the full disk ([`fulldisk`]) and
//! the faults workload ([`faults`]) are also used by the integration tests.
//!
//! What it must not do: depend on the `ferry` binary crate (the binary depends on this
//! one and calls [`run`] and [`worker::run`]), or on the server's role crates — it talks
//! to servers only over the wire, with the codec (`ferry_proto`) and the SDK
//! (`ferry_client`), as any client does; reach any address but the loopback ones it is
//! given; or leave a process behind (every wait is bounded, and a worker exits when its
//! stdin closes).
//!
//! The orchestrator (this module) starts a throw-away `ferry serve` child on loopback
//! (or uses `--server`), spreads connections over worker processes (the same binary,
//! re-executed as the hidden `bench-worker` subcommand, at most [`MAX_CONNS_PER_WORKER`]
//! connections each, because a process may hold at most 20 000 files here), steps them
//! through phases over stdin, gathers their JSON-line reports from stdout, shows a
//! progress bar on stderr, prints a table and writes every figure to `--json`. A worker
//! that goes before giving its figures is recorded with why (its `leaving` line, its
//! exit status, its stderr tail), the run goes on with the others, and the report is
//! marked PARTIAL and the command fails ([`Workers`], [`worker_failures`]). The
//! server child and the workers are the executable this library runs in
//! (`std::env::current_exe`): the `ferry` binary, whose `serve` and `bench-worker`
//! subcommands they use.

pub mod cluster;
pub mod conn;
pub mod fanout;
pub mod faultproxy;
pub mod faults;
pub mod fulldisk;
pub mod hist;
pub mod hook;
pub mod idle;
pub mod ledger;
pub mod login;
pub mod media;
pub mod overload;
pub mod p2p;
pub mod plot;
pub mod push;
pub mod reconnect;
pub mod report;
pub mod search;
pub mod server;
pub mod users;
pub mod webhooks;
pub mod wire;
pub mod worker;
pub mod xmpp;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub use worker::{Cmd, Out, Spec};

/// Connections one worker process holds at most (each process may open 20 000 files).
pub const MAX_CONNS_PER_WORKER: usize = 15_000;
/// Files a server process keeps open besides its links (store, index, logs, sockets to
/// NATS and PostgreSQL), with room to spare.
const FILES_KEPT_BY_A_SERVER: usize = 2_000;

/// How many gateways `links` connections need when each process may hold `limit` files
/// open; 0 when one server process can hold them all.
pub fn gateways_for(links: usize, limit: usize) -> usize {
    let per_process = limit.saturating_sub(FILES_KEPT_BY_A_SERVER).max(1);
    if links <= per_process {
        0
    } else {
        links.div_ceil(per_process)
    }
}

/// This process's open-file limit (the soft one, which its children inherit and the
/// server does not raise: docs/operations.md says how to raise it).
pub fn open_file_limit() -> usize {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current
        .and_then(|m| usize::try_from(m).ok())
        .unwrap_or(usize::MAX)
}
/// How long the bench waits for stragglers after the measured window.
pub const DRAIN: Duration = Duration::from_secs(15);
/// The password of every bench user.
pub const PASSWORD: &str = "bench-password-1";

/// `ferry bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Server address IP:PORT (repeatable: connections are spread over them). Without
    /// it, the bench starts its own `ferry serve` on 127.0.0.1 with a temporary store.
    #[arg(long, global = true)]
    pub server: Vec<String>,
    /// PID of a `--server` process, to read its memory from /proc (repeatable: a
    /// cluster's gateways; their resident memory is summed).
    #[arg(long, global = true)]
    pub server_pid: Vec<u32>,
    /// Seconds of measured load (idle: how long the connections are held).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub duration: f64,
    /// Write every figure to this file as JSON.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// The protocol to speak: Ferry's own, or XMPP (against an XMPP server, `--server`).
    #[arg(long, global = true, value_enum, default_value_t = Proto::Ferry)]
    pub protocol: Proto,
    /// Worker processes (default: as few as hold the connections, at least 1).
    #[arg(long, global = true)]
    pub workers: Option<usize>,
    /// Bench user names are PREFIX0, PREFIX1, … (reused when they exist).
    #[arg(long, global = true, default_value = "bu")]
    pub prefix: String,
    /// XMPP domain of the bench users.
    #[arg(long, global = true, default_value = "localhost")]
    pub xmpp_domain: String,
    /// Write plots (SVG) into this folder.
    #[arg(long, global = true)]
    pub plot_dir: Option<PathBuf>,
    /// Durability of the bench's own server: fsync (default) or os.
    #[arg(long, global = true, default_value = "fsync")]
    pub durability: String,
    /// What the long links run over (idle and p2p): TCP, or WebSocket (`GET /v1/ws`,
    /// one frame per binary message; docs/protocol.md 7.1a).
    #[arg(long, global = true, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Run the bench's own server as a cluster of this many gateways (and `--logics`
    /// logic nodes, a NATS of its own and a fresh database on `--postgres`) instead of
    /// one `ferry serve`. 0: `ferry serve`, unless the load needs more links than one
    /// process may hold open (then as many gateways as it needs).
    #[arg(long, global = true, default_value_t = 0)]
    pub gateways: usize,
    /// Logic nodes of the bench's own cluster (with `--gateways`).
    #[arg(long, global = true, default_value_t = 1)]
    pub logics: usize,
    /// The PostgreSQL the bench's own cluster makes its database on (libpq key=value
    /// form; the database named is the one connected to while creating it).
    #[arg(
        long,
        global = true,
        default_value = "host=127.0.0.1 user=postgres dbname=test"
    )]
    pub postgres: String,
}

/// What to measure.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N logged-in connections holding heartbeats: connect+login rate and memory.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Measure memory after each of this many equal steps (memory vs connections).
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// How the connections heartbeat: `smart` (the SDK on a new network: its safe
        /// interval, 3.5 min, learning longer ones as heartbeats are answered),
        /// `learned` (the longest the SDK allows: 10 min, or 4/5 of the server's idle
        /// timeout), or a fixed number of seconds.
        #[arg(long, default_value = "smart")]
        heartbeat: idle::HeartbeatMode,
    },
    /// N pairs exchanging 1:1 messages: durable messages/s, latency, lost, duplicated.
    P2p {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Offered load in messages/s over all senders (open loop). Without it: closed
        /// loop at maximum, each sender keeping `--window` messages undelivered.
        #[arg(long)]
        rate: Option<f64>,
        /// Closed loop: messages a sender may have sent but not yet seen delivered.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Run open loop at each of these rates (comma separated) and plot latency
        /// against offered load.
        #[arg(long, value_delimiter = ',')]
        sweep: Vec<f64>,
        /// Measure the before-send hook (issue 23): run twice on the bench's own
        /// server, without a hook and with `[logic.before_send]` pointing at a local
        /// hook that holds each message this many ms, and report both latencies.
        #[arg(long)]
        before_hook_ms: Option<u64>,
    },
    /// K clients logging in at once, again and again, with stored tokens: logins/s, p99.
    Login {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
    },
    /// Clients connected and sending; the server is SIGKILLed and restarted: time until
    /// every client is back and synced, messages lost (own server or own cluster only;
    /// past one process's open-file limit, the own cluster of `--gateways`).
    Reconnect {
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Messages per second each client sends.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
    },
    /// One client uploading media in chunks of each size in turn: upload MB/s.
    Media {
        /// Bytes per upload, in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
        /// Chunk sizes to try, in bytes (comma separated; the server clamps them to
        /// 1 KiB..512 KiB).
        #[arg(long = "chunk", value_delimiter = ',', default_values_t = [8192, 32768, 131072, 524288])]
        chunks: Vec<u32>,
        /// Chunk requests in flight (comma separated: each chunk size is run with each).
        #[arg(long = "in-flight", value_delimiter = ',', default_values_t = [ferry_client::UPLOAD_WINDOW])]
        in_flight: Vec<usize>,
    },
    /// One group with every member connected, one sender: deliveries/s and the time
    /// from a send to the last member's receipt.
    Fanout {
        /// Members, sender included (all connected from this process).
        #[arg(long, default_value_t = 500)]
        members: usize,
        /// Messages to send.
        #[arg(long, default_value_t = 200)]
        messages: u64,
        /// Messages the sender may have unacknowledged.
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
    /// Devices without a live link, each with an APNs push target, and senders messaging
    /// them: pushes/s handed to a local APNs (this process, checking Apple's contract),
    /// send → provider latency, memory per target (own server only).
    /// Webhook deliveries/s to a local receiver (this process) with N endpoints
    /// subscribed to `message.sent`, send → delivery latency (own server only).
    /// The search index (issue 24): indexing msgs/s, bytes per message and search
    /// latency on a synthetic corpus in this process; then, with the bench's own server,
    /// 1:1 msgs/s with `logic.search` on and off, interleaved.
    Search {
        /// Messages in the corpus.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        #[arg(long, default_value_t = 1_000)]
        groups: u64,
        /// Searches to time.
        #[arg(long, default_value_t = 2_000)]
        searches: usize,
        /// Messages per index commit.
        #[arg(long, default_value_t = 1_000)]
        commit: usize,
        /// Pairs of the send-path runs (0: skip them).
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Send-path runs with search on, and as many with it off.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    Webhooks {
        /// Endpoints (each gets every message).
        #[arg(long, default_value_t = 4)]
        endpoints: usize,
        /// Messages to send.
        #[arg(long, default_value_t = 5_000)]
        messages: u64,
        /// Messages the sender may have unacknowledged.
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    Push {
        /// Offline devices (one user each) with a push target.
        #[arg(long, default_value_t = 20_000)]
        devices: usize,
        /// Sending long links; each owns every S-th device.
        #[arg(long, default_value_t = 16)]
        senders: usize,
        /// Offered load in messages/s over all senders (open loop). Without it: closed
        /// loop, each sender keeping `--window` sends unacknowledged.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// The server at twice its capacity: connected users' sends and syncs plus a storm
    /// of new logins; admitted latency and what was shed (own server only).
    Overload(overload::OverloadArgs),
    /// SDK pairs sending through a fault (delay, stalls, chunking, RSTs, half-open
    /// flows, a SIGKILL, a full disk): lost, duplicated, recovery (own server only).
    Faults {
        #[arg(long, value_enum)]
        fault: faults::Fault,
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// Messages per second each client sends.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// `logic-stop`: the logic node to SIGSTOP (a process of the cluster at
        /// `--server`; `bench/faults.sh` starts one).
        #[arg(long)]
        stop_pid: Option<u32>,
    },
    /// The fault proxy alone, for `--duration` seconds (loopback only).
    Proxy {
        /// Where it listens, IP:PORT.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Where it forwards to, IP:PORT.
        #[arg(long)]
        upstream: String,
        #[command(flatten)]
        faults: faultproxy::Faults,
    },
    /// Print the figures of Ferry and XMPP `--json` reports side by side.
    Compare { files: Vec<PathBuf> },
    /// Draw the figures of several `--json` reports together (idle reports: memory
    /// against connections; p2p sweeps: latency against offered load).
    Plot {
        files: Vec<PathBuf>,
        /// Folder for the SVG files.
        #[arg(long, default_value = "docs/bench")]
        out: PathBuf,
    },
}

/// What a bench long link runs over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Ferry,
    Xmpp,
}

/// Runs one `ferry bench` invocation.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Scenario::Plot { files, out } = &args.scenario {
        for p in plot::from_reports(files, out)? {
            println!("wrote {}", p.display());
        }
        return Ok(());
    }
    if let Scenario::Compare { files } = &args.scenario {
        let r = report::compare(files)?;
        report::print(&r);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&r.json)?)?;
        }
        return Ok(());
    }
    if args.duration <= 0.0 || args.duration > 3600.0 {
        bail!("--duration must be in (0, 3600] seconds");
    }
    if args.transport == Transport::Ws {
        if !matches!(args.scenario, Scenario::Idle { .. } | Scenario::P2p { .. }) {
            bail!("--transport ws is for the idle and p2p scenarios");
        }
        if args.protocol != Proto::Ferry {
            bail!("--transport ws speaks Ferry's protocol");
        }
    }
    if args.protocol == Proto::Xmpp && args.server.is_empty() {
        bail!("--protocol xmpp needs --server (the XMPP server's IP:PORT)");
    }
    for s in &args.server {
        let addr: std::net::SocketAddr = s
            .parse()
            .with_context(|| format!("--server {s}: expected IP:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("--server {s}: the bench only loads loopback addresses");
        }
    }
    let result: anyhow::Result<report::Report> = async {
        Ok(match args.scenario.clone() {
            Scenario::Idle {
                connections,
                steps,
                heartbeat,
            } => idle::run(&args, connections, steps, heartbeat).await?,
            Scenario::P2p {
                pairs,
                rate,
                window,
                sweep,
                before_hook_ms: Some(ms),
            } => {
                if !sweep.is_empty() {
                    bail!("--before-hook-ms runs one load: leave out --sweep");
                }
                p2p::hooked(&args, pairs, rate, window, ms).await?
            }
            Scenario::P2p {
                pairs,
                rate,
                window,
                sweep,
                before_hook_ms: None,
            } => p2p::run(&args, pairs, rate, window, &sweep).await?,
            Scenario::Login { clients } => login::run(&args, clients).await?,
            Scenario::Reconnect { clients, rate } => {
                if args.protocol != Proto::Ferry {
                    bail!("reconnect is a Ferry scenario");
                }
                reconnect::run(&args, clients, rate).await?
            }
            Scenario::Push {
                devices,
                senders,
                rate,
                window,
            } => {
                if args.protocol != Proto::Ferry {
                    bail!("push is a Ferry scenario");
                }
                push::run(&args, devices, senders, rate, window).await?
            }
            Scenario::Search {
                messages,
                users,
                groups,
                searches,
                commit,
                pairs,
                rounds,
            } => {
                if args.protocol != Proto::Ferry {
                    bail!("search is a Ferry scenario");
                }
                let corpus = search::Corpus {
                    messages,
                    users,
                    groups,
                    searches,
                    commit,
                };
                search::run(&args, corpus, pairs, rounds).await?
            }
            Scenario::Webhooks {
                endpoints,
                messages,
                window,
            } => {
                if args.protocol != Proto::Ferry {
                    bail!("webhooks is a Ferry scenario");
                }
                webhooks::run(&args, endpoints, messages, window).await?
            }
            Scenario::Fanout {
                members,
                messages,
                window,
            } => {
                if args.protocol != Proto::Ferry {
                    bail!("fanout is a Ferry scenario");
                }
                fanout::run(&args, members, messages, window).await?
            }
            Scenario::Media {
                size_mib,
                chunks,
                in_flight,
            } => {
                if args.protocol != Proto::Ferry {
                    bail!("media is a Ferry scenario");
                }
                media::run(&args, size_mib, &chunks, &in_flight).await?
            }
            Scenario::Overload(o) => overload::run(&args, &o).await?,
            Scenario::Faults {
                fault,
                pairs,
                rate,
                stop_pid,
            } => faults::run(&args, fault, pairs, rate, stop_pid).await?,
            Scenario::Proxy {
                listen,
                upstream,
                faults,
            } => faults::proxy(&args, &listen, &upstream, faults).await?,
            Scenario::Plot { .. } | Scenario::Compare { .. } => unreachable!("handled above"),
        })
    }
    .await;
    let (failed, started) = worker_failures();
    let mut report = match result {
        Ok(r) => r,
        Err(e) if failed.is_empty() => return Err(e),
        Err(e) => {
            let lines: Vec<String> = failed.iter().map(WorkerFailure::summary).collect();
            return Err(e.context(format!(
                "{} of {started} bench workers failed:\n  {}",
                failed.len(),
                lines.join("\n  ")
            )));
        }
    };
    let partial = !failed.is_empty();
    if let Some(obj) = report.json.as_object_mut() {
        obj.insert("partial".into(), serde_json::json!(partial));
        obj.insert("workers".into(), serde_json::json!(started));
        obj.insert("workers_failed".into(), serde_json::json!(failed));
    }
    if partial {
        report.title = format!(
            "PARTIAL ({} of {started} workers failed; the figures are of the others) · {}",
            failed.len(),
            report.title
        );
        for f in &failed {
            report.row(format!("FAILED worker {}", f.worker), f.summary());
            if f.connected_at_last_report > 0 {
                report.row(
                    format!("  connections lost with worker {}", f.worker),
                    f.connected_at_last_report,
                );
            }
        }
    }
    report::print(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if partial {
        bail!(
            "PARTIAL run: {} of {started} bench workers failed (see the report)",
            failed.len()
        );
    }
    Ok(())
}

/// The server under test: our own child, or one we were pointed at.
pub struct Target {
    pub addrs: Vec<String>,
    /// The processes whose memory is the server's (summed).
    pub pids: Vec<u32>,
    /// The bench's own server, when it runs one (none: `--server`).
    pub own: Option<Own>,
}

/// The server the bench runs itself.
pub enum Own {
    /// One `ferry serve`.
    Server(server::OwnServer),
    /// A cluster (`--gateways`).
    Cluster(cluster::OwnCluster),
}

impl Own {
    fn pids(&self) -> Vec<u32> {
        match self {
            Own::Server(o) => vec![o.pid()],
            Own::Cluster(c) => c.pids(),
        }
    }
}

impl Target {
    pub async fn new(args: &BenchArgs) -> anyhow::Result<Target> {
        if !args.server.is_empty() {
            return Ok(Target {
                addrs: args.server.clone(),
                pids: args.server_pid.clone(),
                own: None,
            });
        }
        if args.gateways > 0 {
            return Target::own_cluster(args, args.gateways).await;
        }
        Target::own(args, "").await
    }

    /// As [`Target::new`] for a load of `links` connections: when one server process may
    /// not hold them all open (its open-file limit, less a margin for its own files), the
    /// bench's own server is a cluster of as many gateways as they need.
    pub async fn for_links(args: &BenchArgs, links: usize) -> anyhow::Result<Target> {
        if args.server.is_empty() && args.gateways == 0 {
            let gateways = gateways_for(links, open_file_limit());
            if gateways > 0 {
                eprintln!(
                    "{links} links are more than one process may hold open ({} files): \
                     running the bench's own server as a cluster of {gateways} gateways",
                    open_file_limit()
                );
                return Target::own_cluster(args, gateways).await;
            }
        }
        Target::new(args).await
    }

    /// The bench's own cluster: `gateways` gateways, `--logics` logic nodes.
    pub async fn own_cluster(args: &BenchArgs, gateways: usize) -> anyhow::Result<Target> {
        let c = cluster::OwnCluster::start(&args.durability, &args.postgres, gateways, args.logics)
            .await?;
        Ok(Target {
            addrs: c.addrs.clone(),
            pids: c.pids(),
            own: Some(Own::Cluster(c)),
        })
    }

    /// The bench's own server, with `extra` appended to its config file (TOML).
    pub async fn own(args: &BenchArgs, extra: &str) -> anyhow::Result<Target> {
        Target::own_logic(args, "", extra).await
    }

    /// The bench's own server, with `logic` (TOML keys) in its `[logic]` table and
    /// `extra` appended to its config file.
    pub async fn own_logic(args: &BenchArgs, logic: &str, extra: &str) -> anyhow::Result<Target> {
        let own = server::OwnServer::start_logic(&args.durability, None, logic, extra).await?;
        Ok(Target {
            addrs: vec![own.addr.clone()],
            pids: vec![own.pid()],
            own: Some(Own::Server(own)),
        })
    }

    /// The server's resident memory in KiB (summed over its processes), when their
    /// PIDs are known and every one can be read.
    pub fn rss_kib(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| server::rss_kib(pid)).sum()
    }

    /// CPU time the server's processes have used so far (summed), in µs; none without
    /// their PIDs (`--server` without `--server-pid`).
    pub fn cpu_us(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| server::cpu_us(pid)).sum()
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "addrs": self.addrs,
            "pids": self.pids,
            "own": self.own.is_some(),
            "gateways": self.cluster().map(|c| c.addrs.len()),
        })
    }

    /// The bench's own `ferry serve`, when that is the server.
    pub fn own_server(&self) -> Option<&server::OwnServer> {
        match &self.own {
            Some(Own::Server(o)) => Some(o),
            _ => None,
        }
    }

    /// The bench's own cluster, when that is the server.
    pub fn cluster(&self) -> Option<&cluster::OwnCluster> {
        match &self.own {
            Some(Own::Cluster(c)) => Some(c),
            _ => None,
        }
    }

    /// SIGKILL to the bench's own server (every Ferry process of its own cluster).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        match &mut self.own {
            Some(Own::Server(o)) => o.kill().await,
            Some(Own::Cluster(c)) => c.kill().await,
            None => bail!("only the bench's own server can be killed"),
        }
    }

    /// Starts the bench's own server again on the same addresses and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let done = match &mut self.own {
            Some(Own::Server(o)) => o.restart().await.with_context(|| o.log_tail()),
            Some(Own::Cluster(c)) => c.restart().await.with_context(|| c.log_tail()),
            None => bail!("only the bench's own server can be restarted"),
        };
        self.pids = self.own.as_ref().map(Own::pids).unwrap_or_default();
        done
    }

    pub async fn stop(self) {
        match self.own {
            Some(Own::Server(o)) => o.stop().await,
            Some(Own::Cluster(c)) => c.stop().await,
            None => {}
        }
    }
}

/// One worker [`Spec`] per share of `units` (connections, or pairs: `per_unit` users
/// each) as [`split`] spreads them.
pub fn specs(
    args: &BenchArgs,
    target: &Target,
    scenario: &str,
    (units, per_unit): (usize, usize),
    rate_per_conn: Option<f64>,
    window: usize,
) -> Vec<Spec> {
    split(args, units, per_unit)
        .into_iter()
        .enumerate()
        .map(|(w, (first, n))| Spec {
            scenario: scenario.into(),
            protocol: args.protocol,
            servers: target.addrs.clone(),
            worker: w,
            first_user: per_unit * first,
            users: per_unit * n,
            prefix: args.prefix.clone(),
            password: PASSWORD.into(),
            domain: args.xmpp_domain.clone(),
            rate_per_conn,
            window,
            heartbeat: String::new(),
            transport: args.transport,
        })
        .collect()
}

/// Splits `units` (connections, or pairs of two) over worker processes.
pub fn split(args: &BenchArgs, units: usize, conns_per_unit: usize) -> Vec<(usize, usize)> {
    let per_worker = (MAX_CONNS_PER_WORKER / conns_per_unit).max(1);
    let needed = units.div_ceil(per_worker).max(1);
    let workers = args.workers.unwrap_or(needed).max(needed).min(units.max(1));
    let mut out = Vec::new();
    let mut first = 0;
    for w in 0..workers {
        let n = units / workers + usize::from(w < units % workers);
        out.push((first, n));
        first += n;
    }
    out
}

/// Lines of a worker's stderr the orchestrator keeps, for the report of a failed one.
pub const STDERR_TAIL: usize = 20;

/// A worker that went before giving its figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerFailure {
    pub worker: usize,
    /// What it said in its `leaving` line (or that it said nothing).
    pub reason: String,
    /// The exit code it announced, if it announced one.
    pub code: Option<i32>,
    /// Its exit status, in words (a signal, an exit code).
    pub status: String,
    /// Its error line, if any.
    pub error: Option<String>,
    /// The last lines it wrote on stderr.
    pub stderr_tail: Vec<String>,
    /// Connections it held at its last progress line (gone with it).
    pub connected_at_last_report: u64,
}

impl WorkerFailure {
    /// One line for people.
    pub fn summary(&self) -> String {
        let mut s = format!("worker {}: {}; {}", self.worker, self.reason, self.status);
        if let Some(e) = &self.error {
            if !self.reason.contains(e.as_str()) {
                s.push_str(&format!("; error: {e}"));
            }
        }
        if let Some(last) = self.stderr_tail.last() {
            s.push_str(&format!("; last stderr: {last}"));
        }
        s
    }
}

/// Workers that failed in this process's run (one bench per process), and how many were
/// started: read by [`run`] to mark the report PARTIAL.
static FAILURES: std::sync::Mutex<(Vec<WorkerFailure>, usize)> =
    std::sync::Mutex::new((Vec::new(), 0));

/// The workers that failed so far, and how many were started.
pub fn worker_failures() -> (Vec<WorkerFailure>, usize) {
    FAILURES.lock().map(|f| f.clone()).unwrap_or_default()
}

type Tail = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

/// Worker processes and their reports. A worker that goes (its report stream ends)
/// is recorded as failed ([`worker_failures`]) unless it had given its figures; the
/// others go on, and the run's report says PARTIAL. Only when every worker has failed
/// does the run stop.
pub struct Workers {
    children: Vec<(Child, ChildStdin)>,
    rx: mpsc::UnboundedReceiver<(usize, Out)>,
    /// The last progress line of each worker.
    pub progress: Vec<Out>,
    /// Each worker's last stderr lines.
    tails: Vec<Tail>,
    /// Each worker's `leaving` (reason, code) and `error` lines.
    leaving: Vec<Option<(String, i32)>>,
    errors: Vec<Option<String>>,
    /// Workers that have gone (failed, or after giving their figures).
    gone: Vec<bool>,
    /// Workers that gave their figures.
    reported: Vec<bool>,
}

impl Workers {
    /// CPU time the worker processes still running have used so far (summed), in µs.
    pub fn cpu_us(&self) -> u64 {
        self.children
            .iter()
            .filter_map(|(c, _)| c.id())
            .filter_map(server::cpu_us)
            .sum()
    }

    pub async fn spawn(specs: Vec<Spec>) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("finding the ferry binary")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut tails = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("bench-worker")
                .arg(serde_json::to_string(spec)?)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .env(
                    "FERRY_LOG",
                    std::env::var("FERRY_BENCH_WORKER_LOG").unwrap_or_else(|_| "error".into()),
                )
                .kill_on_drop(true)
                .spawn()
                .context("starting a bench worker")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stderr = child.stderr.take().context("worker stderr")?;
            // Its stderr goes on to ours (prefixed), and its tail is kept.
            let tail: Tail = Default::default();
            tails.push(tail.clone());
            let (err_done_tx, err_done_rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("worker {i}: {line}");
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == STDERR_TAIL {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
                let _ = err_done_tx.send(());
            });
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let ended = loop {
                    match lines.next_line().await {
                        Ok(Some(line)) if line.trim().is_empty() => {}
                        Ok(Some(line)) => match serde_json::from_str::<Out>(&line) {
                            Ok(out) => {
                                let _ = tx.send((i, out));
                            }
                            Err(e) => eprintln!("worker {i}: unreadable report ({e}): {line}"),
                        },
                        Ok(None) => break "its report stream ended".to_string(),
                        Err(e) => break format!("reading its reports failed: {e}"),
                    }
                };
                // Its last stderr lines before saying it has gone (2 s at most).
                let _ = tokio::time::timeout(Duration::from_secs(2), err_done_rx).await;
                let _ = tx.send((i, Out::Exited { message: ended }));
            });
            children.push((child, stdin));
        }
        let n = children.len();
        if let Ok(mut f) = FAILURES.lock() {
            f.1 = f.1.max(n);
        }
        Ok(Workers {
            children,
            rx,
            progress: vec![Out::default(); n],
            tails,
            leaving: vec![None; n],
            errors: vec![None; n],
            gone: vec![false; n],
            reported: vec![false; n],
        })
    }

    /// Workers still running (not gone).
    pub fn live(&self) -> usize {
        self.gone.iter().filter(|g| !**g).count()
    }

    /// Records worker `i` as gone: failed unless it had given its figures.
    async fn gone(&mut self, i: usize, message: String) -> anyhow::Result<()> {
        if self.gone[i] {
            return Ok(());
        }
        self.gone[i] = true;
        // Say how it ended: a signal (the OOM killer's SIGKILL, a crash) or an exit
        // code, so a failed run can be explained.
        let child = &mut self.children[i].0;
        let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(Ok(st)) => describe_exit(st),
            Ok(Err(e)) => format!("its status is unknown ({e})"),
            Err(_) => "it is still running".to_string(),
        };
        let connected = self.progress[i].connected();
        self.progress[i] = Out::default();
        if self.reported[i] {
            return Ok(());
        }
        let (reason, code) = match self.leaving[i].take() {
            Some((reason, code)) => (reason, Some(code)),
            None => (format!("{message} without a leaving line"), None),
        };
        let failure = WorkerFailure {
            worker: i,
            reason,
            code,
            status,
            error: self.errors[i].take(),
            stderr_tail: self.tails[i]
                .lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default(),
            connected_at_last_report: connected,
        };
        eprintln!("bench: {} (the run goes on: PARTIAL)", failure.summary());
        let all: Vec<String> = {
            let mut f = FAILURES.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            f.0.push(failure);
            f.0.iter().map(WorkerFailure::summary).collect()
        };
        if self.live() == 0 {
            bail!("every bench worker failed:\n  {}", all.join("\n  "));
        }
        Ok(())
    }

    /// Starts a worker per spec and waits (30 min at most) until each has set up its
    /// users, counting them on a progress bar: the workers, the bar (for the phases
    /// after), and how many users could not be set up.
    pub async fn prepared(specs: Vec<Spec>) -> anyhow::Result<(Workers, ProgressBar, u64)> {
        let users: usize = specs.iter().map(|s| s.users).sum();
        let mut w = Workers::spawn(specs).await?;
        let pb = bar(users as u64, "preparing users");
        let outs = w
            .wait_all(
                "prepare",
                Duration::from_secs(1800),
                |o| matches!(o, Out::Prepared { .. }),
                |w| pb.set_position(w.sum(Out::done)),
            )
            .await?;
        let failed = outs
            .iter()
            .map(|o| match o {
                Out::Prepared { failed } => *failed,
                _ => 0,
            })
            .sum();
        Ok((w, pb, failed))
    }

    /// Tells every worker to connect step `step` of `steps` and waits (10 min at most)
    /// until each has: connected and failed, summed over the workers. `pb`, when given,
    /// counts the connections meanwhile.
    pub async fn connect(
        &mut self,
        what: &str,
        (step, steps): (usize, usize),
        pb: Option<&ProgressBar>,
    ) -> anyhow::Result<(u64, u64)> {
        self.send(&Cmd::Connect { step, steps }).await?;
        let outs = self
            .wait_all(
                what,
                Duration::from_secs(600),
                |o| matches!(o, Out::Connected { .. }),
                |w| {
                    if let Some(pb) = pb {
                        pb.set_position(w.sum(Out::connected));
                    }
                },
            )
            .await?;
        let (mut connected, mut failed) = (0, 0);
        for o in &outs {
            if let Out::Connected { n, failed: f, .. } = o {
                connected += n;
                failed += f;
            }
        }
        Ok((connected, failed))
    }

    /// Stops the load, gathers every worker's figures (`timeout` at most) and reaps
    /// the workers.
    pub async fn results(mut self, timeout: Duration) -> anyhow::Result<Vec<serde_json::Value>> {
        self.send(&Cmd::Stop).await?;
        let outs = self
            .wait_all(
                "report",
                timeout,
                |o| matches!(o, Out::Result { .. }),
                |_| {},
            )
            .await?;
        self.finish().await;
        Ok(outs
            .into_iter()
            .filter_map(|o| match o {
                Out::Result { value } => Some(value),
                _ => None,
            })
            .collect())
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    pub async fn send(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        let line = format!("{}\n", serde_json::to_string(cmd)?);
        for (i, (_, stdin)) in self.children.iter_mut().enumerate() {
            if self.gone[i] {
                continue;
            }
            let told = async {
                stdin.write_all(line.as_bytes()).await?;
                stdin.flush().await
            }
            .await;
            if let Err(e) = told {
                // It is going: its report stream ends next, and says why.
                eprintln!("bench: telling worker {i} failed: {e}");
            }
        }
        Ok(())
    }

    /// Sum of a progress field over all workers.
    pub fn sum(&self, f: impl Fn(&Out) -> u64) -> u64 {
        self.progress.iter().map(f).sum()
    }

    /// The next report of any worker (progress lines are recorded), or `None` at the
    /// deadline.
    pub async fn next(&mut self, deadline: Instant) -> anyhow::Result<Option<(usize, Out)>> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.rx.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => bail!("every worker has gone"),
            Ok(Some((i, out))) => match out {
                Out::Error { message } => {
                    eprintln!("bench: worker {i} failed: {message}");
                    self.errors[i] = Some(message.clone());
                    Ok(Some((i, Out::Error { message })))
                }
                Out::Leaving { reason, code } => {
                    self.leaving[i] = Some((reason.clone(), code));
                    Ok(Some((i, Out::Leaving { reason, code })))
                }
                Out::Exited { message } => {
                    self.gone(i, message.clone()).await?;
                    Ok(Some((i, Out::Exited { message })))
                }
                p @ Out::Progress { .. } => {
                    self.progress[i] = p.clone();
                    Ok(Some((i, p)))
                }
                r @ Out::Result { .. } => {
                    self.reported[i] = true;
                    Ok(Some((i, r)))
                }
                other => Ok(Some((i, other))),
            },
        }
    }

    /// Waits until every live worker has sent a report `want` accepts (workers that
    /// go meanwhile are recorded as failed and not waited for); ticks `tick` on
    /// progress. Fails at `timeout`.
    pub async fn wait_all(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&Out) -> bool,
        mut tick: impl FnMut(&Workers),
    ) -> anyhow::Result<Vec<Out>> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Option<Out>> = vec![None; self.len()];
        // Workers that have gone are not waited for (they are counted as failed).
        while (0..got.len()).any(|i| got[i].is_none() && !self.gone[i]) {
            match self.next(deadline).await? {
                None => bail!("timed out after {timeout:?} waiting for workers to {what}"),
                Some((i, out)) if want(&out) => got[i] = Some(out),
                Some(_) => tick(self),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Closes every worker's stdin (they exit) and reaps them, killing stragglers.
    pub async fn finish(self) {
        for (mut child, stdin) in self.children {
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg:28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_owned());
    pb
}

/// `/proc/net/sockstat` TCP line: (sockets in use, memory pages).
pub fn sockstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("inuse")?, field("mem")?))
}

/// A `/proc/meminfo` field in KiB.
pub fn meminfo_kib(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{name}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Seconds since the unix epoch as a float.
pub fn unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Describes this machine for the report.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "mem_total_kib": meminfo_kib("MemTotal"),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "debug_build": cfg!(debug_assertions),
        // Other work on the machine skews every figure: say how busy it was.
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

/// How a worker process ended, in words.
fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("it exited with code {c}"),
        (None, Some(9)) => {
            "it was killed by SIGKILL (the kernel's OOM killer, or someone else)".into()
        }
        (None, Some(sig)) => format!("it was killed by signal {sig}"),
        _ => format!("it ended: {st}"),
    }
}

#[cfg(test)]
mod tests {
    use super::gateways_for;

    #[test]
    fn links_past_one_process_limit_get_a_cluster_of_enough_gateways() {
        assert_eq!(gateways_for(5_000, 20_000), 0);
        assert_eq!(gateways_for(18_000, 20_000), 0);
        assert_eq!(gateways_for(18_001, 20_000), 2);
        assert_eq!(gateways_for(20_000, 20_000), 2);
        assert_eq!(gateways_for(40_000, 20_000), 3);
        assert_eq!(gateways_for(1_000_000, usize::MAX), 0);
    }
}
