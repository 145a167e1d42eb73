//! `krouter-admin`: the only process that writes krouter's keys, credentials, policy
//! signatures and certificates.
//!
//! It owns `init`, `keys`, `credentials`, `policy`, `store`, `audit` and `usage`. Each
//! command is a function that takes parsed arguments and returns a printable outcome or an
//! [`Error`] that maps to a documented exit code ([`exit`]); every change to the store is one
//! transaction that also appends its audit row. `usage` reads the proxy's state database and
//! never writes it. The binary only parses, calls [`run`] and prints.
//!
//! It must never take a secret on the command line, never print a private key, and never
//! leave a half-written file behind.

pub mod cli;
mod cmd;
mod context;
mod error;
pub mod exit;
pub mod output;
mod prompt;

pub use cmd::run;
pub use error::Error;
