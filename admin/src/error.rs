//! `krouter-admin`'s error: one variant per family, each mapped to an exit code.

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
    /// A file could not be read or written as required.
    #[error(transparent)]
    Files(#[from] krouter_config::Error),
    /// Reading the trusted keys failed, which is a trust failure (exit 3).
    #[error("could not load the trusted policy keys")]
    Trust(#[source] krouter_config::Error),
}

impl Error {
    /// The exit code this error ends the process with.
    pub fn status(&self) -> Status {
        match self {
            Self::Policy(krouter_policy::Error::Signature(_)) | Self::Trust(_) => {
                Status::VerifyFailed
            }
            Self::Files(krouter_config::Error::MissingSignature { .. }) => Status::VerifyFailed,
            Self::Policy(_) | Self::KeyFile(_) | Self::Files(_) => Status::Failed,
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
