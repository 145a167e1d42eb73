//! Stage 1, accept: refuse what is too big before reading it. Header size, header read time
//! and connection idle limits are set on the listener ([`crate::serve`]); this stage checks
//! the declared body size so an oversized upload is refused without being read.

use http::request::Parts;

use crate::ctx::RequestCtx;
use crate::error::Reject;

/// Largest request body krouter reads (base64 images make chat bodies large).
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// Checks the request head against the limits.
pub fn limits(parts: &Parts, _ctx: &mut RequestCtx) -> Result<(), Reject> {
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Reject::BodyTooLarge);
    }
    Ok(())
}
