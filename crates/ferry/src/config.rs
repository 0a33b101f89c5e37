//! Configuration: a serde struct with a default for everything, loaded from an optional
//! TOML file and overridden by `FERRY_*` environment variables, then by CLI flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_gateway::GatewayConfig;
use ferry_logic::LogicConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
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
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.logic
            .endpoints
            .validate()
            .map_err(|e| anyhow::anyhow!("logic.endpoints: {e}"))?;
        Ok(cfg)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:9000\"]\n[gateway]\nheartbeat_timeout_ms = 1234\n",
        )
        .unwrap();
        let mut cfg = Config::load(Some(&path)).unwrap();
        assert_eq!(cfg.listen, ["127.0.0.1:9000"]);
        assert_eq!(cfg.gateway.heartbeat_timeout_ms, 1234);
        assert_eq!(
            cfg.gateway.login_timeout_ms, 10_000,
            "defaults fill the rest"
        );
        cfg.apply_env(|k| match k {
            "FERRY_LISTEN" => Some("127.0.0.1:1, 127.0.0.1:2".into()),
            "FERRY_DURABILITY" => Some("os".into()),
            "FERRY_TICKET_EPOCH" => Some("7".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.listen, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(
            (cfg.gateway.ticket_epoch, cfg.gateway.ticket_lifetime_secs),
            (7, 86_400)
        );
        assert_eq!(cfg.durability().unwrap(), ferry_store::Durability::Os);
        cfg.durability = "maybe".into();
        assert!(cfg.durability().is_err());
    }

    #[test]
    fn endpoint_lists_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let good = "[[logic.endpoints.regions]]\nname = \"east\"\nprefixes = [\"10.1.0.0/16\"]\n\
                    [[logic.endpoints.gateways]]\nid = \"gw-1\"\nregions = [\"east\"]\n\
                    addrs = [\"10.0.0.1:443\"]\n";
        std::fs::write(&path, good).unwrap();
        let cfg = Config::load(Some(&path)).unwrap();
        assert_eq!(cfg.logic.endpoints.gateways[0].addrs, ["10.0.0.1:443"]);
        assert_eq!(cfg.logic.endpoints.gateways[0].transports, ["tcp", "http"]);
        std::fs::write(&path, good.replace("10.0.0.1:443", "gw.example.com:443")).unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("IP literal"), "{e}");
    }

    #[test]
    fn defaults_just_work() {
        let cfg = Config::default();
        assert_eq!(cfg.listen, ["0.0.0.0:8080"]);
        assert_eq!(cfg.durability().unwrap(), ferry_store::Durability::Fsync);
    }
}
