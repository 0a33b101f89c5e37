//! `ferry admin groups|recall|broadcast|limits …`: the admin API's operations
//! (docs/admin-api.md, Operations) from the command line, through [`ApiClient`].

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::cli_api::{print, ApiArgs, ApiClient};

/// `ferry admin groups …`
#[derive(Debug, Subcommand)]
pub enum GroupsCmd {
    /// Groups in id order with their member counts, dissolved ones marked.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Only groups whose name contains this (ignoring case).
        #[arg(long, short)]
        query: Option<String>,
        /// Groups with an id above this (the previous page's `next`).
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print the API's JSON instead of one line per group.
        #[arg(long)]
        json: bool,
    },
    /// One group with its members (JSON).
    Show {
        #[command(flatten)]
        api: ApiArgs,
        group: u64,
    },
    /// Dissolve a group: every member is removed and their devices drop it.
    Dissolve {
        #[command(flatten)]
        api: ApiArgs,
        group: u64,
    },
}

pub async fn groups(cmd: GroupsCmd) -> anyhow::Result<()> {
    match cmd {
        GroupsCmd::List {
            api,
            query,
            after,
            limit,
            json,
        } => {
            let mut path = format!("admin/groups?limit={limit}");
            if let Some(q) = query {
                path.push_str("&q=");
                path.push_str(&urlencode(&q));
            }
            if let Some(a) = after {
                path.push_str(&format!("&after={a}"));
            }
            let v = ApiClient::new(&api)?
                .call(http::Method::GET, &path, None)
                .await?;
            if json {
                print(&v);
                return Ok(());
            }
            for g in v["groups"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<32} owner {:<16} {:>5} members{}",
                    g["id"].as_str().unwrap_or(""),
                    g["name"].as_str().unwrap_or(""),
                    g["owner"].as_str().unwrap_or(""),
                    g["member_count"],
                    if g["dissolved"].as_bool() == Some(true) {
                        "  (dissolved)"
                    } else {
                        ""
                    }
                );
            }
            if let Some(next) = v["next"].as_str() {
                eprintln!("more: --after {next}");
            }
            Ok(())
        }
        GroupsCmd::Show { api, group } => {
            let v = ApiClient::new(&api)?
                .call(http::Method::GET, &format!("admin/groups/{group}"), None)
                .await?;
            print(&v);
            Ok(())
        }
        GroupsCmd::Dissolve { api, group } => {
            let v = ApiClient::new(&api)?
                .call(http::Method::DELETE, &format!("admin/groups/{group}"), None)
                .await?;
            println!(
                "group {group} dissolved; {} members removed",
                v["members_removed"]
            );
            Ok(())
        }
    }
}

/// `ferry admin recall MSG_ID`
pub async fn recall(api: &ApiArgs, msg_id: u64) -> anyhow::Result<()> {
    let v = ApiClient::new(api)?
        .call(
            http::Method::POST,
            &format!("admin/messages/{msg_id}/recall"),
            None,
        )
        .await?;
    match v["group_id"].as_str() {
        Some(g) => println!("message {msg_id} recalled from group {g}"),
        None => println!("message {msg_id} recalled"),
    }
    Ok(())
}

/// `ferry admin search`: the answering logic node's search index.
pub async fn search_stats(api: &ApiArgs) -> anyhow::Result<()> {
    let v = ApiClient::new(api)?
        .call(http::Method::GET, "admin/search", None)
        .await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `ferry admin reindex`: drop the answering logic node's search index and build it again.
pub async fn reindex(api: &ApiArgs) -> anyhow::Result<()> {
    ApiClient::new(api)?
        .call(http::Method::POST, "admin/search/reindex", None)
        .await?;
    println!("reindexing: `ferry admin search` shows the progress");
    Ok(())
}

/// `ferry admin broadcast TEXT [--to a,b]`
pub async fn broadcast(api: &ApiArgs, text: &str, to: &[String]) -> anyhow::Result<()> {
    let mut body = json!({ "text": text });
    if !to.is_empty() {
        body["to"] = json!(to);
    }
    let v = ApiClient::new(api)?
        .call(http::Method::POST, "admin/broadcast", Some(body))
        .await?;
    println!("sent to {} users", v["recipients"]);
    Ok(())
}

/// `ferry admin limits USER [--set k=v]… [--clear]`: shows the user's limits, sets
/// (`--set sends_per_user.per_sec=1 --set sends_per_user.burst=5`) or clears the
/// override.
pub async fn limits(api: &ApiArgs, user: &str, set: &[String], clear: bool) -> anyhow::Result<()> {
    let client = ApiClient::new(api)?;
    let path = format!("admin/users/{}/limits", urlencode(user));
    if clear {
        if !set.is_empty() {
            anyhow::bail!("--clear and --set do not go together");
        }
        client.call(http::Method::DELETE, &path, None).await?;
        println!("{user}: override cleared; the configured limits apply");
        return Ok(());
    }
    if !set.is_empty() {
        client
            .call(http::Method::PUT, &path, Some(override_body(set)?))
            .await?;
    }
    print(&client.call(http::Method::GET, &path, None).await?);
    Ok(())
}

/// The override's JSON from `NAME.FIELD=VALUE` pairs (`sends_per_user.per_sec=1`);
/// `NAME=PER_SEC/BURST` sets both fields at once.
fn override_body(set: &[String]) -> anyhow::Result<Value> {
    let mut out = Map::new();
    for kv in set {
        let (key, value) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected NAME.FIELD=VALUE"))?;
        let num = |s: &str| -> anyhow::Result<f64> {
            s.trim()
                .parse::<f64>()
                .with_context(|| format!("--set {kv}: {s:?} is not a number"))
        };
        let (name, field) = match key.split_once('.') {
            Some((n, f)) => (n, Some(f)),
            None => (key, None),
        };
        let rate = out
            .entry(name.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .context("a rate is an object")?;
        match field {
            Some(f @ ("per_sec" | "burst")) => {
                rate.insert(f.to_owned(), json!(num(value)?));
            }
            Some(f) => anyhow::bail!("--set {kv}: unknown field {f:?} (per_sec or burst)"),
            None => {
                let (per_sec, burst) = value
                    .split_once('/')
                    .with_context(|| format!("--set {kv}: expected NAME=PER_SEC/BURST"))?;
                rate.insert("per_sec".into(), json!(num(per_sec)?));
                rate.insert("burst".into(), json!(num(burst)?));
            }
        }
    }
    for (name, rate) in &out {
        for f in ["per_sec", "burst"] {
            if rate.get(f).is_none() {
                anyhow::bail!("{name}: set both per_sec and burst");
            }
        }
    }
    Ok(Value::Object(out))
}

/// Percent-encodes a query value or path segment.
fn urlencode(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_built_from_set_pairs() {
        let v = override_body(&[
            "sends_per_user.per_sec=0.5".into(),
            "sends_per_user.burst=3".into(),
        ])
        .unwrap();
        assert_eq!(v, json!({"sends_per_user": {"per_sec": 0.5, "burst": 3.0}}));
        let v = override_body(&["sends_per_user=2/10".into()]).unwrap();
        assert_eq!(
            v,
            json!({"sends_per_user": {"per_sec": 2.0, "burst": 10.0}})
        );
        assert!(override_body(&["sends_per_user.per_sec=1".into()]).is_err());
        assert!(override_body(&["sends_per_user.speed=1".into()]).is_err());
        assert!(override_body(&["sends_per_user.burst=lots".into()]).is_err());
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
