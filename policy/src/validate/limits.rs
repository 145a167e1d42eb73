//! Checks of the `[limits]` section: every size, count and time a client can make the proxy
//! hold has a bound here, so a signed policy can tighten or loosen them only within what the
//! proxy (and hyper, whose HTTP/1.1 buffer cannot be smaller than 8 KiB) can take.

use toml::Spanned;

use crate::model::{BodyLimits, Limits};
use crate::raw::{RawBodyLimits, RawLimits};
use crate::validate::{Bounds, Checker};

/// 1 KiB.
const KIB: i64 = 1024;
/// 1 MiB.
const MIB: i64 = 1024 * KIB;
/// The largest body any endpoint may accept: bodies are held whole in memory.
const MAX_BODY_BYTES: i64 = 32 * MIB;

/// The bounds of a body size, with its default.
const fn body(default: i64) -> Bounds {
    Bounds {
        min: KIB,
        max: MAX_BODY_BYTES,
        default,
    }
}

// === impl Checker ===

impl Checker<'_> {
    pub(super) fn limits(&mut self, spanned: Option<&Spanned<RawLimits>>) -> Limits {
        let none = RawLimits {
            max_header_bytes: None,
            max_headers: None,
            header_read_timeout_ms: None,
            keep_alive_idle_ms: None,
            body_read_timeout_ms: None,
            body_min_bytes_per_sec: None,
            body_min_rate_grace_ms: None,
            response_write_timeout_ms: None,
            max_connections: None,
            max_connections_per_address: None,
            h2_max_concurrent_streams: None,
            max_body_bytes: None,
        };
        let l = spanned.map_or(&none, Spanned::get_ref);
        let time = |default: i64, max: i64| Bounds {
            min: 100,
            max,
            default,
        };
        Limits {
            max_header_bytes: self.count(
                &l.max_header_bytes,
                "limits.max_header_bytes",
                &Bounds {
                    min: 8 * KIB,
                    max: MIB,
                    default: 32 * KIB,
                },
            ),
            max_headers: self.count(
                &l.max_headers,
                "limits.max_headers",
                &Bounds {
                    min: 16,
                    max: 1_000,
                    default: 100,
                },
            ),
            header_read_timeout: self.millis(
                &l.header_read_timeout_ms,
                "limits.header_read_timeout_ms",
                &time(10_000, 300_000),
            ),
            keep_alive_idle: self.millis(
                &l.keep_alive_idle_ms,
                "limits.keep_alive_idle_ms",
                &time(60_000, 3_600_000),
            ),
            body_read_timeout: self.millis(
                &l.body_read_timeout_ms,
                "limits.body_read_timeout_ms",
                &time(60_000, 3_600_000),
            ),
            body_min_bytes_per_sec: self.count(
                &l.body_min_bytes_per_sec,
                "limits.body_min_bytes_per_sec",
                &Bounds {
                    min: 0,
                    max: 100 * MIB,
                    default: KIB,
                },
            ),
            body_min_rate_grace: self.millis(
                &l.body_min_rate_grace_ms,
                "limits.body_min_rate_grace_ms",
                &Bounds {
                    min: 0,
                    max: 600_000,
                    default: 5_000,
                },
            ),
            response_write_timeout: self.millis(
                &l.response_write_timeout_ms,
                "limits.response_write_timeout_ms",
                &time(60_000, 3_600_000),
            ),
            max_connections: self.count(
                &l.max_connections,
                "limits.max_connections",
                &Bounds {
                    min: 1,
                    max: 1_000_000,
                    default: 1_024,
                },
            ),
            max_connections_per_address: self.count(
                &l.max_connections_per_address,
                "limits.max_connections_per_address",
                &Bounds {
                    min: 1,
                    max: 1_000_000,
                    default: 512,
                },
            ),
            h2_max_concurrent_streams: self.count(
                &l.h2_max_concurrent_streams,
                "limits.h2_max_concurrent_streams",
                &Bounds {
                    min: 1,
                    max: 1_000,
                    default: 100,
                },
            ),
            max_body_bytes: self.body_limits(l.max_body_bytes.as_ref().map(Spanned::get_ref)),
        }
    }

    fn body_limits(&mut self, b: Option<&RawBodyLimits>) -> BodyLimits {
        let none = RawBodyLimits {
            chat_completions: None,
            responses: None,
            embeddings: None,
            messages: None,
            count_tokens: None,
        };
        let b = b.unwrap_or(&none);
        let path = |field: &str| format!("limits.max_body_bytes.{field}");
        BodyLimits {
            chat_completions: self.count(
                &b.chat_completions,
                &path("chat_completions"),
                &body(32 * MIB),
            ),
            responses: self.count(&b.responses, &path("responses"), &body(32 * MIB)),
            embeddings: self.count(&b.embeddings, &path("embeddings"), &body(4 * MIB)),
            messages: self.count(&b.messages, &path("messages"), &body(32 * MIB)),
            count_tokens: self.count(&b.count_tokens, &path("count_tokens"), &body(16 * MIB)),
        }
    }
}
