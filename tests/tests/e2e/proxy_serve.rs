//! The proxy serving real requests: the real `krouter` between the test client and the
//! scripted mock upstream (or, where the mock cannot say what a test needs, a bare HTTP/1.1
//! upstream written here).
//!
//! The tables follow the proxy contract: what the client sends, what the upstream sees,
//! what the upstream answers, what the client sees. Each test starts one `krouter` on its
//! own home and sends every row to it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use krouter_tests::bins::proxy_path;
use krouter_tests::client::{Reply, post, send, send_h2};
use krouter_tests::home::{TempHome, json_field};
use krouter_tests::krouter::{Krouter, policy};
use krouter_tests::leak::{assert_absent, assert_absent_from_files, fake_secret};
use krouter_tests::tls::TestCa;
use krouter_tests::upstream::MockUpstream;

/// The marker the mock puts in its 500 bodies; it must never reach a client.
pub(super) const INTERNAL_DETAIL: &str = "UPSTREAM-INTERNAL-DETAIL";

// === policy text ===

/// One `[[providers]]` table; `extra` is more `key = value` lines (timeouts).
pub(super) fn provider(
    name: &str,
    kind: &str,
    base_url: &str,
    credential: Option<&str>,
    extra: &str,
) -> String {
    let credential = credential.map_or(String::new(), |c| format!("credential = \"{c}\"\n"));
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n{credential}{extra}\n"
    )
}

/// One `[[routes]]` table.
pub(super) fn route(model: &str, targets: &[&str]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[[routes]]\nmodel = \"{model}\"\ntargets = [{}]\n\n",
        targets.join(", ")
    )
}

/// A policy whose groups are `default` (every model) and `limited` (only `limited_models`),
/// with a lockout too lenient to trip on a table of bad keys; `body` is its providers and
/// routes.
fn policy_with_limited_group(limited_models: &[&str], body: &str) -> String {
    let head = include_str!("../../fixtures/proxy_serve/two_groups.toml");
    let models: Vec<String> = limited_models.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        "{}{body}",
        head.replace("LIMITED_MODELS", &models.join(", "))
    )
}

/// Creates a key in group `group`; returns its id and the key.
fn create_key_in(home: &TempHome, label: &str, group: &str) -> (String, String) {
    let run = home.admin(&[
        "--json", "keys", "create", "--label", label, "--group", group,
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    (
        json_field(&run.stdout, "id"),
        json_field(&run.stdout, "secret"),
    )
}

// === request bodies ===

pub(super) fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

pub(super) fn chat_stream(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true,"stream_options":{{"include_usage":true}}}}"#
    )
}

pub(super) fn message(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":64,"messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
    )
}

/// `POST /v1/chat/completions` with a bearer key, as an OpenAI SDK sends it.
pub(super) fn complete(krouter: &Krouter, key: &str, body: &str) -> Reply {
    post(&krouter.url("/v1/chat/completions"), Some(key), body)
}

/// `POST url` as an Anthropic SDK sends it: `x-api-key` and `anthropic-version`.
pub(super) fn post_anthropic(url: &str, key: &str, body: &str) -> Reply {
    send(
        "POST",
        url,
        &[
            ("content-type", "application/json"),
            ("x-api-key", key),
            ("anthropic-version", "2023-06-01"),
        ],
        body,
    )
}

// === replies and the log ===

pub(super) fn request_id(reply: &Reply) -> String {
    let id = reply
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id: {reply:?}"));
    assert!(id.starts_with("req_"), "{id}");
    id.to_owned()
}

/// The `"request"` log line of request `id`; it is written when the response has ended,
/// which can be a moment after the client read the last byte.
pub(super) fn request_line(krouter: &Krouter, id: &str) -> String {
    let needle = format!("\"request_id\":\"{id}\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = krouter.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(&needle) && l.contains("\"message\":\"request\""))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no request line for {id}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the error object of the dialect: OpenAI `{"error":{...}}`, Anthropic
/// `{"type":"error","error":{...}}`; returns the message.
pub(super) fn error_message(reply: &Reply, anthropic: bool, row: &str) -> String {
    let body = reply.json();
    let error = &body["error"];
    assert!(error["type"].is_string(), "{row}: {}", reply.body);
    if anthropic {
        assert_eq!(body["type"], "error", "{row}: {}", reply.body);
        assert!(error.get("code").is_none(), "{row}: {}", reply.body);
    } else {
        assert!(body.get("type").is_none(), "{row}: {}", reply.body);
        assert!(error.get("param").is_some(), "{row}: {}", reply.body);
    }
    error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{row}: no message in {}", reply.body))
        .to_owned()
}

/// The leak scan every test that handles secrets ends with: the log, every reply body and
/// header, and every file under the home.
pub(super) fn assert_nothing_leaked(
    home: &TempHome,
    log: &str,
    replies: &[Reply],
    secrets: &[&str],
) {
    assert_absent(log, secrets, "the krouter log");
    for reply in replies {
        assert_absent(&reply.body, secrets, "a reply body");
        assert_absent(&format!("{:?}", reply.headers), secrets, "reply headers");
    }
    assert_absent_from_files(&home.root, secrets, &[]);
}

/// A port nothing listens on: bound, read back, released.
pub(super) fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("an address").port()
}

/// A loopback port whose connects hang: a listener that never accepts, with an accept
/// queue of one already full, so the kernel drops every new SYN and a connector waits until
/// its own timeout (the only way to time a connect out without leaving loopback).
pub(super) struct BlackHole {
    // Dropped before the runtime its listener is registered with.
    listener: tokio::net::TcpListener,
    _held: Vec<TcpStream>,
    _runtime: tokio::runtime::Runtime,
}

impl BlackHole {
    pub(super) fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind("127.0.0.1:0".parse().expect("an address"))?;
                socket.listen(1)
            })
            .expect("a listener");
        let addr = listener.local_addr().expect("an address");
        let mut held = Vec::new();
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(stream) => held.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the accept queue: {e}"),
            }
            assert!(held.len() < 64, "the accept queue never filled");
        }
        Self {
            listener,
            _held: held,
            _runtime: runtime,
        }
    }

    pub(super) fn base_url(&self) -> String {
        let port = self.listener.local_addr().expect("an address").port();
        format!("http://127.0.0.1:{port}/v1")
    }
}

// === a bare upstream ===

/// A bare HTTP/1.1 upstream on `127.0.0.1:0` that records each request head as sent (the
/// scripted mock drops the query string) and answers every request with one canned response
/// (the scripted mock cannot send arbitrary headers), closing the connection after it.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

// === impl RawUpstream ===

impl RawUpstream {
    fn start(response: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("an address");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (Arc::clone(&heads), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Some(head) = Self::exchange(stream, &response) {
                    seen.lock().unwrap().push(head);
                }
            }
        });
        Self { addr, heads, stop }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Reads one request (head and `content-length` body), answers, closes.
    fn exchange(stream: TcpStream, response: &str) -> Option<String> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        let mut stream = stream;
        stream.write_all(response.as_bytes()).ok()?;
        Some(head)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// The values of header `name` in a raw request head (names compared case-insensitively).
fn head_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

// === tests ===

/// A home whose policy routes `chat` to an OpenAI-compatible mock that demands a credential.
/// The model ids `GET /v1/models` lists for a request with `headers` (either API's list:
/// both carry `data[].id`).
fn model_ids(krouter: &Krouter, headers: &[(&str, &str)]) -> Vec<String> {
    let reply = send("GET", &krouter.url("/v1/models"), headers, "");
    assert_eq!(reply.status, 200, "{reply:?}");
    let list = reply.json();
    if list.get("has_more").is_none() {
        assert_eq!(list["object"], "list", "{list}");
    }
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn openai_setup() -> (TempHome, MockUpstream, String) {
    let home = TempHome::init();
    let credential = fake_secret("sk-upstream-", 32);
    let upstream = MockUpstream::builder()
        .credential(Some(credential.clone()))
        .start();
    home.set_credential("mock", "openai-compatible", &credential);
    home.write_policy(&policy(
        2,
        &format!(
            "{}{}",
            provider(
                "mock",
                "openai-compatible",
                &upstream.base_url(),
                Some("mock"),
                ""
            ),
            route("chat", &["mock:real-model"])
        ),
    ));
    (home, upstream, credential)
}

#[test]
fn a_chat_completion_goes_through_with_the_upstream_credential_and_nothing_leaks() {
    let (home, upstream, credential) = openai_setup();
    let (_id, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let reply = complete(&krouter, &key, &chat("chat"));
    assert_eq!(reply.status, 200, "{reply:?}");
    request_id(&reply);
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 11);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].json().unwrap()["model"], "real-model");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {credential}").as_str())
    );
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("\"tokens_in\":11"), "{log}");
    assert_nothing_leaked(&home, &log, &[reply], &[&key, &credential]);
}

/// One row of the refusal table: what the client sends, what it must get back.
struct Refusal {
    row: String,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
    status: u16,
    /// The error object's shape.
    anthropic: bool,
    /// A piece of the fixed message.
    message: &'static str,
}

#[test]
fn requests_krouter_refuses_get_the_dialect_error_object_and_never_reach_the_upstream() {
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    let anthropic_credential = fake_secret("sk-ant-test-", 32);
    home.set_credential("anth", "anthropic", &anthropic_credential);
    let base = upstream.base_url();
    home.write_policy(&policy_with_limited_group(
        &["other"],
        &[
            provider("oai", "openai-compatible", &base, None, ""),
            provider("anth", "anthropic", &base, Some("anth"), ""),
            route("chat", &["oai:real-model"]),
            route("other", &["oai:other-model"]),
            route("claude", &["anth:claude-real"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    let (_, limited) = create_key_in(&home, "limited", "limited");
    let (revoked_id, revoked) = home.create_key("gone");
    let run = home.admin(&["keys", "revoke", &revoked_id]);
    assert_eq!(run.code, 0, "{run:?}");
    let elsewhere = TempHome::init();
    let (_, foreign) = elsewhere.create_key("elsewhere");
    // One character changed in the middle: the checksum no longer matches.
    let mut typo: Vec<char> = key.chars().collect();
    let middle = typo.len() / 2;
    typo[middle] = if typo[middle] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    assert_ne!(typo, key);

    let mut rows = Vec::new();
    for anthropic in [false, true] {
        let (path, model, other) = if anthropic {
            ("/v1/messages", "claude", "chat")
        } else {
            ("/v1/chat/completions", "chat", "claude")
        };
        let body = |model: &str| {
            if anthropic {
                message(model, false)
            } else {
                chat(model)
            }
        };
        let with_key = |key: &str| -> Vec<(&'static str, String)> {
            let mut headers = vec![("content-type", "application/json".to_owned())];
            if anthropic {
                headers.push(("x-api-key", key.to_owned()));
                headers.push(("anthropic-version", "2023-06-01".to_owned()));
            } else {
                headers.push(("authorization", format!("Bearer {key}")));
            }
            headers
        };
        let dialect = if anthropic { "Anthropic" } else { "OpenAI" };
        let row = |row: &str,
                   headers: Vec<(&'static str, String)>,
                   body: String,
                   status: u16,
                   message: &'static str| Refusal {
            row: format!("{dialect}: {row}"),
            method: "POST",
            path,
            headers,
            body,
            status,
            anthropic,
            message,
        };
        let bare = || vec![("content-type", "application/json".to_owned())];
        let both = || {
            let mut headers = bare();
            headers.push(("authorization", format!("Bearer {key}")));
            headers.push(("x-api-key", foreign.clone()));
            headers
        };
        let truncated = format!("{{\"model\":\"{model}\",");
        let repeated = format!("{{\"model\":\"{model}\",\"messages\":[],\"model\":\"x\"}}");
        // Row: what is wrong, headers, body, status, a piece of the message.
        #[rustfmt::skip]
        let table = [
            row("no key", bare(), body(model), 401, "Missing API key"),
            row("bad checksum", with_key(&typo), body(model), 401, "Invalid API key"),
            row("key of another home", with_key(&foreign), body(model), 401, "Invalid API key"),
            row("two different keys", both(), body(model), 401, "one API key"),
            row("revoked key", with_key(&revoked), body(model), 401, "revoked"),
            row("group may not", with_key(&limited), body(model), 403, "may not use this model"),
            row("unknown model", with_key(&key), body("nope"), 404, "does not exist"),
            row("other API's model", with_key(&key), body(other), 400, "not served over this API"),
            row("malformed JSON", with_key(&key), truncated, 400, "JSON object"),
            row("repeated model", with_key(&key), repeated, 400, "repeated keys"),
        ];
        rows.extend(table);
    }
    let bearer = vec![
        ("content-type", "application/json".to_owned()),
        ("authorization", format!("Bearer {key}")),
    ];
    let unknown = (404, "Unknown endpoint");
    let wrong_method = (405, "does not take this method");
    let path_rows = [
        ("POST", "/v1/messages/batches", true, unknown),
        ("POST", "/v1/nope", false, unknown),
        ("GET", "/v1/chat/completions", false, wrong_method),
        ("POST", "/v1/models", false, wrong_method),
        ("POST", "/v1/chat/completions/", false, unknown),
    ];
    for (method, path, anthropic, (status, message)) in path_rows {
        rows.push(Refusal {
            row: format!("{method} {path}"),
            method,
            path,
            headers: bearer.clone(),
            body: chat("chat"),
            status,
            anthropic,
            message,
        });
    }

    let krouter = Krouter::spawn(&home, &[]);
    // The model list holds the routes the caller may use over its own API only.
    let listed = |headers: &[(&str, &str)]| model_ids(&krouter, headers);
    let bearer = format!("Bearer {key}");
    assert_eq!(listed(&[("authorization", &bearer)]), ["chat", "other"]);
    assert_eq!(
        listed(&[("x-api-key", &key), ("anthropic-version", "2023-06-01")]),
        ["claude"]
    );
    let limited_bearer = format!("Bearer {limited}");
    assert_eq!(listed(&[("authorization", &limited_bearer)]), ["other"]);
    let mut replies = Vec::new();
    for row in &rows {
        let headers: Vec<(&str, &str)> =
            row.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = send(row.method, &krouter.url(row.path), &headers, &row.body);
        assert_eq!(reply.status, row.status, "{}: {reply:?}", row.row);
        request_id(&reply);
        let message = error_message(&reply, row.anthropic, &row.row);
        assert!(
            message.contains(row.message),
            "{}: {message:?} lacks {:?}",
            row.row,
            row.message
        );
        if reply.status == 401 && !row.anthropic {
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer"),
                "{}",
                row.row
            );
        }
        assert!(
            upstream.requests().is_empty(),
            "{}: the upstream saw {:?}",
            row.row,
            upstream.requests()
        );
        replies.push(reply);
    }
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(
        &home,
        &log,
        &replies,
        &[
            &key,
            &limited,
            &revoked,
            &foreign,
            &typo,
            &anthropic_credential,
        ],
    );
}

/// The canned answer of the bare upstream: a chat completion, with headers of which only
/// the allowlisted ones may reach the client.
const RAW_RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    ("retry-after", "3"),
    ("x-ratelimit-remaining-requests", "9"),
    ("server", "upstream/1.0"),
    ("set-cookie", "session=upstream-session"),
    ("x-request-id", "upstream-request-id"),
    ("x-upstream-node", "gpu-east-7"),
    ("via", "1.1 internal-lb"),
    ("access-control-allow-origin", "*"),
    ("strict-transport-security", "max-age=1"),
    ("alt-svc", "h3=\":443\""),
    ("www-authenticate", "Bearer realm=\"upstream\""),
    ("connection", "close"),
];

#[test]
fn only_allowlisted_headers_cross_the_proxy_in_either_direction() {
    let body = r#"{"id":"chatcmpl-raw","object":"chat.completion","created":0,"model":"real-model","choices":[{"index":0,"message":{"role":"assistant","content":"raw"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
    let mut response = "HTTP/1.1 200 OK\r\n".to_owned();
    for (name, value) in RAW_RESPONSE_HEADERS {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    let raw = RawUpstream::start(response);

    let home = TempHome::init();
    let credential = fake_secret("sk-upstream-", 32);
    let anthropic_credential = fake_secret("sk-ant-test-", 32);
    home.set_credential("raw", "openai-compatible", &credential);
    home.set_credential("anth", "anthropic", &anthropic_credential);
    let mock = MockUpstream::builder()
        .credential(Some(anthropic_credential.clone()))
        .start();
    home.write_policy(&policy(
        2,
        &[
            provider("raw", "openai-compatible", &raw.base_url(), Some("raw"), ""),
            provider("anth", "anthropic", &mock.base_url(), Some("anth"), ""),
            route("chat", &["raw:real-model"]),
            route("claude", &["anth:claude-real"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);

    // Client sends -> upstream sees (None: the header does not reach the upstream).
    let bearer = format!("Bearer {key}");
    let upstream_bearer = format!("Bearer {credential}");
    let request_rows: &[(&str, &str, Option<&str>)] = &[
        ("authorization", &bearer, Some(&upstream_bearer)),
        ("x-api-key", &key, None),
        ("cookie", "session=client-session", None),
        ("x-forwarded-for", "203.0.113.7", None),
        ("x-forwarded-host", "client.example", None),
        ("x-real-ip", "203.0.113.7", None),
        ("forwarded", "for=203.0.113.7", None),
        ("connection", "keep-alive, te", None),
        ("te", "trailers", None),
        ("proxy-authorization", "Basic dXNlcjpwYXNz", None),
        ("x-stainless-os", "Linux", None),
        ("x-stainless-retry-count", "0", None),
        ("accept-encoding", "gzip, br", None),
        ("x-custom-trace", "trace-1", None),
        ("content-type", "application/json", Some("application/json")),
        ("accept", "application/json", Some("application/json")),
        (
            "user-agent",
            "OpenAI/Python 1.51.0",
            Some("OpenAI/Python 1.51.0"),
        ),
        ("anthropic-version", "2023-01-01", Some("2023-01-01")),
        (
            "anthropic-beta",
            "tools-2024-04-04",
            Some("tools-2024-04-04"),
        ),
        ("openai-beta", "assistants=v2", Some("assistants=v2")),
        ("idempotency-key", "idem-123", Some("idem-123")),
    ];
    let headers: Vec<(&str, &str)> = request_rows.iter().map(|(n, v, _)| (*n, *v)).collect();
    let reply = send(
        "POST",
        &krouter.url("/v1/chat/completions?api-version=2024-02-01&beta=true&key=x"),
        &headers,
        &chat("chat"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let heads = raw.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    assert!(
        head.starts_with("POST /v1/chat/completions?beta=true HTTP/1.1\r\n"),
        "only allowlisted query parameters are kept: {head}"
    );
    for (name, sent, sees) in request_rows {
        let seen = head_values(head, name);
        match sees {
            Some(expected) => assert_eq!(seen, [*expected], "client sent {name}: {sent}"),
            None => assert!(
                seen.is_empty(),
                "client sent {name}: {sent}; upstream saw {seen:?}"
            ),
        }
    }
    assert_eq!(head_values(head, "host"), [raw.addr.to_string()]);
    for name in [
        "x-stainless-lang",
        "x-forwarded-proto",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(head_values(head, name).is_empty(), "{name} in {head}");
    }

    // Upstream answers -> client sees (None: the header does not reach the client).
    let response_rows: &[(&str, Option<&str>)] = &[
        ("content-type", Some("application/json")),
        ("cache-control", Some("no-store")),
        ("retry-after", Some("3")),
        ("x-ratelimit-remaining-requests", Some("9")),
        ("server", None),
        ("set-cookie", None),
        ("x-upstream-node", None),
        ("via", None),
        ("access-control-allow-origin", None),
        ("strict-transport-security", None),
        ("alt-svc", None),
        ("www-authenticate", None),
    ];
    for (name, sees) in response_rows {
        assert_eq!(reply.header(name), *sees, "upstream sent {name}: {reply:?}");
    }
    let id = request_id(&reply);
    assert_eq!(
        reply
            .headers
            .iter()
            .filter(|(n, _)| n == "x-request-id")
            .count(),
        1,
        "{reply:?}"
    );
    assert_ne!(reply.header("connection"), Some("close"), "{reply:?}");
    assert_eq!(reply.json()["choices"][0]["message"]["content"], "raw");

    // An Anthropic provider: its credential as x-api-key, a default anthropic-version.
    // Key header the client uses, anthropic-version it sends -> header, upstream sees.
    let credential_value = Some(anthropic_credential.as_str());
    #[rustfmt::skip]
    let anthropic_rows = [
        ("x-api-key", None, "x-api-key", credential_value),
        ("x-api-key", None, "authorization", None),
        ("x-api-key", None, "anthropic-version", Some("2023-06-01")),
        ("x-api-key", Some("2023-01-01"), "anthropic-version", Some("2023-01-01")),
        ("authorization", None, "x-api-key", credential_value),
        ("authorization", None, "authorization", None),
    ];
    let mut replies = vec![reply];
    for (key_header, version, name, sees) in anthropic_rows {
        mock.clear();
        let presented = if key_header == "x-api-key" {
            key.as_str()
        } else {
            bearer.as_str()
        };
        let mut headers = vec![
            ("content-type", "application/json"),
            (key_header, presented),
        ];
        headers.extend(version.map(|v| ("anthropic-version", v)));
        let reply = send(
            "POST",
            &krouter.url("/v1/messages"),
            &headers,
            &message("claude", false),
        );
        assert_eq!(
            reply.status, 200,
            "client sent {key_header}, {version:?}: {reply:?}"
        );
        let seen = mock.requests();
        assert_eq!(seen.len(), 1);
        let what = format!("client sent {key_header} and anthropic-version {version:?}");
        assert_eq!(seen[0].header(name), sees, "{what}; upstream {name}");
        replies.push(reply);
    }

    let line = request_line(&krouter, &id);
    assert!(line.contains("\"status\":200"), "{line}");
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(
        &home,
        &log,
        &replies,
        &[&key, &credential, &anthropic_credential],
    );
}

#[test]
fn anthropic_clients_reach_an_anthropic_provider_with_its_credential() {
    let home = TempHome::init();
    let credential = fake_secret("sk-ant-test-", 32);
    let upstream = MockUpstream::builder()
        .credential(Some(credential.clone()))
        .start();
    home.set_credential("anth", "anthropic", &credential);
    home.write_policy(&policy(
        2,
        &[
            provider("anth", "anthropic", &upstream.base_url(), Some("anth"), ""),
            route("claude", &["anth:claude-real"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let url = krouter.url("/v1/messages");

    let plain = post_anthropic(&url, &key, &message("claude", false));
    assert_eq!(plain.status, 200, "{plain:?}");
    let body = plain.json();
    assert_eq!(body["type"], "message");
    assert_eq!(
        body["content"][0]["text"],
        "Hello from the krouter demo upstream (model claude-real)."
    );
    assert_eq!(body["usage"]["output_tokens"], 7);

    let stream = post_anthropic(&url, &key, &message("claude", true));
    assert_eq!(stream.status, 200, "{stream:?}");
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    for event in [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(
            stream.body.contains(&format!("event: {event}\n")),
            "{}",
            stream.body
        );
    }

    let count = post_anthropic(
        &krouter.url("/v1/messages/count_tokens"),
        &key,
        r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(count.status, 200, "{count:?}");
    assert_eq!(count.json()["input_tokens"], 11);

    let models = send(
        "GET",
        &krouter.url("/v1/models"),
        &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
        "",
    );
    assert_eq!(models.status, 200, "{models:?}");
    let list = models.json();
    assert_eq!(list["data"][0]["type"], "model");
    assert_eq!(list["data"][0]["id"], "claude");
    assert_eq!(list["has_more"], false);

    let seen = upstream.requests();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/v1/messages", "/v1/messages", "/v1/messages/count_tokens"]
    );
    for request in &seen {
        assert_eq!(request.header("x-api-key"), Some(credential.as_str()));
        assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(request.header("authorization"), None);
        assert_eq!(request.json().unwrap()["model"], "claude-real");
    }
    for reply in [&plain, &stream] {
        let line = request_line(&krouter, &request_id(reply));
        assert!(line.contains("\"tokens_in\":11"), "{line}");
        assert!(line.contains("\"tokens_out\":7"), "{line}");
    }
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(
        &home,
        &log,
        &[plain, stream, count, models],
        &[&key, &credential],
    );
}

#[test]
fn embeddings_responses_and_the_model_list_follow_the_openai_api() {
    let home = TempHome::init();
    let credential = fake_secret("sk-upstream-", 32);
    let upstream = MockUpstream::builder()
        .credential(Some(credential.clone()))
        .start();
    home.set_credential("oai", "openai", &credential);
    home.write_policy(&policy_with_limited_group(
        &["embed"],
        &[
            provider("oai", "openai", &upstream.base_url(), Some("oai"), ""),
            route("chat", &["oai:real-model"]),
            route("embed", &["oai:embed-real"]),
            route("resp", &["oai:resp-real"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    let (_, limited) = create_key_in(&home, "embedder", "limited");
    let krouter = Krouter::spawn(&home, &[]);

    let embeddings = post(
        &krouter.url("/v1/embeddings"),
        Some(&limited),
        r#"{"model":"embed","input":["a","b"]}"#,
    );
    assert_eq!(embeddings.status, 200, "{embeddings:?}");
    assert_eq!(embeddings.json()["data"].as_array().map(Vec::len), Some(2));

    let responses = post(
        &krouter.url("/v1/responses"),
        Some(&key),
        r#"{"model":"resp","input":"hi"}"#,
    );
    assert_eq!(responses.status, 200, "{responses:?}");
    assert_eq!(responses.json()["object"], "response");
    assert_eq!(responses.json()["model"], "resp-real");

    let streamed = post(
        &krouter.url("/v1/responses"),
        Some(&key),
        r#"{"model":"resp","input":"hi","stream":true}"#,
    );
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    assert!(
        streamed.body.contains("response.completed"),
        "{}",
        streamed.body
    );
    let line = request_line(&krouter, &request_id(&streamed));
    assert!(
        line.contains("\"tokens_in\":11") && line.contains("\"tokens_out\":7"),
        "{line}"
    );

    let model_ids = |key: &str| model_ids(&krouter, &[("authorization", &format!("Bearer {key}"))]);
    assert_eq!(model_ids(&key), ["chat", "embed", "resp"]);
    assert_eq!(model_ids(&limited), ["embed"]);
    let refused = post(
        &krouter.url("/v1/responses"),
        Some(&limited),
        r#"{"model":"resp","input":"hi"}"#,
    );
    assert_eq!(refused.status, 403, "{refused:?}");

    let paths: Vec<String> = upstream.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/embeddings", "/v1/responses", "/v1/responses"]);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(
        &home,
        &log,
        &[embeddings, responses, streamed, refused],
        &[&key, &limited, &credential],
    );
}

#[test]
fn a_stream_is_relayed_as_it_is_produced_and_its_usage_is_logged() {
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    let base = upstream.base_url();
    home.write_policy(&policy(
        2,
        &[
            provider("mock", "openai-compatible", &base, None, ""),
            provider(
                "idle",
                "openai-compatible",
                &base,
                None,
                "idle_timeout_ms = 200\n",
            ),
            provider(
                "total",
                "openai-compatible",
                &base,
                None,
                "connect_timeout_ms = 100\nfirst_byte_timeout_ms = 100\ntotal_timeout_ms = 700\n",
            ),
            // The stream is held until its first content (the second event), then relayed.
            route("chat", &["mock:stream-gap-300"]),
            route("idle", &["idle:stream-gap-300"]),
            route("total", &["total:stream-gap-200"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let reply = complete(&krouter, &key, &chat_stream("chat"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.ends_with("data: [DONE]\n\n"), "{}", reply.body);
    let times = &reply.chunk_times;
    assert!(times.len() >= 3, "{times:?}");
    let (first, last) = (times[0], times[times.len() - 1]);
    assert!(
        last.saturating_sub(first) >= Duration::from_millis(600),
        "the chunks arrived together, so the stream was buffered: {times:?}"
    );
    let line = request_line(&krouter, &request_id(&reply));
    assert!(line.contains("\"tokens_in\":11"), "{line}");
    assert!(line.contains("\"tokens_out\":7"), "{line}");
    assert!(line.contains("\"stream\":true"), "{line}");
    assert!(!line.contains("cut_short\":\""), "{line}");

    // A stream that stalls, or outlives the provider's total limit, after its content began
    // is ended (the head has gone, so nothing can fall back) with the dialect's error event.
    let mut replies = vec![reply];
    for (model, cut) in [
        ("idle", "the upstream stream went idle"),
        ("total", "the provider's total time limit passed"),
    ] {
        let started = Instant::now();
        let reply = complete(&krouter, &key, &chat_stream(model));
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{model}: {reply:?}");
        assert!(!reply.body.contains("[DONE]"), "{model}: {}", reply.body);
        assert!(
            reply.body.ends_with("\"code\":\"upstream_error\",\"message\":\"The upstream provider's stream failed part-way; the answer is incomplete.\",\"param\":null,\"type\":\"api_error\"}}\n\n"),
            "{model}: {}",
            reply.body
        );
        assert!(took < Duration::from_millis(1500), "{model}: took {took:?}");
        let line = request_line(&krouter, &request_id(&reply));
        assert!(line.contains(&format!("\"cut_short\":\"{cut}\"")), "{line}");
        replies.push(reply);
    }
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(&home, &log, &replies, &[&key]);
}

/// A row of the fallback table: the route's model and targets (`a` and `b` are two mocks,
/// `h` is `a` with 500 ms timeouts, `closed` a port nothing listens on); what the client
/// gets (status, a piece of the body, pieces that must not be in it); how many requests `a`
/// and `b` saw; the attempts the log line counts. A model starting with `stream` asks for
/// a stream.
struct Fallback(
    &'static str,
    &'static [&'static str],
    u16,
    &'static str,
    &'static [&'static str],
    (usize, usize),
    u32,
);

/// Every answer of the fallback table comes within this.
const QUICK: Duration = Duration::from_secs(3);

#[test]
fn targets_fall_back_only_before_the_first_byte_and_upstream_errors_are_contained() {
    let home = TempHome::init();
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    let closed = format!("http://127.0.0.1:{}/v1", closed_port());
    let hole = BlackHole::start();
    let fast = "connect_timeout_ms = 500\nfirst_byte_timeout_ms = 500\n";
    let ok = "(model ok-model)";
    let detail: &[&str] = &[INTERNAL_DETAIL, "gpu-east", "worker.rs", "xxxxxxxx"];
    #[rustfmt::skip]
    let rows = [
        Fallback("via-500", &["a:fail-500", "b:ok-model"], 200, ok, detail, (1, 1), 2),
        Fallback("via-429", &["a:fail-429", "b:ok-model"], 200, ok, &[], (1, 1), 2),
        // Refused or reset before an answer: tried once more ([resilience] retries = 1 by
        // default), then the next target.
        Fallback("via-closed-port", &["closed:any", "b:ok-model"], 200, ok, &[], (0, 1), 3),
        // A connect that hangs is given up at the provider's connect timeout (300 ms): an
        // answer within QUICK proves it, as the first byte would be waited for 30 s.
        Fallback("via-connect-timeout", &["hole:any", "b:ok-model"], 200, ok, &[], (0, 1), 2),
        Fallback("connect-timeout", &["hole:any"], 504, "did not answer in time", &[], (0, 0), 1),
        Fallback("after-drop", &["a:drop", "b:ok-model"], 200, ok, &[], (2, 1), 3),
        Fallback("only-drop", &["a:drop"], 502, "connection to the upstream provider broke", &[], (2, 0), 2),
        Fallback("via-hang", &["h:hang", "b:ok-model"], 200, ok, &[], (1, 1), 2),
        Fallback("client-error", &["a:fail-400", "b:ok-model"], 400, "fail-400 rejects", &[], (1, 0), 1),
        Fallback("redirected", &["a:redirect", "b:ok-model"], 502, "redirect", &["127.0.0.1:9", "elsewhere"], (1, 0), 1),
        Fallback("big-error", &["a:big-error"], 502, "provider failed", detail, (1, 0), 1),
        Fallback("broken", &["a:fail-500"], 502, "provider failed", detail, (1, 0), 1),
        Fallback("limited", &["a:fail-429"], 429, "rate limiting", &[], (1, 0), 1),
        Fallback("hung", &["h:hang"], 504, "did not answer in time", &[], (1, 0), 1),
        Fallback("stream-cut", &["a:stream-cut", "b:ok-model"], 200, "chat.completion.chunk", &["[DONE]"], (1, 0), 1),
    ];
    let mut text = [
        provider("a", "openai-compatible", &first.base_url(), None, ""),
        provider("b", "openai-compatible", &second.base_url(), None, ""),
        provider("h", "openai-compatible", &first.base_url(), None, fast),
        provider("closed", "openai-compatible", &closed, None, fast),
        provider(
            "hole",
            "openai-compatible",
            &hole.base_url(),
            None,
            "connect_timeout_ms = 300\nfirst_byte_timeout_ms = 30000\n",
        ),
    ]
    .concat();
    for Fallback(model, targets, ..) in &rows {
        text.push_str(&route(model, targets));
    }
    home.write_policy(&policy(2, &text));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);

    let mut replies = Vec::new();
    for &Fallback(model, _, status, has, lacks, seen, attempts) in &rows {
        first.clear();
        second.clear();
        let stream = model.starts_with("stream");
        let body = if stream {
            chat_stream(model)
        } else {
            chat(model)
        };
        let started = Instant::now();
        let reply = complete(&krouter, &key, &body);
        let took = started.elapsed();
        assert_eq!(reply.status, status, "{model}: {reply:?}");
        assert!(took < QUICK, "{model}: took {took:?}");
        assert!(
            reply.body.contains(has),
            "{model}: {:?} lacks {has:?}",
            reply.body
        );
        for lacks in lacks {
            assert!(
                !reply.body.contains(lacks),
                "{model}: {lacks:?} reached the client"
            );
        }
        assert!(
            reply.body.len() < 64 * 1024,
            "{model}: {} bytes",
            reply.body.len()
        );
        assert_eq!(reply.header("location"), None, "{model}");
        if status >= 500 || status == 429 {
            error_message(&reply, false, model);
        }
        let counts = (first.requests().len(), second.requests().len());
        assert_eq!(counts, seen, "{model}: requests seen by a and b");
        let line = request_line(&krouter, &request_id(&reply));
        assert!(
            line.contains(&format!("\"attempts\":{attempts}")),
            "{model}: {line}"
        );
        assert!(
            line.contains(&format!("\"status\":{status}")),
            "{model}: {line}"
        );
        if stream {
            assert!(reply.body.starts_with("data: "), "{}", reply.body);
            assert!(line.contains("\"cut_short\":"), "{line}");
        }
        replies.push(reply);
    }
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(INTERNAL_DETAIL), "{log}");
    assert_nothing_leaked(&home, &log, &replies, &[&key]);
}

#[test]
fn a_hanging_upstream_is_given_up_after_the_first_byte_timeout() {
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    home.write_policy(&policy(
        2,
        &[
            provider(
                "h",
                "openai-compatible",
                &upstream.base_url(),
                None,
                "first_byte_timeout_ms = 500\n",
            ),
            route("chat", &["h:hang"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let started = Instant::now();
    let reply = complete(&krouter, &key, &chat("chat"));
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(upstream.requests().len(), 1);
    assert!(
        took < Duration::from_secs(3),
        "the connect took milliseconds and the first byte was allowed 500 ms, yet the answer took {took:?}"
    );
}

#[test]
fn a_tls_upstream_is_reached_only_when_its_ca_is_trusted() {
    let home = TempHome::init();
    let ca = TestCa::new();
    let ca_file = ca.write_pem(home.parent());
    let credential = fake_secret("sk-upstream-", 32);
    let upstream = MockUpstream::builder()
        .credential(Some(credential.clone()))
        .tls(&ca)
        .start();
    home.set_credential("tls", "openai", &credential);
    home.set_credential("tls-anthropic", "anthropic", &credential);
    let base_url = format!("https://localhost:{}/v1", upstream.port());
    home.write_policy(&policy(
        2,
        &[
            provider("tls", "openai", &base_url, Some("tls"), ""),
            provider(
                "tls-anthropic",
                "anthropic",
                &base_url,
                Some("tls-anthropic"),
                "",
            ),
            route("chat", &["tls:real-model"]),
            route("claude", &["tls-anthropic:claude-real"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");

    let krouter = Krouter::spawn(
        &home,
        &[("KROUTER_UPSTREAM_CA_FILE", ca_file.to_str().unwrap())],
    );
    let plain = complete(&krouter, &key, &chat("chat"));
    assert_eq!(plain.status, 200, "{plain:?}");
    let stream = complete(&krouter, &key, &chat_stream("chat"));
    assert_eq!(stream.status, 200, "{stream:?}");
    assert!(stream.body.ends_with("data: [DONE]\n\n"), "{}", stream.body);
    // The Anthropic API over the same TLS, plain and streaming.
    let url = krouter.url("/v1/messages");
    let anthropic = post_anthropic(&url, &key, &message("claude", false));
    assert_eq!(anthropic.status, 200, "{anthropic:?}");
    assert_eq!(anthropic.json()["type"], "message", "{anthropic:?}");
    let anthropic_stream = post_anthropic(&url, &key, &message("claude", true));
    assert_eq!(anthropic_stream.status, 200, "{anthropic_stream:?}");
    assert!(
        anthropic_stream.body.contains("event: message_stop\n"),
        "{}",
        anthropic_stream.body
    );
    // krouter spoke HTTP/2 to it (ALPN), all four requests over one shared connection.
    let seen = upstream.requests();
    assert_eq!(seen.len(), 4);
    for request in &seen {
        assert_eq!(request.version, hyper::Version::HTTP_2, "{request:?}");
        assert_eq!(request.connection, seen[0].connection, "{seen:?}");
    }
    let (status, trusted_log) = krouter.stop();
    assert!(status.success(), "{trusted_log}");

    upstream.clear();
    let krouter = Krouter::spawn(&home, &[]);
    let untrusted = complete(&krouter, &key, &chat("chat"));
    assert_eq!(untrusted.status, 502, "{untrusted:?}");
    error_message(&untrusted, false, "untrusted certificate");
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(
        &home,
        &format!("{trusted_log}{log}"),
        &[plain, stream, anthropic, anthropic_stream, untrusted],
        &[&key, &credential],
    );
}

#[test]
fn upstream_connections_are_reused_only_after_a_whole_answer() {
    let (home, upstream, credential) = openai_setup();
    let (_, key) = home.create_key("app");
    let mut text = provider(
        "mock",
        "openai-compatible",
        &upstream.base_url(),
        Some("mock"),
        "",
    );
    for (model, target) in [
        ("chat", "mock:real-model"),
        ("cut", "mock:stream-cut"),
        ("drop", "mock:drop"),
        ("fail", "mock:fail-500"),
    ] {
        text.push_str(&route(model, &[target]));
    }
    home.write_policy(&policy(2, &text));
    let krouter = Krouter::spawn(&home, &[]);
    let mut replies = Vec::new();
    let mut ask = |body: &str, status: u16| {
        let reply = complete(&krouter, &key, body);
        assert_eq!(reply.status, status, "{body}: {reply:?}");
        replies.push(reply);
        let seen = upstream.requests();
        seen.last().map(|last| last.connection).unwrap_or_default()
    };
    // Whole answers, plain and streamed: one HTTP/1.1 connection, reused.
    let first = ask(&chat("chat"), 200);
    assert_eq!(ask(&chat_stream("chat"), 200), first);
    assert_eq!(ask(&chat("chat"), 200), first);
    let seen = upstream.requests();
    assert!(
        seen.iter().all(|r| r.version == hyper::Version::HTTP_11),
        "{seen:?}"
    );
    let host = format!("127.0.0.1:{}", upstream.port());
    assert!(
        seen.iter().all(|r| r.header("host") == Some(host.as_str())),
        "{seen:?}"
    );
    // A stream the upstream cut: its connection is not used again.
    let cut = ask(&chat_stream("cut"), 200);
    assert_eq!(cut, first, "the stream went over the idle connection");
    let after_cut = ask(&chat("chat"), 200);
    assert!(
        after_cut > cut,
        "a cut connection was reused: {after_cut} after {cut}"
    );
    // An error answer krouter does not relay leaves its body unread: whether hyper drains
    // it and the connection is used again or closes it, the next answer is the next
    // request's own, never the rest of the error.
    ask(&chat("fail"), 502);
    let after_failed = complete(&krouter, &key, &chat("chat"));
    assert_eq!(after_failed.status, 200, "{after_failed:?}");
    assert_eq!(
        after_failed.json()["object"],
        "chat.completion",
        "{after_failed:?}"
    );
    assert!(
        !after_failed.body.contains("UPSTREAM-INTERNAL-DETAIL"),
        "{after_failed:?}"
    );
    // Connections the upstream closed without answering are not used again.
    let dropped = ask(&chat("drop"), 502);
    let after_drop = ask(&chat("chat"), 200);
    assert!(
        after_drop > dropped,
        "a dropped connection was reused: {after_drop} after {dropped}"
    );
    // An upstream that restarts closes the idle pooled connection: the next request still
    // goes through, over a new connection to the new server.
    let addr = upstream.addr();
    drop(upstream);
    let restarted = MockUpstream::builder()
        .credential(Some(credential.clone()))
        .listen(addr)
        .start();
    let reply = complete(&krouter, &key, &chat("chat"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(restarted.requests().len(), 1);
    replies.push(reply);
    replies.push(after_failed);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(&home, &log, &replies, &[&key, &credential]);
}

/// A home routing `evil` to a host the private hosts file maps to the metadata address and
/// `fine` to one it maps to loopback, and a krouter that resolves with that hosts file
/// (a private mount namespace); `None` when namespaces are not available here.
fn ssrf_setup() -> Option<(TempHome, MockUpstream, Krouter, String)> {
    let probe = Command::new("unshare").args(["-rm", "true"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED the SSRF-by-DNS check: `unshare -rm true` failed here ({probe:?}), so krouter cannot be given its own /etc/hosts"
        );
        return None;
    }
    let home = TempHome::init();
    let upstream = MockUpstream::start();
    let hosts = home.parent().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n169.254.169.254 metadata-evil.test\n127.0.0.1 fine.test\n",
    )
    .unwrap();
    let port = upstream.port();
    home.write_policy(&policy(
        2,
        &[
            provider(
                "evil",
                "openai-compatible",
                &format!("http://metadata-evil.test:{port}/v1"),
                None,
                "",
            ),
            provider(
                "fine",
                "openai-compatible",
                &format!("http://fine.test:{port}/v1"),
                None,
                "",
            ),
            route("evil", &["evil:real-model"]),
            route("fine", &["fine:real-model"]),
        ]
        .concat(),
    ));
    let (_, key) = home.create_key("app");
    let mut command = Command::new("unshare");
    command
        .args([
            "-rm",
            "sh",
            "-c",
            "mount --bind \"$1\" /etc/hosts && exec \"$2\"",
            "sh",
        ])
        .arg(&hosts)
        .arg(proxy_path())
        .current_dir(home.parent())
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .envs(home.env())
        .env("KROUTER_LISTEN", "127.0.0.1:0");
    let krouter = Krouter::spawn_command(command);
    Some((home, upstream, krouter, key))
}

#[test]
fn a_host_name_resolving_to_the_metadata_address_is_refused_at_connect_time() {
    let Some((home, upstream, krouter, key)) = ssrf_setup() else {
        return;
    };
    let evil = complete(&krouter, &key, &chat("evil"));
    assert_eq!(evil.status, 502, "{evil:?}");
    error_message(&evil, false, "evil");
    assert!(!evil.body.contains("169.254"), "{}", evil.body);
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    krouter.wait_for_log("SSRF guard", Duration::from_secs(5));
    assert!(
        krouter.log().contains("169.254.169.254"),
        "{}",
        krouter.log()
    );

    let fine = complete(&krouter, &key, &chat("fine"));
    assert_eq!(fine.status, 200, "{fine:?}");
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(
        upstream.requests()[0].header("host"),
        Some(format!("fine.test:{}", upstream.port()).as_str())
    );
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_nothing_leaked(&home, &log, &[evil, fine], &[&key]);
}

#[test]
fn an_ssrf_refusal_is_reported_as_such() {
    let Some((_home, _upstream, krouter, key)) = ssrf_setup() else {
        return;
    };
    let evil = complete(&krouter, &key, &chat("evil"));
    assert_eq!(evil.status, 502, "{evil:?}");
    let message = error_message(&evil, false, "evil");
    assert!(message.contains("address is not allowed"), "{message}");
    let line = request_line(&krouter, &request_id(&evil));
    assert!(
        line.contains("refused by the SSRF guard"),
        "the request line says {line}"
    );
}

#[test]
fn http1_and_http2_share_the_listener() {
    let (home, upstream, credential) = openai_setup();
    let (_id, key) = home.create_key("app");
    let krouter = Krouter::spawn(&home, &[]);
    let auth = format!("Bearer {key}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    let url = krouter.url("/v1/chat/completions");
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;
    let h1 = send("POST", &url, &headers, body);
    let h2 = send_h2("POST", &url, &headers, body);
    for reply in [&h1, &h2] {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.header("x-request-id").is_some(), "{reply:?}");
        assert_eq!(reply.json()["usage"]["completion_tokens"], 7);
    }
    let stream = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let h2_stream = send_h2("POST", &url, &headers, stream);
    assert_eq!(h2_stream.status, 200, "{h2_stream:?}");
    assert!(
        h2_stream.body.trim_end().ends_with("data: [DONE]"),
        "{h2_stream:?}"
    );
    let health = send_h2("GET", &krouter.url("/healthz"), &[], "");
    assert_eq!(health.status, 200);
    assert_eq!(upstream.requests().len(), 3);
    let (status, log) = krouter.stop();
    assert!(status.success(), "{log}");
    assert_absent(&log, &[&key, &credential], "the krouter log");
}
