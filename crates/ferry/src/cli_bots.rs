//! `ferry bot …`: bot accounts and their API tokens, over the admin API (docs/bots.md).

use clap::Subcommand;
use serde_json::{json, Value};

use crate::cli_api::{ApiArgs, ApiClient};

#[derive(Subcommand, Debug)]
pub enum BotCommand {
    /// Create a bot account; prints its first token (shown once).
    Create {
        name: String,
        /// Comma separated: send, read, group_admin (default send,read).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the bots and their tokens (ids, scopes, last use).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Another token for a bot; prints it (shown once).
    Token {
        name: String,
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a bot's token by its id (see `ferry bot list`).
    Revoke {
        name: String,
        id: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn client(api: &ApiArgs) -> anyhow::Result<ApiClient> {
    ApiClient::new(api)
}

fn scopes(s: &[String]) -> Value {
    if s.is_empty() {
        json!({})
    } else {
        json!({ "scopes": s })
    }
}

fn when(ms: &Value) -> String {
    match ms.as_i64() {
        Some(0) | None => "never".into(),
        Some(ms) => format!("{ms}"),
    }
}

pub async fn run(cmd: BotCommand) -> anyhow::Result<()> {
    match cmd {
        BotCommand::Create {
            name,
            scopes: s,
            api,
        } => {
            let mut body = scopes(&s);
            body["name"] = json!(name);
            let v = client(&api)?
                .call(http::Method::POST, "admin/bots", Some(body))
                .await?;
            println!(
                "bot {} (id {}) created; its token (id {}, scopes {}):",
                v["bot"]["name"].as_str().unwrap_or_default(),
                v["bot"]["id"].as_str().unwrap_or_default(),
                v["token_id"],
                v["scopes"]
            );
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        BotCommand::List { api } => {
            let v = client(&api)?
                .call(http::Method::GET, "admin/bots", None)
                .await?;
            for b in v["bots"].as_array().into_iter().flatten() {
                println!(
                    "{} (id {})",
                    b["name"].as_str().unwrap_or_default(),
                    b["id"].as_str().unwrap_or_default()
                );
                for t in b["tokens"].as_array().into_iter().flatten() {
                    println!(
                        "  token {}  scopes {}  created_ms {}  last used {}",
                        t["id"],
                        t["scopes"],
                        t["created_ms"],
                        when(&t["last_used_ms"])
                    );
                }
            }
        }
        BotCommand::Token {
            name,
            scopes: s,
            api,
        } => {
            let v = client(&api)?
                .call(
                    http::Method::POST,
                    &format!("admin/bots/{name}/tokens"),
                    Some(scopes(&s)),
                )
                .await?;
            println!("token {} of {name} (scopes {}):", v["id"], v["scopes"]);
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        BotCommand::Revoke { name, id, api } => {
            client(&api)?
                .call(
                    http::Method::DELETE,
                    &format!("admin/bots/{name}/tokens/{id}"),
                    None,
                )
                .await?;
            println!("token {id} of {name} revoked");
        }
    }
    Ok(())
}
