//! The Anthropic API's shapes that krouter writes itself: error objects and the model list.

use bytes::Bytes;
use http::HeaderName;
use serde_json::json;

use super::ErrorKind;

/// The Anthropic version krouter sends upstream when the client sent none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// `anthropic-version`: the API version, required on every Anthropic request.
pub static VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");

/// `x-api-key`: where the Anthropic SDKs send a key (krouter's, from a client; the
/// provider's, upstream).
pub static API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// `{"type":"error","error":{"type","message"}}`, as the Anthropic SDKs parse it.
pub fn error_body(kind: ErrorKind, message: &str) -> Bytes {
    let kind = match kind {
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::TooLarge => "request_too_large",
        ErrorKind::RateLimit => "rate_limit_error",
        ErrorKind::Upstream | ErrorKind::Internal => "api_error",
        ErrorKind::Timeout => "timeout_error",
        ErrorKind::Unavailable => "overloaded_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Bytes::from(body.to_string())
}

/// The Anthropic `GET /v1/models` list: one entry per route the caller may use.
pub fn model_list<'a>(models: impl Iterator<Item = &'a str>) -> Bytes {
    let data: Vec<_> = models
        .map(|id| {
            json!({"type": "model", "id": id, "display_name": id,
                   "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    let first = data.first().and_then(|m| m.get("id")).cloned();
    let last = data.last().and_then(|m| m.get("id")).cloned();
    Bytes::from(
        json!({"data": data, "has_more": false, "first_id": first, "last_id": last}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_the_anthropic_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(ErrorKind::Timeout, "slow")).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "timeout_error");
        assert_eq!(body["error"]["message"], "slow");
        let list: serde_json::Value =
            serde_json::from_slice(&model_list(std::iter::empty())).unwrap();
        assert_eq!(list["has_more"], false);
        assert!(list["first_id"].is_null());
    }
}
