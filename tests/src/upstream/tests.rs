//! The mock upstream over real sockets: HTTP/1.1 in the clear, HTTP/2 over TLS.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::MockUpstream;
use crate::tls::TestCa;

mod faults;

const SENTENCE: &str = "Hello from the krouter demo upstream (model demo-1).";

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
        .block_on(future)
}

fn post(path: &str, headers: &[(&str, &str)], body: &Value) -> Request<Full<Bytes>> {
    let mut request = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request")
}

/// Sends one request over a fresh HTTP/1.1 connection.
async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> hyper::Result<Response<Incoming>> {
    open(addr, request).await.map(|(response, _)| response)
}

/// [`send`], also returning the connection's task: aborting it closes the socket.
async fn open(
    addr: SocketAddr,
    mut request: Request<Full<Bytes>>,
) -> hyper::Result<(Response<Incoming>, JoinHandle<hyper::Result<()>>)> {
    request
        .headers_mut()
        .insert("host", addr.to_string().parse().expect("a host header"));
    let stream = TcpStream::connect(addr).await.expect("the mock accepts");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    Ok((response, connection))
}

/// An HTTP/2 connection over TLS to `mock`, verified against `ca`.
async fn connect_h2(ca: &TestCa, mock: &MockUpstream) -> http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(mock.addr())
        .await
        .expect("the mock accepts");
    let tls = TlsConnector::from(ca.client_config())
        .connect(ServerName::try_from("localhost").expect("a name"), tcp)
        .await
        .expect("the TLS handshake verifies against the test CA");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// The body's data frames, and whether it ended in an error.
async fn frames(response: Response<Incoming>) -> (Vec<Bytes>, bool) {
    let mut body = response.into_body();
    let mut frames = Vec::new();
    loop {
        match body.frame().await {
            None => return (frames, false),
            Some(Err(_)) => return (frames, true),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
        }
    }
}

async fn json_body(response: Response<Incoming>) -> Value {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a whole body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// The JSON of each `data:` line of each event.
fn data_of(events: &[Bytes]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|event| {
            let text = std::str::from_utf8(event).expect("UTF-8 events");
            let data = text.lines().find_map(|line| line.strip_prefix("data: "))?;
            serde_json::from_str(data).ok()
        })
        .collect()
}

#[test]
fn chat_completion_is_answered_and_recorded() {
    let mock = MockUpstream::start();
    let body = json!({"model": "demo-1", "messages": [{"role": "user", "content": "hi"}]});
    block_on(async {
        let response = send(
            mock.addr(),
            post("/v1/chat/completions", &[("X-Trace", "abc")], &body),
        )
        .await
        .expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        let answer = json_body(response).await;
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["model"], "demo-1");
        assert_eq!(answer["choices"][0]["message"]["content"], SENTENCE);
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            answer["usage"],
            json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
        );
    });
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("x-trace"), Some("abc"));
    assert!(seen[0].headers.iter().any(|(name, _)| name == "x-trace"));
    assert_eq!(seen[0].json(), Some(body));
    mock.clear();
    assert!(mock.requests().is_empty());
}

#[test]
fn chat_stream_sends_each_event_as_it_is_made_and_done_last() {
    let mock = MockUpstream::start();
    let body = json!({
        "model": "stream-gap-10",
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    block_on(async {
        let started = Instant::now();
        let response = send(mock.addr(), post("/v1/chat/completions", &[], &body))
            .await
            .expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let (events, failed) = frames(response).await;
        assert!(!failed);
        // role, four pieces, finish, usage, [DONE]: each a frame of its own, 10 ms apart.
        assert_eq!(events.len(), 8, "{events:?}");
        assert!(started.elapsed() >= Duration::from_millis(80));
        for event in &events {
            assert!(event.starts_with(b"data: ") && event.ends_with(b"\n\n"));
            assert_eq!(event.windows(2).filter(|pair| pair == b"\n\n").count(), 1);
        }
        assert_eq!(
            events.last().expect("events"),
            &Bytes::from_static(b"data: [DONE]\n\n")
        );
        let chunks = data_of(&events);
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk["object"] == "chat.completion.chunk")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            text,
            "Hello from the krouter demo upstream (model stream-gap-10)."
        );
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[6]["choices"], json!([]));
        assert_eq!(chunks[6]["usage"]["total_tokens"], 18);
    });
}

#[test]
fn credential_is_enforced_in_each_dialect_and_still_recorded() {
    let mock = MockUpstream::builder()
        .credential(Some("sk-upstream-test".to_owned()))
        .start();
    let body = json!({"model": "demo-1", "max_tokens": 10, "messages": []});
    block_on(async {
        let cases: [(&str, (&str, &str), StatusCode); 6] = [
            (
                "/v1/chat/completions",
                ("x-other", "1"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/v1/chat/completions",
                ("authorization", "Bearer wrong"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/v1/chat/completions",
                ("authorization", "Bearer sk-upstream-test"),
                StatusCode::OK,
            ),
            (
                "/v1/messages",
                ("authorization", "Bearer sk-upstream-test"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/v1/messages",
                ("x-api-key", "sk-upstream-test"),
                StatusCode::OK,
            ),
            (
                "/v1/messages/count_tokens",
                ("x-api-key", "sk-upstream-test"),
                StatusCode::OK,
            ),
        ];
        for (path, header, status) in cases {
            let response = send(mock.addr(), post(path, &[header], &body))
                .await
                .expect("a response");
            assert_eq!(response.status(), status, "{path} with {header:?}");
            let answer = json_body(response).await;
            if status == StatusCode::UNAUTHORIZED && path.starts_with("/v1/messages") {
                assert_eq!(answer["type"], "error");
                assert_eq!(answer["error"]["type"], "authentication_error");
            } else if status == StatusCode::UNAUTHORIZED {
                assert_eq!(answer["error"]["code"], "invalid_api_key");
            }
        }
    });
    assert_eq!(mock.requests().len(), 6);
}

/// One row of the behaviour table: the model a client asks for and what it gets back.
struct Row {
    model: &'static str,
    status: StatusCode,
    /// A header the response must carry.
    header: Option<(&'static str, &'static str)>,
    /// Text the body must contain.
    text: &'static str,
}

#[test]
fn behaviours_answer_as_scripted() {
    let mock = MockUpstream::start();
    block_on(async {
        let rows = [
            Row {
                model: "fail-500",
                status: StatusCode::INTERNAL_SERVER_ERROR,
                header: None,
                text: "UPSTREAM-INTERNAL-DETAIL",
            },
            Row {
                model: "fail-429",
                status: StatusCode::TOO_MANY_REQUESTS,
                header: Some(("retry-after", "1")),
                text: "rate_limit",
            },
            Row {
                model: "fail-400",
                status: StatusCode::BAD_REQUEST,
                header: None,
                text: "invalid_request_error",
            },
            Row {
                model: "redirect",
                status: StatusCode::TEMPORARY_REDIRECT,
                header: Some(("location", "http://127.0.0.1:9/elsewhere")),
                text: "",
            },
            Row {
                model: "slow-30",
                status: StatusCode::OK,
                header: None,
                text: "(model slow-30)",
            },
        ];
        for Row {
            model,
            status,
            header,
            text,
        } in rows
        {
            let started = Instant::now();
            let body = json!({"model": model, "messages": []});
            let response = send(mock.addr(), post("/v1/chat/completions", &[], &body))
                .await
                .expect("a response");
            assert_eq!(response.status(), status, "{model}");
            if let Some((name, value)) = header {
                assert_eq!(response.headers()[name], value, "{model}");
            }
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            let body = String::from_utf8_lossy(&bytes);
            assert!(body.contains(text), "{model}: {body}");
            if model == "slow-30" {
                assert!(started.elapsed() >= Duration::from_millis(30));
            }
        }

        let big = send(
            mock.addr(),
            post("/v1/messages", &[], &json!({"model": "big-error"})),
        )
        .await
        .expect("a response");
        assert_eq!(big.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = big.into_body().collect().await.expect("a body").to_bytes();
        assert!(bytes.len() >= 2 * 1024 * 1024);

        let dropped = send(
            mock.addr(),
            post("/v1/chat/completions", &[], &json!({"model": "drop"})),
        )
        .await;
        assert!(dropped.is_err(), "drop must not answer");

        let cut = send(
            mock.addr(),
            post(
                "/v1/chat/completions",
                &[],
                &json!({"model": "stream-cut", "stream": true}),
            ),
        )
        .await
        .expect("a response head");
        assert_eq!(cut.status(), StatusCode::OK);
        let (events, failed) = frames(cut).await;
        assert!(failed, "the body must end in an error");
        assert_eq!(events.len(), 2);
    });
}

#[test]
fn other_routes_and_limits() {
    let mock = MockUpstream::start();
    block_on(async {
        let models = send(
            mock.addr(),
            Request::get("/v1/models")
                .body(Full::default())
                .expect("a request"),
        )
        .await
        .expect("a response");
        assert_eq!(models.status(), StatusCode::OK);
        assert_eq!(json_body(models).await["object"], "list");

        let missing = send(mock.addr(), post("/v2/nothing", &[], &json!({})))
            .await
            .expect("a response");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(json_body(missing).await["error"]["message"].is_string());

        let embeddings = send(
            mock.addr(),
            post(
                "/v1/embeddings",
                &[],
                &json!({"model": "e", "input": ["a", "b"]}),
            ),
        )
        .await
        .expect("a response");
        let answer = json_body(embeddings).await;
        assert_eq!(answer["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            answer["data"][1]["embedding"],
            json!([0.1_f32, 0.2_f32, 0.3_f32])
        );

        let responses = send(
            mock.addr(),
            post(
                "/v1/responses",
                &[],
                &json!({"model": "demo-1", "input": "hi", "stream": true}),
            ),
        )
        .await
        .expect("a response");
        let (events, _) = frames(responses).await;
        let data = data_of(&events);
        assert_eq!(data.len(), events.len());
        for (event, data) in events.iter().zip(&data) {
            let name = std::str::from_utf8(event)
                .expect("UTF-8")
                .lines()
                .next()
                .expect("a line");
            assert_eq!(
                Some(name),
                data["type"]
                    .as_str()
                    .map(|kind| format!("event: {kind}"))
                    .as_deref()
            );
        }
        assert_eq!(data[0]["type"], "response.created");
        let completed = data.last().expect("events");
        assert_eq!(completed["type"], "response.completed");
        assert_eq!(
            completed["response"]["output"][0]["content"][0]["text"],
            SENTENCE
        );
        assert_eq!(completed["response"]["usage"]["total_tokens"], 18);
        let deltas: String = data
            .iter()
            .filter(|event| event["type"] == "response.output_text.delta")
            .filter_map(|event| event["delta"].as_str())
            .collect();
        assert_eq!(deltas, SENTENCE);
    });

    // A body declared over 8 MiB is refused before it is read.
    block_on(async {
        let mut stream = TcpStream::connect(mock.addr())
            .await
            .expect("the mock accepts");
        stream
            .write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 9437184\r\n\r\n",
            )
            .await
            .expect("the head is sent");
        let mut head = [0_u8; 12];
        stream.read_exact(&mut head).await.expect("a status line");
        assert_eq!(&head, b"HTTP/1.1 413");
    });
}

#[test]
fn tls_serves_http2_and_anthropic_streams() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(&ca);
    assert!(mock.base_url().starts_with("https://127.0.0.1:"));
    block_on(async {
        let mut sender = connect_h2(&ca, &mock).await;

        let request = |body: Value| {
            Request::post(format!("https://localhost:{}/v1/messages", mock.port()))
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("a request")
        };
        let plain = sender
            .send_request(request(json!({"model": "demo-1", "max_tokens": 5})))
            .await
            .expect("a response");
        let message = json_body(plain).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["content"][0]["text"], SENTENCE);
        assert_eq!(message["stop_reason"], "end_turn");
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 11, "output_tokens": 7})
        );

        let streamed = sender
            .send_request(request(
                json!({"model": "demo-1", "max_tokens": 5, "stream": true}),
            ))
            .await
            .expect("a response");
        assert_eq!(streamed.headers()["content-type"], "text/event-stream");
        let (events, failed) = frames(streamed).await;
        assert!(!failed);
        let kinds: Vec<String> = data_of(&events)
            .iter()
            .map(|data| data["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let data = data_of(&events);
        assert_eq!(data[0]["message"]["usage"]["output_tokens"], 1);
        assert_eq!(data[7]["usage"]["output_tokens"], 7);
    });
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn dropping_the_mock_closes_a_hanging_request() {
    let mock = MockUpstream::start();
    let addr = mock.addr();
    block_on(async move {
        let pending = tokio::spawn(send(
            addr,
            post("/v1/chat/completions", &[], &json!({"model": "hang"})),
        ));
        // Wait until the mock has the request, then stop it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while mock.requests().is_empty() {
            assert!(Instant::now() < deadline, "the mock never saw the request");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(mock);
        let answer = tokio::time::timeout(Duration::from_secs(2), pending)
            .await
            .expect("the connection closes when the mock stops")
            .expect("the client task completes");
        assert!(answer.is_err());
    });
}
