//! krouter's policy: the signed TOML file that holds the security posture and the routing.
//!
//! A [`Policy`] exists only as the output of [`load`]: the signature over the file's exact
//! bytes is verified, then the TOML is parsed, then every rule is validated (all problems are
//! collected, each naming the file, line and field path), then the serial is checked against
//! the last accepted one, in that order. Runtime code takes only a `Policy`, so an unsigned,
//! tampered, invalid or rolled-back file cannot reach it.
//!
//! This crate is pure: bytes in, decisions out. It must never read files, open sockets,
//! resolve names or read the environment; the binaries do that and hand it bytes. Facts it
//! cannot know (which provider credentials the store holds) come in through the small
//! [`CredentialNames`] trait.

mod error;
mod load;
mod model;
mod raw;
pub mod secret_like;
mod signature;
pub mod ssrf;
mod tree;
mod validate;

#[doc(hidden)]
pub mod fuzzing;

pub use error::{Error, KeyFileError, Problem, Problems, SignatureError};
pub use load::{
    AcceptedPolicy, CredentialNames, MAX_POLICY_BYTES, PolicyFiles, SkipCredentialCheck, check,
    load,
};
pub use model::{
    Access, BodyLimits, Breaker, Group, Limits, Lockout, Logging, Policy, PolicyDigest, Provider,
    ProviderKind, Resilience, Route, Serial, Summary, Target, Timeouts, canonical,
};
pub use signature::{
    KeyId, PolicySignature, SIGNATURE_CONTEXT, SigningKey, SigningKeyFile, TrustedKey, TrustedKeys,
};
pub use validate::{MAX_NAME, is_valid_name};
