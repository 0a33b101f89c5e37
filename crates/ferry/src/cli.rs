//! The client commands: register, send, listen, chat.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_client::{Account, Client, ClientConfig, Event, FriendAction, ShortLink};
use ferry_proto::v1;
use tokio::io::AsyncBufReadExt;

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// Gateway address, IP:PORT. Repeat it (or separate with commas) to give several
    /// bootstrap candidates: they are raced until the server hands out its own list.
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "FERRY_SERVER",
        value_delimiter = ','
    )]
    pub server: Vec<String>,
    #[arg(long, env = "FERRY_USER")]
    pub user: String,
    #[arg(long, env = "FERRY_PASSWORD")]
    pub password: String,
    /// Where this device's id, token and synckey live (default: under the user's data dir).
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyOpts,
}

/// How a client command knows the server's key.
#[derive(Debug, Clone, Args)]
pub struct KeyOpts {
    /// The server's public key (64 hex digits, printed by `ferry serve`), pinned.
    /// Without it the first key the server shows is trusted and kept in the state folder.
    #[arg(long, env = "FERRY_SERVER_KEY")]
    pub server_key: Option<String>,
    /// A file holding the server's public key (hex).
    #[arg(long, conflicts_with = "server_key")]
    pub server_key_file: Option<PathBuf>,
    /// Talk plaintext (only to a server with `gateway.allow_plaintext = true`).
    #[arg(long, conflicts_with_all = ["server_key", "server_key_file"])]
    pub plaintext: bool,
}

impl KeyOpts {
    /// The configured security: pinned, plaintext, or trust on first use.
    pub fn security(&self) -> anyhow::Result<ferry_client::Security> {
        use ferry_client::Security;
        if self.plaintext {
            return Ok(Security::Plaintext);
        }
        let text = match (&self.server_key, &self.server_key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => {
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
            }
            (None, None) => return Ok(Security::TrustOnFirstUse),
        };
        Ok(Security::pinned_hex(&text)?)
    }

    /// A short link to `server` for a command without a device (register, endpoints).
    pub async fn short(&self, server: &str) -> anyhow::Result<ShortLink> {
        let key = match self.security()? {
            ferry_client::Security::Pinned(k) => Some(k),
            ferry_client::Security::Plaintext => None,
            ferry_client::Security::TrustOnFirstUse => Some(
                ferry_client::fetch_server_key(server)
                    .await
                    .with_context(|| format!("asking {server} for its key"))?,
            ),
        };
        Ok(ShortLink::sealed(server, key))
    }
}

impl ClientOpts {
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(|| {
            let base = dirs::data_dir().unwrap_or_else(|| PathBuf::from("."));
            base.join("ferry")
                .join(self.primary().replace([':', '/'], "_"))
                .join(&self.user)
        })
    }

    /// The first `--server`.
    pub fn primary(&self) -> &str {
        self.server.first().map_or("127.0.0.1:8080", String::as_str)
    }

    pub fn config(&self) -> anyhow::Result<ClientConfig> {
        let mut cfg = ClientConfig::new(self.primary(), &self.user, &self.password);
        cfg.security = self.key.security()?;
        cfg.servers = self.server.iter().skip(1).cloned().collect();
        cfg.state_dir = Some(self.state_dir());
        cfg.client_version = concat!("ferry-cli/", env!("CARGO_PKG_VERSION")).into();
        Ok(cfg)
    }
}

pub async fn register(
    server: &str,
    user: &str,
    password: &str,
    key: &KeyOpts,
) -> anyhow::Result<()> {
    let id = key
        .short(server)
        .await?
        .register(user, password)
        .await
        .with_context(|| format!("registering {user}"))?;
    println!("registered {user} (user id {id})");
    Ok(())
}

/// `ferry endpoints`: the endpoint list the server hands this client, as JSON lines
/// (best first). Asks each `--server` in turn until one answers.
pub async fn endpoints(servers: &[String], key: &KeyOpts) -> anyhow::Result<()> {
    let mut last = None;
    for server in servers {
        let short = match key.short(server).await {
            Ok(s) => s,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match short.endpoints(0).await {
            Ok(list) => {
                for e in &list.endpoints {
                    println!(
                        "{}",
                        serde_json::json!({
                            "ip": e.ip,
                            "port": e.port,
                            "transport": ferry_client::Transport::from_i32(e.transport)
                                .map_or("unknown", |t| t.name()),
                            "weight": e.weight,
                        })
                    );
                }
                eprintln!(
                    "from {server}: region {}, version {}, refresh every {} s",
                    list.region, list.version, list.refresh_secs
                );
                return Ok(());
            }
            Err(e) => last = Some(anyhow::anyhow!(e).context(format!("asking {server}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no --server given")))
}

/// How the client is connected, for `chat` and `listen`.
fn connected_line(endpoint: &ferry_client::Endpoint) -> String {
    let how = match endpoint.transport {
        ferry_client::Transport::Tcp => "long link over TCP",
        ferry_client::Transport::Http => "long link over HTTP long-poll",
    };
    format!("connected to {} ({how})", endpoint.addr)
}

pub async fn send(opts: &ClientOpts, to: &str, text: &str) -> anyhow::Result<()> {
    let (client, _events) = Client::connect(opts.config()?)
        .await
        .context("logging in")?;
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
        Some(v1::entry::Kind::Friend(f)) => serde_json::json!({
            "seq": e.seq,
            "kind": "friend",
            "event": f.kind().as_str_name(),
            "peer": f.peer,
            "greeting": f.greeting,
            "time_ms": e.time_ms,
        }),
        Some(v1::entry::Kind::Group(g)) => serde_json::json!({
            "seq": e.seq,
            "kind": "group",
            "event": g.kind().as_str_name(),
            "group_id": g.group_id,
            "users": g.users,
            "by": g.by,
            "text": g.text,
            "time_ms": e.time_ms,
        }),
        Some(v1::entry::Kind::Recall(r)) => serde_json::json!({
            "seq": e.seq,
            "kind": "recall",
            "msg_id": r.msg_id,
            "by": r.by,
        }),
        Some(v1::entry::Kind::Read(r)) => serde_json::json!({
            "seq": e.seq,
            "kind": "read",
            "reader": r.reader,
            "msg_id": r.msg_id,
        }),
        Some(v1::entry::Kind::Edit(x)) => serde_json::json!({
            "seq": e.seq,
            "kind": "edit",
            "msg_id": x.msg_id,
            "text": x.text,
            "edited_ms": x.edited_ms,
            "by": x.by,
        }),
        Some(v1::entry::Kind::Reaction(x)) => serde_json::json!({
            "seq": e.seq,
            "kind": "reaction",
            "msg_id": x.msg_id,
            "emoji": x.emoji,
            "add": x.add,
            "count": x.count,
            "by": x.by,
        }),
        Some(v1::entry::Kind::Hide(h)) => serde_json::json!({
            "seq": e.seq,
            "kind": "hide",
            "msg_ids": h.msg_ids,
        }),
        Some(v1::entry::Kind::Pin(x)) => serde_json::json!({
            "seq": e.seq,
            "kind": "pin",
            "msg_id": x.msg_id,
            "peer": x.peer,
            "pinned": x.pinned,
            "by": x.by,
        }),
        Some(v1::entry::Kind::Conv(c)) => {
            let mut j = crate::cli_conv::state_json(c);
            j["seq"] = e.seq.into();
            j["kind"] = "conv".into();
            j
        }
        Some(v1::entry::Kind::Moment(m)) => serde_json::json!({
            "seq": e.seq,
            "kind": "moment",
            "event": m.kind().as_str_name(),
            "moment_id": m.moment_id,
            "by": m.by,
            "text": m.text,
            "time_ms": e.time_ms,
        }),
        None => serde_json::json!({ "seq": e.seq, "kind": "unknown" }),
    }
}

/// Sends an image, file, voice note or video with a progress bar.
pub async fn send_media(
    opts: &ClientOpts,
    to: ferry_client::Dest,
    media: &crate::cli_media::MediaArgs,
) -> anyhow::Result<()> {
    let (client, _events) = Client::connect(opts.config()?)
        .await
        .context("logging in")?;
    let result = crate::cli_media::send(&client, to, media).await;
    client.close().await;
    result
}

/// Adds a message's media to its JSON line, downloading it into `dir` when given.
async fn with_media(
    client: &Client,
    mut line: serde_json::Value,
    media: Option<&v1::MediaRef>,
    dir: Option<&std::path::Path>,
) -> serde_json::Value {
    let Some(m) = media else { return line };
    let mut j = crate::cli_media::media_json(m);
    if let Some(dir) = dir {
        match crate::cli_media::download(client, m, dir).await {
            Ok(paths) => {
                if let (Some(j), Some(p)) = (j.as_object_mut(), paths.as_object()) {
                    j.extend(p.clone());
                }
            }
            Err(e) => j["download_error"] = format!("{e:#}").into(),
        }
    }
    line["media"] = j;
    line
}

pub async fn listen(
    opts: &ClientOpts,
    count: Option<u64>,
    timeout: Option<u64>,
    download: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (client, mut events) = Client::connect(opts.config()?)
        .await
        .context("logging in")?;
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
                let media = match &e.kind {
                    Some(v1::entry::Kind::Message(m)) if m.from != me => m.media.as_deref(),
                    _ => None,
                };
                let is_message = matches!(e.kind, Some(v1::entry::Kind::Message(_)));
                let line = with_media(&client, entry_json(&e, &me), media, download).await;
                println!("{line}");
                // `--count` counts messages; other entries (a friend request, a receipt)
                // are printed but do not count.
                seen += u64::from(is_message);
            }
            Some(Event::Group { group_id, entry }) => {
                let media = match &entry.kind {
                    Some(v1::group_entry::Kind::Message(m)) if m.from != me => m.media.as_deref(),
                    _ => None,
                };
                let line = with_media(
                    &client,
                    group_entry_json(group_id, &entry, &me),
                    media,
                    download,
                )
                .await;
                println!("{line}");
                seen += u64::from(matches!(
                    entry.kind,
                    Some(v1::group_entry::Kind::Message(_))
                ));
            }
            Some(Event::Typing { .. }) => {}
            Some(Event::Stopped { error }) => break Err(anyhow::anyhow!(error)),
            Some(Event::Disconnected { reason }) => {
                eprintln!("disconnected: {reason}; reconnecting")
            }
            Some(Event::Connected { endpoint, .. }) => eprintln!("{}", connected_line(&endpoint)),
            None => break Ok(()),
        }
    };
    client.close().await;
    result
}

pub async fn chat(opts: &ClientOpts, to: Option<String>) -> anyhow::Result<()> {
    let (client, mut events) = Client::connect(opts.config()?)
        .await
        .context("logging in")?;
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
                Some(Event::Group { group_id, entry }) => {
                    if let Some(v1::group_entry::Kind::Message(m)) = &entry.kind {
                        if m.from != me {
                            println!("[group {group_id}] {}: {}", m.from, m.text);
                        }
                    }
                }
                Some(Event::Typing { from }) => eprintln!("* {from} is typing…"),
                Some(Event::Disconnected { reason }) => eprintln!("* disconnected ({reason}); reconnecting"),
                Some(Event::Connected { endpoint, .. }) => eprintln!("* {}", connected_line(&endpoint)),
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

// ---- short-link state commands ----------------------------------------------------

/// `ferry friends …`
#[derive(Debug, Subcommand)]
pub enum FriendsCmd {
    /// Ask NAME to be friends.
    Add {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
        #[arg(long, default_value = "")]
        greeting: String,
    },
    /// Accept NAME's request.
    Accept {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
    },
    /// Decline NAME's request.
    Decline {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
    },
    /// Remove NAME from your friends (or withdraw your request).
    Remove {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
    },
    /// Block NAME: no messages, requests or moments from them.
    Block {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
    },
    /// Unblock NAME.
    Unblock {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
    },
    /// List friends and pending requests (JSON lines).
    List {
        #[command(flatten)]
        opts: ClientOpts,
        /// Only what changed since this list version.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
}

/// `ferry avatar …`
#[derive(Debug, Subcommand)]
pub enum AvatarCmd {
    /// Upload FILE (PNG, JPEG or WebP) as your avatar.
    Set {
        #[command(flatten)]
        opts: ClientOpts,
        file: PathBuf,
    },
    /// Download NAME's avatar.
    Get {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
        /// Where to write it (default NAME.jpg).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The 64×64 thumbnail instead.
        #[arg(long)]
        thumb: bool,
    },
}

/// `ferry moments …`
#[derive(Debug, Subcommand)]
pub enum MomentsCmd {
    /// Publish a moment to your friends.
    Post {
        #[command(flatten)]
        opts: ClientOpts,
        text: String,
        /// A media id to attach (repeatable).
        #[arg(long = "media")]
        media: Vec<String>,
    },
    /// Your and your friends' moments, newest first (JSON lines).
    Timeline {
        #[command(flatten)]
        opts: ClientOpts,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The `next_cursor` printed by the previous page.
        #[arg(long, default_value_t = 0)]
        cursor: u64,
    },
    /// Like a moment (or take the like back with --undo).
    Like {
        #[command(flatten)]
        opts: ClientOpts,
        id: u64,
        #[arg(long)]
        undo: bool,
    },
    /// Comment on a moment.
    Comment {
        #[command(flatten)]
        opts: ClientOpts,
        id: u64,
        text: String,
    },
    /// Delete one of your moments.
    Delete {
        #[command(flatten)]
        opts: ClientOpts,
        id: u64,
    },
}

async fn account(opts: &ClientOpts) -> anyhow::Result<Account> {
    Account::open(opts.config()?).await.context("signing in")
}

pub async fn friends(cmd: FriendsCmd) -> anyhow::Result<()> {
    let (opts, name, action) = match cmd {
        FriendsCmd::Add {
            opts,
            name,
            greeting,
        } => {
            let r = account(&opts)
                .await?
                .request_friend(&name, &greeting)
                .await?;
            println!("{name}: {}", r.state().as_str_name());
            return Ok(());
        }
        FriendsCmd::List { opts, since } => {
            let list = account(&opts).await?.friends(since).await?;
            for f in &list.friends {
                println!(
                    "{}",
                    serde_json::json!({
                        "user": f.username,
                        "user_id": f.user_id,
                        "state": f.state().as_str_name(),
                        "greeting": f.greeting,
                        "since_ms": f.since_ms,
                    })
                );
            }
            eprintln!("list version {}", list.version);
            return Ok(());
        }
        FriendsCmd::Accept { opts, name } => (opts, name, FriendAction::Accept),
        FriendsCmd::Decline { opts, name } => (opts, name, FriendAction::Decline),
        FriendsCmd::Remove { opts, name } => (opts, name, FriendAction::Remove),
        FriendsCmd::Block { opts, name } => (opts, name, FriendAction::Block),
        FriendsCmd::Unblock { opts, name } => (opts, name, FriendAction::Unblock),
    };
    let r = account(&opts).await?.friend(action, &name).await?;
    println!("{name}: {}", r.state().as_str_name());
    Ok(())
}

pub async fn avatar(cmd: AvatarCmd) -> anyhow::Result<()> {
    match cmd {
        AvatarCmd::Set { opts, file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let etag = account(&opts).await?.set_avatar(bytes).await?;
            println!("avatar set (etag {etag})");
        }
        AvatarCmd::Get {
            opts,
            name,
            out,
            thumb,
        } => {
            let got = account(&opts).await?.avatar(&name, thumb, None).await?;
            let (bytes, _) = got.context("the server answered 304 without a cached copy")?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.jpg")));
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} bytes)", out.display(), bytes.len());
        }
    }
    Ok(())
}

pub async fn moments(cmd: MomentsCmd) -> anyhow::Result<()> {
    match cmd {
        MomentsCmd::Post { opts, text, media } => {
            let r = account(&opts).await?.post_moment(&text, media).await?;
            println!("posted moment {}", r.moment_id);
        }
        MomentsCmd::Timeline {
            opts,
            limit,
            cursor,
        } => {
            let page = account(&opts).await?.timeline(cursor, limit).await?;
            for m in &page.moments {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": m.moment_id,
                        "author": m.author,
                        "text": m.text,
                        "media": m.media_ids,
                        "time_ms": m.time_ms,
                        "likes": m.likes.iter().map(|l| &l.username).collect::<Vec<_>>(),
                        "comments": m.comments.iter().map(|c| serde_json::json!({"user": c.username, "text": c.text})).collect::<Vec<_>>(),
                    })
                );
            }
            if page.next_cursor != 0 {
                eprintln!("more: --cursor {}", page.next_cursor);
            }
        }
        MomentsCmd::Like { opts, id, undo } => {
            account(&opts).await?.like_moment(id, undo).await?;
            println!("{} moment {id}", if undo { "unliked" } else { "liked" });
        }
        MomentsCmd::Comment { opts, id, text } => {
            let c = account(&opts).await?.comment_moment(id, &text).await?;
            println!("comment {c} added");
        }
        MomentsCmd::Delete { opts, id } => {
            account(&opts).await?.delete_moment(id).await?;
            println!("deleted moment {id}");
        }
    }
    Ok(())
}

pub async fn report(opts: &ClientOpts, file: &std::path::Path, kind: &str) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = account(opts).await?.report(kind, &name, data).await?;
    println!("report {id} stored");
    Ok(())
}

pub async fn logout(opts: &ClientOpts, all: bool) -> anyhow::Result<()> {
    let n = account(opts).await?.logout(all).await?;
    println!("logged out ({n} session{})", if n == 1 { "" } else { "s" });
    Ok(())
}

/// `ferry admin reports`: list client reports, or write one out.
pub async fn admin_reports(
    store: std::sync::Arc<dyn ferry_store::Store>,
    get: Option<u64>,
    out: Option<PathBuf>,
    limit: u32,
) -> anyhow::Result<()> {
    match get {
        Some(id) => {
            let (info, data) = store
                .report(id)
                .await?
                .with_context(|| format!("no report {id}"))?;
            let out =
                out.unwrap_or_else(|| PathBuf::from(format!("report-{id}-{}", info.file_name)));
            std::fs::write(&out, &data).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({} bytes)", out.display(), data.len());
        }
        None => {
            for r in store.reports(0, limit).await? {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": r.id,
                        "user_id": r.user_id,
                        "device": r.device_id,
                        "client_version": r.client_version,
                        "kind": r.kind,
                        "file": r.file_name,
                        "bytes": r.length,
                        "md5": r.md5,
                        "time_ms": r.created_ms,
                    })
                );
            }
        }
    }
    Ok(())
}

/// `ferry group …`
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a group (you are its owner); prints its id.
    Create {
        #[command(flatten)]
        opts: ClientOpts,
        name: String,
        /// Members to add at once (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
        /// New members may read what was said before they joined.
        #[arg(long)]
        share_history: bool,
    },
    /// Add members (admins and the owner).
    Add {
        #[command(flatten)]
        opts: ClientOpts,
        group: u64,
        users: Vec<String>,
    },
    /// Remove members (admins and the owner).
    Remove {
        #[command(flatten)]
        opts: ClientOpts,
        group: u64,
        users: Vec<String>,
    },
    /// Leave a group.
    Leave {
        #[command(flatten)]
        opts: ClientOpts,
        group: u64,
    },
    /// A group's name, announcement and members (JSON).
    Info {
        #[command(flatten)]
        opts: ClientOpts,
        group: u64,
    },
    /// Your groups (JSON lines).
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
}

fn group_json(g: &v1::Group) -> serde_json::Value {
    serde_json::json!({
        "group_id": g.group_id,
        "name": g.name,
        "announcement": g.announcement,
        "owner": g.owner,
        "latest_gseq": g.latest_gseq,
        "member_count": g.member_count,
        "members": g.members.iter().map(|m| serde_json::json!({
            "user": m.username,
            "role": m.role().as_str_name(),
        })).collect::<Vec<_>>(),
    })
}

pub async fn group(cmd: GroupCmd) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::Create {
            opts,
            name,
            members,
            share_history,
        } => {
            let refs: Vec<&str> = members.iter().map(String::as_str).collect();
            let g = account(&opts)
                .await?
                .create_group(&name, &refs, share_history)
                .await?;
            println!("{}", g.group_id);
        }
        GroupCmd::Add { opts, group, users } | GroupCmd::Remove { opts, group, users }
            if users.is_empty() =>
        {
            let _ = (opts, group);
            anyhow::bail!("name at least one user");
        }
        GroupCmd::Add { opts, group, users } => {
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            let g = account(&opts)
                .await?
                .group_members(group, &refs, true)
                .await?;
            println!("{}", group_json(&g));
        }
        GroupCmd::Remove { opts, group, users } => {
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            let g = account(&opts)
                .await?
                .group_members(group, &refs, false)
                .await?;
            println!("{}", group_json(&g));
        }
        GroupCmd::Leave { opts, group } => {
            account(&opts).await?.leave_group(group).await?;
            println!("left group {group}");
        }
        GroupCmd::Info { opts, group } => {
            println!(
                "{}",
                group_json(&account(&opts).await?.group_info(group).await?)
            );
        }
        GroupCmd::List { opts } => {
            for g in account(&opts).await?.groups().await? {
                println!("{}", group_json(&g));
            }
        }
    }
    Ok(())
}

pub async fn send_group(
    opts: &ClientOpts,
    group: u64,
    text: &str,
    mentions: &[String],
) -> anyhow::Result<()> {
    let (client, _events) = Client::connect(opts.config()?)
        .await
        .context("logging in")?;
    let refs: Vec<&str> = mentions.iter().map(String::as_str).collect();
    let result = client.send_group(group, text, &refs).await;
    client.close().await;
    let ack = result.context("sending")?;
    println!("sent msg_id={} gseq={}", ack.msg_id, ack.seq);
    Ok(())
}

pub async fn recall(opts: &ClientOpts, msg_id: u64) -> anyhow::Result<()> {
    let (client, _events) = Client::connect(opts.config()?)
        .await
        .context("logging in")?;
    let result = client.recall(msg_id).await;
    client.close().await;
    result.context("recalling")?;
    println!("recalled {msg_id}");
    Ok(())
}

/// A fresh login for a one-shot command (the caller closes it).
async fn login(opts: &ClientOpts) -> anyhow::Result<Client> {
    let (client, _events) = Client::connect(opts.config()?)
        .await
        .context("logging in")?;
    Ok(client)
}

pub async fn reply(opts: &ClientOpts, msg_id: u64, text: &str) -> anyhow::Result<()> {
    let client = login(opts).await?;
    let result = client.reply(msg_id, text).await;
    client.close().await;
    let ack = result.context("replying")?;
    println!("sent msg_id={} seq={}", ack.msg_id, ack.seq);
    Ok(())
}

pub async fn edit(opts: &ClientOpts, msg_id: u64, text: &str) -> anyhow::Result<()> {
    let client = login(opts).await?;
    let result = client.edit(msg_id, text).await;
    client.close().await;
    result.context("editing")?;
    println!("edited {msg_id}");
    Ok(())
}

pub async fn react(
    opts: &ClientOpts,
    msg_id: u64,
    emoji: &str,
    remove: bool,
) -> anyhow::Result<()> {
    let client = login(opts).await?;
    let result = if remove {
        client.unreact(msg_id, emoji).await
    } else {
        client.react(msg_id, emoji).await
    };
    client.close().await;
    result.context("reacting")?;
    let done = if remove { "took back" } else { "reacted" };
    println!("{done} {emoji} on {msg_id}");
    Ok(())
}

pub async fn hide(opts: &ClientOpts, msg_ids: &[u64]) -> anyhow::Result<()> {
    let client = login(opts).await?;
    let result = client.hide(msg_ids).await;
    client.close().await;
    result.context("hiding")?;
    println!("hid {} message(s)", msg_ids.len());
    Ok(())
}

pub async fn pin(
    opts: &ClientOpts,
    conv: &ferry_client::Conversation,
    msg_id: u64,
    remove: bool,
) -> anyhow::Result<()> {
    let client = login(opts).await?;
    let result = if remove {
        client.unpin(conv, msg_id).await
    } else {
        client.pin(conv, msg_id).await
    };
    client.close().await;
    result.context("pinning")?;
    println!("{} {msg_id}", if remove { "unpinned" } else { "pinned" });
    Ok(())
}

/// A group log entry as a JSON line.
pub fn group_entry_json(group: u64, e: &v1::GroupEntry, me: &str) -> serde_json::Value {
    use v1::group_entry::Kind;
    match &e.kind {
        Some(Kind::Message(m)) => serde_json::json!({
            "group_id": group, "gseq": e.gseq, "msg_id": m.msg_id, "from": m.from,
            "text": m.text, "mentions": m.mentions, "time_ms": m.time_ms, "outgoing": m.from == me,
        }),
        Some(Kind::Event(ev)) => serde_json::json!({
            "group_id": group, "gseq": e.gseq, "kind": "group_event",
            "event": ev.kind().as_str_name(), "users": ev.users, "by": ev.by, "text": ev.text,
        }),
        Some(Kind::Recall(r)) => serde_json::json!({
            "group_id": group, "gseq": e.gseq, "kind": "recall", "msg_id": r.msg_id, "by": r.by,
        }),
        Some(Kind::Edit(x)) => serde_json::json!({
            "group_id": group, "gseq": e.gseq, "kind": "edit", "msg_id": x.msg_id, "text": x.text,
            "edited_ms": x.edited_ms, "by": x.by,
        }),
        Some(Kind::Reaction(x)) => serde_json::json!({
            "group_id": group, "gseq": e.gseq, "kind": "reaction", "msg_id": x.msg_id,
            "emoji": x.emoji, "add": x.add, "count": x.count, "by": x.by,
        }),
        Some(Kind::Pin(x)) => serde_json::json!({
            "group_id": group, "gseq": e.gseq, "kind": "pin", "msg_id": x.msg_id,
            "pinned": x.pinned, "by": x.by,
        }),
        Some(Kind::Retention(x)) => serde_json::json!({
            "group_id": group, "gseq": e.gseq, "kind": "retention",
            "retention_secs": x.retention_secs, "by": x.by,
        }),
        None => serde_json::json!({ "group_id": group, "gseq": e.gseq, "kind": "removed" }),
    }
}

/// `ferry search`'s filters.
#[derive(Args, Debug, Clone, Default)]
pub struct SearchArgs {
    /// Only the 1:1 conversation with this user.
    #[arg(long = "with")]
    pub with: Option<String>,
    /// Only this group.
    #[arg(long)]
    pub group: Option<u64>,
    /// Only messages from this user.
    #[arg(long)]
    pub from: Option<String>,
    /// Only messages at or after this time (unix ms).
    #[arg(long)]
    pub since: Option<i64>,
    /// Only messages before this time (unix ms).
    #[arg(long)]
    pub until: Option<i64>,
    /// Only these kinds: text, image, file, voice, video (repeat or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Best match first (default: newest first).
    #[arg(long)]
    pub relevance: bool,
    /// Hits per page (1-100).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Every page, not only the first.
    #[arg(long)]
    pub all: bool,
}

/// `ferry search TEXT`: the matching messages as JSON lines, newest first, with the
/// matches marked [like this]; a last line on stderr says how many matched.
pub async fn search(opts: &ClientOpts, text: &str, args: &SearchArgs) -> anyhow::Result<()> {
    let kinds = args
        .kind
        .iter()
        .map(|k| match k.to_ascii_lowercase().as_str() {
            "text" => Ok(v1::SearchKind::Text),
            "image" => Ok(v1::SearchKind::Image),
            "file" => Ok(v1::SearchKind::File),
            "voice" => Ok(v1::SearchKind::Voice),
            "video" => Ok(v1::SearchKind::Video),
            other => Err(anyhow::anyhow!(
                "--kind {other:?}: one of text, image, file, voice, video"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let account = Account::open(opts.config()?).await.context("signing in")?;
    let mut req = v1::SearchReq {
        text: text.into(),
        peer: args.with.clone().unwrap_or_default(),
        group_id: args.group.unwrap_or(0),
        sender: args.from.clone().unwrap_or_default(),
        after_ms: args.since.unwrap_or(0),
        before_ms: args.until.unwrap_or(0),
        order: if args.relevance {
            v1::SearchOrder::Relevance as i32
        } else {
            v1::SearchOrder::Newest as i32
        },
        limit: args.limit.clamp(1, 100),
        highlight: true,
        ..Default::default()
    };
    req.kinds = kinds.into_iter().map(|k| k as i32).collect();
    let mut shown = 0u64;
    // Bounded: at most 10 000 pages.
    for _ in 0..10_000 {
        let resp = account.search(req.clone()).await.context("searching")?;
        for h in &resp.hits {
            let Some(m) = &h.message else { continue };
            println!(
                "{}",
                serde_json::json!({
                    "msg_id": m.msg_id.to_string(),
                    "from": m.from,
                    "to": m.to,
                    "group_id": m.group_id.to_string(),
                    "gseq": h.gseq,
                    "time_ms": m.time_ms,
                    "text": m.text,
                    "snippet": marked(&h.snippet, &h.ranges),
                })
            );
            shown += 1;
        }
        if !args.all || resp.next.is_empty() {
            eprintln!("{shown} shown of {} matching", resp.total);
            return Ok(());
        }
        req.page = resp.next;
    }
    Ok(())
}

/// A snippet with its matches in [brackets].
fn marked(snippet: &str, ranges: &[v1::TextRange]) -> String {
    let mut out = String::with_capacity(snippet.len() + 2 * ranges.len());
    let mut at = 0usize;
    for r in ranges {
        let (s, e) = (r.start as usize, r.end as usize);
        if s < at || e > snippet.len() || s > e {
            continue;
        }
        let (Some(before), Some(hit)) = (snippet.get(at..s), snippet.get(s..e)) else {
            continue;
        };
        out.push_str(before);
        out.push('[');
        out.push_str(hit);
        out.push(']');
        at = e;
    }
    out.push_str(snippet.get(at..).unwrap_or(""));
    out
}
