//! Stage 2, classify: health, readiness, or one of the client endpoints (which fixes the
//! dialect answers are given in). A known path called with a method it does not take is a
//! 405 with `Allow`; `TRACE` (which would echo the request, headers included) and `CONNECT`
//! (which would ask for a tunnel) are a 405 on every path; anything else is a 404 in the
//! dialect the client seems to speak.

use http::Method;
use http::request::Parts;

use crate::ctx::RequestCtx;
use crate::dialect::{self, Endpoint};
use crate::error::Reject;

/// The methods `/healthz` and `/readyz` take.
pub const HEALTH_ALLOW: &str = "GET, HEAD";

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `GET /healthz`: is the process alive.
    Health,
    /// `GET /readyz`: are policy and store loaded and readable.
    Ready,
    /// A client API endpoint.
    Api(Endpoint),
}

/// Classifies the request by method and path, and sets the endpoint and the dialect its
/// answers (a 405 included) are given in.
pub fn request(parts: &Parts, ctx: &mut RequestCtx) -> Result<Class, Reject> {
    let path = parts.uri.path();
    if let Some(endpoint) = Endpoint::at(path) {
        ctx.endpoint = Some(endpoint);
        ctx.dialect = match endpoint {
            // Both APIs list models at the same path; answer in the one the client speaks.
            Endpoint::Models => dialect::guess(path, &parts.headers),
            _ => endpoint.dialect(),
        };
    }
    of(&parts.method, path)
}

/// The class of a request with `method` at `path`.
pub fn of(method: &Method, path: &str) -> Result<Class, Reject> {
    let health = match path {
        "/healthz" => Some(Class::Health),
        "/readyz" => Some(Class::Ready),
        _ => None,
    };
    let endpoint = Endpoint::at(path);
    let allow = match (health, endpoint) {
        (Some(_), _) => Some(HEALTH_ALLOW),
        (None, Some(endpoint)) => Some(endpoint.allow()),
        (None, None) => None,
    };
    if method == Method::TRACE || method == Method::CONNECT {
        return Err(Reject::MethodNotAllowed {
            allow: allow.unwrap_or(""),
        });
    }
    // A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) was answered before
    // this stage (`crate::cors`); any other `OPTIONS` is refused below with 405 and `Allow`.
    if let Some(class) = health {
        return if method == Method::GET || method == Method::HEAD {
            Ok(class)
        } else {
            Err(Reject::MethodNotAllowed {
                allow: HEALTH_ALLOW,
            })
        };
    }
    let endpoint = endpoint.ok_or(Reject::NoRoute)?;
    if *method != endpoint.method() {
        return Err(Reject::MethodNotAllowed {
            allow: endpoint.allow(),
        });
    }
    Ok(Class::Api(endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_takes_its_methods_and_trace_and_connect_none() {
        let not_allowed = |allow: &'static str| Err(Reject::MethodNotAllowed { allow });
        for (method, path, want) in [
            ("GET", "/healthz", Ok(Class::Health)),
            ("HEAD", "/readyz", Ok(Class::Ready)),
            ("POST", "/healthz", not_allowed("GET, HEAD")),
            ("GET", "/v1/models", Ok(Class::Api(Endpoint::Models))),
            ("POST", "/v1/models", not_allowed("GET")),
            ("POST", "/v1/messages", Ok(Class::Api(Endpoint::Messages))),
            ("GET", "/v1/chat/completions", not_allowed("POST")),
            ("PUT", "/v1/embeddings", not_allowed("POST")),
            ("OPTIONS", "/v1/responses", not_allowed("POST")),
            ("TRACE", "/", not_allowed("")),
            ("TRACE", "/healthz", not_allowed("GET, HEAD")),
            ("CONNECT", "/v1/messages", not_allowed("POST")),
            ("CONNECT", "127.0.0.1:9", not_allowed("")),
            ("GET", "/v1/nope", Err(Reject::NoRoute)),
            ("BREW", "/v1/nope", Err(Reject::NoRoute)),
        ] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(of(&method, path), want, "{method} {path}");
        }
    }
}
