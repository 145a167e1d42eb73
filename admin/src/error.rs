//! `krouter-admin`'s error: one variant per family, each mapped to an exit code.

use std::path::PathBuf;

use krouter_config::store::StoreError;

use crate::exit::Status;

/// Why a command failed. `Display` is one line; `main` prints the `source()` chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy was refused: a bad signature (exit 3) or an invalid file (exit 1).
    #[error(transparent)]
    Policy(#[from] krouter_policy::Error),
    /// A key file could not be parsed or generated.
    #[error(transparent)]
    KeyFile(#[from] krouter_policy::KeyFileError),
    /// A file, secret, setting or the store refused an operation.
    #[error(transparent)]
    Files(#[from] krouter_config::Error),
    /// Reading the trusted keys failed, which is a trust failure (exit 3).
    #[error("could not load the trusted policy keys")]
    Trust(#[source] krouter_config::Error),
    /// `init` found an existing home and changed nothing.
    #[error("{home} already holds a krouter home ({}); nothing was changed", found.join(", "))]
    HomeExists {
        /// The home directory.
        home: PathBuf,
        /// What already exists there.
        found: Vec<String>,
    },
    /// The policy in force does not define the requested key group.
    #[error("the policy in force defines no group named {group}; it defines: {}", known.join(", "))]
    UnknownGroup {
        /// The group asked for.
        group: String,
        /// The groups the policy defines.
        known: Vec<String>,
    },
    /// A command-line value is not acceptable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// An argument looks like a secret; secrets are never taken on the command line (exit 2).
    #[error(
        "argument {position} looks like a secret ({kind}); krouter-admin never takes secrets on the command line: pipe the value on stdin instead"
    )]
    SecretArgument {
        /// 1-based position of the argument.
        position: usize,
        /// What it looks like.
        kind: krouter_policy::secret_like::SecretKind,
    },
    /// A secret read from stdin or the prompt is unusable.
    #[error("{0}")]
    Secret(&'static str),
    /// Reading stdin or the terminal failed.
    #[error("could not read the secret")]
    Prompt(#[source] std::io::Error),
    /// Generating a key failed (the system random generator).
    #[error("could not generate a key: {0}")]
    Generate(#[source] krouter_config::apikey::ApiKeyError),
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn status(&self) -> Status {
        use krouter_config::Error as C;
        match self {
            Self::Policy(krouter_policy::Error::Signature(_))
            | Self::Trust(_)
            | Self::Files(
                C::MissingSignature { .. }
                | C::Audit { .. }
                | C::Store(
                    StoreError::Envelope { .. }
                    | StoreError::Damaged { .. }
                    | StoreError::KeyTampered { .. },
                ),
            ) => Status::VerifyFailed,
            Self::Usage(_) | Self::SecretArgument { .. } => Status::Usage,
            Self::Policy(_)
            | Self::KeyFile(_)
            | Self::Files(_)
            | Self::HomeExists { .. }
            | Self::UnknownGroup { .. }
            | Self::Secret(_)
            | Self::Prompt(_)
            | Self::Generate(_) => Status::Failed,
        }
    }

    /// Every problem line, when the error is an invalid policy.
    pub fn problems(&self) -> Vec<ProblemLine> {
        match self {
            Self::Policy(krouter_policy::Error::Invalid(problems)) => problems
                .iter()
                .map(|p| ProblemLine {
                    file: problems.file().to_owned(),
                    line: p.line(),
                    path: p.path().to_owned(),
                    what: p.what().to_owned(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One validation problem, for `--json` output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProblemLine {
    /// The policy file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Field path, such as `providers[2].base_url`.
    pub path: String,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for ProblemLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.what)
        } else {
            write!(
                f,
                "{}:{} {}: {}",
                self.file, self.line, self.path, self.what
            )
        }
    }
}
