//! Stage 8, record: one log line and one metadata row per request, when its response has
//! ended. Metadata only: time, request id, key id, group, model, provider, upstream model,
//! status, latency, time to first byte, tokens. Never a body, never a key. A group with
//! `no_log = true` gets no row and a log line without key, group or model; its requests are
//! only counted in daily aggregates (group, model, provider: requests, errors, tokens). A
//! policy with `[logging] request_metadata = false` keeps no rows at all. Recording never
//! fails or delays a response: the row goes to the bounded [`Recorder`] queue.

use krouter_config::state::{AggregateRow, RequestRow};

use super::Shared;
use crate::ctx::RequestCtx;
use crate::error::{Origin, Reject};

/// Logs and records the request, and charges its tokens to its group's budgets.
pub fn finish(ctx: &RequestCtx, shared: &Shared, reject: Option<&Reject>) {
    let recorder = &shared.recorder;
    shared.metrics.request(ctx, reject);
    if let Some(group) = ctx.caller.as_ref().and_then(|c| c.group.as_deref()) {
        let tokens = ctx
            .usage
            .input
            .unwrap_or(0)
            .saturating_add(ctx.usage.output.unwrap_or(0));
        shared.budgets.charge(group, tokens, crate::ctx::now_ms());
    }
    let latency_ms = millis(ctx.started.elapsed());
    let ttfb_ms = ctx.first_byte.map(millis);
    let origin = reject.map(Reject::origin);
    let endpoint = ctx.endpoint.map_or("-", |e| e.as_str());
    let rejected = reject.map(|r| r.to_string());
    if ctx.loggable() {
        let caller = ctx.caller.as_ref();
        crate::logging::request(&crate::logging::RequestLine {
            request_id: ctx.id.as_str(),
            client: ctx.client,
            endpoint,
            key_id: caller.and_then(|c| c.key_id.as_deref()),
            group: caller.and_then(|c| c.group.as_deref()),
            model: ctx.model.as_deref(),
            stream: ctx.stream,
            provider: ctx.provider.as_deref(),
            upstream_model: ctx.upstream_model.as_deref(),
            attempts: ctx.attempts,
            status: ctx.status,
            latency_ms,
            ttfb_ms,
            tokens_in: ctx.usage.input,
            tokens_out: ctx.usage.output,
            rejected: rejected.as_deref(),
            origin: origin.map(origin_name),
            cut_short: ctx.cut_short,
        });
        let logging = ctx.snapshot.policy().logging();
        if !logging.request_metadata() {
            return;
        }
        recorder.send(
            logging.retention(),
            RequestRow {
                at_ms: ctx.at_ms,
                request_id: ctx.id.as_str().to_owned(),
                key_id: caller.and_then(|c| c.key_id.clone()),
                group: caller.and_then(|c| c.group.clone()),
                model: ctx.model.clone(),
                provider: ctx.provider.clone(),
                upstream_model: ctx.upstream_model.clone(),
                status: ctx.status,
                latency_ms,
                ttfb_ms,
                tokens_in: ctx.usage.input,
                tokens_out: ctx.usage.output,
            },
        );
    } else {
        tracing::info!(
            request_id = ctx.id.as_str(),
            endpoint,
            status = ctx.status,
            latency_ms,
            rejected = rejected.as_deref(),
            "request (no_log group)"
        );
        let logging = ctx.snapshot.policy().logging();
        let group = ctx.caller.as_ref().and_then(|c| c.group.as_deref());
        if let Some(group) = group
            && logging.request_metadata()
        {
            recorder.aggregate(
                logging.retention(),
                AggregateRow {
                    at_ms: ctx.at_ms,
                    group: group.to_owned(),
                    model: ctx.model.as_deref().unwrap_or_default().to_owned(),
                    provider: ctx.provider.as_deref().unwrap_or_default().to_owned(),
                    error: ctx.status >= 400,
                    tokens_in: ctx.usage.input.unwrap_or(0),
                    tokens_out: ctx.usage.output.unwrap_or(0),
                },
            );
        }
    }
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Client => "client",
        Origin::Upstream => "upstream",
        Origin::Internal => "internal",
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
