//! The config crate's error: which file, what went wrong, never a secret value.

use std::io;
use std::path::PathBuf;

/// A file could not be read or written as krouter requires.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on `path` failed.
    #[error("{path}: could not {action}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was attempted, such as "read the file".
        action: &'static str,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A file that must be new already exists.
    #[error("{path} already exists; refusing to overwrite it")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A secret file or directory can be read by other users.
    #[error(
        "{path} can be read by group or others (mode {mode:o}); run `chmod go-rwx` on it before krouter will use it"
    )]
    Permissions {
        /// The secret file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file is larger than krouter accepts for its kind.
    #[error("{path}: the file is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The policy's detached signature file does not exist.
    #[error(
        "{path}: the policy is not signed (no signature file); sign it with `krouter-admin policy sign`"
    )]
    MissingSignature {
        /// The expected `.sig` path.
        path: PathBuf,
    },
    /// A secret is missing, ambiguous or weak.
    #[error("{}", problem.describe(*name))]
    Secret {
        /// Which secret.
        name: crate::secret::SecretName,
        /// What is wrong; never the value.
        problem: crate::secret::load::SecretProblem,
    },
    /// Neither `KROUTER_HOME` nor `HOME` is set.
    #[error("neither KROUTER_HOME nor HOME is set: set KROUTER_HOME to krouter's directory")]
    NoHome,
    /// A settings value is unknown, of the wrong type, out of range, or secret-looking.
    #[error("{origin}: {field}: {what}")]
    Settings {
        /// Where the value came from: `krouter.toml:LINE` or `the KROUTER_X variable`.
        origin: String,
        /// The setting's name.
        field: String,
        /// What is wrong, without the value.
        what: String,
    },
    /// The store refused an operation or failed a check.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The state database was written by a newer krouter than this build: reports refuse
    /// to guess at a schema they do not know.
    #[error(
        "{path}: the state database's schema version is {found}, this build knows {known}; use a krouter-admin from the same release as the proxy"
    )]
    StateSchema {
        /// The state database.
        path: PathBuf,
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// The audit chain does not verify.
    #[error("{path}: {what}")]
    Audit {
        /// The store file.
        path: PathBuf,
        /// The first break found.
        what: crate::store::audit::AuditBreak,
    },
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// A trusted key file is malformed or repeated.
    #[error(transparent)]
    TrustedKey(#[from] krouter_policy::KeyFileError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
