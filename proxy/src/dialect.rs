//! The two client APIs krouter speaks: which one a request uses, the endpoints each offers,
//! the error object each expects, and where each reports token usage. Everything
//! dialect-specific lives here and in [`openai`] and [`anthropic`], so the stages stay
//! dialect-neutral.

use bytes::Bytes;

pub mod anthropic;
pub mod openai;
pub mod usage;

pub use usage::{Progress, Usage, UsageScanner};

/// A client API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// The OpenAI API: `Authorization: Bearer`, `{"error":{...}}` errors.
    OpenAi,
    /// The Anthropic API: `x-api-key`, `{"type":"error","error":{...}}` errors.
    Anthropic,
}

/// A client endpoint krouter serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `GET /v1/models`, answered by krouter from the policy.
    Models,
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
}

/// What kind of error a client is told about; each dialect names it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed.
    InvalidRequest,
    /// No key, or a key that is not valid.
    Authentication,
    /// A valid key that may not do this.
    Permission,
    /// No such route or model.
    NotFound,
    /// The request body is too large.
    TooLarge,
    /// Too many requests.
    RateLimit,
    /// The upstream failed or could not be reached.
    Upstream,
    /// The upstream took too long.
    Timeout,
    /// krouter itself failed.
    Internal,
    /// krouter is not ready to serve.
    Unavailable,
}

// === impl Dialect ===

impl Dialect {
    /// The error body for `kind` with `message` (a fixed, client-safe text).
    pub fn error_body(self, kind: ErrorKind, message: &str) -> Bytes {
        match self {
            Self::OpenAi => openai::error_body(kind, message),
            Self::Anthropic => anthropic::error_body(kind, message),
        }
    }

    /// The server-sent event that ends a stream which failed after content reached the
    /// client: what each dialect's SDKs raise as an error (OpenAI: a `data:` line holding an
    /// `error` object; Anthropic: an `error` event).
    pub fn error_event(self, kind: ErrorKind, message: &str) -> Bytes {
        let body = self.error_body(kind, message);
        let prefix: &[u8] = match self {
            Self::OpenAi => b"data: ",
            Self::Anthropic => b"event: error\ndata: ",
        };
        let mut event = Vec::with_capacity(prefix.len() + body.len() + 2);
        event.extend_from_slice(prefix);
        event.extend_from_slice(&body);
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }

    /// The name used in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "OpenAI",
            Self::Anthropic => "Anthropic",
        }
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// The endpoint for `method` and `path`, if krouter serves it.
    pub fn of(method: &http::Method, path: &str) -> Option<Self> {
        Self::at(path).filter(|endpoint| *method == endpoint.method())
    }

    /// The endpoint at `path`, whatever the method.
    pub fn at(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/models" => Self::Models,
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
            _ => return None,
        })
    }

    /// The one method the endpoint takes.
    pub fn method(self) -> http::Method {
        match self {
            Self::Models => http::Method::GET,
            Self::ChatCompletions
            | Self::Embeddings
            | Self::Responses
            | Self::Messages
            | Self::CountTokens => http::Method::POST,
        }
    }

    /// The `Allow` header of a 405 at this endpoint.
    pub fn allow(self) -> &'static str {
        match self {
            Self::Models => "GET",
            Self::ChatCompletions
            | Self::Embeddings
            | Self::Responses
            | Self::Messages
            | Self::CountTokens => "POST",
        }
    }

    /// The dialect the endpoint belongs to.
    pub fn dialect(self) -> Dialect {
        match self {
            Self::ChatCompletions | Self::Embeddings | Self::Responses | Self::Models => {
                Dialect::OpenAi
            }
            Self::Messages | Self::CountTokens => Dialect::Anthropic,
        }
    }

    /// The path after the provider's base URL (which ends in `/v1`).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Models => "/models",
            Self::Messages => "/messages",
            Self::CountTokens => "/messages/count_tokens",
        }
    }

    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Models => "models",
            Self::Messages => "messages",
            Self::CountTokens => "messages.count_tokens",
        }
    }
}

/// The dialect to answer a request in when its path is not one krouter serves: Anthropic
/// when the path or headers say so, OpenAI otherwise.
pub fn guess(path: &str, headers: &http::HeaderMap) -> Dialect {
    if path.starts_with("/v1/messages")
        || headers.contains_key(&anthropic::VERSION_HEADER)
        || headers.contains_key(&anthropic::API_KEY_HEADER)
    {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_their_method_and_exact_path() {
        use http::Method;
        assert_eq!(
            Endpoint::of(&Method::POST, "/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(Endpoint::of(&Method::GET, "/v1/chat/completions"), None);
        assert_eq!(Endpoint::of(&Method::POST, "/v1/models"), None);
        assert_eq!(
            Endpoint::of(&Method::GET, "/v1/models"),
            Some(Endpoint::Models)
        );
        assert_eq!(Endpoint::of(&Method::POST, "/v1/chat/completions/"), None);
        assert_eq!(Endpoint::of(&Method::POST, "/v1//messages"), None);
        assert_eq!(
            Endpoint::of(&Method::POST, "/v1/messages/count_tokens").map(Endpoint::dialect),
            Some(Dialect::Anthropic)
        );
    }

    #[test]
    fn unknown_paths_are_answered_in_the_dialect_the_client_seems_to_speak() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(guess("/v1/nope", &headers), Dialect::OpenAi);
        assert_eq!(guess("/v1/messages/batches", &headers), Dialect::Anthropic);
        headers.insert(
            "anthropic-version",
            http::HeaderValue::from_static("2023-06-01"),
        );
        assert_eq!(guess("/v1/nope", &headers), Dialect::Anthropic);
    }
}
