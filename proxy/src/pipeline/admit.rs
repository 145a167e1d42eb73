//! Stage 3, admit: who may talk to krouter. [`address`] runs first, before any other stage:
//! the client address (the socket peer, or what a trusted proxy says in `X-Forwarded-For`)
//! against the policy's deny and allow lists, then the brute-force lockout, so a locked
//! address is answered 429 before any key is looked at. [`caller`] then checks the browser
//! origin (CORS) and the API key, from `Authorization: Bearer` (OpenAI SDKs) or `x-api-key`
//! (Anthropic SDKs): checksum before any lookup, so a typo or a random string costs no HMAC;
//! lookup by HMAC digest, confirmed in constant time; revoked and expired keys refused with
//! their own message. Every failed authentication is logged (address and reason, the key id
//! only when the key was found, never key material) and counted toward the lockout. Last,
//! the request rate: per key at its group's `requests_per_minute`, per address for requests
//! without a valid key.

use std::time::Duration;

use http::HeaderMap;
use http::request::Parts;
use krouter_config::apikey::ApiKey;

use super::Shared;
use crate::address::ClientKey;
use crate::cors::{self, Origin};
use crate::ctx::{Caller, RequestCtx};
use crate::dialect::anthropic;
use crate::error::Reject;
use crate::lockout::{Failure, Rules};

/// Admits the client address: allow and deny lists, then the lockout.
pub fn address(parts: &Parts, ctx: &mut RequestCtx, shared: &Shared) -> Result<(), Reject> {
    let access = ctx.snapshot.policy().access();
    if !access.ip_admitted(ctx.client) {
        return Err(Reject::AddressDenied);
    }
    match shared.lockouts.locked(ClientKey::of(ctx.client), ctx.at_ms) {
        Some(left) => {
            // A page from an allowed origin may read the 429 and its `Retry-After` (a
            // header match only: no key is looked at).
            if let Origin::Allowed(origin) = cors::origin(&parts.headers, access) {
                ctx.cors_origin = Some(origin);
            }
            Err(Reject::LockedOut {
                retry_after_secs: seconds(left),
            })
        }
        None => Ok(()),
    }
}

/// Admits the caller or says why not.
pub fn caller(parts: &Parts, ctx: &mut RequestCtx, shared: &Shared) -> Result<(), Reject> {
    let result = authenticate(parts, ctx, shared);
    let access = ctx.snapshot.policy().access();
    let client = ClientKey::of(ctx.client);
    match result {
        Ok(()) => {
            let caller = ctx.caller.as_ref();
            let limit = caller
                .and_then(|c| Some((c.key_id.as_deref()?, c.group.as_deref()?)))
                .and_then(|(id, group)| {
                    Some((id, group, access.group(group)?.requests_per_minute()?))
                });
            match (limit, access.unauthenticated_requests_per_minute()) {
                (Some((id, group, per_minute)), _) => shared.limits.key(group, per_minute, id),
                // Keyless policy: every caller is anonymous and counted by address.
                (None, Some(per_minute)) if caller.is_some_and(|c| c.key_id.is_none()) => {
                    shared.limits.address(per_minute, client)
                }
                (None, _) => Ok(()),
            }
            .map_err(|wait| Reject::RateLimited {
                retry_after_secs: seconds(wait),
            })?;
            let group = caller
                .and_then(|c| c.group.as_deref())
                .and_then(|g| access.group(g));
            match group.map(|g| shared.budgets.check(g, ctx.at_ms)) {
                Some(Err(exhausted)) => Err(Reject::BudgetExhausted {
                    period: exhausted.period,
                    retry_after_secs: crate::pipeline::forward::seconds_until(
                        exhausted.refills_at_ms,
                    ),
                }),
                Some(Ok(())) | None => Ok(()),
            }
        }
        Err(reject) if counts_as_failure(&reject) => {
            let key_id = ctx.caller.as_ref().and_then(|c| c.key_id.as_deref());
            let failure = shared.lockouts.fail(
                client,
                ctx.at_ms,
                Rules::from(access.lockout()),
                &shared.recorder,
            );
            tracing::warn!(
                client = %ctx.client,
                reason = %reject,
                key_id,
                "authentication failed"
            );
            if let Failure::Locked(lock) = failure {
                shared.metrics.lockout();
                tracing::warn!(
                    client = %client,
                    failures = access.lockout().max_failures(),
                    window_secs = access.lockout().window().as_secs(),
                    locked_secs = lock.as_secs(),
                    "client locked out after failed authentications"
                );
                return Err(Reject::LockedOut {
                    retry_after_secs: seconds(lock),
                });
            }
            // Without a valid key, the address's own request rate applies.
            if let Some(per_minute) = access.unauthenticated_requests_per_minute()
                && let Err(wait) = shared.limits.address(per_minute, client)
            {
                return Err(Reject::RateLimited {
                    retry_after_secs: seconds(wait),
                });
            }
            Err(reject)
        }
        Err(reject) => Err(reject),
    }
}

/// The origin and key checks.
fn authenticate(parts: &Parts, ctx: &mut RequestCtx, shared: &Shared) -> Result<(), Reject> {
    let policy = ctx.snapshot.policy();
    let from_browser = match cors::origin(&parts.headers, policy.access()) {
        Origin::Absent => false,
        Origin::Allowed(origin) => {
            ctx.cors_origin = Some(origin);
            true
        }
        // Without keys (loopback only), a web page the operator visits could otherwise
        // spend the provider credentials: browsers send Origin on every cross-site and
        // rebinding POST, and API clients never do.
        Origin::Denied if !policy.access().require_api_keys() => {
            return Err(Reject::BrowserWithoutKey);
        }
        Origin::Denied => return Err(Reject::OriginDenied),
    };
    let Some(presented) = presented_key(&parts.headers)? else {
        if policy.access().require_api_keys() {
            return Err(Reject::MissingKey);
        }
        if from_browser {
            // A listed origin still needs a key: "allowed to read responses" is not
            // "allowed to spend credentials anonymously".
            return Err(Reject::BrowserWithoutKey);
        }
        ctx.caller = Some(Caller {
            key_id: None,
            group: None,
            no_log: false,
        });
        return Ok(());
    };
    let key = ApiKey::parse(presented).map_err(|_| Reject::InvalidKey)?;
    let digest = shared.api_key_digest.digest(&key);
    let entry = ctx
        .snapshot
        .keys()
        .find(&digest)
        .ok_or(Reject::InvalidKey)?;
    let group = policy.access().group(&entry.group);
    // Known from here on, so that a refused revoked or expired key is logged by its id.
    ctx.caller = Some(Caller {
        key_id: Some(entry.id.clone()),
        group: Some(entry.group.clone()),
        no_log: group.is_some_and(|g| g.no_log()),
    });
    if entry.revoked_at.is_some() {
        return Err(Reject::RevokedKey);
    }
    let now = ctx.at_ms / 1000;
    if entry.expires_at.is_some_and(|at| now >= at) {
        return Err(Reject::ExpiredKey);
    }
    Ok(())
}

/// Whether a rejection is a failed authentication, counted toward the lockout.
fn counts_as_failure(reject: &Reject) -> bool {
    match reject {
        Reject::MissingKey
        | Reject::InvalidKey
        | Reject::ConflictingKeys
        | Reject::RevokedKey
        | Reject::ExpiredKey => true,
        Reject::NoRoute
        | Reject::AddressDenied
        | Reject::LockedOut { .. }
        | Reject::RateLimited { .. }
        | Reject::OriginDenied
        | Reject::BrowserWithoutKey
        | Reject::ModelNotAllowed
        | Reject::BodyTooLarge
        | Reject::Framing { .. }
        | Reject::MethodNotAllowed { .. }
        | Reject::BodyTimeout
        | Reject::BodyTooSlow
        | Reject::BadBody { .. }
        | Reject::UnknownModel
        | Reject::WrongDialect
        | Reject::Upstream(_)
        | Reject::Unavailable { .. }
        | Reject::BudgetExhausted { .. }
        | Reject::Internal { .. } => false,
    }
}

/// Whole seconds, rounded up, for `Retry-After`.
fn seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The key the client sent, if any: the bearer token, or `x-api-key`; both present and
/// different is refused, so no header is silently ignored.
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, Reject> {
    if headers.get_all(http::header::AUTHORIZATION).iter().count() > 1
        || headers.get_all(&anthropic::API_KEY_HEADER).iter().count() > 1
    {
        return Err(Reject::ConflictingKeys);
    }
    let bearer = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| Reject::InvalidKey)?;
            let (scheme, token) = text.split_once(' ').ok_or(Reject::InvalidKey)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Reject::InvalidKey);
            }
            Some(token.trim())
        }
    };
    let x_api_key = match headers.get(&anthropic::API_KEY_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| Reject::InvalidKey)?.trim()),
    };
    match (bearer, x_api_key) {
        (Some(a), Some(b)) if a != b => Err(Reject::ConflictingKeys),
        (Some(key), _) | (None, Some(key)) => Ok(Some(key)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn keys_come_from_either_header_but_not_two_different_ones() {
        assert_eq!(presented_key(&headers(&[])).unwrap(), None);
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer k1")])).unwrap(),
            Some("k1")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  k1 ")])).unwrap(),
            Some("k1")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "k2")])).unwrap(),
            Some("k2")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Bearer k"),
                ("x-api-key", "k")
            ]))
            .unwrap(),
            Some("k")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Bearer a"),
                ("x-api-key", "b")
            ])),
            Err(Reject::ConflictingKeys)
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "k"), ("x-api-key", "k")])),
            Err(Reject::ConflictingKeys)
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic abc")])),
            Err(Reject::InvalidKey)
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer")])),
            Err(Reject::InvalidKey)
        );
    }
}
