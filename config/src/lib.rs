//! krouter's shared files and secrets.
//!
//! This crate owns every file both binaries touch. Today that is the signed policy on disk
//! ([`policy_files`]: the policy, its detached signature and the trusted keys directory) and
//! the careful file writes the admin needs ([`fs`]: private files created 0600 without ever
//! replacing an existing one, and atomic replacement for signatures). The store issue adds
//! `KROUTER_HOME`, settings, secret loading, the encrypted store and the state database here.
//!
//! It must never print, log or `Debug` a secret, and the proxy must never be handed a store
//! writer.

mod error;
pub mod fs;
pub mod home;
pub mod policy_files;
pub mod secret;
pub mod settings;

pub use error::Error;
