//! The proxy's start-up errors, each mapped to the same exit codes as `krouter-admin`.

use std::net::SocketAddr;

/// Why krouter would not start (or `krouter check` failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings, secrets, the store or a file refused.
    #[error(transparent)]
    Config(#[from] krouter_config::Error),
    /// The policy was refused: a bad signature or rollback (exit 3) or an invalid file (1).
    #[error(transparent)]
    Policy(#[from] krouter_policy::Error),
    /// The trusted keys could not be loaded (exit 3).
    #[error("could not load the trusted policy keys")]
    Trust(#[source] krouter_config::Error),
    /// A public listener while the policy lets anyone in.
    #[error(
        "refusing to listen on {listen}, which is not a loopback address, while the policy does not require API keys: set [access] require_api_keys = true, or listen on 127.0.0.1"
    )]
    PublicWithoutKeys {
        /// The configured listener.
        listen: SocketAddr,
    },
}

/// How a run ended: 0 ok, 1 failed, 2 usage, 3 signature, trust or integrity failure.
impl Error {
    /// The exit code.
    pub fn code(&self) -> u8 {
        use krouter_config::Error as C;
        use krouter_config::store::StoreError as S;
        match self {
            Self::Policy(
                krouter_policy::Error::Signature(_)
                | krouter_policy::Error::Rollback { .. }
                | krouter_policy::Error::SerialReused { .. },
            )
            | Self::Trust(_)
            | Self::Config(
                C::MissingSignature { .. }
                | C::Audit { .. }
                | C::Store(S::Envelope { .. } | S::Damaged { .. } | S::KeyTampered { .. }),
            ) => 3,
            Self::Policy(_) | Self::Config(_) | Self::PublicWithoutKeys { .. } => 1,
        }
    }
}
