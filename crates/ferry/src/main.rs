//! `ferry`: the server and its command-line client.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry::cli::{self, ClientOpts};
use ferry::{Config, Server};

/// jemalloc instead of glibc's malloc: a server allocates and frees small buffers per
/// frame on every worker thread. Measured with `ferry bench` against the same build on
/// glibc, in interleaved runs (docs/benchmarks.md): server CPU per 1:1 message 40–42 →
/// 32–34 µs, and ~55 B less per idle connection (2 023–2 028 → 1 966–1 974 B).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry instant messaging: server, client and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process on the embedded store.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data folder (default ./ferry-data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Listen address (repeatable; every one speaks the long link and HTTP).
        #[arg(long)]
        listen: Vec<String>,
    },
    /// Run a gateway of a cluster: client sockets, joined to logic nodes over NATS.
    Gateway {
        #[arg(long)]
        config: Option<PathBuf>,
        /// NATS URL (default nats://127.0.0.1:4222).
        #[arg(long, env = "FERRY_NATS")]
        nats: Option<String>,
        /// Listen address (repeatable).
        #[arg(long)]
        listen: Vec<String>,
        /// This gateway's name on the bus, unique in the cluster (default: random).
        #[arg(long)]
        id: Option<String>,
    },
    /// Run a logic node of a cluster: services over NATS, data in PostgreSQL.
    Logic {
        #[arg(long)]
        config: Option<PathBuf>,
        /// NATS URL (default nats://127.0.0.1:4222).
        #[arg(long, env = "FERRY_NATS")]
        nats: Option<String>,
        /// PostgreSQL connection string, e.g. postgres://ferry@127.0.0.1/ferry.
        #[arg(long, env = "FERRY_POSTGRES")]
        postgres: Option<String>,
        /// The media folder every logic node shares (NFS or the like); media metadata
        /// goes to PostgreSQL. Without it, media requests answer UNAVAILABLE.
        #[arg(long, env = "FERRY_MEDIA_DIR")]
        media_dir: Option<String>,
    },
    /// Create an account.
    Register {
        #[arg(long, default_value = "127.0.0.1:8080", env = "FERRY_SERVER")]
        server: String,
        #[arg(long, env = "FERRY_USER")]
        user: String,
        #[arg(long, env = "FERRY_PASSWORD")]
        password: String,
        #[command(flatten)]
        key: cli::KeyOpts,
    },
    /// Send one text message and print its id once the server has stored it.
    Send {
        #[command(flatten)]
        opts: ClientOpts,
        /// Recipient user name.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        /// A group id instead of a recipient.
        #[arg(long)]
        group: Option<u64>,
        /// Members to @mention (group messages; repeatable).
        #[arg(long = "mention")]
        mentions: Vec<String>,
        #[command(flatten)]
        media: ferry::cli_media::MediaArgs,
        /// The text (not with --image, --file, --voice or --video).
        #[arg(required_unless_present = "media", conflicts_with = "media")]
        text: Option<String>,
    },
    /// Take back a message you sent (within the recall window).
    Recall {
        #[command(flatten)]
        opts: ClientOpts,
        msg_id: u64,
    },
    /// Reply to a message (in its conversation), quoting it.
    Reply {
        #[command(flatten)]
        opts: ClientOpts,
        msg_id: u64,
        text: String,
    },
    /// Replace the text of a message you sent (within the edit window).
    Edit {
        #[command(flatten)]
        opts: ClientOpts,
        msg_id: u64,
        text: String,
    },
    /// React to a message with an emoji (or take the reaction back with --remove).
    React {
        #[command(flatten)]
        opts: ClientOpts,
        msg_id: u64,
        emoji: String,
        #[arg(long)]
        remove: bool,
    },
    /// Delete messages for yourself only (your devices drop them; others keep them).
    Hide {
        #[command(flatten)]
        opts: ClientOpts,
        #[arg(required = true)]
        msg_ids: Vec<u64>,
    },
    /// Pin a message of a 1:1 chat (--to USER) or a group (--group ID), or unpin it
    /// with --remove.
    Pin {
        #[command(flatten)]
        opts: ClientOpts,
        msg_id: u64,
        /// The 1:1 chat with this user.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        /// The group.
        #[arg(long)]
        group: Option<u64>,
        #[arg(long)]
        remove: bool,
    },
    /// Forward a message you may read to a 1:1 chat (PEER) or a group (--group ID);
    /// its text and media go along (no re-upload), marked forwarded.
    Forward {
        #[command(flatten)]
        opts: ClientOpts,
        msg_id: u64,
        #[command(flatten)]
        conv: ferry::cli_push::ConvArgs,
    },
    /// Your conversations' state on all your devices: list, archive, unread, mute,
    /// draft, clear (history, for you), retention (for everyone in it).
    #[command(subcommand)]
    Conv(ferry::cli_conv::ConvCmd),
    /// Search the messages you may read (1:1 and your groups'), in any language.
    Search {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        filters: cli::SearchArgs,
        /// Words to find (all of them); "a phrase" in quotes; Chinese and Japanese as written.
        #[arg(default_value = "")]
        text: String,
    },
    /// Groups: create, add, remove, leave, info, list.
    #[command(subcommand)]
    Group(cli::GroupCmd),
    /// Print what arrives (messages, friend requests, receipts, group events …) as JSON
    /// lines.
    Listen {
        #[command(flatten)]
        opts: ClientOpts,
        /// Exit after this many messages (1:1 or group; other entries are printed but do
        /// not count).
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Download the media of received messages (thumbnail first) into this folder.
        #[arg(long, value_name = "DIR")]
        download: Option<PathBuf>,
    },
    /// The endpoint list the server hands this client (JSON lines, best first).
    Endpoints {
        /// Gateway address, IP:PORT (repeatable: asked in turn until one answers).
        #[arg(
            long,
            default_value = "127.0.0.1:8080",
            env = "FERRY_SERVER",
            value_delimiter = ','
        )]
        server: Vec<String>,
        #[command(flatten)]
        key: cli::KeyOpts,
    },
    /// Interactive line-based chat.
    Chat {
        #[command(flatten)]
        opts: ClientOpts,
        /// Default peer.
        #[arg(long)]
        to: Option<String>,
    },
    /// Friends: add, accept, decline, remove, block, unblock, list.
    #[command(subcommand)]
    Friends(cli::FriendsCmd),
    /// Your avatar, and other users'.
    #[command(subcommand)]
    Avatar(cli::AvatarCmd),
    /// The moments feed: post, timeline, like, comment, delete.
    #[command(subcommand)]
    Moments(cli::MomentsCmd),
    /// Platform push: this device's target (register, list, remove) and per-conversation
    /// settings (mute, unmute, all, prefs).
    #[command(subcommand)]
    Push(ferry::cli_push::PushCmd),
    /// Bot accounts and their API tokens (docs/bots.md).
    #[command(subcommand)]
    Bot(ferry::cli_bots::BotCommand),
    /// Upload a client log or crash file.
    Report {
        #[command(flatten)]
        opts: ClientOpts,
        file: PathBuf,
        /// "log", "crash", …
        #[arg(long, default_value = "log")]
        kind: String,
    },
    /// End this device's session (or every device's, with --all).
    Logout {
        #[command(flatten)]
        opts: ClientOpts,
        #[arg(long)]
        all: bool,
    },
    /// The configuration file: print the defaults, or check a file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Operator tools.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Measure a server: connections, memory, throughput, latency (see docs/benchmarks.md).
    Bench(ferry_bench::BenchArgs),
    /// A bench worker process (started by `ferry bench`).
    #[command(hide = true)]
    BenchWorker { spec: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every key at its default, as a TOML file to start from.
    Default,
    /// Load a file and the FERRY_* environment as `ferry serve` would, and say what is
    /// wrong (an unknown key, a wrong type, a bad value) or "ok".
    Check {
        /// TOML configuration file (none: the defaults and the environment only).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The dashboard's summary in the terminal.
    Status {
        /// Any gateway port of the server, IP:PORT.
        #[arg(long, default_value = "127.0.0.1:8080", env = "FERRY_SERVER")]
        server: String,
        /// The admin token (default: read from DATA/admin-token).
        #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The server's data folder, to find its generated admin token.
        #[arg(long, default_value = "ferry-data", env = "FERRY_DATA")]
        data: PathBuf,
        /// Redraw every two seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// List client log reports (JSON lines), or write one to a file with --get ID.
    Reports {
        /// The server's data folder (embedded store).
        #[arg(long, default_value = "ferry-data", env = "FERRY_DATA")]
        data: PathBuf,
        /// A cluster's PostgreSQL instead.
        #[arg(long, env = "FERRY_POSTGRES")]
        postgres: Option<String>,
        /// Write report ID to --out (default report-ID-FILENAME).
        #[arg(long)]
        get: Option<u64>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Platform push: send a test push to each of a user's devices.
    #[command(subcommand)]
    Push(AdminPushCommand),
    /// Users (admin API): list, show, create, disable, enable, logout, delete, export.
    #[command(subcommand)]
    Users(ferry::cli_users::UsersCmd),
    /// Webhook endpoints, dead letters and their redrive, stats (docs/webhooks.md).
    #[command(subcommand)]
    Webhooks(ferry::cli_webhooks::WebhooksCommand),
    /// The audit log of admin changes (admin API), newest first.
    Audit {
        #[command(flatten)]
        api: ferry::cli_api::ApiArgs,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the API's JSON instead of one line per change.
        #[arg(long)]
        json: bool,
    },
    /// Groups (admin API): list and search, show with members, dissolve.
    #[command(subcommand)]
    Groups(ferry::cli_ops::GroupsCmd),
    /// The search index of the logic node that answers (admin API): its size and how
    /// far behind the store it is.
    Search {
        #[command(flatten)]
        api: ferry::cli_api::ApiArgs,
    },
    /// Drop the answering logic node's search index and build it again from the store.
    Reindex {
        #[command(flatten)]
        api: ferry::cli_api::ApiArgs,
    },
    /// Recall any message (admin API), whoever sent it and however long ago.
    Recall {
        #[command(flatten)]
        api: ferry::cli_api::ApiArgs,
        msg_id: u64,
    },
    /// A system message to every user, or to the users given with --to (admin API).
    Broadcast {
        #[command(flatten)]
        api: ferry::cli_api::ApiArgs,
        text: String,
        /// User names, comma separated (default: every user).
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
    },
    /// A user's limits (admin API); --set NAME.FIELD=VALUE (or NAME=PER_SEC/BURST) sets an
    /// override, e.g. --set sends_per_user=1/5; --clear removes it.
    Limits {
        #[command(flatten)]
        api: ferry::cli_api::ApiArgs,
        user: String,
        #[arg(long)]
        set: Vec<String>,
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand)]
enum AdminPushCommand {
    /// Send a test push (kind "test") to each push target of USER with the real
    /// senders of the config file's [push] section; one line per target with the
    /// provider's answer. Targets the provider says are gone are removed.
    Test {
        /// The user's name.
        user: String,
        /// The server's data folder (embedded store).
        #[arg(long, default_value = "ferry-data", env = "FERRY_DATA")]
        data: PathBuf,
        /// A cluster's PostgreSQL instead.
        #[arg(long, env = "FERRY_POSTGRES")]
        postgres: Option<String>,
        /// The configuration file whose [push] section holds the providers' credentials
        /// (the server's own file).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            data,
            listen,
        } => {
            init_tracing("info");
            serve(config, data, listen).await
        }
        Command::Gateway {
            config,
            nats,
            listen,
            id,
        } => {
            init_tracing("info");
            run_gateway(config, nats, listen, id).await
        }
        Command::Logic {
            config,
            nats,
            postgres,
            media_dir,
        } => {
            init_tracing("info");
            run_logic(config, nats, postgres, media_dir).await
        }
        other => {
            init_tracing("warn");
            match other {
                Command::Register {
                    server,
                    user,
                    password,
                    key,
                } => cli::register(&server, &user, &password, &key).await,
                Command::Send {
                    opts,
                    to,
                    group,
                    mentions,
                    media,
                    text,
                } => match (to, group, text) {
                    (to, group, None) => match (to, group) {
                        (_, Some(g)) => {
                            cli::send_media(&opts, ferry_client::Dest::Group(g), &media).await
                        }
                        (Some(to), None) => {
                            cli::send_media(&opts, ferry_client::Dest::User(to), &media).await
                        }
                        (None, None) => Err(anyhow::anyhow!("--to or --group is required")),
                    },
                    (_, Some(g), Some(text)) => cli::send_group(&opts, g, &text, &mentions).await,
                    (Some(to), None, Some(text)) => cli::send(&opts, &to, &text).await,
                    (None, None, _) => Err(anyhow::anyhow!("--to or --group is required")),
                },
                Command::Recall { opts, msg_id } => cli::recall(&opts, msg_id).await,
                Command::Reply { opts, msg_id, text } => cli::reply(&opts, msg_id, &text).await,
                Command::Edit { opts, msg_id, text } => cli::edit(&opts, msg_id, &text).await,
                Command::React {
                    opts,
                    msg_id,
                    emoji,
                    remove,
                } => cli::react(&opts, msg_id, &emoji, remove).await,
                Command::Hide { opts, msg_ids } => cli::hide(&opts, &msg_ids).await,
                Command::Pin {
                    opts,
                    msg_id,
                    to,
                    group,
                    remove,
                } => {
                    let conv = match (to, group) {
                        (_, Some(g)) => Some(ferry_client::Conversation::Group(g)),
                        (Some(to), None) => Some(ferry_client::Conversation::Peer(to)),
                        (None, None) => None,
                    };
                    match conv {
                        Some(conv) => cli::pin(&opts, &conv, msg_id, remove).await,
                        None => Err(anyhow::anyhow!("--to or --group is required")),
                    }
                }
                Command::Forward { opts, msg_id, conv } => {
                    ferry::cli_conv::forward(&opts, &conv, msg_id).await
                }
                Command::Conv(cmd) => ferry::cli_conv::run(cmd).await,
                Command::Search {
                    opts,
                    filters,
                    text,
                } => cli::search(&opts, &text, &filters).await,
                Command::Group(cmd) => cli::group(cmd).await,
                Command::Listen {
                    opts,
                    count,
                    timeout,
                    download,
                } => cli::listen(&opts, count, timeout, download.as_deref()).await,
                Command::Chat { opts, to } => cli::chat(&opts, to).await,
                Command::Endpoints { server, key } => cli::endpoints(&server, &key).await,
                Command::Admin {
                    command:
                        AdminCommand::Status {
                            server,
                            token,
                            data,
                            watch,
                        },
                } => {
                    let target = ferry::monitor::status::Target {
                        server,
                        token,
                        data_dir: data,
                    };
                    ferry::monitor::status::run(&target, watch).await
                }
                Command::Config(ConfigCommand::Default) => {
                    print!("{}", Config::default_toml());
                    Ok(())
                }
                Command::Config(ConfigCommand::Check { config }) => Config::load(config.as_deref())
                    .map(|_| match config {
                        Some(path) => say(format_args!("{}: ok", path.display())),
                        None => say(format_args!("defaults and environment: ok")),
                    }),
                Command::Friends(cmd) => cli::friends(cmd).await,
                Command::Avatar(cmd) => cli::avatar(cmd).await,
                Command::Moments(cmd) => cli::moments(cmd).await,
                Command::Push(cmd) => ferry::cli_push::run(cmd).await,
                Command::Bot(cmd) => ferry::cli_bots::run(cmd).await,
                Command::Report { opts, file, kind } => cli::report(&opts, &file, &kind).await,
                Command::Logout { opts, all } => cli::logout(&opts, all).await,
                Command::Admin {
                    command: AdminCommand::Audit { api, limit, json },
                } => ferry::cli_api::audit(&api, limit, json).await,
                Command::Admin {
                    command: AdminCommand::Groups(cmd),
                } => ferry::cli_ops::groups(cmd).await,
                Command::Admin {
                    command: AdminCommand::Recall { api, msg_id },
                } => ferry::cli_ops::recall(&api, msg_id).await,
                Command::Admin {
                    command: AdminCommand::Search { api },
                } => ferry::cli_ops::search_stats(&api).await,
                Command::Admin {
                    command: AdminCommand::Reindex { api },
                } => ferry::cli_ops::reindex(&api).await,
                Command::Admin {
                    command: AdminCommand::Broadcast { api, text, to },
                } => ferry::cli_ops::broadcast(&api, &text, &to).await,
                Command::Admin {
                    command:
                        AdminCommand::Limits {
                            api,
                            user,
                            set,
                            clear,
                        },
                } => ferry::cli_ops::limits(&api, &user, &set, clear).await,
                Command::Admin {
                    command: AdminCommand::Users(cmd),
                } => ferry::cli_users::run(cmd).await,
                Command::Admin {
                    command: AdminCommand::Webhooks(cmd),
                } => ferry::cli_webhooks::run(cmd).await,
                Command::Admin {
                    command:
                        AdminCommand::Reports {
                            data,
                            postgres,
                            get,
                            out,
                            limit,
                        },
                } => match admin_store(&data, postgres).await {
                    Ok(store) => cli::admin_reports(store, get, out, limit).await,
                    Err(e) => Err(e),
                },
                Command::Admin {
                    command:
                        AdminCommand::Push(AdminPushCommand::Test {
                            user,
                            data,
                            postgres,
                            config,
                        }),
                } => {
                    async {
                        // As the server reads it: the file, then the FERRY_* environment.
                        let push = Config::load(config.as_deref())?.push;
                        let store = admin_store(&data, postgres).await?;
                        let results = ferry::cli_push::admin_push_test(store, &push, &user).await?;
                        ferry::cli_push::report_push_test(&results)
                    }
                    .await
                }
                Command::Bench(args) => ferry_bench::run(args).await,
                Command::BenchWorker { spec } => ferry_bench::worker::run(&spec).await,
                Command::Serve { .. } | Command::Gateway { .. } | Command::Logic { .. } => {
                    unreachable!()
                }
            }
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A start-up line on stdout for scripts and tests. A closed stdout (the reader went
/// away) must not take the server down, so errors are ignored.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The store an admin command reads: PostgreSQL when given, else the data folder.
async fn admin_store(
    data: &std::path::Path,
    postgres: Option<String>,
) -> anyhow::Result<std::sync::Arc<dyn ferry_store::Store>> {
    use anyhow::Context;
    Ok(match postgres {
        Some(url) => std::sync::Arc::new(
            ferry_store::PgStore::connect(&ferry_store::PgConfig::new(url))
                .await
                .context("connecting to PostgreSQL")?,
        ),
        None => {
            anyhow::ensure!(
                data.join("ferry.db").exists(),
                "no Ferry database in {} (use --data)",
                data.display()
            );
            std::sync::Arc::new(
                ferry_store::SqliteStore::open(data, ferry_store::Durability::Fsync)
                    .with_context(|| format!("opening {}", data.display()))?,
            )
        }
    })
}

async fn serve(
    config: Option<PathBuf>,
    data: Option<PathBuf>,
    listen: Vec<String>,
) -> anyhow::Result<()> {
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(d) = data {
        cfg.data_dir = d;
    }
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    let server = Server::bind(cfg.clone()).await?;
    say(format_args!(
        "ferry server key: {} (clients pin it: --server-key)",
        server.gateway.public_key_hex()
    ));
    say(format_args!(
        "ferry dashboard: {}",
        ferry::monitor::dashboard_url(server.addr(), server.monitor.token())
    ));
    say(format_args!(
        "ferry chat: {}",
        ferry::chat::chat_url(server.addr())
    ));
    // Last, once everything above is printed: tests and scripts wait for these lines
    // (the port) and may stop reading after them.
    for a in &server.addrs {
        say(format_args!("ferry listening on {a}"));
    }
    tracing::info!(data = %cfg.data_dir.display(), "ferry serving");
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn run_gateway(
    config: Option<PathBuf>,
    nats: Option<String>,
    listen: Vec<String>,
    id: Option<String>,
) -> anyhow::Result<()> {
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(n) = nats {
        cfg.cluster.nats = n;
    }
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    match id {
        Some(id) => cfg.gateway.id = id,
        None if std::env::var_os("FERRY_GATEWAY_ID").is_none() && config.is_none() => {
            cfg.gateway.id = ferry::cluster::random_gateway_id()
        }
        None => {}
    }
    let node = ferry::cluster::GatewayNode::bind(&cfg).await?;
    say(format_args!(
        "ferry server key: {} (clients pin it: --server-key)",
        node.gateway.public_key_hex()
    ));
    say(format_args!(
        "ferry dashboard: {}",
        ferry::monitor::dashboard_url(node.addrs[0], node.monitor.token())
    ));
    say(format_args!(
        "ferry chat: {}",
        ferry::chat::chat_url(node.addrs[0])
    ));
    // Tests and scripts read the addresses, then wait for the last line, "ready".
    for a in &node.addrs {
        say(format_args!("ferry listening on {a}"));
    }
    say(format_args!("ferry gateway {} ready", cfg.gateway.id));
    tracing::info!(id = %cfg.gateway.id, nats = %cfg.cluster.nats, "gateway serving");
    wait_for_signal().await;
    tracing::info!("shutting down: draining links");
    node.shutdown().await;
    Ok(())
}

async fn run_logic(
    config: Option<PathBuf>,
    nats: Option<String>,
    postgres: Option<String>,
    media_dir: Option<String>,
) -> anyhow::Result<()> {
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(n) = nats {
        cfg.cluster.nats = n;
    }
    if let Some(p) = postgres {
        cfg.cluster.postgres = p;
    }
    if let Some(d) = media_dir {
        cfg.cluster.media_dir = d;
    }
    let node = ferry::cluster::LogicNode::start(&cfg).await?;
    say(format_args!("ferry logic ready"));
    if let Some(addr) = node.http {
        say(format_args!(
            "ferry logic metrics and dashboard on http://{addr}/dashboard"
        ));
    }
    tracing::info!(nats = %cfg.cluster.nats, "logic serving");
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
