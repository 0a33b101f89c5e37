//! `ferry`: the server and its command-line client.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry::cli::{self, ClientOpts};
use ferry::{Config, Server};

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
    /// Create an account.
    Register {
        #[arg(long, default_value = "127.0.0.1:8080", env = "FERRY_SERVER")]
        server: String,
        #[arg(long, env = "FERRY_USER")]
        user: String,
        #[arg(long, env = "FERRY_PASSWORD")]
        password: String,
    },
    /// Send one text message and print its id once the server has stored it.
    Send {
        #[command(flatten)]
        opts: ClientOpts,
        /// Recipient user name.
        #[arg(long)]
        to: String,
        text: String,
    },
    /// Print received messages as JSON lines.
    Listen {
        #[command(flatten)]
        opts: ClientOpts,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Interactive line-based chat.
    Chat {
        #[command(flatten)]
        opts: ClientOpts,
        /// Default peer.
        #[arg(long)]
        to: Option<String>,
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
        other => {
            init_tracing("warn");
            match other {
                Command::Register {
                    server,
                    user,
                    password,
                } => cli::register(&server, &user, &password).await,
                Command::Send { opts, to, text } => cli::send(&opts, &to, &text).await,
                Command::Listen {
                    opts,
                    count,
                    timeout,
                } => cli::listen(&opts, count, timeout).await,
                Command::Chat { opts, to } => cli::chat(&opts, to).await,
                Command::Serve { .. } => unreachable!(),
            }
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
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
    for a in &server.addrs {
        // Tests and scripts read this line to find the port.
        println!("ferry listening on {a}");
    }
    tracing::info!(data = %cfg.data_dir.display(), "ferry serving");
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
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
