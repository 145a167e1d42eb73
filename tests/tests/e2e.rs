//! End-to-end tests: the real binaries, run as an operator or a script would. One test
//! binary for the whole package (link time on 2 cores); one module per area.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests: helpers fail the test by panicking"
)]

mod e2e {
    mod attack;
    mod conventions;
    mod edge_access;
    mod metrics;
    mod policy_cli;
    mod proxy_check;
    mod proxy_live;
    mod proxy_serve;
    mod resilience;
    mod sandbox;
    mod sdk;
    mod store_cli;
    mod usage_cli;
}
