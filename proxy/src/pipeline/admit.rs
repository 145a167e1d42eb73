//! Stage 3, admit: the client's address against the policy's allow and deny lists, then the
//! API key, from `Authorization: Bearer` (OpenAI SDKs) or `x-api-key` (Anthropic SDKs).
//! The key's checksum is checked before any lookup, so a typo or a random string costs no
//! HMAC; the lookup is by HMAC digest, confirmed in constant time. Revoked and expired keys
//! are refused with their own message. Lockout and rate limits join this stage later.

use http::HeaderMap;
use http::request::Parts;
use krouter_config::apikey::{ApiKey, KeyDigest};
use krouter_config::secret::ApiKeySecret;

use crate::ctx::{Caller, RequestCtx};
use crate::error::Reject;

/// Admits the caller or says why not.
pub fn caller(parts: &Parts, ctx: &mut RequestCtx, secret: &ApiKeySecret) -> Result<(), Reject> {
    let policy = ctx.snapshot.policy();
    if !policy.access().ip_admitted(ctx.client) {
        return Err(Reject::AddressDenied);
    }
    let Some(presented) = presented_key(&parts.headers)? else {
        if policy.access().require_api_keys() {
            return Err(Reject::MissingKey);
        }
        // Without keys (loopback only), a web page the operator visits could otherwise
        // spend the provider credentials: browsers send Origin on every cross-site and
        // rebinding POST, and API clients never do.
        if parts.headers.contains_key(http::header::ORIGIN) {
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
    let digest = KeyDigest::of(secret, &key);
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

/// The key the client sent, if any: the bearer token, or `x-api-key`; both present and
/// different is refused, so no header is silently ignored.
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, Reject> {
    if headers.get_all(http::header::AUTHORIZATION).iter().count() > 1
        || headers.get_all("x-api-key").iter().count() > 1
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
    let x_api_key = match headers.get("x-api-key") {
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
