//! The `ferry` binary's library half: configuration and the wiring that runs the roles
//! (store, logic, bus, gateway) in one process. The CLI in `main.rs` only parses
//! arguments and calls in here; tests and benchmarks start servers the same way.
//!
//! Nothing here may hold protocol or business logic: that lives in the role crates.

pub mod chat;
pub mod cli;
pub mod cli_api;
pub mod cli_bots;
pub mod cli_conv;
pub mod cli_media;
pub mod cli_ops;
pub mod cli_push;
pub mod cli_users;
pub mod cli_webhooks;
pub mod cluster;
pub mod config;
pub mod monitor;
pub mod server;
pub mod server_key;
pub mod web;

pub use config::Config;
pub use server::Server;

/// The push senders `cfg.push` configures, one per provider it has a table for (a key
/// file that cannot be read or parsed stops the start, with its name).
pub fn push_senders(cfg: &Config) -> anyhow::Result<Vec<std::sync::Arc<dyn ferry_push::Sender>>> {
    let senders = ferry_push::Senders::from_config(&cfg.push)?;
    let mut out = Vec::new();
    for p in ferry_push::Provider::ALL {
        if let Some(s) = senders.get(p) {
            tracing::info!(provider = p.name(), "pushing through");
            out.push(s);
        }
    }
    Ok(out)
}
