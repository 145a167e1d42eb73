//! The one way to obtain a [`Policy`]: verify the signature, parse, validate, then check the
//! serial, in that order. Verifying first means no byte of an unsigned or tampered file
//! reaches the TOML parser.

use std::collections::BTreeSet;

use crate::error::Error;
use crate::model::{Policy, PolicyDigest, Serial, Summary};
use crate::raw;
use crate::signature::TrustedKeys;
use crate::validate::validate;

/// Largest policy file accepted (4 MiB); a policy with 1,000 routes is about 100 KiB.
pub const MAX_POLICY_BYTES: usize = 4 * 1024 * 1024;

/// Which provider credentials exist, so that a provider naming a missing one is refused.
/// The store reader implements it; the policy crate itself never opens the store.
pub trait CredentialNames {
    /// Whether a credential called `name` is stored.
    fn contains(&self, name: &str) -> bool;
}

/// Accepts every credential name: for checks made where no store is at hand (a CI job
/// validating a policy before signing). The proxy never uses it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SkipCredentialCheck;

/// The policy files as bytes, with the names used in messages.
#[derive(Debug, Clone, Copy)]
pub struct PolicyFiles<'a> {
    /// Display name of the policy, such as `policy.toml`.
    pub name: &'a str,
    /// The policy file's exact bytes.
    pub bytes: &'a [u8],
    /// Display name of the signature, such as `policy.toml.sig`.
    pub sig_name: &'a str,
    /// The signature file's bytes.
    pub sig: &'a [u8],
}

/// What is remembered about the last accepted policy, to refuse rollbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedPolicy {
    serial: Serial,
    digest: PolicyDigest,
}

/// Verifies, parses and validates a signed policy, refusing a rollback against `last`.
pub fn load(
    files: PolicyFiles<'_>,
    trusted: &TrustedKeys,
    last: Option<&AcceptedPolicy>,
    credentials: &dyn CredentialNames,
) -> Result<Policy, Error> {
    too_large(files.name, files.bytes)?;
    let signer = trusted.verify(files.name, files.bytes, files.sig_name, files.sig)?;
    let mut policy = parse_and_validate(files.name, files.bytes, credentials)?;
    policy.signer = Some(signer);
    if let Some(last) = last {
        if policy.serial < last.serial {
            return Err(Error::Rollback {
                file: files.name.to_owned(),
                accepted: last.serial.get(),
                got: policy.serial.get(),
            });
        }
        if policy.serial == last.serial && policy.digest != last.digest {
            return Err(Error::SerialReused {
                file: files.name.to_owned(),
                serial: policy.serial.get(),
            });
        }
    }
    Ok(policy)
}

/// Parses and validates an unsigned policy, for `krouter-admin policy check` and before
/// signing. Returns only a summary: an unsigned file never becomes a [`Policy`].
pub fn check(
    name: &str,
    bytes: &[u8],
    credentials: &dyn CredentialNames,
) -> Result<Summary, Error> {
    too_large(name, bytes)?;
    parse_and_validate(name, bytes, credentials).map(|p| p.summary())
}

fn too_large(name: &str, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(Error::TooLarge {
            file: name.to_owned(),
            size: bytes.len(),
            limit: MAX_POLICY_BYTES,
        });
    }
    Ok(())
}

fn parse_and_validate(
    name: &str,
    bytes: &[u8],
    credentials: &dyn CredentialNames,
) -> Result<Policy, Error> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let before = bytes.get(..e.valid_up_to()).unwrap_or_default();
        Error::Syntax {
            file: name.to_owned(),
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            what: "the file is not UTF-8 text".to_owned(),
        }
    })?;
    let parsed = raw::parse(name, text)?;
    validate(name, parsed, PolicyDigest::of(bytes), credentials)
}

// === impl CredentialNames ===

impl CredentialNames for SkipCredentialCheck {
    fn contains(&self, _name: &str) -> bool {
        true
    }
}

impl CredentialNames for BTreeSet<String> {
    fn contains(&self, name: &str) -> bool {
        Self::contains(self, name)
    }
}

impl<const N: usize> CredentialNames for [&str; N] {
    fn contains(&self, name: &str) -> bool {
        <[&str]>::contains(self, &name)
    }
}

// === impl AcceptedPolicy ===

impl AcceptedPolicy {
    /// A record read back from the state database.
    pub fn new(serial: Serial, digest: PolicyDigest) -> Self {
        Self { serial, digest }
    }

    /// The accepted serial.
    pub fn serial(&self) -> Serial {
        self.serial
    }

    /// The accepted file's digest.
    pub fn digest(&self) -> PolicyDigest {
        self.digest
    }
}

impl Policy {
    /// What to remember so that a later load can refuse a rollback.
    pub fn accepted(&self) -> AcceptedPolicy {
        AcceptedPolicy::new(self.serial, self.digest)
    }
}
