//! The `ferry` binary's library half: configuration and the wiring that runs the roles
//! (store, logic, bus, gateway) in one process. The CLI in `main.rs` only parses
//! arguments and calls in here; tests and benchmarks start servers the same way.
//!
//! Nothing here may hold protocol or business logic: that lives in the role crates.

pub mod cli;
pub mod cli_media;
pub mod cli_push;
pub mod cluster;
pub mod config;
pub mod monitor;
pub mod server;
pub mod server_key;

pub use config::Config;
pub use server::Server;
