//! Checks of the `[resilience]` (retries, backoff, circuit breaker) and `[logging]` sections.

use std::time::Duration;

use toml::Spanned;

use crate::model::{Breaker, Logging, Resilience};
use crate::raw::{RawBreaker, RawLogging, RawResilience};
use crate::validate::{Bounds, Checker};

// === impl Checker ===

impl Checker<'_> {
    pub(super) fn resilience(&mut self, spanned: Option<&Spanned<RawResilience>>) -> Resilience {
        let none = RawResilience {
            retries: None,
            backoff_initial_ms: None,
            backoff_max_ms: None,
            retry_budget_ms: None,
            rate_limit_cooldown_secs: None,
            stream_first_content_timeout_ms: None,
            breaker: None,
        };
        let r = spanned.map_or(&none, Spanned::get_ref);
        let backoff_initial = self.millis(
            &r.backoff_initial_ms,
            "resilience.backoff_initial_ms",
            &Bounds {
                min: 1,
                max: 60_000,
                default: 100,
            },
        );
        let backoff_max = self.millis(
            &r.backoff_max_ms,
            "resilience.backoff_max_ms",
            &Bounds {
                min: 1,
                max: 300_000,
                default: 2_000,
            },
        );
        if backoff_max < backoff_initial {
            let line = r
                .backoff_max_ms
                .as_ref()
                .or(r.backoff_initial_ms.as_ref())
                .map_or(1, |v| self.line(v));
            self.push(
                line,
                "resilience.backoff_max_ms",
                "must be at least resilience.backoff_initial_ms",
            );
        }
        Resilience {
            retries: self.count(
                &r.retries,
                "resilience.retries",
                &Bounds {
                    min: 0,
                    max: 5,
                    default: 1,
                },
            ),
            backoff_initial,
            backoff_max,
            retry_budget: self.millis(
                &r.retry_budget_ms,
                "resilience.retry_budget_ms",
                &Bounds {
                    min: 1,
                    max: 600_000,
                    default: 10_000,
                },
            ),
            rate_limit_cooldown: self.secs(
                &r.rate_limit_cooldown_secs,
                "resilience.rate_limit_cooldown_secs",
                &Bounds {
                    min: 1,
                    max: 3_600,
                    default: 30,
                },
            ),
            stream_first_content_timeout: self.millis(
                &r.stream_first_content_timeout_ms,
                "resilience.stream_first_content_timeout_ms",
                &Bounds {
                    min: 1,
                    max: 600_000,
                    default: 30_000,
                },
            ),
            breaker: self.breaker(r.breaker.as_ref().map(Spanned::get_ref)),
        }
    }

    fn breaker(&mut self, b: Option<&RawBreaker>) -> Breaker {
        let none = RawBreaker {
            failure_threshold: None,
            open_secs: None,
            half_open_probes: None,
        };
        let b = b.unwrap_or(&none);
        Breaker {
            failure_threshold: self.count(
                &b.failure_threshold,
                "resilience.breaker.failure_threshold",
                &Bounds {
                    min: 1,
                    max: 1_000,
                    default: 5,
                },
            ),
            open: self.secs(
                &b.open_secs,
                "resilience.breaker.open_secs",
                &Bounds {
                    min: 1,
                    max: 3_600,
                    default: 30,
                },
            ),
            half_open_probes: self.count(
                &b.half_open_probes,
                "resilience.breaker.half_open_probes",
                &Bounds {
                    min: 1,
                    max: 100,
                    default: 1,
                },
            ),
        }
    }

    pub(super) fn logging(&mut self, spanned: Option<&Spanned<RawLogging>>) -> Logging {
        let none = RawLogging {
            request_metadata: None,
            retention_days: None,
        };
        let l = spanned.map_or(&none, Spanned::get_ref);
        let days = self.int(
            &l.retention_days,
            "logging.retention_days",
            &Bounds {
                min: 1,
                max: 3_650,
                default: 30,
            },
        );
        Logging {
            request_metadata: l.request_metadata.as_ref().is_none_or(|r| *r.get_ref()),
            retention: Duration::from_secs(days.unsigned_abs() * 86_400),
        }
    }
}
