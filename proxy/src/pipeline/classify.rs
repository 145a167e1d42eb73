//! Stage 2, classify: health, readiness, or one of the client endpoints (which fixes the
//! dialect answers are given in); anything else is a 404 in the dialect the client seems
//! to speak.

use http::Method;
use http::request::Parts;

use crate::ctx::RequestCtx;
use crate::dialect::{self, Endpoint};
use crate::error::Reject;

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

/// Classifies the request by method and path.
pub fn request(parts: &Parts, ctx: &mut RequestCtx) -> Result<Class, Reject> {
    let path = parts.uri.path();
    if parts.method == Method::GET || parts.method == Method::HEAD {
        match path {
            "/healthz" => return Ok(Class::Health),
            "/readyz" => return Ok(Class::Ready),
            _ => {}
        }
    }
    let endpoint = Endpoint::of(&parts.method, path).ok_or(Reject::NoRoute)?;
    ctx.endpoint = Some(endpoint);
    ctx.dialect = match endpoint {
        // Both APIs list models at the same path; answer in the one the client speaks.
        Endpoint::Models => dialect::guess(path, &parts.headers),
        _ => endpoint.dialect(),
    };
    Ok(Class::Api(endpoint))
}
