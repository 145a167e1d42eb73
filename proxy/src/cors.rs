//! CORS for browser clients. No origin is allowed unless the policy's `[access]
//! cors_origins` lists it exactly; a request from any other origin is refused (403), so a web
//! page cannot spend a key or the provider credentials, preflight or not. An allowed origin's
//! preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here, and its
//! responses name it in `Access-Control-Allow-Origin`. Credentials (cookies, HTTP auth) are
//! never allowed: a browser client sends its key in a header, as the SDKs do.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use krouter_policy::Access;

use crate::body::Body;
use crate::ctx::RequestCtx;
use crate::error::Reject;

/// Request headers a browser may send: the SDKs' own, keys, and the version headers.
pub const ALLOWED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-beta",
    "idempotency-key",
];

/// Prefixes of more allowed request headers (the SDKs' platform headers).
pub const ALLOWED_HEADER_PREFIXES: &[&str] = &["x-stainless-"];

/// Response headers a browser script may read.
const EXPOSED: &str = "x-request-id, request-id, retry-after, x-ratelimit-limit-requests, \
x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, \
x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";

/// How long a browser may cache a preflight answer, seconds.
const MAX_AGE: &str = "600";

/// What the request's `Origin` means under `access`.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    /// No `Origin` header: not a browser request.
    Absent,
    /// An origin the policy lists.
    Allowed(HeaderValue),
    /// Any other origin (or several `Origin` headers).
    Denied,
}

/// Classifies the request's `Origin` header.
pub fn origin(headers: &HeaderMap, access: &Access) -> Origin {
    let mut values = headers.get_all(header::ORIGIN).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(header::ORIGIN) {
            Origin::Denied
        } else {
            Origin::Absent
        };
    };
    let allowed = value
        .to_str()
        .is_ok_and(|text| access.cors_origins().iter().any(|o| o == text));
    if allowed {
        Origin::Allowed(value.clone())
    } else {
        Origin::Denied
    }
}

/// Whether the request is a CORS preflight.
pub fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts.headers.contains_key(header::ORIGIN)
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: 204 with the allowed methods and headers for a listed origin,
/// [`Reject::OriginDenied`] for any other.
pub fn preflight(parts: &Parts, ctx: &mut RequestCtx) -> Result<Response<Body>, Reject> {
    let Origin::Allowed(origin) = origin(&parts.headers, ctx.snapshot.policy().access()) else {
        return Err(Reject::OriginDenied);
    };
    ctx.status = StatusCode::NO_CONTENT.as_u16();
    ctx.cors_origin = Some(origin);
    let mut response = Response::new(Body::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    let requested = allowed_request_headers(&parts.headers);
    if !requested.is_empty()
        && let Ok(value) = HeaderValue::from_str(&requested)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
    }
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    crate::respond::stamp(&mut response, ctx);
    Ok(response)
}

/// Marks a response as readable by `origin`.
pub fn allow(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The requested headers (`Access-Control-Request-Headers`) krouter allows, lower case,
/// comma-separated; any other is left out, so the browser refuses to send it.
fn allowed_request_headers(headers: &HeaderMap) -> String {
    let mut out: Vec<String> = Vec::new();
    for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let Ok(text) = value.to_str() else { continue };
        for name in text.split(',') {
            let name = name.trim().to_ascii_lowercase();
            let allowed = ALLOWED_HEADERS.contains(&name.as_str())
                || ALLOWED_HEADER_PREFIXES.iter().any(|p| name.starts_with(p));
            if allowed && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_request_headers_are_echoed() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("Authorization, content-type, x-stainless-os, cookie"),
        );
        headers.append(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-evil, authorization"),
        );
        assert_eq!(
            allowed_request_headers(&headers),
            "authorization, content-type, x-stainless-os"
        );
    }
}
