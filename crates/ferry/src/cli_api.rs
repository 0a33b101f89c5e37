//! The admin API from the command line: [`ApiArgs`] (where the server is, which token)
//! flattened into every `ferry admin …` and `ferry bot …` command that calls it, and
//! [`ApiClient`], which calls `/v1/admin/…` with the admin token and hands back the JSON
//! (or the API's own error message). `ferry admin audit` lives here too.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::monitor::token;

/// Where the admin API is and how to prove being its admin.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Any gateway port of the server, IP:PORT.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FERRY_SERVER")]
    pub server: String,
    /// The admin token (default: read from DATA/admin-token).
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's data folder, to find its generated admin token.
    #[arg(long, default_value = "ferry-data", env = "FERRY_DATA")]
    pub data: PathBuf,
}

/// A client of the admin API.
pub struct ApiClient {
    server: String,
    token: String,
    actor: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// How long one call may take (an export streams as long as it has data).
const TIMEOUT: Duration = Duration::from_secs(60);

impl ApiClient {
    pub fn new(args: &ApiArgs) -> anyhow::Result<ApiClient> {
        let token = match args.token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => t.to_owned(),
            None => {
                let file = token::path(&args.data);
                std::fs::read_to_string(&file)
                    .with_context(|| {
                        format!(
                            "no --token given and {} cannot be read (use --token or FERRY_ADMIN_TOKEN)",
                            file.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // Who acts, for the audit log: the operator's login name.
        let actor = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_default();
        Ok(ApiClient {
            server: args.server.clone(),
            token,
            actor: format!("cli:{actor}"),
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let path = path.trim_start_matches('/');
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(format!("http://{}/v1/{path}", self.server))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header("x-ferry-actor", &self.actor);
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(serde_json::to_vec(v)?))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = tokio::time::timeout(TIMEOUT, self.http.request(req.body(body)?))
            .await
            .with_context(|| format!("{method} /v1/{path}: no answer within {TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {}", self.server))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{method} /v1/{path}: {status}: {message}")
    }

    /// Calls `METHOD /v1/<path>` (path after `/v1/`, with its query) and answers its
    /// JSON (`null` for an empty answer). A non-2xx answer is an error with the API's
    /// message.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let resp = self.send(method, path, body.as_ref()).await?;
        let bytes = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .context("the answer did not finish in time")??
            .to_bytes();
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).context("the answer is not JSON")
    }

    /// Streams the answer of `GET /v1/<path>` into `out` (an export), answering how many
    /// bytes were written.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> anyhow::Result<u64> {
        let mut body = self.send(http::Method::GET, path, None).await?.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the answer was cut off")?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await?;
                n += data.len() as u64;
            }
        }
        out.flush().await?;
        Ok(n)
    }
}

/// Prints JSON for a person: pretty, one document.
pub fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `ferry admin audit`: the newest admin changes, one line each.
pub async fn audit(args: &ApiArgs, limit: u32, json: bool) -> anyhow::Result<()> {
    let client = ApiClient::new(args)?;
    let v = client
        .call(
            http::Method::GET,
            &format!("admin/audit?limit={limit}"),
            None,
        )
        .await?;
    if json {
        print(&v);
        return Ok(());
    }
    for e in v["entries"].as_array().into_iter().flatten() {
        let secs = e["at_ms"].as_i64().unwrap_or(0) / 1000;
        let when = httpdate_like(secs);
        println!(
            "{when}  {:<16} {:<22} {} /v1/{} → {}  {}",
            e["actor"].as_str().unwrap_or(""),
            e["op"].as_str().unwrap_or(""),
            e["method"].as_str().unwrap_or(""),
            e["path"].as_str().unwrap_or(""),
            e["status"],
            e["detail"]["params"],
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SSZ` of unix seconds (UTC), without a date library.
fn httpdate_like(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_utc() {
        assert_eq!(httpdate_like(0), "1970-01-01 00:00:00Z");
        assert_eq!(httpdate_like(1_700_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(httpdate_like(951_782_400), "2000-02-29 00:00:00Z");
    }
}
