//! A bench worker: one process holding a share of the connections.
//!
//! Started by the orchestrator as `ferry bench-worker SPEC_JSON`. It reads commands as
//! JSON lines on stdin ([`Cmd`]) and writes reports as JSON lines on stdout ([`Out`]),
//! with a progress line every 250 ms. When stdin closes (the orchestrator is done or
//! gone) it exits at once, so a worker never outlives its run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_client::ShortLink;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{conn, users, xmpp, Proto};

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// `idle`, `p2p`, `login` or `reconnect`.
    pub scenario: String,
    pub protocol: Proto,
    /// Server addresses; connection `i` goes to `servers[i % len]`.
    pub servers: Vec<String>,
    pub worker: usize,
    /// Users `prefix{first_user}` … `prefix{first_user + users - 1}` are this worker's.
    pub first_user: usize,
    pub users: usize,
    pub prefix: String,
    pub password: String,
    pub domain: String,
    /// Messages per second per sending connection (open loop), if any.
    pub rate_per_conn: Option<f64>,
    /// Closed loop: messages a sender may have undelivered.
    pub window: usize,
}

impl Spec {
    pub fn user(&self, i: usize) -> String {
        format!("{}{}", self.prefix, self.first_user + i)
    }

    /// Which of `servers` user `i` uses.
    pub fn server_index(&self, i: usize) -> usize {
        (self.first_user + i) % self.servers.len()
    }

    pub fn server(&self, i: usize) -> &str {
        &self.servers[self.server_index(i)]
    }
}

/// Orchestrator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Connect and log in the first `step / steps` of the worker's users.
    Connect { step: usize, steps: usize },
    /// Start the load.
    Go,
    /// The server was killed (reconnect scenario); unix seconds.
    Killed { at: f64 },
    /// Stop the load, drain, report and exit.
    Stop,
}

/// Worker → orchestrator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Out {
    /// Users registered and tokens fetched.
    Prepared {
        failed: u64,
    },
    /// A `Connect` finished: `n` connected in total.
    Connected {
        n: u64,
        failed: u64,
        secs: f64,
    },
    /// Every 250 ms.
    Progress {
        connected: u64,
        done: u64,
        failed: u64,
    },
    /// Something the orchestrator times (unix seconds).
    Event {
        name: String,
        at: f64,
    },
    /// The worker's figures; the last line it writes.
    Result {
        value: serde_json::Value,
    },
    Error {
        message: String,
    },
    /// Added by the orchestrator when a worker's stdout closes.
    Exited {
        message: String,
    },
}

impl Default for Out {
    fn default() -> Self {
        Out::Progress {
            connected: 0,
            done: 0,
            failed: 0,
        }
    }
}

impl Out {
    pub fn connected(&self) -> u64 {
        match self {
            Out::Progress { connected, .. } => *connected,
            _ => 0,
        }
    }
    pub fn done(&self) -> u64 {
        match self {
            Out::Progress { done, .. } => *done,
            _ => 0,
        }
    }
    pub fn failed(&self) -> u64 {
        match self {
            Out::Progress { failed, .. } => *failed,
            _ => 0,
        }
    }
}

/// Live counters, sent as progress lines.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    /// Logins tried again after the server shed them (or the connect failed).
    pub retried: AtomicU64,
}

/// What a scenario's worker half gets.
pub struct Ctx {
    pub spec: Spec,
    pub out: mpsc::UnboundedSender<Out>,
    pub cmds: mpsc::UnboundedReceiver<Cmd>,
    pub counters: Arc<Counters>,
}

impl Ctx {
    pub fn emit(&self, o: Out) {
        let _ = self.out.send(o);
    }

    /// The next command (stdin closing ends the process elsewhere).
    pub async fn cmd(&mut self) -> anyhow::Result<Cmd> {
        self.cmds.recv().await.context("orchestrator gone")
    }

    /// Skips commands until one `want` accepts (true) or a `Stop` (false).
    pub async fn until(&mut self, want: impl Fn(&Cmd) -> bool) -> anyhow::Result<bool> {
        loop {
            match self.cmd().await? {
                Cmd::Stop => return Ok(false),
                c if want(&c) => return Ok(true),
                _ => {}
            }
        }
    }

    /// Registers (when needed) and authenticates every user of this worker, many at a
    /// time; returns each user's credential: a device token for Ferry, the password for
    /// XMPP. Users who message their pair partner (p2p, reconnect) are made friends.
    pub async fn prepare(&self) -> anyhow::Result<Vec<Option<String>>> {
        let spec = &self.spec;
        let names: Vec<String> = (0..spec.users).map(|i| spec.user(i)).collect();
        let counters = &self.counters;
        let tick = |ok: bool| {
            counters.done.fetch_add(1, Ordering::Relaxed);
            if !ok {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        };
        // One short link per server, shared by its users (their requests reuse its
        // connections).
        let key = match spec.protocol {
            Proto::Ferry => conn::server_key(spec.server(0)).await?,
            // XMPP servers have no Ferry key; their users are made over XMPP.
            Proto::Xmpp => None,
        };
        let shorts: Vec<ShortLink> = spec
            .servers
            .iter()
            .map(|s| ShortLink::sealed(s, key))
            .collect();
        let results = match spec.protocol {
            Proto::Ferry => {
                let short = |i| shorts[spec.server_index(i)].clone();
                users::sign_in(short, &names, &spec.password, tick).await?
            }
            Proto::Xmpp => {
                let task = |i: usize| {
                    let (server, domain) = (spec.server(i).to_owned(), spec.domain.clone());
                    let (user, pw) = (names[i].clone(), spec.password.clone());
                    async move {
                        xmpp::register(&server, &domain, &user, &pw)
                            .await
                            .map(|()| pw)
                    }
                };
                users::each(spec.users, users::IN_FLIGHT, task, |r| tick(r.is_ok())).await?
            }
        };
        let mut first_error = None;
        let mut creds = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(c) => creds.push(Some(c)),
                Err(e) => {
                    first_error.get_or_insert(e);
                    creds.push(None);
                }
            }
        }
        // Users message their pair partner (2k ↔ 2k+1): Ferry wants them friends.
        if spec.protocol == Proto::Ferry && matches!(spec.scenario.as_str(), "p2p" | "reconnect") {
            if let Err(e) = users::befriend_pairs(&shorts[0], &names, &creds).await {
                first_error.get_or_insert(e);
            }
        }
        let failed = creds.iter().filter(|c| c.is_none()).count() as u64;
        if let Some(e) = first_error {
            eprintln!(
                "worker {}: {failed} users could not log in: {e:#}",
                spec.worker
            );
        }
        self.counters.done.store(0, Ordering::Relaxed);
        self.counters.failed.store(0, Ordering::Relaxed);
        self.emit(Out::Prepared { failed });
        Ok(creds)
    }
}

/// The hidden `bench-worker` subcommand.
pub async fn run(spec: &str) -> anyhow::Result<()> {
    let spec: Spec = serde_json::from_str(spec).context("reading the worker spec")?;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(o) = out_rx.recv().await {
            let Ok(mut line) = serde_json::to_string(&o) else {
                continue;
            };
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() {
                std::process::exit(0);
            }
            let _ = stdout.flush().await;
        }
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Cmd>(&line) {
                Ok(c) => {
                    let _ = cmd_tx.send(c);
                }
                Err(e) => eprintln!("bench worker: bad command {line:?}: {e}"),
            }
        }
        // The orchestrator is gone or done: leave now, whatever is running.
        std::process::exit(0);
    });
    let counters = Arc::new(Counters::default());
    {
        let (counters, out) = (counters.clone(), out_tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let p = Out::Progress {
                    connected: counters.connected.load(Ordering::Relaxed),
                    done: counters.done.load(Ordering::Relaxed),
                    failed: counters.failed.load(Ordering::Relaxed),
                };
                if out.send(p).is_err() {
                    break;
                }
            }
        });
    }
    let ctx = Ctx {
        spec: spec.clone(),
        out: out_tx.clone(),
        cmds: cmd_rx,
        counters,
    };
    let result = match spec.scenario.as_str() {
        "idle" => super::idle::worker(ctx).await,
        "p2p" => super::p2p::worker(ctx).await,
        "login" => super::login::worker(ctx).await,
        "reconnect" => super::reconnect::worker(ctx).await,
        other => Err(anyhow::anyhow!("unknown scenario {other}")),
    };
    if let Err(e) = result {
        let _ = out_tx.send(Out::Error {
            message: format!("{e:#}"),
        });
    }
    drop(out_tx);
    // The progress task holds a sender; give the writer a moment to flush, then leave.
    let _ = tokio::time::timeout(Duration::from_millis(500), writer).await;
    std::process::exit(0);
}
