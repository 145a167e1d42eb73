//! What the kernel enforces of a [`super::Plan`]: [`Status`], worked out from what
//! `landlock_restrict_self` reported, and how it is logged.

use std::fmt;
use std::path::PathBuf;

use landlock::{ABI, LandlockStatus, RulesetStatus};

use super::{ConnectPorts, Plan};

/// What [`super::apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// How much of the plan the kernel enforces.
    pub status: Status,
    /// Paths that got no rule (they do not exist or cannot be opened), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// How much of the sandbox the running kernel enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Every restriction of the plan.
    FullyEnforced,
    /// Some: the kernel lacks the features listed.
    PartiallyEnforced {
        /// What is not enforced.
        missing: Vec<Missing>,
    },
    /// None: no Landlock.
    NotEnforced {
        /// Why.
        reason: &'static str,
    },
}

/// A part of the sandbox an older kernel cannot enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// Control of renaming and linking between directories (ABI 2).
    Refer,
    /// Control of truncation (ABI 3).
    Truncate,
    /// TCP bind and connect rules (ABI 4).
    Network,
    /// Control of ioctl on devices (ABI 5).
    IoctlDev,
    /// Signal and abstract UNIX socket scoping (ABI 6).
    Scopes,
    /// Something the landlock crate reported as not enforced without a known reason.
    Other,
}

// === impl Applied ===

impl Applied {
    /// The connect rules in force, if the kernel enforces them; `None` means any port is
    /// reachable and a later policy needs no port check.
    pub fn enforced_connect(&self, plan: &Plan) -> Option<ConnectPorts> {
        self.status
            .enforces_network()
            .then(|| plan.connect_ports().clone())
    }

    /// Writes the status to the log: one INFO line when fully enforced, a WARN line naming
    /// what is missing otherwise, and each skipped path at DEBUG.
    pub fn log(&self, plan: &Plan) {
        let rules = plan.to_string();
        match &self.status {
            Status::FullyEnforced => tracing::info!(%rules, "sandbox: fully enforced"),
            Status::PartiallyEnforced { .. } => tracing::warn!(
                %rules,
                missing = %self.status,
                "sandbox: partially enforced"
            ),
            Status::NotEnforced { reason } => {
                tracing::warn!(reason, "sandbox: not enforced");
            }
        }
        for (path, why) in &self.skipped {
            tracing::debug!(path = %path.display(), why, "sandbox: no rule for a path");
        }
    }
}

// === impl Status ===

impl Status {
    /// The status from what `landlock_restrict_self` reported: the ruleset's enforcement and
    /// the kernel's Landlock support.
    pub fn from_kernel(ruleset: &RulesetStatus, landlock: LandlockStatus) -> Self {
        let abi = match landlock {
            LandlockStatus::NotEnabled => {
                return Self::NotEnforced {
                    reason: "this kernel has Landlock but it is not enabled (add landlock to the lsm= boot parameter)",
                };
            }
            LandlockStatus::NotImplemented => {
                return Self::NotEnforced {
                    reason: "this kernel has no Landlock (Linux 5.13 or later built with it is needed), or a seccomp filter blocks its system calls",
                };
            }
            LandlockStatus::Available { effective_abi, .. } => effective_abi,
        };
        let mut missing = missing_for(abi);
        match ruleset {
            RulesetStatus::FullyEnforced if missing.is_empty() => Self::FullyEnforced,
            RulesetStatus::NotEnforced => Self::NotEnforced {
                reason: "the kernel enforces none of the rights krouter asks for",
            },
            RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => {
                if missing.is_empty() {
                    missing.push(Missing::Other);
                }
                Self::PartiallyEnforced { missing }
            }
        }
    }

    /// Whether TCP connect rules are enforced.
    pub fn enforces_network(&self) -> bool {
        match self {
            Self::FullyEnforced => true,
            Self::PartiallyEnforced { missing } => !missing.contains(&Missing::Network),
            Self::NotEnforced { .. } => false,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FullyEnforced => f.write_str("fully enforced"),
            Self::PartiallyEnforced { missing } => {
                let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "partially enforced; this kernel cannot enforce: {}",
                    missing.join("; ")
                )
            }
            Self::NotEnforced { reason } => write!(f, "not enforced: {reason}"),
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refer => {
                "control of renames and links between directories (Landlock ABI 2, Linux 5.19)"
            }
            Self::Truncate => "control of truncation (Landlock ABI 3, Linux 6.2)",
            Self::Network => "the TCP bind and connect rules (Landlock ABI 4, Linux 6.7)",
            Self::IoctlDev => "control of ioctl on devices (Landlock ABI 5, Linux 6.10)",
            Self::Scopes => "signal and abstract UNIX socket scoping (Landlock ABI 6, Linux 6.12)",
            Self::Other => "a restriction the landlock library reported as not enforced",
        })
    }
}

/// What a kernel at Landlock ABI `abi` cannot enforce of [`super::TARGET_ABI`]'s rights.
pub fn missing_for(abi: ABI) -> Vec<Missing> {
    [
        (ABI::V2, Missing::Refer),
        (ABI::V3, Missing::Truncate),
        (ABI::V4, Missing::Network),
        (ABI::V5, Missing::IoctlDev),
        (ABI::V6, Missing::Scopes),
    ]
    .into_iter()
    .filter(|(needs, _)| abi < *needs)
    .map(|(_, missing)| missing)
    .collect()
}
