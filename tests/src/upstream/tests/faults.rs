//! The fault behaviours (failing statuses, flaky models, broken and stalled streams) and the
//! cancelled count, in both dialects, streaming and not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{block_on, connect_h2, data_of, frames, json_body, open, post, send};
use crate::tls::TestCa;
use crate::upstream::behaviour::{Behaviour, Delivery, Fault};
use crate::upstream::{MAX_FLAKY_MODELS, MockUpstream};

const CHAT: &str = "/v1/chat/completions";
const RESPONSES: &str = "/v1/responses";
const MESSAGES: &str = "/v1/messages";
const OPENAI_ERROR: &[u8] = b"data: {\"error\":{\"message\":\"upstream overloaded\",\"type\":\"server_error\",\"code\":\"overloaded\"}}\n\n";
const ANTHROPIC_ERROR: &[u8] = b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
/// How long a test listens to a stalled body before it calls it stalled.
const SILENCE: Duration = Duration::from_millis(150);
/// How long the mock may take to count a client that went away.
const NOTICE: Duration = Duration::from_secs(1);

/// How a body ended when read for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Clean,
    Error,
    /// Nothing came for [`SILENCE`] and the body is still open.
    Open,
}

/// One request to a mock route: its path, model and whether it asks for SSE.
fn ask(path: &str, model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": model, "stream": stream, "max_tokens": 5, "messages": []});
    post(path, &[], &body)
}

/// The body's data frames until it ends or [`SILENCE`] passes without one. The response
/// stays with the caller: dropping an open body could close the connection.
async fn listen(response: &mut Response<Incoming>) -> (Vec<Bytes>, Ending) {
    let body = response.body_mut();
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(SILENCE, body.frame()).await {
            Err(_) => return (frames, Ending::Open),
            Ok(None) => return (frames, Ending::Clean),
            Ok(Some(Err(_))) => return (frames, Ending::Error),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
        }
    }
}

/// Asks `path` for `model` as a stream, checks for a 200 SSE head and reads the body until
/// it ends or [`SILENCE`] passes (for streams that end: the response is dropped after).
async fn stream(addr: SocketAddr, path: &str, model: &str) -> (Vec<Bytes>, Ending) {
    let mut response = send(addr, ask(path, model, true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path} {model}");
    let content_type = &response.headers()["content-type"];
    assert_eq!(content_type, "text/event-stream", "{path} {model}");
    listen(&mut response).await
}

/// The `type` of each event's data.
fn kinds(events: &[Bytes]) -> Vec<String> {
    data_of(events)
        .iter()
        .map(|data| data["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asks `path` for `model` without streaming and checks the answer is the normal one.
async fn assert_answers_normally(addr: SocketAddr, path: &str, model: &str) {
    let response = send(addr, ask(path, model, false)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path} {model}");
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = json_body(response).await.to_string();
    assert!(text.contains(&format!("(model {model}).")), "{text}");
}

#[test]
fn model_names_parse_to_behaviours_and_anything_else_is_normal() {
    let normal = [
        "",
        "fail-",
        "fail-499",
        "fail-600",
        "fail-5xx",
        "fail-429-",
        "fail-429-soon",
        "flaky-",
        "flaky-x",
        "flaky-+1",
        "flaky--1",
        "flaky-123456789012345678901",
        "flaky-99999999999999999999",
        "flaky500",
        "Stall",
        "stall-",
        "demo-1",
    ];
    for model in normal {
        assert_eq!(Behaviour::of(model), Behaviour::NORMAL, "{model:?}");
    }
    let server = |code| Behaviour::FailStatus(StatusCode::from_u16(code).unwrap());
    let rows = [
        ("fail-500", Behaviour::Fail500),
        ("fail-0500", Behaviour::Fail500),
        ("fail-501", server(501)),
        ("fail-503", server(503)),
        ("fail-599", server(599)),
        ("fail-429", Behaviour::Fail429(Some(1))),
        ("fail-429-0", Behaviour::Fail429(Some(0))),
        ("fail-429-120", Behaviour::Fail429(Some(120))),
        ("fail-429-none", Behaviour::Fail429(None)),
        (
            "flaky-3",
            Behaviour::Flaky {
                failures: 3,
                fault: Fault::Drop,
            },
        ),
        (
            "flaky500-18446744073709551615",
            Behaviour::Flaky {
                failures: u64::MAX,
                fault: Fault::Unavailable,
            },
        ),
        ("slow-5", Behaviour::Slow(Duration::from_millis(5))),
        (
            "stream-gap-0",
            Behaviour::Answer(Delivery::Gaps(Duration::ZERO)),
        ),
        ("stream-cut", Behaviour::Answer(Delivery::Cut)),
        ("empty-stream", Behaviour::Answer(Delivery::Empty)),
        ("no-content-stream", Behaviour::Answer(Delivery::NoContent)),
        ("error-event", Behaviour::Answer(Delivery::ErrorEvent)),
        ("stall", Behaviour::Answer(Delivery::Stall)),
        (
            "stall-after-content",
            Behaviour::Answer(Delivery::StallAfterContent),
        ),
        (
            "error-after-content",
            Behaviour::Answer(Delivery::ErrorAfterContent),
        ),
    ];
    for (model, behaviour) in rows {
        assert_eq!(Behaviour::of(model), behaviour, "{model:?}");
    }
}

/// One row of the failing-status table.
struct Failing {
    path: &'static str,
    model: &'static str,
    stream: bool,
    status: u16,
    /// The `retry-after` the answer must carry (`None`: none at all).
    retry_after: Option<&'static str>,
    /// The error `type` in the body (`error.type` in both dialects).
    error_type: &'static str,
}

#[test]
fn failing_statuses_and_retry_after_in_each_dialect() {
    let row = |path, model, stream, status, retry_after, error_type| Failing {
        path,
        model,
        stream,
        status,
        retry_after,
        error_type,
    };
    let rows = [
        row(CHAT, "fail-503", false, 503, None, "server_error"),
        row(CHAT, "fail-599", true, 599, None, "server_error"),
        row(RESPONSES, "fail-502", true, 502, None, "server_error"),
        row(MESSAGES, "fail-529", false, 529, None, "overloaded_error"),
        row(MESSAGES, "fail-504", true, 504, None, "api_error"),
        row(MESSAGES, "fail-500", false, 500, None, "api_error"),
        row(CHAT, "fail-429", false, 429, Some("1"), "rate_limit_error"),
        row(CHAT, "fail-429-7", true, 429, Some("7"), "rate_limit_error"),
        row(
            MESSAGES,
            "fail-429-30",
            false,
            429,
            Some("30"),
            "rate_limit_error",
        ),
        row(CHAT, "fail-429-none", false, 429, None, "rate_limit_error"),
        row(
            MESSAGES,
            "fail-429-none",
            true,
            429,
            None,
            "rate_limit_error",
        ),
    ];
    let mock = MockUpstream::start();
    block_on(async {
        for row in rows {
            let model = row.model;
            let response = send(mock.addr(), ask(row.path, model, row.stream))
                .await
                .expect("a response");
            assert_eq!(response.status().as_u16(), row.status, "{model}");
            assert_eq!(response.headers()["content-type"], "application/json");
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().expect("ASCII"));
            assert_eq!(retry_after, row.retry_after, "{model}");
            let body = json_body(response).await;
            assert_eq!(body["error"]["type"], row.error_type, "{model}: {body}");
            if row.path == MESSAGES {
                assert_eq!(body["type"], "error", "{model}");
            }
            let marked = body.to_string().contains("UPSTREAM-INTERNAL-DETAIL");
            assert_eq!(marked, model == "fail-500", "{model}");
        }
        for model in ["fail-600", "fail-499", "fail-429-soon"] {
            assert_answers_normally(mock.addr(), CHAT, model).await;
        }
    });
}

#[test]
fn flaky_models_fail_the_first_n_requests_each_then_answer() {
    let mock = MockUpstream::start();
    block_on(async {
        let addr = mock.addr();
        // `flaky-2`: two drops, then answers, on any route; another model counts apart.
        assert!(send(addr, ask(CHAT, "flaky-2", false)).await.is_err());
        assert!(send(addr, ask(CHAT, "flaky-1", true)).await.is_err());
        assert!(send(addr, ask(MESSAGES, "flaky-2", true)).await.is_err());
        assert_answers_normally(addr, CHAT, "flaky-2").await;
        let (events, ending) = stream(addr, MESSAGES, "flaky-2").await;
        assert_eq!(ending, Ending::Clean);
        assert_eq!(
            kinds(&events).last().map(String::as_str),
            Some("message_stop")
        );
        let streamed = send(addr, ask(CHAT, "flaky-1", true)).await.unwrap();
        assert_eq!(streamed.status(), StatusCode::OK);
        assert_answers_normally(addr, CHAT, "flaky-0").await;

        // `flaky500-2`: two 503s in the dialect's shape, then answers.
        for path in [MESSAGES, CHAT] {
            let failed = send(addr, ask(path, "flaky500-2", true)).await.unwrap();
            assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = json_body(failed).await;
            let error_type = if path == MESSAGES {
                "api_error"
            } else {
                "server_error"
            };
            assert_eq!(body["error"]["type"], error_type, "{body}");
        }
        let answered = send(addr, ask(MESSAGES, "flaky500-2", false))
            .await
            .unwrap();
        assert_eq!(answered.status(), StatusCode::OK);
        assert_eq!(json_body(answered).await["type"], "message");
    });
    assert_eq!(mock.count_model("flaky-2"), 4);
    assert_eq!(mock.count_model("flaky-1"), 2);
    assert_eq!(mock.count_model("flaky500-2"), 3);
    assert_eq!(mock.count_model("flaky"), 0);
    mock.clear();
    assert_eq!(mock.count_model("flaky-2"), 0);
}

#[test]
fn flaky_counts_are_capped_and_a_model_past_the_cap_answers_normally() {
    let mock = MockUpstream::start();
    for index in 0..MAX_FLAKY_MODELS {
        assert_eq!(mock.shared.attempt(&format!("flaky-{index}")), Some(1));
    }
    assert_eq!(mock.shared.attempt("flaky-5"), Some(2));
    assert_eq!(mock.shared.attempt("flaky-99999"), None);
    block_on(async {
        assert_answers_normally(mock.addr(), CHAT, "flaky-99999").await;
        // A model counted before the cap still fails while it should.
        assert!(
            send(mock.addr(), ask(CHAT, "flaky-9", false))
                .await
                .is_err()
        );
    });
}

#[test]
fn empty_stream_sends_a_head_and_no_byte() {
    let mock = MockUpstream::start();
    block_on(async {
        for path in [CHAT, RESPONSES, MESSAGES] {
            let (events, ending) = stream(mock.addr(), path, "empty-stream").await;
            assert_eq!((events, ending), (Vec::new(), Ending::Clean), "{path}");
        }
        for path in [CHAT, MESSAGES] {
            assert_answers_normally(mock.addr(), path, "empty-stream").await;
        }
    });
    assert_eq!(mock.cancelled(), 0);
}

#[test]
fn no_content_stream_sends_lifecycle_events_only() {
    let mock = MockUpstream::start();
    let model = "no-content-stream";
    block_on(async {
        let (events, ending) = stream(mock.addr(), CHAT, model).await;
        assert_eq!(ending, Ending::Clean);
        assert_eq!(events.len(), 2, "{events:?}");
        let chunk = &data_of(&events)[0];
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(
            chunk["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(events[1], Bytes::from_static(b"data: [DONE]\n\n"));

        let (events, _) = stream(mock.addr(), RESPONSES, model).await;
        assert_eq!(kinds(&events), ["response.created", "response.completed"]);
        let completed = &data_of(&events)[1]["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["output"], json!([]));
        assert_eq!(completed["usage"]["total_tokens"], 18);

        let (events, _) = stream(mock.addr(), MESSAGES, model).await;
        assert_eq!(
            kinds(&events),
            ["message_start", "message_delta", "message_stop"]
        );
        let delta = &data_of(&events)[1];
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 7);

        for path in [CHAT, MESSAGES] {
            assert_answers_normally(mock.addr(), path, model).await;
        }
    });
}

#[test]
fn error_events_alone_or_after_the_first_content_event() {
    let mock = MockUpstream::start();
    block_on(async {
        for (path, error) in [
            (CHAT, OPENAI_ERROR),
            (RESPONSES, OPENAI_ERROR),
            (MESSAGES, ANTHROPIC_ERROR),
        ] {
            let (events, ending) = stream(mock.addr(), path, "error-event").await;
            assert_eq!(ending, Ending::Clean);
            assert_eq!(events, [Bytes::from_static(error)], "{path}");

            let (events, ending) = stream(mock.addr(), path, "error-after-content").await;
            assert_eq!(ending, Ending::Clean);
            assert_eq!(events.len(), 2, "{path}: {events:?}");
            assert_eq!(events[1], Bytes::from_static(error), "{path}");
            assert_first_content(path, &events[0]);
        }
        for model in ["error-event", "error-after-content"] {
            for path in [CHAT, MESSAGES] {
                assert_answers_normally(mock.addr(), path, model).await;
            }
        }
    });
    assert_eq!(mock.cancelled(), 0);
}

/// Whether `event` is the first content event of a stream on `path`: the text `Hello`.
fn assert_first_content(path: &str, event: &Bytes) {
    let data = &data_of(std::slice::from_ref(event))[0];
    let (kind, text) = match path {
        CHAT => (
            data["object"].clone(),
            data["choices"][0]["delta"]["content"].clone(),
        ),
        RESPONSES => (data["type"].clone(), data["delta"].clone()),
        _ => (data["type"].clone(), data["delta"]["text"].clone()),
    };
    let expected = match path {
        CHAT => "chat.completion.chunk",
        RESPONSES => "response.output_text.delta",
        _ => "content_block_delta",
    };
    assert_eq!((kind, text), (json!(expected), json!("Hello")), "{path}");
}

#[test]
fn stalls_send_the_head_and_at_most_the_first_content_then_nothing() {
    let mock = MockUpstream::start();
    block_on(async {
        // Kept until the end: dropping an open body could close its connection.
        let mut open = Vec::new();
        let cases = [
            (CHAT, true),
            (RESPONSES, true),
            (MESSAGES, true),
            (CHAT, false),
            (MESSAGES, false),
        ];
        for (path, stream) in cases {
            let content_type = if stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            let mut stalled = send(mock.addr(), ask(path, "stall", stream)).await.unwrap();
            assert_eq!(stalled.status(), StatusCode::OK);
            assert_eq!(stalled.headers()["content-type"], content_type);
            let heard = listen(&mut stalled).await;
            assert_eq!(heard, (Vec::new(), Ending::Open), "{path} {stream}");

            let mut after = send(mock.addr(), ask(path, "stall-after-content", stream))
                .await
                .unwrap();
            assert_eq!(after.headers()["content-type"], content_type);
            let (frames, ending) = listen(&mut after).await;
            assert_eq!((frames.len(), ending), (1, Ending::Open), "{path} {stream}");
            if stream {
                assert_first_content(path, &frames[0]);
            } else {
                assert!(frames[0].starts_with(b"{"), "{path}: half a JSON document");
                assert!(serde_json::from_slice::<Value>(&frames[0]).is_err());
            }
            open.extend([stalled, after]);
        }
        assert_eq!(mock.cancelled(), 0, "every stall is still open");
        assert_eq!(open.len(), 10);
    });
    // Ending the runtime closed the ten connections; each stall notices at once.
    let started = Instant::now();
    assert!(mock.wait_cancelled(10, NOTICE), "{}", mock.cancelled());
    assert!(started.elapsed() < NOTICE);
    assert_eq!(mock.cancelled(), 10);
}

#[test]
fn cancelled_counts_clients_that_go_away_before_the_answer_is_sent() {
    let mock = MockUpstream::start();
    block_on(async {
        // Answers read to their end are not cancelled, nor is a cut the client reads.
        assert_eq!(stream(mock.addr(), CHAT, "demo-1").await.1, Ending::Clean);
        assert_answers_normally(mock.addr(), MESSAGES, "demo-1").await;
        let cut = send(mock.addr(), ask(CHAT, "stream-cut", true))
            .await
            .unwrap();
        assert!(frames(cut).await.1);
        assert_eq!(mock.cancelled(), 0);

        // A stall, a stall after content and a long gap: each counted as soon as the
        // client closes its connection, not at the mock's next write.
        let cases = [
            (CHAT, "stall", 0),
            (MESSAGES, "stall-after-content", 1),
            (RESPONSES, "stream-gap-60000", 0),
        ];
        for (count, (path, model, events)) in (1..).zip(cases) {
            let (mut response, connection) =
                open(mock.addr(), ask(path, model, true)).await.unwrap();
            let (frames, ending) = listen(&mut response).await;
            assert_eq!((frames.len(), ending), (events, Ending::Open), "{model}");
            assert_eq!(mock.cancelled(), count - 1, "{model}");
            connection.abort();
            let _ = connection.await;
            let started = Instant::now();
            assert!(mock.wait_cancelled(count, NOTICE), "{model}");
            assert!(started.elapsed() < NOTICE, "{model}");
        }

        // A request the mock is still holding before the head counts too.
        let addr = mock.addr();
        tokio::spawn(async move { send(addr, ask(CHAT, "hang", false)).await });
        let deadline = Instant::now() + NOTICE;
        while mock.count_model("hang") == 0 {
            assert!(Instant::now() < deadline, "the mock never saw the request");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    // Ending the runtime closed the hanging request's connection.
    assert!(mock.wait_cancelled(4, NOTICE));
    assert_eq!(mock.cancelled(), 4);
    assert!(!mock.wait_cancelled(5, Duration::from_millis(20)));
}

#[test]
fn an_http2_reset_cancels_a_stall_and_leaves_the_connection_up() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(&ca);
    block_on(async {
        let mut sender = connect_h2(&ca, &mock).await;
        let request = |model: &str| {
            Request::post(format!("https://localhost:{}{MESSAGES}", mock.port()))
                .body(Full::new(Bytes::from(
                    json!({"model": model, "max_tokens": 5, "stream": true}).to_string(),
                )))
                .expect("a request")
        };
        let stalled = sender
            .send_request(request("stall-after-content"))
            .await
            .unwrap();
        let mut body = stalled.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        assert_eq!(mock.cancelled(), 0);
        // Dropping the body resets the stream; the connection stays up.
        drop(body);
        let deadline = Instant::now() + NOTICE;
        while mock.cancelled() == 0 {
            assert!(Instant::now() < deadline, "the reset was not noticed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut next = sender.send_request(request("demo-1")).await.unwrap();
        let (events, ending) = listen(&mut next).await;
        assert_eq!(ending, Ending::Clean);
        assert_eq!(
            kinds(&events).last().map(String::as_str),
            Some("message_stop")
        );
    });
    assert_eq!(mock.cancelled(), 1);
}
