//! The proxy's errors: start-up failures ([`Error`], mapped to the same exit codes as
//! `krouter-admin`) and request rejections ([`Reject`], turned into responses by
//! [`crate::respond`] alone).

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
    /// The listener could not be bound.
    #[error("could not listen on {listen}")]
    Bind {
        /// The configured listener.
        listen: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime or a worker thread could not start.
    #[error("could not start {what}")]
    Start {
        /// What could not start.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The upstream TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::upstream::TlsSetupError),
    /// A public listener while the policy lets anyone in.
    #[error(
        "refusing to listen on {listen}, which is not a loopback address, while the policy does not require API keys: set [access] require_api_keys = true, or listen on 127.0.0.1"
    )]
    PublicWithoutKeys {
        /// The configured listener.
        listen: SocketAddr,
    },
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Error),
    /// The sandbox is required (`--require-sandbox`, `require_sandbox = true`) and the kernel
    /// does not enforce all of it (exit 4).
    #[error(
        "the sandbox is required (--require-sandbox or require_sandbox = true) but is {status}; run krouter on Linux 6.12 or later with Landlock enabled, or drop the requirement"
    )]
    SandboxRequired {
        /// What the kernel enforces.
        status: String,
    },
    /// `krouter check --sandbox` could not prove every rule.
    #[error("the sandbox is not proven: {failed}")]
    SandboxNotProven {
        /// The checks that failed.
        failed: String,
    },
}

/// How a run ended: 0 ok, 1 failed, 2 usage, 3 signature, trust or integrity failure, 4 the
/// sandbox is required and not fully enforced.
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
            Self::Policy(_)
            | Self::Config(_)
            | Self::PublicWithoutKeys { .. }
            | Self::Bind { .. }
            | Self::Start { .. }
            | Self::Tls(_)
            | Self::Sandbox(_)
            | Self::SandboxNotProven { .. } => 1,
            Self::SandboxRequired { .. } => 4,
        }
    }
}

/// Why a request was not served. Each variant says who caused it ([`Reject::origin`]);
/// [`crate::respond`] turns each into a status and a dialect error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    /// No endpoint at this method and path.
    #[error("no such endpoint")]
    NoRoute,
    /// The client's address is not admitted by the policy.
    #[error("the client address is not allowed")]
    AddressDenied,
    /// The client's address is locked out after too many failed authentications.
    #[error("locked out after failed authentications")]
    LockedOut {
        /// Seconds until the lock ends (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The caller's key, or its address without a valid key, is over its request rate.
    #[error("rate limited")]
    RateLimited {
        /// Seconds until a request would be admitted (`Retry-After`).
        retry_after_secs: u64,
    },
    /// A browser origin the policy's `cors_origins` does not list.
    #[error("browser origin not allowed")]
    OriginDenied,
    /// The policy requires a key and none was sent.
    #[error("no API key")]
    MissingKey,
    /// The key is malformed, has a bad checksum, or is not known.
    #[error("invalid API key")]
    InvalidKey,
    /// More than one key was sent (`Authorization` and `x-api-key` differ, or a header
    /// is repeated).
    #[error("more than one API key")]
    ConflictingKeys,
    /// A browser request (it carries `Origin`) to a policy that does not require keys.
    #[error("browser request without an API key")]
    BrowserWithoutKey,
    /// The key was revoked.
    #[error("revoked API key")]
    RevokedKey,
    /// The key has expired.
    #[error("expired API key")]
    ExpiredKey,
    /// The key's group may not use this model.
    #[error("model not allowed for the key's group")]
    ModelNotAllowed,
    /// The body is larger than krouter accepts for the endpoint (`[limits.max_body_bytes]`).
    #[error("request body too large")]
    BodyTooLarge,
    /// The request's framing is ambiguous or malformed (RFC 9112 sections 3.2 and 6):
    /// `Content-Length` with `Transfer-Encoding`, a transfer coding other than `chunked`, a
    /// missing, repeated or invalid `Host`, a body whose framing broke. The connection is
    /// closed after the answer, so nothing after it on the connection is read.
    #[error("ambiguous or malformed request framing: {what}")]
    Framing {
        /// What is wrong, client-safe.
        what: &'static str,
    },
    /// The path does not take this method, or the method is `TRACE` or `CONNECT`, which
    /// krouter never serves on any path.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the path takes, for the `Allow` header (empty for an unknown path).
        allow: &'static str,
    },
    /// The body did not arrive within `[limits] body_read_timeout_ms`.
    #[error("request body timed out")]
    BodyTimeout,
    /// The body arrived slower than `[limits] body_min_bytes_per_sec` after the grace
    /// period.
    #[error("request body too slow")]
    BodyTooSlow,
    /// The body could not be read or is not what the endpoint expects.
    #[error("bad request body: {what}")]
    BadBody {
        /// What is wrong, client-safe.
        what: &'static str,
    },
    /// No route for this model.
    #[error("unknown model")]
    UnknownModel,
    /// The route has no target reachable in the caller's dialect.
    #[error("the model has no target for this API")]
    WrongDialect,
    /// Every target failed before an answer could be sent.
    #[error("upstream failed: {0}")]
    Upstream(UpstreamFailure),
    /// The caller's group has used up a token budget.
    #[error("the group's token budget is used up")]
    BudgetExhausted {
        /// Which budget.
        period: crate::budget::Period,
        /// Whole seconds until it refills.
        retry_after_secs: u64,
    },
    /// Every target of the route is unavailable: breakers open, or resting after a 429.
    #[error("every target is unavailable (circuit breakers open or resting)")]
    Unavailable {
        /// Whole seconds until a target may be tried again.
        retry_after_secs: u64,
    },
    /// krouter could not do its own part.
    #[error("internal error: {what}")]
    Internal {
        /// What failed, for the log; the client sees a generic message.
        what: &'static str,
    },
}

/// Why one upstream attempt failed, always before any byte was sent to the client; whether
/// the next target is tried is [`UpstreamFailure::falls_back`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamFailure {
    /// The connection could not be made (refused, reset, TLS failure, DNS failure).
    #[error("could not connect")]
    Connect,
    /// The host resolved to an address the SSRF guard refuses.
    #[error("the upstream address is refused by the SSRF guard")]
    AddressRefused,
    /// No connection or no response head within the provider's timeouts.
    #[error("timed out waiting for the upstream")]
    Timeout,
    /// The upstream answered with a server error.
    #[error("upstream answered {0}")]
    ServerError(u16),
    /// The upstream is rate limiting; its `Retry-After`, when it gave one it could be read.
    #[error("upstream is rate limiting")]
    RateLimited {
        /// How long the upstream asked to wait.
        retry_after: Option<std::time::Duration>,
    },
    /// The upstream answered with a redirect, which krouter never follows.
    #[error("upstream answered with a redirect")]
    Redirect,
    /// The upstream's error body was larger than krouter relays.
    #[error("upstream error body too large")]
    OversizedError,
    /// The provider's credential is missing from the store, does not decrypt, or is of
    /// another provider kind.
    #[error("the provider credential is unavailable")]
    Credential,
    /// The upstream refused krouter's credential (401, 403, 407). Its body is not relayed:
    /// it may echo part of the credential, and the client's own key was fine.
    #[error("upstream refused the provider credential")]
    CredentialRefused,
    /// The connection broke (reset or closed) before a response head arrived.
    #[error("the upstream connection broke before answering")]
    Broken,
    /// A stream answered 200 but ended before any content.
    #[error("the upstream stream ended before any content")]
    EmptyStream,
    /// A stream's first event, before any content, was an error.
    #[error("the upstream stream began with an error event")]
    StreamError,
    /// A stream sent no content within `[resilience] stream_first_content_timeout_ms`.
    #[error("the upstream stream sent no content in time")]
    NoContentInTime,
}

/// Who caused a rejection: decides the log level and whether it counts against the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something krouter refuses.
    Client,
    /// An upstream failed.
    Upstream,
    /// krouter itself failed.
    Internal,
}

// === impl Reject ===

impl Reject {
    /// Who caused it.
    pub fn origin(&self) -> Origin {
        match self {
            Self::NoRoute
            | Self::AddressDenied
            | Self::LockedOut { .. }
            | Self::RateLimited { .. }
            | Self::OriginDenied
            | Self::MissingKey
            | Self::InvalidKey
            | Self::ConflictingKeys
            | Self::BrowserWithoutKey
            | Self::RevokedKey
            | Self::ExpiredKey
            | Self::ModelNotAllowed
            | Self::BodyTooLarge
            | Self::Framing { .. }
            | Self::MethodNotAllowed { .. }
            | Self::BodyTimeout
            | Self::BodyTooSlow
            | Self::BadBody { .. }
            | Self::UnknownModel
            | Self::WrongDialect
            | Self::BudgetExhausted { .. } => Origin::Client,
            Self::Upstream(UpstreamFailure::Credential | UpstreamFailure::CredentialRefused)
            | Self::Internal { .. } => Origin::Internal,
            Self::Upstream(_) | Self::Unavailable { .. } => Origin::Upstream,
        }
    }
}

// === impl UpstreamFailure ===

impl UpstreamFailure {
    /// Whether the next target may be tried: on a failure to connect, a connection broken
    /// before the answer, no answer in time, a 5xx or a 429, a stream with no content (empty,
    /// an error first, or none in time), and a target krouter cannot authenticate to. A
    /// redirect or an oversized client-error body is final. All of these happen before the
    /// client has seen a byte; once it has, there is no failure value left to ask (the
    /// relay can only end the stream).
    pub fn falls_back(self) -> bool {
        match self {
            Self::Connect
            | Self::AddressRefused
            | Self::Timeout
            | Self::ServerError(_)
            | Self::RateLimited { .. }
            | Self::Credential
            | Self::CredentialRefused
            | Self::Broken
            | Self::EmptyStream
            | Self::StreamError
            | Self::NoContentInTime => true,
            Self::Redirect | Self::OversizedError => false,
        }
    }

    /// A short name for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::AddressRefused => "address_refused",
            Self::Timeout => "timeout",
            Self::ServerError(_) => "server_error",
            Self::RateLimited { .. } => "rate_limited",
            Self::Redirect => "redirect",
            Self::OversizedError => "oversized_error",
            Self::Credential => "credential",
            Self::CredentialRefused => "credential_refused",
            Self::Broken => "broken",
            Self::EmptyStream => "empty_stream",
            Self::StreamError => "stream_error",
            Self::NoContentInTime => "no_content_in_time",
        }
    }

    /// Whether the same target is tried again (within `[resilience] retries` and
    /// `retry_budget_ms`): only when the request got no response at all, refused or reset
    /// before a head (the SSRF guard's refusal is not retried: it would refuse again).
    pub fn retries(self) -> bool {
        matches!(self, Self::Connect | Self::Broken)
    }

    /// What the attempt says about the target's health: connect errors, timeouts,
    /// 500/502/503/504 and streams without content are breaker failures; a 429 rests the
    /// target; a 4xx, a redirect or krouter's own credential trouble say nothing against it.
    pub fn outcome(self, rate_limit_cooldown: std::time::Duration) -> crate::health::Outcome {
        use crate::health::Outcome;
        match self {
            Self::Connect
            | Self::Timeout
            | Self::Broken
            | Self::EmptyStream
            | Self::StreamError
            | Self::NoContentInTime
            | Self::ServerError(500 | 502..=504) => Outcome::Failed,
            Self::RateLimited { retry_after } => {
                Outcome::RateLimited(retry_after.unwrap_or(rate_limit_cooldown))
            }
            Self::ServerError(_)
            | Self::Redirect
            | Self::OversizedError
            | Self::CredentialRefused => Outcome::Answered,
            Self::AddressRefused | Self::Credential => Outcome::Nothing,
        }
    }
}
