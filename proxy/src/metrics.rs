//! Prometheus metrics, in the OpenMetrics text format (which Prometheus reads), on a
//! listener of their own (`metrics_listen` in the settings; `127.0.0.1:20129` by default,
//! `"off"` for none), so that the client port never exposes them.
//!
//! Counted as requests end: requests by endpoint, status and provider; latency and time to
//! first byte by endpoint; rejections by reason (rate limit, budget, lockout, every target
//! unavailable); upstream attempts by provider and outcome. Counted as they happen: lockouts,
//! connections refused at accept (by cap or address list) and policy reloads (applied or
//! refused). Read at each scrape: the circuit breakers and rests, the metadata rows dropped,
//! and the policy serial in force. Labels are endpoint names, statuses and the policy's
//! provider and model names: never a key, a client address or anything a client chooses.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::ctx::RequestCtx;
use crate::dialect::Endpoint;
use crate::error::Reject;
use crate::pipeline::Shared;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrape connections served at once; more wait in the listen queue.
const MAX_SCRAPES: usize = 8;
/// How long a scrape connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Latency buckets, seconds: 5 ms to about 5 minutes.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Slots for per-endpoint handles: one per [`Endpoint`] and one for none.
const ENDPOINT_SLOTS: usize = 7;

/// The metrics krouter keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    ttfb: Family<EndpointLabels, Histogram>,
    /// Each endpoint's histograms (slot 0: no endpoint), taken from the families at first
    /// use: a request then skips the family's lock and label hash.
    latency_by: [OnceLock<Histogram>; ENDPOINT_SLOTS],
    ttfb_by: [OnceLock<Histogram>; ENDPOINT_SLOTS],
    rejections: Family<ReasonLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    lockouts: Counter,
    refused_connections: Family<ReasonLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    breakers: Family<TargetLabels, Gauge>,
    dropped: Counter,
    dropped_seen: AtomicU64,
    serial: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
    /// `None` (no provider tried) is written as an empty value.
    provider: Option<Arc<str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    provider: String,
    model: String,
    state: &'static str,
}

/// The label of `endpoint` (`none` when the request matched none).
fn endpoint_label(endpoint: Option<Endpoint>) -> &'static str {
    endpoint.map_or("none", Endpoint::as_str)
}

/// The histogram of `family` for `endpoint`, through its handle in `handles`.
fn cached<'a>(
    handles: &'a [OnceLock<Histogram>; ENDPOINT_SLOTS],
    family: &Family<EndpointLabels, Histogram>,
    endpoint: Option<Endpoint>,
) -> Option<&'a Histogram> {
    let slot = match endpoint {
        None => 0,
        Some(Endpoint::ChatCompletions) => 1,
        Some(Endpoint::Embeddings) => 2,
        Some(Endpoint::Responses) => 3,
        Some(Endpoint::Models) => 4,
        Some(Endpoint::Messages) => 5,
        Some(Endpoint::CountTokens) => 6,
    };
    let handle = handles.get(slot)?;
    Some(handle.get_or_init(|| {
        let endpoint = endpoint_label(endpoint);
        family.get_or_create(&EndpointLabels { endpoint }).clone()
    }))
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered and at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("krouter");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint, status and the provider tried last",
            requests.clone(),
        );
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            latency.clone(),
        );
        let ttfb = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "time_to_first_byte_seconds",
            "Time from a request's arrival to the first response body byte",
            ttfb.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejections",
            "Requests refused by rate limits, token budgets, lockouts, or because every target was unavailable",
            rejections.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Upstream attempts by provider and outcome",
            attempts.clone(),
        );
        let lockouts = Counter::default();
        registry.register(
            "lockouts",
            "Client addresses locked out after failed authentications",
            lockouts.clone(),
        );
        let refused_connections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections refused as they were accepted: over max_connections, over max_connections_per_address, or from an address the policy's lists deny",
            refused_connections.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "New policy files applied or refused",
            reloads.clone(),
        );
        let breakers = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "target_unavailable",
            "Targets skipped by routing: circuit breaker open or half-open, or resting after a 429 (1 per target and state)",
            breakers.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "metadata_rows_dropped",
            "State rows (request metadata, lockout, breaker) dropped because the writer's queue was full or a write failed",
            dropped.clone(),
        );
        let serial = Gauge::default();
        registry.register(
            "policy_serial",
            "Serial of the policy in force",
            serial.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            ttfb,
            latency_by: Default::default(),
            ttfb_by: Default::default(),
            rejections,
            attempts,
            lockouts,
            refused_connections,
            reloads,
            breakers,
            dropped,
            dropped_seen: AtomicU64::new(0),
            serial,
        }
    }

    /// Counts a request that has ended.
    pub fn request(&self, ctx: &RequestCtx, reject: Option<&Reject>) {
        let labels = RequestLabels {
            endpoint: endpoint_label(ctx.endpoint),
            status: ctx.status,
            provider: ctx.provider.clone(),
        };
        self.requests.get_or_create(&labels).inc();
        if let Some(latency) = cached(&self.latency_by, &self.latency, ctx.endpoint) {
            latency.observe(ctx.started.elapsed().as_secs_f64());
        }
        if let Some(first) = ctx.first_byte
            && let Some(ttfb) = cached(&self.ttfb_by, &self.ttfb, ctx.endpoint)
        {
            ttfb.observe(first.as_secs_f64());
        }
        let reason = match reject {
            Some(Reject::RateLimited { .. }) => "rate_limited",
            Some(Reject::BudgetExhausted { .. }) => "budget_exhausted",
            Some(Reject::LockedOut { .. }) => "locked_out",
            Some(Reject::Unavailable { .. }) => "targets_unavailable",
            _ => return,
        };
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one upstream attempt on `provider`: `outcome` is `answered` or the failure.
    pub fn attempt(&self, provider: &Arc<str>, outcome: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                provider: Arc::clone(provider),
                outcome,
            })
            .inc();
    }

    /// Counts a client connection refused at accept: `reason` is `max_connections`,
    /// `max_connections_per_address` or `address_denied`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.refused_connections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an address locked out.
    pub fn lockout(&self) {
        self.lockouts.inc();
    }

    /// Counts a policy file applied (`true`) or refused.
    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The exposition, with the figures read at scrape time brought up to date.
    pub fn scrape(&self, shared: &Shared) -> String {
        let snapshot = shared.live.load();
        let policy = snapshot.policy();
        self.serial
            .set(i64::try_from(policy.serial().get()).unwrap_or(i64::MAX));
        let dropped = shared.recorder.dropped();
        let seen = self.dropped_seen.swap(dropped, Ordering::Relaxed);
        self.dropped.inc_by(dropped.saturating_sub(seen));
        self.breakers.clear();
        let now = crate::ctx::now_ms();
        for (provider, model, state) in shared.health.states(now) {
            self.breakers
                .get_or_create(&TargetLabels {
                    provider,
                    model,
                    state,
                })
                .set(1);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::warn!("could not encode the metrics");
        }
        text
    }
}

/// Serves `GET /metrics` on `listener` (HTTP/1.1), forever; anything else gets 404 (405
/// for another method on `/metrics`).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&request, &shared);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // A scrape takes milliseconds; a connection that lingers is cut.
            let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
            drop(permit);
        });
    }
}

fn answer(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            CONTENT_TYPE,
            Bytes::from(shared.metrics.scrape(shared)),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"only GET\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: the metrics are at /metrics\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
    }
    response
}
