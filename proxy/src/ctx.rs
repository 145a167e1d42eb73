//! `RequestCtx`: everything one request accumulates on its way through the stages, and
//! what the record stage writes at the end. Metadata only: never a body, never a key.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::dialect::{Dialect, Endpoint, Usage};
use crate::snapshot::Snapshot;

/// One request's context.
#[derive(Debug)]
pub struct RequestCtx {
    /// The id sent back in `x-request-id` and written to logs and the metadata row.
    pub id: RequestId,
    /// When the request arrived.
    pub started: Instant,
    /// The same moment as unix milliseconds.
    pub at_ms: i64,
    /// The client's address (the socket peer).
    pub client: IpAddr,
    /// The snapshot this request is decided against, from start to end.
    pub snapshot: Arc<Snapshot>,
    /// The API the client speaks (answers and errors use it).
    pub dialect: Dialect,
    /// The endpoint, once classified.
    pub endpoint: Option<Endpoint>,
    /// Who is calling, once admitted.
    pub caller: Option<Caller>,
    /// The model the client asked for.
    pub model: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The provider tried last (the one that answered, on success).
    pub provider: Option<String>,
    /// The upstream model name sent to it.
    pub upstream_model: Option<String>,
    /// How many upstream attempts were made.
    pub attempts: u32,
    /// The status sent to the client.
    pub status: u16,
    /// When the first body byte went to the client.
    pub first_byte: Option<Duration>,
    /// Token usage read from the response.
    pub usage: Usage,
    /// Whether krouter asked the upstream for stream usage the client did not ask for: the
    /// relay then hides the usage-only chunk.
    pub hide_usage_chunk: bool,
    /// Whether the response body ended early (client gone, upstream broke, timeout).
    pub cut_short: Option<&'static str>,
    /// The browser origin, when the policy's `cors_origins` allows it: the response says so.
    pub cors_origin: Option<http::HeaderValue>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's public id (`kid_...`); `None` for an anonymous caller, which only a
    /// policy with `require_api_keys = false` admits.
    pub key_id: Option<String>,
    /// The key's group, if it has one in the policy in force.
    pub group: Option<String>,
    /// Whether the group asks for no per-request metadata.
    pub no_log: bool,
}

/// A request id: `req_` and 24 hex digits from the system random generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

// === impl RequestCtx ===

impl RequestCtx {
    /// A fresh context for a request from `client`, against `snapshot`.
    pub fn new(client: IpAddr, snapshot: Arc<Snapshot>, dialect: Dialect) -> Self {
        Self {
            id: RequestId::generate(),
            started: Instant::now(),
            at_ms: now_ms(),
            client,
            snapshot,
            dialect,
            endpoint: None,
            caller: None,
            cors_origin: None,
            model: None,
            stream: false,
            provider: None,
            upstream_model: None,
            attempts: 0,
            status: 0,
            first_byte: None,
            usage: Usage::default(),
            hide_usage_chunk: false,
            cut_short: None,
        }
    }

    /// Whether this request's metadata may be kept (its group is not `no_log`).
    pub fn loggable(&self) -> bool {
        !self.caller.as_ref().is_some_and(|c| c.no_log)
    }
}

// === impl RequestId ===

impl RequestId {
    /// A new id, unique within this process and unpredictable across processes: a
    /// per-request counter mixed (bijectively) with a random per-process seed, so no system
    /// call per request. Request ids are labels, not secrets.
    pub fn generate() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            use ring::rand::SecureRandom as _;
            let mut bytes = [0_u8; 8];
            match ring::rand::SystemRandom::new().fill(&mut bytes) {
                Ok(()) => u64::from_le_bytes(bytes),
                Err(_) => now_ms().unsigned_abs() ^ u64::from(std::process::id()),
            }
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let high = mix(seed ^ n);
        let low = mix(high ^ seed.rotate_left(29));
        Self(format!("req_{high:016x}{:08x}", low >> 32))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// SplitMix64's finalizer: a bijection on `u64` that scatters neighbouring inputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_shaped() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        let many: std::collections::HashSet<String> =
            (0..10_000).map(|_| RequestId::generate().0).collect();
        assert_eq!(many.len(), 10_000);
        assert_eq!(a.as_str().len(), 4 + 24);
        assert!(a.as_str().starts_with("req_"));
    }
}
