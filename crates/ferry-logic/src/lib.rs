//! Ferry's logic layer: accounts and device tokens, sending and the inbox sync model,
//! and the route table that tells which gateway holds a user's links.
//!
//! It answers the requests gateways forward over the bus and pushes notifies back. It is
//! stateless apart from caches that can always be rebuilt from the store, so any number
//! of copies may run. It must not touch sockets or frames: it sees commands and protobuf
//! bodies, never connections.

pub mod admission;
mod auth;
mod endpoints;
mod error;
mod groups;
pub mod limits;
mod media;
mod presence;
mod service;
mod sessions;
mod social;

pub use auth::{hash_password, token_hash, verify_password, PasswordParams};
pub use endpoints::{EndpointsConfig, GatewayEndpoints, RegionConfig};
pub use error::LogicError;
pub use limits::{LimitsConfig, Rate};
pub use media::{sniff, MediaConfig};
pub use service::{Logic, LogicConfig};
