//! `ferry conv …` and `ferry forward`: the user's per-conversation state (archive,
//! mark unread, mute, draft, clear history, retention) over the short link, and
//! forwarding a message (docs/protocol.md 4b). Printing and argument parsing only: the
//! rules are the server's, the requests the SDK's.

use anyhow::Context;
use clap::Subcommand;
use ferry_client::Conversation;
use ferry_proto::v1;

use crate::cli::ClientOpts;
use crate::cli_push::{parse_until, ConvArgs};

/// `ferry conv …`
#[derive(Debug, Subcommand)]
pub enum ConvCmd {
    /// Every conversation with a state (JSON lines).
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Archive a conversation on all your devices (--undo to unarchive).
    Archive {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
        #[arg(long)]
        undo: bool,
    },
    /// Mark a conversation unread (--undo to clear the mark; reading it clears it too).
    Unread {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
        #[arg(long)]
        undo: bool,
    },
    /// Mute a conversation (the same setting as `ferry push mute`); --undo unmutes.
    Mute {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
        /// Until when: a duration from now (90m, 8h, 7d) or unix ms. Default: for good.
        #[arg(long, conflicts_with = "undo")]
        until: Option<String>,
        #[arg(long)]
        undo: bool,
    },
    /// Keep an unsent text for a conversation on all your devices ("" removes it).
    Draft {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
        #[arg(long, allow_hyphen_values = true)]
        text: String,
    },
    /// Clear a conversation's history for yourself (every message up to now, on all
    /// your devices; the others keep theirs).
    Clear {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
    },
    /// Delete a conversation's messages older than this, for everyone in it (0: the
    /// server's retention only). In a group: owner and admins.
    Retention {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(flatten)]
        conv: ConvArgs,
        /// A duration: 90m, 8h, 7d, or seconds; 0 removes it.
        #[arg(long)]
        keep: String,
    },
}

/// `--keep`: seconds, or a duration (`90m`, `8h`, `7d`).
pub fn parse_keep(s: &str) -> anyhow::Result<u32> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("--keep {s:?}: expected seconds or a duration (90m, 8h, 7d)");
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let split = s.len().checked_sub(1).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u32 = n.parse().map_err(|_| bad())?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

fn conversation(c: &ConvArgs) -> anyhow::Result<Conversation> {
    match (&c.peer, c.group) {
        (_, Some(g)) => Ok(Conversation::Group(g)),
        (Some(p), None) => Ok(Conversation::Peer(p.clone())),
        (None, None) => Err(anyhow::anyhow!("a peer or --group is required")),
    }
}

/// A conversation's state as a JSON line.
pub fn state_json(s: &v1::ConvState) -> serde_json::Value {
    serde_json::json!({
        "peer": s.peer,
        "group_id": s.group_id,
        "archived": s.archived,
        "unread": s.unread,
        "muted_until_ms": s.muted_until_ms,
        "draft": s.draft,
        "draft_ms": s.draft_ms,
        "cleared_before_msg_id": s.cleared_before_msg_id,
        "retention_secs": s.retention_secs,
        "updated_ms": s.updated_ms,
    })
}

pub async fn run(cmd: ConvCmd) -> anyhow::Result<()> {
    let open = |opts: &ClientOpts| {
        let cfg = opts.config();
        async move {
            ferry_client::Account::open(cfg?)
                .await
                .context("signing in")
        }
    };
    let (opts, conv, set) = match cmd {
        ConvCmd::List { opts } => {
            for s in open(&opts).await?.conversations().await? {
                println!("{}", state_json(&s));
            }
            return Ok(());
        }
        ConvCmd::Archive { opts, conv, undo } => (
            opts,
            conv,
            v1::ConvSet {
                archived: Some(!undo),
                ..Default::default()
            },
        ),
        ConvCmd::Unread { opts, conv, undo } => (
            opts,
            conv,
            v1::ConvSet {
                unread: Some(!undo),
                ..Default::default()
            },
        ),
        ConvCmd::Mute {
            opts,
            conv,
            until,
            undo,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default();
            let until = match (undo, until) {
                (true, _) => 0,
                (false, None) => -1,
                (false, Some(u)) => parse_until(&u, now)?,
            };
            (
                opts,
                conv,
                v1::ConvSet {
                    muted_until_ms: Some(until),
                    ..Default::default()
                },
            )
        }
        ConvCmd::Draft { opts, conv, text } => (
            opts,
            conv,
            v1::ConvSet {
                draft: Some(text),
                ..Default::default()
            },
        ),
        ConvCmd::Clear { opts, conv } => (
            opts,
            conv,
            v1::ConvSet {
                clear: true,
                ..Default::default()
            },
        ),
        ConvCmd::Retention { opts, conv, keep } => (
            opts,
            conv,
            v1::ConvSet {
                retention_secs: Some(parse_keep(&keep)?),
                ..Default::default()
            },
        ),
    };
    let c = conversation(&conv)?;
    let (peer, group_id) = match &c {
        Conversation::Peer(p) => (p.clone(), 0),
        Conversation::Group(g) => (String::new(), *g),
    };
    let set = v1::ConvSet {
        peer: peer.clone(),
        group_id,
        ..set
    };
    let all = open(&opts)
        .await?
        .conv_set(vec![set])
        .await
        .context("changing the conversation")?;
    let state = all
        .into_iter()
        .find(|s| s.peer == peer && s.group_id == group_id)
        .unwrap_or(v1::ConvState {
            peer,
            group_id,
            ..Default::default()
        });
    println!("{}", state_json(&state));
    Ok(())
}

/// `ferry forward`: forwards a message you may read to a peer or a group; prints the
/// new message's id.
pub async fn forward(opts: &ClientOpts, conv: &ConvArgs, msg_id: u64) -> anyhow::Result<()> {
    let to = conversation(conv)?;
    let (client, _events) = ferry_client::Client::connect(opts.config()?)
        .await
        .context("logging in")?;
    let result = client.forward(&to, msg_id).await;
    client.close().await;
    let ack = result.context("forwarding")?;
    println!("{}", ack.msg_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_takes_seconds_or_durations() {
        assert_eq!(parse_keep("0").unwrap(), 0);
        assert_eq!(parse_keep("90").unwrap(), 90);
        assert_eq!(parse_keep("90m").unwrap(), 5_400);
        assert_eq!(parse_keep("7d").unwrap(), 604_800);
        for bad in ["", "x", "7w", "-5", "99999999d"] {
            assert!(parse_keep(bad).is_err(), "{bad}");
        }
    }
}
