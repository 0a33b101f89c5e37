//! Configuration: a serde struct with a default for everything, loaded from an optional
//! TOML file and overridden by `FERRY_*` environment variables, then by CLI flags.
//!
//! A file is checked against the keys the defaults have before it is read, so a misspelt
//! key or table is refused with its name, its table and a suggestion (and every struct is
//! `deny_unknown_fields` besides). An unknown `FERRY_*` variable is only warned about: the
//! environment is shared with the client commands and other tools, and a variable meant
//! for another version must not stop a server. Every key and variable is described in
//! docs/operations.md, "Configuration reference"; the tests in `config/tests.rs` keep it
//! complete.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_gateway::GatewayConfig;
use ferry_logic::LogicConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Every address serves the long link and HTTP.
    pub listen: Vec<String>,
    /// `fsync` (default): an acknowledged message survives a power loss. `os`: survives
    /// a process crash only, faster on slow disks.
    pub durability: String,
    /// Guards the dashboard, its data and `/metrics` (at least 16 characters). Empty:
    /// generated at the first start and kept in `data_dir/admin-token`.
    pub admin_token: String,
    /// Serve `/metrics` without the admin token (for a Prometheus on a private network).
    pub public_metrics: bool,
    /// The server's static key (hex private key, mode 0600). Empty: `data_dir/server-key`,
    /// generated at the first start. Every gateway of a cluster loads the same key.
    pub server_key_file: PathBuf,
    pub gateway: GatewayConfig,
    pub logic: LogicConfig,
    /// `ferry gateway` / `ferry logic`: NATS and PostgreSQL.
    pub cluster: crate::cluster::ClusterConfig,
    /// The push providers' credentials and URLs (a provider without a table is not
    /// pushed through); when and what to push is `[logic.push]`.
    pub push: ferry_push::PushConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("ferry-data"),
            listen: vec!["0.0.0.0:8080".into()],
            durability: "fsync".into(),
            admin_token: String::new(),
            public_metrics: false,
            server_key_file: PathBuf::new(),
            gateway: GatewayConfig::default(),
            logic: LogicConfig::default(),
            cluster: Default::default(),
            push: Default::default(),
        }
    }
}

/// Every environment variable Ferry reads (the server, the client commands, `ferry bench`
/// and the test suite), each described in docs/operations.md. A `FERRY_*` variable not
/// listed here is warned about at start-up.
pub const ENV_VARS: &[&str] = &[
    // Overrides of configuration keys (`Config::apply_env`).
    "FERRY_DATA",
    "FERRY_LISTEN",
    "FERRY_DURABILITY",
    "FERRY_ADMIN_TOKEN",
    "FERRY_SERVER_KEY_FILE",
    "FERRY_ALLOW_PLAINTEXT",
    "FERRY_GATEWAY_ID",
    "FERRY_HEARTBEAT_TIMEOUT_MS",
    "FERRY_TICKET_LIFETIME_SECS",
    "FERRY_TICKET_EPOCH",
    "FERRY_RETENTION_DAYS",
    "FERRY_NATS",
    "FERRY_POSTGRES",
    "FERRY_MEDIA_DIR",
    "FERRY_MEDIA_S3_BUCKET",
    "FERRY_MEDIA_S3_ENDPOINT",
    // Media on S3 (read by the object_store crate when the keys leave them to it).
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT",
    // Logging, every command.
    "FERRY_LOG",
    // The client commands.
    "FERRY_SERVER",
    "FERRY_USER",
    "FERRY_PASSWORD",
    "FERRY_NEW_PASSWORD",
    "FERRY_SERVER_KEY",
    // `ferry bench`.
    "FERRY_BENCH_PLAINTEXT",
    "FERRY_BENCH_SERVER_KEY",
    "FERRY_BENCH_RESUME",
    "FERRY_BENCH_SERVER_LOG",
    "FERRY_BENCH_SERVER_CONFIG",
    "FERRY_BENCH_WORKER_LOG",
    // The test suite.
    "FERRY_PG_BIN",
    "FERRY_CHROMIUM",
    "FERRY_REQUIRE_CHROMIUM",
    "FERRY_DASHBOARD_SCREENSHOT",
    "FERRY_PYTHON",
    "FERRY_BIN",
    // The memory allocator (jemalloc's options).
    "_RJEM_MALLOC_CONF",
];

/// Where a misspelt key's error sends the reader.
const SEE_REFERENCE: &str =
    "every key is listed in docs/operations.md, \"Configuration reference\"";

impl Config {
    /// Defaults, then the file (if any), then the environment. Unknown `FERRY_*`
    /// variables are logged as warnings.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
        for warning in unknown_env_vars(names) {
            tracing::warn!("{warning}");
        }
        Self::load_with(file, |k| std::env::var(k).ok())
    }

    /// [`Config::load`] with the environment given as a function.
    pub fn load_with(
        file: Option<&Path>,
        var: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Config::from_toml(&text)
                    .and_then(|cfg| cfg.validate().map(|()| cfg))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(var)?;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("{e} (set by the environment)"))?;
        Ok(cfg)
    }

    /// The checks of values beyond their types: `durability`, the media settings, the
    /// endpoint lists.
    fn validate(&self) -> Result<(), String> {
        self.durability().map_err(|e| e.to_string())?;
        self.cluster.validate_media()?;
        self.logic
            .endpoints
            .validate()
            .map_err(|e| format!("logic.endpoints: {e}"))
    }

    /// Reads a configuration file's text: unknown keys and tables are refused by name
    /// (with the table they are in and the closest known key), then the values are read
    /// (a wrong type is refused with its line). Missing keys keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let file: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        if let Some(unknown) = find_unknown(&file, &known_keys(), &Place::Root) {
            return Err(format!("{unknown}; {SEE_REFERENCE}"));
        }
        toml::from_str(text).map_err(|e| format!("{e}"))
    }

    /// The defaults as a TOML file (`ferry config default`); loads back to the defaults.
    pub fn default_toml() -> String {
        let body = toml::to_string(&Config::default()).unwrap_or_else(|e| format!("# {e}\n"));
        format!(
            "# Ferry's configuration with every key at its default. Each key is explained in\n\
             # docs/operations.md, \"Configuration reference\". Keep only what you change.\n\n{body}"
        )
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = var("FERRY_DATA") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("FERRY_LISTEN") {
            self.listen = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = var("FERRY_DURABILITY") {
            self.durability = v;
        }
        if let Some(v) = var("FERRY_ADMIN_TOKEN") {
            self.admin_token = v;
        }
        if let Some(v) = var("FERRY_SERVER_KEY_FILE") {
            self.server_key_file = v.into();
        }
        if let Some(v) = var("FERRY_ALLOW_PLAINTEXT") {
            self.gateway.allow_plaintext =
                v.parse().context("FERRY_ALLOW_PLAINTEXT (true/false)")?;
        }
        if let Some(v) = var("FERRY_NATS") {
            self.cluster.nats = v;
        }
        if let Some(v) = var("FERRY_POSTGRES") {
            self.cluster.postgres = v;
        }
        if let Some(v) = var("FERRY_GATEWAY_ID") {
            self.gateway.id = v;
        }
        if let Some(v) = var("FERRY_HEARTBEAT_TIMEOUT_MS") {
            self.gateway.heartbeat_timeout_ms = v.parse().context("FERRY_HEARTBEAT_TIMEOUT_MS")?;
        }
        if let Some(v) = var("FERRY_TICKET_LIFETIME_SECS") {
            self.gateway.ticket_lifetime_secs = v.parse().context("FERRY_TICKET_LIFETIME_SECS")?;
        }
        if let Some(v) = var("FERRY_TICKET_EPOCH") {
            self.gateway.ticket_epoch = v.parse().context("FERRY_TICKET_EPOCH")?;
        }
        if let Some(v) = var("FERRY_RETENTION_DAYS") {
            self.logic.retention_days = v.parse().context("FERRY_RETENTION_DAYS")?;
        }
        if let Some(v) = var("FERRY_MEDIA_DIR") {
            self.cluster.media_dir = v;
        }
        if let Some(v) = var("FERRY_MEDIA_S3_BUCKET") {
            self.cluster.media_s3_bucket = v;
        }
        if let Some(v) = var("FERRY_MEDIA_S3_ENDPOINT") {
            self.cluster.media_s3_endpoint = v;
        }
        Ok(())
    }

    pub fn durability(&self) -> anyhow::Result<ferry_store::Durability> {
        match self.durability.as_str() {
            "fsync" => Ok(ferry_store::Durability::Fsync),
            "os" => Ok(ferry_store::Durability::Os),
            other => anyhow::bail!("durability must be \"fsync\" or \"os\", not {other:?}"),
        }
    }
}

/// Every key a file may hold: the defaults as a TOML tree, with each array of tables
/// (empty by default) holding one default entry, and each optional table (absent by
/// default) an example. A table empty here is a map whose keys are free
/// (`gateway.body_limits`).
pub fn known_keys() -> toml::Table {
    let mut tree = toml::Table::try_from(Config::default()).unwrap_or_default();
    for (path, entry) in array_entries() {
        if let Some(entry) = entry {
            insert_at(&mut tree, path, toml::Value::Array(vec![entry]));
        }
    }
    for (path, entry) in optional_tables() {
        if let Some(entry) = entry {
            insert_at(&mut tree, path, entry);
        }
    }
    tree
}

/// The tables and keys that are absent unless set (`[push.apns]` …), each with the
/// value it has when set empty.
fn optional_tables() -> [(&'static [&'static str], Option<toml::Value>); 4] {
    let example = ferry_push::PushConfig {
        apns: Some(ferry_push::ApnsConfig {
            key_file: PathBuf::new(),
            key_id: String::new(),
            team_id: String::new(),
            url: "https://api.push.apple.com".into(),
            sandbox_url: "https://api.sandbox.push.apple.com".into(),
            concurrency: 64,
        }),
        fcm: Some(ferry_push::FcmConfig {
            service_account_file: PathBuf::new(),
            url: "https://fcm.googleapis.com".into(),
            token_url: Some(String::new()),
            concurrency: 64,
        }),
        webpush: Some(ferry_push::WebPushConfig {
            vapid_private_key_file: PathBuf::new(),
            subject: String::new(),
            concurrency: 64,
        }),
        ca_file: Some(PathBuf::new()),
        ..Default::default()
    };
    let tree = toml::Table::try_from(example).unwrap_or_default();
    let get = |k: &str| tree.get(k).cloned();
    [
        (&["push", "apns"], get("apns")),
        (&["push", "fcm"], get("fcm")),
        (&["push", "webpush"], get("webpush")),
        (&["push", "ca_file"], get("ca_file")),
    ]
}

fn insert_at(tree: &mut toml::Table, path: &[&str], value: toml::Value) {
    match path {
        [last] => {
            tree.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            if let Some(toml::Value::Table(t)) = tree.get_mut(*first) {
                insert_at(t, rest, value);
            }
        }
        [] => {}
    }
}

/// The arrays of tables and the default of one entry.
fn array_entries() -> [(&'static [&'static str], Option<toml::Value>); 2] {
    [
        (
            &["logic", "endpoints", "regions"],
            toml::Value::try_from(ferry_logic::RegionConfig::default()).ok(),
        ),
        (
            &["logic", "endpoints", "gateways"],
            toml::Value::try_from(ferry_logic::GatewayEndpoints::default()).ok(),
        ),
    ]
}

/// Where in a file a key is.
enum Place {
    Root,
    Table(String),
    /// The `n`th (from 1) `[[name]]`.
    Entry(String, usize),
}

impl Place {
    fn child(&self, key: &str) -> String {
        match self {
            Place::Root => key.to_owned(),
            Place::Table(t) | Place::Entry(t, _) => format!("{t}.{key}"),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Root => f.write_str("at the top level"),
            Place::Table(t) => write!(f, "in [{t}]"),
            Place::Entry(t, n) => write!(f, "in [[{t}]] number {n}"),
        }
    }
}

/// The first key of `file` that `known` does not have, as a message.
fn find_unknown(file: &toml::Table, known: &toml::Table, place: &Place) -> Option<String> {
    for (key, value) in file {
        match (known.get(key), value) {
            (None, value) => {
                let mut msg = match place {
                    Place::Root if value.is_table() => format!("unknown table [{key}]"),
                    _ => format!("unknown key `{key}` {place}"),
                };
                if let Some(near) = closest(key, known.keys().map(String::as_str)) {
                    msg += &format!(" (did you mean `{near}`?)");
                }
                return Some(msg);
            }
            (Some(toml::Value::Table(k)), toml::Value::Table(v)) if !k.is_empty() => {
                let inner = Place::Table(place.child(key));
                if let Some(m) = find_unknown(v, k, &inner) {
                    return Some(m);
                }
            }
            (Some(toml::Value::Array(k)), toml::Value::Array(v)) => {
                let Some(toml::Value::Table(entry)) = k.first() else {
                    continue;
                };
                for (i, item) in v.iter().enumerate() {
                    if let toml::Value::Table(item) = item {
                        let inner = Place::Entry(place.child(key), i + 1);
                        if let Some(m) = find_unknown(item, entry, &inner) {
                            return Some(m);
                        }
                    }
                }
            }
            // A map's free keys, or a wrong type (refused when the values are read).
            _ => {}
        }
    }
    None
}

/// Warnings for the `FERRY_*` variables among `names` that Ferry does not read.
pub fn unknown_env_vars(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("FERRY_") && !ENV_VARS.contains(&n.as_str()))
        .map(|n| {
            let mut msg = format!("unknown environment variable {n} is ignored");
            if let Some(near) = closest(&n, ENV_VARS.iter().copied()) {
                msg += &format!(" (did you mean {near}?)");
            }
            msg
        })
        .collect();
    out.sort();
    out
}

/// The candidate nearest `word` by edit distance, if near enough to be a misspelling.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests;
