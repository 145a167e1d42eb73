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
    /// The model the client asked for. Names here are shared (`Arc<str>`) with the policy,
    /// the key table and the metadata row, so passing them on copies no text.
    pub model: Option<Arc<str>>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The provider tried last (the one that answered, on success).
    pub provider: Option<Arc<str>>,
    /// The upstream model name sent to it.
    pub upstream_model: Option<Arc<str>>,
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
    pub key_id: Option<Arc<str>>,
    /// The key's group, if it has one in the policy in force.
    pub group: Option<Arc<str>>,
    /// Whether the group asks for no per-request metadata.
    pub no_log: bool,
}

/// A request id: `req_` and 24 lowercase hex digits, held inline (no allocation).
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId([u8; ID_LEN]);

/// Bytes in a request id's text.
const ID_LEN: usize = 4 + 24;

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
        Self::from_parts(high, low)
    }

    /// `req_`, the 16 hex digits of `high` and the 8 of `low`'s high half.
    fn from_parts(high: u64, low: u64) -> Self {
        let nibbles = |value: u64, count: u32| (0..count).rev().map(move |i| value >> (4 * i));
        let digits = nibbles(high, 16)
            .chain(nibbles(low >> 32, 8))
            .map(hex_digit);
        let mut id = [b'0'; ID_LEN];
        for (slot, byte) in id.iter_mut().zip(b"req_".iter().copied().chain(digits)) {
            *slot = byte;
        }
        Self(id)
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        // Always ASCII: `req_` and hex digits.
        std::str::from_utf8(&self.0).unwrap_or("req_")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

/// The lowercase hex digit of `value`'s low four bits.
fn hex_digit(value: u64) -> u8 {
    let nibble = u8::try_from(value & 0xf).unwrap_or(0);
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'a' + (nibble - 10)
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
        let many: std::collections::HashSet<String> = (0..10_000)
            .map(|_| RequestId::generate().as_str().to_owned())
            .collect();
        assert_eq!(many.len(), 10_000);
        assert_eq!(a.as_str().len(), 4 + 24);
        assert!(a.as_str().starts_with("req_"));
        assert!(
            a.as_str()[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{a:?}"
        );
        assert_eq!(format!("{a:?}"), format!("RequestId({:?})", a.as_str()));
        for (high, low) in [
            (0, 0),
            (u64::MAX, u64::MAX),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
        ] {
            assert_eq!(
                RequestId::from_parts(high, low).as_str(),
                format!("req_{high:016x}{:08x}", low >> 32)
            );
        }
    }
}
