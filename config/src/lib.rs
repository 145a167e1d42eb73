//! krouter's shared files and secrets.
//!
//! This crate owns every file both binaries touch: `KROUTER_HOME` and its typed paths
//! ([`home`]), settings from `krouter.toml` and `KROUTER_*` ([`settings`]), the secrets and
//! where they come from ([`secret`]), client API keys and their digests ([`apikey`]), the
//! encrypted store with its read-only reader and transactional writer ([`store`]), the signed
//! policy on disk ([`policy_files`]), the proxy's state database ([`state`]) and the usage
//! reports read from it ([`usage`]), and the careful file writes all of it needs ([`fs`]).
//!
//! It must never print, log or `Debug` a secret, and the proxy must never be handed a store
//! writer.

pub mod apikey;
mod error;
pub mod fs;
pub mod home;
pub mod policy_files;
pub mod secret;
pub mod settings;
pub mod state;
pub mod store;
pub mod usage;

#[doc(hidden)]
pub mod fuzzing;

pub use error::Error;
