//! The OpenAI API's shapes that krouter writes itself: error objects and the model list.

use bytes::Bytes;
use serde_json::json;

use super::ErrorKind;

/// `{"error":{"message","type","param","code"}}`, as the OpenAI SDKs parse it.
pub fn error_body(kind: ErrorKind, message: &str) -> Bytes {
    let (kind, code) = match kind {
        ErrorKind::InvalidRequest => ("invalid_request_error", None),
        ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
        ErrorKind::Permission => ("permission_error", Some("model_not_allowed")),
        ErrorKind::NotFound => ("invalid_request_error", Some("model_not_found")),
        ErrorKind::TooLarge => ("invalid_request_error", Some("request_too_large")),
        ErrorKind::RateLimit => ("rate_limit_error", Some("rate_limit_exceeded")),
        ErrorKind::Upstream => ("api_error", Some("upstream_error")),
        ErrorKind::Timeout => ("api_error", Some("upstream_timeout")),
        ErrorKind::Internal => ("api_error", Some("internal_error")),
        ErrorKind::Unavailable => ("api_error", Some("unavailable")),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    Bytes::from(body.to_string())
}

/// The `GET /v1/models` list: one entry per route the caller may use.
pub fn model_list<'a>(models: impl Iterator<Item = &'a str>) -> Bytes {
    let data: Vec<_> = models
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "krouter"}))
        .collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_the_openai_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(ErrorKind::Authentication, "bad key")).unwrap();
        assert_eq!(body["error"]["message"], "bad key");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(body["error"]["param"].is_null());
        let list: serde_json::Value =
            serde_json::from_slice(&model_list(["a", "b"].into_iter())).unwrap();
        assert_eq!(list["data"][1]["id"], "b");
        assert_eq!(list["object"], "list");
    }
}
