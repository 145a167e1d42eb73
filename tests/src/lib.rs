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

use std::time::{Duration, Instant};

/// Calls `probe` every 50 ms until `done` accepts what it returned; panics after `deadline`
/// with `what` and the last value seen.
pub fn eventually<T: std::fmt::Debug>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let started = Instant::now();
    loop {
        let seen = probe();
        if done(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}; last seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
