//! Stage 5, route: may the caller's group use the model, and which targets serve it in the
//! caller's dialect. The group is checked first, so a caller cannot learn which models exist
//! beyond the ones it may use. A key whose group the policy in force no longer has may use
//! nothing. Targets whose breaker is open, or that rest after a 429, are skipped; when that
//! leaves none, the answer is 503 with `Retry-After` (the soonest a target frees up).

use bytes::Bytes;
use krouter_policy::{Policy, ProviderKind, Target};

use super::forward::seconds_until;
use super::inspect::Inference;
use crate::ctx::RequestCtx;
use crate::dialect::{self, Dialect};
use crate::error::Reject;
use crate::health::{Availability, Health};

/// The targets to try, in order.
pub fn targets(
    inference: &Inference,
    ctx: &mut RequestCtx,
    health: &Health,
) -> Result<Vec<Target>, Reject> {
    let policy = ctx.snapshot.policy();
    if !may_use(policy, ctx, &inference.model) {
        return Err(Reject::ModelNotAllowed);
    }
    let route = policy.route(&inference.model).ok_or(Reject::UnknownModel)?;
    let targets: Vec<Target> = route
        .targets()
        .iter()
        .filter(|t| {
            policy
                .provider(t.provider())
                .is_some_and(|p| speaks(p.kind(), ctx.dialect))
        })
        .cloned()
        .collect();
    if targets.is_empty() {
        return Err(Reject::WrongDialect);
    }
    if health.tracked() == 0 {
        return Ok(targets);
    }
    let now = crate::ctx::now_ms();
    let mut free_at: Option<i64> = None;
    let available: Vec<Target> = targets
        .into_iter()
        .filter(|t| {
            let Some(provider) = policy.provider(t.provider()) else {
                return false;
            };
            let breaker = provider.resilience().breaker();
            match health.availability(t.provider(), t.model(), breaker, now) {
                Availability::Ready => true,
                Availability::Unavailable { until_ms } => {
                    free_at = Some(free_at.map_or(until_ms, |at| at.min(until_ms)));
                    false
                }
            }
        })
        .collect();
    if available.is_empty() {
        return Err(Reject::Unavailable {
            retry_after_secs: seconds_until(free_at.unwrap_or(now)),
        });
    }
    Ok(available)
}

/// The `GET /v1/models` body: the routes the caller may use over its API (those with a
/// target whose provider speaks the caller's dialect), in the caller's dialect.
pub fn models(ctx: &RequestCtx) -> Bytes {
    let policy = ctx.snapshot.policy();
    let names = policy
        .routes()
        .iter()
        .filter(|route| {
            route.targets().iter().any(|t| {
                policy
                    .provider(t.provider())
                    .is_some_and(|p| speaks(p.kind(), ctx.dialect))
            })
        })
        .map(krouter_policy::Route::model)
        .filter(|model| may_use(policy, ctx, model));
    match ctx.dialect {
        Dialect::OpenAi => dialect::openai::model_list(names),
        Dialect::Anthropic => dialect::anthropic::model_list(names),
    }
}

/// Whether the caller's group may use `model`; an anonymous caller (admitted only when the
/// policy does not require keys) may use every route.
fn may_use(policy: &Policy, ctx: &RequestCtx, model: &str) -> bool {
    match ctx.caller.as_ref().and_then(|c| c.group.as_deref()) {
        None => ctx.caller.as_ref().is_some_and(|c| c.key_id.is_none()),
        Some(group) => policy
            .access()
            .group(group)
            .is_some_and(|g| g.allows_model(model)),
    }
}

/// Whether a provider of `kind` serves clients of `dialect` (no translation yet).
pub fn speaks(kind: ProviderKind, dialect: Dialect) -> bool {
    match (kind, dialect) {
        (ProviderKind::OpenAi | ProviderKind::OpenAiCompatible, Dialect::OpenAi)
        | (ProviderKind::Anthropic, Dialect::Anthropic) => true,
        (ProviderKind::OpenAi | ProviderKind::OpenAiCompatible, Dialect::Anthropic)
        | (ProviderKind::Anthropic, Dialect::OpenAi) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_serve_their_own_dialect_only() {
        assert!(speaks(ProviderKind::OpenAiCompatible, Dialect::OpenAi));
        assert!(speaks(ProviderKind::Anthropic, Dialect::Anthropic));
        assert!(!speaks(ProviderKind::OpenAi, Dialect::Anthropic));
        assert!(!speaks(ProviderKind::Anthropic, Dialect::OpenAi));
    }
}
