//! Checks of the `[resilience]` (retries, backoff, circuit breaker) sections, the policy's and
//! each provider's, and of `[logging]`.

use std::time::Duration;

use toml::Spanned;

use crate::model::{Breaker, Logging, Resilience};
use crate::raw::{RawBreaker, RawLogging, RawProviderResilience, RawResilience};
use crate::validate::{Bounds, Checker};

/// The fields of one resilience table, the policy's or a provider's (which has no retry
/// budget: that is per request).
struct Fields<'a> {
    retries: &'a Option<Spanned<i64>>,
    backoff_initial_ms: &'a Option<Spanned<i64>>,
    backoff_max_ms: &'a Option<Spanned<i64>>,
    retry_budget_ms: Option<&'a Option<Spanned<i64>>>,
    rate_limit_cooldown_secs: &'a Option<Spanned<i64>>,
    stream_first_content_timeout_ms: &'a Option<Spanned<i64>>,
    breaker: Option<&'a RawBreaker>,
}

// === impl Checker ===

impl Checker<'_> {
    /// The policy-wide `[resilience]`: every unset field takes its documented default.
    pub(super) fn resilience(&mut self, spanned: Option<&Spanned<RawResilience>>) -> Resilience {
        let Some(r) = spanned.map(Spanned::get_ref) else {
            return Resilience::DEFAULT;
        };
        let fields = Fields {
            retries: &r.retries,
            backoff_initial_ms: &r.backoff_initial_ms,
            backoff_max_ms: &r.backoff_max_ms,
            retry_budget_ms: Some(&r.retry_budget_ms),
            rate_limit_cooldown_secs: &r.rate_limit_cooldown_secs,
            stream_first_content_timeout_ms: &r.stream_first_content_timeout_ms,
            breaker: r.breaker.as_ref().map(Spanned::get_ref),
        };
        self.resilience_fields(&fields, "resilience", &Resilience::DEFAULT)
    }

    /// A provider's `[providers.resilience]`: every unset field takes the policy's value.
    pub(super) fn provider_resilience(
        &mut self,
        spanned: Option<&Spanned<RawProviderResilience>>,
        path: &str,
        policy: &Resilience,
    ) -> Resilience {
        let Some(r) = spanned.map(Spanned::get_ref) else {
            return *policy;
        };
        let fields = Fields {
            retries: &r.retries,
            backoff_initial_ms: &r.backoff_initial_ms,
            backoff_max_ms: &r.backoff_max_ms,
            retry_budget_ms: None,
            rate_limit_cooldown_secs: &r.rate_limit_cooldown_secs,
            stream_first_content_timeout_ms: &r.stream_first_content_timeout_ms,
            breaker: r.breaker.as_ref().map(Spanned::get_ref),
        };
        self.resilience_fields(&fields, &format!("{path}.resilience"), policy)
    }

    /// One resilience table at `path`, each unset field taken from `inherit`.
    fn resilience_fields(
        &mut self,
        r: &Fields<'_>,
        path: &str,
        inherit: &Resilience,
    ) -> Resilience {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let backoff_initial = self.millis(
            r.backoff_initial_ms,
            &format!("{path}.backoff_initial_ms"),
            &Bounds {
                min: 1,
                max: 60_000,
                default: ms(inherit.backoff_initial),
            },
        );
        let backoff_max = self.millis(
            r.backoff_max_ms,
            &format!("{path}.backoff_max_ms"),
            &Bounds {
                min: 1,
                max: 300_000,
                default: ms(inherit.backoff_max),
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
                format!("{path}.backoff_max_ms"),
                format!("must be at least {path}.backoff_initial_ms"),
            );
        }
        let retry_budget = match r.retry_budget_ms {
            Some(budget) => self.millis(
                budget,
                &format!("{path}.retry_budget_ms"),
                &Bounds {
                    min: 1,
                    max: 600_000,
                    default: ms(inherit.retry_budget),
                },
            ),
            None => inherit.retry_budget,
        };
        Resilience {
            retries: self.count(
                r.retries,
                &format!("{path}.retries"),
                &Bounds {
                    min: 0,
                    max: 5,
                    default: i64::from(inherit.retries),
                },
            ),
            backoff_initial,
            backoff_max,
            retry_budget,
            rate_limit_cooldown: self.secs(
                r.rate_limit_cooldown_secs,
                &format!("{path}.rate_limit_cooldown_secs"),
                &Bounds {
                    min: 1,
                    max: 3_600,
                    default: secs(inherit.rate_limit_cooldown),
                },
            ),
            stream_first_content_timeout: self.millis(
                r.stream_first_content_timeout_ms,
                &format!("{path}.stream_first_content_timeout_ms"),
                &Bounds {
                    min: 1,
                    max: 600_000,
                    default: ms(inherit.stream_first_content_timeout),
                },
            ),
            breaker: self.breaker(r.breaker, &format!("{path}.breaker"), &inherit.breaker),
        }
    }

    fn breaker(&mut self, b: Option<&RawBreaker>, path: &str, inherit: &Breaker) -> Breaker {
        let Some(b) = b else {
            return *inherit;
        };
        Breaker {
            failure_threshold: self.count(
                &b.failure_threshold,
                &format!("{path}.failure_threshold"),
                &Bounds {
                    min: 1,
                    max: 1_000,
                    default: i64::from(inherit.failure_threshold),
                },
            ),
            open: self.secs(
                &b.open_secs,
                &format!("{path}.open_secs"),
                &Bounds {
                    min: 1,
                    max: 3_600,
                    default: i64::try_from(inherit.open.as_secs()).unwrap_or(i64::MAX),
                },
            ),
            half_open_probes: self.count(
                &b.half_open_probes,
                &format!("{path}.half_open_probes"),
                &Bounds {
                    min: 1,
                    max: 100,
                    default: i64::from(inherit.half_open_probes),
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
