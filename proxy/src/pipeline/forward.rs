//! Stage 6, forward: build the upstream request and get an answer, trying the route's targets
//! in order. Only allowlisted request headers go upstream (never the client's key, cookies,
//! hop-by-hop or `X-Forwarded-*` headers); the provider's credential is decrypted for this
//! request and attached the way the provider expects. A target is left for the next one
//! only on the failures [`UpstreamFailure::falls_back`] allows, all of which happen before
//! a byte has gone to the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use krouter_config::store::CredentialKind;
use krouter_policy::{Provider, ProviderKind, Target};
use zeroize::Zeroizing;

use super::Shared;
use super::inspect::Inference;
use crate::ctx::RequestCtx;
use crate::dialect::{Progress, UsageScanner, anthropic};
use crate::error::{Reject, UpstreamFailure};
use crate::health::Outcome;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamBody;

/// Client request headers that go upstream; everything else stays behind.
pub static REQUEST_HEADERS: [HeaderName; 6] = [
    header::ACCEPT,
    header::USER_AGENT,
    HeaderName::from_static("anthropic-version"),
    HeaderName::from_static("anthropic-beta"),
    HeaderName::from_static("openai-beta"),
    HeaderName::from_static("idempotency-key"),
];

/// Upstream response headers that go back to the client, besides those with an
/// allowlisted prefix ([`RESPONSE_HEADER_PREFIXES`]).
pub const RESPONSE_HEADERS: &[&str] = &["content-type", "cache-control", "retry-after"];

/// Prefixes of upstream response headers that go back (rate-limit information).
pub const RESPONSE_HEADER_PREFIXES: &[&str] = &["x-ratelimit-", "anthropic-ratelimit-"];

/// Client query parameters that go upstream (the Anthropic SDK's `beta=true`).
pub const QUERY_PARAMETERS: &[&str] = &["beta"];

/// Largest upstream error body relayed; a larger one becomes krouter's own error.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// Most stream bytes held back while waiting for the first content event; past it the
/// stream is let through (a lifecycle preamble is never this long).
pub const MAX_HELD: usize = 256 * 1024;

/// The answer to relay.
#[derive(Debug)]
pub enum Answer {
    /// A success (or other non-error) answer, streamed as it arrives.
    Stream {
        /// The upstream response, head received, body not yet read past `held`.
        response: Response<UpstreamBody>,
        /// Body bytes already read (a stream held until its first content), sent first.
        held: Vec<Bytes>,
        /// The usage scanner, which has seen `held`.
        scanner: UsageScanner,
        /// Longest pause allowed between body chunks.
        idle: Duration,
        /// When the whole response must have ended.
        deadline: Instant,
    },
    /// An upstream client error (4xx other than 429), read whole and bounded.
    Whole {
        /// Its status.
        status: StatusCode,
        /// Its allowlisted headers.
        headers: HeaderMap,
        /// Its body.
        body: Bytes,
    },
}

/// Tries each target in order; the first answer wins. A target whose breaker is open or
/// that rests after a 429 is skipped; one that refused or reset the connection before
/// answering is tried again after a backoff (within its provider's `retries` and the
/// policy's `retry_budget_ms`); every attempt's outcome goes to the target's health, under
/// its provider's breaker settings.
pub async fn first_answer(
    inference: &Inference,
    targets: &[Target],
    client: &Parts,
    ctx: &mut RequestCtx,
    shared: &Shared,
) -> Result<Answer, Reject> {
    let snapshot = Arc::clone(&ctx.snapshot);
    // The retry budget is per request: the policy's. The rest is each provider's own.
    let retry_budget = snapshot.policy().resilience().retry_budget();
    let mut last: Option<UpstreamFailure> = None;
    let mut retrying_since: Option<Instant> = None;
    let mut free_at: Option<i64> = None;
    for target in targets {
        let Some(provider) = snapshot.policy().provider(target.provider()) else {
            continue;
        };
        let key = (provider.name(), target.model());
        let resilience = provider.resilience();
        let breaker = resilience.breaker();
        let mut retries = 0;
        loop {
            let now = crate::ctx::now_ms();
            let pass = match shared.health.enter(key.0, key.1, breaker, now) {
                Ok(pass) => pass,
                Err(until_ms) => {
                    free_at = Some(free_at.map_or(until_ms, |t| t.min(until_ms)));
                    break;
                }
            };
            // The target names the provider by its name: the same text, shared.
            ctx.provider = Some(Arc::clone(target.shared_provider()));
            ctx.upstream_model = Some(Arc::clone(target.shared_model()));
            ctx.attempts += 1;
            let result = attempt(inference, target, provider, client, &snapshot, shared).await;
            let failure = match result {
                Ok(answer) => {
                    pass.report(key, Outcome::Answered, breaker, &shared.recorder);
                    shared.metrics.attempt(target.shared_provider(), "answered");
                    return Ok(answer);
                }
                Err(failure) => failure,
            };
            shared
                .metrics
                .attempt(target.shared_provider(), failure.name());
            pass.report(
                key,
                failure.outcome(resilience.rate_limit_cooldown()),
                breaker,
                &shared.recorder,
            );
            log_failure(ctx, provider.name(), target.model(), failure);
            if !failure.falls_back() {
                return Err(Reject::Upstream(failure));
            }
            last = Some(failure);
            if !failure.retries() || retries >= resilience.retries() {
                break;
            }
            let wait = backoff(
                resilience.backoff_initial(),
                resilience.backoff_max(),
                retries,
            );
            let since = *retrying_since.get_or_insert_with(Instant::now);
            if since.elapsed() + wait > retry_budget {
                break;
            }
            retries += 1;
            tokio::time::sleep(wait).await;
        }
    }
    match (last, free_at) {
        (Some(failure), _) => Err(Reject::Upstream(failure)),
        (None, Some(until_ms)) => Err(Reject::Unavailable {
            retry_after_secs: seconds_until(until_ms),
        }),
        (None, None) => Err(Reject::Upstream(UpstreamFailure::Connect)),
    }
}

/// Whole seconds from now to `until_ms` (unix milliseconds), rounded up, at least 1.
pub fn seconds_until(until_ms: i64) -> u64 {
    let left = until_ms.saturating_sub(crate::ctx::now_ms()).max(0);
    u64::try_from(left).unwrap_or(0).div_ceil(1000).max(1)
}

/// The wait before retry number `done + 1`: `initial` doubled per retry done, at most
/// `max`, then jittered to between half and all of it, so clients that failed together do
/// not retry together.
fn backoff(initial: Duration, max: Duration, done: u32) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let full = initial.saturating_mul(2u32.saturating_pow(done)).min(max);
    let half = full / 2;
    let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    // A fresh `RandomState` is randomly keyed: enough randomness for a jitter.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    half + Duration::from_micros(random % spread.saturating_add(1))
}

fn log_failure(ctx: &RequestCtx, provider: &str, model: &str, failure: UpstreamFailure) {
    if ctx.loggable() {
        tracing::info!(
            request_id = ctx.id.as_str(),
            provider,
            upstream_model = model,
            failure = %failure,
            "upstream attempt failed"
        );
    } else {
        tracing::info!(
            request_id = ctx.id.as_str(),
            failure = %failure,
            "upstream attempt failed"
        );
    }
}

async fn attempt(
    inference: &Inference,
    target: &Target,
    provider: &Provider,
    client: &Parts,
    snapshot: &Snapshot,
    shared: &Shared,
) -> Result<Answer, UpstreamFailure> {
    let request = build(inference, target, provider, client, snapshot)?;
    let timeouts = provider.timeouts();
    let started = Instant::now();
    let response = shared
        .upstream
        .send(request, timeouts.connect(), timeouts.first_byte())
        .await?;
    let status = response.status();
    if status.is_server_error() {
        return Err(UpstreamFailure::ServerError(status.as_u16()));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(UpstreamFailure::RateLimited {
            retry_after: retry_after(response.headers()),
        });
    }
    if status.is_redirection() {
        return Err(UpstreamFailure::Redirect);
    }
    if matches!(status.as_u16(), 401 | 403 | 407) {
        return Err(UpstreamFailure::CredentialRefused);
    }
    if status.is_client_error() {
        let headers = response_headers(response.headers());
        let read = Limited::new(response.into_body(), MAX_ERROR_BODY).collect();
        let body = match tokio::time::timeout(timeouts.idle(), read).await {
            Err(_) => return Err(UpstreamFailure::Timeout),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(UpstreamFailure::OversizedError);
            }
            Ok(Err(_)) => return Err(UpstreamFailure::Connect),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        return Ok(Answer::Whole {
            status,
            headers,
            body,
        });
    }
    let deadline = started + timeouts.total();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let scanner = UsageScanner::new(content_type);
    if !(inference.stream && status.is_success() && scanner.is_sse()) {
        return Ok(Answer::Stream {
            response,
            held: Vec::new(),
            scanner,
            idle: timeouts.idle(),
            deadline,
        });
    }
    let wait = provider.resilience().stream_first_content_timeout();
    let (response, held, scanner) = first_content(response, scanner, wait, deadline).await?;
    Ok(Answer::Stream {
        response,
        held,
        scanner,
        idle: timeouts.idle(),
        deadline,
    })
}

/// Reads a stream until its first content-bearing event (at most `wait`, and not past
/// `deadline`), keeping what it read for the client. A stream that ends, errs, or sends an
/// error event first is a failure the next target can take over. Past [`MAX_HELD`] bytes
/// without a verdict the stream is let through as it is.
async fn first_content(
    response: Response<UpstreamBody>,
    mut scanner: UsageScanner,
    wait: Duration,
    deadline: Instant,
) -> Result<(Response<UpstreamBody>, Vec<Bytes>, UsageScanner), UpstreamFailure> {
    let (parts, mut body) = response.into_parts();
    let until = tokio::time::Instant::from_std((Instant::now() + wait).min(deadline));
    let mut held = Vec::new();
    let mut size = 0;
    loop {
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => return Err(UpstreamFailure::NoContentInTime),
            Ok(None) => return Err(UpstreamFailure::EmptyStream),
            Ok(Some(Err(_))) => return Err(UpstreamFailure::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers before content are dropped: the stream has not begun for the client.
        if let Ok(data) = frame.into_data() {
            scanner.feed(&data);
            size += data.len();
            held.push(data);
        }
        match scanner.progress() {
            Progress::Content => break,
            Progress::Error => return Err(UpstreamFailure::StreamError),
            Progress::Ended => return Err(UpstreamFailure::EmptyStream),
            Progress::Waiting if size > MAX_HELD => break,
            Progress::Waiting => {}
        }
    }
    Ok((Response::from_parts(parts, body), held, scanner))
}

/// The upstream's `Retry-After`: delay seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The upstream request for `target`.
fn build(
    inference: &Inference,
    target: &Target,
    provider: &Provider,
    client: &Parts,
    snapshot: &Snapshot,
) -> Result<Request<Full<Bytes>>, UpstreamFailure> {
    let base = provider.base_url().as_str();
    let suffix = inference.endpoint.upstream_suffix();
    let mut uri = String::with_capacity(base.len() + suffix.len() + 16);
    uri.push_str(base);
    uri.push_str(suffix);
    push_allowed_query(&mut uri, client.uri.query());
    let body = inference.body_for(target.model());
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::try_from(uri).map_err(|_| UpstreamFailure::Connect)?;
    let headers = request.headers_mut();
    // One pass over the client's few headers, not a lookup per allowlisted name.
    for (name, value) in &client.headers {
        if REQUEST_HEADERS.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if provider.kind() == ProviderKind::Anthropic
        && !headers.contains_key(&anthropic::VERSION_HEADER)
    {
        headers.insert(
            anthropic::VERSION_HEADER.clone(),
            HeaderValue::from_static(anthropic::DEFAULT_VERSION),
        );
    }
    if let Some(name) = provider.credential() {
        let (header_name, value) = credential_header(provider.kind(), snapshot, name)?;
        headers.insert(header_name, value);
    }
    Ok(request)
}

/// Appends the client's query parameters that go upstream: only those in
/// [`QUERY_PARAMETERS`], so a client cannot add parameters (an `api-version`, a `key=`) to a
/// request that carries krouter's credential.
fn push_allowed_query(uri: &mut String, query: Option<&str>) {
    let Some(query) = query else { return };
    let mut separator = '?';
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if QUERY_PARAMETERS.contains(&name) {
            uri.push(separator);
            uri.push_str(pair);
            separator = '&';
        }
    }
}

/// The credential header for a provider of `kind`: `x-api-key` for Anthropic, a bearer
/// token otherwise. The value is marked sensitive (never indexed by HTTP/2 header
/// compression) and its plaintext copies are wiped.
fn credential_header(
    kind: ProviderKind,
    snapshot: &Snapshot,
    name: &str,
) -> Result<(HeaderName, HeaderValue), UpstreamFailure> {
    let stored = snapshot.vault().kind(name);
    if !stored.is_some_and(|stored| fits(stored, kind)) {
        tracing::warn!(
            credential = name,
            provider_kind = %kind,
            stored_kind = stored.map(CredentialKind::as_str),
            "credential missing or stored for another kind of provider; not sent"
        );
        return Err(UpstreamFailure::Credential);
    }
    let credential = snapshot
        .vault()
        .open(name)
        .map_err(|_| UpstreamFailure::Credential)?;
    let secret = credential.expose_secret();
    let (header_name, text) = match kind {
        ProviderKind::Anthropic => (
            anthropic::API_KEY_HEADER.clone(),
            Zeroizing::new(secret.to_vec()),
        ),
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            let mut text = Zeroizing::new(Vec::with_capacity(7 + secret.len()));
            text.extend_from_slice(b"Bearer ");
            text.extend_from_slice(secret);
            (header::AUTHORIZATION, text)
        }
    };
    let mut value = HeaderValue::from_bytes(&text).map_err(|_| UpstreamFailure::Credential)?;
    value.set_sensitive(true);
    Ok((header_name, value))
}

/// Whether a credential stored as `stored` may be sent to a provider of `kind`: an OpenAI
/// key only to OpenAI, an Anthropic key only to Anthropic, anything else only to
/// OpenAI-compatible servers. One slip in a policy must not send a paid key elsewhere.
pub fn fits(stored: CredentialKind, kind: ProviderKind) -> bool {
    match (stored, kind) {
        (CredentialKind::OpenAi, ProviderKind::OpenAi)
        | (CredentialKind::Anthropic, ProviderKind::Anthropic)
        | (
            CredentialKind::OpenAiCompatible | CredentialKind::Generic,
            ProviderKind::OpenAiCompatible,
        ) => true,
        (CredentialKind::OpenAi, ProviderKind::Anthropic | ProviderKind::OpenAiCompatible)
        | (CredentialKind::Anthropic, ProviderKind::OpenAi | ProviderKind::OpenAiCompatible)
        | (
            CredentialKind::OpenAiCompatible | CredentialKind::Generic,
            ProviderKind::OpenAi | ProviderKind::Anthropic,
        ) => false,
    }
}

/// The upstream response headers the client may see.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        let text = name.as_str();
        if RESPONSE_HEADERS.contains(&text)
            || RESPONSE_HEADER_PREFIXES.iter().any(|p| text.starts_with(p))
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowlisted_query_parameters_go_upstream() {
        let allowed = |query: Option<&str>| {
            let mut uri = String::from("/v1/messages");
            push_allowed_query(&mut uri, query);
            uri
        };
        assert_eq!(allowed(None), "/v1/messages");
        assert_eq!(allowed(Some("beta=true")), "/v1/messages?beta=true");
        assert_eq!(
            allowed(Some("key=abc&beta=true&api-version=1")),
            "/v1/messages?beta=true"
        );
        assert_eq!(allowed(Some("betax=1&beta")), "/v1/messages?beta");
        assert_eq!(allowed(Some("beta=1&beta=2")), "/v1/messages?beta=1&beta=2");
        assert_eq!(allowed(Some("")), "/v1/messages");
    }

    #[test]
    fn credentials_go_only_to_their_kind_of_provider() {
        use CredentialKind as C;
        use ProviderKind as P;
        assert!(fits(C::OpenAi, P::OpenAi));
        assert!(fits(C::Anthropic, P::Anthropic));
        assert!(fits(C::Generic, P::OpenAiCompatible));
        assert!(!fits(C::OpenAi, P::OpenAiCompatible));
        assert!(!fits(C::Anthropic, P::OpenAi));
        assert!(!fits(C::Generic, P::Anthropic));
    }

    #[test]
    fn only_allowlisted_response_headers_come_back() {
        let mut upstream = HeaderMap::new();
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("x-ratelimit-remaining-requests", "9"),
            ("anthropic-ratelimit-tokens-limit", "1000"),
            ("set-cookie", "session=abc"),
            ("server", "upstream/1.0"),
            ("x-request-id", "upstream-id"),
            ("connection", "keep-alive"),
        ] {
            upstream.append(name, HeaderValue::from_static(value));
        }
        let out = response_headers(&upstream);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "x-ratelimit-remaining-requests",
                "anthropic-ratelimit-tokens-limit"
            ]
        );
    }
}
