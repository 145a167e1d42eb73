//! krouter's network-facing proxy.
//!
//! This crate will own the listeners, the eight-stage request pipeline (accept, classify,
//! admit, inspect, route, forward, relay, record), the upstream client with its SSRF-checked
//! connector, live reload of the signed policy and of the store, and the landlock sandbox.
//! It arrives with the proxy issue; today the binary only reports its version.
//!
//! It must never write the store, hold the policy signing key, or see a plaintext
//! dashboard password; after start-up it runs sandboxed, read-only outside its state
//! directory.

/// The version printed by `krouter --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
