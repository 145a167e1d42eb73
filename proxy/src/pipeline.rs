//! The request path. [`handle`] is the only place that knows the order of the stages; each
//! stage is a module with one entry function over the request's [`RequestCtx`], and no
//! stage calls another.
//!
//! 1. [`accept`]: ambiguous framing, and a declared body too large for any endpoint,
//!    refused before anything is read. Only the client address check ([`admit::address`]:
//!    allow and deny lists, lockout) comes before it, because the policy says addresses are
//!    checked before anything else.
//! 2. [`classify`]: health and readiness, a client endpoint and its dialect, or 405 or 404.
//!    A CORS preflight is answered just before ([`crate::cors`]).
//! 3. [`admit`]: the browser origin, the API key (checksum before lookup; revoked, expired;
//!    failures counted toward the lockout), then the request rate and the token budgets.
//! 4. [`inspect`]: the body, bounded; only what routing needs (model, stream).
//! 5. [`route`]: the caller's group may use the model; the model's targets in this dialect,
//!    without those whose breaker is open or that rest after a 429.
//! 6. [`forward`]: the upstream request (header allowlist, credential, SSRF-checked
//!    connect), retried on the same target when it got no answer at all, falling back to
//!    the next target only before anything reached the client; a stream is held until its
//!    first content.
//! 7. [`relay`]: the answer streamed back as it arrives, usage read on the way.
//! 8. [`record`]: one metadata row and one log line, and the tokens charged to the group's
//!    budgets, when the response has ended.
//!
//! Rejections from any stage go to [`crate::respond`], the one place that makes them
//! responses.

use std::net::IpAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use krouter_config::apikey::DigestKey;
use serde_json::json;

use crate::body::Body;
use crate::budget::Budgets;
use crate::ctx::RequestCtx;
use crate::dialect;
use crate::error::Reject;
use crate::health::Health;
use crate::limits::Limits;
use crate::lockout::Lockouts;
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::respond;
use crate::snapshot::Live;
use crate::upstream::Upstream;

pub mod accept;
pub mod admit;
pub mod classify;
pub mod forward;
pub mod inspect;
pub mod record;
pub mod relay;
pub mod route;

/// What every request shares: the live snapshot, the upstream client, the state recorder,
/// the secret that turns an API key into its digest, the lockout table, the rate limits and
/// the targets' health.
pub struct Shared {
    /// The policy and store view in force.
    pub live: Live,
    /// The upstream client.
    pub upstream: Upstream,
    /// The metadata writer.
    pub recorder: Recorder,
    /// `API_KEY_SECRET`, prepared once for the digest of each presented key.
    pub api_key_digest: DigestKey,
    /// Failed authentications and locked addresses.
    pub lockouts: Lockouts,
    /// Request-rate limiters.
    pub limits: Limits,
    /// Per-target circuit breakers and 429 rests.
    pub health: Arc<Health>,
    /// The groups' token budgets.
    pub budgets: Budgets,
    /// The Prometheus metrics.
    pub metrics: Metrics,
}

/// How the stages ended, short of a rejection.
enum Outcome {
    /// krouter answered itself (health, model list); recorded now.
    Answered(Response<Body>),
    /// A health check: answered, neither logged nor recorded.
    Health(Response<Body>),
    /// An upstream answered; recorded when its body ends.
    Upstream(forward::Answer),
}

/// Serves one request.
pub async fn handle(
    request: Request<Incoming>,
    peer: IpAddr,
    shared: &Arc<Shared>,
) -> Response<Body> {
    let dialect = dialect::guess(request.uri().path(), request.headers());
    let snapshot = shared.live.load();
    let trusted = snapshot.policy().access().trusted_proxies();
    let client = crate::address::client(peer, request.headers(), trusted);
    let mut ctx = RequestCtx::new(client, snapshot, dialect);
    let outcome = {
        let mut unanswered = Unanswered {
            ctx: &mut ctx,
            shared,
            armed: true,
        };
        let outcome = stages(request, &mut *unanswered.ctx, shared).await;
        unanswered.armed = false;
        outcome
    };
    match outcome {
        Ok(Outcome::Health(response)) => response,
        Ok(Outcome::Answered(response)) => {
            record::finish(&ctx, shared, None);
            response
        }
        Ok(Outcome::Upstream(answer)) => {
            let shared = Arc::clone(shared);
            relay::response(
                answer,
                ctx,
                Box::new(move |ctx: &RequestCtx| record::finish(ctx, &shared, None)),
            )
        }
        Err(reject) => {
            let response = respond::reject(&reject, &mut ctx);
            record::finish(&ctx, shared, Some(&reject));
            response
        }
    }
}

/// The status a request gets in its log line and metadata row when its connection closed
/// before it had an answer (nginx's "client closed request"); no client ever sees it.
const CLOSED_BEFORE_ANSWER: u16 = 499;

/// Watches a request while its stages await (reading the body, waiting for an upstream): if
/// its future is dropped there, because the client went away or shutdown's deadline passed,
/// the request is still logged and recorded, with status 499. Every other ending is recorded
/// by [`handle`] or by the relayed body.
struct Unanswered<'a> {
    ctx: &'a mut RequestCtx,
    shared: &'a Shared,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.ctx.status = CLOSED_BEFORE_ANSWER;
            self.ctx.cut_short = Some("the connection closed before the answer");
            record::finish(self.ctx, self.shared, None);
        }
    }
}

async fn stages(
    request: Request<Incoming>,
    ctx: &mut RequestCtx,
    shared: &Shared,
) -> Result<Outcome, Reject> {
    let (parts, body) = request.into_parts();
    admit::address(&parts, ctx, shared)?;
    accept::limits(&parts, ctx)?;
    if crate::cors::is_preflight(&parts) {
        return Ok(Outcome::Answered(crate::cors::preflight(&parts, ctx)?));
    }
    let endpoint = match classify::request(&parts, ctx)? {
        classify::Class::Health => {
            return Ok(Outcome::Health(health(ctx, StatusCode::OK, "ok")));
        }
        classify::Class::Ready => {
            let (status, text) = if shared.live.store_readable() {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "store unreadable")
            };
            return Ok(Outcome::Health(health(ctx, status, text)));
        }
        classify::Class::Api(endpoint) => endpoint,
    };
    admit::caller(&parts, ctx, shared)?;
    if endpoint == dialect::Endpoint::Models {
        let list = route::models(ctx);
        return Ok(Outcome::Answered(respond::json(StatusCode::OK, list, ctx)));
    }
    let mut inference = inspect::body(body, endpoint, ctx).await?;
    if crate::budget::applies(ctx) {
        ctx.hide_usage_chunk = inference.count_usage();
    }
    let targets = route::targets(&inference, ctx, &shared.health)?;
    let answer = forward::first_answer(&inference, &targets, &parts, ctx, shared).await?;
    Ok(Outcome::Upstream(answer))
}

/// `/healthz` and `/readyz` answers.
fn health(ctx: &mut RequestCtx, status: StatusCode, text: &str) -> Response<Body> {
    let body = json!({"status": text, "policy_serial": ctx.snapshot.policy().serial().get()});
    respond::json(status, bytes::Bytes::from(body.to_string()), ctx)
}
