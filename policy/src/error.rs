//! The policy crate's errors. Messages name the file, line and field; they never echo a
//! value that could be a secret.

use std::fmt;

/// Why a policy was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The signature is missing, malformed, untrusted or does not match the bytes.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The file is larger than [`crate::MAX_POLICY_BYTES`].
    #[error("{file}: the policy is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// The policy's display name.
        file: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The bytes are not UTF-8 or not TOML; nothing else could be checked.
    #[error("{file}:{line}: not valid TOML: {what}")]
    Syntax {
        /// The policy's display name.
        file: String,
        /// 1-based line of the first syntax error.
        line: usize,
        /// What the parser expected, without the offending text.
        what: String,
    },
    /// The TOML parsed but broke one or more rules; every problem found is listed.
    #[error("{0}")]
    Invalid(Problems),
    /// The serial is lower than the last accepted one.
    #[error(
        "{file}: serial {got} is lower than the last accepted serial {accepted}: refusing a rollback"
    )]
    Rollback {
        /// The policy's display name.
        file: String,
        /// The serial recorded when the last policy was accepted.
        accepted: u64,
        /// The serial of the refused file.
        got: u64,
    },
    /// The serial equals the last accepted one but the bytes differ.
    #[error(
        "{file}: serial {serial} was already accepted with different contents: raise the serial when changing the policy"
    )]
    SerialReused {
        /// The policy's display name.
        file: String,
        /// The reused serial.
        serial: u64,
    },
}

/// Why a signature did not verify. Each case is distinct so that operators and scripts can
/// tell a tampered file from a missing key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature file is empty.
    #[error("{file}: the signature file is empty")]
    Empty {
        /// The signature file's display name.
        file: String,
    },
    /// The signature file does not follow the documented format.
    #[error("{file}:{line}: malformed signature file: {what}")]
    Malformed {
        /// The signature file's display name.
        file: String,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// No trusted public key was supplied.
    #[error("no trusted policy keys: add the signer's .pub file to the trusted keys directory")]
    NoTrustedKeys,
    /// The signature names a key that is not among the trusted keys.
    #[error(
        "{file}: signed by key {key_id}, which is not trusted: add its .pub file to the trusted keys directory if it should be"
    )]
    UntrustedKey {
        /// The signature file's display name.
        file: String,
        /// The key id the signature names.
        key_id: String,
    },
    /// The signature does not match the policy bytes under the named trusted key.
    #[error(
        "{file}: the signature by key {key_id} does not match the policy: the file was changed after it was signed"
    )]
    Mismatch {
        /// The policy's display name.
        file: String,
        /// The key id the signature names.
        key_id: String,
    },
}

/// Why a key file (a `.pub` trusted key or a signing key) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file does not follow the documented format.
    #[error("{file}:{line}: malformed key file: {what}")]
    Malformed {
        /// The key file's display name.
        file: String,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The key id written in the file is not the id of the key it holds.
    #[error("{file}: the key id in the file does not match its key")]
    KeyIdMismatch {
        /// The key file's display name.
        file: String,
    },
    /// The file holds a public key that is not a safe Ed25519 key (small order or not
    /// canonically encoded): signatures could be forged for it.
    #[error("{file}: not a usable Ed25519 public key (small-order or non-canonical point)")]
    WeakKey {
        /// The key file's display name.
        file: String,
    },
    /// Two trusted key files hold the same key id.
    #[error("{file}: key {key_id} is already trusted from another file")]
    Duplicate {
        /// The key file's display name.
        file: String,
        /// The repeated key id.
        key_id: String,
    },
    /// The system random generator or the key encoding failed.
    #[error("could not generate a signing key: the system random generator failed")]
    Generate,
}

/// One rule broken at one place in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    line: usize,
    path: String,
    what: String,
}

/// Every problem found in one policy file, sorted by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    file: String,
    list: Vec<Problem>,
}

// === impl Problem ===

impl Problem {
    pub(crate) fn new(line: usize, path: impl Into<String>, what: impl Into<String>) -> Self {
        Self {
            line,
            path: path.into(),
            what: what.into(),
        }
    }

    /// 1-based line the problem is on.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Field path such as `providers[2].base_url`; empty for the document itself.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without the offending value.
    pub fn what(&self) -> &str {
        &self.what
    }
}

// === impl Problems ===

impl Problems {
    pub(crate) fn new(file: &str, mut list: Vec<Problem>) -> Self {
        list.sort_by(|a, b| (a.line, &a.path).cmp(&(b.line, &b.path)));
        list.dedup();
        Self {
            file: file.to_owned(),
            list,
        }
    }

    /// The policy's display name.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The problems, sorted by line.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when no problem was found (never the case inside an [`Error::Invalid`]).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Each problem as `file:line path: what`, one per entry.
    pub fn lines(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|p| {
                if p.path.is_empty() {
                    format!("{}:{}: {}", self.file, p.line, p.what)
                } else {
                    format!("{}:{} {}: {}", self.file, p.line, p.path, p.what)
                }
            })
            .collect()
    }
}

impl fmt::Display for Problems {
    /// One line: the count and the first problem; [`Problems::lines`] lists them all.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.list.len();
        let first = self.lines().into_iter().next().unwrap_or_default();
        if n <= 1 {
            write!(f, "invalid policy: {first}")
        } else {
            write!(f, "invalid policy: {n} problems, first: {first}")
        }
    }
}
