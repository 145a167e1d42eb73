//! krouter's network-facing proxy.
//!
//! Today it owns start-up ([`startup`]: settings, secrets, the read-only store, the signed
//! policy with its rollback check, and the public-listener rule) and `krouter check`
//! ([`check`]). The listeners, the eight-stage request pipeline (accept, classify, admit,
//! inspect, route, forward, relay, record), the upstream client with its SSRF-checked
//! connector, live reload and the landlock sandbox arrive with the rest of the proxy issue.
//!
//! It must never write the store, hold the policy signing key, or see a plaintext
//! dashboard password; after start-up it runs sandboxed, read-only outside its state
//! directory.

pub mod check;
mod error;
pub mod startup;

pub use error::Error;

/// The version printed by `krouter --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
