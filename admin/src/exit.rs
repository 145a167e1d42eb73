//! Exit codes scripts can trust. Documented in `docs/cli.md`; never renumbered.

use std::process::ExitCode;

/// How a `krouter-admin` run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0: the command did what it says.
    Ok,
    /// 1: invalid input (a bad policy, a missing or unreadable file); nothing was changed.
    Failed,
    /// 2: the command line itself is wrong (clap reports these).
    Usage,
    /// 3: a signature or trust check failed.
    VerifyFailed,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Failed => 1,
            Self::Usage => 2,
            Self::VerifyFailed => 3,
        }
    }
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        Self::from(status.code())
    }
}
