//! `ferry admin webhooks …`: webhook endpoints, their dead letters and stats, over the
//! admin API (docs/webhooks.md). Each command is one API call; the answer is printed
//! as JSON (one line per item for lists), so scripts can read it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cli_api::ApiClient;

/// Where the admin API is and who calls it.
#[derive(Args, Debug, Clone)]
pub struct ApiOpts {
    /// Any gateway port of the server, http://IP:PORT.
    #[arg(long, env = "FERRY_SERVER")]
    pub server: Option<String>,
    /// The admin token (default: read from DATA/admin-token).
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's data folder, to find its generated admin token.
    #[arg(long, default_value = "ferry-data", env = "FERRY_DATA")]
    pub data: PathBuf,
}

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
        api: ApiOpts,
    },
    /// The endpoints, one JSON line each.
    List {
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Remove an endpoint (its queue and dead letters too).
    Remove {
        id: u64,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// A new secret for an endpoint; the old one keeps signing beside it for the grace.
    Rotate {
        id: u64,
        /// Seconds the old secret stays valid (default: the server's grace_secs).
        #[arg(long)]
        grace_secs: Option<u64>,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Pause (`--off`) or resume (`--on`) an endpoint.
    Enable {
        id: u64,
        #[arg(long, conflicts_with = "on")]
        off: bool,
        #[arg(long)]
        on: bool,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Dead letters, newest first, one JSON line each.
    Dead {
        #[arg(long)]
        endpoint: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Queue dead letters again: every one of endpoint ID, or one with --dead.
    Redrive {
        /// The endpoint whose dead letters to redrive.
        id: Option<u64>,
        /// One dead letter's id instead.
        #[arg(long, conflicts_with = "id")]
        dead: Option<u64>,
        #[command(flatten)]
        api: ApiOpts,
    },
    /// Delivered, failed, pending and dead per endpoint.
    Stats {
        #[command(flatten)]
        api: ApiOpts,
    },
}

fn client(o: &ApiOpts) -> anyhow::Result<ApiClient> {
    ApiClient::from_args(o.server.clone(), o.token.clone(), o.data.clone())
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
                    "POST",
                    "admin/webhooks",
                    Some(json!({"url": url, "events": events, "description": description})),
                )
                .await?;
            println!("{v}");
        }
        WebhooksCommand::List { api } => {
            lines(&client(&api)?.call("GET", "admin/webhooks", None).await?, "webhooks")
        }
        WebhooksCommand::Remove { id, api } => {
            client(&api)?
                .call("DELETE", &format!("admin/webhooks/{id}"), None)
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
                .call("POST", &format!("admin/webhooks/{id}/rotate"), body)
                .await?;
            println!("{v}");
        }
        WebhooksCommand::Enable { id, off, on, api } => {
            anyhow::ensure!(off || on, "say --on or --off");
            let v = client(&api)?
                .call(
                    "PATCH",
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
            lines(&client(&api)?.call("GET", &path, None).await?, "dead");
        }
        WebhooksCommand::Redrive { id, dead, api } => {
            let path = match (id, dead) {
                (_, Some(d)) => format!("admin/webhooks/dead/{d}/redrive"),
                (Some(e), None) => format!("admin/webhooks/{e}/redrive"),
                (None, None) => anyhow::bail!("name an endpoint ID, or --dead ID"),
            };
            let v = client(&api)?
                .call("POST", &path, None)
                .await
                .context("redrive")?;
            println!("{v}");
        }
        WebhooksCommand::Stats { api } => {
            let v = client(&api)?.call("GET", "admin/webhooks/stats", None).await?;
            lines(&v, "endpoints");
        }
    }
    Ok(())
}
