//! `ferry admin webhooks …`: webhook endpoints, their dead letters and stats, over the
//! admin API (docs/webhooks.md). Each command is one API call; the answer is printed
//! as JSON (one line per item for lists), so scripts can read it.

use anyhow::Context;
use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use crate::cli_api::{ApiArgs, ApiClient};

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints it with its secret (shown this once).
    Add {
        url: String,
        /// Event types, comma separated (`*`: all).
        #[arg(long, default_value = "*")]
        events: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The endpoints, one JSON line each.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove an endpoint (its queue and dead letters too).
    Remove {
        id: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A new secret for an endpoint; the old one keeps signing beside it for the grace.
    Rotate {
        id: u64,
        /// Seconds the old secret stays valid (default: the server's grace_secs).
        #[arg(long)]
        grace_secs: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Pause (`--off`) or resume (`--on`) an endpoint.
    Enable {
        id: u64,
        #[arg(long, conflicts_with = "on")]
        off: bool,
        #[arg(long)]
        on: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Dead letters, newest first, one JSON line each.
    Dead {
        #[arg(long)]
        endpoint: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Queue dead letters again: every one of endpoint ID, or one with --dead.
    Redrive {
        /// The endpoint whose dead letters to redrive.
        id: Option<u64>,
        /// One dead letter's id instead.
        #[arg(long, conflicts_with = "id")]
        dead: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delivered, failed, pending and dead per endpoint.
    Stats {
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn client(a: &ApiArgs) -> anyhow::Result<ApiClient> {
    ApiClient::new(a)
}

fn lines(v: &Value, key: &str) {
    if let Some(items) = v[key].as_array() {
        for i in items {
            println!("{i}");
        }
    }
}

pub async fn run(cmd: WebhooksCommand) -> anyhow::Result<()> {
    match cmd {
        WebhooksCommand::Add {
            url,
            events,
            description,
            api,
        } => {
            let events: Vec<&str> = events
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect();
            let v = client(&api)?
                .call(
                    Method::POST,
                    "admin/webhooks",
                    Some(json!({"url": url, "events": events, "description": description})),
                )
                .await?;
            println!("{v}");
        }
        WebhooksCommand::List { api } => lines(
            &client(&api)?
                .call(Method::GET, "admin/webhooks", None)
                .await?,
            "webhooks",
        ),
        WebhooksCommand::Remove { id, api } => {
            client(&api)?
                .call(Method::DELETE, &format!("admin/webhooks/{id}"), None)
                .await?;
            println!("removed {id}");
        }
        WebhooksCommand::Rotate {
            id,
            grace_secs,
            api,
        } => {
            let body = grace_secs.map(|g| json!({"grace_secs": g}));
            let v = client(&api)?
                .call(Method::POST, &format!("admin/webhooks/{id}/rotate"), body)
                .await?;
            println!("{v}");
        }
        WebhooksCommand::Enable { id, off, on, api } => {
            anyhow::ensure!(off || on, "say --on or --off");
            let v = client(&api)?
                .call(
                    Method::PATCH,
                    &format!("admin/webhooks/{id}"),
                    Some(json!({"enabled": on})),
                )
                .await?;
            println!("{v}");
        }
        WebhooksCommand::Dead {
            endpoint,
            limit,
            api,
        } => {
            let mut path = format!("admin/webhooks/dead?limit={limit}");
            if let Some(e) = endpoint {
                path.push_str(&format!("&endpoint={e}"));
            }
            lines(&client(&api)?.call(Method::GET, &path, None).await?, "dead");
        }
        WebhooksCommand::Redrive { id, dead, api } => {
            let path = match (id, dead) {
                (_, Some(d)) => format!("admin/webhooks/dead/{d}/redrive"),
                (Some(e), None) => format!("admin/webhooks/{e}/redrive"),
                (None, None) => anyhow::bail!("name an endpoint ID, or --dead ID"),
            };
            let v = client(&api)?
                .call(Method::POST, &path, None)
                .await
                .context("redrive")?;
            println!("{v}");
        }
        WebhooksCommand::Stats { api } => {
            let v = client(&api)?
                .call(Method::GET, "admin/webhooks/stats", None)
                .await?;
            lines(&v, "endpoints");
        }
    }
    Ok(())
}
