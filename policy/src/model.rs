//! The validated policy. Fields are private and the only constructor is validation, so a
//! value of these types always satisfies every rule in `docs/policy.md`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::signature::KeyId;
use crate::ssrf::BaseUrl;

/// A verified, parsed and validated policy. Built only by [`crate::load`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) serial: Serial,
    pub(crate) digest: PolicyDigest,
    pub(crate) access: Access,
    pub(crate) providers: Vec<Provider>,
    pub(crate) routes: Vec<Route>,
    pub(crate) resilience: Resilience,
    pub(crate) logging: Logging,
    pub(crate) limits: Limits,
    /// Set by [`crate::load`] once the signature verified.
    pub(crate) signer: Option<KeyId>,
}

/// The policy's version number; a newer policy must not have a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Serial(pub(crate) u64);

/// SHA-256 of the policy file's exact bytes; tells two files with one serial apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyDigest(pub(crate) [u8; 32]);

/// `[access]`: who may call krouter and how hard.
#[derive(Debug, Clone)]
pub struct Access {
    pub(crate) require_api_keys: bool,
    pub(crate) ip_allow: Vec<IpNet>,
    pub(crate) ip_deny: Vec<IpNet>,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) cors_origins: Vec<String>,
    pub(crate) lockout: Lockout,
    /// `None`: the default (120 when keys are required, unlimited when they are not).
    pub(crate) unauthenticated_requests_per_minute: Option<u32>,
    pub(crate) groups: Vec<Group>,
}

/// `[access.lockout]`: per-address brute-force lockout.
#[derive(Debug, Clone, Copy)]
pub struct Lockout {
    pub(crate) max_failures: u32,
    pub(crate) window: Duration,
    pub(crate) duration: Duration,
}

/// A key group: the models its keys may use and their limits.
#[derive(Debug, Clone)]
pub struct Group {
    pub(crate) name: String,
    /// `None` means every route (`models = ["*"]`).
    pub(crate) models: Option<Vec<String>>,
    pub(crate) requests_per_minute: Option<u32>,
    pub(crate) tokens_per_day: Option<u64>,
    pub(crate) tokens_per_month: Option<u64>,
    pub(crate) no_log: bool,
}

/// Which API an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// api.openai.com and its exact API.
    OpenAi,
    /// api.anthropic.com.
    Anthropic,
    /// Any server that speaks the OpenAI API: Ollama, LM Studio, vLLM, gateways.
    OpenAiCompatible,
}

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct Provider {
    pub(crate) name: String,
    pub(crate) kind: ProviderKind,
    pub(crate) base_url: BaseUrl,
    pub(crate) credential: Option<String>,
    pub(crate) models: Option<Vec<String>>,
    pub(crate) timeouts: Timeouts,
    pub(crate) resilience: Resilience,
}

/// Per-provider time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) first_byte: Duration,
    pub(crate) idle: Duration,
    pub(crate) total: Duration,
}

/// A client-facing model name and the targets tried for it, in order.
#[derive(Debug, Clone)]
pub struct Route {
    pub(crate) model: String,
    pub(crate) targets: Vec<Target>,
}

/// One `provider:model` step of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub(crate) provider: Arc<str>,
    pub(crate) model: Arc<str>,
}

/// `[resilience]`: retries, backoff, 429 cool-down and the circuit breaker.
#[derive(Debug, Clone, Copy)]
pub struct Resilience {
    pub(crate) retries: u32,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) retry_budget: Duration,
    pub(crate) rate_limit_cooldown: Duration,
    pub(crate) stream_first_content_timeout: Duration,
    pub(crate) breaker: Breaker,
}

/// `[resilience.breaker]`: per-target circuit breaker.
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    pub(crate) failure_threshold: u32,
    pub(crate) open: Duration,
    pub(crate) half_open_probes: u32,
}

/// `[logging]`: what the proxy records about requests (metadata only, never content).
#[derive(Debug, Clone, Copy)]
pub struct Logging {
    pub(crate) request_metadata: bool,
    pub(crate) retention: Duration,
}

/// `[limits]`: how much one client may make the proxy hold. Connection-level values
/// (header size and count, header and idle times, the response write time, HTTP/2 streams)
/// apply to connections accepted after the policy is in force; the others
/// (`max_connections`, `max_connections_per_address`, body sizes and body times) to each new
/// connection or request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub(crate) max_header_bytes: u32,
    pub(crate) max_headers: u32,
    pub(crate) header_read_timeout: Duration,
    pub(crate) keep_alive_idle: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) body_min_bytes_per_sec: u32,
    pub(crate) body_min_rate_grace: Duration,
    pub(crate) response_write_timeout: Duration,
    pub(crate) max_connections: u32,
    pub(crate) max_connections_per_address: u32,
    pub(crate) h2_max_concurrent_streams: u32,
    pub(crate) max_body_bytes: BodyLimits,
}

/// `[limits.max_body_bytes]`: the largest request body, per endpoint, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub(crate) chat_completions: u32,
    pub(crate) responses: u32,
    pub(crate) embeddings: u32,
    pub(crate) messages: u32,
    pub(crate) count_tokens: u32,
}

/// A short, printable account of a policy, for `check`, `verify` and `sign`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The policy's serial.
    pub serial: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Whether clients must present a krouter API key.
    pub require_api_keys: bool,
    /// Provider names, in file order.
    pub providers: Vec<String>,
    /// Client-facing model names, in file order.
    pub routes: Vec<String>,
    /// Key group names, in file order.
    pub groups: Vec<String>,
    /// Id of the key whose signature verified; absent for an unsigned check.
    pub signed_by: Option<String>,
}

// === impl Policy ===

impl Policy {
    /// The policy's serial.
    pub fn serial(&self) -> Serial {
        self.serial
    }

    /// SHA-256 of the exact bytes that were verified.
    pub fn digest(&self) -> PolicyDigest {
        self.digest
    }

    /// The access rules.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The providers, in file order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a client-facing model name.
    pub fn route(&self, model: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.model == model)
    }

    /// Id of the key whose signature verified.
    pub fn signer(&self) -> Option<&KeyId> {
        self.signer.as_ref()
    }

    /// The resilience settings.
    pub fn resilience(&self) -> &Resilience {
        &self.resilience
    }

    /// The logging settings.
    pub fn logging(&self) -> &Logging {
        &self.logging
    }

    /// The client limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Every distinct upstream port, for the sandbox's connect allowlist.
    pub fn upstream_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.providers.iter().map(|p| p.base_url.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// A short account of the policy for humans and scripts.
    pub fn summary(&self) -> Summary {
        Summary {
            serial: self.serial.0,
            sha256: self.digest.to_string(),
            require_api_keys: self.access.require_api_keys,
            providers: self.providers.iter().map(|p| p.name.clone()).collect(),
            routes: self.routes.iter().map(|r| r.model.clone()).collect(),
            groups: self.access.groups.iter().map(|g| g.name.clone()).collect(),
            signed_by: self.signer.as_ref().map(ToString::to_string),
        }
    }
}

// === impl Serial ===

impl Serial {
    /// The serial as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// A serial read back from storage; `None` for 0, which no policy can carry.
    pub fn try_new(value: u64) -> Option<Self> {
        (value >= 1 && i64::try_from(value).is_ok()).then_some(Self(value))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

// === impl PolicyDigest ===

impl PolicyDigest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// A digest read back from storage.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PolicyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PolicyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyDigest({self})")
    }
}

/// Default per-address limit on requests without a valid key, when keys are required.
pub(crate) const DEFAULT_UNAUTHENTICATED_RPM: u32 = 120;

// === impl Access ===

impl Access {
    /// Whether clients must present a krouter API key (default true).
    pub fn require_api_keys(&self) -> bool {
        self.require_api_keys
    }

    /// Networks allowed to connect; empty means any address not denied.
    pub fn ip_allow(&self) -> &[IpNet] {
        &self.ip_allow
    }

    /// Networks refused before anything else; deny wins over allow.
    pub fn ip_deny(&self) -> &[IpNet] {
        &self.ip_deny
    }

    /// Peers whose `X-Forwarded-For` header is believed.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    /// Browser origins allowed by CORS, exact `scheme://host[:port]`; empty means none.
    pub fn cors_origins(&self) -> &[String] {
        &self.cors_origins
    }

    /// Brute-force lockout thresholds.
    pub fn lockout(&self) -> &Lockout {
        &self.lockout
    }

    /// Requests per minute one client address (an IPv6 /64) may make without a valid key:
    /// the policy's value, else 120 when keys are required and no limit when they are not
    /// (a keyless policy only listens on loopback).
    pub fn unauthenticated_requests_per_minute(&self) -> Option<u32> {
        match self.unauthenticated_requests_per_minute {
            Some(rpm) => Some(rpm),
            None if self.require_api_keys => Some(DEFAULT_UNAUTHENTICATED_RPM),
            None => None,
        }
    }

    /// Key groups, in file order; never empty (an implicit `default` when none is written).
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Whether `ip` passes the allow and deny lists (deny wins).
    pub fn ip_admitted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.ip_deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.ip_allow.is_empty() || self.ip_allow.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 peer is its IPv4 address, so IPv4 rules apply to it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

// === impl Lockout ===

impl Lockout {
    /// Failed attempts that trigger a lockout (default 10).
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    /// Window the failures are counted in (default 60 s).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How long the address stays locked out (default 15 min).
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

// === impl Group ===

impl Group {
    /// The group's name, as given to `krouter-admin keys create --group`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether keys of this group may use the route `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// Requests per minute per key; `None` is unlimited.
    pub fn requests_per_minute(&self) -> Option<u32> {
        self.requests_per_minute
    }

    /// Token budget per day for the whole group; `None` is unlimited.
    pub fn tokens_per_day(&self) -> Option<u64> {
        self.tokens_per_day
    }

    /// Token budget per month for the whole group; `None` is unlimited.
    pub fn tokens_per_month(&self) -> Option<u64> {
        self.tokens_per_month
    }

    /// Whether per-request rows are withheld for this group's keys.
    pub fn no_log(&self) -> bool {
        self.no_log
    }
}

// === impl ProviderKind ===

impl ProviderKind {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "openai" => Some(Self::OpenAi),
            "anthropic" => Some(Self::Anthropic),
            "openai-compatible" => Some(Self::OpenAiCompatible),
            _ => None,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::OpenAiCompatible => "openai-compatible",
        })
    }
}

// === impl Provider ===

impl Provider {
    /// The provider's name, as targets refer to it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The API it speaks.
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// Its base URL, already through the SSRF guard.
    pub fn base_url(&self) -> &BaseUrl {
        &self.base_url
    }

    /// Name of the stored credential attached upstream, if any.
    pub fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }

    /// Upstream models it may be asked for; `None` means any.
    pub fn models(&self) -> Option<&[String]> {
        self.models.as_deref()
    }

    /// Its time limits.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Its resilience settings: its own `[providers.resilience]` over the policy's
    /// `[resilience]` (the retry budget is always the policy's).
    pub fn resilience(&self) -> &Resilience {
        &self.resilience
    }
}

// === impl Timeouts ===

impl Timeouts {
    /// TCP and TLS connect (default 10 s).
    pub fn connect(&self) -> Duration {
        self.connect
    }

    /// Request sent to first response byte (default 60 s).
    pub fn first_byte(&self) -> Duration {
        self.first_byte
    }

    /// Longest silence between body chunks (default 60 s).
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Whole exchange (default 10 min).
    pub fn total(&self) -> Duration {
        self.total
    }
}

// === impl Route ===

impl Route {
    /// The model name clients send.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The targets, in the order they are tried.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

// === impl Target ===

impl Target {
    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The model name sent upstream.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The provider's name, shared: a request's context and metadata row keep it without
    /// a copy.
    pub fn shared_provider(&self) -> &Arc<str> {
        &self.provider
    }

    /// The model name sent upstream, shared.
    pub fn shared_model(&self) -> &Arc<str> {
        &self.model
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider, self.model)
    }
}

// === impl Resilience ===

impl Resilience {
    /// The documented defaults, where a policy says nothing.
    pub(crate) const DEFAULT: Self = Self {
        retries: 1,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(2_000),
        retry_budget: Duration::from_millis(10_000),
        rate_limit_cooldown: Duration::from_secs(30),
        stream_first_content_timeout: Duration::from_millis(30_000),
        breaker: Breaker {
            failure_threshold: 5,
            open: Duration::from_secs(30),
            half_open_probes: 1,
        },
    };

    /// Extra attempts on the same target for failures before any response (default 1).
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// First backoff delay (default 100 ms), doubled per attempt with jitter.
    pub fn backoff_initial(&self) -> Duration {
        self.backoff_initial
    }

    /// Largest backoff delay (default 2 s).
    pub fn backoff_max(&self) -> Duration {
        self.backoff_max
    }

    /// Total time spent retrying one request (default 10 s).
    pub fn retry_budget(&self) -> Duration {
        self.retry_budget
    }

    /// Cool-down after a 429 without `Retry-After` (default 30 s).
    pub fn rate_limit_cooldown(&self) -> Duration {
        self.rate_limit_cooldown
    }

    /// Longest wait for a stream's first content event (default 30 s).
    pub fn stream_first_content_timeout(&self) -> Duration {
        self.stream_first_content_timeout
    }

    /// The circuit breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

// === impl Breaker ===

impl Breaker {
    /// A breaker with these settings (a signed policy is the only source in the proxy; this
    /// is for tests and tools). Values are clamped to at least 1.
    pub fn new(failure_threshold: u32, open: Duration, half_open_probes: u32) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open,
            half_open_probes: half_open_probes.max(1),
        }
    }

    /// Consecutive failures that open the breaker (default 5).
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// How long it stays open before probing (default 30 s).
    pub fn open(&self) -> Duration {
        self.open
    }

    /// Probe requests allowed while half-open (default 1).
    pub fn half_open_probes(&self) -> u32 {
        self.half_open_probes
    }
}

// === impl Logging ===

impl Logging {
    /// Whether one metadata row per request is recorded (default true).
    pub fn request_metadata(&self) -> bool {
        self.request_metadata
    }

    /// How long request rows are kept (default 30 days).
    pub fn retention(&self) -> Duration {
        self.retention
    }
}

// === impl Limits ===

impl Limits {
    /// Largest request head: request line and headers (HTTP/1.1), or decoded header list
    /// (HTTP/2), in bytes (default 32 KiB).
    pub fn max_header_bytes(&self) -> u32 {
        self.max_header_bytes
    }

    /// Most header lines in one request head (default 100).
    pub fn max_headers(&self) -> u32 {
        self.max_headers
    }

    /// Time allowed for a request head to arrive, from the connection's first byte or the
    /// first byte after an idle pause (default 10 s).
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// Longest pause with no request on a kept-alive connection (default 60 s).
    pub fn keep_alive_idle(&self) -> Duration {
        self.keep_alive_idle
    }

    /// Time allowed for a whole request body (default 60 s).
    pub fn body_read_timeout(&self) -> Duration {
        self.body_read_timeout
    }

    /// Slowest average body rate accepted after the grace period, bytes per second;
    /// 0 turns the check off (default 1024).
    pub fn body_min_bytes_per_sec(&self) -> u32 {
        self.body_min_bytes_per_sec
    }

    /// How long a body may arrive slower than the minimum rate (default 5 s).
    pub fn body_min_rate_grace(&self) -> Duration {
        self.body_min_rate_grace
    }

    /// Longest time a client may accept no response bytes while krouter has some to
    /// write (default 60 s).
    pub fn response_write_timeout(&self) -> Duration {
        self.response_write_timeout
    }

    /// Most client connections open at once (default 1,024).
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Most client connections open at once from one address, an IPv4 address or an IPv6
    /// /64 (default 512), so that one address cannot take every slot. Connections from a
    /// trusted proxy are not counted: they carry many clients.
    pub fn max_connections_per_address(&self) -> u32 {
        self.max_connections_per_address
    }

    /// Most concurrent streams on one HTTP/2 connection (default 100).
    pub fn h2_max_concurrent_streams(&self) -> u32 {
        self.h2_max_concurrent_streams
    }

    /// The largest request body per endpoint.
    pub fn max_body_bytes(&self) -> &BodyLimits {
        &self.max_body_bytes
    }
}

// === impl BodyLimits ===

impl BodyLimits {
    /// `POST /v1/chat/completions` (default 32 MiB: base64 images).
    pub fn chat_completions(&self) -> u32 {
        self.chat_completions
    }

    /// `POST /v1/responses` (default 32 MiB).
    pub fn responses(&self) -> u32 {
        self.responses
    }

    /// `POST /v1/embeddings` (default 4 MiB).
    pub fn embeddings(&self) -> u32 {
        self.embeddings
    }

    /// `POST /v1/messages` (default 32 MiB).
    pub fn messages(&self) -> u32 {
        self.messages
    }

    /// `POST /v1/messages/count_tokens` (default 16 MiB).
    pub fn count_tokens(&self) -> u32 {
        self.count_tokens
    }

    /// The largest of them: what any request body may declare before its endpoint is known.
    pub fn largest(&self) -> u32 {
        self.chat_completions
            .max(self.responses)
            .max(self.embeddings)
            .max(self.messages)
            .max(self.count_tokens)
    }
}
