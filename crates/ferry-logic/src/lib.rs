//! Ferry's logic layer: accounts and device tokens, sending and the inbox sync model,
//! and the route table that tells which gateway holds a user's links.
//!
//! It answers the requests gateways forward over the bus and pushes notifies back. It is
//! stateless apart from caches that can always be rebuilt from the store, so any number
//! of copies may run. It must not touch sockets or frames: it sees commands and protobuf
//! bodies, never connections.
//!
//! [`Logic`] (`router.rs`) is a router: admission, one dispatch table, the bus
//! [`ferry_bus::Handler`]. Each domain is one service struct whose fields are what it
//! may touch; imports go one way, never back up:
//!
//! ```text
//! router ─→ accounts, inbox, profile, media, endpoints
//! inbox ─→ groups ─→ friends            media ─→ moments ─→ friends
//! inbox, groups, moments, media ─→ attach (whose upload, who may read it)
//! accounts, inbox, groups, friends ─→ push (platform push: targets, planner, worker)
//! every service ─→ core (store, caches, caller, clock, limits), notify (presence, pushes)
//! ```

mod accounts;
mod admin_ops;
mod admin_users;
pub mod admission;
pub(crate) mod api;
mod attach;
mod auth;
mod before;
mod bots;
mod config;
mod conv;
mod core;
mod endpoints;
mod error;
mod friends;
mod groups;
mod inbox;
pub mod limits;
mod media;
mod moments;
mod msgops;
mod notify;
mod presence;
mod profile;
mod push;
mod router;
mod search;
#[cfg(test)]
mod testing;
pub mod webhooks;

/// The hasher of maps keyed by ids the server hands out (users, links): foldhash, seeded
/// per process, several times cheaper per lookup than the standard SipHash (1.2 % of a
/// closed loop's server samples, in these maps and in the store writer's). Maps keyed by
/// what clients choose (names, addresses) keep SipHash.
pub(crate) type IdHasher = foldhash::fast::RandomState;

pub use auth::{hash_password, token_hash, verify_password, PasswordParams};
pub use before::BeforeSendConfig;
pub use config::{LogicConfig, PushSettings};
pub use endpoints::{EndpointsConfig, GatewayEndpoints, RegionConfig};
pub use error::LogicError;
pub use limits::{LimitOverride, LimitsConfig, Rate};
pub use media::{sniff, MediaConfig};
pub use push::PushStats;
pub use router::Logic;
pub use webhooks::WebhookSettings;
