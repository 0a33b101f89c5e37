//! `ferry admin users …`: the admin API's users (docs/admin-api.md, Users) from the
//! terminal, over HTTP with the admin token (`crate::cli_api::ApiClient`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use crate::cli_api::{print, ApiArgs, ApiClient};

/// `ferry admin users …`
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// List users (JSON lines), or those whose name contains --query.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Part of the name, any case.
        #[arg(long, short)]
        query: Option<String>,
        /// At most this many (all when not given).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// One user with their devices (JSON).
    Show {
        #[command(flatten)]
        api: ApiArgs,
        user: String,
    },
    /// Create a user (the password from --password or the FERRY_NEW_PASSWORD variable).
    Create {
        #[command(flatten)]
        api: ApiArgs,
        user: String,
        #[arg(long, env = "FERRY_NEW_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Disable (ban) a user: sessions end, live links are kicked, sign-in is refused.
    Disable {
        #[command(flatten)]
        api: ApiArgs,
        user: String,
        /// Why (the user is told).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let a disabled user sign in again.
    Enable {
        #[command(flatten)]
        api: ApiArgs,
        user: String,
    },
    /// End every session of a user and kick their live links.
    Logout {
        #[command(flatten)]
        api: ApiArgs,
        user: String,
    },
    /// Delete a user and all their data (messages they sent are recalled). Asks for --yes.
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        user: String,
        /// Yes, delete them: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Write a user's data as a tar archive (default USER.tar; - for stdout).
    Export {
        #[command(flatten)]
        api: ApiArgs,
        user: String,
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

/// A path segment, percent-encoded (user names are plain, but never trust that).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prints a JSON answer for a person.
fn show(v: &Value) -> anyhow::Result<()> {
    print(v);
    Ok(())
}

pub async fn run(cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::List { api, query, limit } => {
            let client = ApiClient::new(&api)?;
            let mut after: Option<u64> = None;
            let mut printed = 0u64;
            let want = limit.unwrap_or(u64::MAX);
            // Bounded by the users there are: each page moves `after` on.
            while printed < want {
                let page_size = (want - printed).min(1000);
                let mut path = format!(
                    "admin/users?limit={page_size}&q={}",
                    seg(query.as_deref().unwrap_or(""))
                );
                if let Some(a) = after {
                    path.push_str(&format!("&after={a}"));
                }
                let page = client.call(Method::GET, &path, None).await?;
                let users = page["users"].as_array().cloned().unwrap_or_default();
                for u in &users {
                    println!("{}", serde_json::to_string(u)?);
                    printed += 1;
                }
                match page["next"].as_str().and_then(|n| n.parse().ok()) {
                    Some(n) if !users.is_empty() => after = Some(n),
                    _ => break,
                }
            }
            Ok(())
        }
        UsersCmd::Show { api, user } => show(
            &ApiClient::new(&api)?
                .call(Method::GET, &format!("admin/users/{}", seg(&user)), None)
                .await?,
        ),
        UsersCmd::Create {
            api,
            user,
            password,
        } => show(
            &ApiClient::new(&api)?
                .call(
                    Method::POST,
                    "admin/users",
                    Some(json!({ "name": user, "password": password })),
                )
                .await?,
        ),
        UsersCmd::Disable { api, user, reason } => show(
            &ApiClient::new(&api)?
                .call(
                    Method::POST,
                    &format!("admin/users/{}/disable", seg(&user)),
                    Some(json!({ "reason": reason })),
                )
                .await?,
        ),
        UsersCmd::Enable { api, user } => show(
            &ApiClient::new(&api)?
                .call(
                    Method::POST,
                    &format!("admin/users/{}/enable", seg(&user)),
                    None,
                )
                .await?,
        ),
        UsersCmd::Logout { api, user } => show(
            &ApiClient::new(&api)?
                .call(
                    Method::POST,
                    &format!("admin/users/{}/logout", seg(&user)),
                    None,
                )
                .await?,
        ),
        UsersCmd::Delete { api, user, yes } => {
            anyhow::ensure!(
                yes,
                "deleting {user} removes the account and all their data for good; \
                 run again with --yes"
            );
            show(
                &ApiClient::new(&api)?
                    .call(Method::DELETE, &format!("admin/users/{}", seg(&user)), None)
                    .await?,
            )
        }
        UsersCmd::Export { api, user, out } => {
            let client = ApiClient::new(&api)?;
            let path = format!("admin/users/{}/export", seg(&user));
            match out.as_deref() {
                Some(p) if p.as_os_str() == "-" => {
                    let mut stdout = tokio::io::stdout();
                    client.download(&path, &mut stdout).await.map(|_| ())
                }
                _ => {
                    let file = out.unwrap_or_else(|| PathBuf::from(format!("{user}.tar")));
                    let partial = file.with_extension("tar.part");
                    let mut f = tokio::fs::File::create(&partial)
                        .await
                        .with_context(|| format!("creating {}", partial.display()))?;
                    client.download(&path, &mut f).await?;
                    f.sync_all().await?;
                    tokio::fs::rename(&partial, &file).await?;
                    eprintln!("wrote {}", file.display());
                    Ok(())
                }
            }
        }
    }
}
