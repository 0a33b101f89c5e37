//! The client commands: register, send, listen, chat.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_client::{Client, ClientConfig, Event, ShortLink};
use ferry_proto::v1;
use tokio::io::AsyncBufReadExt;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Gateway address, IP:PORT.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FERRY_SERVER")]
    pub server: String,
    #[arg(long, env = "FERRY_USER")]
    pub user: String,
    #[arg(long, env = "FERRY_PASSWORD")]
    pub password: String,
    /// Where this device's id, token and synckey live (default: under the user's data dir).
    #[arg(long)]
    pub state: Option<PathBuf>,
}

impl ClientOpts {
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(|| {
            let base = dirs::data_dir().unwrap_or_else(|| PathBuf::from("."));
            base.join("ferry")
                .join(self.server.replace([':', '/'], "_"))
                .join(&self.user)
        })
    }

    pub fn config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new(&self.server, &self.user, &self.password);
        cfg.state_dir = Some(self.state_dir());
        cfg.client_version = concat!("ferry-cli/", env!("CARGO_PKG_VERSION")).into();
        cfg
    }
}

pub async fn register(server: &str, user: &str, password: &str) -> anyhow::Result<()> {
    let id = ShortLink::new(server)
        .register(user, password)
        .await
        .with_context(|| format!("registering {user}"))?;
    println!("registered {user} (user id {id})");
    Ok(())
}

pub async fn send(opts: &ClientOpts, to: &str, text: &str) -> anyhow::Result<()> {
    let (client, _events) = Client::connect(opts.config()).await.context("logging in")?;
    let result = client.send_text(to, text).await;
    client.close().await;
    let ack = result.context("sending")?;
    println!("sent msg_id={} seq={}", ack.msg_id, ack.seq);
    Ok(())
}

/// One received entry as a JSON line.
pub fn entry_json(e: &v1::Entry, me: &str) -> serde_json::Value {
    match &e.kind {
        Some(v1::entry::Kind::Message(m)) => serde_json::json!({
            "seq": e.seq,
            "msg_id": m.msg_id,
            "from": m.from,
            "to": m.to,
            "text": m.text,
            "time_ms": m.time_ms,
            "outgoing": m.from == me,
        }),
        None => serde_json::json!({ "seq": e.seq, "kind": "unknown" }),
    }
}

pub async fn listen(
    opts: &ClientOpts,
    count: Option<u64>,
    timeout: Option<u64>,
) -> anyhow::Result<()> {
    let (client, mut events) = Client::connect(opts.config()).await.context("logging in")?;
    let me = client.username();
    let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    let result = loop {
        if count.is_some_and(|c| seen >= c) {
            break Ok(());
        }
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, events.recv()).await {
                Ok(e) => e,
                Err(_) => break Ok(()),
            },
            None => events.recv().await,
        };
        match next {
            Some(Event::Entry(e)) => {
                println!("{}", entry_json(&e, &me));
                seen += 1;
            }
            Some(Event::Stopped { error }) => break Err(anyhow::anyhow!(error)),
            Some(Event::Disconnected { reason }) => {
                eprintln!("disconnected: {reason}; reconnecting")
            }
            Some(Event::Connected { .. }) => {}
            None => break Ok(()),
        }
    };
    client.close().await;
    result
}

pub async fn chat(opts: &ClientOpts, to: Option<String>) -> anyhow::Result<()> {
    let (client, mut events) = Client::connect(opts.config()).await.context("logging in")?;
    let me = client.username();
    let mut peer = to;
    eprintln!("logged in as {me}. Type a line to send it{}; \"@name text\" sends to name, \"/to name\" changes the peer, \"/quit\" leaves.",
        peer.as_deref().map(|p| format!(" to {p}")).unwrap_or_default());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Entry(e)) => {
                    if let Some(v1::entry::Kind::Message(m)) = &e.kind {
                        if m.from != me {
                            println!("{}: {}", m.from, m.text);
                        }
                    }
                }
                Some(Event::Disconnected { reason }) => eprintln!("* disconnected ({reason}); reconnecting"),
                Some(Event::Connected { .. }) => eprintln!("* connected"),
                Some(Event::Stopped { error }) => { client.close().await; return Err(anyhow::anyhow!(error)); }
                None => break,
            },
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.is_empty() { continue; }
                if line == "/quit" { break; }
                if let Some(name) = line.strip_prefix("/to ") {
                    peer = Some(name.trim().to_owned());
                    eprintln!("* now talking to {}", name.trim());
                    continue;
                }
                let (target, text) = match line.strip_prefix('@').and_then(|r| r.split_once(' ')) {
                    Some((name, text)) => (Some(name.to_owned()), text.to_owned()),
                    None => (peer.clone(), line.to_owned()),
                };
                let Some(target) = target else {
                    eprintln!("* no peer: use \"@name text\" or \"/to name\"");
                    continue;
                };
                match client.send_text(&target, &text).await {
                    Ok(ack) => eprintln!("* delivered (msg {})", ack.msg_id),
                    Err(e) => eprintln!("* not sent: {e}"),
                }
            }
        }
    }
    client.close().await;
    Ok(())
}
