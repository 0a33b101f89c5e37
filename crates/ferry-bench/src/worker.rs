//! A bench worker: one process holding a share of the connections.
//!
//! Started by the orchestrator as `ferry bench-worker SPEC_JSON`. It reads commands as
//! JSON lines on stdin ([`Cmd`]) and writes reports as JSON lines on stdout ([`Out`]),
//! with a progress line every 250 ms. When stdin closes (the orchestrator is done or
//! gone) it exits at once, so a worker never outlives its run. Its last line is always
//! `leaving`, with the reason and the exit code (see [`run`]); only SIGKILL (the OOM
//! killer) ends it unsaid, and the orchestrator then reads that from its exit status.

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
    /// Idle: how the connections heartbeat (`idle::HeartbeatMode`; empty: smart).
    #[serde(default)]
    pub heartbeat: String,
    /// What the long links run over (idle and p2p).
    #[serde(default)]
    pub transport: crate::Transport,
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
    /// The worker's last line, whatever ended it: why, and the exit code it exits with
    /// (see [`exit`]).
    Leaving {
        reason: String,
        code: i32,
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

/// Exit codes of a worker, said in its `leaving` line too.
pub mod exit {
    /// The scenario finished, or the orchestrator closed stdin after `Stop`.
    pub const DONE: i32 = 0;
    /// The scenario failed (its `error` line says why).
    pub const SCENARIO_FAILED: i32 = 1;
    /// The spec could not be read.
    pub const BAD_SPEC: i32 = 2;
    /// Reading commands from stdin failed.
    pub const STDIN_FAILED: i32 = 3;
    /// The orchestrator closed stdin before saying `Stop` (it is gone, or gave up).
    pub const ORPHANED: i32 = 4;
    /// Writing reports to stdout failed (the orchestrator stopped reading).
    pub const STDOUT_FAILED: i32 = 5;
    /// A panic (a bug in the bench).
    pub const PANICKED: i32 = 101;
    /// 128 + the signal number, as shells say it.
    pub const SIGNALLED: i32 = 128;
}

/// Writes the final `leaving` line straight to stdout (no channel: it may be called
/// from a panic hook or with the writer gone) and ends the process with `code`.
fn leave_now(code: i32, reason: &str) -> ! {
    use std::io::Write;
    let line = serde_json::to_string(&Out::Leaving {
        reason: reason.to_owned(),
        code,
    })
    .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    // A newline first: a panic may come halfway through another line.
    let ok = write!(out, "\n{line}\n").and_then(|()| out.flush()).is_ok();
    if !ok || code != exit::DONE {
        // Said on stderr too: the orchestrator keeps its tail, and a human sees it.
        eprintln!("bench worker leaving (code {code}): {reason}");
    }
    std::process::exit(code)
}

/// The hidden `bench-worker` subcommand. Whatever ends it — the scenario finishing or
/// failing, stdin closing, stdout failing, a signal it can catch, a panic — its last
/// report line is `leaving` with the reason and the exit code it then exits with, so
/// the orchestrator can always say why a worker went.
pub async fn run(spec: &str) -> anyhow::Result<()> {
    std::panic::set_hook(Box::new(|info| {
        leave_now(exit::PANICKED, &format!("panicked: {info}"));
    }));
    let spec: Spec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => leave_now(exit::BAD_SPEC, &format!("reading the worker spec: {e}")),
    };
    // Everything that wants the process to end says so here; the writer writes the
    // lines queued before it, then the `leaving` line, then exits.
    let (quit_tx, mut quit_rx) = mpsc::unbounded_channel::<(i32, String)>();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut quit: Option<(i32, String)> = None;
        loop {
            let o = tokio::select! {
                biased;
                o = out_rx.recv() => match o {
                    Some(o) => o,
                    None => break,
                },
                q = quit_rx.recv(), if quit.is_none() => {
                    quit = q;
                    // Drain what is already queued, then leave.
                    while let Ok(o) = out_rx.try_recv() {
                        write_line(&mut stdout, &o).await;
                    }
                    break;
                }
            };
            write_line(&mut stdout, &o).await;
        }
        let (code, reason) = quit.unwrap_or((exit::DONE, "finished".into()));
        leave_now(code, &reason)
    });
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    // A scenario it does not know is refused below before anything runs; stdin is not
    // read then, so its closing cannot overtake the refusal (the reason said would be
    // "orphaned" instead of the scenario's name).
    let known = matches!(
        spec.scenario.as_str(),
        "idle" | "p2p" | "login" | "reconnect"
    );
    if known {
        let (quit, stopped) = (quit_tx.clone(), stopped.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            let why = loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match serde_json::from_str::<Cmd>(&line) {
                        Ok(c) => {
                            if matches!(c, Cmd::Stop) {
                                stopped.store(true, Ordering::Relaxed);
                            }
                            let _ = cmd_tx.send(c);
                        }
                        Err(e) => eprintln!("bench worker: bad command {line:?}: {e}"),
                    },
                    Ok(None) if stopped.load(Ordering::Relaxed) => {
                        break (
                            exit::DONE,
                            "the orchestrator closed stdin after Stop".into(),
                        )
                    }
                    Ok(None) => {
                        break (
                            exit::ORPHANED,
                            "the orchestrator closed stdin before Stop (it is gone or gave up)"
                                .into(),
                        )
                    }
                    Err(e) => break (exit::STDIN_FAILED, format!("reading commands failed: {e}")),
                }
            };
            // The orchestrator is gone or done: leave now, whatever is running.
            let _ = quit.send(why);
        });
    }
    {
        let quit = quit_tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                eprintln!("bench worker: cannot catch signals; a signal ends it unsaid");
                return;
            };
            let (name, n) = tokio::select! {
                _ = term.recv() => ("SIGTERM", 15),
                _ = int.recv() => ("SIGINT", 2),
                _ = hup.recv() => ("SIGHUP", 1),
            };
            let _ = quit.send((exit::SIGNALLED + n, format!("got {name}")));
        });
    }
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
    let why = match result {
        Ok(()) => (exit::DONE, "finished".to_string()),
        Err(e) => {
            let message = format!("{e:#}");
            let _ = out_tx.send(Out::Error {
                message: message.clone(),
            });
            (exit::SCENARIO_FAILED, message)
        }
    };
    let _ = quit_tx.send(why);
    // The writer leaves the process; should it be stuck on a full pipe, leave anyway.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    leave_now(
        exit::STDOUT_FAILED,
        "could not write the last reports within 5 s (the orchestrator stopped reading)",
    )
}

/// Writes one report line; a failed write ends the process (saying so on stderr).
async fn write_line(stdout: &mut tokio::io::Stdout, o: &Out) {
    let Ok(mut line) = serde_json::to_string(o) else {
        return;
    };
    line.push('\n');
    let wrote = async {
        stdout.write_all(line.as_bytes()).await?;
        stdout.flush().await
    }
    .await;
    if let Err(e) = wrote {
        eprintln!(
            "bench worker leaving (code {}): writing reports failed: {e}",
            exit::STDOUT_FAILED
        );
        std::process::exit(exit::STDOUT_FAILED);
    }
}
