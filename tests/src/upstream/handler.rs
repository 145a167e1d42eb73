//! One request from head to answer: read and record it, check the credential, pick the route
//! and the behaviour, and send the reply (JSON at once, or SSE events as they are produced).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::behaviour::{Behaviour, Delivery, Fault};
use super::stream::{self, End};
use super::{Seen, Shared, anthropic, openai};

/// The largest request body the mock reads; larger ones get 413.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// The size of the `big-error` body.
const BIG_ERROR: usize = 2 * 1024 * 1024;
/// The marker in `fail-500` and `big-error` bodies that must never reach a krouter client.
const INTERNAL_DETAIL: &str = "UPSTREAM-INTERNAL-DETAIL";

/// The error every body of this server carries.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response of this server.
pub(super) type ResponseBody = BoxBody<Bytes, BoxError>;

/// Whose API a path belongs to, which decides the credential header and the error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    OpenAi,
    Anthropic,
}

/// The routes the mock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    ChatCompletions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
    Models,
}

/// An error the mock answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Unauthorized,
    NotFound,
    NotJson,
    TooLarge,
    Internal,
    /// A 5xx other than 500.
    Server(StatusCode),
    /// 429; the seconds for `retry-after`, if any.
    RateLimited(Option<u64>),
    ClientError,
    Big,
}

/// Counts the request as cancelled when it is dropped before [`Pending::answered`]: the
/// client went away while the mock was still reading the request or waiting to answer
/// (`hang`, `slow-<ms>`).
struct Pending(Option<Arc<Shared>>);

/// One parsed call to a model route: what the route builders need to answer it.
#[derive(Debug)]
pub(super) struct Call<'a> {
    /// The `model` of the request (`unknown` if absent).
    pub(super) model: &'a str,
    /// The whole request body.
    pub(super) request: &'a Value,
    /// A number unique within this server, for response ids.
    pub(super) id: u64,
    /// Now, in seconds since the Unix epoch.
    pub(super) created: u64,
    /// Whether the request asked for SSE.
    pub(super) stream: bool,
    /// Whether a stream carries text (false for `no-content-stream`: lifecycle events only).
    pub(super) content: bool,
}

/// What a route answers with, before the behaviour shapes its delivery.
#[derive(Debug)]
pub(super) enum Reply {
    /// One JSON document with status 200.
    Json(Value),
    /// SSE events with status 200.
    Events {
        /// Each event already framed (`data: ...\n\n` or `event: ...\ndata: ...\n\n`).
        events: Vec<Bytes>,
        /// The index of the first event that carries text, if one does.
        first_content: Option<usize>,
    },
}

/// Answers one request. An `Err` makes hyper close the connection (HTTP/2: reset the stream)
/// without a response. A request whose client goes away before the answer is ready counts
/// as cancelled.
pub(super) async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    connection: u64,
) -> Result<Response<ResponseBody>, BoxError> {
    let pending = Pending(Some(Arc::clone(&shared)));
    let answer = answer(request, shared, connection).await;
    pending.answered();
    answer
}

/// [`handle`] without the cancellation count.
async fn answer(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    connection: u64,
) -> Result<Response<ResponseBody>, BoxError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let dialect = Dialect::of(path);

    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let body = if declared.is_some_and(|length| length > MAX_BODY as u64) {
        None
    } else {
        match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => None,
            Err(error) => return Err(error),
        }
    };
    shared.record(|| Seen {
        method: parts.method.to_string(),
        path: path.to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.as_ref().map(|body| body.to_vec()).unwrap_or_default(),
        version: parts.version,
        connection,
    });

    let Some(body) = body else {
        return Ok(failure(dialect, Failure::TooLarge));
    };
    if !authorized(shared.credential.as_deref(), dialect, path, &parts.headers) {
        return Ok(failure(dialect, Failure::Unauthorized));
    }
    let Some(route) = Route::of(&parts.method, path) else {
        return Ok(failure(dialect, Failure::NotFound));
    };
    if route == Route::Models {
        return Ok(json_response(StatusCode::OK, &openai::models()));
    }

    let Ok(request @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return Ok(failure(dialect, Failure::NotJson));
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let dropped = || format!("the mock upstream drops this connection (model {model:?})").into();
    let delivery = match Behaviour::of(model) {
        Behaviour::Answer(delivery) => delivery,
        Behaviour::Fail500 => return Ok(failure(dialect, Failure::Internal)),
        Behaviour::FailStatus(status) => return Ok(failure(dialect, Failure::Server(status))),
        Behaviour::Fail429(retry_after) => {
            return Ok(failure(dialect, Failure::RateLimited(retry_after)));
        }
        Behaviour::Fail400 => return Ok(failure(dialect, Failure::ClientError)),
        Behaviour::BigError => return Ok(failure(dialect, Failure::Big)),
        Behaviour::Redirect => return Ok(redirect()),
        Behaviour::Drop => return Err(dropped()),
        Behaviour::Flaky { failures, fault } => {
            if shared
                .attempt(model)
                .is_some_and(|attempt| attempt <= failures)
            {
                return match fault {
                    Fault::Drop => Err(dropped()),
                    Fault::Unavailable => Ok(failure(
                        dialect,
                        Failure::Server(StatusCode::SERVICE_UNAVAILABLE),
                    )),
                };
            }
            Delivery::Whole
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            Delivery::Whole
        }
    };

    let call = Call {
        model,
        request: &request,
        id: shared.next_id(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        stream: request.get("stream").and_then(Value::as_bool) == Some(true),
        content: delivery != Delivery::NoContent,
    };
    let reply = match route {
        Route::ChatCompletions => openai::chat_completion(&call),
        Route::Embeddings => openai::embeddings(&call),
        Route::Responses => openai::response(&call),
        Route::Messages => anthropic::message(&call),
        Route::CountTokens => anthropic::count_tokens(),
        Route::Models => Reply::Json(openai::models()),
    };
    Ok(deliver(reply, delivery, dialect, shared))
}

/// The sentence every route answers with.
pub(super) fn sentence(model: &str) -> String {
    format!("Hello from the krouter demo upstream (model {model}).")
}

/// The sentence in the pieces a stream sends; they concatenate to [`sentence`].
pub(super) fn pieces(model: &str) -> [String; 4] {
    [
        "Hello".to_owned(),
        " from the krouter".to_owned(),
        " demo upstream".to_owned(),
        format!(" (model {model})."),
    ]
}

/// An SSE event with only a data line.
pub(super) fn data_event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// An SSE event with an event name and a data line.
pub(super) fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Whether the request carries the credential the server requires, if any.
fn authorized(credential: Option<&str>, dialect: Dialect, path: &str, headers: &HeaderMap) -> bool {
    let Some(credential) = credential else {
        return true;
    };
    if path != "/v1" && !path.starts_with("/v1/") {
        return true;
    }
    let presented = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    match dialect {
        Dialect::Anthropic => presented("x-api-key") == Some(credential),
        Dialect::OpenAi => {
            presented("authorization").and_then(|value| value.strip_prefix("Bearer "))
                == Some(credential)
        }
    }
}

/// Sends a reply as the delivery says: at once, with gaps, cut short, stalled, or with the
/// dialect's error event in place of (or after) content.
fn deliver(
    reply: Reply,
    delivery: Delivery,
    dialect: Dialect,
    shared: Arc<Shared>,
) -> Response<ResponseBody> {
    match reply {
        Reply::Json(value) => {
            let half = || {
                let whole = Bytes::from(value.to_string().into_bytes());
                vec![whole.slice(..whole.len() / 2)]
            };
            let (chunks, end) = match delivery {
                Delivery::Cut => (half(), End::Abort),
                Delivery::Stall => (Vec::new(), End::Stall),
                Delivery::StallAfterContent => (half(), End::Stall),
                Delivery::Whole
                | Delivery::Gaps(_)
                | Delivery::Empty
                | Delivery::NoContent
                | Delivery::ErrorEvent
                | Delivery::ErrorAfterContent => return json_response(StatusCode::OK, &value),
            };
            let mut response = streamed(chunks, None, end, shared);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Reply::Events {
            mut events,
            first_content,
        } => {
            let first = first_content
                .and_then(|index| events.get(index))
                .cloned()
                .into_iter();
            let (chunks, gap, end) = match delivery {
                // The route already left the content out of a `NoContent` reply.
                Delivery::Whole | Delivery::NoContent => (events, None, End::Finish),
                Delivery::Gaps(gap) => (events, Some(gap), End::Finish),
                Delivery::Cut => {
                    events.truncate(2);
                    (events, None, End::Abort)
                }
                Delivery::Empty => (Vec::new(), None, End::Finish),
                Delivery::ErrorEvent => (vec![dialect.error_event()], None, End::Finish),
                Delivery::Stall => (Vec::new(), None, End::Stall),
                Delivery::StallAfterContent => (first.collect(), None, End::Stall),
                Delivery::ErrorAfterContent => (
                    first.chain([dialect.error_event()]).collect(),
                    None,
                    End::Finish,
                ),
            };
            let mut response = streamed(chunks, gap, end, shared);
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
    }
}

/// A 200 whose body is `chunks`, each sent as its own frame as a task produces it (see
/// [`stream::spawn`]).
fn streamed(
    chunks: Vec<Bytes>,
    gap: Option<Duration>,
    end: End,
    shared: Arc<Shared>,
) -> Response<ResponseBody> {
    Response::new(stream::spawn(chunks, gap, end, shared).boxed())
}

/// A complete JSON response.
fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The `redirect` answer.
fn redirect() -> Response<ResponseBody> {
    let mut response = json_response(
        StatusCode::TEMPORARY_REDIRECT,
        &json!({"message": "moved to http://127.0.0.1:9/elsewhere"}),
    );
    response.headers_mut().insert(
        LOCATION,
        HeaderValue::from_static("http://127.0.0.1:9/elsewhere"),
    );
    response
}

/// An error response in the dialect's shape.
fn failure(dialect: Dialect, failure: Failure) -> Response<ResponseBody> {
    let (status, openai_type, anthropic_type, message) = match failure {
        Failure::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "authentication_error",
            "invalid or missing credential".to_owned(),
        ),
        Failure::NotFound => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found_error",
            "no such route on the krouter demo upstream".to_owned(),
        ),
        Failure::NotJson => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request_error",
            "the request body is not a JSON object".to_owned(),
        ),
        Failure::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            "the request body is over 8 MiB".to_owned(),
        ),
        Failure::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "api_error",
            format!("{INTERNAL_DETAIL}: shard 7 of pool gpu-east failed (stack: worker.rs:42)"),
        ),
        Failure::Server(status) => (
            status,
            "server_error",
            if status.as_u16() == 529 {
                "overloaded_error"
            } else {
                "api_error"
            },
            format!(
                "the krouter demo upstream fails this request with {}",
                status.as_u16()
            ),
        ),
        Failure::RateLimited(retry_after) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_error",
            match retry_after {
                Some(1) => "rate limit reached; retry after 1 second".to_owned(),
                Some(seconds) => format!("rate limit reached; retry after {seconds} seconds"),
                None => "rate limit reached".to_owned(),
            },
        ),
        Failure::ClientError => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request_error",
            "the model fail-400 rejects every request".to_owned(),
        ),
        Failure::Big => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "api_error",
            format!("{INTERNAL_DETAIL}: {}", "x".repeat(BIG_ERROR)),
        ),
    };
    let code = match failure {
        Failure::Unauthorized => Value::from("invalid_api_key"),
        Failure::RateLimited(_) => Value::from("rate_limit_exceeded"),
        _ => Value::Null,
    };
    let body = match dialect {
        Dialect::OpenAi => json!({
            "error": {"message": message, "type": openai_type, "param": null, "code": code},
        }),
        Dialect::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_type, "message": message},
        }),
    };
    let mut response = json_response(status, &body);
    if let Failure::RateLimited(Some(seconds)) = failure {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(seconds));
    }
    response
}

// === impl Pending ===

impl Pending {
    /// The answer is ready: the request is not cancelled.
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.cancel();
        }
    }
}

// === impl Dialect ===

impl Dialect {
    fn of(path: &str) -> Self {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }

    /// The event a stream of this dialect reports an error with.
    fn error_event(self) -> Bytes {
        Bytes::from_static(match self {
            Self::OpenAi => openai::ERROR_EVENT,
            Self::Anthropic => anthropic::ERROR_EVENT,
        })
    }
}

// === impl Route ===

impl Route {
    fn of(method: &Method, path: &str) -> Option<Self> {
        let route = match path {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
            "/v1/models" => Self::Models,
            _ => return None,
        };
        let expected = if route == Self::Models {
            Method::GET
        } else {
            Method::POST
        };
        (method == expected).then_some(route)
    }
}
