//! Harness for krouter's end-to-end tests: builds and runs the real binaries, gives each
//! test its own temporary directory, and scans everything a test produced for secrets.
//!
//! Tests make their own keys and secrets at run time; nothing secret is committed.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness: a failed expectation here is a failed test, reported by the panic"
)]

pub mod bins;
pub mod client;
pub mod home;
pub mod krouter;
pub mod leak;
pub mod raw;
pub mod tls;
pub mod upstream;
