//! The one place that turns a [`Reject`] into what the client sees: a status, the dialect's
//! error object with a fixed client-safe message, and the request id. The match is
//! exhaustive, so a new rejection cannot reach a client without a decision here. Nothing
//! from an upstream body, a credential or an internal error text is ever copied into it.
//!
//! Every response krouter sends (its own, and relayed ones) also passes through [`secure`]:
//! `X-Content-Type-Options: nosniff`, `Cache-Control: no-store` on errors, never a `Server`
//! header.

use http::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue, SERVER, X_CONTENT_TYPE_OPTIONS,
};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::budget::Period;
use crate::ctx::RequestCtx;
use crate::dialect::{Dialect, ErrorKind};
use crate::error::{Reject, UpstreamFailure};

/// The response header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";
/// The header the Anthropic SDKs read the request id from (`Message._request_id`).
pub const ANTHROPIC_REQUEST_ID: &str = "request-id";

/// Status, error kind and message for `reject`.
pub fn describe(reject: &Reject) -> (StatusCode, ErrorKind, &'static str) {
    use ErrorKind as K;
    use StatusCode as S;
    match reject {
        Reject::NoRoute => (
            S::NOT_FOUND,
            K::NotFound,
            "Unknown endpoint. krouter serves /v1/chat/completions, /v1/embeddings, /v1/responses, /v1/models, /v1/messages and /v1/messages/count_tokens.",
        ),
        Reject::AddressDenied => (
            S::FORBIDDEN,
            K::Permission,
            "Requests from this address are not allowed.",
        ),
        Reject::LockedOut { .. } => (
            S::TOO_MANY_REQUESTS,
            K::RateLimit,
            "Too many failed authentication attempts from this address; try again later.",
        ),
        Reject::RateLimited { .. } => (
            S::TOO_MANY_REQUESTS,
            K::RateLimit,
            "Rate limit exceeded; retry after the time in the Retry-After header.",
        ),
        Reject::OriginDenied => (
            S::FORBIDDEN,
            K::Permission,
            "Requests from this web origin are not allowed.",
        ),
        Reject::MissingKey => (
            S::UNAUTHORIZED,
            K::Authentication,
            "Missing API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
        ),
        Reject::InvalidKey => (S::UNAUTHORIZED, K::Authentication, "Invalid API key."),
        Reject::ConflictingKeys => (
            S::UNAUTHORIZED,
            K::Authentication,
            "Send one API key, in either 'Authorization: Bearer' or 'x-api-key', once.",
        ),
        Reject::BrowserWithoutKey => (
            S::FORBIDDEN,
            K::Permission,
            "Requests from web pages need an API key.",
        ),
        Reject::RevokedKey => (
            S::UNAUTHORIZED,
            K::Authentication,
            "This API key has been revoked.",
        ),
        Reject::ExpiredKey => (
            S::UNAUTHORIZED,
            K::Authentication,
            "This API key has expired.",
        ),
        Reject::ModelNotAllowed => (
            S::FORBIDDEN,
            K::Permission,
            "This API key may not use this model.",
        ),
        Reject::BodyTooLarge => (
            S::PAYLOAD_TOO_LARGE,
            K::TooLarge,
            "The request body is too large.",
        ),
        Reject::Framing { what } => (S::BAD_REQUEST, K::InvalidRequest, what),
        Reject::MethodNotAllowed { .. } => (
            S::METHOD_NOT_ALLOWED,
            K::InvalidRequest,
            "This endpoint does not take this method; the Allow header lists those it takes.",
        ),
        Reject::BodyTimeout => (
            S::REQUEST_TIMEOUT,
            K::InvalidRequest,
            "The request body did not arrive in time.",
        ),
        Reject::BodyTooSlow => (
            S::REQUEST_TIMEOUT,
            K::InvalidRequest,
            "The request body arrived too slowly.",
        ),
        Reject::BadBody { what } => (S::BAD_REQUEST, K::InvalidRequest, what),
        Reject::UnknownModel => (
            S::NOT_FOUND,
            K::NotFound,
            "The model does not exist or you do not have access to it.",
        ),
        Reject::WrongDialect => (
            S::BAD_REQUEST,
            K::InvalidRequest,
            "This model is not served over this API; use the API of its provider.",
        ),
        Reject::Upstream(failure) => match failure {
            UpstreamFailure::Connect => (
                S::BAD_GATEWAY,
                K::Upstream,
                "The upstream provider could not be reached.",
            ),
            UpstreamFailure::AddressRefused => (
                S::BAD_GATEWAY,
                K::Upstream,
                "The upstream provider's address is not allowed.",
            ),
            UpstreamFailure::Timeout => (
                S::GATEWAY_TIMEOUT,
                K::Timeout,
                "The upstream provider did not answer in time.",
            ),
            UpstreamFailure::ServerError(_) => {
                (S::BAD_GATEWAY, K::Upstream, "The upstream provider failed.")
            }
            UpstreamFailure::RateLimited { .. } => (
                S::TOO_MANY_REQUESTS,
                K::RateLimit,
                "The upstream provider is rate limiting; retry later.",
            ),
            UpstreamFailure::Redirect => (
                S::BAD_GATEWAY,
                K::Upstream,
                "The upstream provider answered with a redirect, which krouter does not follow.",
            ),
            UpstreamFailure::OversizedError => (
                S::BAD_GATEWAY,
                K::Upstream,
                "The upstream provider's error response was too large to relay.",
            ),
            UpstreamFailure::CredentialRefused => (
                S::BAD_GATEWAY,
                K::Upstream,
                "The upstream provider refused krouter's credential for it.",
            ),
            UpstreamFailure::Broken => (
                S::BAD_GATEWAY,
                K::Upstream,
                "The connection to the upstream provider broke.",
            ),
            UpstreamFailure::EmptyStream | UpstreamFailure::StreamError => (
                S::BAD_GATEWAY,
                K::Upstream,
                "The upstream provider's stream failed before sending any content.",
            ),
            UpstreamFailure::NoContentInTime => (
                S::GATEWAY_TIMEOUT,
                K::Timeout,
                "The upstream provider's stream sent no content in time.",
            ),
            UpstreamFailure::Credential => (
                S::BAD_GATEWAY,
                K::Upstream,
                "krouter has no usable credential for the upstream provider.",
            ),
        },
        Reject::BudgetExhausted {
            period: Period::Day,
            ..
        } => (
            S::TOO_MANY_REQUESTS,
            K::RateLimit,
            "The daily token budget of this API key's group is used up; it refills at 00:00 UTC.",
        ),
        Reject::BudgetExhausted {
            period: Period::Month,
            ..
        } => (
            S::TOO_MANY_REQUESTS,
            K::RateLimit,
            "The monthly token budget of this API key's group is used up; it refills on the 1st at 00:00 UTC.",
        ),
        Reject::Unavailable { .. } => (
            S::SERVICE_UNAVAILABLE,
            K::Unavailable,
            "Every upstream for this model is temporarily unavailable; retry after the time in the Retry-After header.",
        ),
        Reject::Internal { .. } => (
            S::INTERNAL_SERVER_ERROR,
            K::Internal,
            "krouter failed to handle the request.",
        ),
    }
}

/// Whether the connection is closed after the answer to `reject`: when the framing is in
/// doubt (what follows on the connection cannot be trusted to be a request), when a method
/// might carry a body or a tunnel krouter does not read, and when a body was refused
/// part-way or before it was read (reading it only to throw it away would hold the
/// connection for the client), and for a locked-out or denied address (it keeps no
/// connection open).
pub fn closes_connection(reject: &Reject) -> bool {
    match reject {
        Reject::Framing { .. }
        | Reject::MethodNotAllowed { .. }
        | Reject::BodyTooLarge
        | Reject::BodyTimeout
        | Reject::BodyTooSlow
        | Reject::LockedOut { .. }
        | Reject::AddressDenied => true,
        Reject::NoRoute
        | Reject::OriginDenied
        | Reject::RateLimited { .. }
        | Reject::MissingKey
        | Reject::InvalidKey
        | Reject::ConflictingKeys
        | Reject::BrowserWithoutKey
        | Reject::RevokedKey
        | Reject::ExpiredKey
        | Reject::ModelNotAllowed
        | Reject::BadBody { .. }
        | Reject::UnknownModel
        | Reject::WrongDialect
        | Reject::Upstream(_)
        | Reject::Unavailable { .. }
        | Reject::BudgetExhausted { .. }
        | Reject::Internal { .. } => false,
    }
}

/// The response for `reject`, in the context's dialect, with its request id; `Allow` on a
/// 405, `Connection: close` when [`closes_connection`] (hyper closes an HTTP/1.1 connection
/// after writing such a response, and drops the header on HTTP/2, where framing is per
/// stream).
pub fn reject(reject: &Reject, ctx: &mut RequestCtx) -> Response<Body> {
    let (status, kind, message) = describe(reject);
    ctx.status = status.as_u16();
    let mut response = json(status, ctx.dialect.error_body(kind, message), ctx);
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED && ctx.dialect == Dialect::OpenAi {
        headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    if let Some(seconds) = retry_after(reject) {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Reject::MethodNotAllowed { allow } = reject {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    if closes_connection(reject) {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whole seconds (at least 1) a client should wait, for the rejections that say so.
fn retry_after(reject: &Reject) -> Option<u64> {
    match reject {
        Reject::LockedOut { retry_after_secs }
        | Reject::RateLimited { retry_after_secs }
        | Reject::Unavailable { retry_after_secs }
        | Reject::BudgetExhausted {
            retry_after_secs, ..
        } => Some((*retry_after_secs).max(1)),
        Reject::Upstream(UpstreamFailure::RateLimited {
            retry_after: Some(wait),
        }) => Some(wait.as_secs().max(1)),
        Reject::NoRoute
        | Reject::AddressDenied
        | Reject::OriginDenied
        | Reject::MissingKey
        | Reject::InvalidKey
        | Reject::ConflictingKeys
        | Reject::BrowserWithoutKey
        | Reject::RevokedKey
        | Reject::ExpiredKey
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
        | Reject::Internal { .. } => None,
    }
}

/// The headers every response leaving krouter gets, its own or relayed:
/// `X-Content-Type-Options: nosniff` (a JSON error must never be sniffed into HTML), no
/// `Server` header (hyper writes none; an upstream's is never relayed, this makes sure), and
/// `Cache-Control: no-store` on every error, relayed ones too: an error answers one request
/// and one key, and an upstream's `max-age` on it must not let a shared cache replay it.
pub fn secure<B>(response: &mut Response<B>) {
    let is_error = response.status().is_client_error() || response.status().is_server_error();
    let headers = response.headers_mut();
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.remove(SERVER);
    if is_error {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// A JSON response krouter writes itself.
pub fn json(status: StatusCode, body: bytes::Bytes, ctx: &mut RequestCtx) -> Response<Body> {
    ctx.status = status.as_u16();
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    stamp(&mut response, ctx);
    response
}

/// Adds the request id to a response: `x-request-id` always, and `request-id` too for
/// Anthropic clients, whose SDKs read that one.
pub fn stamp<B>(response: &mut Response<B>, ctx: &RequestCtx) {
    if let Ok(value) = HeaderValue::from_str(ctx.id.as_str()) {
        if ctx.dialect == Dialect::Anthropic {
            response
                .headers_mut()
                .insert(ANTHROPIC_REQUEST_ID, value.clone());
        }
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if let Some(origin) = &ctx.cors_origin {
        crate::cors::allow(response.headers_mut(), origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_message_is_fixed_text() {
        // The messages are &'static str by type; spot-check the statuses that SDKs act on.
        assert_eq!(describe(&Reject::MissingKey).0, StatusCode::UNAUTHORIZED);
        assert_eq!(describe(&Reject::ModelNotAllowed).0, StatusCode::FORBIDDEN);
        assert_eq!(
            describe(&Reject::Upstream(UpstreamFailure::RateLimited {
                retry_after: None
            }))
            .0,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            describe(&Reject::Upstream(UpstreamFailure::Timeout)).0,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            describe(&Reject::Internal { what: "x" }).2,
            "krouter failed to handle the request."
        );
    }

    #[test]
    fn refused_framing_methods_and_bodies_close_the_connection() {
        for (reject, status) in [
            (Reject::Framing { what: "x" }, StatusCode::BAD_REQUEST),
            (
                Reject::MethodNotAllowed { allow: "POST" },
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (Reject::BodyTooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            (Reject::BodyTimeout, StatusCode::REQUEST_TIMEOUT),
            (Reject::BodyTooSlow, StatusCode::REQUEST_TIMEOUT),
        ] {
            assert_eq!(describe(&reject).0, status, "{reject:?}");
            assert!(closes_connection(&reject), "{reject:?}");
        }
        assert!(!closes_connection(&Reject::InvalidKey));
        assert!(!closes_connection(&Reject::BadBody { what: "x" }));
    }

    #[test]
    fn every_response_is_marked_nosniff_and_errors_are_not_stored() {
        let mut ok = Response::new(());
        ok.headers_mut()
            .insert(SERVER, HeaderValue::from_static("upstream/1.0"));
        secure(&mut ok);
        assert_eq!(ok.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!ok.headers().contains_key(SERVER));
        assert!(!ok.headers().contains_key(CACHE_CONTROL));

        let mut error = Response::new(());
        *error.status_mut() = StatusCode::BAD_GATEWAY;
        secure(&mut error);
        assert_eq!(error.headers()[CACHE_CONTROL], "no-store");

        // An upstream's `Cache-Control` is replaced on an error and kept on a success.
        let upstream_cached = |status| {
            let mut response = Response::new(());
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=600"));
            secure(&mut response);
            response.headers()[CACHE_CONTROL].clone()
        };
        assert_eq!(upstream_cached(StatusCode::BAD_REQUEST), "no-store");
        assert_eq!(upstream_cached(StatusCode::OK), "max-age=600");
    }
}
